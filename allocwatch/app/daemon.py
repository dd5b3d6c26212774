# SPDX-License-Identifier: Apache-2.0
"""The scan loop: source -> names -> tracker -> records -> Snapshot -> outputs.

Each scan reads the kernel once, decides (pure tracker), reads /proc for the
tasks due now, and produces one immutable Snapshot. Outputs receive it with
`publish()`, which must return at once: rendering and writing happen in the
outputs' own threads. The latest snapshot is also kept in `latest` (a plain
reference swap) for readers that pull, such as a Prometheus scrape, without its
records: they are for the outputs it was published to, and a block of 10,000
tasks is some 10 MiB of dicts, gone once those outputs have written it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Protocol

from allocwatch import __version__
from allocwatch.app.hostcontext import HostContext
from allocwatch.app.live import LiveReader
from allocwatch.config import Config
from allocwatch.core import gfp, oomkills, pods
from allocwatch.core.behind import behind, beside, on_writeback, writeback_devices
from allocwatch.core.blockpolicy import BlockPolicy, BlockRules
from allocwatch.core.cgroupstall import CgroupCounts, CgroupLabeler, CgroupStallSeconds
from allocwatch.core.classify import StackClassifier
from allocwatch.core.dstate import DstateNamer
from allocwatch.core.episodes import EpisodeBook
from allocwatch.core.findings import STUCK_VICTIM, Finding, Findings, VictimSeen
from allocwatch.core.host import memory_at_oom
from allocwatch.core.model import Acct, InflightWait, OomKill, WaitEnd
from allocwatch.core.records import (
    LIMIT_TEXT,
    EpisodeEndReport,
    LimitsReport,
    OomKillReport,
    Record,
    SiteSummary,
    StallReport,
    SummaryReport,
    TaskDetail,
    Victim,
    limit_line,
    to_dict,
)
from allocwatch.core.sites import NR_SITES, SITE_DSTATE, Site
from allocwatch.core.snapshot import (
    EMPTY_HISTOGRAM,
    SCAN_BUCKETS_S,
    CumulativeHistogram,
    Histogram,
    InflightTable,
    LazyMapping,
    ReloadOutcome,
    SiteCoverage,
    Snapshot,
    StallSeconds,
    merge_slots,
    per_site_now,
)
from allocwatch.core.tracker import NS_PER_S, Ended, Stall, Tracker, Wait
from allocwatch.core.victims import VictimBook, cgroup_waiters
from allocwatch.kernel import hostfs, procfs
from allocwatch.kernel.blockdev import WritebackDevices
from allocwatch.kernel.memcgids import MemcgPaths
from allocwatch.kernel.podnames import PodNames
from allocwatch.kernel.probes import SitePlan, stack_classified_sites
from allocwatch.kernel.tasks import TaskReader
from allocwatch.kernel.waitfacts import WaitFacts


class Source(Protocol):
    def inflight(self) -> list[InflightWait]: ...
    def drain(self) -> list[WaitEnd | OomKill]: ...
    def seed_dwait(self, tid: int, pid: int, comm: str, start_ns: int) -> None: ...
    def drop_dwait(self, tid: int, start_ns: int) -> None: ...
    def let_go_dwait(self, tid: int, start_ns: int) -> bool: ...
    def histograms(self) -> dict[Site, tuple[list[int], int]]: ...
    def stats(self) -> dict[str, int]: ...


class Output(Protocol):
    def publish(self, snap: Snapshot) -> None: ...


def _pair_wait(raw: InflightWait | WaitEnd) -> Wait | None:
    if not 0 <= raw.site < NR_SITES:
        return None
    if not isinstance(raw, InflightWait):
        return Wait(raw.tid, raw.pid, raw.comm, Site(raw.site), raw.start_ns, raw.gfp, raw.order)
    return Wait(raw.tid, raw.pid, raw.comm, Site(raw.site), raw.start_ns, raw.gfp, raw.order,
                reclaimed_pages=raw.reclaimed_pages, writeback=raw.writeback)


class Daemon:
    def __init__(
        self,
        cfg: Config,
        source: Source,
        plans: list[SitePlan],
        outputs: Sequence[Output] = (),
        proc: Path = procfs.DEFAULT_PROCFS,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_s: Callable[[], float] = time.time,
        coverage: Sequence[SiteCoverage] = (),
        kernel: str = "",
        gfp_table: Sequence[tuple[int, str]] = (),
        compaction_names: Mapping[int, str] | None = None,
        throttle_names: Mapping[int, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.outputs = list(outputs)
        self.proc = proc
        self.clock_ns = clock_ns
        self.wall_s = wall_s
        self.tracker = Tracker(cfg.thresholds())
        self.findings = Findings(cfg.window_rules())
        self.episodes = EpisodeBook(self.tracker.thresholds, cfg.window_rules().threshold_ns, self._fate)
        classifier = StackClassifier(stack_classified_sites(plans))
        self.namer = DstateNamer(
            classifier, lambda pid, tid: procfs.kernel_stack(proc, pid, tid), cfg.classify_after_ns
        )
        self.coverage = tuple(coverage)
        self.compaction_names = dict(compaction_names or {})  # enum compact_result, from the print fmt
        self._symbols: dict[int, str] = {}  # kernel address -> function, as the source named it
        self.throttle_names = dict(throttle_names or {})  # reason bit -> VMSCAN_THROTTLE_*, from fmt and BTF
        self.info = {"version": __version__, "kernel": kernel}
        self.seq = 0
        self.scans = 0
        self._pair_made: dict[int, tuple[InflightWait, Wait]] = {}  # by the entry's id: the entry, its Wait
        self.oom_kills = 0
        self.unrelated_dropped = 0  # D-state sleeps named "not a memory wait", their entry given back
        self.unrelated_left = 0  # the same, left in the map for the kernel to close at their wake
        self.stale_dropped = 0  # D-state entries whose task was seen awake when due
        self.reported: dict[str, int] = {}  # stall reports by kind
        self._limits_seen: dict[str, int] = {}
        self._stall_seconds = StallSeconds()
        self.pods = PodNames(cfg.pod_logs_dir)  # a pod's namespace and name, from the kubelet's log dirs
        labeler = CgroupLabeler(cfg.metrics_cgroups, cfg.metrics_cgroup_pattern, cfg.metrics_cgroup_max,
                                (lambda cg: pods.metric_labels(self.pods.pod(cg))) if cfg.metrics_pod_labels else None)
        # one read of a task's cgroup per wait, and only when cgroups are to be labelled
        self._cgroup_kills = CgroupCounts(labeler) if labeler.enabled else None  # by the victim's cgroup
        self._cgroup_seconds = (
            CgroupStallSeconds(labeler, lambda pid, tid: procfs.memory_cgroup(proc, pid, tid))
            if labeler.enabled else None
        )
        self._scan_durations = CumulativeHistogram(SCAN_BUCKETS_S)
        self._last_scan_s = 0.0
        self.policy = BlockPolicy(self._block_rules(cfg))
        self.victims = VictimBook(any(c.site == Site.OOM_REAPER.label and c.attached for c in self.coverage))
        self.last_scan: tuple[list[Wait], Mapping[int, float], Mapping[int, Acct], int] = ([], {}, {}, 0)
        self.facts = WaitFacts(proc)  # cgroup, uid, cmdline: read once a wait, ahead of its first block
        self.tasks = TaskReader(proc, self.facts, self.namer.stack_of, getattr(source, "recent_stack", None),
                                gfp_table, self.pods.pod, getattr(source, "task_states", None))
        self._ahead_ns = self._read_ahead_ns(cfg)
        self.host = HostContext(proc)  # memory, PSI, vmstat, kswapd: what a block says of the machine
        self.memcg_paths = MemcgPaths(proc / "self" / "mountinfo")  # an OOM kill's cgroup ids named
        self.wb_devices = WritebackDevices(mountinfo_path=proc / "self" / "mountinfo")  # writeback waits' devices
        self._last_scan_wall: float | None = None
        self.latest: Snapshot | None = None
        self.last_reload: ReloadOutcome | None = None  # told by app/service.py after each reload
        self.on_limit: Callable[[str], None] = lambda line: None  # app/service.py says it on stderr
        self.live: LiveReader | None = None  # fills Snapshot.live while a viewer (top) listens

    def seed_preexisting(self) -> int:
        """Track tasks already asleep in D when the programs were attached.

        Their sleeps began before allocwatch could see them, so they are timed
        from now and reported as lower bounds. A task that woke between the
        sweep and the seeding is dropped again.
        """
        now_ns = self.clock_ns()
        found = procfs.tasks_in_state(self.proc, "D")
        for pid, tid, comm in found:
            self.source.seed_dwait(tid, pid, comm, now_ns)
            self.namer.seeded(tid, now_ns)
        seeded = 0
        for pid, tid, _ in found:
            if procfs.task_state(self.proc, pid, tid) == "D":
                seeded += 1
            else:
                self.source.drop_dwait(tid, now_ns)
        return seeded

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _live_victims(self) -> list[VictimSeen]:
        """OOM victims chosen and not gone yet (still in /proc, not a zombie), read once a
        scan; the ones gone are forgotten, which ends their stuck-victim episode."""
        return self.victims.alive(lambda pid: procfs.task_state(self.proc, pid, pid))

    def _fate(self, pid: int, tid: int, since_ns: int) -> str | None:
        """What became of a task whose episode ends: "killed" when a SIGKILL was sent
        to it or its process since `since_ns` (the kernel remembers), "exited" when it
        is gone, else None."""
        sigkill_ns = getattr(self.source, "sigkill_ns", None)  # only the real source has it
        if sigkill_ns is not None and any((t := sigkill_ns(x)) is not None and t >= since_ns for x in {tid, pid}):
            return "killed"
        return "exited" if procfs.task_state(self.proc, pid, tid) in (None, "Z", "X") else None

    def victims_alive(self, now_ns: int) -> tuple[Victim, ...]:
        """For a block: the victims this scan found alive (pruned by _live_victims)."""
        return tuple(Victim(pid, comm, for_s) for pid, comm, for_s in self.victims.for_s(now_ns))

    def _limits(self, stats: dict[str, int], wall: float) -> LimitsReport | None:
        """Counters of kernel-side limits that grew since the last scan."""
        grown = {}
        for name in LIMIT_TEXT:
            now = stats.get(name, 0)
            if now > self._limits_seen.get(name, 0):
                grown[name] = now - self._limits_seen.get(name, 0)
            self._limits_seen[name] = now
        if not grown:
            return None
        totals = {k: stats.get(k, 0) for k in grown}
        for k, n in grown.items():
            self.on_limit(limit_line(k, n, totals[k]))
        return LimitsReport(self._next_seq(), wall, grown, totals)

    def _read(self, now_ns: int) -> tuple[list[Wait], list[Ended], list[OomKill]]:
        """One read of the kernel, named: waits in flight, waits ended, kills."""
        raws = self.source.inflight()
        events = self.source.drain()
        waits = self._pair_waits([r for r in raws if r.site != SITE_DSTATE])
        waits += self.namer.name_all([r for r in raws if r.site == SITE_DSTATE], now_ns)
        # A sleep named "not a memory wait" gives its entry back once the map is
        # crowded, so tasks parked in D elsewhere (vfork, frozen file systems)
        # cannot fill it; before that, the kernel closes it when the task wakes.
        for tid, start_ns in self.namer.take_unrelated():
            if self.source.let_go_dwait(tid, start_ns):
                self.unrelated_dropped += 1
            else:
                self.unrelated_left += 1
        ended: list[Ended] = []
        kills: list[OomKill] = []
        for ev in events:
            if isinstance(ev, OomKill):
                kills.append(ev)
            elif ev.site == SITE_DSTATE:
                named = self.namer.name_end(ev)
                if named:
                    ended.append(named)
            elif (w := _pair_wait(ev)) is not None:
                ended.append(Ended(w, ev.duration_ns, how=ev.how, **self._end_detail(w.site, ev.detail)))
        self.namer.prune()
        return waits, ended, kills

    def _pair_waits(self, raws: Sequence[InflightWait]) -> list[Wait]:
        """The Waits of pair-timed entries: an entry that did not change (the very
        object: kernel/mapread.py) gives the very Wait it gave last scan, so
        the tracker can tell a scan in which nothing moved (core/tracker.py)."""
        last, made = self._pair_made, {}
        out = []
        for r in raws:
            hit = last.get(id(r))
            if hit is None or hit[0] is not r:
                w = _pair_wait(r)
                if w is None:
                    continue
                hit = (r, w)
            made[id(r)] = hit
            out.append(hit[1])
        self._pair_made = made
        return out

    def _kills_seen(self, kills: list[OomKill]) -> list[oomkills.KillSeen]:
        """Each kill with its cgroups and constraint: as the kernel said them at
        the kill when the OOM-context program ran, else read from /proc now."""
        names = self.memcg_paths.paths(chain.from_iterable(
            (k.victim_memcg_id, k.invoker_memcg_id, k.oom_memcg_id) for k in kills))
        seen = []
        for k in kills:
            if k.memcg_oom is not None:
                seen.append(oomkills.KillSeen(
                    k, names.get(k.victim_memcg_id or 0), names.get(k.invoker_memcg_id or 0),
                    k.constraint or oomkills.constraint_of(k.memcg_oom), from_kernel=True,
                    gfp_flags=gfp.describe(k.gfp, self.tasks.gfp_table) if self.tasks.gfp_table else None,
                    order=k.order, oom_cgroup=names.get(k.oom_memcg_id or 0)))
                continue
            invoker_cgroup = self.tasks.live_cgroup(k.invoker_pid, k.invoker_tid)
            seen.append(oomkills.KillSeen(
                k, self.tasks.live_cgroup(k.victim_pid, k.victim_pid), invoker_cgroup,
                self.host.oom_constraint(invoker_cgroup), from_kernel=False))
        return seen

    def _without_stale_sleeps(self, kept: list[Stall], details: Mapping[int, TaskDetail]) -> list[Stall]:
        """A D-state sleep whose task /proc shows awake (S, R ...) is not a stall now.
        Either it woke after this scan drained the ring (its end comes next scan) or
        the kernel missed its switch-in and the entry is stale (seen: one task of 200
        released at once, about one run in six). Its slot is given back either way;
        a stale one then ends, unseen, at the next scan."""
        out = []
        for s in kept:
            state = details[s.wait.tid].state if s.wait.tid in details else None
            if s.wait.dstate and s.wait.start_known and state not in (None, "D"):
                self.source.drop_dwait(s.wait.tid, s.wait.start_ns)
                self.stale_dropped += 1
                continue
            out.append(s)
        return out

    def finding_detail(self, f: Finding) -> TaskDetail:
        """A finding's task in full; a stuck victim's with the tasks of its cgroup still waiting."""
        return self.tasks.finding_detail(f, lambda cgroup: self._cgroup_waiting(f, cgroup) if f.kind == STUCK_VICTIM
                                         else {})

    def _with_behind(
        self, stalls: Sequence[Stall], findings: Sequence[Finding], details: dict[int, TaskDetail],
        listed: Collection[int], now_ns: int,
    ) -> dict[int, TaskDetail]:
        """Each listed task waiting on writeback, with the kernel threads in memory
        waits that complete that writeback, and those of its device waiting on
        that writeback beside it (core/behind.py), named from /proc."""
        throttled = {f.tid for f in findings
                     if any("WRITEBACK" in self.throttle_names.get(bit, "") for bit in f.throttle_reasons)}
        # Only the few tasks whose waits say writeback get a set each (10,000 listed
        # tasks made three sets each here, every block)
        at_site: set[int] = {f.tid for f in findings if Site.WRITEBACK_WAIT.label in f.per_site}
        devices: dict[int, set[str]] = {}
        for w in chain((s.wait for s in stalls), (f.waiting for f in findings)):
            if w is None:
                continue
            if w.site is Site.WRITEBACK_WAIT:
                at_site.add(w.tid)
            if w.writeback is not None:
                devices.setdefault(w.tid, set()).update(writeback_devices(w))
        waits = self.last_scan[0]
        in_stack: dict[int, bool] = {}  # a stack's writeback frames, by its id (the details hold it): looked for once
        for tid in dict.fromkeys(chain((s.wait.tid for s in stalls), (f.tid for f in findings))):
            d = details.get(tid)
            if tid not in listed or d is None:
                continue
            if tid not in at_site and tid not in throttled:
                said = in_stack.get(id(d.stack))
                if said is None:
                    said = in_stack[id(d.stack)] = on_writeback((), d.stack)
                if not said:
                    continue
            names = devices.get(tid, set())
            if d.writeback_device is not None and d.writeback_device.device:
                names.add(d.writeback_device.device)  # "loop3" beside its bdi "7:3"
                names.update(d.writeback_device.partitions)  # "jbd2/sda1-8" works for sda's writeback
            kernel = self.tasks.kernel_waits(waits)
            rows, side = behind(kernel, names, tid, now_ns), beside(kernel, names, tid, now_ns)
            if rows or side:
                details[tid] = dataclasses.replace(d, behind=rows, beside=side)
        return details

    def _cgroup_waiting(self, f: Finding, cgroup: str | None) -> dict[str, Any]:
        """A stuck victim's cgroup: the tasks there still waiting for memory at the
        last scan, or asleep in D state now (the first max_tasks_per_block of
        them) and how many."""
        if cgroup is None:  # gone
            return {}
        waits, shares, accts, now_ns = self.last_scan
        names = {tid: (a.pid, a.comm) for tid, a in accts.items()}
        flying = {w.tid for w in waits}
        blocked = self.tasks.blocked_in(cgroup, flying.__contains__)
        found = cgroup_waiters(cgroup, f.pid, waits, shares, names, self.tasks.cgroup, now_ns, blocked)
        return {"cgroup_waiting": tuple(found[: self.cfg.max_tasks_per_block]), "cgroup_waiting_count": len(found),
                "cgroup_blocked_count": sum(1 for c in found if c.blocked_in is not None)}

    def _stall_block(
        self, stalls: list[Stall], findings: list[Finding], stalled_now: int, now_ns: int, wall: float,
        stats: dict[str, int],
    ) -> StallReport | None:
        """The stall block due now, or None: what the block policy keeps and lets out now."""
        if not stalls and not findings:
            return None
        self.tasks.new_block(len(stalls) + len(findings))
        # The cgroup filter needs each task's cgroup; the rest of /proc is read
        # below only for the tasks the block lists (max_tasks_per_block).
        details: dict[int, TaskDetail] = {}
        if self.policy.filtering:
            for s in stalls:
                details[s.wait.tid] = TaskDetail(cgroup=self.facts.cgroup(s.wait))
            for f in findings:
                if f.tid not in details:
                    details[f.tid] = TaskDetail(cgroup=self.tasks.cgroup(f.pid, f.tid))
        kept, kept_findings = self.policy.select(stalls, findings, lambda tid: details[tid].cgroup)
        listed = self.policy.listed(kept, kept_findings)
        full: dict[int, TaskDetail] = {}
        for s in kept:  # one /proc read per task, however many waits it has
            if s.wait.tid not in full:
                full[s.wait.tid] = (self.tasks.detail(s.wait) if s.wait.tid in listed
                                     else self.tasks.brief(s.wait.pid, s.wait.tid, details, s.wait))
        for f in kept_findings:
            if f.tid not in full:
                full[f.tid] = (self.finding_detail(f) if f.tid in listed
                                else self.tasks.brief(f.pid, f.tid, details))
        self.tasks.forget_states()
        details = self._with_devices(full, kept, kept_findings)
        details = self._with_behind(kept, kept_findings, details, listed, now_ns)
        kept = self._without_stale_sleeps(kept, details)
        tasks = {s.wait.tid for s in kept}
        if not kept and not kept_findings:
            return None
        held = self.policy.release(now_ns, kept, kept_findings)
        if held is None:
            return None
        self.reported["stall"] = self.reported.get("stall", 0) + len(tasks)
        for f in kept_findings:
            self.reported[f.kind] = self.reported.get(f.kind, 0) + 1
        shown = {t: details[t] for t in tasks | {f.tid for f in kept_findings}}
        return StallReport(
            self._next_seq(), wall, kept, stalled_now, shown,
            held_back=held, max_tasks=self.cfg.max_tasks_per_block,
            context=self.host.block_context(stalled_now, shown, now_ns, stats, self.victims_alive(now_ns),
                                            slab=any(f.shrinkers for f in kept_findings),
                                            kswapd_quiet_ns=self.tracker.thresholds.min_ns),
            findings=kept_findings,
            throttle_names=self.throttle_names,
            symbols=self.symbols(kept_findings),
        )

    def _with_devices(self, details: dict[int, TaskDetail], stalls: Iterable[Stall],
                      findings: Iterable[Finding]) -> dict[int, TaskDetail]:
        """A task waiting on writeback (or in reclaim that did) with the device it waits on."""
        for w in chain((s.wait for s in stalls), (f.waiting for f in findings)):
            if w is not None and w.writeback is not None and w.tid in details \
                    and details[w.tid].writeback_device is None:
                device = self.wb_devices.state(w.writeback.bdi, details[w.tid].cgroup)
                details[w.tid] = dataclasses.replace(details[w.tid], writeback_device=device)
        return details

    def _end_detail(self, site: Site, detail: int | None) -> dict[str, Any]:
        """What the end tracepoint said, in the record's words."""
        if detail is None:
            return {}
        if site in (Site.DIRECT_RECLAIM, Site.MEMCG_RECLAIM):
            return {"reclaimed_pages": detail}
        if site is Site.COMPACTION:
            return {"compaction_status": self.compaction_names.get(detail, str(detail))}
        return {}

    def counters(self, stats: dict[str, int]) -> dict[str, int]:
        return {**stats, "dwaits_unrelated_dropped": self.unrelated_dropped,
                "dwaits_unrelated_left": self.unrelated_left, "dwaits_stale_dropped": self.stale_dropped,
                "dwaits_counts_left": getattr(self.source, "counts_left", 0),
                "waits_idle_given_back": getattr(self.source, "idle_given_back", 0),
                "held_back": self.policy.held_back_total}

    def completed(self) -> dict[str, Histogram]:
        """Completed waits per site: the kernel's histograms plus the sleeps named here."""
        user = {site: (t.slots, t.total_ns) for site, t in self.tracker.dstate_completed.items()}
        merged = merge_slots(self.source.histograms(), user)
        for c in self.coverage:  # every watched site, so a rate() has a series from the start
            if c.attached and c.site not in merged:
                merged[c.site] = EMPTY_HISTOGRAM
        return merged

    def scan_once(self) -> Snapshot:
        t0 = time.monotonic()
        now_ns = self.clock_ns()
        waits, ended, kills = self._read(now_ns)
        self.host.watch(now_ns)
        if any(w.writeback is not None for w in waits):  # their devices' counters, for a write rate
            self.wb_devices.sample((w.writeback.bdi for w in waits if w.writeback is not None), now_ns)
        result = self.tracker.scan(now_ns, waits, ended, self._ahead_ns)
        if len(self.facts) > len(waits):  # some waits ended: forget them
            self.facts.keep({w.key for w in waits})
        if result.nearing:
            self.facts.read_ahead(result.nearing, self.cfg.max_tasks_per_block)
        self.scans += 1
        wall = self.wall_s()
        stats = self.source.stats()
        records: list[Record] = []
        limits = self._limits(stats, wall)
        if limits is not None:
            records.append(limits)
        for k in kills:
            self.oom_kills += 1
            self.victims.chosen(k.victim_pid, k.victim_comm, now_ns)
            self.episodes.oom_chosen(k.victim_pid, now_ns)
        interval_s = wall - self._last_scan_wall if self._last_scan_wall is not None else 0.0
        self._last_scan_wall = wall
        seen = self._kills_seen(kills)
        if self._cgroup_kills is not None:
            for ks in seen:
                self._cgroup_kills.add(ks.victim_cgroup)
        memory = memory_at_oom(hostfs.memory_picture(self.proc)) if seen else None  # one read a scan with kills
        for group in oomkills.fold(seen):
            records.append(OomKillReport(self._next_seq(), wall, group, interval_s, memory))
        # rows for the outputs, made only if one reads them (snapshot.InflightTable)
        inflight = InflightTable(waits, now_ns, self.tracker.thresholds)
        accts = self._task_accounts()
        stalled_tids = result.stalled_tids
        self.victims.reaper_seen(chain(waits, (e.wait for e in ended)), accts, now_ns)
        due, rules_ended, shares = self.findings.scan(now_ns, accts, waits, stalled_tids, self._live_victims())
        self.last_scan = (waits, shares, accts, now_ns)
        # one episode a task, whichever waits and rules hold it (core/episodes.py)
        eps = self.episodes.scan(now_ns, waits, result.over, ended, self.findings.active(), rules_ended,
                                 [f for f in due if f.kind == STUCK_VICTIM])
        block = self._stall_block(eps.stalls, eps.findings, result.stalled_now, now_ns, wall, stats)
        if block is not None:
            records.append(block)
        for e in eps.ended:
            if self.policy.shows_end(e.tid):  # an episode never shown: neither is its end
                records.append(EpisodeEndReport(self._next_seq(), wall, e))

        completed = self.completed()
        snap = Snapshot(
            scan=self.scans,
            time_s=wall,
            mono_ns=now_ns,
            scan_duration_s=self._last_scan_s,
            inflight=inflight,
            now=LazyMapping(partial(per_site_now, inflight, [c.site for c in self.coverage if c.attached])),
            records=tuple(to_dict(r) for r in records),
            completed=completed,
            stalled_seconds=LazyMapping(partial(self._stall_seconds.update, completed, inflight)),
            counters=self.counters(stats),
            reported=dict(self.reported),
            scan_durations=self._scan_durations.freeze(),
            coverage=self.coverage,
            programs=self._program_stats(),
            shares=shares,
            cgroup_stalled_seconds=(
                self._cgroup_seconds.update(now_ns, waits, ended) if self._cgroup_seconds is not None else {}
            ),
            cgroup_label_names=self._cgroup_seconds.names if self._cgroup_seconds is not None else ("cgroup",),
            cgroup_oom_kills=self._cgroup_kills.totals() if self._cgroup_kills is not None else None,
            info=self.info,
            stalled_now=result.stalled_now,
            reload=self.last_reload,
        )
        if self.live is not None:
            snap = self.live.enrich(self, snap, waits)
        self.latest = dataclasses.replace(snap, records=()) if snap.records else snap
        for out in self.outputs:
            out.publish(snap)
        self._last_scan_s = time.monotonic() - t0
        self._scan_durations.observe(self._last_scan_s)
        return snap

    def symbols(self, findings: Iterable[Finding]) -> dict[int, str]:
        """The names of the findings' shrinkers, each address looked up once a run."""
        ksym = getattr(self.source, "ksym", None)  # only the real source names kernel addresses
        out = {}
        for f in findings:
            for c in f.shrinkers:
                name = self._symbols.get(c.fn)
                if name is None and ksym is not None:
                    name = self._symbols[c.fn] = ksym(c.fn)
                if name is not None:
                    out[c.fn] = name
        return out

    def _task_accounts(self) -> dict[int, Acct]:
        read = getattr(self.source, "task_accounts", None)  # fakes in tests may have none
        return read() if read is not None else {}

    def _program_stats(self) -> dict[str, tuple[int, int]]:
        read = getattr(self.source, "program_stats", None)  # only the real source has it
        return read() if read is not None else {}

    def summary(self) -> dict[str, Any]:
        """The end-of-run record: completed waits per site, the counters, and the
        episodes the stop leaves open (their ends are never said)."""
        completed = {}
        for label, h in self.completed().items():
            slots = {}
            prev = 0
            for le, n in h.buckets:
                if n > prev:
                    slots[f"{le:.12g}"] = n - prev
                prev = n
            completed[label] = SiteSummary(h.count, h.sum_s, slots)
        counters = self.counters(self.source.stats())
        still = self.episodes.still_open()
        rec = SummaryReport(self._next_seq(), self.wall_s(), completed, counters, self.oom_kills,
                            still[: self.cfg.max_tasks_per_block], len(still))
        return to_dict(rec)

    def reload(self, cfg: Config) -> None:
        """Take a new configuration at the next scan: thresholds, intervals, windows,
        the cgroup filter, the format (app/service.py checks it and says what needs a restart)."""
        self.cfg = cfg
        self.tracker.thresholds = self.episodes.thresholds = cfg.thresholds()
        self.findings.rules = cfg.window_rules()
        self.episodes.rule_threshold_ns = cfg.window_rules().threshold_ns
        self.namer.set_classify_after(cfg.classify_after_ns)
        self.policy.rules = self._block_rules(cfg)
        self._ahead_ns = self._read_ahead_ns(cfg)
        self.pods.set_directory(cfg.pod_logs_dir)

    @staticmethod
    def _block_rules(cfg: Config) -> BlockRules:
        return BlockRules(cfg.cgroups, round(cfg.report_interval_s * NS_PER_S), round(cfg.scan_interval_s * NS_PER_S),
                          cfg.max_tasks_per_block)

    @staticmethod
    def _read_ahead_ns(cfg: Config) -> int:
        """How long before its threshold a wait's facts are read: two scans, so
        that one scan at least falls between the reading and the block."""
        return 2 * round(cfg.scan_interval_s * NS_PER_S)

    def run(self, stop: threading.Event, between_scans: Callable[[], None] = lambda: None) -> None:
        """Scan every scan_interval_s until `stop` is set; a last scan at the end.
        `between_scans` runs after each scan (a reload asked for by SIGHUP)."""
        next_ns = self.clock_ns()
        while not stop.is_set():
            self.scan_once()
            between_scans()
            interval_ns = int(self.cfg.scan_interval_s * NS_PER_S)
            next_ns += interval_ns
            now_ns = self.clock_ns()
            if next_ns < now_ns:  # fell behind (a slow scan): do not burst
                next_ns = now_ns + interval_ns
            stop.wait((next_ns - now_ns) / NS_PER_S)
        self.scan_once()

