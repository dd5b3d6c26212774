# SPDX-License-Identifier: Apache-2.0
"""Stall decisions with a fake clock: thresholds, escalation, recovery."""

from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Ended, Thresholds, Tracker, Wait

S = NS_PER_S


def wait(tid=100, site=Site.MEMCG_OOM_WAIT, start=0, dstate=True):
    return Wait(tid=tid, pid=tid, comm="hog", site=site, start_ns=start, dstate=dstate)


def test_nothing_before_threshold():
    t = Tracker(Thresholds(10 * S))
    r = t.scan(9 * S, [wait()], [])
    assert r.stalls == [] and r.recovered == [] and r.stalled_now == 0


def test_first_report_then_every_further_threshold():
    t = Tracker(Thresholds(10 * S))
    w = wait()
    levels = []
    for now in range(1, 46):
        r = t.scan(now * S, [w], [])
        levels += [(now, s.level) for s in r.stalls]
    assert levels == [(10, 1), (20, 2), (30, 3), (40, 4)]


def test_a_wait_skipping_levels_is_reported_once_at_its_level():
    t = Tracker(Thresholds(10 * S))
    w = wait()
    assert [s.level for s in t.scan(25 * S, [w], []).stalls] == [2]
    assert t.scan(29 * S, [w], []).stalls == []
    assert [s.level for s in t.scan(30 * S, [w], []).stalls] == [3]


def test_recovered_with_exact_duration_from_end_event():
    t = Tracker(Thresholds(S))
    w = wait()
    t.scan(2 * S, [w], [])
    r = t.scan(3 * S, [w], [Ended(w, int(2.5 * S))])  # ended after the snapshot
    assert r.stalls == []
    assert len(r.recovered) == 1
    rec = r.recovered[0]
    assert rec.exact and rec.duration_ns == int(2.5 * S) and rec.reports == 1


def test_recovered_without_end_event_uses_last_sighting():
    t = Tracker(Thresholds(S))
    w = wait()
    t.scan(2 * S, [w], [])
    t.scan(3 * S, [w], [])
    r = t.scan(4 * S, [], [])
    assert [(x.exact, x.duration_ns, x.reports) for x in r.recovered] == [(False, 3 * S, 2)]


def test_short_waits_never_reported_or_recovered():
    t = Tracker(Thresholds(10 * S))
    w = wait()
    t.scan(1 * S, [w], [])
    r = t.scan(2 * S, [], [Ended(w, S)])
    assert r.stalls == [] and r.recovered == []


def test_per_site_threshold():
    t = Tracker(Thresholds(10 * S, {Site.MEMCG_RECLAIM: 2 * S}))
    a = wait(1, Site.MEMCG_RECLAIM, dstate=False)
    b = wait(2, Site.MEMCG_OOM_WAIT)
    r = t.scan(3 * S, [a, b], [])
    assert [s.wait.tid for s in r.stalls] == [1]


def test_many_tasks_one_scan_longest_first():
    t = Tracker(Thresholds(S))
    waits = [wait(tid, start=tid * S // 10) for tid in range(1, 201)]
    r = t.scan(30 * S, waits, [])
    assert len(r.stalls) == 200 == r.stalled_now
    durations = [s.duration_ns for s in r.stalls]
    assert durations == sorted(durations, reverse=True)


def test_same_tid_new_wait_is_a_new_stall():
    t = Tracker(Thresholds(S))
    first = wait(start=0)
    t.scan(2 * S, [first], [])
    second = wait(start=5 * S)
    r = t.scan(7 * S, [second], [Ended(first, 4 * S)])
    assert [s.wait.start_ns for s in r.stalls] == [5 * S]
    assert [x.wait.start_ns for x in r.recovered] == [0]


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
    assert len(t.scan(2 * S, [a, b], []).stalls) == 2


def test_waits_nearing_their_threshold_are_given_longest_first():
    t = Tracker(Thresholds(default_ns=10 * S, per_site_ns={Site.DIRECT_RECLAIM: 4 * S}))
    ws = [wait(1, start=0), wait(2, start=1 * S), wait(3, start=3 * S),
          wait(4, Site.DIRECT_RECLAIM, start=6 * S, dstate=False)]
    r = t.scan(9 * S, ws, [], ahead_ns=2 * S)
    # 9 s, 8 s of 10 s are within 2 s; 6 s is not; 3 s of its site's 4 s is
    assert [w.tid for w in r.nearing] == [1, 2, 4]
    assert not r.stalls
    r = t.scan(10 * S, ws, [], ahead_ns=2 * S)
    assert [s.wait.tid for s in r.stalls] == [1, 4]  # due now: no longer nearing
    assert [w.tid for w in r.nearing] == [2]  # 3 is 7 s in: 3 s short
    assert t.scan(10 * S, ws, []).nearing == []  # none asked for
