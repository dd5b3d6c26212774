# SPDX-License-Identifier: Apache-2.0
"""Report records, and the one plain dict each is turned into (`to_dict`),
which every output renders: text, JSON lines, journald, the socket (pure).
A stall block's stalled tasks are rows that read as dicts (`TaskRow`).

Text a task controls (comm, cgroup path) is shown in one escaped form in both
outputs: printable ASCII as itself, a backslash as `\\\\`, every other byte as
`\\xNN` (decided from the raw bytes, so a byte 0xff and a task that named
itself "\\xff" differ). In text, a value holding a space, `"` or `=`, or any
escape, is put in double quotes with `\\"` for a quote, so a line always splits
into the same `key=value` fields.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, cast

from allocwatch.core.advice import advise
from allocwatch.core.behind import Behind
from allocwatch.core.episodes import OpenEpisode, TaskEpisodeEnd
from allocwatch.core.findings import STUCK_VICTIM, EpisodeEnd, Finding
from allocwatch.core.host import KswapdInfo, MemcgInfo, MemoryPicture, SlabCache, TaskInfo
from allocwatch.core.model import ShrinkCount
from allocwatch.core.oomkills import KillSeen, constraints, largest
from allocwatch.core.pods import PodRef
from allocwatch.core.tracker import NS_PER_S, Stall, Wait
from allocwatch.core.victims import CgroupWaiter
from allocwatch.core.wbdevice import DeviceState

T = TypeVar("T")
R = TypeVar("R")


NO_SHRINK_GFP: Mapping[int, tuple[str, bool]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)  # slots: a block of 10,000 listed tasks makes 10,000
class TaskDetail:
    """What the daemon read about a task when it was reported."""

    cgroup: str | None = None
    state: str | None = None
    stack: Sequence[str] | None = None
    gfp_flags: str | None = None  # the mask decoded with the running kernel's names
    memcg: MemcgInfo | None = None
    task: TaskInfo | None = None
    dying: bool = False  # SIGKILL pending
    exiting: bool = False
    recent_stack: Sequence[str] | None = None  # from BPF, when it last entered reclaim
    # a stuck victim: tasks of its cgroup still waiting for memory (the longest few) and how many in all
    cgroup_waiting: Sequence[CgroupWaiter] = ()
    cgroup_waiting_count: int = 0
    cgroup_blocked_count: int = 0  # of them asleep in D state outside any memory wait
    # the masks of its waits (for a stall, its wait's; for a finding, the window's) that may not
    # start file system or block I/O to reclaim (GFP_NOFS, GFP_NOIO), decoded
    gfp_no_fs_io: Sequence[str] = ()
    pod: PodRef | None = None  # the Kubernetes pod its cgroup is in (core/pods.py)
    # a finding: the masks its window's shrinkers were called with, decoded, and
    # whether each may not enter the file system (a shrinker of FS caches does nothing then)
    shrink_gfp: Mapping[int, tuple[str, bool]] = field(default_factory=lambda: NO_SHRINK_GFP)  # one empty for all
    # waiting on writeback, or in reclaim that did: the device, as read when the block was made
    writeback_device: DeviceState | None = None
    # a task waiting on writeback: the kernel threads in memory waits that complete it (core/behind.py)
    behind: Sequence[Behind] = ()
    # and the kernel threads of its device that wait on that device's writeback themselves (jbd2)
    beside: Sequence[Behind] = ()


NO_DETAIL = TaskDetail()  # a task read nothing of (frozen: one for all)


@dataclass(frozen=True)
class Victim:
    pid: int
    comm: str | None
    for_s: float  # since it was chosen


@dataclass(frozen=True)
class BlockContext:
    """What a stall block says about the rest of the machine: read once per block."""

    stalling: int  # waits over their threshold now
    dying: int  # of the tasks due, with SIGKILL pending
    exiting: int  # of the tasks due, exiting
    victims: tuple[Victim, ...]  # OOM victims chosen and not gone yet
    oom_kills: int  # so far (the kernel's counter)
    memory: MemoryPicture | None = None
    vmstat_delta: Mapping[str, int] = field(default_factory=dict)  # since the last block
    psi_delta_s: Mapping[str, float] = field(default_factory=dict)  # "some"/"full" stall time since the last block
    kswapd: tuple[KswapdInfo, ...] = ()
    kswapd_state_for_s: Mapping[int, float] = field(default_factory=dict)  # pid -> in its state for, at least
    kswapd_not_run_for_s: Mapping[int, float] = field(default_factory=dict)  # pid -> not on a CPU for, at least
    slab_caches: tuple[SlabCache, ...] = ()  # the largest, read when a finding's reclaim called shrinkers


@dataclass(frozen=True)
class StallReport:
    seq: int
    time: float  # wall clock, seconds since the epoch
    stalls: Sequence[Stall]
    stalled_now: int
    details: Mapping[int, TaskDetail] = field(default_factory=dict)  # by tid
    held_back: int = 0  # task reports the rate limit held back since the last block
    max_tasks: int = 1000  # tasks listed; the rest are summed up by site and cgroup
    context: BlockContext | None = None
    findings: Sequence[Finding] = ()  # throttled, livelock, stuck_victim: due now
    throttle_names: Mapping[int, str] = field(default_factory=dict)  # reason bit -> the kernel's name
    symbols: Mapping[int, str] = field(default_factory=dict)  # kernel address -> function (the findings' shrinkers)


@dataclass(frozen=True)
class EpisodeEndReport:
    """A task's episode that ended (core/episodes.py), or a stuck victim's."""

    seq: int
    time: float
    end: TaskEpisodeEnd | EpisodeEnd


@dataclass(frozen=True)
class OomKillReport:
    """The OOM kills of one scan whose victims were in one memory cgroup (core/oomkills.py)."""

    seq: int
    time: float
    kills: tuple[KillSeen, ...]  # at least one
    interval_s: float  # the time since the scan before: "in the last N s"
    memory: Mapping[str, Any] | None = None  # core.host.memory_at_oom, read at the scan that saw them


@dataclass(frozen=True)
class LimitsReport:
    """Kernel-side limits reached since the last scan: tasks went unseen."""

    seq: int
    time: float
    grown: Mapping[str, int]  # counter name -> how much it grew since the last scan
    totals: Mapping[str, int]  # counter name -> value now


@dataclass(frozen=True)
class SiteSummary:
    count: int
    total_s: float
    buckets: Mapping[str, int]  # "le" upper bound in seconds -> waits in that slot


@dataclass(frozen=True)
class SummaryReport:
    seq: int
    time: float
    completed: Mapping[str, SiteSummary]
    stats: Mapping[str, int]
    oom_kills: int
    # the episodes still open at the stop (the first max_tasks_per_block, longest first), and how many
    open_episodes: Sequence[OpenEpisode] = ()
    open_episodes_count: int = 0


Record = StallReport | EpisodeEndReport | OomKillReport | LimitsReport | SummaryReport

# What each limit counter means, for the text line and stderr.
LIMIT_TEXT = {
    "waits_full": "in-flight wait map full: {n} wait(s) not tracked (raise max_inflight)",
    "dwaits_full": "D-state map full: {n} sleep(s) not tracked (raise max_inflight)",
    "events_lost": "ring buffer full: {n} event(s) lost",
}


def escape(text: str) -> str:
    """Printable ASCII stays; a backslash doubles; anything else (newlines, ESC,
    non-ASCII, undecodable bytes held as surrogates) becomes \\xNN per byte."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # nearly every comm, path and frame: no copy, char by char
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def iso_time(epoch_s: float) -> str:
    stamp = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def seconds(ns: int) -> float:
    return round(ns / NS_PER_S, 3)


