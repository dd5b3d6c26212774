# SPDX-License-Identifier: Apache-2.0
"""Which stalls and findings a stall block shows, and when. Pure: the caller reads, this decides.

- The cgroup filter (`--cgroup`, `cgroups:`): only tasks whose memory cgroup
  path starts with a configured prefix. What it leaves out is remembered, so
  that the end of an episode never shown is not shown either.
- The rate limit: at most one block per report interval (with half a scan of
  slack, so scans that drift by milliseconds are not held back). What it holds
  back comes out with the next block, the newest sighting of each task, and is
  counted (`held_back`).
- The listing: the first `max_tasks` of a block are read in full, the rest
  only counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from allocwatch.core.findings import Finding
from allocwatch.core.records import item_tid, listing
from allocwatch.core.tracker import NS_PER_S, Stall


@dataclass(frozen=True)
class BlockRules:
    cgroups: tuple[str, ...] = ()  # prefixes; () for every task
    report_interval_ns: int = NS_PER_S
    scan_interval_ns: int = NS_PER_S
    max_tasks: int = 1000

    @property
    def slack_ns(self) -> int:
        return self.scan_interval_ns // 2


class BlockPolicy:
    def __init__(self, rules: BlockRules) -> None:
        self.rules = rules
        self._last_block_ns: int | None = None
        self._held_back = 0  # task reports the rate limit held back since the last block
        self.held_back_total = 0
        self._hidden: set[int] = set()  # tasks whose stall or finding the cgroup filter left out
        self._pending_stalls: list[Stall] = []  # held back by the rate limit, for the next block
        self._pending_findings: list[Finding] = []

    @property
    def filtering(self) -> bool:
        return bool(self.rules.cgroups)

    def wanted(self, cgroup: str | None) -> bool:
        """No filter, or the task's memory cgroup starts with a prefix."""
        prefixes = self.rules.cgroups
        return not prefixes or (cgroup is not None and cgroup.startswith(prefixes))

    def select(
        self, stalls: Sequence[Stall], findings: Sequence[Finding], cgroup_of: Callable[[int], str | None]
    ) -> tuple[list[Stall], list[Finding]]:
        """What the filter keeps, merged with what the rate limit held back (the
        newest sighting of each): stalls longest first. `cgroup_of(tid)` is asked
        only when filtering."""
        kept = []
        for s in stalls:
            if self.wanted(cgroup_of(s.wait.tid) if self.filtering else None):
                kept.append(s)
            else:
                self._hidden.add(s.wait.tid)
        kept_findings = []
        for f in findings:
            if self.wanted(cgroup_of(f.tid) if self.filtering else None):
                kept_findings.append(f)
            else:
                self._hidden.add(f.tid)
        pending: dict[int, list[Stall]] = {}  # one episode a task: its newest sighting
        for s in self._pending_stalls:
            pending.setdefault(s.wait.tid, []).append(s)
        fresh: dict[int, list[Stall]] = {}
        for s in kept:
            fresh.setdefault(s.wait.tid, []).append(s)
        pending.update(fresh)
        pending_f = {f.tid: f for f in self._pending_findings}
        pending_f.update({f.tid: f for f in kept_findings})
        for tid in fresh.keys() & pending_f.keys():  # what holds a task now is what a block says
            if tid not in {f.tid for f in kept_findings}:
                del pending_f[tid]
        for tid in {f.tid for f in kept_findings} & pending.keys():
            if tid not in fresh:
                del pending[tid]
        stalls = [s for group in pending.values() for s in group]
        return sorted(stalls, key=lambda s: -s.duration_ns), list(pending_f.values())

    def listed(self, stalls: Sequence[Stall], findings: Sequence[Finding]) -> set[int]:
        """The tids a block lists in full; the rest it only counts. When every
        item fits (one a task with waits, one a finding), all of them, unsorted."""
        tids = {s.wait.tid for s in stalls}
        if len(tids) + len(findings) <= self.rules.max_tasks:
            return tids | {f.tid for f in findings}
        return {item_tid(x) for _, x in listing(stalls, findings)[: self.rules.max_tasks]}

    def release(self, now_ns: int, stalls: list[Stall], findings: list[Finding]) -> int | None:
        """The block goes out now: how many task reports were held back before it;
        or None: held back until the next (and counted)."""
        if (self._last_block_ns is not None
                and now_ns - self._last_block_ns < self.rules.report_interval_ns - self.rules.slack_ns):
            fresh = len({s.wait.tid for s in stalls} - {s.wait.tid for s in self._pending_stalls})
            self._held_back += fresh + len(findings) - len(self._pending_findings)
            self.held_back_total += fresh
            self._pending_stalls, self._pending_findings = stalls, findings
            return None
        self._pending_stalls, self._pending_findings = [], []
        self._last_block_ns = now_ns
        held, self._held_back = self._held_back, 0
        return held

    def shows_end(self, tid: int) -> bool:
        """Whether the end of a task's episode is said: not when the filter never showed it."""
        if tid in self._hidden:
            self._hidden.discard(tid)
            return False
        return True
