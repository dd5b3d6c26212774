# SPDX-License-Identifier: Apache-2.0
"""One episode per stuck task (pure): what a block says of a task, and when its end is said.

The tracker decides per wait and the window rules per task; a task stuck for a
minute goes through many waits (memcg reclaim, a writeback wait inside it,
reclaim again) and may turn from a crawl (throttled) into a plain stall and
back. An on-call wants one story of it: one "new", levels that keep counting,
one ending. This book keeps, per task, the episode it is in:

- it opens when a wait of the task reaches its threshold (a stall) or a window
  rule fires for it (throttled, livelock);
- it lasts while the task is stalled, or a window rule holds for it, or it has
  any memory wait in flight: a task that went from one wait to the next
  between two scans never left the episode (a crawl caught in a short wait is
  not reported by it, only kept);
- it is reported when it opens (level 1) and again at each further threshold
  of its whole duration, whichever wait or rule holds it then, with the kind
  of what holds it now (livelock before stall before throttled);
- it ends when a scan finds nothing holding it and the next scan still finds
  nothing (one scan of grace: a task caught between two waits is not
  "recovered"). The end says how the task's last wait ended, and "oom-killed"
  for a task whose process the OOM killer chose during the episode.

Stuck OOM victims keep their own episodes (core/findings.py): they are keyed by
the victim, not by what it waits in.

A scan in which nothing moved (the very waits of the last scan, the tracker's
very answer, no wait ended, no rule held) can change only levels: such scans
take the episodes whose next level has come from a heap (`_Calm`) instead of
deciding every episode again, and say what deciding again would say.
"""

from __future__ import annotations

import dataclasses
import heapq
import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from allocwatch.core.findings import LIVELOCK, STUCK_VICTIM, THROTTLED, EpisodeEnd, Finding
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Ended, Stall, Thresholds, Wait

STALL = "stall"
OOM_KILLED = "oom-killed"
_RANK = {LIVELOCK: 0, STALL: 1, THROTTLED: 2}  # what a block names a task by, when several hold


@dataclass(frozen=True)
class TaskEpisodeEnd:
    """A task's episode that ended: one line for the whole story."""

    kind: str  # what held it last: stall, throttled, livelock
    tid: int
    pid: int
    comm: str
    site: Site  # of its last wait, or where its window's time went
    duration_s: float  # from the episode's start to its end (or its last sighting)
    reports: int
    ended: str  # woke, killed, exited, oom-killed, unseen
    exact: bool = True  # False when the last wait's end was not seen
    start_known: bool = True
    reclaimed_pages: int | None = None
    compaction_status: str | None = None


@dataclass(frozen=True)
class OpenEpisode:
    """An episode still open when the daemon stops: nobody saw it end."""

    kind: str
    tid: int
    pid: int
    comm: str
    site: Site
    duration_s: float  # from its start to the last scan that found it held
    reports: int
    quiet: bool  # nothing held it at the last scan: its end waited for one more scan


@dataclass(slots=True)  # slots: 10,000 stuck tasks are 10,000 of these
class _Episode:
    tid: int
    pid: int
    comm: str
    kind: str
    since_ns: int  # when the task began to be stuck
    origin_ns: int  # levels count from here...
    offset: int  # ...plus this: a stall's level is its duration / threshold, a rule's 1 at once
    threshold_ns: int
    site: Site
    start_known: bool = True
    level: int = 0
    reports: int = 0
    quiet_ns: int | None = None  # the scan that first found nothing holding it
    last_end: Ended | None = None  # the last wait that ended in it (long ones: the kernel sends those up)
    last_seen_ns: int = 0


@dataclass
class EpisodeScan:
    stalls: list[Stall]  # due now: episodes held by a wait, at their episode's level
    findings: list[Finding]  # due now: episodes held by a window rule, and stuck victims
    ended: list[TaskEpisodeEnd | EpisodeEnd]  # TaskEpisodeEnd per task; EpisodeEnd for stuck victims


