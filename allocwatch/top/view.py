# SPDX-License-Identifier: Apache-2.0
"""The lines of a top frame (pure): header, sites, tasks, detail, help.

Each line is (text, style), style one of the names top/screen.py maps to
colours or attributes ("title", "ok", "warn", "stalled", "selected", "dim").
A frame fits `width` columns: columns drop by priority until the cgroup has
room. The values use the report's own helpers (sizes, stacks, quoting, the
memcg line), so a task reads the same in top as in a report block.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from allocwatch.core import advice
from allocwatch.outputs.report import (
    behind_lines,
    memcg_line,
    pod_line,
    shrinkers_lines,
    site_detail_text,
    size_text,
    text_value,
    writeback_line,
)
from allocwatch.top.model import Row, SiteRow, site_rows

Line = tuple[str, str]
CGROUP_MIN = 10
KIND_SHOWN = {"stuck_victim": "victim"}


def duration_text(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _bound(s: float | None) -> str:
    if s is None:
        return "-"
    if s == float("inf"):
        return ">67s"
    return f"<={s * 1000:.0f}ms" if s < 1 else f"<={s:.0f}s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.0f}%"


def left_cut(text: str, n: int) -> str:
    """The end of a path is what tells groups apart: cut from the left."""
    if len(text) <= n:
        return text
    return ".." + text[-(n - 2):] if n > 2 else text[:n]


@dataclass(frozen=True)
class Column:
    name: str
    width: int
    priority: int  # dropped first: the highest
    value: Callable[[Row], str]
    right: bool = False


COLUMNS = (
    Column("PID", 7, 0, lambda r: str(r.pid) if r.pid else "*", True),
    Column("TID", 7, 5, lambda r: f"x{len(r.tids)}" if r.tids else str(r.tid), True),
    Column("COMM", 15, 0, lambda r: f"{r.comm[:10]} x{len(r.tids)}" if r.tids else r.comm),
    Column("SITE", 16, 0, lambda r: r.site),
    Column("WAIT", 7, 0, lambda r: ("" if r.start_known else ">") + duration_text(r.wait_s), True),
    Column("SHARE", 5, 2, lambda r: _pct(r.share), True),
    Column("KIND", 9, 1, lambda r: KIND_SHOWN.get(r.kind, r.kind) + ("+" if r.other_waits else "")),
    Column("S", 1, 3, lambda r: r.state or "-"),
    Column("GFP", 8, 6, lambda r: r.gfp or "-"),
)


def layout(width: int) -> tuple[list[Column], int]:
    """The columns that fit with a cgroup of at least CGROUP_MIN, and the cgroup's width."""
    cols = list(COLUMNS)
    while True:
        cgroup = width - sum(c.width + 1 for c in cols)
        droppable = [c for c in cols if c.priority > 0]
        if cgroup >= CGROUP_MIN or not droppable:
            return cols, max(cgroup, 0)
        cols.remove(max(droppable, key=lambda c: c.priority))


def _cell(text: str, c: Column) -> str:
    text = text[: c.width]
    return text.rjust(c.width) if c.right else text.ljust(c.width)


def table_header(width: int) -> str:
    cols, _ = layout(width)
    return (" ".join(c.name.rjust(c.width) if c.right else c.name.ljust(c.width) for c in cols) + " CGROUP")[:width]


def task_line(r: Row, width: int) -> str:
    cols, cg = layout(width)
    cells = [_cell(c.value(r), c) for c in cols]
    return (" ".join(cells) + " " + left_cut(r.cgroup or "-", cg))[:width]


