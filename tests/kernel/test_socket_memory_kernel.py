# SPDX-License-Identifier: Apache-2.0
"""What clients of top's socket can make the daemon hold (issue 27, item 3):
16 root clients that connect to the real daemon's socket and never read, with
300 tasks held in the memcg OOM wait so that every snapshot is large. The
daemon's RssAnon (/proc/PID/status) is read before they connect, while they
are connected (it holds a frame each at most, and closes them once they have
been behind for 10 s), and after they have gone: within 30 s it is back
within 5 MiB of where it was."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import memcg

N_STALLED = 300
N_CLIENTS = 16
HOLD_S = 20.0  # the clients stay connected this long: past the 10 s a client may be behind
GONE_S = 30.0  # and RssAnon is read for at most this long after they have gone, until it is back
BACK_WITHIN_KIB = 5 * 1024
STAY_BACK_S = 8  # samples a second: back within BACK_WITHIN_KIB this long ends the wait


def _rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def _read_to_end(c: socket.socket, timeout_s: float) -> int | None:
    """The bytes a client gets until the daemon closes it; None if it is still open after `timeout_s`."""
    c.settimeout(timeout_s)
    n = 0
    deadline = time.monotonic() + timeout_s
    try:
        while chunk := c.recv(1 << 20):
            n += len(chunk)
            if time.monotonic() > deadline:
                return None
    except TimeoutError:
        return None
    return n


def _sample(pid: int, seconds: float, every_s: float = 1.0,
            enough: Callable[[list[int]], bool] = lambda samples: False) -> list[int]:
    """RssAnon every `every_s` for `seconds`, or until the samples so far are `enough`."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        out.append(_rss_anon_kib(pid))
        if time.monotonic() >= deadline or enough(out):
            return out
        time.sleep(every_s)


def _read_until_listed(path: str, pids: set[int], timeout_s: float) -> int:
    """Read the socket as top does until a snapshot lists `pids` stalled (all but 5 at most); that line's length."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(timeout_s)
        lines = s.makefile("rb")
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            line = lines.readline()
            assert line, "the daemon closed the socket"
            doc = json.loads(line)
            if doc["type"] == "snapshot":
                seen = len(pids & {t["pid"] for t in doc["inflight"]})
                if seen >= len(pids) - 5:  # a hog may have fitted in the headroom and finished
                    return len(line)
        raise AssertionError(f"{seen} of {len(pids)} hogs stalled in the last snapshot")


@pytest.fixture
def socket_path():
    """A per-run socket path under /run; the daemon makes and removes its directory."""
    d = Path(f"/run/aw-sockmem-{os.getpid()}-{secrets.token_hex(3)}")
    yield str(d / "allocwatch.sock")
    if d.exists():
        shutil.rmtree(d)


@pytest.mark.requires_cgroup_v1_memory
def test_clients_that_never_read_leave_no_memory_behind(daemon_factory, socket_path):
    d = daemon_factory("--socket", socket_path, "--threshold", "2", "--scan-interval", "0.5")
    pid = d.proc.pid
    with memcg.MemCgroup("aw-sockmem") as group:
        hogs = memcg.stall_indefinitely(group, N_STALLED, 4, headroom_mib=1)
        clients: list[socket.socket] = []
        try:
            pids = {h.pid for h in hogs}
            # One client that reads, until a snapshot lists every stalled task: what the
            # live view and its rendering need is in the figure before the 16 come.
            frame_bytes = _read_until_listed(socket_path, pids, 60)
            settle = _sample(pid, 10)
            before = settle[-1]
            for _ in range(N_CLIENTS):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.connect(socket_path)  # and never reads
                clients.append(c)
            during = _sample(pid, HOLD_S)
            got = [_read_to_end(c, 10) for c in clients]  # what each was sent before the daemon closed it
            for c in clients:
                c.close()
            clients.clear()
            # back, and staying back for STAY_BACK_S: no more to wait
            after = _sample(pid, GONE_S, enough=lambda got: len(got) > STAY_BACK_S and all(
                kib - before <= BACK_WITHIN_KIB for kib in got[-STAY_BACK_S - 1:]))
        finally:
            for c in clients:
                c.close()
            memcg.release(group)
            for h in hogs:
                h.stop()
    figures = (f"RssAnon KiB: settling {settle}, before {before}, during max {max(during)} {during}, "
               f"after {after[-1]} {after}; frame {frame_bytes // 1024} KiB; bytes each client got {got}")
    print(figures)
    assert None not in got, figures  # each was closed, behind for longer than max_behind_s
    # at most a frame each and the latest, beside what the scans themselves use
    assert max(during) - before <= (N_CLIENTS + 1) * frame_bytes // 1024 + BACK_WITHIN_KIB, figures
    assert after[-1] - before <= BACK_WITHIN_KIB, figures
    assert d.stop() == 0