@dataclass(slots=True)
class _Calm:
    """A full scan after which nothing but time can move an episode: no quiet
    episode (its end is due next scan), no window rule held. While the next
    scans pass the very same waits and stalled waits and nothing else, each
    episode is held by what held it then, and only its level can change:
    those due are taken from a heap by the time of their next level."""

    inflight: tuple[Wait, ...]
    stalled: Mapping[int, Wait]  # what holds a stalled task's episode
    held: dict[int, Wait]  # what holds each other one's (a short wait of a task whose episode goes on)
    waits: dict[int, list[Wait]]  # the waits in flight of the tasks with more than one
    seen_ns: int = 0  # the last scan, which found every open episode held
    # when each episode's next level comes and whose it is, one int each (_due_key: a tuple
    # and two ints were 1 MiB at 10,000); made by the first scan that needs it
    due: list[int] | None = None


TID_BITS = 32  # a tid is a u32 in the kernel's records
TID_MASK = (1 << TID_BITS) - 1


def _due_key(ep: _Episode) -> int:
    """When the episode reaches the level after its last reported one, and its
    tid, as one int that orders by that time: (time << TID_BITS) | tid."""
    return (ep.origin_ns + (ep.level + 1 - ep.offset) * ep.threshold_ns) << TID_BITS | ep.tid


def _longest_first(s: Stall) -> tuple[int, int]:
    """Due stalls' order: longest first, equal ones by tid (the same whichever way a scan took)."""
    return -s.duration_ns, s.wait.tid


def _longest(waits: Sequence[Wait]) -> Wait:
    return min(waits, key=lambda w: w.start_ns)


