# SPDX-License-Identifier: Apache-2.0
"""What a stall report says about the machine and a stalled task (pure).

kernel/hostfs.py reads these from /proc and the cgroup filesystem; nothing
here reads a file. Field names carry their units: _bytes, _pages, _pct
(percent of wall time), _us (microseconds); vmstat values are event counts.
Mappings are read-only by contract (typed Mapping): treat them as frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

MIB = 1 << 20


def near_limit(usage_bytes: int | None, limit_bytes: int | None) -> bool:
    """True when usage is within 1 MiB or 1 % of the limit, whichever is
    larger (or over it): a charge then has to reclaim inside the cgroup or
    OOM it. False when either value is unknown or there is no limit."""
    if usage_bytes is None or limit_bytes is None:
        return False
    return usage_bytes >= limit_bytes - max(MIB, limit_bytes // 100)


@dataclass(frozen=True)
class PsiLine:
    """One line of a PSI file: the share of wall time that tasks were
    stalled on memory, averaged over 10/60/300 s, and the running total."""

    avg10_pct: float
    avg60_pct: float
    avg300_pct: float
    total_us: int


@dataclass(frozen=True)
class PressureInfo:
    """PSI for memory: `some` (at least one task stalled) and `full` (all
    non-idle tasks stalled at once; None where the kernel shows no such line)."""

    some: PsiLine
    full: PsiLine | None


@dataclass(frozen=True)
class MemcgInfo:
    """A task's memory cgroup. A value the kernel does not show in this
    version (or could not be read) is None; "max" / no limit is None too.

    events: v2 memory.events (low high max oom oom_kill oom_group_kill); on
    v1 only oom_kill, from memory.oom_control. oom_kill_disable, under_oom
    and failcnt exist only on v1; high_bytes and pressure only on v2."""

    version: int  # 1 or 2
    path: str  # as /proc/PID/cgroup shows it
    usage_bytes: int | None
    limit_bytes: int | None
    high_bytes: int | None
    oom_kill_disable: bool | None
    under_oom: bool | None
    events: Mapping[str, int]
    failcnt: int | None
    pressure: PressureInfo | None

    @property
    def usage_near_limit(self) -> bool:
        """Usage within 1 MiB or 1 % of the hard limit (see `near_limit`)."""
        return near_limit(self.usage_bytes, self.limit_bytes)


@dataclass(frozen=True)
class SlabCache:
    """One slab cache of /proc/slabinfo: the memory its slabs hold and its objects."""

    name: str
    bytes: int  # num_slabs * pagesperslab * page size
    objects: int  # num_objs
    active_objects: int


@dataclass(frozen=True)
class ZoneInfo:
    """One zone of /proc/zoneinfo: free pages and its watermarks."""

    node: int
    zone: str
    free_pages: int
    min_pages: int
    low_pages: int
    high_pages: int

    @property
    def under_watermark(self) -> str | None:
        """The lowest watermark free pages are at or under ("min", "low",
        "high"), None above all: at low kswapd is woken; at min only
        allocations allowed into the reserves succeed without reclaim."""
        for name, mark in (("min", self.min_pages), ("low", self.low_pages), ("high", self.high_pages)):
            if self.free_pages <= mark:
                return name
        return None


@dataclass(frozen=True)
class MemoryPicture:
    """The machine's memory, read once per report block.

    meminfo_bytes: the /proc/meminfo lines present of MemTotal MemFree
    MemAvailable Buffers Cached SwapTotal SwapFree Dirty Writeback Shmem Slab
    SReclaimable SUnreclaim AnonPages. vmstat: the counters present of
    allocstall pgscan_direct pgsteal_direct compact_stall oom_kill
    pgscan_kswapd pgsteal_kswapd workingset_refault (per-zone or anon/file
    lines summed into one)."""

    meminfo_bytes: Mapping[str, int]
    zones: tuple[ZoneInfo, ...]
    pressure: PressureInfo | None
    vmstat: Mapping[str, int]


@dataclass(frozen=True)
class KswapdInfo:
    """A node's kswapd: state letter (None: gone) and, only when it is in D or
    has not run for long (`kswapd_quiet`), its kernel stack, innermost first
    (None when not read or unreadable)."""

    node: int
    pid: int
    state: str | None
    stack: tuple[str, ...] | None


@dataclass(frozen=True)
class RunSeen:
    """A thread's run time (ns on a CPU, cumulative) as the scans read it: the
    last value, the scan that saw it grow (or first saw it), the last scan that
    read it, and whether more than one scan has."""

    run_ns: int
    grew_at_ns: int
    seen_at_ns: int
    seen_twice: bool

    @property
    def not_run_for_ns(self) -> int | None:
        """How long it has not run for, at least: from the scan that saw its run
        time grow to the last scan that read it unchanged (a scan interval's
        resolution: it may have run just before the scan that saw it grow).
        None until two scans have read it."""
        return self.seen_at_ns - self.grew_at_ns if self.seen_twice else None


def run_seen(prev: RunSeen | None, run_ns: int | None, now_ns: int) -> RunSeen | None:
    """The bookkeeping after a scan read `run_ns` at now_ns (None: unreadable,
    forget it). A value that went back (a new thread under the pid) counts as
    grown."""
    if run_ns is None:
        return None
    if prev is None:
        return RunSeen(run_ns, now_ns, now_ns, seen_twice=False)
    grew_at_ns = now_ns if run_ns != prev.run_ns else prev.grew_at_ns
    return RunSeen(run_ns, grew_at_ns, now_ns, seen_twice=True)


def kswapd_quiet(not_run_for_ns: int | None, quiet_ns: int | None) -> bool:
    """Has kswapd not run for at least quiet_ns (a stall threshold)? A block
    then shows where it sleeps, as it does when kswapd is in D."""
    return not_run_for_ns is not None and quiet_ns is not None and not_run_for_ns >= quiet_ns


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """Who a stalled task is. cmdline: arguments space-joined, cut to 256
    bytes then "..."; None for kernel threads (and zombies: empty cmdline)."""

    pid: int
    tid: int
    uid: int | None  # real uid
    cmdline: str | None
    state: str | None


class TaskFlags(NamedTuple):
    """Why a task may be on its way out rather than stalled for good.

    dying: SIGKILL is pending for the thread (its own or the process-wide
    pending set): it was killed, by the OOM killer or anyone, and exits once
    it gets back to signal delivery. exiting: the thread is in or past
    do_exit: PF_EXITING is set, or its state is Z (zombie) or X (dead)."""

    dying: bool
    exiting: bool


def vmstat_delta(prev: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    """now - prev for each counter in both; a counter that went back gives 0."""
    return {name: max(0, value - prev[name]) for name, value in now.items() if name in prev}


def alloc_info_line(stalling: int, dying: int, exiting: int, victims: int, oom_kills: int) -> str:
    """The block header's count line: tasks stalling in allocation, of them
    dying and exiting (TaskFlags), OOM victims, and OOM kills so far."""
    return (
        f"MemAlloc-Info: stalling={stalling} dying={dying} exiting={exiting} "
        f"victim={victims} oom_count={oom_kills}"
    )


def memory_at_oom(picture: MemoryPicture) -> dict[str, Any]:
    """What the machine had when an OOM kill was seen (read at the scan that saw it): was
    free memory above every zone's min watermark (an OOM kill with free memory above min
    in every zone and much reclaimable was not the machine out of memory: a memory
    cgroup's limit, or reclaim that gave up early), and how much was reclaimable (the
    file LRU and reclaimable slab)."""
    m = picture.meminfo_bytes
    parts = [m.get(k) for k in ("Active(file)", "Inactive(file)", "SReclaimable")]
    return {
        "free_above_min": all(z.free_pages > z.min_pages for z in picture.zones) if picture.zones else None,
        "zones_at_or_under_min": [f"node{z.node}/{z.zone}" for z in picture.zones if z.free_pages <= z.min_pages],
        "free_bytes": m.get("MemFree"),
        "available_bytes": m.get("MemAvailable"),
        "reclaimable_bytes": sum(p for p in parts if p is not None) if None not in parts else None,
    }
