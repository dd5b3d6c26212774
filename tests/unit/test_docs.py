# SPDX-License-Identifier: Apache-2.0
"""The manual's promises that code can check: the exit-code table matches the
typed errors, every metric the collector serves is in the metrics table, the
the rendered v2 stall in docs/reports.md is what the renderer prints, and the pages hold together
(no internal numbers for the stall classes, no relative link to nothing)."""

from __future__ import annotations

import re
from pathlib import Path

from allocwatch import errors
from allocwatch.core.advice import advise

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(DOCS.glob("runbooks/*.md"))]


def _doc(name: str) -> str:
    return (DOCS / name).read_text()


def _section(text: str, title: str) -> str:
    start = text.index(title)
    nxt = text.find("\n#", start + len(title))
    return text[start : nxt if nxt != -1 else None]


def test_exit_code_table_matches_the_code():
    page = _section(_doc("exit-codes.md"), "# Exit codes")
    table = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", page, re.M)}
    codes = {errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_USAGE}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.AllocwatchError) and cls is not errors.AllocwatchError:
            codes.add(cls.exit_code)
    assert table == codes
    distinct = [c.exit_code for c in vars(errors).values() if isinstance(c, type)
                and issubclass(c, errors.AllocwatchError) and c is not errors.AllocwatchError]
    assert len(distinct) == len(set(distinct)), "two errors share an exit code"


def _served_families(tmp_path) -> dict[str, tuple[str, frozenset[str]]]:
    """Every family the collector serves, with every option on: name -> (type, labels)."""
    from allocwatch.core.model import InflightWait
    from allocwatch.core.sites import SITE_DSTATE
    from allocwatch.outputs.metrics import SnapshotCollector, registry_for
    from tests.unit.fakes import snapshot_daemon

    d, src, _, clock = snapshot_daemon(tmp_path, metrics_cgroups=("/box",), metrics_pod_labels=True)  # per cgroup, pod
    clock["ns"] = 3_000_000_000
    src.program_stats = lambda: {"aw_sched_switch": (1500, 10)}  # as while the kernel counts
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    d.scan_once()
    text = registry_for(SnapshotCollector(lambda: d.latest, lambda: {"stdout": 0})).render().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels: dict[str, set[str]] = {name: set() for name in types}
    for sample, keys in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):
        family = next(n for n in types if sample in (n, n + "_total", n + "_bucket", n + "_count", n + "_sum"))
        labels[family] |= {kv.split("=", 1)[0] for kv in keys.split(",") if kv} - {"le"}
    # documented as NAME_total, whichever name the client gives a counter's TYPE line
    return {(n.removesuffix("_total") + "_total" if t == "counter" else n): (t, frozenset(labels[n]))
            for n, t in types.items()}


