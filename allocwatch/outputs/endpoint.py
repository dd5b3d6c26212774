# SPDX-License-Identifier: Apache-2.0
"""The metrics endpoint: HTTP/1.1 as far as a scraper needs, one request a
connection, served by one thread with a selector (no thread a connection).

What holds, whatever clients do:
- A connection has `timeout_s` (5 s) in all to send its request, from accept to
  the empty line that ends its headers. The deadline is the whole request's: the
  thread never blocks on a read, and closes the connection when the deadline
  passes however often bytes come in. A whole request then has as long again to
  take its answer.
- At most MAX_CONNECTIONS are open at once, at most MAX_PER_PEER of them from one
  peer: an IPv4 address, an IPv6 /64, and on loopback a local user (the uid of
  the client's socket: `owner`, kernel/sockdiag.py). A connection past a cap
  sheds the oldest connection that has not sent a whole request yet: of its own
  peer at the peer's cap, else of the peer holding the most. Clients that say nothing or
  trickle cannot keep a scrape out, however fast they reconnect. A request once
  whole is never shed: only when every open connection has sent one is the new
  connection refused (503).
- Idle connections cost a descriptor and at most one line of buffer each.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from allocwatch.outputs.httpwire import BUSY, MAX_REQUEST_LINE, Renders, Request, answer, response

MAX_CONNECTIONS = 32  # open at once, whole or not
MAX_PER_PEER = 16  # open at once from one peer: one remote host cannot fill the rest
ACCEPTS_PER_PASS = 8  # then the connections already open are read: a burst cannot starve them
POLL_S = 0.1  # how soon close() is noticed
_RECV_BYTES = 4096


def split_addr(addr: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" (as config normalised it) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def peer_of(host: str, uid: int | None = None) -> str:
    """Who a connection is from, for the per-peer cap: an IPv4 address (mapped into
    IPv6 too), or the /64 of an IPv6 address (one host's usual share); and the
    user, when the client's socket is known to be local and whose."""
    who = f" uid {uid}" if uid is not None else ""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host + who
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped) + who
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)) + who
    return str(ip) + who


class Open(Protocol):
    peer: str
    accepted_s: float
    whole: bool


_C = TypeVar("_C", bound=Open)


def admit(open_: Sequence[_C], peer: str, max_total: int = MAX_CONNECTIONS,
          max_per_peer: int = MAX_PER_PEER) -> tuple[bool, _C | None]:
    """Whether a new connection from `peer` is taken, and which open one to shed
    for it first: the oldest that has not sent a whole request, of `peer` when
    it is at its cap, else of the peer holding the most (then of anyone)."""
    mine = [c for c in open_ if c.peer == peer]
    if len(mine) >= max_per_peer:
        pools = [mine]
    elif len(open_) >= max_total:
        held: dict[str, int] = {}
        for c in open_:
            held[c.peer] = held.get(c.peer, 0) + 1
        top = max(held.values())
        pools = [[c for c in open_ if held[c.peer] == top], list(open_)]
    else:
        return True, None
    for pool in pools:
        idle = [c for c in pool if not c.whole]
        if idle:
            return True, min(idle, key=lambda c: c.accepted_s)
    return False, None


class _Conn:
    """One connection: its request as it comes, then its answer as it goes."""

    def __init__(self, sock: socket.socket, peer: str, now_s: float, timeout_s: float) -> None:
        self.sock = sock
        self.peer = peer
        self.accepted_s = now_s
        self.deadline_s = now_s + timeout_s  # for the whole request; then for the whole answer
        self.request = Request()
        self.whole = False
        self.out = memoryview(b"")


