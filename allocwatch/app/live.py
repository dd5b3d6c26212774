# SPDX-License-Identifier: Apache-2.0
"""Fills `Snapshot.live` (core/live.py) from /proc, while a live viewer listens.

The daemon calls `LiveReader.enrich()` once a scan, after the scan has
decided. When nobody wants a live view (`wanted()` is False: no socket client,
no own-session top) it costs nothing. Otherwise it reads, for the longest
waits first, each task's memory cgroup and state, and for the longest few the
full detail a report gives (both stacks, decoded gfp, the cgroup's figures),
through the daemon's own readers, so a row says what a report would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from allocwatch.app.hostcontext import HostContext
from allocwatch.core.findings import Finding, Findings
from allocwatch.core.live import LIVE_MAX_DETAILED, LIVE_MAX_TASKS, LiveView
from allocwatch.core.records import BlockContext, TaskDetail, Victim, site_detail
from allocwatch.core.snapshot import Snapshot
from allocwatch.core.tracker import NS_PER_S, Tracker, Wait
from allocwatch.kernel import hostfs
from allocwatch.kernel.tasks import TaskReader


class Scanner(Protocol):
    """What the live view reads of the scan loop (app/daemon.py's Daemon)."""

    proc: Path
    tasks: TaskReader
    findings: Findings
    tracker: Tracker
    host: HostContext
    throttle_names: dict[int, str]

    def finding_detail(self, f: Finding) -> TaskDetail: ...
    def victims_alive(self, now_ns: int) -> tuple[Victim, ...]: ...
    def symbols(self, findings: Iterable[Finding]) -> dict[int, str]: ...


class LiveReader:
    def __init__(
        self, wanted: Callable[[], bool], max_tasks: int = LIVE_MAX_TASKS, max_detailed: int = LIVE_MAX_DETAILED,
        on_error: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.wanted = wanted
        self.max_tasks = max_tasks
        self.max_detailed = max_detailed
        self.on_error = on_error
        self.failed = 0

    def enrich(self, daemon: Scanner, snap: Snapshot, waits: Sequence[Wait]) -> Snapshot:
        if not self.wanted():
            return snap
        try:
            return self._enrich(daemon, snap, waits)
        except Exception as exc:  # a viewer must never stop the scans: the snapshot goes out without it
            self.failed += 1
            if self.failed == 1:
                self.on_error(f"internal error: no live view for top: {type(exc).__name__}: {exc}")
            return snap

    def _enrich(self, daemon: Scanner, snap: Snapshot, waits: Sequence[Wait]) -> Snapshot:
        now_ns = snap.mono_ns
        daemon.tasks.new_scan()  # figures of this scan, not of the last report block
        tasks: dict[int, TaskDetail] = {}
        detailed: set[int] = set()
        truncated = 0
        for w in sorted(waits, key=lambda w: w.start_ns):  # longest first
            if w.tid in tasks:
                continue
            if len(tasks) >= self.max_tasks:
                truncated += 1
                continue
            if len(detailed) < self.max_detailed:
                tasks[w.tid] = self._both_stacks(daemon, daemon.tasks.detail(w), w.tid)
                detailed.add(w.tid)
            else:
                tasks[w.tid] = daemon.tasks.glance(w)
        so_far = {(w.tid, w.site.label): site_detail(w) for w in waits if w.tid in tasks}
        episodes = tuple(daemon.findings.active())
        for f in episodes:
            if f.tid not in tasks:
                tasks[f.tid] = self._both_stacks(daemon, daemon.finding_detail(f), f.tid)
                detailed.add(f.tid)
        th = daemon.tracker.thresholds
        thresholds = {"*": th.default_ns / NS_PER_S, **{s.label: ns / NS_PER_S for s, ns in th.per_site_ns.items()}}
        context = BlockContext(
            stalling=sum(1 for f in snap.inflight if f.level >= 1),
            dying=0,
            exiting=0,
            victims=daemon.victims_alive(now_ns),
            oom_kills=snap.counters.get("oom_kills", 0),
            memory=hostfs.memory_picture(daemon.proc),
            kswapd=daemon.host.kswapd(th.min_ns),
            kswapd_state_for_s=daemon.host.kswapd_for_s(now_ns),
            kswapd_not_run_for_s=daemon.host.kswapd_not_run_for_s(),
        )
        live = LiveView(context, tasks, frozenset(detailed), episodes, thresholds, daemon.throttle_names,
                        daemon.symbols(episodes), truncated, so_far)
        return dataclasses.replace(snap, live=live)

    @staticmethod
    def _both_stacks(daemon: Scanner, detail: TaskDetail, tid: int) -> TaskDetail:
        """A report gives BPF's stack only when /proc has none; the detail view shows both."""
        if detail.recent_stack is None:
            detail = dataclasses.replace(detail, recent_stack=daemon.tasks.recent_stack(tid))
        return detail
