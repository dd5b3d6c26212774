# SPDX-License-Identifier: Apache-2.0
"""The catalog of wait sites (data) and the pure choice of how to watch each.

Each site lists its attach options in order of preference. `plan()` takes the
first one this kernel supports and says, for every option it passed over, why.
Each option cites the kernel commit or version that made it necessary.

The catalog also says which -D flags compile the handlers of each option
(`Option.defines`): the loader passes exactly those of the options a plan may
attach, and tests/unit/test_bpf_catalog.py checks them against the C.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from allocwatch.core.sites import Site
from allocwatch.kernel.kernelinfo import KernelFeatures


class Mechanism(str, enum.Enum):
    TRACEPOINT_PAIR = "tracepoint pair"
    TRACEPOINT_AFTER = "tracepoint after the sleep"
    TRACEPOINT_BEFORE = "tracepoint before the sleep + D-state"
    TRACEPOINT_EVENT = "tracepoint event"
    KPROBE_PAIR = "kprobe pair"
    DSTATE_STACK = "sched_switch D-state + stack"

    @property
    def needs_sched_switch(self) -> bool:
        """True when the sleep is timed by the D-state tracking on sched_switch."""
        return self in (Mechanism.DSTATE_STACK, Mechanism.TRACEPOINT_BEFORE)

    @property
    def brackets_wait(self) -> bool:
        """True when begin and end are both seen, so the wait is timed in the map."""
        return self in (Mechanism.TRACEPOINT_PAIR, Mechanism.KPROBE_PAIR)


@dataclass(frozen=True)
class Tracepoint:
    name: str  # "category:event"
    fn: str  # BPF function in bpf/allocwatch.bpf.c
    fields: tuple[str, ...] = ()  # fields the handler reads


@dataclass(frozen=True)
class FieldDefine:
    """A -D flag passed when the kernel's tracepoint has these fields: the
    handler reads them only where they exist."""

    tracepoint: str  # "category:event"
    fields: tuple[str, ...]
    define: str


@dataclass(frozen=True)
class Option:
    mechanism: Mechanism
    tracepoints: tuple[Tracepoint, ...] = ()
    define: str = ""  # -D flag that compiles the handlers
    optional: tuple[tuple[Tracepoint, str], ...] = ()  # extra (tracepoint, define) if present
    functions: tuple[str, ...] = ()  # kprobe targets, first one found is used
    kprobe_fn: str = ""  # suffix of aw_kp_enter_/aw_kp_return_
    note: str = ""
    field_defines: tuple[FieldDefine, ...] = ()  # fields read where the kernel has them
    stack_define: str = ""  # -D flag by which its begin handler takes a stack (LoadOptions.begin_stacks)

    def defines(self, features: KernelFeatures, begin_stacks: bool) -> set[str]:
        """The -D flags that compile this option's handlers for this kernel."""
        out = {self.define} if self.define else set()
        out |= {d for tp, d in self.optional if features.has_tracepoint(tp.name, tp.fields)}
        out |= {f.define for f in self.field_defines if features.has_tracepoint(f.tracepoint, f.fields)}
        if begin_stacks and self.stack_define:
            out.add(self.stack_define)
        return out

    def all_defines(self) -> set[str]:
        """Every -D flag this option can ask for, on any kernel."""
        out = {self.define, self.stack_define, *(d for _, d in self.optional), *(f.define for f in self.field_defines)}
        return out - {""}


@dataclass(frozen=True)
class SiteEntry:
    site: Site
    what: str
    options: tuple[Option, ...]
    stack_frames: tuple[str, ...] = ()  # functions that name this site in a stack
    hot: bool = False  # on the allocation fast path: attached only on request
    absent: str = ""  # why a kernel may have no way to watch it
    removed_in: tuple[int, int] | None = None  # the kernel version that removed the site
    added_in: tuple[int, int] | None = None  # the kernel version that added it

    def in_kernel(self, version: tuple[int, int] | None) -> bool:
        """False when the site does not exist in a kernel of `version` at all."""
        if version is None:
            return True
        if self.removed_in is not None and version >= self.removed_in:
            return False
        return not (self.added_in is not None and version < self.added_in)