def gfp_text(gfp: int | None) -> str | None:
    return None if gfp is None else f"{gfp:#x}"


def by_task(stalls: Sequence[Stall]) -> list[list[Stall]]:
    """Group stalls per task, each group longest first, tasks longest first."""
    groups: dict[int, list[Stall]] = {}
    for s in sorted(stalls, key=lambda s: -s.duration_ns):
        groups.setdefault(s.wait.tid, []).append(s)
    return list(groups.values())


# -- records -> dicts (once) -----------------------------------------------------


class Shared:
    """The plain form of what many tasks of one block share, made once: 10,000
    threads of one process in one group have one memcg, one stack, one cmdline
    (the readers hand out the same objects), and a block made each again took a
    third of its time. By identity, with the object kept so its id stays its own."""

    def __init__(self) -> None:
        self._made: dict[tuple[int, Callable[[Any], Any]], tuple[object, Any]] = {}
        # detail_fields' dicts, by what they are made of: (the objects keyed by id, the dict)
        self._details: dict[tuple[Any, ...], tuple[tuple[object, ...], dict[str, Any]]] = {}
        self._gfp: dict[int | None, str | None] = {}

    def gfp(self, mask: int | None) -> str | None:
        """gfp_text(mask), one string for every task asking with the same mask."""
        text = self._gfp.get(mask)
        if text is None and mask is not None:
            text = self._gfp[mask] = gfp_text(mask)
        return text

    def get(self, obj: T, make: Callable[[T], R]) -> R:
        """make(obj), made once for this very object (None, the same for every field, by each make apart)."""
        key = (id(obj), make)
        hit = self._made.get(key)
        if hit is None or hit[0] is not obj:
            hit = self._made[key] = (obj, make(obj))
        return cast(R, hit[1])

    def detail(self, detail: TaskDetail) -> dict[str, Any]:
        """detail_fields(detail), one dict for every task whose detail says the
        same: 10,000 threads of one process stuck in one place differ in none of
        it, and it is most of each task's record (read it, do not change it)."""
        task = detail.task
        held = (detail.stack, detail.recent_stack, detail.memcg, detail.pod)
        key = (detail.cgroup, detail.state, task.uid if task else None, task.cmdline if task else None,
               detail.dying, detail.exiting, tuple(detail.gfp_no_fs_io), tuple(detail.behind),
               tuple(detail.beside), *map(id, held))
        hit = self._details.get(key)
        if hit is not None:
            was = hit[0]
            if was[0] is held[0] and was[1] is held[1] and was[2] is held[2] and was[3] is held[3]:
                return hit[1]
        made = detail_fields(detail, self)
        self._details[key] = (held, made)
        return made