def header_lines(doc: Mapping[str, Any], source: str, age_s: float, width: int) -> list[Line]:
    ctx = doc.get("context") or {}
    psi = ctx.get("psi") or {}
    mem = ctx.get("meminfo_bytes") or {}
    full = psi.get("full_avg10_pct")
    psi_text = (f"psi10 some {psi['some_avg10_pct']:.2f}% full {'-' if full is None else f'{full:.2f}%'}"
                if psi else "psi -")
    cov = doc.get("coverage") or []
    kswapd = " ".join(
        f"kswapd{k['node']} {k['state']}" + (f" {duration_text(k['state_for_s'])}" if k.get("state_for_s") else "")
        for k in ctx.get("kswapd") or ()
    ) or "kswapd -"
    waiting = len({t["tid"] for t in doc.get("inflight", ())})
    stalled = sum(1 for t in doc.get("inflight", ()) if t["level"] >= 1)
    lines = [
        (f"allocwatch top  {source}  scan #{doc['scan']} {age_s:.1f}s old", "title"),
        (f"mem: {psi_text} | avail {size_text(mem.get('MemAvailable'))} free {size_text(mem.get('MemFree'))}"
         f" | oom kills {doc.get('counters', {}).get('oom_kills', 0)}", ""),
        (f"{kswapd}  sites {sum(1 for c in cov if c['attached'])}/{len(cov)} attached"
         f"  tasks {waiting} waiting, {stalled} stalled, {len(doc.get('episodes', ()))} episodes", ""),
    ]
    return [(t[:width], s) for t, s in lines]


SITE_HEADER = f"{'SITE':<22} {'WAITS/S':>8} {'P50':>7} {'P99':>7} {'INFLIGHT':>8} {'LOST/S':>7}"


def site_line(s: SiteRow, width: int) -> str:
    rate = "-" if s.waits_per_s is None else f"{s.waits_per_s:.1f}"
    lost = "-" if s.seconds_per_s is None else f"{s.seconds_per_s:.2f}"
    return f"{s.site:<22} {rate:>8} {_bound(s.p50_s):>7} {_bound(s.p99_s):>7} {s.in_flight:>8} {lost:>7}"[:width]


def site_lines(prev: Mapping[str, Any] | None, doc: Mapping[str, Any], width: int, limit: int | None) -> list[Line]:
    rows = site_rows(prev, doc)
    lines: list[Line] = [(SITE_HEADER[:width], "title")]
    if not rows:
        return [*lines, ("(no waits at any site in the last interval)", "dim")]
    shown = rows if limit is None else rows[:limit]
    lines += [(site_line(s, width), "stalled" if s.stalled else "") for s in shown]
    if len(shown) < len(rows):
        lines.append((f"(+{len(rows) - len(shown)} more site(s))", "dim"))
    return lines


def detail_lines(r: Row, width: int) -> list[Line]:
    """Enter: the selected task (or group): both stacks, gfp decoded, its cgroup's limit and usage."""
    d = r.detail
    who = (f"{len(r.tids)} tasks comm={text_value(r.comm)} tids={','.join(map(str, r.tids[:16]))}"
           + ("..." if len(r.tids) > 16 else "") + " (the longest below)") if r.tids else \
        f"comm={text_value(r.comm)} pid={r.pid} tid={r.tid}"
    flags = f"({d['gfp_flags']})" if d.get("gfp_flags") else ""
    lines: list[Line] = [
        (who, "title"),
        (f"kind={r.kind} site={r.site} waited{'=' if r.start_known else '>='}{duration_text(r.wait_s)} "
         f"level={r.level} state={r.state or '-'} share={_pct(r.share)}", r.severity),
        (f"gfp={d.get('gfp') or '-'}{flags} order={'-' if d.get('order') is None else d['order']}"
         + (f" now: {so_far}" if (so_far := site_detail_text(d)) else ""), ""),
        (f"cgroup={text_value(r.cgroup) if r.cgroup else '-'}", ""),
    ]
    lines += [(p.strip(), "") for p in pod_line(d.get("pod"))]
    if d.get("memcg"):
        lines.append((memcg_line(d["memcg"]).strip(), ""))
    if d.get("uid") is not None or d.get("cmdline"):
        lines.append((f"uid={'-' if d.get('uid') is None else d['uid']} cmdline={text_value(d.get('cmdline') or '-')}",
                      ""))
    w = d.get("window") or {}
    if w:
        lines.append((f"window: share={_pct(w.get('share'))} reclaim={w.get('reclaim_passes_per_s', 0):.0f} passes/s "
                      f"reclaimed={w.get('reclaimed_pages', 0)} pages", ""))
    # the device of a writeback wait, the shrinkers of the window, the threads behind it: as a report says them
    lines += [(x.strip(), "") for x in (*writeback_line(d), *shrinkers_lines(w.get("shrinkers") or []),
                                        *behind_lines(d))]
    if not d.get("detail"):
        lines.append(("(no stacks or memcg figures: only the longest waits carry them)", "dim"))
    lines += [(f"what to do ({a['kind']}): {a['text']}", "") for a in _advice(r)]
    for title, frames in (("kernel stack (/proc)", d.get("stack")), ("stack entering reclaim (BPF)",
                                                                     d.get("recent_stack"))):
        lines.append((f"{title}:" + ("" if frames else " none"), "title"))
        lines += [(f"  {f}"[:width], "") for f in frames or ()]
    lines.append(("Enter, Esc or q: back", "dim"))
    return [(part, s) for t, s in lines for part in _wrap(t, width)]


