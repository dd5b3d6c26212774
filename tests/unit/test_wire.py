# SPDX-License-Identifier: Apache-2.0
"""The wire format: the Python mirror must match bpf/allocwatch.h exactly."""

import ctypes
import re
from pathlib import Path

from allocwatch.core import sites
from allocwatch.core.sites import Site
from allocwatch.kernel import wire

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "allocwatch.h"


def header_defines() -> dict[str, int]:
    out = {}
    for m in re.finditer(r"^#define (AW_\w+)\s+(0x[0-9a-fA-F]+|\d+)", HEADER.read_text(), re.M):
        out[m.group(1)] = int(m.group(2), 0)
    return out


def test_site_numbers_match_header():
    defs = header_defines()
    header_sites = {k[len("AW_SITE_") :]: v for k, v in defs.items() if k.startswith("AW_SITE_")}
    for site in Site:
        assert header_sites.pop(site.name) == site.value, site
    assert header_sites == {"DSTATE": sites.SITE_DSTATE, "NONE": sites.SITE_NONE}
    assert defs["AW_NR_SITES"] == sites.NR_SITES == len(Site)
    assert defs["AW_HIST_SLOTS"] == sites.HIST_SLOTS
    assert defs["AW_EV_WAIT_END"] == sites.EV_WAIT_END
    assert defs["AW_EV_OOM_KILL"] == sites.EV_OOM_KILL
    assert defs["AW_NR_STATS"] == len(sites.STAT_NAMES)


def test_record_sizes_and_offsets_are_pinned():
    assert ctypes.sizeof(wire.WaitKey) == 8
    assert ctypes.sizeof(wire.WaitValue) == 64
    assert [(f, getattr(wire.WaitValue, f).offset) for f, _ in wire.WaitValue._fields_] == [
        ("start_ns", 0),
        ("gfp", 8),
        ("pid", 16),
        ("order", 20),
        ("depth", 24),
        ("site_hint", 28),
        ("comm", 32),
        ("reclaimed_pages", 48),
        ("noted_ns", 56),
    ]
    assert ctypes.sizeof(wire.DirtyPauseValue) == 72
    assert [(f, getattr(wire.DirtyPauseValue, f).offset) for f, _ in wire.DirtyPauseValue._fields_] == [
        ("time_ns", 0),
        ("dirty", 8),
        ("setpoint", 16),
        ("limit", 24),
        ("pause_ms", 32),
        ("period_ms", 40),
        ("think_ms", 48),
        ("paused_ms", 56),
        ("dirtied", 64),
        ("dirtied_pause", 68),
    ]
    acct = {f: getattr(wire.TaskAcct, f).offset for f, _ in wire.TaskAcct._fields_}
    tail = (acct["comm"], acct["busy_ns"], acct["open"], acct["gfp_mask"], acct["gfp_waits"])
    assert tail == (272, 288, 304, 308, 324)
    assert ctypes.sizeof(wire.TaskAcct) == 344 and wire.GFP_SLOTS == 4
    assert ctypes.sizeof(wire.Event) == 128
    assert {f: getattr(wire.Event, f).offset for f, _ in wire.Event._fields_} == {
        "start_ns": 0,
        "duration_ns": 8,
        "gfp": 16,
        "kind": 24,
        "site": 28,
        "tid": 32,
        "pid": 36,
        "order": 40,
        "target_pid": 44,
        "site_hint": 48,
        "how": 52,
        "comm": 56,
        "target_comm": 72,
        "target_anon_rss_kb": 88,
        "target_file_rss_kb": 96,
        "target_shmem_rss_kb": 104,
        "target_uid": 112,
        "target_oom_score_adj": 116,
        "target_flags": 120,
        "end_detail": 124,
    }


def test_header_struct_fields_in_same_order():
    text = HEADER.read_text()
    pairs = (("aw_wait", wire.WaitValue), ("aw_event", wire.Event), ("aw_wait_key", wire.WaitKey),
             ("aw_dirty_pause", wire.DirtyPauseValue), ("aw_task_acct", wire.TaskAcct),
             ("aw_oom_context", wire.OomContextEvent), ("aw_shrink_acct", wire.ShrinkAcct),
             ("aw_wb_note", wire.WbNoteValue), ("aw_task_now", wire.TaskNow))
    for cname, pyclass in pairs:
        body = re.search(r"struct " + cname + r" \{(.*?)\};", text, re.S).group(1)
        names = re.findall(r"(\w+)(?:\[\w+\])?;", body)
        assert names == [f for f, _ in pyclass._fields_], cname


def _event(**kw) -> bytes:
    ev = wire.Event(**kw)
    return bytes(ev)


def test_decode_wait_end_with_unknowns():
    raw = _event(
        kind=sites.EV_WAIT_END, site=3, tid=7, pid=6, start_ns=10, duration_ns=5,
        gfp=sites.GFP_UNKNOWN, order=-1, site_hint=sites.SITE_NONE, comm=b"dd", end_detail=0xFFFFFFFF,
    )
    ev = wire.decode_event(raw)
    assert ev == wire.WaitEnd(7, 6, "dd", 3, 10, 5, None, None, None)


