"""Exit codes and messages for bad input (the README lists the codes)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from allocwatch import bpfsource, cli, preflight
from allocwatch.errors import BccMissing, KernelHeadersMissing, NotRoot, TracefsMissing

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


def test_not_root_exit_5(monkeypatch, capsys):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    code, _, err = run_main(capsys, "run")
    assert code == NotRoot.exit_code == 5 and "needs root" in err


def test_tracefs_not_mountable_exit_8(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    f = tmp_path / "c.yaml"
    f.write_text(f"tracefs: {tmp_path / 'no' / 'such' / 'dir'}\n")
    code, _, err = run_main(capsys, "run", "--config", str(f))
    assert code == TracefsMissing.exit_code == 8 and "mount -t tracefs" in err


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
    rows = {r["site"]: r for r in doc["sites"]}
    assert rows["memcg_reclaim"]["would_attach"] and rows["memcg_reclaim"]["mechanism"] == "tracepoint pair"
    assert rows["memcg_oom_wait"]["mechanism"] == "sched_switch D-state + stack"
    assert not rows["throttle_vm_writeout"]["would_attach"]
    assert "bf48438354a7" in rows["throttle_vm_writeout"]["why_not"]
    assert len(rows) == 19


def test_probes_offline_text_reads_the_captured_kallsyms(capsys):
    code, out, _ = run_main(capsys, "probes", "--tracefs", str(FIXTURE.parent / "6.1"))
    assert code == 0 and "evaluated offline" in out and "MISSING" in out
    assert "kprobe pair: mem_cgroup_oom_synchronize" in out  # from 6.1/kallsyms, not this host's


def test_kallsyms_without_tracefs_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["probes", "--kallsyms", "/proc/kallsyms"])
    assert exc.value.code == 2