# One switch compiles every kprobe pair: bcc loads a program only when it is
# attached, so the pairs a plan does not choose cost compile time only.
KPROBES_DEFINE = "AW_KPROBES"


def _kp(*functions: str, fn: str, note: str = "") -> Option:
    return Option(Mechanism.KPROBE_PAIR, define=KPROBES_DEFINE, functions=functions, kprobe_fn=fn, note=note)


def _pair(
    category: str, prefix: str, fn: str, define: str, note: str = "", end_fields: tuple[str, ...] = (),
    optional: tuple[tuple[Tracepoint, str], ...] = (), stack_define: str = "",
) -> Option:
    return Option(
        Mechanism.TRACEPOINT_PAIR,
        tracepoints=(
            Tracepoint(f"{category}:{prefix}_begin", f"aw_{fn}_begin", ("gfp_flags", "order")),
            Tracepoint(f"{category}:{prefix}_end", f"aw_{fn}_end", end_fields),
        ),
        define=define,
        optional=optional,
        note=note,
        stack_define=stack_define,
    )


def _dstate(note: str = "") -> Option:
    return Option(Mechanism.DSTATE_STACK, note=note)


# The end summary of each shrink_inactive_list() pass, in the reclaiming task:
# what a direct or memcg reclaim wait still in flight has reclaimed so far.
RECLAIM_PROGRESS = Tracepoint("vmscan:mm_vmscan_lru_shrink_inactive", "aw_lru_shrink_inactive", ("nr_reclaimed",))
# The shrinkers a reclaim wait calls: what each was asked to scan and freed.
SHRINK_SLAB_DEFINE = "AW_TP_SHRINK_SLAB"
SHRINK_SLAB_START = Tracepoint("vmscan:mm_shrink_slab_start", "aw_shrink_slab_start",
                               ("shrink", "total_scan", "cache_items", "gfp_flags"))
SHRINK_SLAB_END = Tracepoint("vmscan:mm_shrink_slab_end", "aw_shrink_slab_end", ("shrink", "retval"))
_RECLAIM_PROGRESS = (
    (RECLAIM_PROGRESS, "AW_TP_LRU_SHRINK_INACTIVE"),
    (SHRINK_SLAB_START, SHRINK_SLAB_DEFINE),  # attached in reverse: the end before the start
    (SHRINK_SLAB_END, SHRINK_SLAB_DEFINE),
)
_THROTTLED = Tracepoint("vmscan:mm_vmscan_throttled", "aw_vmscan_throttled", ("usec_delayed", "reason"))
# The kernel stack of a task entering direct or memcg reclaim, at most once a
# second: a task looping RUNNING in reclaim has none in /proc.
BEGIN_STACKS_DEFINE = "AW_BEGIN_STACKS"
# What balance_dirty_pages says of the pause it chose, on every kernel from v6.1 to
# v6.18 (the bdi_*/wb_* pair is left out: renamed by f1ab2831e2a4, v6.15).
BALANCE_DIRTY_PAGES = "writeback:balance_dirty_pages"
DIRTY_PAUSE_FIELDS = ("dirty", "setpoint", "limit", "pause", "period", "think", "paused", "dirtied", "dirtied_pause")
DIRTY_PAUSE_DEFINE = "AW_HAVE_DIRTY_PAUSE"
# Which device a writeback wait waits on: the bdi's name and the inode, as
# folio_wait_writeback (and wait_on_page_writeback before v5.16) give them.
FOLIO_WAIT_WRITEBACK = "writeback:folio_wait_writeback"
WAIT_ON_PAGE_WRITEBACK = "writeback:wait_on_page_writeback"
WB_NOTE_FIELDS = ("name", "ino")
WB_NOTE_DEFINE = "AW_HAVE_WB_NOTE"
MARK_VICTIM = "oom:mark_victim"
MARK_VICTIM_COMM_DEFINE = "AW_HAVE_MARK_VICTIM_COMM"
# ef8444ea01d7 ("mm: update mark_victim tracepoints fields", v6.9; backported to 6.1.y)
MARK_VICTIM_RSS_FIELDS = ("anon_rss", "file_rss", "shmem_rss", "uid", "oom_score_adj")
MARK_VICTIM_RSS_DEFINE = "AW_HAVE_MARK_VICTIM_RSS"

