# SPDX-License-Identifier: Apache-2.0
"""`allocwatch top` in a real terminal (tmux) during a real indefinite stall.

Both data paths: the daemon's socket, and top's own session when no daemon
answers. The screen is read with capture-pane. Root and BPF are needed: these
skip off-root with the reason, and fail instead in CI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import memcg
from tests.kernel.daemonproc import Daemon, allocwatch_prog_ids, progs_left
from tests.kernel.tmuxpane import Pane

ROOT = Path(__file__).resolve().parents[2]
TOP = f"cd {ROOT} && {sys.executable} -m allocwatch top"


@pytest.fixture
def socket_path():
    """A per-run socket path under /run; the daemon makes and removes its directory."""
    d = Path(f"/run/aw-top-{os.getpid()}-{secrets.token_hex(3)}")
    yield str(d / "allocwatch.sock")
    if d.exists():
        shutil.rmtree(d)


@pytest.fixture
def stall():
    """One task held in the memcg OOM wait (cgroup v1 oom_kill_disable) until the end of the test."""
    with memcg.MemCgroup("aw-top") as group:
        (hog,) = memcg.stall_indefinitely(group, 1, 100)
        deadline = time.monotonic() + 10
        while memcg.proc_state(hog.pid) != "D" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert memcg.proc_state(hog.pid) == "D", "the hog did not stall"
        try:
            yield group, hog
        finally:
            memcg.release(group)
            hog.stop()


def _row(screen: str, pid: int) -> str | None:
    return next((ln for ln in screen.splitlines() if re.match(rf"\s*{pid}\s", ln)), None)


def _wait_s(row: str) -> float:
    m = re.search(r"memcg_oom_wait\s+>?(\d+)m(\d\d)s|memcg_oom_wait\s+>?([\d.]+)s", row)
    assert m, row
    return int(m[1]) * 60 + int(m[2]) if m[1] else float(m[3])


_STTY = re.compile(r"^((-?icanon|-?echo) )+=STTY$", re.M)


def _stty_line(pane: Pane) -> str:
    """The terminal's echo and canonical-mode flags, as the shell sees them now."""
    pane.type("clear; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo -e -icanon -e -echo | tr '\\n' ' '; "
              "echo '=ST''TY'")
    screen = pane.wait(lambda s: _STTY.search(s) is not None, 10)
    assert screen, pane.screen()
    m = _STTY.search(screen)
    assert m
    return m[0]


_EXIT = re.compile(r"^AW-EXIT=(\d+)$", re.M)


def _exercise(pane: Pane, pid: int, source: str, timeout: float, header: str) -> None:
    """The stalled task appears with its site and a growing wait; s, f, Enter work; q restores the terminal."""
    before_stty = _stty_line(pane)
    pane.type(f"{TOP} --interval 0.5 --socket {source}; echo AW-EXIT=$?")
    screen = pane.wait(lambda s: _row(s, pid) is not None, timeout)
    assert screen, f"the stalled task {pid} never showed:\n{pane.screen()}"
    assert header in screen.splitlines()[0], screen
    first = _row(screen, pid)
    assert first and "memcg_oom_wait" in first and " D " in first, first
    later = pane.wait(lambda s: (r := _row(s, pid)) is not None and _wait_s(r) >= _wait_s(first) + 1.0, 10)
    assert later, f"the wait did not grow from {first!r}:\n{pane.screen()}"
    pane.keys("s")
    assert pane.wait(lambda s: "sort:share" in s, 5), pane.screen()
    pane.keys("f")
    assert pane.wait(lambda s: "filter (site or cgroup" in s, 5), pane.screen()
    pane.text("no-such-site")
    pane.keys("Enter")
    assert pane.wait(lambda s: "filter:no-such-site" in s and "(no task is waiting" in s, 5), pane.screen()
    pane.keys("f")
    assert pane.wait(lambda s: "filter (site or cgroup" in s, 5), pane.screen()
    pane.text("aw-top-")  # the test's own cgroup
    pane.keys("Enter")
    assert pane.wait(lambda s: "filter:aw-top-" in s and _row(s, pid) is not None, 5), pane.screen()
    pane.keys("Enter")
    detail = pane.wait(lambda s: "kernel stack (/proc):" in s, 5)
    assert detail, pane.screen()
    assert f"pid={pid}" in detail and "mem_cgroup_oom_synchronize" in detail, detail
    assert "memcg v1:" in detail and "limit=" in detail and "oom_kill_disable=1" in detail, detail
    assert "stack entering reclaim (BPF):" in detail, detail
    pane.keys("Escape")
    assert pane.wait(lambda s: _row(s, pid) is not None, 5), pane.screen()
    pane.keys("q")
    after = pane.wait(lambda s: _EXIT.search(s) is not None, 15)
    assert after and _EXIT.search(after)[1] == "0", pane.screen()
    assert "PID     TID" not in after, after  # the normal screen is back, the table gone with curses
    assert _stty_line(pane) == before_stty  # echo and canonical mode as they were


