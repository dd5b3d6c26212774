# SPDX-License-Identifier: Apache-2.0
"""OOM kills as reported (issue 26, item 1): the kernel's context joined to its
kill, cgroup ids named, a storm folded into one report per cgroup per scan with
every kill counted."""

from __future__ import annotations

import json
import os

from allocwatch.core import oomkills
from allocwatch.core.model import OomContext, OomKill, VictimMemory, WaitEnd
from allocwatch.core.oomkills import KillSeen
from allocwatch.core.records import OOM_VICTIMS_LISTED, OomKillReport, to_dict
from allocwatch.kernel import memcgids, wire
from allocwatch.kernel.mountinfo import parse_line
from allocwatch.outputs import report


def kill(victim: int, invoker: int = 100, comm: str = "stress-ng", anon_kb: int = 1000) -> OomKill:
    return OomKill(0, victim, comm, invoker, invoker, "stress-ng",
                   VictimMemory(anon_kb, 0, 0, 0, 0))


def seen(victim: int, cgroup: str | None = "/aw", constraint: str | None = "memcg", anon_kb: int = 1000) -> KillSeen:
    return KillSeen(kill(victim, anon_kb=anon_kb), cgroup, cgroup, constraint, from_kernel=True)


# --- the kernel's context, joined ----------------------------------------------------


def test_a_kill_takes_its_own_context_whichever_comes_first_and_a_late_one_waits_a_drain():
    end = WaitEnd(1, 1, "a", 0, 0, 0, None, None, None)
    ctx = OomContext(victim_pid=7, invoker_tid=100, victim_memcg_id=11, invoker_memcg_id=12, memcg_oom=True)
    other = OomContext(victim_pid=8, invoker_tid=100, victim_memcg_id=13, invoker_memcg_id=12, memcg_oom=False)
    held: dict = {}
    out = wire.join_oom_contexts([ctx, end, kill(8), kill(7), other], held)
    assert out[0] == end
    assert (out[1].victim_memcg_id, out[1].memcg_oom) == (13, False)  # its context came after it
    assert (out[2].victim_memcg_id, out[2].invoker_memcg_id, out[2].memcg_oom) == (11, 12, True)
    assert held == {}
    late = OomContext(victim_pid=9, invoker_tid=101, victim_memcg_id=14, invoker_memcg_id=14, memcg_oom=True)
    assert wire.join_oom_contexts([late], held) == [] and held
    (k,) = wire.join_oom_contexts([kill(9, invoker=101)], held)
    assert k.victim_memcg_id == 14 and held == {}
    (k,) = wire.join_oom_contexts([kill(9, invoker=101)], held)  # taken once: a second kill has none
    assert k.memcg_oom is None


def test_decode_the_context_record_and_its_flags():
    ev = wire.OomContextEvent(time_ns=5, victim_cgroup_id=11, kind=wire.EV_OOM_CONTEXT, victim_pid=7,
                              invoker_tid=100, flags=wire.OOMCTX_STACK | wire.OOMCTX_MEMCG, invoker_cgroup_id=0)
    c = wire.decode_oom_context(bytes(ev))
    assert c == OomContext(7, 100, 11, None, True)
    ev.flags = wire.OOMCTX_STACK
    assert wire.decode_oom_context(bytes(ev)).memcg_oom is False
    ev.flags = 0  # the stack could not be read: unknown, not "global"
    assert wire.decode_oom_context(bytes(ev)).memcg_oom is None
    assert wire.decode_event(bytes(ev)) is None and wire.decode_oom_context(bytes(ev)[:20]) is None


def test_the_kernels_own_oom_control_outranks_the_stack_and_names_the_gfp_order_and_group():
    words = {0: "global", 1: "cpuset", 2: "mempolicy", 3: "memcg"}
    ev = wire.OomContextEvent(kind=wire.EV_OOM_CONTEXT, victim_pid=7, invoker_tid=100, victim_cgroup_id=11,
                              flags=wire.OOMCTX_STACK | wire.OOMCTX_MEMCG | wire.OOMCTX_OC, gfp=0x140CCA,
                              order=3, constraint=1, domain_cgroup_id=0)
    c = wire.decode_oom_context(bytes(ev), words)
    assert (c.constraint, c.memcg_oom, c.gfp, c.order, c.oom_memcg_id) == ("cpuset", False, 0x140CCA, 3, None)
    ev.constraint, ev.domain_cgroup_id = 3, 21
    c = wire.decode_oom_context(bytes(ev), words)
    assert (c.constraint, c.memcg_oom, c.oom_memcg_id) == ("memcg", True, 21)
    ev.flags = wire.OOMCTX_STACK  # without oc: the stack's word only, nothing of gfp or order
    c = wire.decode_oom_context(bytes(ev), words)
    assert (c.constraint, c.memcg_oom, c.gfp, c.order, c.oom_memcg_id) == (None, False, None, None, None)
    (k,) = wire.join_oom_contexts([wire.decode_oom_context(bytes(ev), words), kill(7)])
    assert k.memcg_oom is False and k.gfp is None


# --- ids named ----------------------------------------------------------------------


