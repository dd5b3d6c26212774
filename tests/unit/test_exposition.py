# SPDX-License-Identifier: Apache-2.0
"""outputs/exposition.py's text, read back by the Prometheus project's own
parser (prometheus_client, a test-only dependency). The endpoint that serves
it: tests/unit/test_endpoint.py."""

from __future__ import annotations

import math
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from allocwatch.outputs.exposition import CounterFamily, GaugeFamily, HistogramFamily, number, render


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
