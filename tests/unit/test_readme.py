"""The README's promises that code can check: the exit-code table matches the
typed errors, and every metric the collector serves is in the metrics table."""

from __future__ import annotations

import re
from pathlib import Path

from allocwatch import errors

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(title)
    nxt = README.find("\n#", start + len(title))
    return README[start : nxt if nxt != -1 else None]


def test_exit_code_table_matches_the_code():
    table = {int(m.group(1)) for m in re.finditer(r"^\| (\d+) \|", _section("### Exit codes"), re.M)}
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

    d, src, _, clock = snapshot_daemon(tmp_path, metrics_cgroups=("/box",))  # per-cgroup seconds on
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
    for name, kind, labels in re.findall(r"^\| `(allocwatch_\w+)` \| (\w+) \|([^|]*)\|", _section("## Metrics"), re.M):
        documented[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    assert set(served) == set(documented)
    for name, want in served.items():
        assert documented[name] == want, f"README says {name} is {documented[name]}, the code serves {want}"


def test_commands_are_shown_as_root_not_behind_sudo():
    """A minimal Debian host has no sudo: no command line in a code block starts with it,
    and every `sudo` in the text is the second form of a command shown as root."""
    blocks = re.findall(r"^```(?:sh)?\n(.*?)^```", README, re.M | re.S)
    lines = [ln.strip() for block in blocks for ln in block.splitlines()]
    assert not [ln for ln in lines if ln.startswith("sudo")]
    for m in re.finditer(r"`sudo [^`]*`", README):
        around = README[max(0, m.start() - 300) : m.start()]
        assert "root" in around, f"{m.group(0)} with no word of root before it"
