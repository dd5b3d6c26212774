# SPDX-License-Identifier: Apache-2.0
"""The window arithmetic, the no-progress rule and the victim timer, with a fake clock."""

from __future__ import annotations

from allocwatch.core.findings import LIVELOCK, STUCK_VICTIM, THROTTLED, Findings, VictimSeen, WindowRules
from allocwatch.core.model import Acct, DirtyPause, ShrinkCount
from allocwatch.core.sites import NR_SITES, Site
from allocwatch.core.tracker import Wait

S = 1_000_000_000


def acct(tid=7, waits=None, passes=0, zero=0, reclaimed=0, busy=None, gfp=(), shrinkers=()):
    """`busy`: the kernel's busy time; by default the waits' sum (none nested)."""
    wait_ns = [0] * NR_SITES
    counts = [0] * NR_SITES
    for site, (n, ns) in (waits or {}).items():
        counts[site] = n
        wait_ns[site] = ns
    return Acct(tid, tid, "dd", tuple(wait_ns), tuple(counts), passes, zero, reclaimed,
                busy_ns=sum(wait_ns) if busy is None else busy, gfp_waits=tuple(gfp), shrinkers=tuple(shrinkers))


def run(f, seconds, make, step=1.0, inflight=lambda t: (), stalled=frozenset(), victims=lambda t: ()):
    out = []
    t = 0.0
    while t <= seconds:
        due, ended, shares = f.scan(int(t * S), make(t), inflight(t), set(stalled), victims(t))
        out.append((t, due, ended, shares))
        t += step
    return out


def test_a_crawl_of_short_waits_is_throttled_within_the_window():
    # dirty throttling: 0.2 s sleeps, 95 % of the time, from t=0
    f = Findings(WindowRules(window_ns=10 * S, share=0.5, threshold_ns=10 * S))

    def make(t):
        n = int(t / 0.2 * 0.95)
        return {7: acct(waits={Site.DIRTY_THROTTLE: (n, int(n * 0.2 * S))})}

    res = run(f, 30, make)
    first = next((t, d) for t, d, _, _ in res if any(x.kind == THROTTLED for x in d))
    assert first[0] <= 6  # half the window waited: reported after about 5 s
    (x,) = first[1]
    assert x.site is Site.DIRTY_THROTTLE and x.per_site["dirty_throttle"].count > 0 and x.level == 1
    levels = [x.level for _, d, _, _ in res for x in d]
    assert levels == [1, 2, 3]  # escalates every threshold while it lasts
    # and says how long it has lasted from the start the first report gave
    durations = [x.duration_s for _, d, _, _ in res for x in d]
    assert [round(durations[i + 1] - durations[i], 6) for i in range(2)] == [10.0, 10.0], durations
    assert res[-1][3][7] >= 0.9


