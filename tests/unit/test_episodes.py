# SPDX-License-Identifier: Apache-2.0
"""core/episodes.py: one episode per stuck task, whichever waits and rules hold it (pure, a fake clock)."""

from __future__ import annotations

import random

import pytest

from allocwatch.core.episodes import OOM_KILLED, STALL, EpisodeBook, EpisodeScan, TaskEpisodeEnd
from allocwatch.core.findings import LIVELOCK, THROTTLED, Finding
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S as S
from allocwatch.core.tracker import Ended, Thresholds, Tracker, Wait


def wait(site: Site, start_s: float, tid: int = 7) -> Wait:
    return Wait(tid, tid, "dd", site, round(start_s * S))


def rule(kind: str, since_s: float, now_s: float, tid: int = 7) -> Finding:
    return Finding(kind, tid, tid, "dd", Site.MEMCG_RECLAIM, round(since_s * S), now_s - since_s, 1, share=0.6)


class Run:
    """Scans of one book at whole seconds, each with what holds tid 7 then."""

    def __init__(self) -> None:
        self.book = EpisodeBook(Thresholds(10 * S), 10 * S)
        self.out: list[tuple[int, EpisodeScan]] = []

    def at(self, now_s: int, waits=(), rules=(), ended=()) -> EpisodeScan:
        now = now_s * S
        over = {}
        for w in waits:
            if now - w.start_ns >= 10 * S and (w.tid not in over or w.start_ns < over[w.tid].start_ns):
                over[w.tid] = w
        r = self.book.scan(now, waits, over, list(ended), list(rules), [])
        self.out.append((now_s, r))
        return r

    def news(self) -> list[tuple[int, int, str]]:
        """(second, level, kind) of every report of tid 7."""
        rows = [(t, s.level, STALL) for t, r in self.out for s in r.stalls]
        rows += [(t, f.level, f.kind) for t, r in self.out for f in r.findings]
        return sorted(rows)

    def ends(self) -> list[TaskEpisodeEnd]:
        return [e for _, r in self.out for e in r.ended if isinstance(e, TaskEpisodeEnd)]


def test_a_task_going_from_wait_to_wait_is_one_episode_with_levels_that_keep_counting():
    run = Run()
    reclaim = wait(Site.MEMCG_RECLAIM, 0)
    for t in range(1, 25):  # memcg reclaim for 24 s
        run.at(t, [reclaim])
    wb = wait(Site.WRITEBACK_WAIT, 24.5)  # then a writeback wait, then reclaim again: never out of a wait
    for t in range(25, 33):
        run.at(t, [wb], ended=[Ended(reclaim, int(24.4 * S), how="woke")] if t == 25 else [])
    again = wait(Site.MEMCG_RECLAIM, 32.5)
    for t in range(33, 45):
        run.at(t, [again])
    assert run.news() == [(10, 1, STALL), (20, 2, STALL), (30, 3, STALL), (40, 4, STALL)]
    assert [s.first for _, r in run.out for s in r.stalls] == [True, False, False, False]
    assert run.out[-1][1].stalls == [] and run.ends() == []
    run.at(45, ended=[Ended(again, int(12.6 * S), how="woke")])
    assert run.ends() == []  # one scan of grace: it may be between two waits
    run.at(46)
    (end,) = run.ends()
    assert end.kind == STALL and end.ended == "woke" and end.reports == 4 and end.duration_s == 45.1


def test_a_crawl_that_turns_into_a_stall_and_back_is_one_episode():
    run = Run()
    for t in range(12, 20):
        run.at(t, rules=[rule(THROTTLED, 2, t)])
    long_wait = wait(Site.MEMCG_RECLAIM, 19.5)  # then one wait passes its threshold: worse, not recovered
    for t in range(20, 36):
        run.at(t, [long_wait])
    for t in range(36, 42):  # and it crawls again
        run.at(t, rules=[rule(THROTTLED, 2, t)])
    assert run.news() == [(12, 1, THROTTLED), (30, 2, STALL), (32, 3, STALL)]  # level 2 waited for a fact
    assert run.ends() == []
    run.at(42)
    run.at(43)
    (end,) = run.ends()
    assert end.kind == THROTTLED and end.reports == 3


def test_a_livelocked_task_is_named_livelock_not_also_throttled():
    run = Run()
    for t in range(20, 32):
        run.at(t, [wait(Site.MEMCG_RECLAIM, t - 0.001)],
               rules=[rule(THROTTLED, 10, t), rule(LIVELOCK, 10, t)])
    kinds = {k for _, _, k in run.news()}
    assert kinds == {LIVELOCK} and [lvl for _, lvl, _ in run.news()] == [1, 2]


def test_an_episode_of_a_process_the_oom_killer_chose_ends_oom_killed():
    run = Run()
    w = wait(Site.MEMCG_OOM_WAIT, 0)
    for t in range(1, 13):
        run.at(t, [w])
    run.book.oom_chosen(7, 12 * S)
    run.at(13, ended=[Ended(w, int(12.5 * S), how="killed")])
    run.at(14)
    (end,) = run.ends()
    assert end.ended == OOM_KILLED and end.duration_s == 12.5


def test_a_kill_before_the_episode_does_not_name_its_end():
    run = Run()
    run.book.oom_chosen(7, 0)  # a kill of an earlier process with a reused pid
    w = wait(Site.MEMCG_OOM_WAIT, 1)
    for t in range(2, 13):
        run.at(t, [w])
    run.at(13, ended=[Ended(w, int(11.5 * S), how="killed")])
    run.at(14)
    assert [e.ended for e in run.ends()] == ["killed"]


