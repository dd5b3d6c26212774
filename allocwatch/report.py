"""Report records and their text and JSON renderings (pure).

A scan's output is built here as a list of records; the daemon renders them
all and hands the whole text to a sink in one write, so two blocks never
interleave. Strings a task controls (comm) are escaped before they are shown.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocwatch.tracker import NS_PER_S, Recovered, Stall
from allocwatch.wire import OomKill


@dataclass(frozen=True)
class TaskDetail:
    """What the daemon read about a task when it was reported."""

    cgroup: str | None = None
    state: str | None = None
    stack: Sequence[str] | None = None


@dataclass(frozen=True)
class StallReport:
    seq: int
    time: float  # wall clock, seconds since the epoch
    stalls: Sequence[Stall]
    stalled_now: int
    details: Mapping[int, TaskDetail] = field(default_factory=dict)  # by tid


@dataclass(frozen=True)
class RecoveredReport:
    seq: int
    time: float
    recovered: Recovered


@dataclass(frozen=True)
class OomKillReport:
    seq: int
    time: float
    kill: OomKill


Record = StallReport | RecoveredReport | OomKillReport


def escape(text: str) -> str:
    """Printable ASCII stays; anything else (newlines, ESC, bytes) becomes \\xNN."""
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


# -- text -------------------------------------------------------------------


def _task_line(group: list[Stall], detail: TaskDetail) -> list[str]:
    s = group[0]
    w = s.wait
    parts = [
        f"  {escape(w.comm)} pid={w.pid} tid={w.tid} site={w.site.label}",
        f"waited{'=' if w.start_known else '>='}{seconds(s.duration_ns):.1f}s",
        f"gfp={gfp_text(w.gfp) or '-'} order={'-' if w.order is None else w.order}",
        f"cgroup={escape(detail.cgroup) if detail.cgroup else '-'} state={detail.state or '-'}",
    ]
    if s.first:
        parts.append("(new)")
    if not w.start_known:
        parts.append("(asleep before allocwatch started)")
    lines = [" ".join(parts)]
    for other in group[1:]:
        lines.append(f"    also waiting: site={other.wait.site.label} for {seconds(other.duration_ns):.1f}s")
    if detail.stack:
        lines.append("    stack: " + " <- ".join(escape(f) for f in detail.stack[:12]))
    return lines


def render_text(rec: Record) -> str:
    stamp = iso_time(rec.time)
    if isinstance(rec, StallReport):
        groups = by_task(rec.stalls)
        new = sum(1 for g in groups if any(s.first for s in g))
        longest = seconds(max(s.duration_ns for s in rec.stalls))
        lines = [
            f"{stamp} allocwatch: stall report #{rec.seq}: {len(groups)} task(s) due "
            f"({new} new), {rec.stalled_now} wait(s) over threshold, longest {longest:.1f}s"
        ]
        for g in groups:
            lines += _task_line(g, rec.details.get(g[0].wait.tid, TaskDetail()))
        return "\n".join(lines) + "\n"
    if isinstance(rec, RecoveredReport):
        r = rec.recovered
        w = r.wait
        how = "" if r.exact else " or less (end not seen)"
        if not w.start_known:
            how += " or more (asleep before allocwatch started)"
        return (
            f"{stamp} allocwatch: recovered #{rec.seq}: {escape(w.comm)} pid={w.pid} tid={w.tid} "
            f"site={w.site.label} waited {seconds(r.duration_ns):.1f}s{how}, reported {r.reports} time(s)\n"
        )
    k = rec.kill
    victim = escape(k.victim_comm) if k.victim_comm else "?"
    return (
        f"{stamp} allocwatch: oom kill #{rec.seq}: victim pid={k.victim_pid} comm={victim}, "
        f"invoked by {escape(k.invoker_comm)} pid={k.invoker_pid} tid={k.invoker_tid}\n"
    )


# -- JSON -------------------------------------------------------------------


def _task_json(group: list[Stall], detail: TaskDetail) -> dict[str, Any]:
    s = group[0]
    w = s.wait
    return {
        "tid": w.tid,
        "pid": w.pid,
        "comm": w.comm,
        "site": w.site.label,
        "duration_s": seconds(s.duration_ns),
        "start_known": w.start_known,
        "level": s.level,
        "new": s.first,
        "gfp": gfp_text(w.gfp),
        "order": w.order,
        "cgroup": detail.cgroup,
        "state": detail.state,
        "stack": list(detail.stack) if detail.stack else [],
        "other_waits": [{"site": o.wait.site.label, "duration_s": seconds(o.duration_ns)} for o in group[1:]],
    }


def to_json(rec: Record) -> dict[str, Any]:
    base: dict[str, Any] = {"seq": rec.seq, "time": iso_time(rec.time)}
    if isinstance(rec, StallReport):
        groups = by_task(rec.stalls)
        tasks = [_task_json(g, rec.details.get(g[0].wait.tid, TaskDetail())) for g in groups]
        return {"type": "stall_report", **base, "stalled": rec.stalled_now, "tasks": tasks}
    if isinstance(rec, RecoveredReport):
        r = rec.recovered
        w = r.wait
        return {
            "type": "recovered",
            **base,
            "tid": w.tid,
            "pid": w.pid,
            "comm": w.comm,
            "site": w.site.label,
            "duration_s": seconds(r.duration_ns),
            "exact": r.exact,
            "start_known": w.start_known,
            "reports": r.reports,
        }
    k = rec.kill
    return {
        "type": "oom_kill",
        **base,
        "victim_pid": k.victim_pid,
        "victim_comm": k.victim_comm,
        "invoker_pid": k.invoker_pid,
        "invoker_tid": k.invoker_tid,
        "invoker_comm": k.invoker_comm,
    }


def render_json(rec: Record) -> str:
    # ensure_ascii escapes every control character a comm may hold.
    return json.dumps(to_json(rec), ensure_ascii=True, separators=(",", ":")) + "\n"


def render(records: Sequence[Record], fmt: str) -> str:
    one = render_json if fmt == "json" else render_text
    return "".join(one(r) for r in records)


# -- end-of-run summary -----------------------------------------------------


@dataclass(frozen=True)
class SiteSummary:
    count: int
    total_s: float
    buckets: Mapping[str, int]  # "le" upper bound in seconds -> waits in that slot


def render_summary(
    time_s: float, fmt: str, completed: Mapping[str, SiteSummary], stats: Mapping[str, int], oom_kills: int
) -> str:
    if fmt == "json":
        doc = {
            "type": "summary",
            "time": iso_time(time_s),
            "waits_completed": {
                site: {"count": s.count, "total_s": round(s.total_s, 6), "buckets": dict(s.buckets)}
                for site, s in completed.items()
            },
            "oom_kills": oom_kills,
            "stats": dict(stats),
        }
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")) + "\n"
    lines = [f"{iso_time(time_s)} allocwatch: summary: {oom_kills} oom kill(s); completed waits per site:"]
    for site, s in sorted(completed.items()):
        lines.append(f"  {site}: {s.count} wait(s), {s.total_s:.3f}s in all")
    lines.append("  counters: " + " ".join(f"{k}={v}" for k, v in stats.items()))
    return "\n".join(lines) + "\n"
