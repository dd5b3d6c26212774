# SPDX-License-Identifier: Apache-2.0
"""A Snapshot as one plain dict (pure): what the socket sends each scan and
`allocwatch top --json` prints.

Records are already dicts (core/records.py `to_dict`); task fields, episode
entries and the machine's context are made by the same helpers the records
use (`detail_fields`, `finding_dict`, `context_dict`), so a task reads the
same in a report, on the socket and in top. Text a task controls is escaped
as it is there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from allocwatch.core.records import (
    TaskDetail,
    context_dict,
    detail_fields,
    escape,
    finding_dict,
    gfp_text,
    iso_time,
    plain_record,
)
from allocwatch.core.snapshot import Histogram, InFlight, Snapshot

SNAPSHOT_TYPE = "snapshot"
HELLO_TYPE = "hello"
PROTOCOL = 1  # bumped when a field changes meaning; new fields may come at any time


def histogram_dict(h: Histogram) -> dict[str, Any]:
    """Cumulative buckets as [upper bound in seconds or "inf", count <= it]."""
    return {
        "count": h.count,
        "sum_s": round(h.sum_s, 6),
        "buckets": [["inf" if math.isinf(le) else le, n] for le, n in h.buckets],
    }


def _inflight_dict(
    f: InFlight, detail: TaskDetail | None, detailed: bool, share: float | None, so_far: Mapping[str, Any] | None
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "kind": "stall" if f.level >= 1 else "wait",
        "tid": f.tid,
        "pid": f.pid,
        "comm": escape(f.comm),
        "site": f.site,
        "duration_s": round(f.duration_s, 3),
        "level": f.level,
        "start_known": f.start_known,
        "gfp": gfp_text(f.gfp),
        "order": f.order,
        "share": None if share is None else round(share, 3),
        "detail": detailed,  # stacks and memcg were read for this task
    }
    if detail is not None:
        d["gfp_flags"] = detail.gfp_flags
        d.update(detail_fields(detail))
    if so_far is not None:  # pages reclaimed so far, the dirty-throttle pause: as a report's task has them
        d.update(so_far)
    return d


def snapshot_dict(snap: Snapshot) -> dict[str, Any]:
    live = snap.live
    details: Mapping[int, TaskDetail] = live.tasks if live else {}
    detailed = live.detailed if live else frozenset()
    names: Mapping[int, str] = live.throttle_names if live else {}
    sites = sorted(set(snap.now) | set(snap.completed) | set(snap.stalled_seconds))
    return {
        "type": SNAPSHOT_TYPE,
        "scan": snap.scan,
        "time": iso_time(snap.time_s),
        "time_s": snap.time_s,
        "scan_duration_s": round(snap.scan_duration_s, 6),
        "info": dict(snap.info),
        "coverage": [{"site": c.site, "mechanism": c.mechanism, "attached": c.attached} for c in snap.coverage],
        "thresholds_s": dict(live.thresholds_s) if live else {},
        "inflight": [
            _inflight_dict(f, details.get(f.tid), f.tid in detailed, snap.shares.get(f.tid),
                           live.site_detail.get((f.tid, f.site)) if live else None)
            for f in snap.inflight
        ],
        "inflight_without_detail": live.truncated if live else 0,
        "episodes": [
            {**finding_dict(e, details.get(e.tid, TaskDetail()), names, live.symbols if live else None),
             "detail": e.tid in detailed}
            for e in (live.episodes if live else ())
        ],
        "sites": {
            s: {
                "waiting": snap.now[s].waiting if s in snap.now else 0,
                "stalled": snap.now[s].stalled if s in snap.now else 0,
                "longest_s": round(snap.now[s].longest_s, 3) if s in snap.now else 0.0,
                "stalled_seconds": round(snap.stalled_seconds.get(s, 0.0), 6),
                "completed": histogram_dict(snap.completed[s]) if s in snap.completed else None,
            }
            for s in sites
        },
        "context": context_dict(live.context) if live else None,
        "counters": dict(snap.counters),
        "reported": dict(snap.reported),
        "records": [plain_record(r) for r in snap.records],  # plain dicts: JSON as they are
        "reload": None if snap.reload is None else {"seq": snap.reload.seq, "ok": snap.reload.ok,
                                                    "said": snap.reload.said},
    }


def hello_dict(info: Mapping[str, str], coverage: list[dict[str, Any]]) -> dict[str, Any]:
    """The first line a socket client reads: who is talking, and what it watches."""
    return {"type": HELLO_TYPE, "protocol": PROTOCOL, **dict(info), "coverage": coverage}
