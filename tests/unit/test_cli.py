# SPDX-License-Identifier: Apache-2.0
"""Exit codes and messages for bad input (docs/exit-codes.md lists the codes)."""

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from allocwatch import cli
from allocwatch.app import preflight, selfcare
from allocwatch.errors import BccMissing, KernelHeadersMissing, NotPrivileged, TracefsMissing
from allocwatch.kernel import bpfsource

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "kernels" / "6.18"


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_config_key_exit_3(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("nonsense: 1\n")
    code, _, err = run_main(capsys, "run", "--config", str(f))
    assert code == 3 and "unknown key 'nonsense'" in err and len(err.splitlines()) == 1


def test_unreadable_config_exit_4(tmp_path, capsys):
    code, _, err = run_main(capsys, "run", "--config", str(tmp_path / "nope.yaml"))
    assert code == 4 and "cannot read config file" in err


def test_bad_flag_exit_3(capsys):
    code, _, err = run_main(capsys, "run", "--threshold", "-2")
    assert code == 3 and "threshold_s: expected a positive number" in err


def test_usage_error_exit_2():
    argv = [sys.executable, "-m", "allocwatch", "run", "--format", "xml"]
    proc = subprocess.run(argv, capture_output=True, check=False)
    assert proc.returncode == 2


ALL_CAPS = (1 << 41) - 1


def test_missing_capabilities_exit_5(monkeypatch, capsys):
    monkeypatch.setattr(preflight, "effective_caps", lambda: 0)
    code, _, err = run_main(capsys, "run")
    assert code == NotPrivileged.exit_code == 5 and len(err.splitlines()) == 1
    assert "CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN" in err


def test_capabilities_not_uid_decide():
    no_bpf = ALL_CAPS & ~(1 << preflight.CAP_BPF)
    assert preflight.missing_capabilities(ALL_CAPS, 0, 40) == []
    assert preflight.missing_capabilities(ALL_CAPS, 1000, 40) == []  # non-root with the caps: fine
    assert preflight.missing_capabilities(no_bpf, 0, 40) == ["CAP_BPF"]
    assert preflight.missing_capabilities(1 << preflight.CAP_SYS_ADMIN, 0, 37) == []  # before v5.8
    only_bpf = (1 << preflight.CAP_BPF) | (1 << preflight.CAP_PERFMON) | (1 << preflight.CAP_SYS_ADMIN)
    assert preflight.missing_capabilities(only_bpf, 1000, 40) == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]


def _mountinfo(tmp_path, *lines):
    f = tmp_path / "mountinfo"
    f.write_text("".join(line + "\n" for line in lines))
    return f