def test_a_short_wait_never_stalled_opens_no_episode():
    run = Run()
    for t in range(1, 9):
        run.at(t, [wait(Site.MEMCG_RECLAIM, 0.5)])
    run.at(9)
    run.at(10)
    assert run.news() == [] and run.ends() == []


def test_a_task_killed_in_a_short_last_wait_ends_killed():
    """The last wait's end is sent up only when long: what became of the task is asked."""
    fates = {}
    run = Run()
    run.book.fate = lambda pid, tid, since_ns: fates.get(tid)
    w = wait(Site.MEMCG_RECLAIM, 0)
    for t in range(1, 13):
        run.at(t, [w])
    run.at(13, ended=[Ended(w, int(12.5 * S), how="woke")])
    short = wait(Site.MEMCG_RECLAIM, 13.2)
    run.at(14, [short])  # then killed in a short wait: no end is sent up
    fates[7] = "killed"
    run.at(15)
    run.at(16)
    (end,) = run.ends()
    assert end.ended == "killed"


def test_a_task_gone_without_an_end_seen_ends_exited():
    run = Run()
    run.book.fate = lambda pid, tid, since_ns: "exited"
    for t in range(1, 13):
        run.at(t, [wait(Site.MEMCG_RECLAIM, 0)])
    run.at(13)
    run.at(14)
    assert [e.ended for e in run.ends()] == ["exited"]


def test_a_scan_late_by_more_than_a_threshold_reports_once_at_the_level_reached():
    run = Run()
    w = wait(Site.MEMCG_OOM_WAIT, 0)
    for t in (25, 29, 30):  # scans missed between 0 and 25 s (a slow /proc, a stopped daemon)
        run.at(t, [w])
    assert run.news() == [(25, 2, STALL), (30, 3, STALL)]


def test_tasks_due_in_one_scan_come_longest_first_each_at_its_sites_threshold():
    """As the daemon wires them: the tracker says which waits are over their
    threshold (per site), the book which tasks are due and at what level."""
    thresholds = Thresholds(10 * S, {Site.MEMCG_RECLAIM: 2 * S})
    tracker, book = Tracker(thresholds), EpisodeBook(thresholds, 10 * S)
    waits = [Wait(tid, tid, "w", Site.MEMCG_OOM_WAIT, tid * S // 10) for tid in range(1, 201)]
    waits.append(Wait(500, 500, "r", Site.MEMCG_RECLAIM, 27 * S))  # 3 s of its site's 2 s
    over = tracker.scan(30 * S, waits, []).over
    due = book.scan(30 * S, waits, over, [], [], []).stalls
    assert len(due) == 201 and {s.wait.tid for s in due} == {*range(1, 201), 500}
    assert [s.duration_ns for s in due] == sorted((s.duration_ns for s in due), reverse=True)
    assert next(s.level for s in due if s.wait.tid == 500) == 1  # 3 s // 2 s
    assert next(s.level for s in due if s.wait.tid == 1) == 2  # 29.9 s // 10 s


def _decided_every_scan(book: EpisodeBook) -> EpisodeBook:
    """The same book, but deciding every episode again at every scan (no calm scans)."""
    real = book.scan

    def scan(*args, **kwargs):
        book._calm = None
        return real(*args, **kwargs)

    book.scan = scan  # type: ignore[method-assign]
    return book


@pytest.mark.parametrize("seed", range(25))
def test_scans_in_which_only_time_moves_say_what_deciding_every_episode_again_says(seed):
    """10,000 stuck tasks: between their levels nothing is decided again
    (core/episodes._Calm); what each scan says must not change for it."""
    rnd = random.Random(seed)
    thresholds = Thresholds(rnd.choice([2, 3, 10]) * S, {Site.MEMCG_RECLAIM: 2 * S})
    tracker = Tracker(thresholds)
    fast = EpisodeBook(thresholds, 10 * S)
    slow = _decided_every_scan(EpisodeBook(thresholds, 10 * S))
    live: list[Wait] = []
    now = 0
    calm_scans = []
    real_levels_due = fast._levels_due
    fast._levels_due = lambda *a: calm_scans.append(1) or real_levels_due(*a)  # type: ignore[method-assign]
    for _ in range(200):
        now += rnd.choice([S // 2, S, S, S, 2 * S])
        ended: list[Ended] = []
        rules: list[Finding] = []
        roll = rnd.random()
        if roll < 0.08:
            tid = rnd.randrange(1, 20)
            live.append(Wait(tid, tid, "w", rnd.choice([Site.MEMCG_OOM_WAIT, Site.MEMCG_RECLAIM]),
                             now - rnd.randrange(0, 15 * S) // (S // 2) * (S // 2)))  # equal starts too
        elif roll < 0.14 and live:
            gone = live.pop(rnd.randrange(len(live)))
            ended.append(Ended(gone, now - gone.start_ns, how=rnd.choice(["woke", "killed"])))
        elif roll < 0.17 and live:
            rules.append(rule(rnd.choice([THROTTLED, LIVELOCK]), (now - 12 * S) / S, now / S,
                              tid=rnd.choice(live).tid))
        elif roll < 0.19:
            pid = rnd.randrange(1, 20)
            fast.oom_chosen(pid, now)
            slow.oom_chosen(pid, now)
        over = tracker.scan(now, live, ended).over
        got = fast.scan(now, live, over, ended, rules, [])
        want = slow.scan(now, live, over, ended, rules, [])
        assert got == want, now
    assert fast.still_open() == slow.still_open()
    assert len(calm_scans) > 20  # the calm way was taken, often