CATALOG: tuple[SiteEntry, ...] = (
    SiteEntry(
        Site.ALLOC_SLOWPATH,
        "page allocator slow path",
        (
            _kp("__alloc_pages_slowpath", fn="alloc_slowpath", note="static: may be a .constprop clone"),
            _dstate("no tracepoint marks slowpath entry"),
        ),
        stack_frames=("__alloc_pages_slowpath",),
    ),
    SiteEntry(
        Site.ALLOC_PAGES,
        "page allocator entry (every allocation)",
        (
            _kp(
                "__alloc_frozen_pages_noprof",  # v6.14+
                "__alloc_pages_noprof",  # b951aaff5035 (v6.10)
                "__alloc_pages",  # 84172f4bb752 (v5.13)
                "__alloc_pages_nodemask",  # up to v5.12
                fn="alloc_pages",
            ),
        ),
        hot=True,
        absent="kmem:mm_page_alloc fires only at exit; the entry needs a kprobe pair",
    ),
    SiteEntry(
        Site.DIRECT_RECLAIM,
        "direct reclaim (try_to_free_pages)",
        (
            _pair("vmscan", "mm_vmscan_direct_reclaim", "direct_reclaim", "AW_TP_DIRECT_RECLAIM",
                  end_fields=("nr_reclaimed",), optional=_RECLAIM_PROGRESS, stack_define=BEGIN_STACKS_DEFINE),
            _kp("try_to_free_pages", fn="direct_reclaim"),
        ),
        stack_frames=("try_to_free_pages",),
    ),
    SiteEntry(
        Site.MEMCG_RECLAIM,
        "memcg limit/high reclaim (try_to_free_mem_cgroup_pages)",
        (
            _pair("vmscan", "mm_vmscan_memcg_reclaim", "memcg_reclaim", "AW_TP_MEMCG_RECLAIM",
                  end_fields=("nr_reclaimed",), optional=_RECLAIM_PROGRESS, stack_define=BEGIN_STACKS_DEFINE),
            _kp("try_to_free_mem_cgroup_pages", fn="memcg_reclaim"),
        ),
        stack_frames=("try_to_free_mem_cgroup_pages",),
    ),
    SiteEntry(
        Site.MEMCG_SOFTLIMIT_RECLAIM,
        "memcg v1 soft-limit reclaim",
        (
            _pair(
                "vmscan",
                "mm_vmscan_memcg_softlimit_reclaim",
                "memcg_softlimit_reclaim",
                "AW_TP_MEMCG_SOFTLIMIT_RECLAIM",
            ),
            _kp("mem_cgroup_shrink_node", fn="memcg_softlimit_reclaim"),
        ),
    ),
    SiteEntry(
        Site.NODE_RECLAIM,
        "node reclaim (zone_reclaim_mode)",
        (
            _pair("vmscan", "mm_vmscan_node_reclaim", "node_reclaim", "AW_TP_NODE_RECLAIM", "v5.2+"),
            _kp("__node_reclaim", fn="node_reclaim"),
        ),
    ),
    SiteEntry(
        Site.TOO_MANY_ISOLATED,
        "shrink_inactive_list() too_many_isolated() wait",
        (
            Option(
                Mechanism.TRACEPOINT_AFTER,
                (_THROTTLED,),
                "AW_TP_VMSCAN_THROTTLED",
                note="reason ISOLATED: d818fca1cac3 (v5.16)",
            ),
            _dstate("v4.13-v5.15: one msleep(100), db73ee0d4637; no tracepoint"),
        ),
        stack_frames=("shrink_inactive_list",),
    ),
    SiteEntry(
        Site.RECLAIM_THROTTLE,
        "reclaim_throttle() (writeback, no progress, congestion)",
        (
            _kp("reclaim_throttle", fn="reclaim_throttle", note="v5.16+"),
            Option(
                Mechanism.TRACEPOINT_AFTER,
                (_THROTTLED,),
                "AW_TP_VMSCAN_THROTTLED",
                note="8cd7c588decf (v5.16)",
            ),
        ),
        stack_frames=("reclaim_throttle",),
        absent="reclaim_throttle() is v5.16+; older kernels wait in congestion_wait",
        added_in=(5, 16),
    ),
    SiteEntry(
        Site.CONGESTION_WAIT,
        "congestion_wait()",
        (
            _kp("congestion_wait", fn="congestion_wait"),
            Option(
                Mechanism.TRACEPOINT_AFTER,
                (Tracepoint("writeback:writeback_congestion_wait", "aw_congestion_wait", ("usec_delayed",)),),
                "AW_TP_CONGESTION_WAIT",
            ),
        ),
        stack_frames=("congestion_wait",),
        absent="congestion_wait() was removed with congestion tracking (v5.18)",
        removed_in=(5, 18),
    ),
    SiteEntry(
        Site.WAIT_IFF_CONGESTED,
        "wait_iff_congested()",
        (
            _kp("wait_iff_congested", fn="wait_iff_congested"),
            Option(
                Mechanism.TRACEPOINT_AFTER,
                (Tracepoint("writeback:writeback_wait_iff_congested", "aw_wait_iff_congested", ("usec_delayed",)),),
                "AW_TP_WAIT_IFF_CONGESTED",
            ),
        ),
        stack_frames=("wait_iff_congested",),
        absent="wait_iff_congested() was removed by 8cd7c588decf (v5.16)",
        removed_in=(5, 16),
    ),
    SiteEntry(
        Site.THROTTLE_VM_WRITEOUT,
        "throttle_vm_writeout()",
        (_kp("throttle_vm_writeout", fn="throttle_vm_writeout"),),
        stack_frames=("throttle_vm_writeout",),
        absent="throttle_vm_writeout() was removed by bf48438354a7 (v4.9); nothing replaced it",
        removed_in=(4, 9),
    ),
    SiteEntry(
        Site.COMPACTION,
        "direct compaction",
        (
            Option(
                Mechanism.TRACEPOINT_PAIR,
                (
                    Tracepoint("compaction:mm_compaction_begin", "aw_compaction_begin"),
                    Tracepoint("compaction:mm_compaction_end", "aw_compaction_end", ("status",)),
                ),
                "AW_TP_COMPACTION",
                optional=(
                    (
                        Tracepoint(
                            "compaction:mm_compaction_try_to_compact_pages",
                            "aw_try_to_compact_pages",
                            ("gfp_mask", "order"),
                        ),
                        "AW_TP_TRY_TO_COMPACT_PAGES",
                    ),
                ),
                note="per-zone pairs; gfp and order from try_to_compact_pages (v4.0+)",
            ),
            _kp("try_to_compact_pages", fn="compaction"),
        ),
        stack_frames=("try_to_compact_pages", "compact_zone"),
    ),
    SiteEntry(
        Site.DIRTY_THROTTLE,
        "balance_dirty_pages() dirty throttling",
        (
            Option(
                Mechanism.TRACEPOINT_BEFORE,
                (Tracepoint(BALANCE_DIRTY_PAGES, "aw_balance_dirty_pages", ("pause",)),),
                "AW_TP_BALANCE_DIRTY_PAGES",
                note="v3.2+; fires before each pause, the sleep is timed at sched_switch",
                field_defines=(FieldDefine(BALANCE_DIRTY_PAGES, DIRTY_PAUSE_FIELDS, DIRTY_PAUSE_DEFINE),),
            ),
            _kp("balance_dirty_pages", fn="dirty_throttle"),
            _dstate(),
        ),
        stack_frames=("balance_dirty_pages",),
    ),
    SiteEntry(
        Site.WRITEBACK_WAIT,
        "waiting for page/folio writeback",
        (
            Option(
                Mechanism.TRACEPOINT_BEFORE,
                (Tracepoint(FOLIO_WAIT_WRITEBACK, "aw_folio_wait_writeback"),),
                "AW_TP_FOLIO_WAIT_WRITEBACK",
                note="v5.16+ (renamed from wait_on_page_writeback)",
                field_defines=(FieldDefine(FOLIO_WAIT_WRITEBACK, WB_NOTE_FIELDS, WB_NOTE_DEFINE),),
            ),
            Option(
                Mechanism.TRACEPOINT_BEFORE,
                (Tracepoint(WAIT_ON_PAGE_WRITEBACK, "aw_wait_on_page_writeback"),),
                "AW_TP_WAIT_ON_PAGE_WRITEBACK",
                note="19343b5bdd16 (v5.2) to v5.15",
                field_defines=(FieldDefine(WAIT_ON_PAGE_WRITEBACK, WB_NOTE_FIELDS, WB_NOTE_DEFINE),),
            ),
            _kp("folio_wait_writeback", "wait_on_page_writeback", fn="writeback_wait"),
            _dstate(),
        ),
        stack_frames=("folio_wait_writeback", "wait_on_page_writeback"),
    ),
    SiteEntry(
        Site.PFMEMALLOC_THROTTLE,
        "throttle_direct_reclaim() (pfmemalloc reserves)",
        (_kp("throttle_direct_reclaim", fn="pfmemalloc_throttle"), _dstate("no tracepoint")),
        stack_frames=("throttle_direct_reclaim",),
    ),
    SiteEntry(
        Site.MEMCG_OOM_WAIT,
        "memcg OOM wait (mem_cgroup_oom_synchronize, v1 oom_kill_disable)",
        (_kp("mem_cgroup_oom_synchronize", fn="memcg_oom_wait"), _dstate("no tracepoint")),
        stack_frames=("mem_cgroup_oom_synchronize",),
    ),
    SiteEntry(
        Site.MEMCG_HIGH_THROTTLE,
        "memory.high penalty sleep",
        (
            _kp("__mem_cgroup_handle_over_high", "mem_cgroup_handle_over_high", fn="memcg_high_throttle"),
            _dstate("no tracepoint"),
        ),
        stack_frames=("__mem_cgroup_handle_over_high", "mem_cgroup_handle_over_high"),
    ),
    SiteEntry(
        Site.OOM,
        "OOM killer (kills; sleeps inside the OOM path)",
        (
            Option(
                Mechanism.TRACEPOINT_EVENT,
                (Tracepoint(MARK_VICTIM, "aw_mark_victim", ("pid",)),),
                "AW_TP_MARK_VICTIM",
                note="v4.13+; victim comm since v6.9",
                field_defines=(
                    FieldDefine(MARK_VICTIM, ("comm",), MARK_VICTIM_COMM_DEFINE),
                    FieldDefine(MARK_VICTIM, MARK_VICTIM_RSS_FIELDS, MARK_VICTIM_RSS_DEFINE),
                ),
            ),
            _kp("out_of_memory", fn="oom"),
        ),
        stack_frames=("out_of_memory", "mem_cgroup_out_of_memory", "__alloc_pages_may_oom"),
    ),
    SiteEntry(
        Site.OOM_REAPER,
        "OOM reaper working on a victim",
        (
            Option(
                Mechanism.TRACEPOINT_PAIR,
                (
                    Tracepoint("oom:start_task_reaping", "aw_start_task_reaping", ("pid",)),
                    Tracepoint("oom:finish_task_reaping", "aw_finish_task_reaping", ("pid",)),
                ),
                "AW_TP_OOM_REAPER",
                note="v4.13+",
            ),
        ),
    ),
)