def test_configured_tracefs_that_is_not_a_mount_is_refused_never_mounted(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mi = _mountinfo(tmp_path, "22 1 0:21 / /proc rw,nosuid - proc proc rw")
    with pytest.raises(TracefsMissing, match="not a mount point, not tracefs"):
        preflight.ensure_tracefs(scratch, mi)
    mi = _mountinfo(tmp_path, f"22 1 0:21 / {tmp_path} rw - tmpfs tmpfs rw")
    with pytest.raises(TracefsMissing, match="is a tmpfs mount"):
        preflight.ensure_tracefs(tmp_path, mi)


def test_tracefs_mount_found_in_mountinfo(tmp_path):
    spaced = tmp_path / "a b"
    spaced.mkdir()
    mi = _mountinfo(tmp_path, f"40 1 0:12 / {str(spaced).replace(' ', chr(92) + '040')} rw - tracefs nodev rw")
    assert preflight.ensure_tracefs(spaced, mi) is False  # already tracefs: nothing mounted


def test_standard_place_with_something_else_on_it_is_left_alone(tmp_path):
    mi = _mountinfo(tmp_path, "40 1 0:12 / /sys/kernel/tracing rw - tmpfs x rw")
    with pytest.raises(TracefsMissing, match="leaves it alone"):
        preflight.ensure_tracefs(preflight.TRACEFS_STANDARD, mi)


def test_tracefs_config_error_exit_8(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(preflight, "effective_caps", lambda: ALL_CAPS)
    f = tmp_path / "c.yaml"
    f.write_text(f"tracefs: {tmp_path}\n")
    code, _, err = run_main(capsys, "run", "--config", str(f))
    assert code == TracefsMissing.exit_code == 8 and "allocwatch mounts tracefs only at" in err


def test_bcc_missing_exit_6(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(BccMissing, match="apt-get install python3-bpfcc"):
        bpfsource.import_bcc()
    assert BccMissing.exit_code == 6


def test_headers_missing_exit_7():
    with pytest.raises(KernelHeadersMissing, match="linux-headers-0.0-none"):
        bpfsource.check_headers("0.0-none")
    assert KernelHeadersMissing.exit_code == 7


def test_probes_offline_json(capsys):
    code, out, _ = run_main(
        capsys, "probes", "--json", "--tracefs", str(FIXTURE), "--kallsyms", str(FIXTURE / "kallsyms")
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["live"] is False and doc["kprobes"] is False
    assert doc["sched_switch"] is None  # how it attaches is known live only
    rows = {r["site"]: r for r in doc["sites"]}
    assert rows["memcg_reclaim"]["would_attach"] and rows["memcg_reclaim"]["mechanism"] == "tracepoint pair"
    assert rows["memcg_oom_wait"]["mechanism"] == "sched_switch D-state + stack"
    assert not rows["throttle_vm_writeout"]["would_attach"]
    assert "bf48438354a7" in rows["throttle_vm_writeout"]["why_not"]
    assert len(rows) == 19


def test_probes_offline_text_reads_the_captured_kallsyms(capsys):
    code, out, _ = run_main(capsys, "probes", "--tracefs", str(FIXTURE.parent / "6.1"))
    assert code == 0 and "evaluated offline" in out and "not in this kernel" in out
    assert "MISSING" not in out and "off (config)" in out
    assert out.splitlines()[-1] == "would watch 15 of 15 wait sites (3 not in this kernel, 1 off by configuration)"
    assert "kprobe pair: mem_cgroup_oom_synchronize" in out  # from 6.1/kallsyms, not this host's


def test_kallsyms_without_tracefs_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["probes", "--kallsyms", "/proc/kallsyms"])
    assert exc.value.code == 2


def test_oom_score_is_lowered_when_it_may_and_said_when_not(tmp_path, monkeypatch):
    f = tmp_path / "oom_score_adj"
    f.write_text("0\n")
    assert selfcare.lower_oom_score(-900, f) is None and f.read_text() == "-900\n"
    f.write_text("-1000\n")
    assert selfcare.lower_oom_score(-900, f) is None and f.read_text() == "-1000\n"  # already lower: left
    f.write_text("0\n")

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(f), "write_text", refuse)
    why = selfcare.lower_oom_score(-900, f)
    assert why is not None and "CAP_SYS_RESOURCE" in why and len(why.splitlines()) == 1


def test_lock_memory_only_where_later_allocations_cannot_fail():
    calls = []

    def fake(flags):
        calls.append(flags)
        return 0

    finite = 8 << 20
    no_cap = 0
    assert "CAP_IPC_LOCK" in selfcare.lock_memory(fake, effective=no_cap, memlock_limit=finite)
    assert calls == []  # not even tried: MCL_FUTURE under a finite limit breaks later mmaps
    assert selfcare.lock_memory(fake, effective=1 << selfcare.CAP_IPC_LOCK, memlock_limit=finite) is None
    assert selfcare.lock_memory(fake, effective=no_cap, memlock_limit=resource.RLIM_INFINITY) is None
    assert calls == [selfcare.MCL_CURRENT | selfcare.MCL_FUTURE | selfcare.MCL_ONFAULT] * 2



def test_probes_text_says_how_sched_switch_is_attached_when_live():
    from allocwatch.kernel import coverage

    text = coverage.render_text([], "6.18", "classic tracepoint (no BTF offsets for the raw tracepoint)")
    assert "sched:sched_switch (D-state timing) on the classic tracepoint (no BTF offsets" in text
    assert "sched_switch" not in coverage.render_text([], "6.18")


def test_probes_text_says_how_an_oom_kill_is_read_when_live():
    from allocwatch.kernel import coverage

    text = coverage.render_text([], "6.1", None, "raw tracepoint, with out_of_memory's oom_control (kprobe pair)")
    assert ("oom:mark_victim (an OOM kill's cgroups and constraint) read in the kernel at the kill, on the raw "
            "tracepoint, with out_of_memory's oom_control (kprobe pair)") in text
    off = coverage.render_text([], "5.4", None, "off: not compiled (no oom:mark_victim, or no BTF offsets)")
    assert "read after the kill, from /proc (not compiled (no oom:mark_victim, or no BTF offsets))" in off
    assert "mark_victim" not in coverage.render_text([], "6.18")


def test_the_hello_says_what_each_site_is_attached_to_as_probes_does():
    """top's hello (and so a guest test) reads the daemon's own attach: the same
    target `allocwatch probes` prints, and none for a site not attached."""
    from allocwatch import config
    from allocwatch.app.session import read_features
    from allocwatch.kernel import coverage, probes

    cfg = config.Config()
    features = read_features(cfg, FIXTURE.parent / "6.1")
    statuses = [coverage.planned(p, features) for p in probes.plan(features, cfg.disabled, cfg.hot_paths)]
    rows = {r["site"]: r for r in coverage.rows(statuses)}
    said = {c.site: c for c in coverage.snapshot_coverage(statuses)}
    assert said.keys() == rows.keys()
    for site, c in said.items():
        row = rows[site]
        assert c.attached == row["would_attach"], (c, row)
        assert (c.mechanism, c.target) == ((row["mechanism"], row["target"]) if c.attached else ("", "")), (c, row)
    assert said["reclaim_throttle"].target and said["reclaim_throttle"].mechanism == "kprobe pair"
    assert any(not c.attached for c in said.values())


def test_probes_text_says_how_a_block_reads_tasks_states_when_live():
    from allocwatch.kernel import coverage

    text = coverage.render_text([], "6.18", None, None, "task iterator")
    assert ("tasks' states, for a block of 100 or more and one for every 12 tasks on the host, read with the task "
            "iterator\n") in text
    why = "/proc (no task iterator: no BPF iterators on this kernel (v5.8+))"
    off = coverage.render_text([], "5.4", None, None, why)
    assert "tasks' states read from /proc (no task iterator: no BPF iterators on this kernel (v5.8+))\n" in off
    assert "tasks' states" not in coverage.render_text([], "6.18")
    named = coverage.render_text([], "6.18", None, None, None, "named from /proc/kallsyms (121,414 text symbols)")
    assert "kernel addresses (a finding's shrinkers, a stack taken at reclaim entry) named from /proc/kallsyms" in named
    assert "kernel addresses" not in coverage.render_text([], "6.18")