@pytest.mark.requires_cgroup_v1_memory
@pytest.mark.requires_tool("tmux")
def test_top_reads_the_daemons_socket_in_a_real_terminal(stall, socket_path):
    group, hog = stall
    d = Daemon("--socket", socket_path, "--threshold", "2", "--scan-interval", "0.5")
    try:
        d.wait_ready()
        st = os.stat(socket_path)
        assert oct(st.st_mode & 0o777) == "0o600" and st.st_uid == 0, oct(st.st_mode)
        before = allocwatch_prog_ids()
        with Pane(80, 24) as pane:
            _exercise(pane, hog.pid, socket_path, timeout=10, header=f"daemon {socket_path}")
        assert allocwatch_prog_ids() == before, "top loaded programs although the daemon answered"
        out = subprocess.run([sys.executable, "-m", "allocwatch", "top", "--once", "--json", "--socket", socket_path],
                             capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        (task,) = [t for t in doc["inflight"] if t["pid"] == hog.pid]
        assert task["site"] == "memcg_oom_wait" and task["level"] >= 1 and task["cgroup"] == group.rel_path
        assert "mem_cgroup_oom_synchronize" in task["stack"] and task["memcg"]["oom_kill_disable"] is True
        text = subprocess.run([sys.executable, "-m", "allocwatch", "top", "--once", "--socket", socket_path],
                              capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        assert text.returncode == 0 and f"daemon {socket_path}" in text.stdout, text.stderr
        assert _row(text.stdout, hog.pid) and "memcg_oom_wait" in _row(text.stdout, hog.pid)
    finally:
        assert d.stop() == 0
    assert not Path(socket_path).parent.exists(), "the daemon left its socket directory"


@pytest.mark.requires_cgroup_v1_memory
@pytest.mark.requires_tool("tmux")
def test_top_starts_its_own_session_when_no_daemon_answers(stall, socket_path):
    _, hog = stall
    before = allocwatch_prog_ids()
    out = subprocess.run([sys.executable, "-m", "allocwatch", "top", "--once", "--json", "--socket", socket_path],
                         capture_output=True, text=True, timeout=90, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert [t["site"] for t in json.loads(out.stdout)["inflight"] if t["pid"] == hog.pid] == ["memcg_oom_wait"]
    assert not progs_left(before), "--once left programs attached"
    with Pane(100, 30) as pane:
        pane.type("echo")  # the shell is up
        _exercise(pane, hog.pid, socket_path, timeout=30, header="own session")
        assert not progs_left(before), "q left programs attached"
        pane.type(f"clear; {TOP} --socket {socket_path}; echo AW-EXIT=$?")  # SIGINT (Ctrl-C) ends it like q
        assert pane.wait(lambda s: "own session" in s and _row(s, hog.pid) is not None, 30), pane.screen()
        pane.keys("C-c")
        after = pane.wait(lambda s: _EXIT.search(s) is not None, 15)
        assert after and _EXIT.search(after)[1] == "0", pane.screen()
        assert not progs_left(before), "SIGINT left programs attached"
        # a closed terminal (SIGHUP) detaches everything too
        pid = pane.shell_pid()
        pane.type(f"exec {sys.executable} -m allocwatch top --socket {socket_path}")  # top takes the shell's pid
        screen = pane.wait(lambda s: "own session" in s and _row(s, hog.pid) is not None, 30)
        assert screen, pane.screen()
        assert allocwatch_prog_ids() - before, "the own session shows data but has no programs loaded"
    deadline = time.monotonic() + 15  # the pane is gone: its top had SIGHUP
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = Path(f"/proc/{pid}").exists()
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "top did not exit on SIGHUP"
    assert not progs_left(before), "SIGHUP left programs attached"


@pytest.mark.requires_tool("setpriv")
def test_a_non_root_client_is_refused_in_one_line(world_readable_copy, socket_path):
    d = Daemon("--socket", socket_path)
    try:
        d.wait_ready()
        before = allocwatch_prog_ids()
        env = dict(os.environ, PYTHONPATH=str(world_readable_copy))
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m", "allocwatch",
             "top", "--once", "--socket", socket_path],
            capture_output=True, text=True, env=env, cwd=world_readable_copy, check=False, timeout=60,
        )
        assert proc.returncode == 15, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read the daemon's socket" in proc.stderr
        assert proc.stdout == "" and not progs_left(before)
    finally:
        assert d.stop() == 0
