# SPDX-License-Identifier: Apache-2.0
"""Catalog selection against kernels of several eras.

6.18 is a capture of this machine's tracefs and kallsyms
(tests/fixtures/kernels/6.18, made with scripts/capture-kernel). The older
eras are described field by field from the TRACE_EVENT definitions of those
releases (each option cites the commit that made it).
"""

from pathlib import Path

import pytest

from allocwatch.core.sites import Site
from allocwatch.kernel import kernelinfo, probes
from allocwatch.kernel.kernelinfo import KernelFeatures
from allocwatch.kernel.probes import Mechanism
from tests.unit.fakes import captured

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"

SCHED = {
    "sched:sched_switch": frozenset({"prev_comm", "prev_pid", "prev_prio", "prev_state", "next_comm", "next_pid"}),
    "sched:sched_process_exit": frozenset({"comm", "pid", "prio"}),
}
RECLAIM_4_8 = frozenset({"order", "may_writepage", "gfp_flags", "classzone_idx"})
RECLAIM_5_2 = frozenset({"order", "gfp_flags"})


def era_5_10() -> KernelFeatures:
    """5.10: congestion tracepoints, wait_on_page_writeback, no reclaim_throttle."""
    tps = dict(SCHED)
    for kind in ("direct", "memcg", "memcg_softlimit", "node"):
        tps[f"vmscan:mm_vmscan_{kind}_reclaim_begin"] = RECLAIM_5_2
        tps[f"vmscan:mm_vmscan_{kind}_reclaim_end"] = frozenset({"nr_reclaimed"})
    tps["writeback:writeback_congestion_wait"] = frozenset({"usec_timeout", "usec_delayed"})
    tps["writeback:writeback_wait_iff_congested"] = frozenset({"usec_timeout", "usec_delayed"})
    tps["writeback:wait_on_page_writeback"] = frozenset({"name", "ino", "index"})
    tps["writeback:balance_dirty_pages"] = frozenset({"bdi", "pause", "paused", "period", "think"})
    tps["compaction:mm_compaction_begin"] = frozenset({"zone_start", "migrate_pfn", "free_pfn", "zone_end", "sync"})
    tps["compaction:mm_compaction_end"] = frozenset({"zone_start", "status"})
    tps["compaction:mm_compaction_try_to_compact_pages"] = frozenset({"order", "gfp_mask", "prio"})
    tps["oom:mark_victim"] = frozenset({"pid"})
    tps["oom:start_task_reaping"] = frozenset({"pid"})
    tps["oom:finish_task_reaping"] = frozenset({"pid"})
    return KernelFeatures("5.10", tps, frozenset(), kprobes=False, kprobes_why_not="no kprobes", proc_stack=True)


def era_4_9_kprobes() -> KernelFeatures:
    """4.9 with kprobes: no node reclaim tracepoints, no folio/page writeback wait tracepoint."""
    tps = dict(SCHED)
    for kind in ("direct", "memcg", "memcg_softlimit"):
        tps[f"vmscan:mm_vmscan_{kind}_reclaim_begin"] = RECLAIM_4_8
        tps[f"vmscan:mm_vmscan_{kind}_reclaim_end"] = frozenset({"nr_reclaimed"})
    tps["writeback:writeback_congestion_wait"] = frozenset({"usec_timeout", "usec_delayed"})
    tps["writeback:writeback_wait_iff_congested"] = frozenset({"usec_timeout", "usec_delayed"})
    functions = frozenset(
        {"__alloc_pages_nodemask", "__alloc_pages_slowpath", "congestion_wait", "throttle_direct_reclaim",
         "mem_cgroup_oom_synchronize", "wait_iff_congested", "__node_reclaim.isra.12", "out_of_memory"}
    )
    return KernelFeatures("4.9", tps, functions, kprobes=True, proc_stack=True)


def chosen(plans):
    return {p.site: (p.chosen.mechanism if p.chosen else None) for p in plans}


def test_captured_6_18_has_format_fields():
    f = captured("6.18")
    assert f.has_tracepoint("vmscan:mm_vmscan_throttled", ("usec_delayed", "reason"))
    assert f.has_tracepoint("oom:mark_victim", ("pid", "comm"))
    assert not f.kprobes
    assert f.find_function("__alloc_pages_slowpath") == "__alloc_pages_slowpath.constprop.0"


