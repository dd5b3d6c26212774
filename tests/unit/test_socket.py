# SPDX-License-Identifier: Apache-2.0
"""The daemon's socket for top: modes and owner, hello then snapshots, a client
that falls behind is dropped and counted, and who may read it."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from allocwatch.errors import SocketUnavailable
from allocwatch.outputs.socket import SocketServer, may_read
from allocwatch.top.feed import NoDaemon, SocketFeed
from tests.unit.fakes import snapshot_daemon

NOBODY = 65534


@pytest.fixture
def sockdir(tmp_path):
    d = tmp_path / "run"  # made by the server
    yield d


def _own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def test_without_a_group_only_the_owner_may_open_it(sockdir):
    srv = SocketServer(str(sockdir / "a.sock"))
    try:
        st, dst = os.lstat(sockdir / "a.sock"), os.lstat(sockdir)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        assert stat.S_IMODE(dst.st_mode) == 0o700 and dst.st_uid == os.geteuid()
    finally:
        srv.close()
    assert not sockdir.exists()  # it made the directory, so it removes it


def test_with_a_group_its_members_may_too(sockdir):
    group = _own_group()
    srv = SocketServer(str(sockdir / "a.sock"), group=group)
    try:
        st, dst = os.lstat(sockdir / "a.sock"), os.lstat(sockdir)
        gid = grp.getgrnam(group).gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        assert stat.S_IMODE(dst.st_mode) == 0o750 and dst.st_gid == gid
    finally:
        srv.close()


def test_a_private_directory_gets_the_group_and_a_shared_one_is_left_alone(tmp_path):
    group = _own_group()
    gid = grp.getgrnam(group).gr_gid
    private = tmp_path / "rt"
    private.mkdir()
    private.chmod(0o750)  # as systemd's RuntimeDirectory= makes it
    srv = SocketServer(str(private / "a.sock"), group=group)
    srv.close()
    st = os.lstat(private)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_gid == gid and private.exists()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    srv = SocketServer(str(shared / "a.sock"), group=group)
    srv.close()
    assert stat.S_IMODE(os.lstat(shared).st_mode) == 0o755


def test_an_unknown_group_a_live_socket_and_another_file_are_refused(sockdir):
    sockdir.mkdir(mode=0o700)  # not made by the server: left in place
    with pytest.raises(SocketUnavailable, match="no group named"):
        SocketServer(str(sockdir / "a.sock"), group="no-such-group-aw")
    srv = SocketServer(str(sockdir / "a.sock"))
    try:
        with pytest.raises(SocketUnavailable, match="another allocwatch answers"):
            SocketServer(str(sockdir / "a.sock"))
    finally:
        srv.close()
    (sockdir / "f").write_text("x")
    with pytest.raises(SocketUnavailable, match="not a socket"):
        SocketServer(str(sockdir / "f"))


def test_a_stale_socket_is_replaced(sockdir):
    sockdir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sockdir / "a.sock"))
    stale.close()  # bound, never listening: connect is refused, as after a crash
    srv = SocketServer(str(sockdir / "a.sock"))
    srv.close()


def test_hello_then_one_snapshot_per_scan(sockdir, tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path)
    srv = SocketServer(str(sockdir / "a.sock"))
    srv.set_hello({"type": "hello", "version": "9"})
    try:
        assert not srv.wanted()
        feed = SocketFeed(str(sockdir / "a.sock"))
        assert feed.hello["version"] == "9"
        deadline = time.monotonic() + 5
        while not srv.wanted() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.wanted()
        for t in range(3):
            clock["ns"] = t * 1_000_000_000
            srv.publish(d.scan_once())
            time.sleep(0.05)
        assert feed.wait_for(3, 5), feed.closed
        prev, cur = feed.frames()
        assert prev is not None and cur is not None and (prev["scan"], cur["scan"]) == (2, 3)
        feed.close()
    finally:
        srv.close()


def test_no_daemon_is_said_so(sockdir):
    with pytest.raises(NoDaemon):
        SocketFeed(str(sockdir / "none.sock"))


def test_a_client_that_never_reads_is_dropped_and_counted_without_slowing_publish(sockdir, tmp_path):
    d, *_ = snapshot_daemon(tmp_path)
    snap = d.scan_once()
    big = {"type": "snapshot", "pad": "x" * (256 << 10)}
    srv = SocketServer(str(sockdir / "a.sock"), max_behind_s=2.0, render=lambda s: big)
    try:
        lazy = socket.socket(socket.AF_UNIX)
        lazy.connect(str(sockdir / "a.sock"))  # and never reads
        deadline = time.monotonic() + 5
        while not srv.wanted() and time.monotonic() < deadline:
            time.sleep(0.01)
        slowest = 0.0
        published = 0
        for i in range(200):  # a scan every 0.1 s of the snapshots' own clock
            t0 = time.monotonic()
            srv.publish(dataclasses.replace(snap, mono_ns=i * 100_000_000))
            slowest = max(slowest, time.monotonic() - t0)
            published += 1
            time.sleep(0.005)
            if srv.clients_dropped:
                break
        assert srv.clients_dropped == 1 and slowest < 0.25  # a queue append; blocking would take seconds
        assert published >= 20  # not before 2 s of scans had gone by with no frame finished
        lazy.settimeout(5)
        got = b""
        while chunk := lazy.recv(1 << 20):  # what it was sent, then the end: it was closed
            got += chunk
        assert got.startswith(b'{"type":"hello"') and len(got) < 2 * len(json.dumps(big)) + 4096
    finally:
        srv.close()


def test_a_client_behind_holds_at_most_one_frame_and_skips_to_the_latest(sockdir, tmp_path):
    """Frames are shared, not copied per client; one that does not read keeps the frame
    it was being sent and the latest, over 60 snapshots, and when it reads it gets
    whole lines: the frame it had begun, then the newest."""
    d, *_ = snapshot_daemon(tmp_path)
    snap = d.scan_once()
    pad = "x" * (256 << 10)  # more than a Unix socket's send buffer: the first frame cannot all go
    srv = SocketServer(str(sockdir / "a.sock"), max_behind_s=3600,
                       render=lambda s: {"type": "snapshot", "scan": s.scan, "pad": pad})
    try:
        lazy = socket.socket(socket.AF_UNIX)
        lazy.connect(str(sockdir / "a.sock"))
        lazy.settimeout(5)
        lines = lazy.makefile("rb")
        assert json.loads(lines.readline())["type"] == "hello"  # and then nothing until the end
        reader = SocketFeed(str(sockdir / "a.sock"))  # reads everything, as top does
        frame = len(json.dumps({"type": "snapshot", "scan": 60, "pad": pad}, separators=(",", ":"))) + 1
        held = []
        for scan in range(1, 61):
            srv.publish(dataclasses.replace(snap, scan=scan, mono_ns=scan * 1_000_000_000))
            assert reader.wait_for(scan, 5), reader.closed  # the socket thread has fanned it out
            held.append(srv.held_bytes())
        assert max(held) <= 3 * frame, held  # two clients: one frame each, and the latest
        reader.close()
        got = [json.loads(lines.readline()) for _ in range(2)]  # whole lines
        assert [g["scan"] for g in got] == [1, 60]
        assert srv.clients_dropped == 0
        lazy.close()
    finally:
        srv.close()


def test_who_may_read():
    assert may_read(0, 0, None, 0) and may_read(1000, 1000, None, 1000)  # root; the daemon's own user
    assert not may_read(NOBODY, NOBODY, None, 0)
    assert may_read(NOBODY, 4242, 4242, 0)  # primary group
    assert not may_read(NOBODY, NOBODY, 0, 0) or "nobody" in grp.getgrgid(0).gr_mem


@pytest.mark.kernel  # root, to be nobody (decided before the test; in CI it must run)
@pytest.mark.requires_tool("setpriv")
def test_a_non_root_client_is_refused_by_mode_and_by_credentials():
    top = Path(tempfile.mkdtemp(prefix="aw-sock-"))  # a path nobody may walk (pytest's tmp is 0700)
    top.chmod(0o755)
    sockdir = top / "run"
    srv = SocketServer(str(sockdir / "a.sock"))
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('connect', e.errno); sys.exit()\n"
        "print(s.makefile().readline().strip())\n"
    )
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", code]
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_nobody, str(sockdir / "a.sock")], capture_output=True, text=True, timeout=30,
                              check=False)

    try:
        os.chmod(sockdir, 0o755)
        denied = run()
        assert denied.stdout.strip() == "connect 13", denied  # EACCES: the mode keeps it out
        os.chmod(sockdir / "a.sock", 0o666)  # even with the mode opened up, the credentials check holds
        refused = run()
        line = json.loads(refused.stdout)
        assert line["type"] == "refused" and f"uid {NOBODY} may not read" in line["error"], refused
        assert srv.clients_refused == 1
    finally:
        srv.close()
        shutil.rmtree(top)


def test_drops_are_metrics(sockdir):
    from allocwatch.outputs.metrics import SnapshotCollector, registry_for

    srv = SocketServer(str(sockdir / "a.sock"))
    try:
        srv.clients_dropped, srv.snapshots_dropped = 2, 5  # as the socket thread counts them
        text = registry_for(SnapshotCollector(lambda: None, socket=srv.stats)).render().decode()
    finally:
        srv.close()
    assert 'allocwatch_socket_clients_dropped_total{reason="behind"} 2.0' in text
    assert 'allocwatch_socket_clients_dropped_total{reason="refused"} 0.0' in text
    assert "allocwatch_socket_snapshots_dropped_total 5.0" in text


def test_a_snapshot_that_cannot_be_rendered_is_said_once_and_the_socket_goes_on(sockdir, tmp_path):
    d, *_ = snapshot_daemon(tmp_path)
    said: list[str] = []
    calls = {"n": 0}

    def flaky(snap):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ValueError("boom")
        return {"type": "snapshot", "scan": snap.scan, "time_s": snap.time_s}

    srv = SocketServer(str(sockdir / "a.sock"), render=flaky, on_error=said.append)
    try:
        feed = SocketFeed(str(sockdir / "a.sock"))
        deadline = time.monotonic() + 5
        while not srv.wanted() and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):
            srv.publish(d.scan_once())
            time.sleep(0.05)
        assert feed.wait_for(1, 5) and feed.frames()[1]["scan"] == 3
        assert len(said) == 1 and "ValueError: boom" in said[0] and srv.stats()["snapshots_dropped"] == 2
        feed.close()
    finally:
        srv.close()


def test_a_server_closed_at_once_closes_cleanly_every_time(sockdir):
    """close() right after start, before the thread is in its loop: the thread
    once closed the wake pipe as close() wrote to it (EBADF, or a write to a
    file that reused the descriptor)."""
    for i in range(200):
        before = set(os.listdir("/proc/self/fd"))
        srv = SocketServer(str(sockdir / f"s{i}.sock"))
        srv.close()
        srv.close()  # twice: nothing more happens
        assert set(os.listdir("/proc/self/fd")) <= before  # nothing left open
