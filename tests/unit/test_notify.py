# SPDX-License-Identifier: Apache-2.0
"""sd_notify over a real AF_UNIX datagram socket: what a service manager receives."""

from __future__ import annotations

import socket

from allocwatch.core.snapshot import EMPTY_HISTOGRAM, SiteCoverage, SiteNow, Snapshot
from allocwatch.outputs.notify import SystemdNotifier


def _socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    return sock, str(path)


def test_ready_status_watchdog_reload_and_stop(tmp_path):
    sock, path = _socket(tmp_path)
    n = SystemdNotifier({"NOTIFY_SOCKET": path})
    n.ready("watching 15 of 15 wait sites")
    assert sock.recv(4096).decode().splitlines() == ["READY=1", "STATUS=watching 15 of 15 wait sites"]
    snap = Snapshot(3, 0.0, 0, 0.0, (), {"memcg_oom_wait": SiteNow(4, 3, 12.0)}, (), {}, {}, {}, {},
                    EMPTY_HISTOGRAM, (SiteCoverage("memcg_oom_wait", "x", True),))
    n.publish(snap)
    msg = sock.recv(4096).decode().splitlines()
    assert msg[0].startswith("STATUS=watching 1 wait sites; 3 task(s) stalled now") and msg[1] == "WATCHDOG=1"
    n.reloading()
    msg = sock.recv(4096).decode().splitlines()
    assert msg[0] == "RELOADING=1" and msg[1].startswith("MONOTONIC_USEC=") and int(msg[1].split("=")[1]) > 0
    n.stopping()
    assert sock.recv(4096).decode().startswith("STOPPING=1")
    n.close()


def test_no_socket_no_messages_and_a_gone_manager_never_raises(tmp_path):
    assert not SystemdNotifier({}).active
    n = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    n.ready("x")  # ENOENT: dropped and counted, never raised
    assert n.dropped == 1
