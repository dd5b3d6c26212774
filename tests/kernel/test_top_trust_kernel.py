# SPDX-License-Identifier: Apache-2.0
"""Another user's socket at the path top reads, and a daemon told to serve in a
directory others may write (issue 27, item 2).

An impostor run as `nobody` serves forged snapshots (ESC, BEL and C1 sequences
in every string) where top is pointed: top must stop in one line with exit 19,
print none of its bytes and load nothing. A daemon whose socket_path is in a
world-writable directory (sticky as /tmp, or not; with another user's file
already at the path) must stop at start in one line with exit 3, which the
shipped unit does not restart, and load nothing: checked under a real systemd
too (tests/kernel/container.py), where it fails once and is not started again."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.kernel.container import Container
from tests.kernel.daemonproc import allocwatch_prog_ids, progs_left

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
EVIL = "\x1b]0;pwned-title\x07\x1b[2J\x1b[41m\x9b31m\x7f"

# Served as nobody by the system interpreter: a hello, then a snapshot every 0.2 s that
# top's model can draw, every string carrying terminal control sequences.
IMPOSTOR = r'''
import json, socket, sys, threading, time
EVIL = sys.argv[2]
def snap(n):
    task = {"kind": "stall", "tid": 4242, "pid": 4242, "comm": "IMPOSTOR" + EVIL, "site": "memcg_oom_wait" + EVIL,
            "duration_s": 99.0, "level": 9, "start_known": True, "gfp": "GFP" + EVIL, "order": 0, "share": 1.0,
            "detail": False, "cgroup": "/forged" + EVIL, "state": "D" + EVIL}
    return {"type": "snapshot", "scan": n, "time_s": time.time(), "inflight": [task], "episodes": [],
            "thresholds_s": {"*": 10.0}, "sites": {}, "counters": {"oom_kills": 0}, "coverage": [],
            "context": {"psi": {}, "meminfo_bytes": {}, "kswapd": [{"node": 0, "pid": 1, "state": "S" + EVIL}]}}
def serve(conn):
    try:
        conn.sendall((json.dumps({"type": "hello", "protocol": 1, "version": EVIL}) + "\n").encode())
        for n in range(1, 300):
            conn.sendall((json.dumps(snap(n)) + "\n").encode())
            time.sleep(0.2)
    except OSError:
        pass
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture
def scratch():
    """A per-run directory under /tmp, removed whatever happens."""
    d = Path(tempfile.mkdtemp(prefix=f"aw-trust-{os.getpid()}-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


@pytest.mark.requires_tool("setpriv")
def test_top_refuses_a_socket_served_by_another_user_and_prints_none_of_it(scratch):
    scratch.chmod(0o755)  # nobody walks to its directory
    home = scratch / "nobodys"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)  # a place nobody may bind in, as /tmp lets anyone
    path = home / "allocwatch.sock"
    impostor = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c", IMPOSTOR,
         str(path), EVIL],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "listening", impostor.stderr
        assert os.lstat(path).st_uid == NOBODY
        before = allocwatch_prog_ids()
        for mode in (["--once"], ["--once", "--json"]):
            proc = subprocess.run([sys.executable, "-m", "allocwatch", "top", *mode, "--socket", str(path)],
                                  capture_output=True, timeout=60, check=False, cwd=ROOT)
            err = proc.stderr.decode("ascii", "replace")
            assert proc.returncode == 19, (mode, proc.returncode, proc.stdout[:300], err)
            assert proc.stdout == b"" and len(err.strip().splitlines()) == 1, (mode, err)
            assert f"uid {NOBODY}" in err and str(path) in err, err
            out = proc.stdout + proc.stderr
            assert b"IMPOSTOR" not in out and b"pwned" not in out and b"\x1b" not in out and b"\x07" not in out
        assert not progs_left(before), "top loaded programs although a socket answered"
    finally:
        impostor.kill()  # the impostor process this test started
        impostor.wait(10)


def _unit_prevents_restart_of(code: int) -> bool:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "allocwatch.service")
    return str(code) in unit["Service"].get("RestartPreventExitStatus", "").split()


def _run_daemon(socket_path: Path) -> tuple[int | None, str]:
    """The daemon with this socket_path (in its configuration file): its exit code, or
    None when it was still running after 60 s (then stopped), and its stderr."""
    cfg = socket_path.parent.parent / f"aw-{os.getpid()}.yaml"
    cfg.write_text(f"socket_path: {socket_path}\nmetrics_addr: ''\n")
    proc = subprocess.Popen([sys.executable, "-m", "allocwatch", "run", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        return None, err
    finally:
        cfg.unlink()


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_a_socket_path_others_may_write_is_refused_at_start_and_not_restarted(scratch, mode):
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(mode)  # as /tmp (sticky), or a directory anyone may write
    before = allocwatch_prog_ids()
    code, err = _run_daemon(shared / "allocwatch.sock")
    assert code == 3, (code, err)
    assert len(err.strip().splitlines()) == 1 and f"socket_path: {shared} may be written by other users" in err, err
    assert not (shared / "allocwatch.sock").exists() and not progs_left(before)
    # another user's file at the path first (it made the daemon exit 14, restarted in a loop)
    squat = shared / "allocwatch.sock"
    squat.write_text("")
    os.chown(squat, NOBODY, NOBODY)
    code, err = _run_daemon(squat)
    assert code == 3 and len(err.strip().splitlines()) == 1, (code, err)
    assert os.lstat(squat).st_uid == NOBODY and not progs_left(before)
    assert _unit_prevents_restart_of(3), "systemd would start it again every 2 s"


def test_below_a_sticky_directory_the_daemon_makes_its_own_and_serves(scratch):
    sticky = scratch / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    path = sticky / "aw" / "allocwatch.sock"
    proc = subprocess.Popen([sys.executable, "-m", "allocwatch", "run", "--metrics-addr", "", "--socket", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists(), proc.poll()
        st = os.lstat(path.parent)
        assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700
        top = subprocess.run([sys.executable, "-m", "allocwatch", "top", "--once", "--json", "--socket", str(path)],
                             capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        assert top.returncode == 0, top.stderr
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert not path.parent.exists()


@pytest.mark.requires_tool("systemd-nspawn")
def test_the_service_with_a_socket_path_in_tmp_fails_once_in_one_line_and_is_not_restarted():
    """scripts/install in a throw-away container, with socket_path in /tmp: before, the unit
    served there (or, with another user's file at the path, restarted every 2 s on exit 14)."""
    before = allocwatch_prog_ids()
    unit = "allocwatch.service"
    with Container(ROOT, prefix="aw-trust") as c:
        c.sh("mkdir -p /etc/allocwatch && printf 'foreign_pid_namespace: true\\nsocket_path: /tmp/allocwatch.sock\\n'"
             " > /etc/allocwatch/allocwatch.yaml")
        c.run([str(ROOT / "scripts" / "install")], timeout_s=300, check=False)  # its start fails: said, not fatal
        deadline = time.monotonic() + 60
        while c.show(unit, "ActiveState")["ActiveState"] not in ("failed", "active") and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3 * 2 + 1)  # three RestartSec=2 periods: a restart loop would have started it again
        state = c.show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        out = c.run(["journalctl", "-o", "json", "--no-pager", "-u", unit], check=False).stdout
        said = [e["MESSAGE"] for e in map(json.loads, filter(None, out.splitlines()))
                if e.get("SYSLOG_IDENTIFIER") == "allocwatch" and isinstance(e.get("MESSAGE"), str)]
        assert state == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "3", "NRestarts": "0"}, \
            (state, said)
        assert len(said) == 1 and said[0].startswith("allocwatch: socket_path: /tmp may be written by other users"), \
            said
    assert not progs_left(before)