# A stalled task's keys, in the order its JSON writes them: its own, then what its
# detail says (detail_fields: shared between tasks), then its wait's site detail.
TASK_OWN_KEYS = ("kind", "tid", "pid", "comm", "site", "duration_s", "wait_s", "start_known", "level", "new",
                 "gfp", "gfp_flags", "order", "other_waits")
_OWN_AT = {k: i for i, k in enumerate(TASK_OWN_KEYS)}  # read only (a dict: its get is the fastest)


class TaskRow(Mapping[str, Any]):
    """A stalled task's record, read as the dict it stands for (`as_dict()` makes
    that dict, and JSON encoders make it through `plain`). 10,000 listed tasks
    were 10,000 dicts of 30 keys, 840 bytes each before their values, made in the
    scan loop and held until the block was written; a row is a tuple of its own
    14 values and two dicts it shares with the other tasks of its block (read
    them, do not change them)."""

    __slots__ = ("_detail", "_own", "_site")

    def __init__(self, own: tuple[Any, ...], detail: Mapping[str, Any], site: Mapping[str, Any]) -> None:
        self._own = own  # in TASK_OWN_KEYS order
        self._detail = detail
        self._site = site

    def __getitem__(self, key: str) -> Any:
        i = _OWN_AT.get(key)
        if i is not None:
            return self._own[i]
        d = self._detail
        return d[key] if key in d else self._site[key]

    def get(self, key: str, default: Any = None) -> Any:  # the renderers' and advice's way in: no try
        i = _OWN_AT.get(key)
        if i is not None:
            return self._own[i]
        d = self._detail
        return d[key] if key in d else self._site.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in _OWN_AT or key in self._detail or key in self._site

    def __iter__(self) -> Iterator[str]:
        yield from TASK_OWN_KEYS
        yield from self._detail
        yield from self._site

    def __len__(self) -> int:
        return len(TASK_OWN_KEYS) + len(self._detail) + len(self._site)

    @property
    def facts_key(self) -> tuple[int, int, str, int]:
        """Rows with the same key say the same for every advice rule (core/advice.py):
        all but who the task is and how long it has waited. By identity: what the
        block's tasks share is one object (Shared), and the block holds it."""
        return id(self._detail), id(self._site), self._own[4], id(self._own[13])

    def parts(self) -> tuple[tuple[Any, ...], Mapping[str, Any], Mapping[str, Any]]:
        """Its own values (in TASK_OWN_KEYS order), and the two dicts it shares, in its keys' order."""
        return self._own, self._detail, self._site

    def as_dict(self) -> dict[str, Any]:
        d = dict(zip(TASK_OWN_KEYS, self._own, strict=True))
        d.update(self._detail)
        d.update(self._site)
        return d

    def __repr__(self) -> str:
        return f"TaskRow({self.as_dict()!r})"