# Always attached when anything uses D-state tracking, and for map clean-up.
SCHED_SWITCH = Tracepoint("sched:sched_switch", "aw_sched_switch", ("prev_state", "prev_pid", "next_pid"))
SCHED_EXIT = Tracepoint("sched:sched_process_exit", "aw_sched_process_exit", ("pid",))
# Lets a report say a wait ended because the task was SIGKILLed (optional).
SIGNAL_GENERATE = Tracepoint("signal:signal_generate", "aw_signal_generate", ("sig", "pid"))
SIGNAL_GENERATE_DEFINE = "AW_TP_SIGNAL_GENERATE"
# Tracepoints the loader attaches whatever the plan, where the kernel has them, and
# the -D flag that compiles each handler. (sched_switch and sched_process_exit are
# always compiled: every kernel has them.)
LOADER_TRACEPOINTS: tuple[tuple[Tracepoint, str], ...] = ((SIGNAL_GENERATE, SIGNAL_GENERATE_DEFINE),)


@dataclass(frozen=True)
class SitePlan:
    entry: SiteEntry
    chosen: Option | None
    skipped: tuple[tuple[Option, str], ...]  # options passed over, and why
    disabled: str = ""  # set when configuration turned the site off
    fallbacks: tuple[Option, ...] = ()  # later options this kernel supports too

    def failed_over(self, why: str) -> SitePlan:
        """The plan once the chosen option failed to attach: the next one."""
        assert self.chosen is not None
        skipped = (*self.skipped, (self.chosen, why))
        nxt = self.fallbacks[0] if self.fallbacks else None
        return SitePlan(self.entry, nxt, skipped, self.disabled, self.fallbacks[1:])

    @property
    def site(self) -> Site:
        return self.entry.site

    def kprobe_target(self, features: KernelFeatures) -> str | None:
        if self.chosen is None or self.chosen.mechanism is not Mechanism.KPROBE_PAIR:
            return None
        return next(filter(None, map(features.find_function, self.chosen.functions)), None)