def _advice(r: Row) -> list[dict[str, str]]:
    """The report's "what to do" lines for this task alone (core/advice.py), from what the
    snapshot says of it; a rule that needs the machine's context (zones) stays silent here."""
    task = {**r.detail, "kind": "stall" if r.kind == "wait" else r.kind, "site": r.site, "comm": r.comm,
            "pid": r.pid, "tid": r.tid, "cgroup": r.cgroup, "state": r.state}
    return advice.advise({"tasks": [task], "context": {}})


def _wrap(text: str, width: int) -> list[str]:
    """Detail lines wrap rather than lose their end (a memcg line, a long cmdline)."""
    if len(text) <= width or width < 8:
        return [text[:width]]
    return textwrap.wrap(text, width, subsequent_indent="    ", break_on_hyphens=False) or [""]


HELP = (
    "allocwatch top: who is stuck in memory now, where, and for how long",
    "",
    "  q        quit (detaches everything it attached)",
    "  s        cycle the sort: wait, share, pid, site, cgroup",
    "  f        filter: a substring of the site or the memory cgroup ('' clears)",
    "  g        group tasks of one program at one site and cgroup (on/off)",
    "  p        pause the picture (data keeps coming)",
    "  Up/Down  select a row; Enter: its detail (stacks, gfp, cgroup limit)",
    "  ?        this help",
    "",
    "Colours: red over the site's threshold (or throttled, livelock, stuck victim),",
    "yellow past half of it. WAIT >: asleep before allocwatch started (a lower bound).",
    "KIND +: more waits of the same task in flight. SHARE: of the last window spent waiting.",
)


def help_lines(width: int) -> list[Line]:
    return [(t[:width], "title" if i == 0 else "") for i, t in enumerate(HELP)]


def frame_lines(
    doc: Mapping[str, Any], prev: Mapping[str, Any] | None, rows: Sequence[Row], source: str, age_s: float,
    width: int, height: int | None = None, selected: int | None = None, status: str = "",
) -> list[Line]:
    """The whole screen; `height` None: every row (`--once`)."""
    lines = header_lines(doc, source, age_s, width)
    lines.append(("", ""))
    lines += site_lines(prev, doc, width, None if height is None else max(1, min(4, height // 6)))
    lines.append(("", ""))
    lines.append((table_header(width), "title"))
    room = None if height is None else max(0, height - len(lines) - 1)
    first = 0
    if room is not None and selected is not None and selected >= room:
        first = selected - room + 1  # keep the selection on screen
    shown = rows[first:] if room is None else rows[first:first + room]
    for i, r in enumerate(shown, start=first):
        lines.append((task_line(r, width), "selected" if i == selected else r.severity))
    if not rows:
        lines.append(("(no task is waiting at a memory stall site)", "dim"))
    if room is not None:
        lines = lines[: height - 1] if height else lines
        lines += [("", "")] * max(0, (height or 0) - 1 - len(lines))
        more = len(rows) - first - len(shown)
        lines.append(((status + (f"  (+{more} more)" if more > 0 else ""))[:width], "dim"))
    elif status:
        lines.append((status[:width], "dim"))
    return lines
