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
    assert ctypes.sizeof(wire.WaitValue) == 48
    assert [(f, getattr(wire.WaitValue, f).offset) for f, _ in wire.WaitValue._fields_] == [
        ("start_ns", 0),
        ("gfp", 8),
        ("pid", 16),
        ("order", 20),
        ("depth", 24),
        ("site_hint", 28),
        ("comm", 32),
    ]
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
    for cname, pyclass in (("aw_wait", wire.WaitValue), ("aw_event", wire.Event), ("aw_wait_key", wire.WaitKey)):
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
