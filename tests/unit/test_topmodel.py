# SPDX-License-Identifier: Apache-2.0
"""The top model and its lines, without a terminal: rows, grouping, sorting,
filtering, severity, per-site rates, and frames that fit 80x24."""

from __future__ import annotations

from typing import Any

import pytest

from allocwatch.top import view as topview
from allocwatch.top.model import (
    STALLED,
    WARN,
    group_rows,
    quantile_s,
    severity,
    site_rows,
    sort_rows,
    task_rows,
    visible_rows,
)
from tests.unit.fakes import top_doc as _doc
from tests.unit.fakes import top_task as _task


def _hist(count: int, per_bucket: dict[float, int]) -> dict[str, Any]:
    bounds = [0.001024 * 2**k for k in range(17)]
    cum, buckets = 0, []
    for le in bounds:
        cum += per_bucket.get(le, 0)
        buckets.append([le, cum])
    buckets.append(["inf", count])
    return {"count": count, "sum_s": 0.0, "buckets": buckets}


def test_severity_against_the_threshold():
    assert severity("wait", 0, 2.0, 10.0) == "ok"
    assert severity("wait", 0, 5.0, 10.0) == WARN
    assert severity("stall", 1, 10.0, 10.0) == STALLED
    assert severity("throttled", 0, 0.1, 10.0) == STALLED


def test_one_row_per_task_longest_wait_first_and_per_site_thresholds():
    doc = _doc([_task(1, 3.0, site="writeback_wait"), _task(1, 8.0, site="memcg_reclaim"), _task(2, 20.0, level=2)],
               thresholds={"*": 10.0, "memcg_reclaim": 4.0})
    rows = {r.tid: r for r in task_rows(doc)}
    assert rows[1].site == "memcg_reclaim" and rows[1].other_waits == 1 and rows[1].severity == STALLED
    assert rows[2].kind == "stall" and rows[2].severity == STALLED


def test_episodes_are_rows_and_mark_a_waiting_task():
    ep = {"kind": "livelock", "tid": 5, "pid": 5, "comm": "py", "site": "memcg_reclaim", "duration_s": 11.0,
          "level": 1, "state": "R", "cgroup": "/l", "window": {"share": 0.9}}
    thr = {**ep, "kind": "throttled", "tid": 1, "pid": 1, "window": {"share": 0.6}}
    rows = {r.tid: r for r in task_rows(_doc([_task(1, 0.2)], episodes=[ep, thr]))}
    assert rows[5].kind == "livelock" and rows[5].severity == STALLED and rows[5].wait_s == 11.0
    assert rows[1].kind == "throttled" and rows[1].share == 0.6 and rows[1].wait_s == 0.2


def test_sorts_and_filter():
    doc = _doc([_task(1, 3.0, share=0.9, cgroup="/b"), _task(2, 9.0, share=0.1, cgroup="/a", site="compaction"),
                _task(3, 5.0, cgroup="/c/x")])
    rows = task_rows(doc)
    assert [r.tid for r in sort_rows(rows, "wait")] == [2, 3, 1]
    assert [r.tid for r in sort_rows(rows, "share")] == [1, 2, 3]  # unknown share last
    assert [r.tid for r in sort_rows(rows, "pid")] == [1, 2, 3]
    assert [r.tid for r in sort_rows(rows, "cgroup")] == [2, 1, 3]
    assert [r.tid for r in sort_rows(rows, "site")] == [2, 3, 1]
    assert [r.tid for r in visible_rows(doc, text="compaction")] == [2]
    assert [r.tid for r in visible_rows(doc, text="/c/")] == [3]
    assert visible_rows(doc, text="nothing") == []


def test_many_tasks_of_one_program_share_a_row_where_their_longest_is():
    doc = _doc([_task(t, t - 190.0, pid=100) for t in range(200, 205)] + [_task(1, 100.0, comm="dd"),
               _task(2, 1.0, comm="dd")])
    grouped = visible_rows(doc)
    assert [r.tids or r.tid for r in grouped] == [1, (204, 203, 202, 201, 200), 2]
    g = grouped[1]
    assert g.pid == 100 and g.wait_s == 14.0 and g.comm == "hog"
    assert topview.task_line(g, 80).split()[:2] == ["100", "hog"] and " x5 " in topview.task_line(g, 80)
    assert len(visible_rows(doc, grouped=False)) == 7
    # threads of one process group whatever each is named
    workers = _doc([_task(t, 5.0 + t / 100, pid=300, comm=f"db worker {t}") for t in range(301, 304)])
    (g,) = visible_rows(workers)
    assert g.tids == (303, 302, 301) and g.pid == 300 and g.comm == "db worker 303"
    assert len(group_rows(task_rows(doc), min_size=10)) == 7


def test_quantiles_and_rates_over_the_last_interval():
    ms = 0.001024
    before = _hist(10, {ms: 10})
    after = _hist(110, {ms: 10, ms * 8: 98, ms * 1024: 2})
    assert quantile_s(before, after, 0.5) == pytest.approx(ms * 8)
    assert quantile_s(before, after, 0.99) == pytest.approx(ms * 1024)
    assert quantile_s(after, after, 0.5) is None
    prev = _doc([], time_s=100.0, sites={"memcg_reclaim": {"waiting": 0, "stalled": 0, "longest_s": 0,
                                                          "stalled_seconds": 1.0, "completed": before}})
    cur = _doc([_task(1, 1.0)], time_s=102.0, sites={
        "memcg_reclaim": {"waiting": 0, "stalled": 0, "longest_s": 0, "stalled_seconds": 2.0, "completed": after},
        "memcg_oom_wait": {"waiting": 1, "stalled": 0, "longest_s": 1.0, "stalled_seconds": 1.0, "completed": None},
        "compaction": {"waiting": 0, "stalled": 0, "longest_s": 0, "stalled_seconds": 0.0, "completed": _hist(0, {})},
    })
    rows = {s.site: s for s in site_rows(prev, cur)}
    assert set(rows) == {"memcg_reclaim", "memcg_oom_wait"}  # idle sites are left out
    assert rows["memcg_reclaim"].waits_per_s == 50.0 and rows["memcg_reclaim"].seconds_per_s == 0.5
    assert rows["memcg_oom_wait"].in_flight == 1
    assert site_rows(None, cur)[0].waits_per_s is None  # one snapshot: no rate yet


