# SPDX-License-Identifier: Apache-2.0
"""core/blockpolicy.py: which stalls and findings a block shows, and when (pure, a fake clock)."""

from __future__ import annotations

from allocwatch.core.blockpolicy import BlockPolicy, BlockRules
from allocwatch.core.findings import Finding
from allocwatch.core.records import item_tid, listing
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S as S
from allocwatch.core.tracker import Stall, Wait


def stall(tid: int, duration_s: float, level: int = 1) -> Stall:
    return Stall(Wait(tid, tid, f"t{tid}", Site.MEMCG_OOM_WAIT, 0), round(duration_s * S), level)


def finding(tid: int, kind: str = "throttled") -> Finding:
    return Finding(kind, tid, tid, f"t{tid}", Site.DIRTY_THROTTLE, 0, 12.0, 1)


def test_no_filter_keeps_everything_longest_first():
    p = BlockPolicy(BlockRules())
    kept, found = p.select([stall(1, 10), stall(2, 30)], [finding(3)], lambda tid: None)
    assert [s.wait.tid for s in kept] == [2, 1] and [f.tid for f in found] == [3]


def test_the_cgroup_filter_keeps_prefixes_and_hides_the_ends_of_what_it_left_out():
    cgroups = {1: "/box/web", 2: "/other", 3: None, 4: "/other"}
    p = BlockPolicy(BlockRules(cgroups=("/box",)))
    kept, found = p.select([stall(1, 10), stall(2, 10), stall(3, 10)], [finding(4)], cgroups.get)
    assert [s.wait.tid for s in kept] == [1] and found == []
    assert p.shows_end(1)
    assert not p.shows_end(2) and p.shows_end(2)  # said once
    assert not p.shows_end(4) and p.shows_end(4)


def test_one_block_per_report_interval_with_half_a_scan_of_slack():
    p = BlockPolicy(BlockRules(report_interval_ns=5 * S, scan_interval_ns=1 * S))
    assert p.release(10 * S, [stall(1, 10)], []) == 0
    assert p.release(12 * S, [stall(1, 12), stall(2, 10)], [finding(3)]) is None  # held back
    assert p.release(int(14.4 * S), [stall(1, 14)], []) is None  # 4.4 s: still within 5 s less 0.5 s
    assert p.release(int(14.5 * S), [stall(1, 14)], []) is not None  # 4.5 s: goes out


def test_what_was_held_back_comes_out_with_the_next_block_and_is_counted():
    p = BlockPolicy(BlockRules(report_interval_ns=10 * S, scan_interval_ns=1 * S))
    kept, found = p.select([stall(1, 10)], [], lambda tid: None)
    assert p.release(10 * S, kept, found) == 0
    kept, found = p.select([stall(2, 10)], [finding(3)], lambda tid: None)
    assert p.release(11 * S, kept, found) is None
    assert p.held_back_total == 1  # tasks, not findings
    kept, found = p.select([stall(2, 20, level=2)], [], lambda tid: None)  # the next sighting of 2
    assert [(s.wait.tid, s.level) for s in kept] == [(2, 2)] and [f.tid for f in found] == [3]
    assert p.release(20 * S, kept, found) == 2  # 2 and 3 were held back


def test_the_listing_is_the_first_max_tasks():
    p = BlockPolicy(BlockRules(max_tasks=2))
    stalls = [stall(t, 40 - t) for t in range(1, 5)]
    assert p.listed(stalls, []) == {1, 2}


def test_the_listing_when_all_fit_is_what_the_cut_would_give():
    """All of a block's items fit: every task is listed without sorting them,
    the same tids as the cut of the sorted listing; a task with a wait and a
    finding is two items, so two tasks with three items do not fit in two."""
    import random

    rng = random.Random(7)
    for _ in range(200):
        stalls = [stall(rng.randint(1, 9), rng.choice([10, 20, 30])) for _ in range(rng.randint(0, 6))]
        findings = [finding(t) for t in rng.sample(range(1, 12), rng.randint(0, 3))]
        cap = rng.randint(1, 8)
        fast = BlockPolicy(BlockRules(max_tasks=cap)).listed(stalls, findings)
        assert fast == {item_tid(x) for _, x in listing(stalls, findings)[:cap]}, (stalls, findings, cap)
    two_items = [stall(1, 30)], [finding(1), finding(2)]
    assert BlockPolicy(BlockRules(max_tasks=2)).listed(*two_items) == {1}