def tracepoints_to_attach(opt: Option, features: KernelFeatures) -> list[Tracepoint]:
    """What attaching `opt` attaches on this kernel, in order: its tracepoints, the
    optional ones the kernel has with their fields, and sched_switch if it needs it.
    The live attach and the offline prediction both use it, so they cannot differ."""
    tps = list(opt.tracepoints)
    tps += [tp for tp, _ in opt.optional if features.has_tracepoint(tp.name, tp.fields)]
    if opt.mechanism.needs_sched_switch:
        tps.append(SCHED_SWITCH)
    return tps


def all_tracepoint_names() -> set[str]:
    names = {SCHED_SWITCH.name, SCHED_EXIT.name, SIGNAL_GENERATE.name}
    for entry in CATALOG:
        for opt in entry.options:
            names.update(tp.name for tp in opt.tracepoints)
            names.update(tp.name for tp, _ in opt.optional)
    return names


def all_function_names() -> set[str]:
    return {f for e in CATALOG for o in e.options for f in o.functions}


def compile_defines(
    plans: Iterable[SitePlan], features: KernelFeatures, begin_stacks: bool, every_kprobe: bool = False
) -> list[str]:
    """The -D flags (sorted names) that compile what these plans may attach on
    this kernel: each chosen option's and its fall-backs' (an option that fails to
    attach falls over to the next), and the loader's own tracepoints the kernel
    has. `every_kprobe` compiles every kprobe pair, chosen or not, so that a
    test can put them all through the verifier."""
    defines = {d for tp, d in LOADER_TRACEPOINTS if features.has_tracepoint(tp.name, tp.fields)}
    for p in plans:
        for opt in (p.chosen, *p.fallbacks) if p.chosen else ():
            defines |= opt.defines(features, begin_stacks)
    if every_kprobe:
        defines |= {o.define for e in CATALOG for o in e.options if o.mechanism is Mechanism.KPROBE_PAIR}
    return sorted(defines)


