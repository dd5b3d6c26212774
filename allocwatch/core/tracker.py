# SPDX-License-Identifier: Apache-2.0
"""Stall decisions: in-flight waits and ended waits in, reports due out.

Pure: the caller passes the time (`now_ns`, CLOCK_MONOTONIC like the BPF
timestamps) and the waits it read; nothing here reads a clock, a map or /proc.

Escalation follows warn_alloc() of v4.9: a wait is reported when it reaches
its site's threshold, then again each time it has waited one more threshold
(10 s, 20 s, 30 s ... by default), and once more, as recovered, when it ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from allocwatch.core.model import DirtyPause, WritebackNote
from allocwatch.core.sites import HIST_SLOTS, Site

NS_PER_S = 1_000_000_000

# A wait is identified by (tid, source, start_ns); source is the site number
# for waits timed by a pair, or "D" for a D-state sleep named in user space.
WaitKey = tuple[int, int | str, int]


@dataclass(frozen=True, slots=True)  # slots: 10,000 stalled are 10,000 of these
class Wait:
    tid: int
    pid: int
    comm: str
    site: Site
    start_ns: int
    gfp: int | None = None
    order: int | None = None
    dstate: bool = False  # a D-state sleep, named from a hint or a stack
    # False for a sleep that began before allocwatch started: start_ns is
    # then when allocwatch first saw it, and durations are lower bounds.
    start_known: bool = True
    # Site detail as of this scan, where the kernel gives it for a wait in flight.
    reclaimed_pages: int | None = None  # direct/memcg reclaim: LRU pages reclaimed so far
    dirty_pause: DirtyPause | None = None  # dirty throttling: the pause chosen for this sleep
    writeback: WritebackNote | None = None  # waiting on writeback: the device, as the kernel named it

    # made once: a wait in flight is the same object scan after scan
    key: WaitKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.tid, "D" if self.dstate else int(self.site), self.start_ns))


@dataclass(frozen=True, slots=True)
class Ended:
    """A wait that ended, as the BPF side reported it (long waits only)."""

    wait: Wait
    duration_ns: int
    # False for a D-state sleep named from its stack: the kernel could not
    # count it per site, so the tracker does (dstate_completed).
    counted_in_kernel: bool = True
    how: str = "woke"  # woke, killed (SIGKILL sent while it waited), exited
    reclaimed_pages: int | None = None  # a reclaim pass: what it freed in the end
    compaction_status: str | None = None  # a compaction: how it ended, in the kernel's words


@dataclass(frozen=True, slots=True)
class Stall:
    wait: Wait
    duration_ns: int  # the task's episode so far (core/episodes.py), at least this wait's own
    level: int  # how many thresholds it has waited: 1 at first report
    wait_ns: int | None = None  # this wait's own duration, when the episode began before it

    @property
    def own_ns(self) -> int:
        return self.duration_ns if self.wait_ns is None else self.wait_ns

    @property
    def first(self) -> bool:
        return self.level == 1


@dataclass(frozen=True, slots=True)
class Recovered:
    wait: Wait
    duration_ns: int
    exact: bool  # False when the end was not seen and the last sighting is used
    reports: int  # how many times it was reported while it lasted
    how: str | None = None  # woke, killed, exited; None when the end was not seen
    reclaimed_pages: int | None = None
    compaction_status: str | None = None


@dataclass(frozen=True)
class Thresholds:
    default_ns: int = 10 * NS_PER_S
    per_site_ns: Mapping[Site, int] = field(default_factory=dict)

    def for_site(self, site: Site) -> int:
        return self.per_site_ns.get(site, self.default_ns)

    @property
    def min_ns(self) -> int:
        return min([self.default_ns, *self.per_site_ns.values()])


@dataclass
class ScanResult:
    stalls: list[Stall]  # due now: new or escalated
    recovered: list[Recovered]
    stalled_now: int  # waits at or over their threshold now, due or not
    stalled_tids: set[int] = field(default_factory=set)  # the tasks of those waits
    # waits under their threshold that reach it within the scan's `ahead_ns`, longest first
    nearing: list[Wait] = field(default_factory=list)
    # per stalled task, its longest wait at or over its threshold (due or not)
    over: dict[int, Wait] = field(default_factory=dict)


@dataclass(slots=True)
class _Reported:
    wait: Wait
    level: int
    last_duration_ns: int
    reports: int


@dataclass
class SiteTotals:
    """Completed waits counted here: per log2 slot, as the kernel's wait_hist."""

    count: int = 0
    total_ns: int = 0
    slots: list[int] = field(default_factory=lambda: [0] * HIST_SLOTS)

    def add(self, duration_ns: int) -> None:
        self.count += 1
        self.total_ns += duration_ns
        us = duration_ns // 1000
        self.slots[min(max(us.bit_length() - 1, 0), HIST_SLOTS - 1)] += 1


class Tracker:
    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self._reported: dict[WaitKey, _Reported] = {}
        # Ended D-state sleeps named from a stack, per site (long ones only:
        # the kernel sends up sleeps of at least the lowest threshold). The
        # rest are counted in the kernel's wait_hist.
        self.dstate_completed: dict[Site, SiteTotals] = {}

    def scan(self, now_ns: int, inflight: Iterable[Wait], ended: Iterable[Ended], ahead_ns: int = 0) -> ScanResult:
        """One scan. `inflight` was read before `ended` was drained. Waits that
        reach their threshold within `ahead_ns` are given as `nearing`, so that what
        their first report reads of them can be read before it is due."""
        ended_by_key = {e.wait.key: e for e in ended}
        for e in ended_by_key.values():
            if not e.counted_in_kernel:
                self.dstate_completed.setdefault(e.wait.site, SiteTotals()).add(e.duration_ns)

        stalls: list[Stall] = []
        seen: set[WaitKey] = set()
        stalled_now = 0
        stalled_tids: set[int] = set()
        over: dict[int, Wait] = {}
        nearing: list[tuple[int, Wait]] = []
        for_site = self.thresholds.for_site
        for w in inflight:
            key = w.key
            if key in ended_by_key:
                continue
            seen.add(key)
            duration_ns = now_ns - w.start_ns
            duration_ns = max(duration_ns, 0)
            threshold_ns = for_site(w.site)
            level = duration_ns // threshold_ns
            if level < 1:
                if ahead_ns and duration_ns + ahead_ns >= threshold_ns:
                    nearing.append((duration_ns, w))
                continue
            stalled_now += 1
            stalled_tids.add(w.tid)
            longest = over.get(w.tid)
            if longest is None or w.start_ns < longest.start_ns:
                over[w.tid] = w
            prev = self._reported.get(key)
            if prev is None:
                self._reported[key] = _Reported(w, level, duration_ns, 1)
                stalls.append(Stall(w, duration_ns, level))
                continue
            prev.last_duration_ns = duration_ns
            if level > prev.level:
                prev.level = level
                prev.reports += 1
                stalls.append(Stall(w, duration_ns, level))

        recovered = []
        for key in [k for k in self._reported if k not in seen]:
            rep = self._reported.pop(key)
            end = ended_by_key.get(key)
            if end is not None:
                recovered.append(Recovered(
                    rep.wait, end.duration_ns, True, rep.reports, end.how, end.reclaimed_pages, end.compaction_status
                ))
            else:
                recovered.append(Recovered(rep.wait, rep.last_duration_ns, False, rep.reports))
        stalls.sort(key=lambda s: -s.duration_ns)
        nearing.sort(key=lambda dw: -dw[0])
        return ScanResult(stalls, recovered, stalled_now, stalled_tids, [w for _, w in nearing], over)
