# SPDX-License-Identifier: Apache-2.0
"""What a stall block says of the machine around its tasks.

Memory and PSI now, vmstat and PSI totals since the last block, each kswapd's
state and for how long it has been in it, for how long it has not run (and
then where it sleeps), and whether an OOM kill was its memory cgroup's or
global. Read from /proc and /sys once a block; kswapd's state and run time
once a scan (`watch`), so that a block can say since when.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from allocwatch.core.host import KswapdInfo, RunSeen, kswapd_quiet, run_seen, vmstat_delta
from allocwatch.core.records import BlockContext, TaskDetail, Victim
from allocwatch.core.tracker import NS_PER_S
from allocwatch.kernel import hostfs, procfs


class HostContext:
    def __init__(self, proc: Path) -> None:
        self.proc = proc
        self._kswapd_pids: list[tuple[int, int]] | None = None
        self._kswapd_since: dict[int, tuple[str | None, int]] = {}  # pid -> (state, seen in it since)
        self._kswapd_ran: dict[int, RunSeen] = {}  # pid -> its run time and the scan that saw it grow
        self._last_vmstat: dict[str, int] = {}
        self._last_psi_us: dict[str, int] = {}

    def watch(self, now_ns: int) -> None:
        """kswapd's state and run time at every scan, so a block can say for how
        long it has been in that state and for how long it has not run."""
        if self._kswapd_pids is None:
            self._kswapd_pids = hostfs.find_kswapd(self.proc)
        pids = {pid for _, pid in self._kswapd_pids}
        for gone in (self._kswapd_since.keys() | self._kswapd_ran.keys()) - pids:
            self._kswapd_since.pop(gone, None)
            self._kswapd_ran.pop(gone, None)
        for pid in pids:
            state = procfs.task_state(self.proc, pid, pid)
            seen = self._kswapd_since.get(pid)
            if seen is None or seen[0] != state:
                self._kswapd_since[pid] = (state, now_ns)
            ran = run_seen(self._kswapd_ran.get(pid), hostfs.run_time_ns(self.proc, pid), now_ns)
            if ran is None:
                self._kswapd_ran.pop(pid, None)
            else:
                self._kswapd_ran[pid] = ran

    def kswapd(self, quiet_ns: int | None = None) -> tuple[KswapdInfo, ...]:
        """Each kswapd's state; its stack too when in D, or when it has not run
        for quiet_ns or longer (None: only in D)."""
        if self._kswapd_pids is None:
            self._kswapd_pids = hostfs.find_kswapd(self.proc)
        not_run = self.kswapd_not_run_for_ns()
        infos = [hostfs.kswapd_state(self.proc, node, pid, quiet=kswapd_quiet(not_run.get(pid), quiet_ns))
                 for node, pid in self._kswapd_pids]
        if any(k.state is None for k in infos):  # a pid went away or was reused: look again next time
            self._kswapd_pids = None
        return tuple(k for k in infos if k.state is not None)

    def kswapd_for_s(self, now_ns: int) -> dict[int, float]:
        return {pid: (now_ns - since) / NS_PER_S for pid, (_, since) in self._kswapd_since.items()}

    def kswapd_not_run_for_ns(self) -> dict[int, int]:
        """pid -> how long it has not run, at least, as of the last scan; a kswapd
        read by fewer than two scans is left out."""
        return {pid: ns for pid, ran in self._kswapd_ran.items() if (ns := ran.not_run_for_ns) is not None}

    def kswapd_not_run_for_s(self) -> dict[int, float]:
        return {pid: ns / NS_PER_S for pid, ns in self.kswapd_not_run_for_ns().items()}

    def block_context(
        self, stalled_now: int, details: Mapping[int, TaskDetail], now_ns: int, stats: Mapping[str, int],
        victims: tuple[Victim, ...], slab: bool = False, kswapd_quiet_ns: int | None = None,
    ) -> BlockContext:
        """The rest of the machine, read once per block; `slab`: the largest slab
        caches too (a finding's reclaim called shrinkers); kswapd_quiet_ns: how long
        kswapd must not have run for the block to show where it sleeps."""
        picture = hostfs.memory_picture(self.proc)
        delta = vmstat_delta(self._last_vmstat, picture.vmstat) if self._last_vmstat else {}
        self._last_vmstat = dict(picture.vmstat)
        psi_delta = {}
        if picture.pressure is not None:
            lines = {"some": picture.pressure.some, "full": picture.pressure.full}
            for kind, line in lines.items():
                if line is None:
                    continue
                if kind in self._last_psi_us:
                    psi_delta[kind] = max(0, line.total_us - self._last_psi_us[kind]) / 1e6
                self._last_psi_us[kind] = line.total_us
        return BlockContext(
            stalling=stalled_now,
            dying=sum(d.dying for d in details.values()),
            exiting=sum(d.exiting for d in details.values()),
            victims=victims,
            oom_kills=stats.get("oom_kills", 0),
            memory=picture,
            vmstat_delta=delta,
            psi_delta_s=psi_delta,
            kswapd=self.kswapd(kswapd_quiet_ns),
            kswapd_state_for_s=self.kswapd_for_s(now_ns),
            slab_caches=hostfs.slab_caches(self.proc) if slab else (),
            kswapd_not_run_for_s=self.kswapd_not_run_for_s(),
        )

    def oom_constraint(self, cgroup: str | None) -> str | None:
        """memcg when the invoker's memory cgroup is at its limit, in its OOM (v1), or has
        OOM kills of its own (the kill may have brought it under its limit by the time
        this is read), else global: inferred, since no tracepoint says it."""
        if cgroup is None:
            return None
        info = hostfs.memcg_info(cgroup, self.proc / "self" / "mountinfo")
        if info is None:
            return None
        at_limit = info.limit_bytes is not None and info.usage_near_limit
        return "memcg" if info.under_oom or at_limit or info.events.get("oom_kill", 0) > 0 else "global"
