# SPDX-License-Identifier: Apache-2.0
"""Which waits in flight are stalled: at or over their site's threshold.

Pure: the caller passes the time (`now_ns`, CLOCK_MONOTONIC like the BPF
timestamps) and the waits it read; nothing here reads a clock, a map or /proc.

Escalation (warn_alloc() of v4.9: a report at the threshold, then again each
time a task has waited one more threshold) and the end of a stall are
core/episodes.py's, per task; this module says per wait what is over and what
is about to be. A wait over its threshold stays over until it ends, so while
the waits in flight are the very objects of the last scan (kernel/mapread.py
gives an unchanged entry back as it was) and none of them crosses a threshold,
the last answer holds: 10,000 tasks stuck for good cost one identity check a
scan, not 10,000 decisions.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

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


@dataclass(frozen=True)
class Thresholds:
    default_ns: int = 10 * NS_PER_S
    per_site_ns: Mapping[Site, int] = field(default_factory=dict)

    def for_site(self, site: Site) -> int:
        return self.per_site_ns.get(site, self.default_ns)

    @property
    def min_ns(self) -> int:
        return min([self.default_ns, *self.per_site_ns.values()])


@dataclass(frozen=True)
class ScanResult:
    """What one scan found: read it, do not change it (a scan that changes
    nothing gives the very same result again)."""

    stalled_now: int  # waits at or over their threshold now
    stalled_tids: frozenset[int]  # the tasks of those waits
    # per stalled task, its longest wait at or over its threshold (the first in the scan's order of equal ones)
    over: Mapping[int, Wait]
    # waits under their threshold that reach it within the scan's `ahead_ns`, longest first
    nearing: tuple[Wait, ...] = ()


@dataclass(frozen=True, slots=True)
class _Answer:
    """The last full scan: its input, and until when its answer holds for that input."""

    inflight: tuple[Wait, ...]  # a copy: the caller's list may change
    ahead_ns: int
    since_ns: int  # the scan's time
    until_ns: int  # the first time a wait of it crosses into nearing or over
    result: ScanResult


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


NEVER_NS = 1 << 63


class Tracker:
    def __init__(self, thresholds: Thresholds) -> None:
        self._thresholds = thresholds
        self._last: _Answer | None = None
        # Ended D-state sleeps named from a stack, per site (long ones only:
        # the kernel sends up sleeps of at least the lowest threshold). The
        # rest are counted in the kernel's wait_hist.
        self.dstate_completed: dict[Site, SiteTotals] = {}

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value: Thresholds) -> None:
        """A reload's thresholds: the next scan decides every wait again."""
        self._thresholds = value
        self._last = None

    def scan(self, now_ns: int, inflight: Sequence[Wait], ended: Iterable[Ended], ahead_ns: int = 0) -> ScanResult:
        """One scan. `inflight` was read before `ended` was drained (a wait in
        both has ended). Waits that reach their threshold within `ahead_ns` are
        given as `nearing`, so that what their first report reads of them can be
        read before it is due."""
        ended_by_key = {e.wait.key: e for e in ended}
        for e in ended_by_key.values():
            if not e.counted_in_kernel:
                self.dstate_completed.setdefault(e.wait.site, SiteTotals()).add(e.duration_ns)
        last = self._last
        if (last is not None and not ended_by_key and last.ahead_ns == ahead_ns
                and last.since_ns <= now_ns < last.until_ns and len(inflight) == len(last.inflight)
                and all(map(operator.is_, inflight, last.inflight))):
            return last.result

        stalled_now = 0
        over: dict[int, Wait] = {}
        nearing: list[tuple[int, Wait]] = []
        until_ns = NEVER_NS
        for_site = self._thresholds.for_site
        for w in inflight:
            if ended_by_key and w.key in ended_by_key:
                continue
            duration_ns = max(now_ns - w.start_ns, 0)
            threshold_ns = for_site(w.site)
            if duration_ns < threshold_ns:
                if ahead_ns and duration_ns + ahead_ns >= threshold_ns:
                    nearing.append((duration_ns, w))
                    until_ns = min(until_ns, w.start_ns + threshold_ns)  # over then
                else:
                    until_ns = min(until_ns, w.start_ns + threshold_ns - ahead_ns)  # nearing (or over) then
                continue
            stalled_now += 1
            longest = over.get(w.tid)
            if longest is None or w.start_ns < longest.start_ns:
                over[w.tid] = w
        nearing.sort(key=lambda dw: -dw[0])
        result = ScanResult(stalled_now, frozenset(over), MappingProxyType(over), tuple(w for _, w in nearing))
        # an ended wait in the input: the next scan's input differs anyway
        self._last = _Answer(tuple(inflight), ahead_ns, now_ns, until_ns, result) if not ended_by_key else None
        return result
