# SPDX-License-Identifier: Apache-2.0
"""What a live viewer (`allocwatch top`) needs beyond the decisions (pure).

A scan's Snapshot says which waits are in flight; a viewer also wants, for
the rows it shows, what /proc says of each task now (memory cgroup, state,
and for the longest few, both stacks, the decoded gfp mask and the cgroup's
limit and usage), the machine's memory picture, the episodes in progress
(throttled, livelock, stuck victim) and the thresholds that colour the rows.
Reading that costs /proc reads per task, so the daemon fills `Snapshot.live`
only while a viewer listens, and for a bounded number of tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from allocwatch.core.findings import Finding
from allocwatch.core.records import BlockContext, TaskDetail

# Tasks whose cgroup and state are read each scan (the longest waits first),
# and of them, those that also get stacks, gfp names and memcg figures. A
# screen shows a few dozen rows; the caps bound the cost at 10,000 stalls.
LIVE_MAX_TASKS = 1000
LIVE_MAX_DETAILED = 64


@dataclass(frozen=True)
class LiveView:
    context: BlockContext  # memory, PSI, kswapd, victims, OOM kills: read this scan
    tasks: Mapping[int, TaskDetail]  # by tid, for the longest LIVE_MAX_TASKS rows
    detailed: frozenset[int]  # tids whose TaskDetail has the full detail (stacks, memcg)
    episodes: tuple[Finding, ...]  # throttled, livelock, stuck_victim episodes in progress
    thresholds_s: Mapping[str, float] = field(default_factory=dict)  # by site label; "*" the default
    throttle_names: Mapping[int, str] = field(default_factory=dict)
    symbols: Mapping[int, str] = field(default_factory=dict)  # kernel address -> function (episodes' shrinkers)
    truncated: int = 0  # tasks in flight beyond LIVE_MAX_TASKS, shown without cgroup and state
    site_detail: Mapping[tuple[int, str], Mapping[str, Any]] = field(default_factory=dict)  # (tid, site): so far
