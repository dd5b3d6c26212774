# SPDX-License-Identifier: Apache-2.0
"""What /proc says, on the real kernel (issue 26, items 7 and 8): a task in a
memory cgroup whose name holds \\x1c is reported with its own group, not the
sibling its name starts with; a daemon in a PID namespace of its own refuses
to start (exit 17), or with foreign_pid_namespace: true starts with the sites
found by stack marked not attached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocwatch.core import records
from lab import memcg
from lab.ports import free_port
from tests.kernel.daemonproc import Daemon

CGROUP_METRIC = "allocwatch_cgroup_memory_stalled_seconds_total"


def _scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def _cgroup_seconds(text: str, label: str) -> float:
    """The stalled seconds under cgroup=`label`, summed over sites."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.split("\n")
               if line.startswith(CGROUP_METRIC + "{") and f'cgroup="{label}"' in line)


def _attached(text: str, site: str) -> float | None:
    for line in text.split("\n"):
        if line.startswith("allocwatch_site_attached{") and f'site="{site}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def scratch_config() -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="aw-config-", suffix=".yaml")
    os.close(fd)
    yield Path(name)
    Path(name).unlink(missing_ok=True)


@pytest.mark.requires_cgroup_v1_memory
def test_a_task_in_a_group_named_with_x1c_gets_its_own_group_limit_and_metrics(scratch_config):
    addr = f"127.0.0.1:{free_port()}"
    with memcg.MemCgroup("aw-cut") as sibling:
        # the group a splitlines() reader cut the name to: its own limit, no task
        sibling.set_limit_bytes(512 * memcg.MIB)
        with memcg.MemCgroup(name=sibling.name + "\x1cevil") as evil:
            scratch_config.write_text(f"metrics_cgroups: [{json.dumps(sibling.rel_path)}]\n")
            d = Daemon("--threshold", "1", "--scan-interval", "0.25", "--metrics-addr", addr,
                       "--config", str(scratch_config))
            try:
                d.wait_ready()
                hogs = memcg.stall_indefinitely(evil, 1, 100)
                try:
                    pid = hogs[0].pid
                    limit = int((evil.path / "memory.limit_in_bytes").read_text())
                    assert limit != 512 * memcg.MIB

                    def ours(records_: list[dict]) -> list[dict]:
                        return [t for r in records_ if r["type"] == "stall_report" for t in r["tasks"]
                                if t["tid"] == pid and t["site"] == "memcg_oom_wait"]

                    assert d.wait_for(lambda rs: bool(ours(rs)), 30), f"no report of {pid}: {d.raw_lines[-5:]}"
                    task = ours(list(d.records))[0]
                    want = records.escape(evil.rel_path)
                    assert "\\x1cevil" in want
                    assert task["cgroup"] == want, task["cgroup"]
                    assert task["memcg"]["path"] == want
                    assert task["memcg"]["limit_bytes"] == limit, task["memcg"]
                    assert task["memcg"]["oom_kill_disable"] is True
                    time.sleep(1.0)  # a few scans more of the wait in flight
                    text = _scrape(addr)
                    # not the sibling's: its name is the evil group's cut short
                    assert _cgroup_seconds(text, sibling.rel_path) == 0.0, text
                    assert _cgroup_seconds(text, "other") > 0.0, text
                finally:
                    memcg.release(evil)
                    for h in hogs:
                        h.finish()
            finally:
                assert d.stop() == 0


# --- a PID namespace of its own -------------------------------------------------------


def _in_own_pid_namespace(argv: list[str], **kw) -> subprocess.Popen:
    """`argv` as PID 1 of a new PID namespace with its own /proc (a private mount
    namespace: nothing of the machine's mounts changes); no systemd."""
    return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *argv], **kw)


def _child_of(pid: int) -> int:
    """The pid (as this /proc shows it) of the one child of `pid`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"{pid} started no child")


@pytest.mark.requires_tool("unshare")
def test_in_a_pid_namespace_of_its_own_it_refuses_to_start_with_exit_17():
    proc = _in_own_pid_namespace(
        [sys.executable, "-m", "allocwatch", "run", "--metrics-addr", "", "--socket", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 17, (proc.returncode, err)
    lines = [ln for ln in err.split("\n") if ln]
    assert len(lines) == 1, err
    assert "PID namespace of its own" in lines[0] and "foreign_pid_namespace: true" in lines[0]
    assert out == ""


@pytest.mark.requires_tool("unshare")
def test_in_a_pid_namespace_of_its_own_it_runs_when_told_with_the_sites_found_by_stack_off(scratch_config):
    scratch_config.write_text("foreign_pid_namespace: true\n")
    probes = _in_own_pid_namespace(
        [sys.executable, "-m", "allocwatch", "probes", "--json", "--config", str(scratch_config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = probes.communicate(timeout=120)
    assert probes.returncode == 0, err
    sites = {s["site"]: s for s in json.loads(out)["sites"]}
    oom_wait = sites["memcg_oom_wait"]
    assert oom_wait["attached"] is False and "PID namespace of its own" in oom_wait["why_not"], oom_wait
    assert any(s["attached"] for s in sites.values())  # the tracepoint sites still attach

    addr = f"127.0.0.1:{free_port()}"
    d = Daemon("--config", str(scratch_config), "--metrics-addr", addr, spawn=_in_own_pid_namespace)
    try:
        d.wait_ready()
        notes = [ln for ln in d.stderr if "foreign_pid_namespace: true" in ln]
        assert len(notes) == 1, d.stderr
        assert "memcg_oom_wait" in notes[0] and "PID namespace of its own" in notes[0]
        deadline = time.monotonic() + 10
        while "allocwatch_site_attached{" not in (text := _scrape(addr)) and time.monotonic() < deadline:
            time.sleep(0.25)  # the first scan's snapshot
        assert _attached(text, "memcg_oom_wait") == 0.0, text
        assert _attached(text, "memcg_reclaim") == 1.0, text
        # PID 1 of its namespace: unshare ignores SIGTERM, so the daemon itself is told
        os.kill(_child_of(d.proc.pid), signal.SIGTERM)
        assert d.proc.wait(15) == 0, "".join(d.stderr)
        assert d.stop() == 0
    finally:
        d.kill()