def test_metrics_table_lists_every_family_with_its_type_and_labels(tmp_path):
    served = _served_families(tmp_path)
    documented = {}
    page = _section(_doc("metrics.md"), "# Metrics")
    for name, kind, labels in re.findall(r"^\| `(allocwatch_\w+)` \| (\w+) \|([^|]*)\|", page, re.M):
        documented[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    assert set(served) == set(documented)
    for name, want in served.items():
        assert documented[name] == want, f"docs/metrics.md says {name} is {documented[name]}, the code serves {want}"


def test_commands_are_shown_as_root_not_behind_sudo():
    """A minimal Debian host has no sudo: no command line in a code block starts with it,
    and every `sudo` in the text is the second form of a command shown as root."""
    for page in PAGES:
        text = page.read_text()
        blocks = re.findall(r"^```(?:sh)?\n(.*?)^```", text, re.M | re.S)
        lines = [ln.strip() for block in blocks for ln in block.splitlines()]
        assert not [ln for ln in lines if ln.startswith("sudo")], page.name
        for m in re.finditer(r"`sudo [^`]*`", text):
            around = text[max(0, m.start() - 300) : m.start()]
            assert "root" in around, f"{page.name}: {m.group(0)} with no word of root before it"


SEED_NUMBER = re.compile(r"(?i)\bseeds? ?0\d\d")


def test_no_stall_class_is_named_by_an_internal_number():
    """The stall classes are named by what they are (the reclaim livelock, dirty throttling...),
    never by the number of a document outside the repository, in any file of the project."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    named = [f for f in tracked.splitlines() if not f.startswith("tests/fixtures/") and (ROOT / f).is_file()
             and SEED_NUMBER.search((ROOT / f).read_text(errors="replace"))]
    assert named == []
    number = "0" + "03"  # not written out, or this file would name one
    assert SEED_NUMBER.search(f"as Seed {number}'s recipe") and SEED_NUMBER.search(f"(seeds {number}/004)")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_points_to_a_file_that_exists():
    seen = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or a place on the same page
            path = target.split("#", 1)[0]
            assert (page.parent / path).exists(), f"{page.name} links to {target}, which does not exist"
            seen += 1
    assert seen > 10  # the pattern finds the links at all


# docs/reports.md's v2 stall: a cgroup v2 task as the daemon's records carry it.
MIB = 1 << 20
STACK = ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list", "shrink_lruvec", "shrink_node",
         "do_try_to_free_pages", "try_to_free_mem_cgroup_pages", "try_charge_memcg", "__mem_cgroup_charge",
         "__filemap_add_folio", "filemap_add_folio", "__filemap_get_folio", "ext4_write_begin",
         "generic_perform_write", "ext4_buffered_write_iter", "vfs_write", "ksys_write", "do_syscall_64",
         "entry_SYSCALL_64_after_hwframe"]
TASK = {
    "kind": "stall", "tid": 4211, "pid": 4211, "comm": "dd", "site": "memcg_reclaim", "duration_s": 10.4,
    "level": 1, "new": True, "gfp": "0x100cca", "gfp_flags": "GFP_HIGHUSER_MOVABLE", "order": 0,
    "cgroup": "/system.slice/backup.service", "state": "D", "stack": STACK, "start_known": True,
    "other_waits": [{"site": "writeback_wait", "duration_s": 10.3}], "recent_stack": [], "uid": 0,
    "cmdline": "dd if=/dev/zero of=/var/backups/img bs=1M count=100", "dying": False, "exiting": False,
    "memcg": {"version": 2, "usage_bytes": 64 * MIB - 8192, "limit_bytes": 64 * MIB, "high_bytes": None,
              "near_limit": True, "oom_kill_disable": None, "under_oom": None, "failcnt": None,
              "events": {"high": 0, "max": 1843, "oom": 0, "oom_kill": 0}},
    "reclaimed_so_far_pages": 0, "dirty_pause": None,
}
CONTEXT = {
    "stalling": 2, "dying": 0, "exiting": 0, "victims": [], "oom_kills": 0,
    "meminfo_bytes": {"MemAvailable": 22_900 * MIB, "MemFree": 22_100 * MIB, "Cached": 610 * MIB, "Dirty": 63 * MIB,
                      "Writeback": 1 * MIB, "AnonPages": 60 * MIB, "Shmem": 9 * MIB, "SUnreclaim": 28 * MIB,
                      "SwapFree": 0},
    "psi": {"some_avg10_pct": 4.31, "full_avg10_pct": 4.31}, "vmstat_delta": {},
    "zones": [{"node": 0, "zone": z, "free_pages": 1, "min_pages": 0, "low_pages": 0, "high_pages": 0,
               "under_watermark": None} for z in ("DMA", "DMA32", "Normal")],
    "kswapd": [{"node": 0, "pid": 45, "state": "S", "state_for_s": None, "not_run_for_s": None,
                "stack": []}],
}
RECORD = {"type": "stall_report", "seq": 1, "time": "2026-12-01T10:12:05.311Z", "stalled": 2, "due": 1,
          "held_back": 0, "tasks": [TASK], "context": CONTEXT, "more": []}
RECORD["advice"] = advise(RECORD)  # as records.to_dict adds it
RECOVERED = {"type": "recovered", "seq": 2, "time": "2026-12-01T10:12:19.806Z", "kind": "stall", "tid": 4211,
             "pid": 4211, "comm": "dd", "site": "memcg_reclaim", "duration_s": 24.9, "exact": True,
             "start_known": True, "ended": "woke", "reports": 2, "reclaimed_pages": 31, "compaction_status": None}


def test_the_rendered_v2_stall_is_what_the_renderer_prints():
    from allocwatch.outputs.report import record_text

    want = "".join(record_text(r, f"{r['time']} allocwatch:") for r in (RECORD, RECOVERED))
    blocks = re.findall(r"^```\n(.*?)^```", (DOCS / "reports.md").read_text(), re.M | re.S)
    assert want in blocks


def test_the_readme_report_is_a_cgroup_v2_one_in_the_renderers_shape():
    """The README's report (captured from a run on a v2 kernel) has a v2 memcg line, and every
    line is a record's head or an indented line of its block."""
    block = re.search(r"^## A report\n.*?^```\n(.*?)^```", README, re.M | re.S)
    assert block, "README.md has no report under ## A report"
    text = block.group(1)
    assert "memcg v2: usage=" in text and "kind=throttled" in text
    assert all(re.match(r"^(\d{4}-\d\d-\d\dT[\d:.]+Z allocwatch: |  )", line) for line in text.splitlines())


def test_configuration_page_has_every_key():
    import dataclasses

    from allocwatch import config

    page = _doc("configuration.md")
    shown = set(re.findall(r"^(\w+):", page, re.M))  # the commented YAML of every key
    assert {f.name for f in dataclasses.fields(config.Config)} == shown


def test_reports_page_has_a_row_for_every_record_type():
    made = set()
    for path in (ROOT / "allocwatch").rglob("*.py"):
        made |= set(re.findall(r'"type": "(\w+)"', path.read_text()))
    made -= {"hello"}  # the socket's greeting, in docs/top.md; not a record
    rows = set(re.findall(r"^\| `(\w+)` \|", _section(_doc("reports.md"), "## JSON output"), re.M))
    assert made == rows


def test_the_configuration_page_lists_exactly_the_keys_a_reload_cannot_change():
    from allocwatch import config

    page = (DOCS / "configuration.md").read_text()
    section = page[page.index("## Reload"):]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else None]
    listed = set(re.findall(r"^- (.*?):", section, re.M))
    named = {k for line in listed for k in re.findall(r"`(\w+)`", line)}
    assert named == set(config.RESTART_KEYS)


def test_the_architecture_page_lists_every_module_in_its_folder():
    """docs/architecture.md's tree is where the next engineer looks for where a change belongs."""
    tree = _doc("architecture.md")
    missing = []
    for folder in ("config", "core", "kernel", "outputs", "app", "top"):
        listed = _section_of_tree(tree, folder)
        missing += [f"{folder}/{p.name}" for p in sorted((ROOT / "allocwatch" / folder).glob("*.py"))
                    if p.name != "__init__.py" and not re.search(rf"^\s+{re.escape(p.name)}\s", listed, re.M)]
    assert missing == []


def _section_of_tree(tree: str, folder: str) -> str:
    """The lines under `  folder/` in the page's last tree (the one a module a line),
    up to the next folder of that depth."""
    found = re.findall(rf"^  {folder}/ .*?(?=^  \S|^\S)", tree, re.M | re.S)
    assert found, folder
    return str(found[-1])