def test_6_18_plan():
    plans = probes.plan(captured("6.18"))
    m = chosen(plans)
    assert m[Site.MEMCG_RECLAIM] is Mechanism.TRACEPOINT_PAIR
    assert m[Site.DIRECT_RECLAIM] is Mechanism.TRACEPOINT_PAIR
    assert m[Site.TOO_MANY_ISOLATED] is Mechanism.TRACEPOINT_AFTER
    assert m[Site.RECLAIM_THROTTLE] is Mechanism.TRACEPOINT_AFTER
    assert m[Site.WRITEBACK_WAIT] is Mechanism.TRACEPOINT_BEFORE
    assert m[Site.DIRTY_THROTTLE] is Mechanism.TRACEPOINT_BEFORE
    assert m[Site.MEMCG_OOM_WAIT] is Mechanism.DSTATE_STACK
    assert m[Site.ALLOC_SLOWPATH] is Mechanism.DSTATE_STACK
    assert m[Site.OOM] is Mechanism.TRACEPOINT_EVENT
    for gone in (Site.CONGESTION_WAIT, Site.WAIT_IFF_CONGESTED, Site.THROTTLE_VM_WRITEOUT, Site.ALLOC_PAGES):
        assert m[gone] is None
    tvw = next(p for p in plans if p.site is Site.THROTTLE_VM_WRITEOUT)
    assert "CONFIG_KPROBES" in tvw.skipped[0][1]
    assert "bf48438354a7" in tvw.entry.absent


def test_5_10_plan_uses_congestion_tracepoints_and_old_writeback_name():
    m = chosen(probes.plan(era_5_10()))
    assert m[Site.CONGESTION_WAIT] is Mechanism.TRACEPOINT_AFTER
    assert m[Site.WAIT_IFF_CONGESTED] is Mechanism.TRACEPOINT_AFTER
    assert m[Site.RECLAIM_THROTTLE] is None
    assert m[Site.TOO_MANY_ISOLATED] is Mechanism.DSTATE_STACK  # the v4.13-v5.15 msleep
    plans = probes.plan(era_5_10())
    wb = next(p for p in plans if p.site is Site.WRITEBACK_WAIT)
    assert wb.chosen.define == "AW_TP_WAIT_ON_PAGE_WRITEBACK"


def test_4_9_with_kprobes_prefers_pairs_where_no_tracepoint_brackets():
    f = era_4_9_kprobes()
    plans = probes.plan(f, hot_paths=True)
    m = chosen(plans)
    assert m[Site.DIRECT_RECLAIM] is Mechanism.TRACEPOINT_PAIR  # tracepoint kept where as good
    assert m[Site.CONGESTION_WAIT] is Mechanism.KPROBE_PAIR
    assert m[Site.MEMCG_OOM_WAIT] is Mechanism.KPROBE_PAIR
    assert m[Site.NODE_RECLAIM] is Mechanism.KPROBE_PAIR
    node = next(p for p in plans if p.site is Site.NODE_RECLAIM)
    assert node.kprobe_target(f) == "__node_reclaim.isra.12"
    alloc = next(p for p in plans if p.site is Site.ALLOC_PAGES)
    assert alloc.kprobe_target(f) == "__alloc_pages_nodemask"
    assert m[Site.THROTTLE_VM_WRITEOUT] is None  # removed in v4.9 itself


def test_hot_path_and_disabled_sites_are_not_planned():
    plans = probes.plan(era_4_9_kprobes(), disabled_sites=[Site.DIRECT_RECLAIM])
    by_site = {p.site: p for p in plans}
    assert by_site[Site.ALLOC_PAGES].chosen is None and "hot path" in by_site[Site.ALLOC_PAGES].disabled
    assert by_site[Site.DIRECT_RECLAIM].disabled == "disabled in the configuration"


def test_missing_field_is_a_reason_not_a_crash():
    f = era_5_10()
    tps = dict(f.tracepoints)
    tps["writeback:balance_dirty_pages"] = frozenset({"bdi"})  # a kernel without `pause`
    f2 = KernelFeatures("x", tps, frozenset(), proc_stack=True)
    p = probes.plan_site(next(e for e in probes.CATALOG if e.site is Site.DIRTY_THROTTLE), f2)
    assert p.chosen.mechanism is Mechanism.DSTATE_STACK
    assert "lacks field(s) pause" in p.skipped[0][1]


def test_no_proc_stack_means_no_dstate_fallback():
    f = KernelFeatures("x", dict(SCHED), frozenset(), proc_stack=False)
    p = probes.plan_site(next(e for e in probes.CATALOG if e.site is Site.MEMCG_OOM_WAIT), f)
    assert p.chosen is None
    assert "/proc/<tid>/stack" in p.skipped[-1][1]


