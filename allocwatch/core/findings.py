# SPDX-License-Identifier: Apache-2.0
"""Stalls no single wait shows (pure): the throttled task, the reclaim
livelock and the OOM victim that cannot exit.

Each scan passes the time, every task's cumulative accounting (completed
waits per site and reclaim passes, from the kernel), the waits in flight and
the OOM victims still alive. `Findings.scan()` keeps, per task, the samples of
the last window and decides:

- throttled: the task spent at least `share` of the last `window_s` in memory
  waits, none of which alone is reported as a stall, and it began as a crawl:
  waits that ended accounted for at least as much of it as the waits still in
  flight (one long wait after a short reclaim is a stall, reported at its
  threshold); once begun, it lasts while the share holds;
- livelock: the task kept entering reclaim (at least `livelock_passes_per_s`
  passes a second over the window) and (nearly) every pass freed nothing,
  continuously for at least the threshold, although it may never block;
- stuck_victim: an OOM victim still alive a threshold after it was chosen.

Each is an episode: reported when it starts (level 1), again at every further
threshold while it lasts (as stalls escalate), and once more when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from allocwatch.core.model import Acct, ShrinkCount
from allocwatch.core.sites import NR_SITES, Site
from allocwatch.core.tracker import NS_PER_S, Wait

THROTTLED = "throttled"
LIVELOCK = "livelock"
STUCK_VICTIM = "stuck_victim"


@dataclass(frozen=True)
class WindowRules:
    window_ns: int = 10 * NS_PER_S
    share: float = 0.5  # of the window spent waiting
    threshold_ns: int = 10 * NS_PER_S  # escalation step, and how long a livelock or a stuck victim must last
    livelock_passes_per_s: float = 100.0
    livelock_fruitless_share: float = 0.95  # of the passes, those that freed nothing


@dataclass(frozen=True, slots=True)
class SiteWindow:
    count: int  # waits completed in the window
    total_s: float  # completed plus in flight


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    tid: int
    pid: int
    comm: str
    site: Site  # where most of the time went (reclaim for a livelock, oom for a victim)
    since_ns: int  # when the episode began
    duration_s: float  # how long it has lasted
    level: int
    share: float = 0.0  # of the window spent in memory waits
    per_site: Mapping[str, SiteWindow] = field(default_factory=dict)
    passes_per_s: float = 0.0  # reclaim passes a second over the window
    reclaimed_pages: int = 0  # in the window
    victim_state: str | None = None
    reaped: bool | None = None  # a stuck victim: the OOM reaper has run on it (None: not watched)
    throttle_reasons: Mapping[int, int] = field(default_factory=dict)  # reason bit -> sleeps in the window
    waiting: Wait | None = None  # the task's wait in flight at this scan, if any (with its site detail)
    gfp_waits: Mapping[int, int] = field(default_factory=dict)  # gfp mask -> its waits that ended in the window
    shrinkers: tuple[ShrinkCount, ...] = ()  # called in its reclaim waits in the window, most asked first

    @property
    def gfp(self) -> int | None:
        """The mask its waits asked with most in the window, else its wait's in flight."""
        if self.gfp_waits:
            return max(self.gfp_waits.items(), key=lambda kv: (kv[1], -kv[0]))[0]
        return self.waiting.gfp if self.waiting is not None else None

    @property
    def first(self) -> bool:
        return self.level == 1


@dataclass(frozen=True)
class EpisodeEnd:
    kind: str
    tid: int
    pid: int
    comm: str
    site: Site
    duration_s: float
    reports: int


@dataclass(frozen=True)
class VictimSeen:
    pid: int
    comm: str | None
    chosen_ns: int
    state: str | None
    reaped: bool | None = None  # the OOM reaper has run on it (None: its tracepoints are not attached)


@dataclass(slots=True)
class _Episode:
    since_ns: int
    level: int = 0
    reports: int = 0
    last: Finding | None = None


@dataclass(frozen=True, slots=True)
class _Sample:
    t_ns: int
    acct: Acct


def _waiting_now(waits: Sequence[Wait]) -> Wait | None:
    """The wait a task is in now: one the kernel gave detail for, else the oldest."""
    if not waits:
        return None
    return min(waits, key=lambda w: (w.reclaimed_pages is None and w.dirty_pause is None and w.writeback is None,
                                     w.start_ns))