def plain_record(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """A record with its tasks as plain dicts (a stall block's are TaskRows): JSON as it is."""
    tasks = d.get("tasks")
    if not tasks or not any(isinstance(t, TaskRow) for t in tasks):
        return d
    return {**d, "tasks": [t.as_dict() if isinstance(t, TaskRow) else t for t in tasks]}


def plain(obj: object) -> dict[str, Any]:
    """A JSON encoder's `default`: a TaskRow as its dict (anything else is not JSON)."""
    if isinstance(obj, TaskRow):
        return obj.as_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")  # json's own words


# the site detail of a wait the kernel says nothing more of: one for every such task (read only)
_NO_SITE_DETAIL: Mapping[str, Any] = {"reclaimed_so_far_pages": None, "dirty_pause": None, "writeback": None}


def _task_row(group: list[Stall], detail: TaskDetail, shared: Shared | None = None,
              duration_s: float | None = None) -> TaskRow:
    """`duration_s`: seconds(group[0].duration_ns), where the caller has it already."""
    s = group[0]
    w = s.wait
    made = shared if shared is not None else Shared()
    if duration_s is None:
        duration_s = seconds(s.duration_ns)
    own = (
        "stall", w.tid, w.pid, made.get(w.comm, escape), w.site.label, duration_s,
        duration_s if s.wait_ns is None else seconds(s.wait_ns),
        w.start_known, s.level, s.first, made.gfp(w.gfp), detail.gfp_flags, w.order,
        # () when none, as JSON the same []: not an empty list in each of 10,000 records
        [{"site": o.wait.site.label, "duration_s": seconds(o.duration_ns)} for o in group[1:]]
        if len(group) > 1 else (),
    )
    quiet = w.reclaimed_pages is None and w.dirty_pause is None and w.writeback is None
    return TaskRow(own, made.detail(detail), _NO_SITE_DETAIL if quiet else site_detail(w, detail.writeback_device))


def site_detail(w: Wait | None, device: DeviceState | None = None) -> dict[str, Any]:
    """What the kernel says of a wait still in flight, where it says anything (else null)."""
    pause = w.dirty_pause if w is not None else None
    return {
        "reclaimed_so_far_pages": w.reclaimed_pages if w is not None else None,
        "dirty_pause": dataclasses.asdict(pause) if pause is not None else None,
        "writeback": writeback_dict(w, device),
    }


def writeback_dict(w: Wait | None, device: DeviceState | None) -> dict[str, Any] | None:
    """The device a writeback wait (or reclaim in one) waits on, as the kernel named
    it, and how its writes go (null where not read: a view without a block's reads)."""
    note = w.writeback if w is not None else None
    if note is None:
        return None
    d = device if device is not None and device.bdi == note.bdi else None
    rate = d.written_bytes_per_s if d is not None else None
    return {
        "bdi": escape(note.bdi),
        "ino": note.ino,
        "device": escape(d.device) if d is not None and d.device is not None else None,
        "written_bytes_per_s": round(rate) if rate is not None else None,
        "writes_in_flight": d.writes_in_flight if d is not None else None,
        "reads_in_flight": d.reads_in_flight if d is not None else None,
        "written_over_s": round(d.written_over_s, 1) if d is not None and d.written_over_s is not None else None,
        "write_limit_bytes_per_s": d.write_limit_bytes_per_s if d is not None else None,
    }


def _frames(stack: Sequence[str] | None) -> list[str]:
    return [escape(f) for f in stack] if stack else []


def detail_fields(detail: TaskDetail, shared: Shared | None = None) -> dict[str, Any]:
    """What was read about a task when it was reported, as every task entry
    carries it; `shared`: the block's plain forms of what tasks share (the dicts
    and lists made are then shared between tasks: read them, do not change them)."""
    made = shared if shared is not None else Shared()
    cmdline = detail.task.cmdline if detail.task else None
    return {
        "cgroup": made.get(detail.cgroup, escape) if detail.cgroup is not None else None,
        "state": detail.state,
        "stack": made.get(detail.stack, _frames),
        "recent_stack": made.get(detail.recent_stack, _frames),
        "uid": detail.task.uid if detail.task else None,
        "cmdline": made.get(cmdline, escape) if cmdline else None,
        "dying": detail.dying,
        "exiting": detail.exiting,
        "memcg": made.get(detail.memcg, _memcg_dict),
        "gfp_no_fs_io": list(detail.gfp_no_fs_io),
        "pod": made.get(detail.pod, pod_dict),
        "behind": [_thread_dict(b) for b in detail.behind],
        "beside": [_thread_dict(b) for b in detail.beside],
    }


def _thread_dict(b: Behind) -> dict[str, Any]:
    return {"tid": b.tid, "pid": b.pid, "name": escape(b.name), "site": b.site, "waited_s": round(b.waited_s, 3)}


def pod_dict(p: PodRef | None) -> dict[str, Any] | None:
    """A task's pod: namespace and name only when the pods log dir names its UID."""
    if p is None:
        return None
    return {
        "namespace": escape(p.namespace) if p.namespace is not None else None,
        "name": escape(p.name) if p.name is not None else None,
        "uid": p.uid,
        "qos": p.qos,
        "container_id": p.container_id,
        "runtime": p.runtime,
    }


def shrinkers_list(
    counts: Sequence[ShrinkCount], symbols: Mapping[int, str], gfp_names: Mapping[int, tuple[str, bool]],
) -> list[dict[str, Any]]:
    """The shrinkers of a window, by the name of their scan function, with the
    mask of their last call decoded and whether it forbids the file system."""
    out = []
    for c in counts:
        flags, no_fs = gfp_names.get(c.gfp, (None, None))
        out.append({"shrinker": escape(symbols.get(c.fn) or f"{c.fn:#x}"), "calls": c.calls, "asked": c.asked,
                    "freed": c.freed, "objects": c.objects, "gfp": gfp_text(c.gfp), "gfp_flags": flags,
                    "no_fs_io": no_fs})
    return out


def finding_dict(
    f: Finding, detail: TaskDetail, throttle_names: Mapping[int, str], symbols: Mapping[int, str] | None = None,
    shared: Shared | None = None,
) -> dict[str, Any]:
    """A throttled, livelock or stuck-victim task, in the same shape as a stalled one plus its evidence."""
    d: dict[str, Any] = {
        "kind": f.kind,
        "tid": f.tid,
        "pid": f.pid,
        "comm": escape(f.comm),
        "site": f.site.label,
        "duration_s": round(f.duration_s, 3),
        "start_known": True,
        "level": f.level,
        "new": f.first,
        "gfp": gfp_text(f.gfp),
        "gfp_flags": detail.gfp_flags,
        "order": f.waiting.order if f.waiting is not None else None,
        "other_waits": [],
        **detail_fields(detail, shared),
        "waiting_site": f.waiting.site.label if f.waiting is not None else None,
        **site_detail(f.waiting, detail.writeback_device),
        "window": {
            "share": round(f.share, 3),
            "sites": {s: {"count": w.count, "total_s": w.total_s} for s, w in f.per_site.items()},
            "reclaim_passes_per_s": round(f.passes_per_s, 1),
            "reclaimed_pages": f.reclaimed_pages,
            "throttle_reasons": {throttle_names.get(b, f"bit{b}"): n for b, n in sorted(f.throttle_reasons.items())},
            "gfp_waits": {gfp_text(m): n for m, n in sorted(f.gfp_waits.items(), key=lambda kv: -kv[1])},
            "shrinkers": shrinkers_list(f.shrinkers, symbols or {}, detail.shrink_gfp),
        },
    }
    if f.kind == STUCK_VICTIM:
        d["state"] = detail.state or f.victim_state
        d["reaped"] = f.reaped
        d["waiting_in_cgroup"] = {
            "count": detail.cgroup_waiting_count,
            "blocked": detail.cgroup_blocked_count,
            "tasks": [{"tid": c.tid, "pid": c.pid, "comm": escape(c.comm), "site": c.site,
                       "waited_s": None if c.waited_s is None else round(c.waited_s, 3), "share": round(c.share, 3),
                       "blocked_in": None if c.blocked_in is None else escape(c.blocked_in)}
                      for c in detail.cgroup_waiting],
        }
    return d


def _memcg_dict(m: MemcgInfo | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "version": m.version,
        "path": escape(m.path),
        "usage_bytes": m.usage_bytes,
        "limit_bytes": m.limit_bytes,
        "high_bytes": m.high_bytes,
        "near_limit": m.usage_near_limit,
        "oom_kill_disable": m.oom_kill_disable,
        "under_oom": m.under_oom,
        "failcnt": m.failcnt,
        "events": dict(m.events),
        "pressure_some_avg10_pct": m.pressure.some.avg10_pct if m.pressure else None,
    }


def context_dict(c: BlockContext | None) -> dict[str, Any] | None:
    if c is None:
        return None
    mem = c.memory
    return {
        "stalling": c.stalling,
        "dying": c.dying,
        "exiting": c.exiting,
        "victims": [{"pid": v.pid, "comm": escape(v.comm) if v.comm else None, "for_s": round(v.for_s, 1)}
                    for v in c.victims],
        "oom_kills": c.oom_kills,
        "meminfo_bytes": dict(mem.meminfo_bytes) if mem else {},
        "zones": [
            {"node": z.node, "zone": z.zone, "free_pages": z.free_pages, "min_pages": z.min_pages,
             "low_pages": z.low_pages, "high_pages": z.high_pages, "under_watermark": z.under_watermark}
            for z in (mem.zones if mem else ())
        ],
        "psi": {
            "some_avg10_pct": mem.pressure.some.avg10_pct,
            "full_avg10_pct": mem.pressure.full.avg10_pct if mem.pressure.full else None,
            **{f"{k}_since_last_s": round(v, 3) for k, v in c.psi_delta_s.items()},
        } if mem and mem.pressure else None,
        "vmstat_delta": dict(c.vmstat_delta),
        "kswapd": [{"node": k.node, "pid": k.pid, "state": k.state,
                    "state_for_s": round(c.kswapd_state_for_s[k.pid], 1) if k.pid in c.kswapd_state_for_s else None,
                    "not_run_for_s": (round(c.kswapd_not_run_for_s[k.pid], 1) if k.pid in c.kswapd_not_run_for_s
                                      else None),
                    "stack": [escape(f) for f in k.stack] if k.stack else []} for k in c.kswapd],
        "slab_caches": [{"name": escape(s.name), "bytes": s.bytes, "objects": s.objects,
                         "active_objects": s.active_objects} for s in c.slab_caches],
    }


def listing(stalls: Sequence[Stall], findings: Sequence[Finding]) -> list[tuple[float, list[Stall] | Finding]]:
    """A block's tasks in the order it lists them, with the duration it shows:
    stalled tasks (each with its waits) and findings, longest first."""
    items: list[tuple[float, list[Stall] | Finding]] = [(seconds(g[0].duration_ns), g) for g in by_task(stalls)]
    items += [(round(f.duration_s, 3), f) for f in findings]
    items.sort(key=lambda it: -it[0])
    return items


def item_tid(x: list[Stall] | Finding) -> int:
    return x[0].wait.tid if isinstance(x, list) else x.tid


def _item_dict(duration_s: float, x: list[Stall] | Finding, rec: StallReport, shared: Shared) -> Mapping[str, Any]:
    detail = rec.details.get(item_tid(x)) or NO_DETAIL
    if isinstance(x, list):
        return _task_row(x, detail, shared, duration_s)
    return finding_dict(x, detail, rec.throttle_names, rec.symbols, shared)


def _item_brief(duration_s: float, x: list[Stall] | Finding, rec: StallReport) -> dict[str, Any]:
    """What the summary of tasks past the block's limit needs of one."""
    cgroup = (rec.details.get(item_tid(x)) or NO_DETAIL).cgroup
    site = x[0].wait.site if isinstance(x, list) else x.site
    return {"site": site.label, "cgroup": escape(cgroup) if cgroup is not None else None, "duration_s": duration_s}


def summarize_tasks(tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Tasks past a block's limit, counted by site and cgroup, most first."""
    acc: dict[tuple[str, str | None], list[float]] = {}
    for t in tasks:
        acc.setdefault((t["site"], t["cgroup"]), []).append(t["duration_s"])
    rows = [{"site": s, "cgroup": c, "tasks": len(d), "longest_s": max(d)} for (s, c), d in acc.items()]
    return sorted(rows, key=lambda r: (-r["tasks"], -r["longest_s"]))


def to_dict(rec: Record) -> dict[str, Any]:
    """The one plain form of a record: JSON lines, text, journald and the socket use it.
    A stall block's stalled tasks are TaskRows, read as dicts (JSON through `plain`,
    or `plain_record` for the record whole)."""
    base: dict[str, Any] = {"seq": rec.seq, "time": iso_time(rec.time)}
    if isinstance(rec, StallReport):
        items = listing(rec.stalls, rec.findings)
        shared = Shared()
        shown = [_item_dict(d, x, rec, shared) for d, x in items[: rec.max_tasks]]
        rest = [_item_brief(d, x, rec) for d, x in items[rec.max_tasks :]]
        d = {
            "type": "stall_report", **base, "stalled": rec.stalled_now, "due": len(items),
            "held_back": rec.held_back, "context": context_dict(rec.context),
            "tasks": shown, "more": summarize_tasks(rest),
        }
        d["advice"] = advise(d)  # from the facts above only (core/advice.py)
        return d
    if isinstance(rec, EpisodeEndReport) and isinstance(rec.end, TaskEpisodeEnd):
        t = rec.end
        return {
            "type": "recovered", **base, "kind": t.kind, "tid": t.tid, "pid": t.pid, "comm": escape(t.comm),
            "site": t.site.label, "duration_s": t.duration_s, "exact": t.exact, "start_known": t.start_known,
            "ended": t.ended, "reports": t.reports, "reclaimed_pages": t.reclaimed_pages,
            "compaction_status": t.compaction_status,
        }
    if isinstance(rec, EpisodeEndReport):
        e = rec.end
        return {
            "type": "recovered", **base, "kind": e.kind, "tid": e.tid, "pid": e.pid, "comm": escape(e.comm),
            "site": e.site.label, "duration_s": round(e.duration_s, 3), "exact": True, "start_known": True,
            "ended": "exited" if e.kind == STUCK_VICTIM else "woke", "reports": e.reports, "reclaimed_pages": None,
            "compaction_status": None,
        }
    if isinstance(rec, OomKillReport):
        return oom_kill_dict(rec, base)
    if isinstance(rec, LimitsReport):
        return {"type": "limits_reached", **base, "grown": dict(rec.grown), "totals": dict(rec.totals)}
    return {
        "type": "summary",
        **base,
        "waits_completed": {
            site: {"count": s.count, "total_s": round(s.total_s, 6), "buckets": dict(s.buckets)}
            for site, s in rec.completed.items()
        },
        "oom_kills": rec.oom_kills,
        "stats": dict(rec.stats),
        "open_episodes": [{"kind": e.kind, "tid": e.tid, "pid": e.pid, "comm": escape(e.comm), "site": e.site.label,
                           "duration_s": e.duration_s, "reports": e.reports, "quiet": e.quiet}
                          for e in rec.open_episodes],
        "open_episodes_count": rec.open_episodes_count,
    }




def limit_line(counter: str, grown: int, total: int) -> str:
    what = LIMIT_TEXT.get(counter, counter + ": {n}").format(n=grown)
    return f"{what}; {total} since start"


# A folded report lists this many of its kills one by one (count has them all).
OOM_VICTIMS_LISTED = 20
OOM_COMMS_LISTED = 10


def _victim_dict(k: KillSeen) -> dict[str, Any]:
    v = k.kill.victim
    return {
        "pid": k.kill.victim_pid,
        "comm": escape(k.kill.victim_comm) if k.kill.victim_comm else None,
        "anon_rss_kb": v.anon_rss_kb if v else None,
        "invoker_pid": k.kill.invoker_pid,
        "invoker_tid": k.kill.invoker_tid,
        "invoker_comm": escape(k.kill.invoker_comm),
        "invoker_cgroup": escape(k.invoker_cgroup) if k.invoker_cgroup is not None else None,
        "constraint": k.constraint,
        "gfp_flags": k.gfp_flags,
        "order": k.order,
    }


def _comms(comms: Iterable[str | None]) -> dict[str, int]:
    """Kills per comm, the most frequent OOM_COMMS_LISTED ("?" for a comm not known)."""
    counts = Counter(escape(c) if c else "?" for c in comms)
    return dict(counts.most_common(OOM_COMMS_LISTED))


def oom_kill_dict(rec: OomKillReport, base: dict[str, Any]) -> dict[str, Any]:
    """One report of `count` kills in one cgroup; the victim_* and invoker_*
    fields are the largest victim's (by anon-rss), the one a single kill has."""
    top = largest(rec.kills)
    k, v = top.kill, top.kill.victim
    per = constraints(rec.kills)
    return {
        "type": "oom_kill",
        **base,
        "count": len(rec.kills),
        "interval_s": round(rec.interval_s, 3),
        "cgroup": escape(top.victim_cgroup) if top.victim_cgroup is not None else None,
        "constraint": next(iter(per)) if len(per) == 1 else "mixed",
        "constraints": per,
        "constraint_source": "kernel" if all(x.from_kernel for x in rec.kills) else "inferred",
        "oom_cgroup": escape(top.oom_cgroup) if top.oom_cgroup is not None else None,
        "gfp": top.kill.gfp,
        "gfp_flags": top.gfp_flags,
        "order": top.order,
        "victim_pid": k.victim_pid,
        "victim_comm": escape(k.victim_comm) if k.victim_comm else None,
        "invoker_pid": k.invoker_pid,
        "invoker_tid": k.invoker_tid,
        "invoker_comm": escape(k.invoker_comm),
        "victim_cgroup": escape(top.victim_cgroup) if top.victim_cgroup is not None else None,
        "invoker_cgroup": escape(top.invoker_cgroup) if top.invoker_cgroup is not None else None,
        "victim_anon_rss_kb": v.anon_rss_kb if v else None,
        "victim_file_rss_kb": v.file_rss_kb if v else None,
        "victim_shmem_rss_kb": v.shmem_rss_kb if v else None,
        "victim_uid": v.uid if v else None,
        "victim_oom_score_adj": v.oom_score_adj if v else None,
        "victim_comms": _comms(k.kill.victim_comm for k in rec.kills),
        "invoker_comms": _comms(k.kill.invoker_comm for k in rec.kills),
        "victims": [_victim_dict(x) for x in rec.kills[:OOM_VICTIMS_LISTED]],
        "victims_left_out": max(0, len(rec.kills) - OOM_VICTIMS_LISTED),
        "memory_at_kill": dict(rec.memory) if rec.memory is not None else None,
    }
