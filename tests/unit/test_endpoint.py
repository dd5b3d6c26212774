# SPDX-License-Identifier: Apache-2.0
"""The metrics endpoint (outputs/endpoint.py) as a scraper and misbehaving
clients meet it: real sockets on 127.0.0.x against the real server."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from allocwatch.kernel.sockdiag import loopback_owner
from allocwatch.outputs import endpoint
from allocwatch.outputs.endpoint import MAX_CONNECTIONS, MAX_PER_PEER, MetricsServer, admit, peer_of
from allocwatch.outputs.metrics import SnapshotCollector, registry_for

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"


def _ask(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _closed_by_server(s: socket.socket) -> bool:
    """The server closed it (what it sent first, a 503, read and dropped); False if still open."""
    s.settimeout(0.0)
    try:
        while data := s.recv(65536):
            assert data.startswith(b"HTTP/1.1 503"), data
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _wait(pred, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def server():
    started: list[MetricsServer] = []

    def start(registry=None, timeout_s: float = 5.0, **kw) -> MetricsServer:
        box: list[MetricsServer] = []
        reg = registry or registry_for(SnapshotCollector(lambda: None, endpoint=lambda: box[0].counters()))
        srv = MetricsServer("127.0.0.1:0", reg, timeout_s=timeout_s, **kw)
        box.append(srv)
        started.append(srv)
        srv.start()
        return srv

    yield start
    for srv in started:
        srv.close()


def test_the_endpoint_answers_scrapers_and_refuses_the_rest(server):
    port = server(timeout_s=0.5).address[1]
    ok = _ask(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}".encode() in head and b"allocwatch_report_blocks_dropped_total" in body
    assert _ask(port, b"HEAD /metrics HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")  # headers, no body
    assert _ask(port, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert _ask(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert _ask(port, b"junk\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _ask(port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n").startswith(b"HTTP/1.1 431")
    assert _ask(port, b"GET / HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert _ask(port, b"GET /" + b"y" * 9000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")
    with _connect(port) as s:  # a request line, then end of input: answered
        s.sendall(b"GET / HTTP/1.0\r\nX: y")
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    stalled = _connect(port)  # says nothing: dropped at the deadline
    assert _ask(port, SCRAPE).startswith(b"HTTP/1.1 200")  # served meanwhile
    stalled.settimeout(5)
    assert stalled.recv(10) == b""  # closed by the server
    stalled.close()


def test_the_deadline_is_the_whole_requests_however_slowly_bytes_come(server):
    """A byte of the request line every 0.1 s, never 1 s without one: the 1 s deadline
    closes it all the same, long before the line could end (on the old endpoint each
    read had the whole time again, and the line held its connection to the end)."""
    srv = server(timeout_s=1.0)
    line = b"GET /metrics" + b"x" * 60 + b" HTTP/1.1\r\n\r\n"
    sent = 0
    with _connect(srv.address[1]) as s:
        try:
            for ch in line:
                s.send(bytes([ch]))
                sent += 1
                time.sleep(0.1)
                if _closed_by_server(s):
                    break
            else:
                s.settimeout(5)
                pytest.fail(f"the whole request line went in over {0.1 * len(line):.0f} s: {s.recv(100)!r}")
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 35, f"{sent} bytes went in before the 1 s deadline closed it"
    assert _wait(lambda: srv.timed_out == 1) and srv.counters() == {"refused": 0, "shed": 0, "timed_out": 1}


def test_when_full_the_oldest_idle_connection_is_shed_and_a_scrape_gets_in(server):
    """Far more silent connections than the cap, from one peer and from several (the
    whole of 127/8 is loopback): no thread a connection, the oldest idle ones closed,
    and a scrape served at once while they stay."""
    srv = server(timeout_s=30.0)
    port = srv.address[1]
    threads = threading.active_count()
    one = [_connect(port) for _ in range(MAX_PER_PEER + 20)]
    assert _wait(lambda: srv.shed == 20)
    assert threading.active_count() == threads
    # the count goes up as the server closes them: the client sees each close a moment later
    assert _wait(lambda: all(_closed_by_server(s) for s in one[:20]))  # the oldest went
    assert not any(_closed_by_server(s) for s in one[20:])
    body = _ask(port, SCRAPE)
    assert body.startswith(b"HTTP/1.1 200") and b"allocwatch_metrics_connections_shed_total 21.0" in body
    # Two more peers fill the cap (the scrape shed one of the first's 16, which
    # holds 15 now); the next sheds the oldest idle connection of the peer holding the most.
    others = [_connect(port, "127.0.0.2") for _ in range(MAX_PER_PEER - 2)]
    others += [_connect(port, "127.0.0.3") for _ in range(MAX_CONNECTIONS - (MAX_PER_PEER - 1) - len(others))]
    assert srv.shed == 21
    others.append(_connect(port, "127.0.0.3"))
    assert _wait(lambda: srv.shed == 22)
    assert _wait(lambda: _closed_by_server(one[21]))
    assert not any(_closed_by_server(s) for s in one[22:] + others)
    assert _ask(port, SCRAPE, "127.0.0.9").startswith(b"HTTP/1.1 200")
    assert srv.refused == 0 and srv.timed_out == 0
    for s in one + others:
        s.close()


class _Big:
    """A registry whose text is far more than the socket buffers hold."""

    body = b"# " + b"x" * (8 << 20) + b"\n"

    def render(self) -> bytes:
        return self.body


def test_a_whole_request_is_never_shed_and_only_then_is_a_connection_refused(server):
    """A scrape whose request is in but whose answer it reads slowly holds its slot
    through a flood of idle connections from its own peer, and gets every byte; a
    connection is refused only when every slot has a whole request."""
    srv = server(_Big(), timeout_s=30.0)
    port = srv.address[1]
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    slow.sendall(SCRAPE)
    slow.settimeout(5)
    first = slow.recv(100)
    assert first.startswith(b"HTTP/1.1 200")
    flood = [_connect(port) for _ in range(3 * MAX_PER_PEER)]
    assert _wait(lambda: srv.shed == 2 * MAX_PER_PEER + 1)  # all but the newest 15 idle ones
    slow.setblocking(True)
    got = bytearray(first)
    while chunk := slow.recv(1 << 20):
        got += chunk
    assert got.partition(b"\r\n\r\n")[2] == _Big.body  # every byte, after the flood
    slow.close()
    for s in flood:
        s.close()
    # every slot of the peer whole: the next connection is refused, not one of them shed
    readers = []
    for _ in range(MAX_PER_PEER):
        r = socket.socket()
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        r.connect(("127.0.0.1", port))
        r.sendall(SCRAPE)
        r.settimeout(5)
        assert r.recv(100).startswith(b"HTTP/1.1 200")  # its request whole
        readers.append(r)
    shed = srv.shed
    with _connect(port) as late:
        late.settimeout(5)
        assert late.recv(100).startswith(b"HTTP/1.1 503")
    assert srv.refused == 1 and srv.shed == shed
    for r in readers:
        r.close()


@dataclass
class _Open:
    peer: str
    accepted_s: float
    whole: bool = False


def test_admit_sheds_the_oldest_idle_of_the_peer_at_its_cap_else_of_the_one_holding_most():
    assert admit([_Open("a", 1.0)], "a", 4, 2) == (True, None)
    conns = [_Open("a", 2.0), _Open("a", 1.0, whole=True), _Open("a", 3.0)]
    assert admit(conns, "a", 8, 3) == (True, conns[0])  # its own, idle, oldest
    assert admit([_Open("a", 1.0, True), _Open("a", 2.0, True)], "a", 8, 2) == (False, None)
    mixed = [_Open("b", 1.0), _Open("a", 2.0), _Open("a", 3.0), _Open("c", 0.5, True)]
    assert admit(mixed, "d", 4, 3) == (True, mixed[1])  # "a" holds most
    held = [_Open("b", 1.0), _Open("a", 2.0, True), _Open("a", 3.0, True), _Open("c", 0.5, True)]
    assert admit(held, "d", 4, 3) == (True, held[0])  # "a" has nothing idle: anyone's oldest idle
    assert admit([_Open("a", 1.0, True)] * 4, "d", 4, 3) == (False, None)


def test_peers_are_ipv4_addresses_and_ipv6_64s_and_on_loopback_users():
    assert peer_of("127.0.0.1") == "127.0.0.1"
    assert peer_of("127.0.0.1", 0) != peer_of("127.0.0.1", 65534) == peer_of("::ffff:127.0.0.1", 65534)
    assert peer_of("::ffff:10.0.0.7") == "10.0.0.7"
    assert peer_of("2001:db8:1:2:aaaa::1") == peer_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert peer_of("fe80::1%eth0") == "fe80::/64"
    assert endpoint.MAX_PER_PEER < endpoint.MAX_CONNECTIONS


def test_the_owner_of_a_loopback_client_is_its_sockets_uid():
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            with socket.create_connection((host, listener.getsockname()[1])):
                conn, _ = listener.accept()
                with conn:
                    assert loopback_owner(conn) == os.geteuid()
    a, b = socket.socketpair()
    with a, b:
        assert loopback_owner(a) is None  # not TCP


NOBODY = 65534


@pytest.mark.kernel  # root, to be nobody (decided before the test; in CI it must run)
@pytest.mark.requires_tool("setpriv")
def test_on_loopback_one_users_flood_sheds_only_its_own_connections(server):
    """Every local user connects from 127.0.0.1: nobody's 40 silent connections
    hold 16 slots at most and shed their own, never root's idle ones."""
    srv = server(timeout_s=30.0, owner=loopback_owner)
    port = srv.address[1]
    mine = [_connect(port) for _ in range(MAX_PER_PEER)]  # root's, at root's cap
    code = ("import socket, sys, time; s = [socket.create_connection(('127.0.0.1', int(sys.argv[1]))) "
            "for _ in range(40)]; print('open', flush=True); time.sleep(30)")
    child = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                              "/usr/bin/python3", "-c", code, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "open\n"
        assert _wait(lambda: srv.shed == 40 - MAX_PER_PEER), srv.counters()
        assert not any(_closed_by_server(s) for s in mine)
        assert srv.refused == 0
    finally:
        child.kill()
        child.wait()
        for s in mine:
            s.close()
