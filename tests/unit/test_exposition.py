# SPDX-License-Identifier: Apache-2.0
"""outputs/exposition.py's text, read back by the Prometheus project's own
parser (prometheus_client, a test-only dependency), and the metrics endpoint
as a scraper and a misbehaving client meet it."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from allocwatch.outputs.exposition import CounterFamily, GaugeFamily, HistogramFamily, number, render
from allocwatch.outputs.metrics import MetricsServer, SnapshotCollector, registry_for


def families():
    c = CounterFamily("t_waits_total", 'doc with \\ and\na newline', labels=["site", "cgroup"])
    c.add_metric(["memcg_reclaim", '/a"b\\c\nd'], 3)
    g = GaugeFamily("t_now", "gauge")
    g.add_metric([], 1e20)
    h = HistogramFamily("t_wait_seconds", "hist", labels=["site"])
    h.add_metric(["x"], [("0.1", 1.0), ("1", 3.0), ("+Inf", 4.0)], 2.5)
    return [c, g, h]


def test_the_text_parses_back_to_the_same_families_samples_and_labels():
    parsed = {f.name: f for f in text_string_to_metric_families(render(families()).decode())}
    types = {n: f.type for n, f in parsed.items()}
    assert types == {"t_waits": "counter", "t_now": "gauge", "t_wait_seconds": "histogram"}
    assert parsed["t_waits"].documentation == "doc with \\ and\na newline"
    (s,) = parsed["t_waits"].samples
    assert (s.name, s.labels, s.value) == ("t_waits_total", {"site": "memcg_reclaim", "cgroup": '/a"b\\c\nd'}, 3.0)
    assert parsed["t_now"].samples[0].value == 1e20
    got = [(s.name, s.labels.get("le"), s.value) for s in parsed["t_wait_seconds"].samples]
    assert got == [("t_wait_seconds_bucket", "0.1", 1.0), ("t_wait_seconds_bucket", "1", 3.0),
                   ("t_wait_seconds_bucket", "+Inf", 4.0), ("t_wait_seconds_count", None, 4.0),
                   ("t_wait_seconds_sum", None, 2.5)]


def test_numbers_and_mistakes():
    assert [number(v) for v in (2, 0.5, math.inf, -math.inf, math.nan)] == ["2.0", "0.5", "+Inf", "-Inf", "NaN"]
    c = CounterFamily("x", "d", labels=["a"])
    try:
        c.add_metric([], 1)
    except ValueError as exc:
        assert "1 label values wanted, got 0" in str(exc)
    else:
        raise AssertionError("a missing label value was taken")
    assert render([]) == b""


def test_the_daemon_no_longer_imports_a_client_library_or_an_http_stack():
    unwanted = ("prometheus_client", "http.server", "urllib.request", "email")
    code = ("import sys, allocwatch.cli, allocwatch.app.daemon, allocwatch.outputs.metrics; "
            f"print(sorted(m for m in {unwanted!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _ask(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_endpoint_answers_scrapers_and_refuses_the_rest(tmp_path):
    srv = MetricsServer("127.0.0.1:0", registry_for(SnapshotCollector(lambda: None)), timeout_s=0.5)
    try:
        srv.start()
        port = srv.address[1]
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
        stalled = socket.create_connection(("127.0.0.1", port))  # says nothing: dropped after the timeout
        t0 = time.monotonic()
        assert _ask(port, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")  # served meanwhile
        stalled.settimeout(5)
        assert stalled.recv(10) == b"" and time.monotonic() - t0 < 4  # closed by the server
        stalled.close()
    finally:
        srv.close()


def test_clients_that_say_nothing_cannot_take_every_thread_nor_keep_a_scrape_out_for_long():
    from allocwatch.outputs import metrics

    box: list[MetricsServer] = []
    registry = registry_for(SnapshotCollector(lambda: None, endpoint=lambda: {"refused": box[0].server.refused}))
    srv = MetricsServer("127.0.0.1:0", registry, timeout_s=2.0)
    box.append(srv)
    try:
        srv.start()
        port = srv.address[1]
        t0 = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(metrics.MAX_CONNECTIONS + 40)]
        assert time.monotonic() - t0 < 3  # a burst is not held back by a listen backlog of 5
        deadline = time.monotonic() + 3
        while srv.server.refused < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.server.refused == 40  # past the cap: answered 503 and closed at once
        assert registry.get_sample_value("allocwatch_metrics_connections_refused_total") == 40
        idle[-1].settimeout(2)
        assert idle[-1].recv(100).startswith(b"HTTP/1.1 503 Service Unavailable")
        assert threading.active_count() <= metrics.MAX_CONNECTIONS + 10
        t1 = time.monotonic()
        while True:  # the slots come back as the silent ones time out; a scrape then gets in
            try:
                if _ask(port, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass
            assert time.monotonic() - t1 < 5, "no scrape served within the handler timeout"
            time.sleep(0.1)
        for s in idle:
            s.close()
    finally:
        srv.close()


def test_a_client_that_trickles_its_request_is_dropped_at_the_deadline_of_the_whole_request():
    srv = MetricsServer("127.0.0.1:0", registry_for(SnapshotCollector(lambda: None)), timeout_s=1.0)
    try:
        srv.start()
        with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=5) as s:
            t0 = time.monotonic()
            try:
                for ch in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"y" * 100:
                    s.send(bytes([ch]))  # a byte every 0.1 s: never 1 s without one
                    time.sleep(0.1)
                    if time.monotonic() - t0 > 4:
                        break
                got = s.recv(100)
            except OSError:  # reset: dropped
                got = b""
            assert got == b"" and time.monotonic() - t0 < 2.5  # closed near its 1 s, not served
    finally:
        srv.close()