def every_define() -> set[str]:
    """Every -D flag the catalog and the loader's tracepoints can ask for."""
    return {d for _, d in LOADER_TRACEPOINTS} | {d for e in CATALOG for o in e.options for d in o.all_defines()}


def _why_not(opt: Option, features: KernelFeatures) -> str:
    """Why `opt` cannot be used on this kernel; empty when it can."""
    if opt.mechanism is Mechanism.KPROBE_PAIR:
        if not features.kprobes:
            return features.kprobes_why_not or "no kprobes on this kernel"
        if not any(features.find_function(f) for f in opt.functions):
            notrace = [sym for f in opt.functions for sym in features.untraceable(f)]
            if notrace:
                return (f"{' / '.join(notrace)} cannot take a kprobe: not in available_filter_functions "
                        "(notrace; refused since v5.0)")
            return f"no function {' / '.join(opt.functions)} in kallsyms (inlined, renamed or absent)"
        return ""
    if opt.mechanism is Mechanism.DSTATE_STACK:
        if not features.has_tracepoint(SCHED_SWITCH.name, SCHED_SWITCH.fields):
            return "no sched:sched_switch tracepoint"
        if features.foreign_pids:
            return f"{features.foreign_pids}: the task's /proc/<tid>/stack cannot be found"
        if not features.proc_stack:
            return "/proc/<tid>/stack is not readable (needs root and CONFIG_STACKTRACE)"
        return ""
    for tp in opt.tracepoints:
        if tp.name not in features.tracepoints:
            return f"no tracepoint {tp.name} on this kernel"
        if not features.has_tracepoint(tp.name, tp.fields):
            return f"tracepoint {tp.name} lacks field(s) {', '.join(tp.fields)}"
    if opt.mechanism is Mechanism.TRACEPOINT_BEFORE and not features.has_tracepoint(
        SCHED_SWITCH.name, SCHED_SWITCH.fields
    ):
        return "no sched:sched_switch tracepoint to time the sleep"
    return ""


