# SPDX-License-Identifier: Apache-2.0
"""The benchmark harness's pure helpers (bench/stats.py, bench/procinfo.py parsers).
No timing is asserted anywhere: benchmarks are not tests."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from bench import procinfo
from bench.stats import Row, percentile, ratios, render_markdown, spread, verdict


def test_spread_is_median_and_range():
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.n) == (2.5, 1.0, 10.0, 4)
    assert s.fmt(1, " s") == "2.5 s (1.0 to 10.0, n=4)"
    assert spread([]).fmt() == "n/a" and math.isnan(spread([]).median)


def test_ratios_pair_rounds_in_order():
    assert ratios([2.0, 3.0], [1.0, 3.0]) == [2.0, 1.0]


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))


def test_verdict_words():
    assert verdict(True) == "met"
    assert verdict(False, "why") == "**missed**: why"
    assert verdict(None) == "reported"


def test_table_escapes_pipes():
    table = render_markdown([Row("a|b", "c", "d", "e", "f")])
    assert table.splitlines()[0] == "| figure | condition | measured | budget | verdict |"
    assert table.splitlines()[2] == "| a\\|b | c | d | e | f |"


def test_proc_parsers():
    stat = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14"
    assert procinfo.state_letter(stat) == "S"
    assert procinfo.parse_cpu_ticks(stat) == 11 + 12
    status = "Name:\tx\nVmRSS:\t  300 kB\nRssAnon:\t  100 kB\nRssFile:\t  200 kB\nRssShmem:\t 0 kB\n"
    assert procinfo.parse_rss_kb(status) == {"VmRSS": 300, "RssAnon": 100, "RssFile": 200, "RssShmem": 0}


def test_collapsed_stacks_give_self_and_inclusive_shares():
    from bench.tools import collapsed_top

    text = "main (m.py:1);scan (s.py:5);read (r.py:9) 4\nmain (m.py:1);scan (s.py:6);read (r.py:10) 2\n"
    top = collapsed_top(text + "main (m.py:1);scan (s.py:5) 2\nmain (m.py:1);idle (i.py:3) 2\nnot a line\n", 2)
    assert top["samples"] == 10
    assert top["self"] == [("read (r.py)", 0.6), ("scan (s.py)", 0.2)]
    # main and scan are in (nearly) every sample: left out of the inclusive list
    assert top["inclusive"] == [("read (r.py)", 0.6), ("idle (i.py)", 0.2)]


def test_memory_readings_of_this_process_add_up():
    from bench import memory

    parts = memory.anon_parts()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    rss_anon = int(status["RssAnon"].split()[0]) * 1024
    assert abs(sum(parts.values()) - rss_anon) < 4 << 20  # the same pages, read a moment apart
    held = [bytearray(100) for _ in range(20_000)]  # small objects: pymalloc's
    assert memory.pymalloc_in_use() > 2_000_000
    assert memory.c_heap()["in use"] > 0
    del held


def test_memory_sizes_count_a_shared_object_once_for_the_first_owner():
    from bench import memory

    shared = list(range(1000, 2000))

    class D:
        pass

    d = D()
    d.source, d.namer, d.tracker, d.findings, d.facts = D(), [shared], [shared], {}, {}
    d.last_scan, d.latest = (), None
    sizes = memory.deep_sizes(d)  # type: ignore[arg-type]
    assert sizes["D-state namer (stacks, named sleeps)"] > 1000 * 28
    assert sizes["tracker (its last answer)"] < 200  # its list only: the ints were counted above


def test_sched_pipe_output_is_read_and_a_missing_figure_is_an_error():
    from bench import switchcost

    out = "# Running 'sched/pipe' benchmark:\n\n     Total time: 0.061 [sec]\n\n       3.086050 usecs/op\n"
    assert switchcost.parse_usecs_per_op(out) == 3.086050
    with pytest.raises(RuntimeError):
        switchcost.parse_usecs_per_op("perf: command not found")


def test_switch_rows_set_each_handler_beside_the_empty_program_of_its_attach_type():
    from bench import report

    runs = {"off": [2.0, 2.2], "empty raw": [2.1, 2.31], "empty classic": [2.12, 2.33],
            "allocwatch raw": [2.11, 2.32], "allocwatch classic": [2.2, 2.42], "daemon": [2.12, 2.33]}
    rows = {r.figure: r for r in report.switch_rows({"runs_us_per_op": runs, "cpu": 0, "loops": 1000, "bursts": 5})}
    assert rows["sched_switch: allocwatch raw"].verdict.startswith("met: +0.005")
    assert rows["sched_switch: allocwatch classic"].verdict.startswith("**missed**: +0.040")
    assert "over empty raw" in rows["sched_switch: daemon"].measured


def test_rss_sampler_gives_the_window_s_peak_and_mean_and_stops_when_the_process_has_gone():
    reads = iter([100, 300, 200])

    def read() -> int:
        try:
            return next(reads)
        except StopIteration:
            raise OSError("gone") from None

    s = procinfo.RssSampler(0, every_s=0.001, read=read)
    deadline = time.monotonic() + 5
    while len(s.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.stop() == {"peak_kb": 300.0, "mean_kb": 200.0, "samples": 3}
    nothing = procinfo.RssSampler(0, read=lambda: (_ for _ in ()).throw(OSError("gone")))
    got = nothing.stop()
    assert got["samples"] == 0 and math.isnan(got["peak_kb"])


def test_the_memory_budget_is_judged_on_the_window_s_peak_where_it_was_sampled():
    from bench import report

    idle = {"cpu_s": 0.0, "wall_s": 30.0, "rss_kb": {"RssAnon": 28 << 10, "RssFile": 20 << 10}}
    run = {"cpu_s": 1.0, "wall_s": 20.0, "stalled": 9900, "rss_kb": {"RssAnon": 38 << 10, "RssFile": 20 << 10}}
    sampled = {**run, "rss_anon_window": {"peak_kb": 45 << 10, "mean_kb": 39 << 10, "samples": 100}}

    def memory_row(r: dict) -> Row:
        rows = report.cpu_mem_rows(idle, {}, {"runs": {}}, {"runs": {"10000": r}})
        return next(x for x in rows if x.figure == "daemon memory" and "10,000" in x.condition)

    assert memory_row(run).verdict == "met"  # one read at the window's end (JSON before the sampler)
    row = memory_row(sampled)
    assert row.verdict == "**missed**" and "peak 45.0, mean 39.0" in row.measured
