# SPDX-License-Identifier: Apache-2.0
"""ctypes mirror of the records in bpf/allocwatch.h, and their decoding.

Pure: no bcc here. bpfsource hands raw bytes or ctypes values to these
functions; tests pin sizes and offsets against the header.
"""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any

from allocwatch.core.model import (
    COMM_LEN,
    Acct,
    DirtyPause,
    InflightWait,
    OneCopy,
    OomContext,
    OomKill,
    ShrinkCount,
    VictimMemory,
    WaitEnd,
    WritebackNote,
    decode_comm,
    encode_comm,
)
from allocwatch.core.sites import END_HOW, EV_OOM_KILL, EV_WAIT_END, GFP_UNKNOWN, NR_SITES, SITE_NONE, Site

__all__ = ["COMM_LEN", "InflightWait", "OomKill", "WaitEnd", "decode_comm", "encode_comm"]

VICTIM_RSS = 1  # AW_VICTIM_RSS in bpf/allocwatch.h
NO_DETAIL = 0xFFFFFFFF
HINT_MAX_AGE_NS = 50_000_000  # bpf/allocwatch.bpf.c: a sleep follows its hint within this
# Sites whose waits count the pages their reclaim passes free as they go.
RECLAIM_PROGRESS_SITES = (Site.DIRECT_RECLAIM, Site.MEMCG_RECLAIM)