def test_a_frame_fits_80x24_and_uses_more_width_when_there_is_more():
    doc = _doc([_task(t, 30.0 - t, level=1, cgroup="/user.slice/very/long/cgroup/path/aw-stall-12345-abcdef",
                      gfp="0x100cca") for t in range(1, 40)] + [_task(99, 1.0, comm="x" * 40)])
    rows = visible_rows(doc, grouped=False)
    lines = topview.frame_lines(doc, None, rows, "daemon /run/allocwatch/allocwatch.sock", 0.4, 80, 24, 0, "sort: wait")
    assert len(lines) == 24 and all(len(t) <= 80 for t, _ in lines)
    assert lines[0][0].startswith("allocwatch top  daemon")
    assert "sites 1/2 attached" in lines[2][0] and lines[2][0].endswith("0 episodes")
    assert "kswapd0 S 12.0s" in lines[2][0]
    assert "psi10 some 1.50% full 0.50%" in lines[1][0] and "oom kills 2" in lines[1][0]
    table = next(i for i, (t, _) in enumerate(lines) if t.startswith("    PID"))
    assert "GFP" not in lines[table][0] and lines[table + 1][1] == "selected"
    assert lines[table + 2][1] == STALLED and lines[table + 2][0].endswith("..2345-abcdef")
    assert "(+" in lines[-1][0]  # the rows that did not fit are counted
    wide = topview.frame_lines(doc, None, rows, "own session", 0.4, 160, 50)
    head = next(t for t, _ in wide if t.startswith("    PID"))
    assert "GFP" in head and "TID" in head and all(len(t) <= 160 for t, _ in wide)
    assert any("0x100cca" in t and "/user.slice/very/long" in t for t, _ in wide)
    once = topview.frame_lines(doc, None, rows, "own session", 0.4, 80)
    assert sum(1 for _, s in once if s in (STALLED, "ok", WARN)) == 40  # --once: every row


def test_detail_has_both_stacks_gfp_and_the_cgroup_limit():
    t = _task(7, 12.0, level=1, detail=True, gfp="0x100cca", gfp_flags="GFP_HIGHUSER_MOVABLE", order=0,
              stack=["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"], recent_stack=["try_charge_memcg"],
              uid=0, cmdline="python -c x",
              memcg={"version": 1, "usage_bytes": 32 << 20, "limit_bytes": 32 << 20, "high_bytes": None,
                     "near_limit": True, "oom_kill_disable": True, "under_oom": True, "failcnt": 3, "events": {}})
    (row,) = task_rows(_doc([t]))
    text = "\n".join(line for line, _ in topview.detail_lines(row, 80))
    assert "gfp=0x100cca(GFP_HIGHUSER_MOVABLE) order=0" in text
    (reclaiming,) = task_rows(_doc([_task(9, 1.0, site="memcg_reclaim", reclaimed_so_far_pages=40)]))
    assert "now: reclaimed_so_far=40pages" in topview.detail_lines(reclaiming, 80)[2][0]
    assert "memcg v1: usage=32.0MiB limit=32.0MiB (at its limit) oom_kill_disable=1" in text
    assert "\n    under_oom=1 failcnt=3" in text  # wrapped, not cut
    assert "  mem_cgroup_oom_synchronize\n  pagefault_out_of_memory" in text and "  try_charge_memcg" in text
    (bare,) = task_rows(_doc([_task(8, 1.0)]))
    assert "only the longest waits carry them" in "\n".join(t for t, _ in topview.detail_lines(bare, 80))
    # what a report's block would say to do, for this task alone
    wide = "\n".join(line for line, _ in topview.detail_lines(row, 400))
    assert "what to do (memcg_oom_disabled): seen: memory cgroup /box at its limit under_oom=1" in wide
    assert "what to do" not in "\n".join(t for t, _ in topview.detail_lines(bare, 80))  # no facts, no line


def test_durations_read_at_a_glance():
    assert [topview.duration_text(s) for s in (0.25, 59.9, 61, 3725)] == ["0.2s", "59.9s", "1m01s", "1h02m"]


def test_detail_says_the_device_of_a_writeback_wait_and_the_window_s_shrinkers():
    wb = {"bdi": "7:3", "ino": 12, "device": "loop3", "written_bytes_per_s": 1 << 20, "written_over_s": 10.0,
          "writes_in_flight": 3, "reads_in_flight": 0, "write_limit_bytes_per_s": None}
    t = _task(9, 12.0, site="memcg_reclaim", detail=True, writeback=wb,
              window={"share": 1.0, "shrinkers": [{"shrinker": "super_cache_scan", "calls": 9, "asked": 900,
                                                   "freed": 0, "objects": 50, "no_fs_io": True}]})
    (row,) = task_rows(_doc([t]))
    text = "\n".join(line for line, _ in topview.detail_lines(row, 400))
    assert "waiting on writeback of loop3 (7:3) ino=12: written 1.0MiB/s over 10s, 3 write(s) in flight" in text
    assert ("shrinkers in the window: super_cache_scan calls=9 asked=900 freed=0 objects=50 (no fs/io)"
            in text)