def test_decode_oom_kill_and_hostile_comm():
    raw = _event(kind=sites.EV_OOM_KILL, tid=9, pid=9, target_pid=42, comm=b"a\nb\xff", target_comm=b"victim")
    ev = wire.decode_event(raw)
    assert isinstance(ev, wire.OomKill)
    assert ev.victim_pid == 42 and ev.victim_comm == "victim"
    assert ev.invoker_comm == "a\nb\udcff"  # the byte, kept: it turns back into b"\xff"
    assert wire.encode_comm(ev.invoker_comm) == b"a\nb\xff"


def test_wait_end_says_how_it_ended():
    raw = _event(kind=sites.EV_WAIT_END, site=31, tid=7, pid=7, how=1, site_hint=sites.SITE_NONE)
    assert wire.decode_event(raw).how == "killed"
    raw = _event(kind=sites.EV_WAIT_END, site=31, tid=7, pid=7, how=2, site_hint=sites.SITE_NONE)
    assert wire.decode_event(raw).how == "exited"


def test_oom_kill_carries_the_victims_memory_when_the_kernel_gives_it():
    raw = _event(kind=sites.EV_OOM_KILL, tid=9, pid=9, target_pid=42, comm=b"a", target_comm=b"v",
                 target_anon_rss_kb=204800, target_file_rss_kb=12, target_shmem_rss_kb=0, target_uid=1000,
                 target_oom_score_adj=-500, target_flags=wire.VICTIM_RSS)
    ev = wire.decode_event(raw)
    assert ev.victim.anon_rss_kb == 204800 and ev.victim.uid == 1000 and ev.victim.oom_score_adj == -500
    assert wire.decode_event(_event(kind=sites.EV_OOM_KILL, target_pid=42)).victim is None


def test_decode_ignores_unknown_kind():
    assert wire.decode_event(_event(kind=99)) is None


def test_a_reclaim_end_says_what_the_pass_freed():
    raw = _event(kind=sites.EV_WAIT_END, site=3, tid=7, pid=7, site_hint=sites.SITE_NONE, end_detail=12)
    assert wire.decode_event(raw).detail == 12


def test_hint_age_matches_the_bpf_source():
    src = (HEADER.parent / "allocwatch.bpf.c").read_text()
    assert int(re.search(r"#define HINT_MAX_AGE_NS (\d+)ULL", src).group(1)) == wire.HINT_MAX_AGE_NS


def test_a_reclaim_wait_in_flight_carries_its_pages_so_far_only_when_counted():
    key = wire.WaitKey(tid=7, site=int(Site.MEMCG_RECLAIM))
    value = wire.WaitValue(start_ns=5, gfp=0xCC0, pid=7, order=0, site_hint=sites.SITE_NONE, reclaimed_pages=321)
    assert wire.decode_inflight(key, value, progress=True).reclaimed_pages == 321
    assert wire.decode_inflight(key, value, progress=False).reclaimed_pages is None  # 0 would be a lie
    other = wire.WaitKey(tid=7, site=int(Site.COMPACTION))
    assert wire.decode_inflight(other, value, progress=True).reclaimed_pages is None


def _pause(time_ns: int) -> wire.DirtyPauseValue:
    return wire.DirtyPauseValue(time_ns=time_ns, dirty=2101, setpoint=1792, limit=2048, pause_ms=200,
                                period_ms=216, think_ms=-4, paused_ms=8, dirtied=32, dirtied_pause=33)


def test_a_dirty_throttle_sleep_gets_the_pause_noted_just_before_it():
    sleep = wire.WaitValue(start_ns=10_000_000_000, pid=7, order=-1, site_hint=int(Site.DIRTY_THROTTLE),
                           gfp=sites.GFP_UNKNOWN)
    got = wire.decode_dwait(7, sleep, sites.SITE_DSTATE, _pause(10_000_000_000 - 30_000))
    assert got.dirty_pause == wire.DirtyPause(200, 216, -4, 8, 32, 33, 2101, 1792, 2048)
    # noted long before the sleep (an earlier one), or after it began (the next one): not this sleep's
    assert wire.decode_dwait(7, sleep, sites.SITE_DSTATE, _pause(10_000_000_000 - 60_000_000)).dirty_pause is None
    assert wire.decode_dwait(7, sleep, sites.SITE_DSTATE, _pause(10_000_000_001)).dirty_pause is None
    other = wire.WaitValue(start_ns=10_000_000_000, pid=7, order=-1, site_hint=int(Site.WRITEBACK_WAIT))
    assert wire.decode_dwait(7, other, sites.SITE_DSTATE, _pause(10_000_000_000 - 30_000)).dirty_pause is None


