# SPDX-License-Identifier: Apache-2.0
"""OOM victims from the kill until they are gone (pure): when each was chosen,
whether the OOM reaper has run on it, and who else in its memory cgroup is
still waiting for memory meanwhile.

The daemon tells the book of every kill (`oom:mark_victim`) and, every scan,
of the OOM reaper waits it sees (`oom:start_task_reaping` to
`oom:finish_task_reaping`, keyed by the victim's pid: in flight, ended, or
counted in the victim's task account); `alive()`
asks a state reader once a scan and forgets the victims that are gone, which
ends their stuck-victim episode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from allocwatch.core.findings import VictimSeen
from allocwatch.core.model import Acct
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Wait

GONE_STATES = (None, "Z", "X")  # no /proc entry, a zombie, dead: it has exited


@dataclass
class _Chosen:
    comm: str | None
    chosen_ns: int
    reaped_ns: int | None = None  # when a reaper wait on it was first seen


class VictimBook:
    def __init__(self, reaper_watched: bool = True) -> None:
        """`reaper_watched`: the OOM reaper's tracepoints are attached, so "not
        reaped" is known rather than unseen."""
        self.reaper_watched = reaper_watched
        self._chosen: dict[int, _Chosen] = {}

    def chosen(self, pid: int, comm: str | None, now_ns: int) -> None:
        self._chosen[pid] = _Chosen(comm, now_ns)

    def reaper_seen(self, waits: Iterable[Wait], accts: Mapping[int, Acct], now_ns: int) -> None:
        """A reaper wait on a victim in flight or ended (long ones) at this scan, or
        counted in its task account (every one ended: short ones send no end)."""
        if not self._chosen:  # nearly always: no victim to look for
            return
        pids = {w.pid for w in waits if w.site is Site.OOM_REAPER}
        for pid, v in self._chosen.items():
            a = accts.get(pid)
            counted = a is not None and len(a.waits) > Site.OOM_REAPER and a.waits[Site.OOM_REAPER] > 0
            if v.reaped_ns is None and (pid in pids or counted):
                v.reaped_ns = now_ns

    def alive(self, state_of: Callable[[int], str | None]) -> list[VictimSeen]:
        """The victims not gone yet, each with its state; the gone are forgotten."""
        out = []
        for pid, v in list(self._chosen.items()):
            state = state_of(pid)
            if state in GONE_STATES:
                del self._chosen[pid]
                continue
            reaped = (v.reaped_ns is not None) if self.reaper_watched else None
            out.append(VictimSeen(pid, v.comm, v.chosen_ns, state, reaped))
        return out

    def for_s(self, now_ns: int) -> list[tuple[int, str | None, float]]:
        """(pid, comm, seconds since chosen) of every victim still remembered."""
        return [(pid, v.comm, (now_ns - v.chosen_ns) / NS_PER_S) for pid, v in self._chosen.items()]


@dataclass(frozen=True)
class CgroupWaiter:
    """A task still waiting for memory in a stuck victim's cgroup."""

    tid: int
    pid: int
    comm: str
    site: str | None  # of its wait in flight at this scan; None between waits
    waited_s: float | None  # how long that wait has lasted
    share: float  # of the last window spent in memory waits
    # where it sleeps in D state outside any memory wait (its wchan, "D" when
    # unknown): blocked behind the victim, e.g. on a lock the victim holds
    blocked_in: str | None = None


def in_cgroup(path: str | None, group: str) -> bool:
    """The group itself or one below it."""
    return path is not None and (path == group or path.startswith(group.rstrip("/") + "/"))


def cgroup_waiters(
    group: str,
    victim_pid: int,
    inflight: Iterable[Wait],
    shares: Mapping[int, float],
    names: Mapping[int, tuple[int, str]],
    cgroup_of: Callable[[int, int], str | None],
    now_ns: int,
    blocked: Iterable[tuple[int, int, str, str | None]] = (),
) -> list[CgroupWaiter]:
    """Tasks of `group` (or below) with a memory wait in flight, a share of the
    last window spent waiting, or (`blocked`: tid, pid, comm, wchan of the
    group's threads in D state now) asleep in D state elsewhere, the victim's
    own threads left out; longest wait first, then the largest share, then
    the blocked. `names` gives (pid, comm) by tid for the tasks that have no
    wait in flight."""
    flying: dict[int, Wait] = {}
    for w in inflight:
        if w.tid not in flying or w.start_ns < flying[w.tid].start_ns:
            flying[w.tid] = w
    tids = set(flying) | {t for t, s in shares.items() if s > 0 and t in names}
    asleep = {tid: (pid, comm, wchan or "D") for tid, pid, comm, wchan in blocked if tid not in flying}
    out = []
    for tid in tids:
        now = flying.get(tid)
        pid, comm = (now.pid, now.comm) if now is not None else names[tid]
        if pid == victim_pid or not in_cgroup(cgroup_of(pid, tid), group):
            continue
        site, waited = (now.site.label, max(0, now_ns - now.start_ns) / NS_PER_S) if now is not None else (None, None)
        elsewhere = asleep[tid][2] if tid in asleep else None
        out.append(CgroupWaiter(tid, pid, comm, site, waited, shares.get(tid, 0.0), elsewhere))
    for tid, (pid, comm, wchan) in asleep.items():  # read from the group itself: in it
        if tid not in tids and pid != victim_pid:
            out.append(CgroupWaiter(tid, pid, comm, None, None, 0.0, wchan))
    out.sort(key=lambda c: (-(c.waited_s or 0.0), -c.share, c.tid))
    return out
