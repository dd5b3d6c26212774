# SPDX-License-Identifier: Apache-2.0
"""A configuration made into programs that watch: what `run`, `probes` and top's own session share.

`Session.open(cfg)` checks the capabilities, mounts tracefs where it may, reads
what the running kernel offers, plans a way to each wait site, and compiles,
loads and attaches the BPF programs. `Session.daemon()` then gives the scan
loop over them, with the kernel's own names for gfp flags, compaction results
and throttle reasons. `close()` detaches everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from allocwatch import config
from allocwatch.app import preflight, selfcare
from allocwatch.app.daemon import Daemon, Output
from allocwatch.app.live import LiveReader
from allocwatch.errors import NothingAttached
from allocwatch.kernel import coverage, gfpnames, kernelinfo, oomcontext, probes, schedswitch, taskiter

if TYPE_CHECKING:
    from allocwatch.kernel.bpfsource import BpfSource


def read_features(
    cfg: config.Config, tracefs: Path | None = None, kallsyms: Path | None = None
) -> kernelinfo.KernelFeatures:
    """What the running kernel offers, or (with `tracefs`) a captured copy of one."""
    root = tracefs or Path(cfg.tracefs)
    return kernelinfo.read_features(
        root,
        probes.all_tracepoint_names(),
        probes.all_function_names(),
        kallsyms=kallsyms or (Path("/proc/kallsyms") if tracefs is None else tracefs / "kallsyms"),
        sysfs=Path("/sys") if tracefs is None else tracefs,
        release=None if tracefs is None else _captured_release(tracefs),
        assume_proc_stack=None if tracefs is None else True,
        # a captured kernel is planned as the host's; this /proc says nothing of it
        foreign_pids="" if tracefs is not None else preflight.pid_view(cfg.foreign_pid_namespace),
    )


def _captured_release(tracefs: Path) -> str:
    try:
        return (tracefs / "release").read_text().strip() + f" (captured at {tracefs})"
    except OSError:
        return f"captured at {tracefs}"


def prepare(cfg: config.Config) -> None:
    """Before anything is loaded: the capabilities BPF needs, a /proc that shows
    the kernel's tids (or the configuration's word to run without), and tracefs."""
    preflight.require_capabilities()
    preflight.pid_view(cfg.foreign_pid_namespace)
    mount_tracefs(cfg)


def mount_tracefs(cfg: config.Config) -> None:
    if preflight.ensure_tracefs(Path(cfg.tracefs)):
        preflight.say(f"tracefs was not mounted: mounted it at {preflight.TRACEFS_STANDARD}")


def load_source(cfg: config.Config, plans: list[probes.SitePlan], features: kernelinfo.KernelFeatures) -> BpfSource:
    """Compile, load and attach."""
    from allocwatch.kernel.bpfsource import BpfSource, LoadOptions

    # without: an OOM kill's cgroups are read from /proc afterwards, its constraint inferred
    with_oc = features.kprobes and features.find_function(oomcontext.OC_FUNCTION) == oomcontext.OC_FUNCTION
    oom_defines, constraints, _ = oomcontext.running_kernel_defines(with_oc)
    switch_defines, _ = schedswitch.running_kernel_defines()  # without: the classic sched_switch
    iter_defines, iter_why_not = taskiter.running_kernel_defines()  # without: a block reads each task's stat
    opts = LoadOptions(
        long_wait_ns=cfg.thresholds().min_ns,
        dstate_end_ns=cfg.classify_after_ns,
        begin_stacks=cfg.begin_stacks,
        max_waits=cfg.max_inflight,
        max_dwaits=cfg.max_inflight,
        oom_defines=tuple(oom_defines),
        oom_constraints=tuple(constraints.items()),
        switch_defines=tuple(switch_defines),
        iter_defines=tuple(iter_defines),
        iter_why_not=iter_why_not,
        loader_process=True,  # bcc's libraries stay out of the daemon (kernel/loader.py)
    )
    source = BpfSource(plans, features, opts)
    source.load()
    return source


def gfp_table(cfg: config.Config) -> list[tuple[int, str]]:
    """The running kernel's gfp flag names, from the first reclaim-begin event that has them."""
    for event in ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_direct_reclaim_begin"):
        table = gfpnames.read_table(Path(cfg.tracefs), event)
        if table:
            return table
    return []


def throttle_names(cfg: config.Config) -> dict[int, str]:
    return gfpnames.read_throttle_reasons(Path(cfg.tracefs))


def compaction_names(cfg: config.Config) -> dict[int, str]:
    return gfpnames.read_symbolic(Path(cfg.tracefs), "compaction/mm_compaction_end", "status")


class Session:
    def __init__(
        self, cfg: config.Config, features: kernelinfo.KernelFeatures, source: BpfSource,
        rss_kib: dict[str, int] | None = None, load_seconds: float = 0.0,
    ) -> None:
        self.cfg = cfg
        self.features = features
        self.source = source
        self.rss_kib = rss_kib or {}  # RssAnon and RssFile (KiB) once loaded
        self.load_seconds = load_seconds  # compile, load, attach (in the loader process), handed over

    @classmethod
    def open(cls, cfg: config.Config) -> Session:
        """Everything up to attached programs; NothingAttached when no site could be."""
        prepare(cfg)
        session = cls.load(cfg)
        try:
            session.require_attached()
        except BaseException:
            session.close()
            raise
        return session

    @classmethod
    def load(cls, cfg: config.Config) -> Session:
        """The kernel's features read, the sites planned, the programs loaded (after `prepare`)."""
        features = read_features(cfg)
        t0 = time.monotonic()
        source = load_source(cfg, probes.plan(features, cfg.disabled, cfg.hot_paths), features)
        return cls(cfg, features, source, selfcare.rss_kib(), time.monotonic() - t0)

    def require_attached(self) -> None:
        if not any(s.attached for s in self.source.status):
            raise NothingAttached("no wait site could be attached: see 'allocwatch probes' for why")

    def blind_note(self) -> str | None:
        """The start-up line when its /proc is not the host's PID namespace's, else None."""
        why = self.features.foreign_pids
        blind = [s.plan.site.label for s in self.source.status if not s.attached and why and why in coverage.why_not(s)]
        return preflight.pid_namespace_note(why, blind)

    def line(self) -> str:
        """What is watched, in one line (the READY status, the announce line)."""
        return coverage.summarize(self.source.status).line()

    def daemon(
        self, outputs: Sequence[Output], live_wanted: Callable[[], bool] | None = None,
        on_error: Callable[[str], None] = lambda line: None,
    ) -> Daemon:
        """The scan loop over this session's programs. With `live_wanted`, each
        snapshot carries the live view while it says so."""
        effective = self.source.effective_plans
        daemon = Daemon(
            self.cfg, self.source, effective, outputs, coverage=coverage.snapshot_coverage(self.source.status),
            kernel=self.features.release, gfp_table=gfp_table(self.cfg),
            compaction_names=compaction_names(self.cfg), throttle_names=throttle_names(self.cfg),
        )
        if live_wanted is not None:
            daemon.live = LiveReader(live_wanted, on_error=on_error)
        daemon.on_limit = on_error
        return daemon

    def seed(self, daemon: Daemon) -> int:
        """Tasks already asleep in D, timed from now (when D sleeps are watched): how many."""
        return daemon.seed_preexisting() if probes.uses_dstate(self.source.effective_plans) else 0

    def close(self) -> None:
        self.source.close()