class EpisodeBook:
    def __init__(
        self, thresholds: Thresholds, rule_threshold_ns: int = 10 * NS_PER_S,
        fate: Callable[[int, int, int], str | None] = lambda pid, tid, since_ns: None,
    ) -> None:
        """`fate(pid, tid, since_ns)`: "killed" when a SIGKILL was sent to the task or its
        process since then, "exited" when it is gone, else None (the daemon asks the kernel)."""
        self.fate = fate
        self.thresholds = thresholds
        self.rule_threshold_ns = rule_threshold_ns
        self._open: dict[int, _Episode] = {}
        self._chosen: dict[int, int] = {}  # pid -> when the OOM killer chose it
        self._calm: _Calm | None = None

    def open_tids(self) -> Collection[int]:
        return self._open.keys()

    def scan(
        self,
        now_ns: int,
        inflight: Iterable[Wait],
        stalled: Mapping[int, Wait],
        ended_waits: Sequence[Ended],
        rules_active: Sequence[Finding],
        rules_ended: Sequence[EpisodeEnd],
        victims_due: Sequence[Finding] = (),
    ) -> EpisodeScan:
        """`stalled`: per stalled task its longest wait at or over its threshold
        (due or not: tracker.ScanResult.over); `ended_waits`: the waits that ended since the last scan; `rules_active`:
        the window rules' episodes in progress (core/findings.Findings.active());
        `rules_ended`: what they ended (only stuck victims' ends are passed on);
        `victims_due`: stuck victims due now (passed on)."""
        inflight = tuple(inflight)
        calm = self._calm
        if calm is not None:
            if (not ended_waits and not rules_active and not rules_ended and not victims_due
                    and stalled is calm.stalled and len(inflight) == len(calm.inflight)
                    and all(map(operator.is_, inflight, calm.inflight))):
                return self._levels_due(now_ns, calm)
            self._calm = None
            for open_ep in self._open.values():  # the calm scans found each of them held
                open_ep.last_seen_ns = max(open_ep.last_seen_ns, calm.seen_ns)
        waits: dict[int, list[Wait]] = {}
        for w in inflight:
            waits.setdefault(w.tid, []).append(w)
        rules: dict[int, Finding] = {}
        for f in rules_active:
            if f.kind in (THROTTLED, LIVELOCK) and (f.tid not in rules or _RANK[f.kind] < _RANK[rules[f.tid].kind]):
                rules[f.tid] = f
        for e in ended_waits:
            ep = self._open.get(e.wait.tid)
            if ep is not None and (ep.last_end is None or e.wait.start_ns + e.duration_ns
                                   >= ep.last_end.wait.start_ns + ep.last_end.duration_ns):
                ep.last_end = e
        self._open_new(now_ns, stalled, rules, waits)

        due_stalls: list[Stall] = []
        due_findings: list[Finding] = list(victims_due)
        ended: list[TaskEpisodeEnd | EpisodeEnd] = [e for e in rules_ended if e.kind == STUCK_VICTIM]
        held: dict[int, Wait] = {}
        for tid, ep in list(self._open.items()):
            item = self._holding(ep, stalled.get(tid), rules.get(tid), waits.get(tid))
            if item is None:
                if ep.quiet_ns is None:
                    ep.quiet_ns = now_ns
                    continue
                del self._open[tid]
                ended.append(self._end(ep))
                continue
            ep.quiet_ns = None
            ep.last_seen_ns = now_ns
            if isinstance(item, Wait):
                held[tid] = item
                if ep.last_end is not None and item.start_ns > ep.last_end.wait.start_ns:
                    ep.last_end = None  # a later wait: how that one ended is not how the episode ends
            if isinstance(item, Finding):  # what holds it now names it, reported or not
                ep.kind, ep.site = item.kind, item.site
            elif tid in stalled:
                ep.kind, ep.site = STALL, item.site
            self._report(ep, item, tid in stalled, waits.get(tid, ()), now_ns, due_stalls, due_findings)
        due_stalls.sort(key=_longest_first)
        if len(held) == len(self._open) and not rules_active:  # none quiet, no rule: only time moves them now
            self._calm = _Calm(inflight, stalled, {t: w for t, w in held.items() if t not in stalled},
                               {t: ws for t, ws in waits.items() if len(ws) > 1}, now_ns)
        return EpisodeScan(due_stalls, due_findings, ended)

    @staticmethod
    def _report(ep: _Episode, item: Wait | Finding, stalled: bool, waits: Sequence[Wait], now_ns: int,
                due_stalls: list[Stall], due_findings: list[Finding]) -> bool:
        """Report the episode if it reached a new level: False when it is not
        reported by what holds it (a crawl caught in a short wait goes on; its
        rule reports it)."""
        level = ep.offset + (now_ns - ep.origin_ns) // ep.threshold_ns
        if isinstance(item, Wait) and ep.kind != STALL and not stalled:
            return False
        if level <= ep.level:
            return True
        ep.level = level
        ep.reports += 1
        duration_ns = now_ns - ep.since_ns
        if isinstance(item, Finding):
            due_findings.append(dataclasses.replace(
                item, since_ns=ep.since_ns, duration_s=duration_ns / NS_PER_S, level=level))
        else:
            own_ns = now_ns - item.start_ns
            due_stalls.append(Stall(item, max(duration_ns, own_ns), level, own_ns))
            # its other waits in flight (a writeback wait inside reclaim) go with it
            due_stalls += [Stall(w, now_ns - w.start_ns, level) for w in waits if w is not item]
        return True

    def _levels_due(self, now_ns: int, calm: _Calm) -> EpisodeScan:
        """A scan in which nothing but time moved: the episodes whose next level
        has come, from the heap (10,000 stuck tasks: the few due, not 10,000)."""
        if calm.due is None:
            calm.due = [_due_key(ep) for ep in self._open.values()]
            heapq.heapify(calm.due)
        due_stalls: list[Stall] = []
        due_findings: list[Finding] = []
        while calm.due and calm.due[0] >> TID_BITS <= now_ns:
            tid = heapq.heappop(calm.due) & TID_MASK
            ep = self._open[tid]
            item = calm.stalled.get(tid) or calm.held[tid]
            if self._report(ep, item, tid in calm.stalled, calm.waits.get(tid, (item,)), now_ns,
                            due_stalls, due_findings):
                heapq.heappush(calm.due, _due_key(ep))
            # else: it cannot be reported until something moves (a full scan then)
        calm.seen_ns = now_ns
        due_stalls.sort(key=_longest_first)
        return EpisodeScan(due_stalls, due_findings, [])


    def _open_new(self, now_ns: int, stalled: Mapping[int, Wait], rules: dict[int, Finding],
                  waits: dict[int, list[Wait]]) -> None:
        for tid, w in stalled.items():
            if tid not in self._open:
                since = min(x.start_ns for x in waits.get(tid, [w]))
                threshold_ns = self.thresholds.for_site(w.site)
                self._open[tid] = _Episode(tid, w.pid, w.comm, STALL, since, since, 0, threshold_ns, w.site,
                                           start_known=w.start_known)
        for tid, f in rules.items():
            if tid not in self._open:
                self._open[tid] = _Episode(tid, f.pid, f.comm, f.kind, f.since_ns, now_ns, 1,
                                           self.rule_threshold_ns, f.site)

    @staticmethod
    def _holding(ep: _Episode, stall: Wait | None, rule: Finding | None,
                 waits: Sequence[Wait] | None) -> Wait | Finding | None:
        """What holds the task in its episode now: its stalled wait, a window
        rule, or any wait in flight; None: nothing."""
        if rule is not None and rule.kind == LIVELOCK:
            return rule
        if stall is not None:
            return stall
        if rule is not None:
            return rule
        if waits:
            return _longest(waits)
        return None

    def still_open(self) -> list[OpenEpisode]:
        """The episodes open now, longest first: what a stop leaves unended."""
        seen_ns = self._calm.seen_ns if self._calm is not None else 0  # calm scans found each held
        out = [OpenEpisode(ep.kind, ep.tid, ep.pid, ep.comm, ep.site,
                           round(max(0, max(ep.last_seen_ns, seen_ns) - ep.since_ns) / NS_PER_S, 3), ep.reports,
                           ep.quiet_ns is not None) for ep in self._open.values()]
        return sorted(out, key=lambda e: (-e.duration_s, e.tid))

    def oom_chosen(self, pid: int, now_ns: int) -> None:
        """The OOM killer chose process `pid`: an episode of its tasks ends "oom-killed".
        Kills older than any open episode are forgotten (a storm makes hundreds)."""
        self._chosen[pid] = now_ns
        if len(self._chosen) > 64:
            oldest = min((ep.since_ns for ep in self._open.values()), default=now_ns)
            self._chosen = {p: t for p, t in self._chosen.items() if t >= oldest}

    def _end(self, ep: _Episode) -> TaskEpisodeEnd:
        r = ep.last_end
        if r is not None and r.wait.start_ns + r.duration_ns < ep.last_seen_ns:
            r = None  # a wait inside one still seen after it ended: not how the episode ended
        chosen_ns = self._chosen.get(ep.pid)
        # The last wait's own end is sent up only when it was long: a short one ended
        # unseen, so what became of the task is asked too.
        fate = self.fate(ep.pid, ep.tid, ep.since_ns)
        if chosen_ns is not None and chosen_ns >= ep.since_ns:
            how = OOM_KILLED
        elif fate == "killed":
            how = "killed"
        elif r is not None:
            how = r.how
        else:
            how = fate or "unseen"
        exact = r is not None
        end_ns = max(r.wait.start_ns + r.duration_ns, ep.last_seen_ns) if r is not None else ep.last_seen_ns
        return TaskEpisodeEnd(
            ep.kind, ep.tid, ep.pid, ep.comm, r.wait.site if r is not None else ep.site,
            round(max(0, end_ns - ep.since_ns) / NS_PER_S, 3), ep.reports, how, exact, ep.start_known,
            r.reclaimed_pages if r is not None else None, r.compaction_status if r is not None else None,
        )