def _site_ns_delta(new: Acct, old: Acct | None) -> list[int]:
    """Per site number, as many as `new.waits`: the ns waited since `old` (a
    wait_ns ends at its last site that waited: the rest are 0)."""
    a, b = new.wait_ns, old.wait_ns if old is not None else ()
    return [max(0, (a[i] if i < len(a) else 0) - (b[i] if i < len(b) else 0))
            for i in range(max(len(new.waits), len(a)))]


class Findings:
    def __init__(self, rules: WindowRules | None = None) -> None:
        self.rules = rules or WindowRules()
        self._samples: dict[int, list[_Sample]] = {}  # a few a task: lists, not deques (750 bytes each)
        self._episodes: dict[tuple[str, int], _Episode] = {}
        self._no_progress_since: dict[int, int] = {}

    def active(self) -> list[Finding]:
        """Episodes in progress, as last seen: a live view shows them between reports too."""
        return [ep.last for ep in self._episodes.values() if ep.last is not None]

    # -- the window ----------------------------------------------------------------

    def _remember(self, now_ns: int, accts: Mapping[int, Acct]) -> None:
        horizon = now_ns - self.rules.window_ns
        for tid, a in accts.items():
            q = self._samples.get(tid)
            if q is None:
                self._samples[tid] = [_Sample(now_ns, a)]
                continue
            last = q[-1].acct
            # a task that did not wait since costs no new sample (an unchanged map
            # entry is the very object read last time: kernel/mapread.py)
            if last is not a and last != a:
                q.append(_Sample(now_ns, a))
            while len(q) > 2 and q[1].t_ns <= horizon:  # keep one sample at or before the window's start
                del q[0]
        for tid in [t for t in self._samples if t not in accts]:
            del self._samples[tid]
            self._no_progress_since.pop(tid, None)

    def _baseline(self, tid: int, now_ns: int) -> tuple[Acct | None, int]:
        """The sample the window's deltas start from, and its time. None: the task
        was first seen within the window, so its whole account is in it (the map
        counts from the task's first wait)."""
        q = self._samples[tid]
        if len(q) >= 2 or q[0].t_ns <= now_ns - self.rules.window_ns:
            return q[0].acct, q[0].t_ns
        return None, 0

    def _reasons(self, tid: int, now_ns: int) -> dict[int, int]:
        latest = self._samples[tid][-1].acct
        base, _ = self._baseline(tid, now_ns)
        old = base.throttle_reasons if base is not None else ()
        out = {}
        for bit, n in enumerate(latest.throttle_reasons):
            d = n - (old[bit] if bit < len(old) else 0)
            if d > 0:
                out[bit] = d
        return out

    def _gfp_window(self, tid: int, now_ns: int) -> dict[int, int]:
        """Waits per gfp mask in the window (the kernel counts a few masks a task)."""
        latest = self._samples[tid][-1].acct
        base, _ = self._baseline(tid, now_ns)
        old = dict(base.gfp_waits) if base is not None else {}
        out = {}
        for mask, n in latest.gfp_waits:
            d = n - old.get(mask, 0)
            if d > 0:
                out[mask] = d if d <= n else n  # a slot reused for another mask counts from 1
        return out

    def _shrink_window(self, tid: int, now_ns: int) -> tuple[ShrinkCount, ...]:
        """The shrinkers its reclaim waits called in the window, with what they
        were asked to scan and freed there; most asked first. A slot the kernel
        gave to another shrinker meanwhile counts from its new start."""
        latest = self._samples[tid][-1].acct
        if not latest.shrinkers:
            return ()
        base, _ = self._baseline(tid, now_ns)
        old = {c.fn: c for c in base.shrinkers} if base is not None else {}
        out = []
        for now in latest.shrinkers:
            o = old.get(now.fn)
            d = now
            if o is not None and o.calls <= now.calls and o.asked <= now.asked and o.freed <= now.freed:
                d = ShrinkCount(now.fn, now.calls - o.calls, now.asked - o.asked, now.freed - o.freed, now.objects,
                                now.gfp)
            if d.calls:
                out.append(d)
        return tuple(sorted(out, key=lambda c: (-c.asked, -c.calls, c.fn)))

    def _idle_since(self, tid: int, latest: Acct, now_ns: int) -> int | None:
        """The baseline's time when no episode is open and the counts are the
        same as at the window's start; None otherwise."""
        if (THROTTLED, tid) in self._episodes or (LIVELOCK, tid) in self._episodes:
            return None
        base, base_ns = self._baseline(tid, now_ns)
        return base_ns if base is not None and (base is latest or base == latest) else None

    def _flying_ns(self, now_ns: int, inflight: Sequence[Wait]) -> int:
        """The union of a task's waits in flight, clipped to the window: they all
        end now, so it is the longest."""
        window_ns = self.rules.window_ns
        return max((min(max(0, now_ns - w.start_ns), window_ns) for w in inflight), default=0)

    def _flying_share(self, now_ns: int, inflight: Sequence[Wait]) -> float:
        """The share `_share` gives a task with nothing completed since its baseline."""
        return self._flying_ns(now_ns, inflight) / self.rules.window_ns

    def _span(self, tid: int, now_ns: int) -> tuple[Acct, Acct | None, int]:
        """The latest account, the baseline and the span completed waits were counted over."""
        latest = self._samples[tid][-1].acct
        base, base_ns = self._baseline(tid, now_ns)
        # completed waits are counted from the baseline, which may be a scan older
        # than the window: divide by the span they were counted over
        span_ns = max(self.rules.window_ns, now_ns - base_ns) if base is not None else self.rules.window_ns
        return latest, base, span_ns

    def _share(self, tid: int, now_ns: int, inflight: Sequence[Wait]) -> tuple[float, bool]:
        """The share of the window waited, and whether it is a crawl (waits that
        ended weigh at least as much as those in flight): what the rules decide
        on, every scan, for every task that waited in the window."""
        latest, base, span_ns = self._span(tid, now_ns)
        window_ns = self.rules.window_ns
        flying_ns = self._flying_ns(now_ns, inflight)
        # Time waited counts once however the waits nest (a throttle sleep inside
        # reclaim): the kernel's busy time for ended waits, the union for those in
        # flight. Completed time over the span it was counted in; in-flight time
        # over the window it was clipped to (a wait in flight all window long is
        # all of it, however old the baseline).
        busy_ns = latest.busy_ns - (base.busy_ns if base is not None else 0)
        return min(1.0, busy_ns / span_ns + flying_ns / window_ns), busy_ns > 0 and busy_ns >= flying_ns

    def _per_site(self, tid: int, now_ns: int, inflight: Sequence[Wait]) -> dict[str, SiteWindow]:
        """The window's waits per site (count, seconds), ended and in flight: made
        only for a finding's report (10,000 tasks in the window made it every scan)."""
        latest, base, _ = self._span(tid, now_ns)
        done = _site_ns_delta(latest, base)
        counts = [a - (base.waits[i] if base else 0) for i, a in enumerate(latest.waits)]
        per_site: dict[str, list[float]] = {}
        for i in range(min(NR_SITES, len(done))):
            if done[i] or counts[i]:
                per_site[Site(i).label] = [counts[i], done[i] / NS_PER_S]
        for w in inflight:
            row = per_site.setdefault(w.site.label, [0, 0.0])
            row[1] += min(max(0, now_ns - w.start_ns), self.rules.window_ns) / NS_PER_S
        return {s: SiteWindow(int(c), round(t, 3)) for s, (c, t) in per_site.items()}

    # -- episodes ------------------------------------------------------------------

    def _episode(
        self, key: tuple[str, int], active: bool, now_ns: int, make: Callable[[int, int], Finding] | None
    ) -> tuple[Finding | None, EpisodeEnd | None]:
        ep = self._episodes.get(key)
        if not active:
            if ep is None or ep.last is None:
                self._episodes.pop(key, None)
                return None, None
            del self._episodes[key]
            f = ep.last
            return None, EpisodeEnd(f.kind, f.tid, f.pid, f.comm, f.site, (now_ns - f.since_ns) / NS_PER_S, ep.reports)
        if ep is None:
            ep = self._episodes[key] = _Episode(now_ns)
        level = 1 + (now_ns - ep.since_ns) // self.rules.threshold_ns
        assert make is not None
        finding = make(ep.since_ns, level)
        ep.last = finding
        if level > ep.level:
            ep.level = level
            ep.reports += 1
            return finding, None
        return None, None

    def _short_way(
        self, now_ns: int, inflight: Sequence[Wait]
    ) -> tuple[dict[int, float], list[tuple[int, list[_Sample]]]]:
        """Shares of the tasks with one sample older than the window (nothing
        completed in it, as _idle_since says) and no episode open, where neither
        rule can fire and the share is their time in flight over the window
        (10,000 stalled: all of them); the other tasks, for the rules."""
        window_ns = self.rules.window_ns
        horizon = now_ns - window_ns
        flying_ns: dict[int, int] = {}  # per task, without a list a task
        get_ns = flying_ns.get
        for w in inflight:  # the union of a task's waits in flight: its longest
            d = now_ns - w.start_ns
            d = 0 if d < 0 else window_ns if d > window_ns else d
            if d > get_ns(w.tid, 0):
                flying_ns[w.tid] = d
        open_tids = {key[1] for key in self._episodes if key[0] in (THROTTLED, LIVELOCK)}
        no_progress = self._no_progress_since
        shares: dict[int, float] = {}
        rest: list[tuple[int, list[_Sample]]] = []
        for tid, q in self._samples.items():
            if len(q) == 1 and q[0].t_ns <= horizon and tid not in open_tids:
                f = get_ns(tid, 0)
                shares[tid] = 1.0 if f >= window_ns else f / window_ns
                if tid in no_progress:
                    del no_progress[tid]
                continue
            rest.append((tid, q))
        return shares, rest

    def scan(
        self,
        now_ns: int,
        accts: Mapping[int, Acct],
        inflight: Iterable[Wait],
        stalled_tids: Collection[int],
        victims: Sequence[VictimSeen] = (),
    ) -> tuple[list[Finding], list[EpisodeEnd], dict[int, float]]:
        """Findings due now, episodes that ended, and every task's share of the window."""
        self._remember(now_ns, accts)
        inflight = list(inflight)
        r = self.rules
        no_progress = self._no_progress_since
        due: list[Finding] = []
        ended: list[EpisodeEnd] = []
        shares, rest = self._short_way(now_ns, inflight)
        wanted = {tid for tid, _ in rest}
        flying: dict[int, list[Wait]] = {}
        for w in inflight:
            if w.tid in wanted:
                flying.setdefault(w.tid, []).append(w)
        no_waits: list[Wait] = []
        for tid, q in rest:
            a = q[-1].acct
            idle_since_ns = self._idle_since(tid, a, now_ns)
            if idle_since_ns is not None:  # the same, with samples that repeat an account
                shares[tid] = self._flying_share(now_ns, flying.get(tid, no_waits))
                no_progress.pop(tid, None)
                continue
            mine = flying.get(tid, no_waits)
            share, crawl = self._share(tid, now_ns, mine)
            shares[tid] = share
            # The crawl test starts an episode, it does not end one: in a crawl of
            # waits of about one length, the wait in flight outlasts the last one
            # ended now and then (a 9 s wait after 8 s ones), and that is no recovery.
            going = (THROTTLED, tid) in self._episodes
            throttled = share >= r.share and (crawl or going) and tid not in stalled_tids

            def throttled_finding(
                since: int, level: int, a=a, share=share, mine=mine
            ) -> Finding:
                per_site = self._per_site(a.tid, now_ns, mine)
                top = max(per_site.items(), key=lambda kv: kv[1].total_s)[0] if per_site else Site.MEMCG_RECLAIM.label
                # it has been throttled at least as long as it waited in the window,
                # and since the start an earlier report of the episode gave it
                ep = self._episodes.get((THROTTLED, a.tid))
                earlier = ep.last.since_ns if ep is not None and ep.last is not None else since
                began = min(since, earlier, now_ns - int(share * r.window_ns))
                return Finding(THROTTLED, a.tid, a.pid, a.comm, Site.from_label(top), began,
                               (now_ns - began) / NS_PER_S, level, share, per_site,
                               throttle_reasons=self._reasons(a.tid, now_ns), waiting=_waiting_now(mine),
                               gfp_waits=self._gfp_window(a.tid, now_ns),
                               shrinkers=self._shrink_window(a.tid, now_ns))

            for res in self._episode((THROTTLED, tid), throttled, now_ns, throttled_finding):
                if isinstance(res, Finding):
                    due.append(res)
                elif isinstance(res, EpisodeEnd):
                    ended.append(res)
            live = self._livelock(tid, now_ns)
            active = live is not None and now_ns - live[2] >= r.threshold_ns

            def livelock_finding(
                _since: int, level: int, a=a, share=share, live=live, mine=mine
            ) -> Finding:
                assert live is not None  # made only while active
                rate, reclaimed, since = live
                return Finding(LIVELOCK, a.tid, a.pid, a.comm, Site.MEMCG_RECLAIM, since,
                               (now_ns - since) / NS_PER_S, level, share, self._per_site(a.tid, now_ns, mine), rate,
                               reclaimed, waiting=_waiting_now(mine), gfp_waits=self._gfp_window(a.tid, now_ns),
                               shrinkers=self._shrink_window(a.tid, now_ns))

            for res in self._episode((LIVELOCK, tid), active, now_ns, livelock_finding):
                if isinstance(res, Finding):
                    due.append(res)
                elif isinstance(res, EpisodeEnd):
                    ended.append(res)
        for key in [k for k in self._episodes if k[0] in (THROTTLED, LIVELOCK) and k[1] not in self._samples]:
            _, end = self._episode(key, False, now_ns, None)  # the task is gone
            if end is not None:
                ended.append(end)
        due_v, ended_v = self._victims(now_ns, victims)
        return due + due_v, ended + ended_v, shares

    def _livelock(self, tid: int, now_ns: int) -> tuple[float, int, int] | None:
        """(passes a second, pages reclaimed, no progress since) while the task
        reclaims fast and frees nothing; None otherwise."""
        latest = self._samples[tid][-1].acct
        base, base_ns = self._baseline(tid, now_ns)
        if base is None or base_ns == self._samples[tid][-1].t_ns:
            self._no_progress_since.pop(tid, None)
            return None
        span_s = max((now_ns - base_ns) / NS_PER_S, 1e-9)
        passes = latest.reclaim_passes - base.reclaim_passes
        fruitless = latest.reclaim_zero - base.reclaim_zero
        reclaimed = latest.reclaimed_pages - base.reclaimed_pages
        rate = passes / span_s
        # No progress: (nearly) every pass freed nothing. A few pages now and then
        # (the task's own text, refaulted and dropped again) are no way out.
        if rate < self.rules.livelock_passes_per_s or fruitless < passes * self.rules.livelock_fruitless_share:
            self._no_progress_since.pop(tid, None)
            return None
        since = self._no_progress_since.setdefault(tid, now_ns)  # from when it was first seen so
        return rate, reclaimed, since

    def _victims(self, now_ns: int, victims: Sequence[VictimSeen]) -> tuple[list[Finding], list[EpisodeEnd]]:
        due, ended = [], []
        alive = {v.pid: v for v in victims}
        for v in victims:
            stuck = now_ns - v.chosen_ns >= self.rules.threshold_ns

            def victim_finding(_since: int, level: int, v=v) -> Finding:
                return Finding(STUCK_VICTIM, v.pid, v.pid, v.comm or "", Site.OOM, v.chosen_ns,
                               (now_ns - v.chosen_ns) / NS_PER_S, level, victim_state=v.state, reaped=v.reaped)

            if not stuck:
                continue
            if (STUCK_VICTIM, v.pid) not in self._episodes:  # level 1 at one threshold after it was chosen
                self._episodes[(STUCK_VICTIM, v.pid)] = _Episode(v.chosen_ns + self.rules.threshold_ns)
            f, _ = self._episode((STUCK_VICTIM, v.pid), True, now_ns, victim_finding)
            if f is not None:
                due.append(f)
        for key in [k for k in self._episodes if k[0] == STUCK_VICTIM and k[1] not in alive]:
            _, end = self._episode(key, False, now_ns, None)
            if end is not None:
                ended.append(end)
        return due, ended
