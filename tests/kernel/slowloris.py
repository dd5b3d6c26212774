# SPDX-License-Identifier: Apache-2.0
"""A slowloris client, for kernel tests: run as its own process (as `nobody`,
with `python3 -c` of this file's text: it imports only the standard library).

    python3 -c "$(cat slowloris.py)" HOST PORT CONNECTIONS BYTE_EVERY_S DURATION_S

It keeps CONNECTIONS open to HOST:PORT, sends each one byte of an endless
request line every BYTE_EVERY_S seconds, opens a new one as soon as the server
closes one, and after DURATION_S prints one JSON line of what it saw: how many
it opened, how many the server closed, the most it had open at once, and for
how long the server let them be.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time

LINE = b"GET /metrics?" + b"x" * 100_000  # never ends: the server never has a whole request


class _Conn:
    def __init__(self, sock: socket.socket, now_s: float) -> None:
        self.sock = sock
        self.opened_s = now_s
        self.next_s = now_s
        self.sent = 0


class Attack:
    def __init__(self, host: str, port: int, connections: int, byte_every_s: float) -> None:
        self.addr = (host, port)
        self.connections = connections
        self.byte_every_s = byte_every_s
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}
        self.held_s: list[float] = []
        self.stats = {"opened": 0, "connect_failed": 0, "closed_by_server": 0, "answered_503": 0,
                      "bytes_sent": 0, "most_open": 0}

    def run(self, duration_s: float) -> dict:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            self._fill()
            self._reap()
            self._trickle()
        return self._summary()

    def _fill(self) -> None:
        while len(self.conns) < self.connections:
            try:
                sock = socket.create_connection(self.addr, timeout=2)
            except OSError:
                self.stats["connect_failed"] += 1
                time.sleep(0.05)
                return
            sock.setblocking(False)
            c = _Conn(sock, time.monotonic())
            self.conns[sock.fileno()] = c
            self.sel.register(sock, selectors.EVENT_READ, c)
            self.stats["opened"] += 1
        self.stats["most_open"] = max(self.stats["most_open"], len(self.conns))

    def _reap(self) -> None:
        for key, _ in self.sel.select(0.05):
            try:
                data = key.data.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            self.stats["answered_503"] += data.startswith(b"HTTP/1.1 503")
            self._closed(key.data)

    def _trickle(self) -> None:
        now = time.monotonic()
        for c in [c for c in self.conns.values() if now >= c.next_s]:
            try:
                c.sock.send(LINE[c.sent: c.sent + 1])
            except OSError:
                self._closed(c)
                continue
            c.sent += 1
            self.stats["bytes_sent"] += 1
            c.next_s = now + self.byte_every_s

    def _closed(self, c: _Conn) -> None:
        self.sel.unregister(c.sock)
        del self.conns[c.sock.fileno()]
        c.sock.close()
        self.stats["closed_by_server"] += 1
        self.held_s.append(time.monotonic() - c.opened_s)

    def _summary(self) -> dict:
        now = time.monotonic()
        still = [now - c.opened_s for c in self.conns.values()]
        for c in self.conns.values():
            c.sock.close()
        held = sorted(self.held_s)
        return {**self.stats, "still_open": len(still), "longest_held_s": round(max(held + still, default=0.0), 2),
                "closed_after_5s": sum(1 for h in held if h > 5.0),
                "open_over_5s_at_end": sum(1 for h in still if h > 5.0),
                "median_closed_after_s": round(held[len(held) // 2], 3) if held else None}


if __name__ == "__main__":
    host, port, n, every, duration = sys.argv[1:6]
    print(json.dumps(Attack(host, int(port), int(n), float(every)).run(float(duration))), flush=True)
