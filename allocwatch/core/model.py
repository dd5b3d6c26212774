# SPDX-License-Identifier: Apache-2.0
"""What one scan reads from the kernel, as plain values (pure).

The kernel side (kernel/wire.py) decodes BPF records into these; the core
decides on them. A comm is a str that holds the task's raw bytes exactly:
bytes that are not UTF-8 are kept as lone surrogates (surrogateescape).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

COMM_LEN = 16  # TASK_COMM_LEN
K = TypeVar("K")
V = TypeVar("V")


class OneCopy(Generic[K, V]):
    """One kept value for equal keys (10,000 threads of one workload make equal
    tuples and stacks: one copy each, not 10,000). Bounded: emptied when full."""

    def __init__(self, most: int = 4096) -> None:
        self._most = most
        self._kept: dict[K, V] = {}

    def get(self, key: K, value: V) -> V:
        """The value kept for `key`, or `value`, kept for it from now on."""
        kept = self._kept.get(key)
        if kept is None:
            if len(self._kept) >= self._most:
                self._kept.clear()
            kept = self._kept[key] = value
        return kept


@lru_cache(maxsize=4096)  # one str for the 10,000 threads of a process, not one a record
def decode_comm(raw: bytes) -> str:
    """A kernel comm: up to 16 bytes, NUL-terminated, any bytes at all.

    Bytes that are not UTF-8 become lone surrogates (surrogateescape), so the
    string turns back into exactly these bytes (`encode_comm`) and renderers
    can tell a byte 0xff from a task that named itself "\\xff"."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def encode_comm(comm: str) -> bytes:
    """The raw bytes of a comm from `decode_comm`, cut to fit the kernel's 16."""
    return comm.encode("utf-8", "surrogateescape")[: COMM_LEN - 1]


@dataclass(frozen=True, slots=True)
class DirtyPause:
    """What writeback:balance_dirty_pages said as it chose a dirty-throttle sleep.

    `dirty_pages` is the throttling domain's (global, or the task's memcg's with
    cgroup writeback), `limit_pages` the global dirty limit as the tracepoint
    gives it; the sleep comes from `period_ms` (what the task's dirtying takes
    at its rate limit) less `think_ms` (since its last pause), bounded."""

    pause_ms: int
    period_ms: int
    think_ms: int
    paused_ms: int  # slept already in this balance_dirty_pages() call
    dirtied_pages: int  # by the task since its last pause
    dirtied_pause_pages: int  # it may dirty between two pauses
    dirty_pages: int
    setpoint_pages: int
    limit_pages: int


@dataclass(frozen=True, slots=True)
class WritebackNote:
    """What writeback:folio_wait_writeback said as a task began to wait on a
    folio's writeback: the backing device and the file."""

    time_ns: int  # CLOCK_MONOTONIC, as the BPF timestamps
    bdi: str  # the bdi's name: "MAJ:MIN" of a block device ("7:3"), else its own ("0:53" for NFS)
    ino: int  # the inode whose page is under writeback


@dataclass(frozen=True, slots=True)
class InflightWait:
    """A wait still in progress, read from a BPF map."""

    tid: int
    pid: int
    comm: str
    site: int  # a Site number, or SITE_DSTATE
    start_ns: int
    gfp: int | None
    order: int | None
    site_hint: int | None = None
    reclaimed_pages: int | None = None  # direct/memcg reclaim: LRU pages reclaimed so far
    dirty_pause: DirtyPause | None = None  # a dirty-throttle sleep: the pause chosen for it
    writeback: WritebackNote | None = None  # a writeback wait (or reclaim in one): the device it waits on


@dataclass(frozen=True, slots=True)
class WaitEnd:
    """A wait that ended after at least LONG_WAIT_NS."""

    tid: int
    pid: int
    comm: str
    site: int
    start_ns: int
    duration_ns: int
    gfp: int | None
    order: int | None
    site_hint: int | None
    how: str = "woke"  # sites.END_HOW: woke, killed, exited
    detail: int | None = None  # reclaim: pages the pass freed; compaction: its status number


@dataclass(frozen=True)
class VictimMemory:
    """What oom:mark_victim says of the victim (v6.9+ kernels)."""

    anon_rss_kb: int
    file_rss_kb: int
    shmem_rss_kb: int
    uid: int
    oom_score_adj: int


@dataclass(frozen=True)
class OomKill:
    time_ns: int
    victim_pid: int
    victim_comm: str | None
    invoker_tid: int
    invoker_pid: int
    invoker_comm: str
    victim: VictimMemory | None = None
    # Read in the kernel as the victim is marked (OomContext), None without it.
    victim_memcg_id: int | None = None  # the victim's memory cgroup (its directory's inode)
    invoker_memcg_id: int | None = None
    memcg_oom: bool | None = None  # True: a memory cgroup's OOM; False: not (the machine's, a cpuset's, a policy's)
    # What the kernel's own oom-kill line says, when its oom_control was read (kprobes)
    constraint: str | None = None  # memcg, global, cpuset, mempolicy
    gfp: int | None = None
    order: int | None = None
    oom_memcg_id: int | None = None  # the memory cgroup out of memory (oc->memcg), None for the machine's


@dataclass(frozen=True)
class OomContext:
    """The memory cgroups of an OOM kill and whether it was a memcg's, read in
    the kernel (raw oom:mark_victim); joined to its OomKill on (victim, invoker)."""

    victim_pid: int
    invoker_tid: int
    victim_memcg_id: int | None
    invoker_memcg_id: int | None
    memcg_oom: bool | None  # None: the invoker's stack could not be read
    constraint: str | None = None
    gfp: int | None = None
    order: int | None = None
    oom_memcg_id: int | None = None


@dataclass(frozen=True, slots=True)
class ShrinkCount:
    """One shrinker as a task's reclaim waits called it, cumulative since load:
    `fn` is its scan function's kernel address (user space names it)."""

    fn: int
    calls: int
    asked: int  # objects it was asked to scan, summed over its calls
    freed: int  # objects it freed, summed
    objects: int  # freeable objects it counted at its last call
    gfp: int  # the mask of its last call


@dataclass(frozen=True, slots=True)
class Acct:
    """One task's cumulative waits (per site number) and reclaim passes, since load."""

    tid: int
    pid: int
    comm: str
    wait_ns: tuple[int, ...]  # by site number; sites past its end waited 0 ns
    waits: tuple[int, ...]
    reclaim_passes: int
    reclaim_zero: int  # passes that freed nothing
    reclaimed_pages: int
    throttle_reasons: tuple[int, ...] = ()  # mm_vmscan_throttled sleeps, by reason bit
    busy_ns: int = 0  # wall time in memory waits that ended, nested ones once
    gfp_waits: tuple[tuple[int, int], ...] = ()  # (gfp mask, waits that ended with it), a few masks
    shrinkers: tuple[ShrinkCount, ...] = ()  # called in its reclaim waits, a few by function