class OomContextEvent(ctypes.Structure):
    """struct aw_oom_context: an OOM kill's memory cgroups, read in the kernel at the kill."""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("victim_cgroup_id", ctypes.c_uint64),
        ("gfp", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("victim_pid", ctypes.c_uint32),
        ("invoker_tid", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("constraint", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("stack_id", ctypes.c_int64),
        ("invoker_cgroup_id", ctypes.c_uint64),
        ("domain_cgroup_id", ctypes.c_uint64),
    ]


EV_OOM_CONTEXT = 3  # AW_EV_OOM_CONTEXT in bpf/allocwatch.h
OOMCTX_OC = 1  # AW_OOMCTX_OC
OOMCTX_STACK = 2  # AW_OOMCTX_STACK
OOMCTX_MEMCG = 4  # AW_OOMCTX_MEMCG


def event_kind(raw: bytes) -> int:
    """The kind of a ring-buffer record: every record has it at aw_event.kind's offset."""
    end = Event.kind.offset + Event.kind.size
    return int.from_bytes(raw[Event.kind.offset: end], "little") if len(raw) >= end else 0


class WaitKey(ctypes.Structure):
    _fields_ = [("tid", ctypes.c_uint32), ("site", ctypes.c_uint32)]


class WaitValue(ctypes.Structure):
    _fields_ = [
        ("start_ns", ctypes.c_uint64),
        ("gfp", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("depth", ctypes.c_uint32),
        ("site_hint", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("reclaimed_pages", ctypes.c_uint64),
        ("noted_ns", ctypes.c_uint64),
    ]


class DirtyPauseValue(ctypes.Structure):
    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("dirty", ctypes.c_uint64),
        ("setpoint", ctypes.c_uint64),
        ("limit", ctypes.c_uint64),
        ("pause_ms", ctypes.c_int64),
        ("period_ms", ctypes.c_uint64),
        ("think_ms", ctypes.c_int64),
        ("paused_ms", ctypes.c_uint64),
        ("dirtied", ctypes.c_uint32),
        ("dirtied_pause", ctypes.c_uint32),
    ]


BDI_NAME_LEN = 32  # AW_BDI_NAME_LEN: the tracepoint's char name[32]


class WbNoteValue(ctypes.Structure):
    """struct aw_wb_note: the device a writeback wait waits on, by tid."""

    _fields_ = [
        ("time_ns", ctypes.c_uint64),
        ("ino", ctypes.c_uint64),
        ("bdi", ctypes.c_char * BDI_NAME_LEN),
    ]


def decode_wb_note(v: WbNoteValue) -> WritebackNote:
    """The bdi's name as the kernel wrote it (dev_name(bdi->dev), NUL-terminated;
    any bytes kept, as a comm's are)."""
    return WritebackNote(v.time_ns, decode_comm(bytes(v.bdi)), v.ino)


class Event(ctypes.Structure):
    _fields_ = [
        ("start_ns", ctypes.c_uint64),
        ("duration_ns", ctypes.c_uint64),
        ("gfp", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("site", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("order", ctypes.c_int32),
        ("target_pid", ctypes.c_uint32),
        ("site_hint", ctypes.c_uint32),
        ("how", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
        ("target_comm", ctypes.c_char * COMM_LEN),
        ("target_anon_rss_kb", ctypes.c_uint64),
        ("target_file_rss_kb", ctypes.c_uint64),
        ("target_shmem_rss_kb", ctypes.c_uint64),
        ("target_uid", ctypes.c_uint32),
        ("target_oom_score_adj", ctypes.c_int32),
        ("target_flags", ctypes.c_uint32),
        ("end_detail", ctypes.c_uint32),
    ]


def _opt_gfp(gfp: int) -> int | None:
    return None if gfp == GFP_UNKNOWN else gfp


def _opt_order(order: int) -> int | None:
    return None if order < 0 else order


def _opt_site(site: int) -> int | None:
    return None if site == SITE_NONE else site


GFP_SLOTS = 4  # AW_GFP_SLOTS


class TaskAcct(ctypes.Structure):
    _fields_ = [
        ("wait_ns", ctypes.c_uint64 * NR_SITES),
        ("waits", ctypes.c_uint32 * NR_SITES),
        ("pid", ctypes.c_uint32),
        ("reclaim_passes", ctypes.c_uint64),
        ("reclaim_zero", ctypes.c_uint64),
        ("reclaimed_pages", ctypes.c_uint64),
        ("throttle_reasons", ctypes.c_uint32 * 4),
        ("comm", ctypes.c_char * COMM_LEN),
        ("busy_ns", ctypes.c_uint64),
        ("open_since_ns", ctypes.c_uint64),
        ("open", ctypes.c_uint32),
        ("gfp_mask", ctypes.c_uint32 * GFP_SLOTS),
        ("gfp_waits", ctypes.c_uint32 * GFP_SLOTS),
    ]


SHRINK_SLOTS = 8  # AW_SHRINK_SLOTS


class ShrinkAcct(ctypes.Structure):
    _fields_ = [
        ("fn", ctypes.c_uint64 * SHRINK_SLOTS),
        ("asked", ctypes.c_uint64 * SHRINK_SLOTS),
        ("freed", ctypes.c_uint64 * SHRINK_SLOTS),
        ("objects", ctypes.c_uint64 * SHRINK_SLOTS),
        ("calls", ctypes.c_uint32 * SHRINK_SLOTS),
        ("gfp", ctypes.c_uint32 * SHRINK_SLOTS),
    ]


class StackSeen(ctypes.Structure):
    """struct aw_stack_seen: the stack a task last entered reclaim with (task_stacks)."""

    _fields_ = [("time_ns", ctypes.c_uint64), ("stack_id", ctypes.c_int64)]


STACK_DEPTH = 127  # PERF_MAX_STACK_DEPTH: a BPF_STACK_TRACE value's addresses

# Each map user space reads or writes: its key and value types. bcc builds its
# own from the C source; the maps a loader process hands over are read by these,
# and their sizes checked against the kernel's (kernel/libbpf.py FdTable).
MAP_LAYOUTS: dict[str, tuple[Any, Any]] = {
    "waits": (WaitKey, WaitValue),
    "dwaits": (ctypes.c_uint32, WaitValue),
    "dirty_pauses": (ctypes.c_uint32, DirtyPauseValue),
    "wb_notes": (ctypes.c_uint32, WbNoteValue),
    "task_acct": (ctypes.c_uint32, TaskAcct),
    "shrink_acct": (ctypes.c_uint32, ShrinkAcct),
    "task_stacks": (ctypes.c_uint32, StackSeen),
    "stacks": (ctypes.c_uint32, ctypes.c_uint64 * STACK_DEPTH),
    "stats": (ctypes.c_uint32, ctypes.c_uint64),
    "tunables": (ctypes.c_uint32, ctypes.c_uint64),
    "wait_hist": (ctypes.c_uint32, ctypes.c_uint64),
    "wait_sum_ns": (ctypes.c_uint32, ctypes.c_uint64),
    "sigkills": (ctypes.c_uint32, ctypes.c_uint64),
}


class TaskNow(ctypes.Structure):
    """struct aw_task_now: one task, as the task iterator writes it (kernel/taskiter.py)."""
    _fields_ = [
        ("tid", ctypes.c_uint32),
        ("state", ctypes.c_uint32),
        ("exit_state", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("signal_lo", ctypes.c_uint32),
    ]


def decode_shrinks(v: ShrinkAcct) -> tuple[ShrinkCount, ...]:
    """The slots in use, by function address (a slot's place means nothing)."""
    return tuple(sorted(
        (ShrinkCount(fn=v.fn[i], calls=v.calls[i], asked=v.asked[i], freed=v.freed[i], objects=v.objects[i],
                     gfp=v.gfp[i])
         for i in range(SHRINK_SLOTS) if v.fn[i] and v.calls[i]),
        key=lambda c: c.fn))


# One tuple for equal counts: the threads of one workload wait the same number of
# times at the same sites, and 10,000 of them held 10,000 copies (192 bytes each).
_COUNTS: OneCopy[tuple[int, ...], tuple[int, ...]] = OneCopy()


def _shared(counts: tuple[int, ...]) -> tuple[int, ...]:
    return _COUNTS.get(counts, counts)


# The same for the masks a task's waits ended with (one workload: one or two
# masks, counted alike) and for the process id, one int for its threads: a
# decoded record holds its own int otherwise (28 bytes for each of 10,000).
_MASKS: OneCopy[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = OneCopy()
_PIDS: OneCopy[int, int] = OneCopy()


def _one_pid(pid: int) -> int:
    return _PIDS.get(pid, pid)


def _one_masks(counts: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return _MASKS.get(counts, counts) if counts else ()


def _trimmed(ns: tuple[int, ...]) -> tuple[int, ...]:
    """Without its trailing zeros: a task waits at a site or two, and a tuple of all
    19 sites is 208 bytes (10,000 stalled tasks: 1.2 MB more)."""
    end = len(ns)
    while end and not ns[end - 1]:
        end -= 1
    return ns[:end] if end < len(ns) else ns


def decode_acct(tid: int, v: TaskAcct) -> Acct:
    return Acct(
        tid=tid,
        pid=_one_pid(v.pid),
        comm=decode_comm(bytes(v.comm)),
        wait_ns=_trimmed(tuple(v.wait_ns)),
        waits=_shared(tuple(v.waits)),
        reclaim_passes=v.reclaim_passes,
        reclaim_zero=v.reclaim_zero,
        reclaimed_pages=v.reclaimed_pages,
        throttle_reasons=_shared(tuple(v.throttle_reasons)),
        busy_ns=v.busy_ns,
        gfp_waits=_one_masks(tuple((m, n) for m, n in zip(v.gfp_mask, v.gfp_waits, strict=True) if n)),
    )


def decode_inflight(key: WaitKey, value: WaitValue, progress: bool = False) -> InflightWait:
    """`progress`: the pass-end handler that counts pages reclaimed so far is attached."""
    counted = progress and key.site in RECLAIM_PROGRESS_SITES
    return InflightWait(
        tid=key.tid,
        pid=_one_pid(value.pid),
        comm=decode_comm(bytes(value.comm)),
        site=key.site,
        start_ns=value.start_ns,
        gfp=_opt_gfp(value.gfp),
        order=_opt_order(value.order),
        site_hint=_opt_site(value.site_hint),
        reclaimed_pages=value.reclaimed_pages if counted else None,
    )


def decode_dirty_pause(v: DirtyPauseValue) -> DirtyPause:
    return DirtyPause(
        pause_ms=v.pause_ms, period_ms=v.period_ms, think_ms=v.think_ms, paused_ms=v.paused_ms,
        dirtied_pages=v.dirtied, dirtied_pause_pages=v.dirtied_pause,
        dirty_pages=v.dirty, setpoint_pages=v.setpoint, limit_pages=v.limit,
    )


def pause_of_sleep(value: WaitValue, pause: DirtyPauseValue | None) -> DirtyPause | None:
    """The pause balance_dirty_pages chose for this sleep: noted by the same
    task just before the sleep began, as its hint was (an older note belongs to
    an earlier sleep, a newer one to the next)."""
    if pause is None or value.site_hint != Site.DIRTY_THROTTLE:
        return None
    if not 0 <= value.start_ns - pause.time_ns <= HINT_MAX_AGE_NS:
        return None
    return decode_dirty_pause(pause)


def decode_dwait(tid: int, value: WaitValue, dstate_site: int, pause: DirtyPauseValue | None = None) -> InflightWait:
    raw = decode_inflight(WaitKey(tid=tid, site=dstate_site), value)
    found = pause_of_sleep(value, pause)
    return dataclasses.replace(raw, dirty_pause=found) if found else raw


def decode_oom_context(raw: bytes, constraints: dict[int, str] | None = None) -> OomContext | None:
    """An AW_EV_OOM_CONTEXT record, else None. `constraints`: enum oom_constraint
    value -> word, for the kernel's own constraint when oc was read."""
    if event_kind(raw) != EV_OOM_CONTEXT or len(raw) < ctypes.sizeof(OomContextEvent):
        return None
    ev = OomContextEvent.from_buffer_copy(raw[: ctypes.sizeof(OomContextEvent)])
    memcg_oom = bool(ev.flags & OOMCTX_MEMCG) if ev.flags & OOMCTX_STACK else None
    oc = bool(ev.flags & OOMCTX_OC)
    constraint = (constraints or {}).get(ev.constraint) if oc else None
    if constraint is not None:  # the kernel's own word outranks the stack's
        memcg_oom = constraint == "memcg"
    return OomContext(
        victim_pid=ev.victim_pid,
        invoker_tid=ev.invoker_tid,
        victim_memcg_id=ev.victim_cgroup_id or None,
        invoker_memcg_id=ev.invoker_cgroup_id or None,
        memcg_oom=memcg_oom,
        constraint=constraint,
        gfp=ev.gfp & 0xFFFFFFFF if oc else None,
        order=ev.order if oc and ev.order >= 0 else None,
        oom_memcg_id=(ev.domain_cgroup_id or None) if oc else None,
    )


def join_oom_contexts(
    events: list[WaitEnd | OomKill | OomContext], held: dict[tuple[int, int], OomContext] | None = None
) -> list[WaitEnd | OomKill]:
    """The events with each OomKill given the context of the same kill (same
    victim and invoker). The context's program is attached first, so its record
    comes first in the ring, but a drain may end between the two: `held` keeps
    the contexts no kill has taken yet, for the next drain (a kill's own
    context is taken at most once). Contexts are not returned."""
    contexts = {} if held is None else held
    for ev in events:
        if isinstance(ev, OomContext):
            contexts[(ev.victim_pid, ev.invoker_tid)] = ev
    out: list[WaitEnd | OomKill] = []
    for ev in events:
        if isinstance(ev, OomContext):
            continue
        if isinstance(ev, OomKill) and (ctx := contexts.pop((ev.victim_pid, ev.invoker_tid), None)):
            out.append(dataclasses.replace(
                ev, victim_memcg_id=ctx.victim_memcg_id, invoker_memcg_id=ctx.invoker_memcg_id,
                memcg_oom=ctx.memcg_oom, constraint=ctx.constraint, gfp=ctx.gfp, order=ctx.order,
                oom_memcg_id=ctx.oom_memcg_id))
        else:
            out.append(ev)
    return out


def decode_event(raw: bytes) -> WaitEnd | OomKill | None:
    """Decode one ring-buffer record; None for a kind this version ignores
    (an OOM context, shorter than an aw_event, is decoded by decode_oom_context)."""
    if event_kind(raw) not in (EV_WAIT_END, EV_OOM_KILL) or len(raw) < ctypes.sizeof(Event):
        return None
    ev = Event.from_buffer_copy(raw[: ctypes.sizeof(Event)])
    if ev.kind == EV_WAIT_END:
        return WaitEnd(
            tid=ev.tid,
            pid=ev.pid,
            comm=decode_comm(bytes(ev.comm)),
            site=ev.site,
            start_ns=ev.start_ns,
            duration_ns=ev.duration_ns,
            gfp=_opt_gfp(ev.gfp),
            order=_opt_order(ev.order),
            site_hint=_opt_site(ev.site_hint),
            how=END_HOW.get(ev.how, "woke"),
            detail=None if ev.end_detail == NO_DETAIL else ev.end_detail,
        )
    if ev.kind == EV_OOM_KILL:
        victim_comm = decode_comm(bytes(ev.target_comm))
        rss = bool(ev.target_flags & VICTIM_RSS)
        return OomKill(
            time_ns=ev.start_ns,
            victim_pid=ev.target_pid,
            victim_comm=victim_comm or None,
            invoker_tid=ev.tid,
            invoker_pid=ev.pid,
            invoker_comm=decode_comm(bytes(ev.comm)),
            victim=VictimMemory(
                ev.target_anon_rss_kb, ev.target_file_rss_kb, ev.target_shmem_rss_kb,
                ev.target_uid, ev.target_oom_score_adj,
            ) if rss else None,
        )
    return None