def test_stack_classified_sites_exclude_pair_timed_ones():
    plans = probes.plan(captured("6.18"))
    names = {e.site for e in probes.stack_classified_sites(plans)}
    assert Site.MEMCG_OOM_WAIT in names and Site.WRITEBACK_WAIT in names
    assert Site.MEMCG_RECLAIM not in names and Site.DIRECT_RECLAIM not in names


@pytest.mark.parametrize("text,expected", [
    ("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
     "\tfield:int order;\toffset:8;\tsize:4;\tsigned:1;\n"
     "\tfield:char bdi[32];\toffset:8;\tsize:32;\tsigned:0;\n"
     "\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n", {"order", "bdi", "comm"}),
])
def test_parse_format_fields(text, expected):
    assert kernelinfo.parse_format_fields(text) == expected


def test_base_symbol_and_fragments():
    assert kernelinfo.base_symbol("__alloc_pages_slowpath.constprop.0") == "__alloc_pages_slowpath"
    f = KernelFeatures("x", {}, frozenset({"out_of_memory.cold"}))
    assert f.find_function("out_of_memory") is None


def test_captured_6_1_guest_prefers_kprobe_pairs_where_tracepoints_do_not_bracket():
    """Debian's 6.1, captured in the virtme-ng guest: kprobes, cgroup v2."""
    f = captured("6.1")
    assert f.kprobes
    plans = probes.plan(f)
    m = chosen(plans)
    assert m[Site.MEMCG_RECLAIM] is Mechanism.TRACEPOINT_PAIR
    assert m[Site.TOO_MANY_ISOLATED] is Mechanism.TRACEPOINT_AFTER
    for site in (Site.RECLAIM_THROTTLE, Site.MEMCG_OOM_WAIT, Site.MEMCG_HIGH_THROTTLE, Site.PFMEMALLOC_THROTTLE):
        assert m[site] is Mechanism.KPROBE_PAIR, site
    by_site = {p.site: p for p in plans}
    # the slow path's clone is in kallsyms but not in available_filter_functions:
    # 6.1 refuses a kprobe there (notrace), so the D-state tracking is chosen
    assert m[Site.ALLOC_SLOWPATH] is Mechanism.DSTATE_STACK
    assert "notrace" in by_site[Site.ALLOC_SLOWPATH].skipped[0][1]
    assert by_site[Site.MEMCG_HIGH_THROTTLE].kprobe_target(f) == "mem_cgroup_handle_over_high"
    assert by_site[Site.OOM].kprobe_target(f) is None  # a tracepoint event was chosen
    assert m[Site.CONGESTION_WAIT] is None and m[Site.THROTTLE_VM_WRITEOUT] is None


def test_captured_6_12_guest():
    """Debian's 6.12: the 6.10 allocator rename, no mem_cgroup_oom_synchronize (the
    memcg OOM wait is gone from the fault path), kprobes elsewhere as on 6.1."""
    f = captured("6.12")
    assert f.kprobes and f.release.startswith("6.12")
    plans = probes.plan(f)
    m = chosen(plans)
    for site in (Site.RECLAIM_THROTTLE, Site.MEMCG_HIGH_THROTTLE, Site.PFMEMALLOC_THROTTLE):
        assert m[site] is Mechanism.KPROBE_PAIR, site
    assert m[Site.ALLOC_SLOWPATH] is Mechanism.DSTATE_STACK
    assert m[Site.MEMCG_RECLAIM] is Mechanism.TRACEPOINT_PAIR and m[Site.OOM] is Mechanism.TRACEPOINT_EVENT


def test_a_notrace_clone_is_not_chosen_for_a_kprobe():
    """Debian's 6.1 and 6.12 have __alloc_pages_slowpath.constprop.0 in kallsyms but
    not in available_filter_functions, and refuse a kprobe on it (EINVAL)."""
    from allocwatch.kernel.kernelinfo import KernelFeatures

    funcs = frozenset({"__alloc_pages_slowpath.constprop.0", "reclaim_throttle"})
    unknown = KernelFeatures(release="6.1.0", functions=funcs, kprobes=True)
    listed = KernelFeatures(release="6.1.0", functions=funcs, kprobes=True, traceable=frozenset({"reclaim_throttle"}))
    assert unknown.find_function("__alloc_pages_slowpath") == "__alloc_pages_slowpath.constprop.0"
    assert listed.find_function("__alloc_pages_slowpath") is None
    assert listed.find_function("reclaim_throttle") == "reclaim_throttle"
    assert listed.untraceable("__alloc_pages_slowpath") == ["__alloc_pages_slowpath.constprop.0"]