class MetricsServer:
    """Binds at construction (so a port in use is known before BPF is loaded);
    `start()` serves in a daemon thread; `close()` stops it."""

    def __init__(self, addr: str, registry: Renders, timeout_s: float = 5.0,
                 on_error: Callable[[str], None] = lambda line: None,
                 owner: Callable[[socket.socket], int | None] = lambda conn: None) -> None:
        host, port = split_addr(addr)
        family = socket.AF_INET
        with contextlib.suppress(ValueError):  # a host name: IPv4 resolution
            if ipaddress.ip_address(host).version == 6:
                family = socket.AF_INET6
        self._listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            # a backlog of 5 made a burst of connections wait for SYN retransmits,
            # a second each (200 connections took 31 s, measured)
            self._listener.listen(64)
        except BaseException:
            self._listener.close()
            raise
        self.address = self._listener.getsockname()
        self._registry = registry
        self._timeout_s = timeout_s
        self._on_error = on_error  # said once; a scrape that fails is answered 500
        self._owner = owner  # the uid of a loopback client's socket, or None
        self._conns: dict[int, _Conn] = {}  # by fd, in the order accepted
        self._closing = False
        self.refused = 0  # answered 503: every open connection had sent a whole request
        self.shed = 0  # closed for a newer connection before they had sent a whole request
        self.timed_out = 0  # closed at their deadline
        self.render_failed = 0
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)

    def counters(self) -> dict[str, int]:
        return {"refused": self.refused, "shed": self.shed, "timed_out": self.timed_out}

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            self._thread.join(5)
        else:
            self._shut()

    # -- the endpoint's thread ------------------------------------------------------

    def _run(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._closing:
                now = time.monotonic()
                self._expire(now)
                soonest = min((c.deadline_s for c in self._conns.values()), default=now + POLL_S)
                for key, _events in self._sel.select(max(0.0, min(soonest - now, POLL_S))):
                    c = key.data
                    if c is None:
                        self._accept()
                    elif self._conns.get(c.sock.fileno()) is c:  # not closed earlier in this pass
                        self._service(c)
        finally:
            self._shut()

    def _shut(self) -> None:
        for c in list(self._conns.values()):
            self._drop(c)
        self._sel.close()
        self._listener.close()

    def _expire(self, now: float) -> None:
        for c in [c for c in self._conns.values() if now >= c.deadline_s]:
            self.timed_out += 1
            self._drop(c)

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or gone before accept: try again next pass
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(POLL_S)
                return
            peer = peer_of(addr[0], self._owner(sock))
            take, victim = admit(list(self._conns.values()), peer)
            if victim is not None:
                self.shed += 1
                self._drop(victim, BUSY)
            if not take:
                self.refused += 1
                self._drop_new(sock)
                continue
            sock.setblocking(False)
            c = _Conn(sock, peer, time.monotonic(), self._timeout_s)
            self._conns[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, c)
            self._service(c)  # a scraper's request is often there already: whole at once, never shed

    def _service(self, c: _Conn) -> None:
        if not c.whole:
            self._read(c)
        if c.whole:
            self._write(c)

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(c)
        line = c.request.line
        if not data and line is None:  # gone before a request line
            return self._drop(c)
        try:  # at end of input (the client is done sending), a request line already in is answered
            out = c.request.feed(data, self._registry) if data else answer(line or [], self._registry)
        except Exception as exc:  # a bug in a collector: this scrape fails, the endpoint goes on
            self.render_failed += 1
            if self.render_failed == 1:
                self._on_error(f"internal error: cannot render the metrics: {type(exc).__name__}: {exc}")
            out = response(500, b"cannot render the metrics\n")
        if out is not None:
            c.whole = True
            c.out = memoryview(out)
            c.deadline_s = time.monotonic() + self._timeout_s
            self._sel.modify(c.sock, selectors.EVENT_WRITE, c)

    def _write(self, c: _Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._drop(c)
        c.out = c.out[n:]
        if not c.out:
            self._drop(c)

    def _drop(self, c: _Conn, last: bytes = b"") -> None:
        self._conns.pop(c.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(c.sock)
        self._close(c.sock, last)

    def _drop_new(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._close(sock, BUSY)

    @staticmethod
    def _close(sock: socket.socket, last: bytes) -> None:
        if last:  # one small answer, never waited on: it fits the socket's empty buffer
            with contextlib.suppress(OSError):  # what the client sent, read: close() then does not reset the answer
                sock.recv(MAX_REQUEST_LINE)
            with contextlib.suppress(OSError):
                sock.send(last)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()
