# SPDX-License-Identifier: Apache-2.0
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
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from allocwatch.core.live import LiveView
from allocwatch.core.sites import HIST_SLOTS, SITE_LABELS, Site, hist_slot_upper_s
from allocwatch.core.tracker import NS_PER_S, Thresholds, Wait

# Completed-wait histogram buckets: the kernel's log2 slots from 1.024 ms
# (2^10 us) to 67.1 s (2^26 us); shorter waits fall in the first, longer ones
# only in +Inf. Bounds are exact slot edges, so no slot is split.
FIRST_BUCKET_SLOT = 9
LAST_BUCKET_SLOT = 25
WAIT_BUCKETS_S: tuple[float, ...] = tuple(
    hist_slot_upper_s(k) for k in range(FIRST_BUCKET_SLOT, LAST_BUCKET_SLOT + 1)
)

K = TypeVar("K")
V = TypeVar("V")

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


@dataclass(frozen=True, slots=True)
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
    target: str = ""  # what it is attached to: the tracepoints, or the function of a kprobe pair


@dataclass(frozen=True)
class ReloadOutcome:
    """The last reload asked for (SIGHUP) and how it went: `allocwatch reload`
    waits for `seq` to grow past the one it saw before it asked."""

    seq: int  # reloads done since the start
    ok: bool  # False: the configuration was refused and the running one stays
    said: str  # the daemon's one line about it


@dataclass(frozen=True)
class Snapshot:
    scan: int  # 1 for the first scan of the run
    time_s: float  # wall clock
    mono_ns: int  # CLOCK_MONOTONIC, as the BPF timestamps
    scan_duration_s: float  # how long the previous scan took (this one is not over yet)
    inflight: Sequence[InFlight]  # longest first; an InflightTable, made when first read
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
    # by (cgroup label, [namespace, pod, container,] site label): only when cgroups to label are
    # configured (core/cgroupstall.py); the names of the labels before the site in cgroup_label_names
    cgroup_stalled_seconds: Mapping[tuple[str, ...], float] = field(default_factory=dict)
    cgroup_label_names: tuple[str, ...] = ("cgroup",)
    # OOM kills by the victims' cgroup label values, with cgroups to label only (else None)
    cgroup_oom_kills: Mapping[tuple[str, ...], int] | None = None
    info: Mapping[str, str] = field(default_factory=dict)  # version, kernel
    live: LiveView | None = None  # what a live viewer needs; only while one listens (core/live.py)
    stalled_now: int | None = None  # waits at or over their threshold (None: count them in `now`)
    reload: ReloadOutcome | None = None  # None: no reload asked for since the start

    def stalled_count(self) -> int:
        """Waits at or over their threshold now, without making the rows."""
        return self.stalled_now if self.stalled_now is not None else sum(n.stalled for n in self.now.values())


def inflight_view(waits: Iterable[Wait], now_ns: int, thresholds: Thresholds) -> tuple[InFlight, ...]:
    out = []
    labels = SITE_LABELS
    for w in waits:
        duration_ns = now_ns - w.start_ns
        duration_ns = max(duration_ns, 0)
        out.append(
            InFlight(
                w.tid, w.pid, w.comm, labels[w.site], duration_ns / NS_PER_S,
                duration_ns // thresholds.for_site(w.site), w.start_known, w.gfp, w.order,
            )
        )
    out.sort(key=lambda f: -f.duration_s)
    return tuple(out)


class InflightTable(Sequence[InFlight]):
    """`inflight_view` of a scan's waits, made at first use, once.

    A scan every second with 10,000 tasks stalled would otherwise make 10,000
    rows a second for outputs that may never look (a scrape every 15 s, top
    only while it runs). Its length needs no rows. Readers in other threads may
    race to make the rows: both make the same tuple, and one is kept.
    """

    def __init__(self, waits: Sequence[Wait], now_ns: int, thresholds: Thresholds) -> None:
        self._waits = waits
        self._now_ns = now_ns
        self._thresholds = thresholds
        self._rows: tuple[InFlight, ...] | None = None

    def rows(self) -> tuple[InFlight, ...]:
        rows = self._rows
        if rows is None:
            rows = self._rows = inflight_view(self._waits, self._now_ns, self._thresholds)
        return rows

    def __len__(self) -> int:
        return len(self._waits)

    @overload
    def __getitem__(self, i: int) -> InFlight: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[InFlight, ...]: ...
    def __getitem__(self, i: int | slice) -> InFlight | tuple[InFlight, ...]:
        return self.rows()[i]

    def __iter__(self) -> Iterator[InFlight]:
        return iter(self.rows())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self.rows())

    def __repr__(self) -> str:
        return f"InflightTable({len(self)} waits)"


class LazyMapping(Mapping[K, V]):
    """A mapping made by `make()` at first use, once (see InflightTable)."""

    def __init__(self, make: Callable[[], Mapping[K, V]]) -> None:
        self._make: Callable[[], Mapping[K, V]] | None = make
        self._value: Mapping[K, V] | None = None

    def _get(self) -> Mapping[K, V]:
        value = self._value
        if value is None:
            make = self._make
            if make is None:  # made by another thread meanwhile
                value = self._value
                assert value is not None
                return value
            value = self._value = make()
            self._make = None
        return value

    def __getitem__(self, key: K) -> V:
        return self._get()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyMapping({dict(self._get())!r})"


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
        self._lock = threading.Lock()  # outputs' threads may ask for snapshots' totals at once

    def update(self, completed: Mapping[str, Histogram], inflight: Iterable[InFlight]) -> dict[str, float]:
        now = {site: h.sum_s for site, h in completed.items()}
        for f in inflight:
            now[f.site] = now.get(f.site, 0.0) + f.duration_s
        with self._lock:
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
