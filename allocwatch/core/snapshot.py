"""What one scan decided, as one immutable value every output reads (pure).

A `Snapshot` holds every wait in flight (under its threshold too) with its
duration and level, the records due now (already turned into dicts), the
kernel's counters and the cumulative totals: per site, a histogram of
completed waits whose buckets sum to the count and end in +Inf, and the
seconds spent waiting so far. Outputs (metrics, the record streams, top) read
the latest snapshot and never call back into the scan loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocwatch.core.live import LiveView
from allocwatch.core.sites import HIST_SLOTS, Site, hist_slot_upper_s
from allocwatch.core.tracker import NS_PER_S, Thresholds, Wait

# Completed-wait histogram buckets: the kernel's log2 slots from 1.024 ms
# (2^10 us) to 67.1 s (2^26 us); shorter waits fall in the first, longer ones
# only in +Inf. Bounds are exact slot edges, so no slot is split.
FIRST_BUCKET_SLOT = 9
LAST_BUCKET_SLOT = 25
WAIT_BUCKETS_S: tuple[float, ...] = tuple(
    hist_slot_upper_s(k) for k in range(FIRST_BUCKET_SLOT, LAST_BUCKET_SLOT + 1)
)

SCAN_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Histogram:
    """Cumulative buckets as Prometheus exposes them: (upper bound, count <= it),
    the last bound +Inf and its count equal to `count`."""

    buckets: tuple[tuple[float, int], ...]
    sum_s: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


def histogram_from_slots(slots: Sequence[int], sum_ns: int) -> Histogram:
    """The kernel's per-slot counts (slot k: [2^k, 2^(k+1)) us) as cumulative buckets."""
    cumulative, buckets = 0, []
    for k in range(min(len(slots), HIST_SLOTS)):
        cumulative += slots[k]
        if k >= FIRST_BUCKET_SLOT and k <= LAST_BUCKET_SLOT:
            buckets.append((hist_slot_upper_s(k), cumulative))
    buckets.append((math.inf, sum(slots)))
    return Histogram(tuple(buckets), sum_ns / NS_PER_S)


EMPTY_HISTOGRAM = histogram_from_slots([0] * HIST_SLOTS, 0)


class CumulativeHistogram:
    """Observations counted into fixed buckets as they come (constant memory)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._sum += value
        for i, b in enumerate(self._bounds):
            if value <= b:
                self._counts[i] += 1
                return
        self._counts[-1] += 1

    def freeze(self) -> Histogram:
        cumulative, buckets = 0, []
        for b, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            cumulative += n
            buckets.append((b, cumulative))
        return Histogram(tuple(buckets), self._sum)


@dataclass(frozen=True)
class InFlight:
    """One wait in flight now, named to a site."""

    tid: int
    pid: int
    comm: str  # raw bytes kept (surrogateescape); outputs escape it
    site: str  # site label
    duration_s: float
    level: int  # thresholds waited: 0 while under its threshold
    start_known: bool
    gfp: int | None
    order: int | None


@dataclass(frozen=True)
class SiteNow:
    waiting: int  # tasks waiting there now
    stalled: int  # of them, at or over their threshold
    longest_s: float


@dataclass(frozen=True)
class SiteCoverage:
    site: str
    mechanism: str  # "" when nothing is attached
    attached: bool


@dataclass(frozen=True)
class Snapshot:
    scan: int  # 1 for the first scan of the run
    time_s: float  # wall clock
    mono_ns: int  # CLOCK_MONOTONIC, as the BPF timestamps
    scan_duration_s: float  # how long the previous scan took (this one is not over yet)
    inflight: tuple[InFlight, ...]
    now: Mapping[str, SiteNow]  # by site label, every site with a wait in flight
    records: tuple[Mapping[str, Any], ...]  # due now, as core.records.to_dict made them
    completed: Mapping[str, Histogram]  # completed waits, by site label
    stalled_seconds: Mapping[str, float]  # completed plus in-flight time, by site label
    counters: Mapping[str, int]  # kernel stats and the daemon's own counts, cumulative
    reported: Mapping[str, int]  # stall reports emitted, by kind, cumulative
    scan_durations: Histogram
    coverage: tuple[SiteCoverage, ...] = ()
    programs: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # BPF program: (run ns, runs)
    shares: Mapping[int, float] = field(default_factory=dict)  # by tid: share of the last window spent waiting
    # by (cgroup label, site label): only when cgroups to label are configured (core/cgroupstall.py)
    cgroup_stalled_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    info: Mapping[str, str] = field(default_factory=dict)  # version, kernel
    live: LiveView | None = None  # what a live viewer needs; only while one listens (core/live.py)


def inflight_view(waits: Iterable[Wait], now_ns: int, thresholds: Thresholds) -> tuple[InFlight, ...]:
    out = []
    for w in waits:
        duration_ns = max(0, now_ns - w.start_ns)
        out.append(
            InFlight(
                w.tid, w.pid, w.comm, w.site.label, duration_ns / NS_PER_S,
                duration_ns // thresholds.for_site(w.site), w.start_known, w.gfp, w.order,
            )
        )
    out.sort(key=lambda f: -f.duration_s)
    return tuple(out)


def per_site_now(inflight: Iterable[InFlight], watched: Iterable[str] = ()) -> dict[str, SiteNow]:
    """Per site: tasks waiting, over threshold, longest wait; zeros for watched sites with none."""
    acc: dict[str, list[float]] = {site: [] for site in watched}
    stalled: dict[str, int] = {site: 0 for site in watched}
    for f in inflight:
        acc.setdefault(f.site, []).append(f.duration_s)
        stalled[f.site] = stalled.get(f.site, 0) + (f.level >= 1)
    return {site: SiteNow(len(d), stalled[site], max(d, default=0.0)) for site, d in acc.items()}


class StallSeconds:
    """Seconds spent waiting per site, completed plus in flight, kept monotonic.

    A wait's in-flight time moves into the completed sum when it ends, so the
    total only grows; the guard keeps a counter from stepping back when an end
    is seen a scan late or a short unnamed sleep ends unseen.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def update(self, completed: Mapping[str, Histogram], inflight: Iterable[InFlight]) -> dict[str, float]:
        now = {site: h.sum_s for site, h in completed.items()}
        for f in inflight:
            now[f.site] = now.get(f.site, 0.0) + f.duration_s
        for site, v in now.items():
            self._last[site] = max(v, self._last.get(site, 0.0))
        return dict(self._last)


def merge_slots(
    kernel: Mapping[Site, tuple[list[int], int]], user: Mapping[Site, tuple[list[int], int]]
) -> dict[str, Histogram]:
    """Kernel-counted waits plus those only user space could name (stack-named sleeps)."""
    out = {}
    for site in set(kernel) | set(user):
        slots = [0] * HIST_SLOTS
        total_ns = 0
        for part in (kernel.get(site), user.get(site)):
            if part:
                for i, n in enumerate(part[0][:HIST_SLOTS]):
                    slots[i] += n
                total_ns += part[1]
        out[site.label] = histogram_from_slots(slots, total_ns)
    return out
