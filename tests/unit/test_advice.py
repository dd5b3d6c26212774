# SPDX-License-Identifier: Apache-2.0
"""What to do (core/advice.py): each rule fires on its facts and stays silent without them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from allocwatch.core import advice

MIB = 1 << 20


def task(**kw: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "kind": "stall", "tid": 10, "pid": 10, "comm": "app", "site": "memcg_reclaim", "duration_s": 12.0,
        "gfp": "0x100cca", "gfp_flags": "GFP_HIGHUSER_MOVABLE", "order": 0, "cgroup": "/g", "state": "D",
        "stack": [], "other_waits": [], "memcg": None, "gfp_no_fs_io": [], "dirty_pause": None,
    }
    t.update(kw)
    return t


def block(*tasks: dict[str, Any], **ctx: Any) -> dict[str, Any]:
    context: dict[str, Any] = {"victims": [], "meminfo_bytes": {"SwapTotal": 8 * MIB, "SwapFree": 8 * MIB},
                               "zones": [{"node": 0, "zone": "Normal", "free_pages": 5000, "min_pages": 100,
                                          "low_pages": 200, "high_pages": 300, "under_watermark": None}]}
    context.update(ctx)
    return {"type": "stall_report", "tasks": list(tasks), "context": context, "more": []}


def kinds(b: dict[str, Any]) -> list[str]:
    return [a["kind"] for a in advice.advise(b)]


def text(b: dict[str, Any], kind: str) -> str:
    return next(a["text"] for a in advice.advise(b) if a["kind"] == kind)


OOM_OFF = {"version": 1, "usage_bytes": 32 * MIB, "limit_bytes": 32 * MIB, "near_limit": True,
           "oom_kill_disable": True, "under_oom": True, "events": {}, "high_bytes": None, "failcnt": 3}
WB_STACK = ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list"]


def test_every_line_separates_what_was_seen_from_what_it_points_at_and_where_to_look():
    b = block(task(site="memcg_oom_wait", memcg=OOM_OFF, gfp=None, order=None))
    (a,) = advice.advise(b)
    assert a["text"].startswith("seen: ") and "; points at: " in a["text"] and "; look at: " in a["text"]


def test_nothing_to_say_about_a_block_without_facts():
    assert advice.advise(block(task())) == []
    assert advice.advise({"type": "stall_report", "tasks": [], "context": None}) == []


def test_memcg_oom_killer_off_at_its_limit():
    b = block(task(site="memcg_oom_wait", memcg=OOM_OFF), task(tid=11, pid=11, site="memcg_oom_wait", memcg=OOM_OFF))
    t = text(b, advice.MEMCG_OOM_OFF)
    assert "memory cgroup /g at its limit under_oom=1 with oom_kill_disable=1, 2 task(s)" in t
    assert "raise the group's limit" in t and "enable its OOM killer" in t


@pytest.mark.parametrize("change", [{"oom_kill_disable": False}, {"oom_kill_disable": None},
                                    {"near_limit": False, "under_oom": False}])
def test_memcg_oom_off_silent_without_its_facts(change):
    m = {**OOM_OFF, **change}
    assert advice.MEMCG_OOM_OFF not in kinds(block(task(site="memcg_oom_wait", memcg=m)))
    assert advice.MEMCG_OOM_OFF not in kinds(block(task(site="memcg_oom_wait", memcg=None)))


@pytest.mark.parametrize("facts, said", [
    ({"other_waits": [{"site": "writeback_wait", "duration_s": 8.0}]}, "(writeback_wait)"),
    ({"site": "writeback_wait"}, "(writeback_wait)"),
    ({"stack": WB_STACK}, "folio_wait_writeback in its stack"),
    ({"kind": "throttled", "window": {"share": 0.6, "sites": {"reclaim_throttle": {"count": 3, "total_s": 0.3}},
                                      "throttle_reasons": {"VMSCAN_THROTTLE_WRITEBACK": 3}}},
     "VMSCAN_THROTTLE_WRITEBACK"),
])
def test_writeback_points_at_the_device(facts, said):
    t = text(block(task(**facts)), advice.WRITEBACK)
    assert said in t and "the device behind this file system" in t


def test_writeback_silent_without_a_writeback_fact():
    b = block(task(stack=["shrink_folio_list"], window={"throttle_reasons": {"VMSCAN_THROTTLE_ISOLATED": 2}}))
    assert advice.WRITEBACK not in kinds(b)


def test_gfp_nofs_points_at_file_system_writeback():
    b = block(task(kind="throttled", gfp_no_fs_io=["GFP_NOFS|__GFP_WRITE"]))
    t = text(b, advice.NO_FS_IO)
    assert "without __GFP_FS or __GFP_IO: GFP_NOFS|__GFP_WRITE" in t and "file system writeback" in t
    assert t.endswith("and the device behind this file system"), t
    wb = {"bdi": "7:3", "device": "loop3", "ino": 12}
    named = text(block(task(kind="throttled", gfp_no_fs_io=["GFP_NOFS"], writeback=wb)), advice.NO_FS_IO)
    assert named.endswith("and loop3 (7:3), the device behind this file system"), named


def test_gfp_nofs_silent_without_the_key_or_with_it_empty():
    t = task(kind="throttled")
    del t["gfp_no_fs_io"]  # a record from before the key
    assert advice.NO_FS_IO not in kinds(block(t))
    assert advice.NO_FS_IO not in kinds(block(task(kind="throttled", gfp_no_fs_io=[])))


LIVELOCK_WINDOW = {"share": 1.0, "reclaim_passes_per_s": 30000.0, "reclaimed_pages": 0, "sites": {}}


def test_livelock_says_no_swap_and_the_victim_only_when_seen():
    bare = block(task(kind="livelock", state="R", window=LIVELOCK_WINDOW))
    t = text(bare, advice.LIVELOCK)
    assert "30000 passes/s, 0 pages reclaimed" in t and "reclaim frees nothing" in t
    assert "no swap" not in t and "victim" not in t  # swap is there, no victim listed
    full = block(task(kind="livelock", state="R", window=LIVELOCK_WINDOW),
                 meminfo_bytes={"SwapTotal": 0, "SwapFree": 0},
                 victims=[{"pid": 77, "comm": "v", "for_s": 4.0}])
    t = text(full, advice.LIVELOCK)
    assert ", no swap" in t and "OOM victim pid=77 not gone for 4s" in t and "why OOM victim pid=77 does not exit" in t


def test_livelock_silent_for_other_kinds():
    assert advice.LIVELOCK not in kinds(block(task(kind="throttled", window=LIVELOCK_WINDOW)))


def test_stuck_victim_names_what_it_is_blocked_on_and_its_waiting_group():
    v = task(kind="stuck_victim", state="D", stack=["percpu_rwsem_wait", "__percpu_down_read"], reaped=True,
             waiting_in_cgroup={"count": 5, "tasks": []}, duration_s=20.0)
    t = text(block(v), advice.STUCK_VICTIM)
    assert "not exited 20s after it was chosen, state=D, blocked in percpu_rwsem_wait" in t
    assert "5 task(s) of its cgroup waiting" in t and "what it is blocked on (percpu_rwsem_wait)" in t
    quiet = task(kind="stuck_victim", state="D", stack=[], waiting_in_cgroup={"count": 0, "tasks": []})
    t = text(block(quiet), advice.STUCK_VICTIM)
    assert "blocked in" not in t and "cgroup waiting" not in t and "/proc/PID/stack" in t
    assert advice.STUCK_VICTIM not in kinds(block(task(state="D", stack=["percpu_rwsem_wait"])))
    held = task(kind="stuck_victim", state="D", stack=["percpu_rwsem_wait"],
                waiting_in_cgroup={"count": 3, "blocked": 2, "tasks": []})
    t = text(block(held), advice.STUCK_VICTIM)
    assert "1 task(s) of its cgroup waiting for memory, 2 blocked outside memory waits" in t
    only_blocked = task(kind="stuck_victim", state="D", stack=[], waiting_in_cgroup={"count": 1, "blocked": 1})
    t = text(block(only_blocked), advice.STUCK_VICTIM)
    assert "waiting for memory" not in t and "1 blocked outside memory waits" in t


def test_memory_high_throttling_names_usage_against_high_and_the_group():
    high = {"version": 2, "usage_bytes": 23 * MIB, "limit_bytes": None, "high_bytes": 16 * MIB,
            "events": {"high": 426}, "near_limit": False}
    t = task(kind="throttled", site="memcg_high_throttle", memcg=high, window={"share": 1.0, "sites": {}},
             cgroup="/backup")
    got = text(block(t), advice.MEMCG_HIGH)
    assert "throttled at memory.high" in got and "cgroup=/backup usage=23.0MiB over high=16.0MiB" in got
    assert "memory.events high=426, 100% of the window" in got and "raise it" in got
    under = task(kind="throttled", site="memcg_high_throttle", memcg={**high, "usage_bytes": 15 * MIB})
    assert advice.MEMCG_HIGH not in kinds(block(under))  # back under high: not what holds it
    assert advice.MEMCG_HIGH not in kinds(block(task(memcg=high)))  # not throttled at memory.high


def test_dirty_throttle_states_dirty_against_limit():
    pause = {"pause_ms": 200, "period_ms": 200, "think_ms": 4, "dirty_pages": 2111, "setpoint_pages": 1792,
             "limit_pages": 2048, "dirtied_pages": 256}
    b = block(task(kind="throttled", site="dirty_throttle", dirty_pause=pause, window={"share": 0.52}))
    t = text(b, advice.DIRTY_THROTTLE)
    assert "dirty=2111 pages against limit=2048 pages, 52% of the window" in t and "vm.dirty_bytes" in t
    assert advice.DIRTY_THROTTLE not in kinds(block(task(site="memcg_reclaim", dirty_pause=None)))


def test_compaction_says_the_order_only_when_known():
    t = text(block(task(site="compaction", order=3)), advice.COMPACTION)
    assert "in compaction, order=3" in t and "no free block of that order" in t and "buddyinfo" in t
    t = text(block(task(site="compaction", order=None)), advice.COMPACTION)
    assert "order" not in t.split("; points at")[0] and "no free block" not in t
    assert advice.COMPACTION not in kinds(block(task(order=3)))


def test_out_of_memory_only_with_global_reclaim_and_a_zone_under_min():
    under = [{"node": 0, "zone": "Normal", "free_pages": 90, "min_pages": 100, "low_pages": 200,
              "high_pages": 300, "under_watermark": "min"}]
    t = text(block(task(site="direct_reclaim"), zones=under), advice.OUT_OF_MEMORY)
    assert "zone node0/Normal free=90 pages under its min watermark 100" in t and "out of memory" in t
    assert advice.OUT_OF_MEMORY not in kinds(block(task(site="direct_reclaim")))  # zones above
    assert advice.OUT_OF_MEMORY not in kinds(block(task(site="memcg_reclaim"), zones=under))  # a memcg's, not global
    low = [{**under[0], "under_watermark": "low"}]
    assert advice.OUT_OF_MEMORY not in kinds(block(task(site="direct_reclaim"), zones=low))


def test_lines_come_in_rule_order_one_per_kind():
    b = block(task(site="memcg_oom_wait", memcg=OOM_OFF), task(tid=11, pid=11, stack=WB_STACK),
              task(tid=12, pid=12, stack=WB_STACK, gfp_no_fs_io=["GFP_NOFS"]))
    assert kinds(b) == [advice.MEMCG_OOM_OFF, advice.WRITEBACK, advice.NO_FS_IO]
    assert "and 1 more task(s)" in text(b, advice.WRITEBACK)


def test_advise_does_not_change_the_block():
    b = block(task(site="memcg_oom_wait", memcg=OOM_OFF))
    before = copy.deepcopy(b)
    advice.advise(b)
    assert b == before


def test_the_record_and_its_renderings_carry_it():
    from allocwatch.outputs import journal, report

    b = block(task(site="memcg_oom_wait", memcg=OOM_OFF, level=1, new=True, duration_s=2.5, uid=0,
                   cmdline="x", dying=False, exiting=False, start_known=True, recent_stack=[]),
              seq=1)
    d = {**b, "seq": 1, "time": "2026-12-01T00:00:00.000Z", "stalled": 1, "due": 1, "held_back": 0,
         "context": None}
    d["advice"] = advice.advise(d)
    lines = report.record_text(d, "T allocwatch:").splitlines()
    assert lines[-1].startswith("  what to do (memcg_oom_disabled): seen: memory cgroup /g at its limit")
    head = next(journal.entries(d))
    assert head["ALLOCWATCH_ADVICE"].startswith("memcg_oom_disabled: seen: ")
    assert head["MESSAGE"].splitlines()[-1].startswith("  what to do (memcg_oom_disabled)")


def test_shrinkers_that_freed_nothing_point_at_the_caches_and_the_mask():
    sb = {"shrinker": "super_cache_scan", "calls": 412, "asked": 52000, "freed": 0, "objects": 250000,
          "gfp": "0xc40", "gfp_flags": "GFP_NOFS", "no_fs_io": True}
    t = task(kind="throttled", window={"shrinkers": [sb, {**sb, "shrinker": "other", "freed": 3}]})
    b = block(t, slab_caches=[{"name": "dentry", "bytes": 200 * MIB, "objects": 1, "active_objects": 1}])
    said = text(b, advice.SHRINKERS)
    assert said.startswith("seen: app pid=10 (throttled) called super_cache_scan 412 time(s) in the window, asked to "
                           "scan 52000 of 250000 objects, freed 0, called with GFP_NOFS; largest slab cache dentry "
                           "200.0MiB; points at: slab caches reclaim cannot shrink: a file system's shrinkers do "
                           "nothing for an allocation that may not enter the file system"), said
    in_use = text(block(task(kind="livelock", window={"shrinkers": [{**sb, "no_fs_io": False}]})), advice.SHRINKERS)
    assert "points at: slab objects still in use" in in_use and "called with" not in in_use
    freeing = block(task(kind="livelock", window={"shrinkers": [{**sb, "freed": 10}]}))
    assert advice.SHRINKERS not in kinds(freeing)  # a shrinker that frees is no finding


def test_writeback_behind_threads_that_wait_for_memory_says_the_writeback_needs_memory():
    flusher = {"tid": 5, "pid": 5, "name": "kworker/u8:3+flush-7:3", "site": "memcg_reclaim", "waited_s": 12.0}
    t = task(stack=WB_STACK, behind=[flusher, {**flusher, "tid": 6}])
    said = text(block(t), advice.WRITEBACK)
    assert ("; behind app pid=10: kworker/u8:3+flush-7:3 pid=5 in memcg_reclaim for 12.0s and 1 more; points at: "
            "writeback that needs memory to complete") in said
    assert "writeback that does not keep up" in text(block(task(stack=WB_STACK)), advice.WRITEBACK)


def test_shrinkers_line_is_of_the_task_whose_idle_shrinker_was_asked_most():
    sb = {"shrinker": "super_cache_scan", "calls": 24, "asked": 36676, "freed": 0, "objects": 200002,
          "gfp": "0xc40", "gfp_flags": "GFP_NOFS", "no_fs_io": True}
    b = block(task(kind="throttled", window={"shrinkers": [sb]}),
              task(kind="throttled", tid=11, pid=11, window={"shrinkers": [{**sb, "calls": 183, "asked": 231533}]}))
    assert text(b, advice.SHRINKERS).startswith("seen: app pid=11 (throttled) called super_cache_scan 183 time(s)")


def test_writeback_names_the_device_and_how_its_writes_go_when_the_task_says_them():
    wb = {"bdi": "7:3", "device": "loop3", "ino": 12, "written_bytes_per_s": 524288, "written_over_s": 10.0,
          "writes_in_flight": 2, "write_limit_bytes_per_s": 524288}
    said = text(block(task(stack=WB_STACK, writeback=wb)), advice.WRITEBACK)
    assert ", on writeback of loop3 (7:3); points at: writeback that does not keep up" in said
    assert said.endswith("look at: loop3 (7:3), the device behind this file system: its speed and I/O throttling "
                         "(written 0.5MiB/s, write limit 0.5MiB/s)"), said
    bare = text(block(task(stack=WB_STACK, writeback={"bdi": "0:42", "device": None, "ino": 3})), advice.WRITEBACK)
    assert ", on writeback of 0:42;" in bare and bare.endswith("its speed and I/O throttling"), bare


def test_writeback_says_the_journal_thread_waits_on_the_same_writes():
    """jbd2 beside the task: its commit waits on the same device, so writers to the file
    system will wait on the journal; the line says so in what it has seen."""
    wb = {"bdi": "7:3", "device": "loop3", "ino": 12}
    jbd2 = {"tid": 88, "pid": 88, "name": "jbd2/loop3-8", "site": "writeback_wait", "waited_s": 1.2}
    said = text(block(task(stack=WB_STACK, writeback=wb, beside=[jbd2])), advice.WRITEBACK)
    assert (", on writeback of loop3 (7:3), with the journal thread jbd2/loop3-8 pid=88 waiting on the same "
            "writeback; points at: writeback that does not keep up") in said, said
    flusher = {**jbd2, "name": "kworker/u8:2+flush-7:3"}  # only a journal says writers will queue behind it
    assert "journal" not in text(block(task(stack=WB_STACK, writeback=wb, beside=[flusher])), advice.WRITEBACK)


def test_the_journal_said_is_that_of_the_device_said():
    """Two tasks on two devices: the line names the first task's device, and only
    that device's journal, never the other's."""
    jbd2 = {"tid": 88, "pid": 88, "name": "jbd2/loop4-8", "site": "writeback_wait", "waited_s": 1.2}
    b = block(task(stack=WB_STACK, writeback={"bdi": "7:3", "device": "loop3", "ino": 12}),
              task(tid=11, pid=11, stack=WB_STACK, writeback={"bdi": "7:4", "device": "loop4", "ino": 3},
                   beside=[jbd2]))
    said = text(b, advice.WRITEBACK)
    assert "on writeback of loop3 (7:3)" in said and "jbd2/loop4-8" not in said, said