def test_ids_are_named_by_a_walk_of_the_memory_hierarchy_only_when_one_is_new(tmp_path):
    point = tmp_path / "memory"
    (point / "a" / "b\x1cevil").mkdir(parents=True)
    (point / "c").mkdir()
    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 20 0:26 / {point} rw - cgroup cgroup rw,memory\n"
                  f"31 20 0:27 / {tmp_path / 'other'} rw - cgroup cgroup rw,cpu\n")
    ino = {p: os.stat(point / p).st_ino for p in ("", "a", "a/b\x1cevil", "c")}
    paths = memcgids.MemcgPaths(mi)
    got = paths.paths([ino["a/b\x1cevil"], ino[""], None, 0])
    assert got == {ino["a/b\x1cevil"]: "/a/b\x1cevil", ino[""]: "/"} and paths.walks == 1
    assert paths.paths([ino["c"], ino["a"]]) == {ino["c"]: "/c", ino["a"]: "/a"} and paths.walks == 1
    assert paths.paths([123456789]) == {} and paths.walks == 2  # unknown: one walk, no name


def test_a_mount_that_shows_part_of_the_hierarchy_names_paths_from_its_root(tmp_path):
    (tmp_path / "x").mkdir()
    m = parse_line(f"30 20 0:26 /kubepods {tmp_path} rw - cgroup2 cgroup2 rw")
    assert memcgids.memory_hierarchy([m]) == ("/kubepods", tmp_path)
    assert set(memcgids.walk("/kubepods", tmp_path).values()) == {"/kubepods", "/kubepods/x"}


# --- folded ---------------------------------------------------------------------------


def test_a_storm_folds_to_one_report_per_cgroup_in_order():
    kills = [seen(1, "/a"), seen(2, "/b"), seen(3, "/a"), seen(4, None, None)]
    groups = oomkills.fold(kills)
    assert [[k.kill.victim_pid for k in g] for g in groups] == [[1, 3], [2], [4]]
    assert oomkills.largest([seen(1, anon_kb=5), seen(2, anon_kb=9), seen(3, anon_kb=9)]).kill.victim_pid == 2
    assert oomkills.constraints([seen(1), seen(2, constraint=None)]) == {"memcg": 1, "unknown": 1}


def test_a_folded_report_counts_every_kill_lists_some_and_says_one_line():
    kills = tuple(seen(i, anon_kb=i) for i in range(1, 38))
    d = json.loads(json.dumps(to_dict(OomKillReport(5, 0.0, kills, 1.0))))
    assert d["count"] == 37 and d["cgroup"] == "/aw" and d["constraint"] == "memcg"
    assert d["constraint_source"] == "kernel" and d["victim_pid"] == 37 and d["victim_anon_rss_kb"] == 37
    assert len(d["victims"]) == OOM_VICTIMS_LISTED and d["victims_left_out"] == 37 - OOM_VICTIMS_LISTED
    text = report.record_text(d, "allocwatch:")
    assert text.count("\n") == 1, text
    assert text.startswith("allocwatch: oom kills #5: 37 in cgroup=/aw in the last 1.0s, constraint=memcg; ")
    assert "victims: stress-ng x37 (pids 1 2 3 4 5 6 7 8 ...)" in text
    assert "largest pid=37 comm=stress-ng" in text and "invoked by stress-ng x37" in text
    assert d["victim_comms"] == {"stress-ng": 37}


def test_a_kill_with_the_kernels_oom_control_says_its_gfp_order_and_the_group_out_of_memory():
    k = KillSeen(kill(7), "/g/child", "/g/child", "memcg", True, gfp_flags="GFP_NOFS|__GFP_WRITE", order=3,
                 oom_cgroup="/g")
    d = to_dict(OomKillReport(2, 0.0, (k,), 1.0))
    assert (d["oom_cgroup"], d["gfp_flags"], d["order"]) == ("/g", "GFP_NOFS|__GFP_WRITE", 3)
    assert d["victims"][0]["gfp_flags"] == "GFP_NOFS|__GFP_WRITE" and d["victims"][0]["order"] == 3
    text = report.record_text(d, "allocwatch:")
    assert text.rstrip().endswith("constraint=memcg oom_cgroup=/g gfp=GFP_NOFS|__GFP_WRITE order=3"), text


def test_one_kill_reads_as_before_and_an_inferred_constraint_says_so():
    one = KillSeen(kill(7), "/v", "/i", "global", from_kernel=False)
    d = to_dict(OomKillReport(2, 0.0, (one,), 1.0))
    text = report.record_text(d, "allocwatch:")
    assert "oom kill #2: victim pid=7 comm=stress-ng" in text and "cgroup=/v" in text
    assert text.rstrip().endswith("cgroup=/i constraint=global(inferred)"), text
    mixed = to_dict(OomKillReport(3, 0.0, (seen(1), seen(2, constraint="global")), 1.0))
    assert mixed["constraint"] == "mixed" and "constraint=memcg x1, global x1;" in report.record_text(mixed, "a:")


def test_a_kill_says_whether_free_memory_was_above_min_and_what_was_reclaimable():
    """Issue 29, item 5: was the machine out of memory at the kill, or was it a limit (or reclaim
    giving up) with free memory above every zone's min watermark and much reclaimable?"""
    at = {"free_above_min": True, "zones_at_or_under_min": [], "free_bytes": 20 << 30,
          "available_bytes": 21 << 30, "reclaimable_bytes": 3 << 29}
    d = to_dict(OomKillReport(2, 0.0, (seen(1),), 1.0, at))
    assert d["memory_at_kill"] == at
    assert report.record_text(d, "a:").rstrip().endswith("free>min in every zone reclaimable=1.5GiB")
    short = {**at, "free_above_min": False, "zones_at_or_under_min": ["node0/Normal"]}
    storm = to_dict(OomKillReport(3, 0.0, (seen(1), seen(2)), 1.0, short))
    assert "free<=min in node0/Normal reclaimable=1.5GiB;" in report.record_text(storm, "a:")
    assert to_dict(OomKillReport(4, 0.0, (seen(1),), 1.0))["memory_at_kill"] is None