def test_a_task_account_carries_its_busy_time_and_the_masks_it_asked_with():
    v = wire.TaskAcct(pid=7, busy_ns=5, comm=b"dd")
    v.gfp_mask[0], v.gfp_waits[0] = 0xC40, 11  # GFP_NOFS
    v.gfp_mask[2], v.gfp_waits[2] = 0xCC0, 2
    a = wire.decode_acct(7, v)
    assert a.busy_ns == 5 and a.gfp_waits == ((0xC40, 11), (0xCC0, 2))
    assert a.wait_ns == ()  # no site waited
    v.wait_ns[3] = 7
    assert wire.decode_acct(7, v).wait_ns == (0, 0, 0, 7)  # up to its last site that waited
    v.wait_ns[sites.NR_SITES - 1] = 1
    assert len(wire.decode_acct(7, v).wait_ns) == sites.NR_SITES


def test_threads_of_one_process_share_their_pid_and_equal_masks_not_copies():
    def acct(tid: int, pid: int, waits: int) -> wire.TaskAcct:
        v = wire.TaskAcct(pid=pid, comm=b"stall")
        v.gfp_mask[0], v.gfp_waits[0] = 0x100CCA, waits
        return v

    a, b = wire.decode_acct(70001, acct(70001, 70000, 18)), wire.decode_acct(70002, acct(70002, 70000, 18))
    c = wire.decode_acct(70003, acct(70003, 70000, 19))
    assert a.pid == 70000 and a.pid is b.pid is c.pid
    assert a.gfp_waits == b.gfp_waits == ((0x100CCA, 18),) and a.gfp_waits is b.gfp_waits
    assert c.gfp_waits == ((0x100CCA, 19),)  # counted apart: its own
    key = wire.WaitKey(tid=70001, site=3)
    w1, w2 = wire.WaitValue(start_ns=1, pid=70000), wire.WaitValue(start_ns=2, pid=70000)
    assert wire.decode_inflight(key, w1).pid is wire.decode_inflight(key, w2).pid is a.pid


def test_oom_context_is_pinned_and_its_kind_where_every_record_has_it():
    assert ctypes.sizeof(wire.OomContextEvent) == 72
    assert {f: getattr(wire.OomContextEvent, f).offset for f, _ in wire.OomContextEvent._fields_} == {
        "time_ns": 0, "victim_cgroup_id": 8, "gfp": 16, "kind": 24, "victim_pid": 28, "invoker_tid": 32,
        "order": 36, "constraint": 40, "flags": 44, "stack_id": 48, "invoker_cgroup_id": 56,
        "domain_cgroup_id": 64,
    }
    assert wire.OomContextEvent.kind.offset == wire.Event.kind.offset
    assert re.search(r"#define AW_EV_OOM_CONTEXT\s+3\b", HEADER.read_text())
    raw = bytes(wire.OomContextEvent(kind=wire.EV_OOM_CONTEXT, victim_pid=7))
    assert wire.event_kind(raw) == wire.EV_OOM_CONTEXT
    assert wire.decode_event(raw) is None  # shorter than an aw_event: not misread as one


def test_a_task_s_shrinkers_are_pinned_and_decoded_by_function_skipping_free_slots():
    assert ctypes.sizeof(wire.ShrinkAcct) == 4 * 8 * 8 + 2 * 4 * 8
    assert {f: getattr(wire.ShrinkAcct, f).offset for f, _ in wire.ShrinkAcct._fields_} == {
        "fn": 0, "asked": 64, "freed": 128, "objects": 192, "calls": 256, "gfp": 288}
    assert re.search(r"#define AW_SHRINK_SLOTS\s+8\b", HEADER.read_text()) and wire.SHRINK_SLOTS == 8
    v = wire.ShrinkAcct()
    v.fn[5], v.calls[5], v.asked[5], v.freed[5], v.objects[5], v.gfp[5] = 0xFFFF2000, 3, 300, 0, 9000, 0xC40
    v.fn[1], v.calls[1], v.asked[1], v.freed[1], v.objects[1], v.gfp[1] = 0xFFFF1000, 1, 10, 7, 20, 0xCC0
    v.fn[2] = 0xFFFF3000  # given to a shrinker, never called since (calls 0): not shown
    assert wire.decode_shrinks(v) == (
        wire.ShrinkCount(0xFFFF1000, 1, 10, 7, 20, 0xCC0), wire.ShrinkCount(0xFFFF2000, 3, 300, 0, 9000, 0xC40))


def test_the_writeback_note_is_pinned_and_names_the_bdi_as_the_kernel_wrote_it():
    assert header_defines()["AW_BDI_NAME_LEN"] == wire.BDI_NAME_LEN == 32  # the tracepoint's char name[32]
    assert ctypes.sizeof(wire.WbNoteValue) == 48
    assert [(f, getattr(wire.WbNoteValue, f).offset) for f, _ in wire.WbNoteValue._fields_] == [
        ("time_ns", 0), ("ino", 8), ("bdi", 16)]
    v = wire.WbNoteValue(time_ns=5, ino=12, bdi=b"7:3")
    assert wire.decode_wb_note(v) == wire.WritebackNote(5, "7:3", 12)
    full = wire.WbNoteValue(time_ns=5, ino=1, bdi=b"x" * 31 + b"\xff")  # no NUL: all 32 bytes, raw kept
    assert wire.decode_wb_note(full).bdi == "x" * 31 + "\udcff"
