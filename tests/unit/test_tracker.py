# SPDX-License-Identifier: Apache-2.0
"""Which waits are over their threshold, with a fake clock; and that a scan
which reuses the last answer says what deciding again would have said.
(Escalation and ends are core/episodes.py's: tests/unit/test_episodes.py.)"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Ended, Thresholds, Tracker, Wait

S = NS_PER_S


def wait(tid=100, site=Site.MEMCG_OOM_WAIT, start=0, dstate=True):
    return Wait(tid=tid, pid=tid, comm="hog", site=site, start_ns=start, dstate=dstate)


def test_nothing_before_threshold():
    r = Tracker(Thresholds(10 * S)).scan(9 * S, [wait()], [])
    assert r.stalled_now == 0 and not r.stalled_tids and not r.over and r.nearing == ()


def test_a_wait_is_over_from_its_threshold_on():
    t = Tracker(Thresholds(10 * S))
    w = wait()
    assert [t.scan(now * S, [w], []).stalled_now for now in (9, 10, 11, 45)] == [0, 1, 1, 1]
    assert dict(t.scan(46 * S, [w], []).over) == {100: w}


def test_per_site_threshold():
    t = Tracker(Thresholds(10 * S, {Site.MEMCG_RECLAIM: 2 * S}))
    a = wait(1, Site.MEMCG_RECLAIM, dstate=False)
    b = wait(2, Site.MEMCG_OOM_WAIT)
    r = t.scan(3 * S, [a, b], [])
    assert (r.stalled_now, r.stalled_tids, dict(r.over)) == (1, {1}, {1: a})


def test_over_is_each_tasks_longest_wait_over_its_threshold():
    t = Tracker(Thresholds(S))
    inner = wait(7, Site.WRITEBACK_WAIT, start=3 * S)
    outer = wait(7, Site.MEMCG_RECLAIM, start=1 * S, dstate=False)
    other = wait(8, start=2 * S)
    r = t.scan(5 * S, [inner, outer, other], [])
    assert r.stalled_now == 3 and r.stalled_tids == {7, 8}
    assert dict(r.over) == {7: outer, 8: other}


def test_a_wait_that_ended_is_not_over_though_read_in_flight():
    t = Tracker(Thresholds(S))
    w = wait(start=0)
    later = wait(start=5 * S)
    r = t.scan(7 * S, [w, later], [Ended(w, 4 * S)])  # read before its end was drained
    assert dict(r.over) == {100: later} and r.stalled_now == 1


def test_only_stack_named_completions_are_counted_here():
    t = Tracker(Thresholds(S))
    w = wait()
    t.scan(S // 2, [w], [Ended(w, 3 * S, counted_in_kernel=False), Ended(wait(tid=2), S)])
    totals = t.dstate_completed[Site.MEMCG_OOM_WAIT]
    assert (totals.count, totals.total_ns) == (1, 3 * S)


def test_pair_wait_and_dstate_wait_of_same_task_are_distinct():
    t = Tracker(Thresholds(S))
    a = wait(site=Site.MEMCG_RECLAIM, dstate=False)
    b = wait(site=Site.WRITEBACK_WAIT, dstate=True)
    assert t.scan(2 * S, [a, b], []).stalled_now == 2


def test_waits_nearing_their_threshold_are_given_longest_first():
    t = Tracker(Thresholds(default_ns=10 * S, per_site_ns={Site.DIRECT_RECLAIM: 4 * S}))
    ws = [wait(1, start=0), wait(2, start=1 * S), wait(3, start=3 * S),
          wait(4, Site.DIRECT_RECLAIM, start=6 * S, dstate=False)]
    r = t.scan(9 * S, ws, [], ahead_ns=2 * S)
    # 9 s, 8 s of 10 s are within 2 s; 6 s is not; 3 s of its site's 4 s is
    assert [w.tid for w in r.nearing] == [1, 2, 4]
    assert r.stalled_now == 0
    r = t.scan(10 * S, ws, [], ahead_ns=2 * S)
    assert r.stalled_tids == {1, 4}  # over now: no longer nearing
    assert [w.tid for w in r.nearing] == [2]  # 3 is 7 s in: 3 s short
    assert t.scan(10 * S, ws, []).nearing == ()  # none asked for


def test_the_same_waits_give_the_very_same_answer_until_one_crosses_a_threshold():
    """10,000 tasks stuck for good: the scans between their threshold crossings
    decide nothing again."""
    t = Tracker(Thresholds(10 * S))
    stuck = [wait(tid, start=0) for tid in range(1, 1001)]
    young = wait(2000, start=25 * S)
    first = t.scan(30 * S, [*stuck, young], [], ahead_ns=S)
    assert first.stalled_now == 1000
    assert t.scan(33 * S, [*stuck, young], [], ahead_ns=S) is first  # a new list of the same objects
    nearing = t.scan(34 * S, [*stuck, young], [], ahead_ns=S)  # young is 9 s in: nearing
    assert nearing is not first and nearing.nearing == (young,)
    assert t.scan(35 * S, [*stuck, young], [], ahead_ns=S).stalled_now == 1001
    moved = dataclasses.replace(stuck[0], reclaimed_pages=5)  # an entry the kernel wrote: a new object
    r = t.scan(36 * S, [moved, *stuck[1:], young], [], ahead_ns=S)
    assert r.over[1] is moved


def test_new_thresholds_decide_every_wait_again():
    t = Tracker(Thresholds(10 * S))
    ws = [wait(1, start=0)]
    assert t.scan(5 * S, ws, []).stalled_now == 0
    t.thresholds = Thresholds(2 * S)
    assert t.scan(5 * S, ws, []).stalled_now == 1


def test_a_list_changed_after_the_scan_is_not_taken_for_the_same_input():
    t = Tracker(Thresholds(S))
    ws = [wait(1, start=0)]
    assert t.scan(5 * S, ws, []).stalled_now == 1
    ws.append(wait(2, start=0))  # the caller's own list, changed in place
    assert t.scan(6 * S, ws, []).stalled_now == 2


def reference(now_ns: int, inflight: list[Wait], ended: list[Ended], ahead_ns: int,
              thresholds: Thresholds) -> tuple[int, set[int], dict[int, Wait], list[Wait]]:
    """Every wait decided again, plainly: what a scan must say."""
    gone = {e.wait.key for e in ended}
    over: dict[int, Wait] = {}
    nearing = []
    n = 0
    for w in inflight:
        if w.key in gone:
            continue
        d = max(now_ns - w.start_ns, 0)
        th = thresholds.for_site(w.site)
        if d >= th:
            n += 1
            if w.tid not in over or w.start_ns < over[w.tid].start_ns:
                over[w.tid] = w
        elif ahead_ns and d + ahead_ns >= th:
            nearing.append((d, w))
    nearing.sort(key=lambda x: -x[0])
    return n, set(over), over, [w for _, w in nearing]


@pytest.mark.parametrize("seed", range(20))
def test_every_scan_says_what_deciding_every_wait_again_says(seed):
    rnd = random.Random(seed)
    sites = [Site.MEMCG_OOM_WAIT, Site.MEMCG_RECLAIM, Site.WRITEBACK_WAIT]
    th = Thresholds(rnd.choice([3, 10]) * S, {Site.MEMCG_RECLAIM: rnd.choice([1, 2, 5]) * S})
    t = Tracker(th)
    now = 0
    live: list[Wait] = []
    ahead = rnd.choice([0, S // 2, S])
    answers: list[object] = []
    for _ in range(150):
        now += rnd.choice([S // 4, S // 2, S, S, S, 3 * S])
        ended: list[Ended] = []
        roll = rnd.random()
        if roll < 0.15:
            live.append(Wait(rnd.randrange(1, 30), 1, "w", rnd.choice(sites), now - rnd.randrange(0, 12 * S),
                             dstate=rnd.random() < 0.5))
        elif roll < 0.25 and live:
            gone = live.pop(rnd.randrange(len(live)))
            if rnd.random() < 0.5:  # read in flight one last time, its end drained with it
                ended.append(Ended(gone, now - gone.start_ns))
                r = t.scan(now, [*live, gone], ended, ahead)
                assert (r.stalled_now, set(r.stalled_tids), dict(r.over), list(r.nearing)) == \
                    reference(now, [*live, gone], ended, ahead, th)
                continue
        elif roll < 0.3 and live:
            i = rnd.randrange(len(live))
            live[i] = dataclasses.replace(live[i], reclaimed_pages=rnd.randrange(100))
        elif roll < 0.32:
            th = Thresholds(rnd.choice([2, 4]) * S)
            t.thresholds = th
        r = t.scan(now, list(live), ended, ahead)
        assert (r.stalled_now, set(r.stalled_tids), dict(r.over), list(r.nearing)) == \
            reference(now, list(live), ended, ahead, th)
        answers.append(r)
    reused = sum(a is b for a, b in itertools.pairwise(answers))
    assert 10 < reused < len(answers) - 10  # both ways were taken, often
