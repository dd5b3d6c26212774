# SPDX-License-Identifier: Apache-2.0
"""The model of `allocwatch top` (pure): rows, grouping, sorting, filtering,
severity, and per-site rates, from snapshot dicts (core/snapview.py).

Nothing here reads a clock, a terminal or a socket: every function takes the
snapshot dicts (the latest and the one before) and returns values, so tests
build them by hand. top/view.py turns them into lines; top/screen.py paints.
A row's text (comm, cgroup, site, kind, state, gfp) is terminal text
(top/safetext.py) whatever the snapshot held, so columns keep their widths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from allocwatch.top.safetext import optional_text, terminal_text

SORTS = ("wait", "share", "pid", "site", "cgroup")  # `s` cycles through them
GROUP_MIN = 3  # tasks of one program at one site in one cgroup before they share a row
EPISODE_KINDS = ("throttled", "livelock", "stuck_victim")
DEFAULT_THRESHOLD_S = 10.0

OK, WARN, STALLED = "ok", "warn", "stalled"


@dataclass(frozen=True)
class Row:
    tid: int
    pid: int
    comm: str  # escaped as in reports
    cgroup: str | None
    site: str
    wait_s: float
    share: float | None  # of the last window spent waiting
    kind: str  # wait (under its threshold), stall, throttled, livelock, stuck_victim
    state: str | None
    gfp: str | None
    level: int
    start_known: bool
    severity: str
    other_waits: int = 0  # further waits in flight of the same task
    tids: tuple[int, ...] = ()  # a group row: every task in it, longest first
    detail: Mapping[str, Any] = field(default_factory=dict)  # the task's entry in the snapshot

    @property
    def key(self) -> tuple[Any, ...]:
        """What stays the same across refreshes: the selection follows it."""
        if self.tids:
            return ("group", self.pid, self.comm, self.site, self.cgroup, self.kind)
        return ("task", self.tid)


@dataclass(frozen=True)
class SiteRow:
    site: str
    waits_per_s: float | None  # completed in the last interval; None without an earlier snapshot
    p50_s: float | None  # upper bound of the bucket holding the median of those waits
    p99_s: float | None
    in_flight: int
    stalled: int
    seconds_per_s: float | None  # seconds lost there per second: the share of one CPU's time


def threshold_for(doc: Mapping[str, Any], site: str) -> float:
    th = doc.get("thresholds_s") or {}
    return float(th.get(site, th.get("*", DEFAULT_THRESHOLD_S)))


def severity(kind: str, level: int, wait_s: float, threshold_s: float) -> str:
    """stalled: over its threshold, or an episode; warn: past half of it; ok otherwise."""
    if level >= 1 or kind in EPISODE_KINDS or wait_s >= threshold_s:
        return STALLED
    return WARN if wait_s >= threshold_s / 2 else OK


def task_rows(doc: Mapping[str, Any]) -> list[Row]:
    """One row per task waiting now (its longest wait), and one per episode in progress."""
    rows: dict[int, Row] = {}
    for t in sorted(doc.get("inflight", ()), key=lambda t: -t["duration_s"]):
        if t["tid"] in rows:
            rows[t["tid"]] = replace(rows[t["tid"]], other_waits=rows[t["tid"]].other_waits + 1)
            continue
        rows[t["tid"]] = Row(
            tid=t["tid"], pid=t["pid"], comm=terminal_text(t["comm"]), cgroup=optional_text(t.get("cgroup")),
            site=terminal_text(t["site"]), wait_s=t["duration_s"], share=t.get("share"),
            kind=terminal_text(t["kind"]), state=optional_text(t.get("state")), gfp=optional_text(t.get("gfp")),
            level=t["level"], start_known=t["start_known"],
            severity=severity(t["kind"], t["level"], t["duration_s"], threshold_for(doc, t["site"])), detail=t,
        )
    for e in doc.get("episodes", ()):
        known = rows.get(e["tid"])
        share = (e.get("window") or {}).get("share")
        if known is not None:  # waiting now and throttled too: the row says the episode
            rows[e["tid"]] = replace(known, kind=terminal_text(e["kind"]), severity=STALLED, share=share,
                                     detail={**e, **known.detail})
            continue
        rows[e["tid"]] = Row(
            tid=e["tid"], pid=e["pid"], comm=terminal_text(e["comm"]), cgroup=optional_text(e.get("cgroup")),
            site=terminal_text(e["site"]), wait_s=e["duration_s"], share=share, kind=terminal_text(e["kind"]),
            state=optional_text(e.get("state")), gfp=optional_text(e.get("gfp")),
            level=e["level"], start_known=True, severity=STALLED, detail=e,
        )
    return list(rows.values())


def matches(row: Row, text: str) -> bool:
    """The `f` filter: a substring of the site or of the memory cgroup path."""
    return not text or text in row.site or (row.cgroup is not None and text in row.cgroup)


def sort_rows(rows: Sequence[Row], by: str) -> list[Row]:
    longest = sorted(rows, key=lambda r: -r.wait_s)  # ties within every other order: longest first
    if by == "share":
        return sorted(longest, key=lambda r: -(r.share if r.share is not None else -1.0))
    if by == "pid":
        return sorted(longest, key=lambda r: (r.pid, r.tid))
    if by == "site":
        return sorted(longest, key=lambda r: r.site)
    if by == "cgroup":
        return sorted(longest, key=lambda r: r.cgroup or "")
    return longest


def _group_key(r: Row, threads: Mapping[int, int], min_size: int) -> tuple[Any, ...]:
    """Threads of one process (whatever each is named), else tasks of one comm in one cgroup."""
    if threads[r.pid] >= min_size:
        return ("pid", r.pid, r.site, r.kind)
    return ("comm", r.comm, r.site, r.cgroup, r.kind)


def group_rows(rows: Sequence[Row], min_size: int = GROUP_MIN) -> list[Row]:
    """Many tasks of one program at one site, of one kind: one row, at the place of its
    longest; fewer than `min_size` keep rows of their own. A program is a process when
    that many of its threads wait there, else a comm within one cgroup."""
    threads: dict[int, int] = {}
    for r in rows:
        threads[r.pid] = threads.get(r.pid, 0) + 1
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        groups.setdefault(_group_key(r, threads, min_size), []).append(r)
    out: list[Row] = []
    done: set[tuple[Any, ...]] = set()
    for r in rows:
        k = _group_key(r, threads, min_size)
        members = groups[k]
        if len(members) < min_size:
            out.append(r)
        elif k not in done:
            done.add(k)
            out.append(_group(members))
    return out


def _same(values: Sequence[Any]) -> Any:
    return values[0] if all(v == values[0] for v in values) else None


def _group(members: Sequence[Row]) -> Row:
    by_wait = sorted(members, key=lambda r: -r.wait_s)
    first = by_wait[0]
    shares = [r.share for r in members if r.share is not None]
    worst = max(members, key=lambda r: (r.severity == STALLED, r.severity == WARN)).severity
    return replace(
        first, pid=_same([r.pid for r in members]) or 0, state=_same([r.state for r in members]),
        gfp=_same([r.gfp for r in members]), share=max(shares) if shares else None, severity=worst,
        tids=tuple(r.tid for r in by_wait), other_waits=sum(r.other_waits for r in members),
    )


def visible_rows(doc: Mapping[str, Any], sort: str = "wait", text: str = "", grouped: bool = True) -> list[Row]:
    rows = sort_rows([r for r in task_rows(doc) if matches(r, text)], sort)
    return group_rows(rows) if grouped else rows


# -- per site -----------------------------------------------------------------------


def _counts(h: Mapping[str, Any] | None) -> list[tuple[float, int]]:
    if not h:
        return []
    return [(float("inf") if le == "inf" else float(le), int(n)) for le, n in h["buckets"]]


def quantile_s(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, q: float) -> float | None:
    """The upper bound of the bucket holding quantile q of the waits completed between two
    cumulative histograms; None when none completed."""
    now, old = _counts(after), dict(_counts(before))
    if not now:
        return None
    delta = [(le, n - old.get(le, 0)) for le, n in now]
    total = delta[-1][1]
    if total <= 0:
        return None
    for le, n in delta:
        if n >= q * total:
            return le
    return now[-1][0]


def site_rows(prev: Mapping[str, Any] | None, cur: Mapping[str, Any]) -> list[SiteRow]:
    """Sites with a wait in flight, or with waits or time lost over the last interval; busiest first."""
    dt = cur["time_s"] - prev["time_s"] if prev is not None else 0.0
    out = []
    for site, s in cur.get("sites", {}).items():
        before = (prev or {}).get("sites", {}).get(site) if dt > 0 else None
        rate = lost = p50 = p99 = None
        if dt > 0:
            old = before or {}
            count_now = (s.get("completed") or {}).get("count", 0)
            count_old = (old.get("completed") or {}).get("count", 0)
            rate = max(0, count_now - count_old) / dt
            lost = max(0.0, s["stalled_seconds"] - old.get("stalled_seconds", 0.0)) / dt
            p50 = quantile_s(old.get("completed"), s.get("completed"), 0.5)
            p99 = quantile_s(old.get("completed"), s.get("completed"), 0.99)
        if s["waiting"] or rate or lost:
            out.append(SiteRow(site, rate, p50, p99, s["waiting"], s["stalled"], lost))
    return sorted(out, key=lambda r: (-(r.seconds_per_s or 0.0), -r.in_flight, r.site))