def test_eight_second_waits_in_flight_count_toward_the_share():
    f = Findings(WindowRules())
    waits = lambda t: [Wait(7, 7, "dd", Site.MEMCG_RECLAIM, int((t // 8) * 8 * S))]  # noqa: E731

    def make(t):
        n = int(t // 8)
        return {7: acct(waits={Site.MEMCG_RECLAIM: (n, n * 8 * S)})}

    res = run(f, 24, make, inflight=waits)
    assert any(x.kind == THROTTLED for _, d, _, _ in res for x in d)


def test_a_crawl_whose_wait_in_flight_outlasts_the_last_one_stays_one_episode():
    """Seen on the kernel (dd through a 64 MiB memcg onto a 512 KiB/s disk): back to
    back memcg reclaim waits of about 8.8 s, each with a writeback wait inside it; when
    one lasts 9 s, the wait in flight weighs more than the one ended in the window for
    a moment. The episode goes on and escalates; it neither ends nor starts again."""
    ends_s = [8.8, 17.6, 26.6, 35.4, 44.2, 53.0]  # the third wait is 9.0 s

    def make(t):
        done = [e for e in ends_s if e <= t]
        ns = int((done[-1] if done else 0) * S)
        return {7: acct(waits={Site.MEMCG_RECLAIM: (len(done), ns), Site.WRITEBACK_WAIT: (len(done), ns)})}

    def flying(t):
        start = int(max([0.0] + [e for e in ends_s if e <= t]) * S)
        return [Wait(7, 7, "dd", Site.MEMCG_RECLAIM, start), Wait(7, 7, "dd", Site.WRITEBACK_WAIT, start + 1000)]

    res = run(Findings(WindowRules()), 50, make, step=0.5, inflight=flying)
    assert [e for _, _, ended, _ in res for e in ended] == []
    due = [(t, x.level) for t, d, _, _ in res for x in d]
    assert [lvl for _, lvl in due] == [1, 2, 3, 4, 5] and due[0][0] <= 12, due  # within about 12 s


def test_a_task_already_reported_as_a_stall_is_not_throttled_too():
    f = Findings(WindowRules())
    res = run(f, 20, lambda t: {7: acct(waits={Site.MEMCG_OOM_WAIT: (0, 0)})},
              inflight=lambda t: [Wait(7, 7, "a", Site.MEMCG_OOM_WAIT, 0)], stalled={7})
    assert not any(d for _, d, _, _ in res)


def test_throttled_ends_when_the_share_falls():
    f = Findings(WindowRules())

    def make(t):
        busy = min(t, 12.0) * 0.9  # waits stop at t=12
        return {7: acct(waits={Site.DIRTY_THROTTLE: (int(busy * 5), int(busy * S))})}

    res = run(f, 30, make)
    ends = [e for _, _, ended, _ in res for e in ended]
    assert [e.kind for e in ends] == [THROTTLED] and ends[0].reports >= 1


def test_reclaim_that_frees_nothing_fast_is_a_livelock_after_the_threshold():
    f = Findings(WindowRules(threshold_ns=5 * S))
    res = run(f, 20, lambda t: {7: acct(passes=int(t * 30000), zero=int(t * 30000))})
    first = next(t for t, d, _, _ in res if any(x.kind == LIVELOCK for x in d))
    assert 5 <= first <= 7
    x = next(x for _, d, _, _ in res for x in d if x.kind == LIVELOCK)
    assert 29000 <= x.passes_per_s <= 31000 and x.reclaimed_pages == 0 and x.duration_s >= 5


def test_reclaim_that_makes_progress_is_no_livelock():
    f = Findings(WindowRules(threshold_ns=5 * S))
    res = run(f, 20, lambda t: {7: acct(passes=int(t * 30000), zero=int(t * 15000), reclaimed=int(t * 15000))})
    assert not any(x.kind == LIVELOCK for _, d, _, _ in res for x in d)
    # a few pages now and then (its own text, refaulted) is still no way out
    res = run(f, 20, lambda t: {7: acct(passes=int(t * 30000), zero=int(t * 29900), reclaimed=int(t * 100))})
    assert any(x.kind == LIVELOCK for _, d, _, _ in res for x in d)


def test_slow_reclaim_is_no_livelock():
    f = Findings(WindowRules(threshold_ns=5 * S))
    res = run(f, 20, lambda t: {7: acct(passes=int(t * 10))})
    assert not any(x.kind == LIVELOCK for _, d, _, _ in res for x in d)


def test_victim_timer_reports_then_says_when_it_exits():
    f = Findings(WindowRules(threshold_ns=10 * S))
    victims = lambda t: [VictimSeen(42, "victim", 0, "D", reaped=t >= 2)] if t < 25 else []  # noqa: E731
    res = run(f, 30, lambda t: {}, victims=victims)
    due = [(t, x.level) for t, d, _, _ in res for x in d if x.kind == STUCK_VICTIM]
    assert due == [(10.0, 1), (20.0, 2)]
    first = next(x for _, d, _, _ in res for x in d)
    assert (first.pid, first.comm, first.victim_state, first.reaped) == (42, "victim", "D", True)
    assert first.duration_s == 10.0  # since it was chosen
    ends = [(t, e) for t, _, ended, _ in res for e in ended]
    assert ends[0][0] == 25.0 and ends[0][1].kind == STUCK_VICTIM and ends[0][1].reports == 2


def test_a_task_that_does_not_wait_costs_no_new_samples():
    f = Findings(WindowRules())
    a = acct(waits={Site.MEMCG_RECLAIM: (1, S)})
    for t in range(100):
        f.scan(t * S, {7: a}, (), set())
    assert len(f._samples[7]) == 1
    _, _, shares = f.scan(101 * S, {7: a}, (), set())
    assert shares[7] == 0.0  # its one old wait is out of the window


def test_share_is_over_the_span_the_waits_were_counted_in():
    f = Findings(WindowRules(window_ns=10 * S))
    f.scan(0, {7: acct()}, (), set())
    # 30 s scans: 5 s of waiting in 30 s is 17 %, not 50 %
    _, _, shares = f.scan(30 * S, {7: acct(waits={Site.DIRTY_THROTTLE: (25, 5 * S)})}, (), set())
    assert 0.15 < shares[7] < 0.2


def test_a_throttled_task_says_which_throttle_reasons_held_it():
    f = Findings(WindowRules())

    def make(t):
        n = int(t * 9)  # 100 ms sleeps, 90 % of the time
        a = acct(waits={Site.RECLAIM_THROTTLE: (n, n * S // 10)})
        return {7: Acct(7, 7, "dd", a.wait_ns, a.waits, 0, 0, 0, (n, 0, 0, 0), busy_ns=a.busy_ns)}

    res = run(f, 12, make)
    x = next(x for _, d, _, _ in res for x in d)
    assert x.kind == THROTTLED and x.site is Site.RECLAIM_THROTTLE and set(x.throttle_reasons) == {0}


def test_a_throttled_task_carries_the_wait_it_is_in_with_its_detail():
    # asleep in a dirty-throttle pause at each scan; a plain sleep beside it says less
    f = Findings(WindowRules(window_ns=10 * S, share=0.5, threshold_ns=10 * S))
    pause = DirtyPause(200, 216, 16, 0, 32, 32, 2101, 1792, 2048)

    def make(t):
        n = int(t / 0.2 * 0.95)
        return {7: acct(waits={Site.DIRTY_THROTTLE: (n, int(n * 0.2 * S))})}

    def flying(t):
        start = int((t - 0.1) * S)
        return [Wait(7, 7, "dd", Site.WRITEBACK_WAIT, start - S, dstate=True),
                Wait(7, 7, "dd", Site.DIRTY_THROTTLE, start, dstate=True, dirty_pause=pause)]

    res = run(f, 10, make, inflight=flying)
    x = next(x for _, d, _, _ in res for x in d if x.kind == THROTTLED)
    assert x.waiting is not None and x.waiting.site is Site.DIRTY_THROTTLE and x.waiting.dirty_pause == pause
    quiet = Findings(WindowRules(window_ns=10 * S, share=0.5, threshold_ns=10 * S))
    y = next(y for _, d, _, _ in run(quiet, 10, make) for y in d if y.kind == THROTTLED)
    assert y.waiting is None  # awake between two pauses at that scan


def test_an_idle_stall_takes_the_short_way_with_the_same_share():
    """A task already reported as a stall, nothing completed in the window: the
    share from its waits in flight alone is what the full window arithmetic gives."""
    w = Wait(7, 7, "dd", Site.MEMCG_OOM_WAIT, 0, None, None, dstate=True)
    counts = {7: acct(waits={Site.MEMCG_RECLAIM: (3, int(0.3 * S))})}  # done before the wait, then nothing
    rules = WindowRules(window_ns=10 * S, share=0.5, threshold_ns=10 * S)
    slow = run(Findings(rules), 40, lambda t: counts, inflight=lambda t: [w] if t >= 2 else [])
    fast = run(Findings(rules), 40, lambda t: counts, inflight=lambda t: [w] if t >= 2 else [], stalled={7})
    assert [r[3] for r in fast] == [r[3] for r in slow]
    assert fast[-1][3][7] > 0 and not any(d for _, d, _, _ in fast)


def test_one_long_wait_after_a_short_reclaim_is_not_a_crawl():
    """10,000 tasks each reclaim for a moment, then wait in the memcg OOM wait:
    that is a stall at its threshold, not a throttled task at half of it."""
    w = Wait(7, 7, "hog", Site.MEMCG_OOM_WAIT, 1 * S, None, None, dstate=True)
    f = Findings(WindowRules(window_ns=10 * S, share=0.5, threshold_ns=10 * S))
    before = acct(waits={})
    after = acct(waits={Site.MEMCG_RECLAIM: (2, int(0.002 * S))})
    res = run(f, 9, lambda t: {7: before if t < 1 else after}, inflight=lambda t: [w] if t >= 1 else [])
    assert not any(d for _, d, _, _ in res)
    assert res[-1][3][7] >= 0.5  # its share still says how much it waited


def test_a_wait_in_flight_all_window_long_is_the_whole_window_however_old_the_baseline():
    """The baseline of a task that completed nothing for long is its one old sample:
    completed time is over that span, but time in flight is over the window it was
    clipped to (a task stalled for 100 s spent all of the last 10 s waiting)."""
    w = Wait(7, 7, "dd", Site.MEMCG_OOM_WAIT, 5 * S, None, None, dstate=True)
    counts = {7: acct(waits={Site.MEMCG_RECLAIM: (3, int(0.3 * S))})}
    out = run(Findings(WindowRules(window_ns=10 * S)), 100, lambda t: counts, inflight=lambda t: [w] if t >= 5 else [])
    assert out[-1][3][7] == 1.0  # not 10 s over a 100 s span
    assert out[10][3][7] == 0.5  # 5 s of the last 10 in flight


def test_nested_waits_count_once_by_wall_time():
    """Throttle sleeps inside memcg reclaim: per site they add up to 51 % of the
    window, but the task waited 34 % of it (the kernel's busy time): no crawl."""
    f = Findings(WindowRules(window_ns=10 * S, share=0.5))

    def make(t):
        reclaim = int(t * 0.34 * S)
        return {7: acct(waits={Site.MEMCG_RECLAIM: (int(t * 10), reclaim),
                               Site.RECLAIM_THROTTLE: (int(t * 5), reclaim // 2)}, busy=reclaim)}

    res = run(f, 30, make)
    assert not any(d for _, d, _, _ in res)
    assert 0.3 < res[-1][3][7] < 0.4  # the share, by wall time


def test_nested_waits_in_flight_count_once():
    f = Findings(WindowRules(window_ns=10 * S, share=0.5))
    flying = [Wait(7, 7, "dd", Site.MEMCG_RECLAIM, 27 * S), Wait(7, 7, "dd", Site.WRITEBACK_WAIT, 28 * S)]
    res = run(f, 30, lambda t: {7: acct(waits={Site.MEMCG_RECLAIM: (1, S)})}, inflight=lambda t: flying)
    assert res[-1][3][7] == 0.3  # 3 s of reclaim in flight, with a writeback wait inside it


def test_a_throttled_task_says_the_masks_its_waits_asked_with():
    f = Findings(WindowRules(window_ns=10 * S, share=0.5))
    nofs, kernel = 0xC40, 0xCC0

    def make(t):
        n = int(t / 0.2 * 0.9)
        return {7: acct(waits={Site.MEMCG_RECLAIM: (n, int(n * 0.2 * S))}, gfp=((nofs, n), (kernel, int(t))))}

    res = run(f, 20, make)
    x = next(x for _, d, _, _ in res for x in d)
    assert x.gfp == nofs and 0 < x.gfp_waits[kernel] <= 10 < x.gfp_waits[nofs]  # counted in the window only


def test_a_throttled_task_says_the_shrinkers_its_reclaim_called_in_the_window_most_asked_first():
    f = Findings(WindowRules(window_ns=10 * S, share=0.5))
    sb, deferred, idle = 0xFFFF1000, 0xFFFF2000, 0xFFFF3000

    def make(t):
        n = int(t / 0.2 * 0.9)
        return {7: acct(waits={Site.MEMCG_RECLAIM: (n, int(n * 0.2 * S))}, shrinkers=(
            ShrinkCount(sb, n, 100 * n, 0, 9000, 0xC40),  # asked to scan more and more, frees nothing
            ShrinkCount(deferred, int(t), 5 * int(t), int(t), 40, 0xC40),
            ShrinkCount(idle, 3, 30, 3, 10, 0xCC0),  # called before the window only
        ))}

    res = run(f, 30, make)
    x = [x for _, d, _, _ in res for x in d][-1]
    assert [c.fn for c in x.shrinkers] == [sb, deferred]
    top = x.shrinkers[0]
    assert 40 <= top.calls <= 50 and top.asked == 100 * top.calls and top.freed == 0 and top.objects == 9000
    assert 9 <= x.shrinkers[1].calls <= 11 and x.shrinkers[1].freed == x.shrinkers[1].calls


def test_a_shrinker_slot_given_to_another_meanwhile_counts_from_its_new_start():
    f = Findings(WindowRules(window_ns=10 * S, share=0.5))

    def make(t):
        n = int(t / 0.2 * 0.9)
        fn = 0xA if t < 15 else 0xB  # the kernel reused the slot: counts restart, the old function is gone
        calls = n if t < 15 else int(t - 15) + 1
        return {7: acct(waits={Site.MEMCG_RECLAIM: (n, int(n * 0.2 * S))},
                        shrinkers=(ShrinkCount(fn, calls, calls, 0, 5, 0xC40),))}

    run(f, 20, make)
    (x,) = f.active()  # as seen at t=20
    assert [(c.fn, c.calls) for c in x.shrinkers] == [(0xB, 6)]


def test_window_deltas_read_a_wait_ns_that_ends_early_as_zeros_past_its_end():
    from allocwatch.core.findings import _site_ns_delta

    rest = (0,) * (NR_SITES - 4)
    old = Acct(7, 7, "dd", (0, 5), (0, 1, 0, 0, *rest), 0, 0, 0)  # decoded accounts end at their last site
    new = Acct(7, 7, "dd", (0, 9, 0, 4), (0, 2, 0, 1, *rest), 0, 0, 0)
    assert _site_ns_delta(new, old) == [0, 4, 0, 4] + [0] * (NR_SITES - 4)
    assert _site_ns_delta(old, new) == [0] * NR_SITES  # never below zero
    assert _site_ns_delta(new, None) == [0, 9, 0, 4] + [0] * (NR_SITES - 4)