def plan_site(entry: SiteEntry, features: KernelFeatures, disabled: str = "") -> SitePlan:
    if disabled:
        return SitePlan(entry, None, (), disabled)
    skipped: list[tuple[Option, str]] = []
    for i, opt in enumerate(entry.options):
        why = _why_not(opt, features)
        if not why:
            fallbacks = tuple(o for o in entry.options[i + 1 :] if not _why_not(o, features))
            return SitePlan(entry, opt, tuple(skipped), fallbacks=fallbacks)
        skipped.append((opt, why))
    return SitePlan(entry, None, tuple(skipped))


def plan(
    features: KernelFeatures,
    disabled_sites: Iterable[Site] = (),
    hot_paths: bool = False,
) -> list[SitePlan]:
    """Choose an attach option for every site in the catalog."""
    off = set(disabled_sites)
    plans = []
    for entry in CATALOG:
        why_off = ""
        if entry.site in off:
            why_off = "disabled in the configuration"
        elif entry.hot and not hot_paths:
            why_off = "hot path: attached only with hot_paths: true"
        plans.append(plan_site(entry, features, why_off))
    return plans


def stack_classified_sites(plans: Iterable[SitePlan]) -> list[SiteEntry]:
    """Sites a D-state stack may be named after: those no pair already times.

    A sleep is named after the innermost such site in its stack; sites timed by
    a begin/end pair are left out so one wait is not reported twice.
    """
    return [
        p.entry
        for p in plans
        if p.entry.stack_frames
        and not p.disabled
        and not (p.chosen is not None and p.chosen.mechanism.brackets_wait)
    ]


def uses_dstate(plans: Iterable[SitePlan]) -> bool:
    return any(p.chosen is not None and p.chosen.mechanism.needs_sched_switch for p in plans)
