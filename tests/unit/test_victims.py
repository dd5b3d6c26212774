# SPDX-License-Identifier: Apache-2.0
"""The OOM victim book and the tasks still waiting in a stuck victim's cgroup, with a fake clock."""

from __future__ import annotations

from allocwatch.core.model import Acct
from allocwatch.core.sites import NR_SITES, Site
from allocwatch.core.tracker import Wait
from allocwatch.core.victims import VictimBook, cgroup_waiters, in_cgroup

S = 1_000_000_000


def reaper_acct(pid: int, n: int) -> Acct:
    waits = [0] * NR_SITES
    waits[Site.OOM_REAPER] = n
    return Acct(pid, pid, "oom_reaper", tuple([0] * NR_SITES), tuple(waits), 0, 0, 0)


def test_a_victim_is_remembered_until_gone_with_when_it_was_chosen():
    book = VictimBook()
    book.chosen(42, "victim", 3 * S)
    states = {42: "D"}
    (v,) = book.alive(states.get)
    assert (v.pid, v.comm, v.chosen_ns, v.state, v.reaped) == (42, "victim", 3 * S, "D", False)
    assert book.for_s(13 * S) == [(42, "victim", 10.0)]
    for gone in ("Z", None):
        book.chosen(42, "victim", 3 * S)
        states[42] = gone
        assert book.alive(states.get) == [] and book.for_s(13 * S) == []


def test_the_reaper_is_seen_in_flight_ended_or_counted_in_the_victims_account():
    book = VictimBook()
    for pid in (1, 2, 3, 4):
        book.chosen(pid, None, 0)
    in_flight = Wait(1, 1, "oom_reaper", Site.OOM_REAPER, S)
    elsewhere = Wait(4, 4, "x", Site.MEMCG_RECLAIM, S)  # a wait of a victim, but not the reaper's
    book.reaper_seen([in_flight, elsewhere], {2: reaper_acct(2, 1), 3: reaper_acct(3, 0)}, 2 * S)
    assert {v.pid: v.reaped for v in book.alive(lambda pid: "D")} == {1: True, 2: True, 3: False, 4: False}
    book.reaper_seen([], {}, 3 * S)  # once seen, it stays so
    assert {v.pid: v.reaped for v in book.alive(lambda pid: "D")}[1] is True


def test_reaped_is_unknown_when_the_reaper_is_not_watched():
    book = VictimBook(reaper_watched=False)
    book.chosen(1, None, 0)
    assert [v.reaped for v in book.alive(lambda pid: "D")] == [None]


def test_in_cgroup_is_the_group_or_below_it():
    assert in_cgroup("/a/b", "/a/b") and in_cgroup("/a/b/c", "/a/b") and in_cgroup("/a/b/c", "/a/b/")
    assert not in_cgroup("/a/bc", "/a/b") and not in_cgroup("/a", "/a/b") and not in_cgroup(None, "/a/b")


def test_cgroup_waiters_are_the_groups_tasks_waiting_now_or_in_the_window():
    cgroups = {10: "/g", 11: "/g/sub", 12: "/other", 13: "/g", 14: "/g", 42: "/g", 43: "/g"}
    inflight = [
        Wait(10, 10, "hog", Site.MEMCG_RECLAIM, 7 * S),
        Wait(10, 10, "hog", Site.WRITEBACK_WAIT, 8 * S),  # inside the reclaim: the oldest one is shown
        Wait(11, 11, "sub", Site.MEMCG_OOM_WAIT, 1 * S),
        Wait(12, 12, "far", Site.MEMCG_RECLAIM, 0),  # another group
        Wait(43, 42, "victim", Site.MEMCG_RECLAIM, 0),  # the victim's own thread
    ]
    shares = {10: 0.9, 13: 0.6, 14: 0.0, 12: 1.0}
    names = {13: (13, "between"), 14: (14, "idle")}
    got = cgroup_waiters("/g", 42, inflight, shares, names, lambda pid, tid: cgroups.get(tid), 10 * S)
    assert [(c.tid, c.site, c.waited_s, c.share) for c in got] == [
        (11, "memcg_oom_wait", 9.0, 0.0),
        (10, "memcg_reclaim", 3.0, 0.9),
        (13, None, None, 0.6),  # between two waits at this scan, waited 60 % of the window
    ]
    assert got[2].comm == "between"


def test_cgroup_waiters_add_the_groups_threads_blocked_outside_memory_waits():
    """Issue 26, item 6: fio jobs of a stuck victim's group asleep in D state on
    XFS (not in a memory wait, no share of the window) are counted, with where
    they sleep; the victim's own threads and tasks already waiting are not
    counted twice."""
    cgroups = {10: "/g", 13: "/g"}
    inflight = [Wait(10, 10, "hog", Site.MEMCG_RECLAIM, 7 * S)]
    shares = {13: 0.5}
    names = {13: (13, "between")}
    blocked = [(10, 10, "hog", "xfs_ilock"),  # in a memory wait already: counted once, by that wait
               (13, 13, "between", "folio_wait_bit_common"),  # had a share, now asleep elsewhere
               (20, 20, "fio", "xfs_ilock"), (21, 20, "fio", None),
               (43, 42, "victim", "xfs_ilock")]  # the victim's own thread
    got = cgroup_waiters("/g", 42, inflight, shares, names, lambda pid, tid: cgroups.get(tid), 10 * S, blocked)
    assert [(c.tid, c.site, c.share, c.blocked_in) for c in got] == [
        (10, "memcg_reclaim", 0.0, None),
        (13, None, 0.5, "folio_wait_bit_common"),
        (20, None, 0.0, "xfs_ilock"),
        (21, None, 0.0, "D"),
    ]
