# SPDX-License-Identifier: Apache-2.0
"""The service manager's view: sd_notify over $NOTIFY_SOCKET, never blocking.

READY=1 once the sites are attached; after every scan a STATUS= line (sites
watched, tasks stalled now, waits in flight) and WATCHDOG=1, sent by the scan
loop itself, so a wedged loop stops the pings and systemd restarts the
service; RELOADING=1 (with MONOTONIC_USEC) on SIGHUP; STOPPING=1 on the way
out. The socket is a non-blocking datagram socket: a message that cannot go
is dropped and counted, and the scan loop never waits for systemd.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from allocwatch.core.snapshot import Snapshot


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.dropped = 0
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        if addr.startswith("@"):  # the abstract namespace
            self._addr = b"\0" + addr[1:].encode()
        elif addr.startswith("/"):
            self._addr = addr
        if self._addr is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if self._sock is None or self._addr is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError:  # full, gone, refused: a service manager's trouble never stops a scan
            self.dropped += 1

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def reloaded(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping: detaching the BPF programs")

    def publish(self, snap: Snapshot) -> None:
        attached = sum(1 for c in snap.coverage if c.attached)
        stalled = snap.stalled_count()  # a count: the rows are made only for readers that want them
        self.send(
            f"STATUS=watching {attached} wait sites; {stalled} task(s) stalled now, "
            f"{len(snap.inflight)} wait(s) in flight; scan {snap.scan}",
            "WATCHDOG=1",
        )

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
