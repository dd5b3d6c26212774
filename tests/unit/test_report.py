# SPDX-License-Identifier: Apache-2.0
"""Rendering: one block per scan, every task in it, nothing a task can forge."""

import json
import random
from dataclasses import replace

from allocwatch.core.episodes import STALL, TaskEpisodeEnd
from allocwatch.core.findings import Finding
from allocwatch.core.model import DirtyPause, OomKill, WritebackNote
from allocwatch.core.oomkills import KillSeen
from allocwatch.core.records import EpisodeEndReport, OomKillReport, StallReport, TaskDetail, escape, to_dict
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Stall, Wait
from allocwatch.core.wbdevice import DeviceState
from allocwatch.outputs import report

HOSTILE = "\n[  707.8] a.out: page allocation stalls for 99999ms\x1b[2J"


def stall(tid, site=Site.MEMCG_OOM_WAIT, dur_s=12.0, level=1, comm="hog", gfp=0xCC0, order=0):
    w = Wait(tid, tid, comm, site, 0, gfp, order, dstate=True)
    return Stall(w, int(dur_s * NS_PER_S), level)


def block(stalls, details=None):
    return StallReport(7, 1_700_000_000.25, stalls, len(stalls), details or {})


def test_text_block_header_and_task_lines():
    rec = block([stall(1), stall(2, dur_s=20, level=2)], {1: TaskDetail("/a", "D", ["mem_cgroup_oom_synchronize"])})
    text = report.render_text(rec)
    lines = text.splitlines()
    assert lines[0].startswith("2023-11-14T22:13:20.250Z allocwatch: stall report #7: 2 task(s) due (1 new)")
    assert "longest 20.0s" in lines[0]
    assert "pid=2 tid=2 site=memcg_oom_wait waited=20.0s gfp=0xcc0 order=0" in lines[1]
    assert "cgroup=/a state=D level=1 (new)" in lines[2]
    assert lines[3] == "    stack: mem_cgroup_oom_synchronize"


def test_hostile_comm_cannot_break_the_block():
    rec = block([stall(1, comm=HOSTILE), stall(2)])
    text = report.render_text(rec)
    assert len(text.splitlines()) == 3  # header + 2 tasks: the newline did not get through
    assert "\x1b" not in text and "\\x0a[  707.8]" in text
    doc = json.loads(report.render_json(rec))
    assert escape(HOSTILE) in {t["comm"] for t in doc["tasks"]}
    assert "\n" not in report.render_json(rec).rstrip("\n")


def test_json_stall_report_fields():
    doc = json.loads(report.render_json(block([stall(3)], {3: TaskDetail("/cg", "D", ["x", "y"])})))
    assert doc["type"] == "stall_report" and doc["seq"] == 7 and doc["time"].endswith("Z")
    (task,) = doc["tasks"]
    assert task == {
        "kind": "stall", "tid": 3, "pid": 3, "comm": "hog", "site": "memcg_oom_wait",
        "duration_s": 12.0, "wait_s": 12.0, "level": 1,
        "new": True, "gfp": "0xcc0", "gfp_flags": None, "order": 0, "cgroup": "/cg", "state": "D", "stack": ["x", "y"],
        "start_known": True,
        "other_waits": [], "recent_stack": [], "uid": None, "cmdline": None, "dying": False, "exiting": False,
        "memcg": None, "gfp_no_fs_io": [], "reclaimed_so_far_pages": None, "dirty_pause": None, "pod": None,
        "writeback": None, "behind": [], "beside": [],
    }


def test_two_waits_of_one_task_are_one_task_line():
    a = stall(4, Site.MEMCG_RECLAIM, dur_s=16)
    b = stall(4, Site.WRITEBACK_WAIT, dur_s=15)
    doc = json.loads(report.render_json(block([b, a])))
    assert len(doc["tasks"]) == 1
    assert doc["tasks"][0]["site"] == "memcg_reclaim"
    assert doc["tasks"][0]["other_waits"] == [{"site": "writeback_wait", "duration_s": 15.0}]
    assert "also waiting: site=writeback_wait" in report.render_text(block([b, a]))


def test_200_tasks_one_well_formed_block():
    rec = block([stall(t, dur_s=10 + t / 100) for t in range(1, 201)])
    text = report.render([rec], "text")
    # one program, one site, one cgroup: one story, one grouped line with the tids, longest first
    assert text.count("stall report #") == 1 and len(text.splitlines()) == 2
    line = text.splitlines()[1]
    assert "tasks=200 site=memcg_oom_wait waited=10.0s..12.0s" in line and "tids=200,199,198," in line
    assert line.endswith(",+184 (200 new)")
    doc = json.loads(report.render([rec], "json"))
    assert len(doc["tasks"]) == 200
    assert [t["tid"] for t in doc["tasks"]][:2] == [200, 199]


def test_recovered_and_oom_kill():
    rec = EpisodeEndReport(8, 0.0, TaskEpisodeEnd(STALL, 9, 9, "dd", Site.MEMCG_RECLAIM, 31.0, 3, "woke"))
    text = report.render_text(rec)
    assert "recovered #8: comm=dd pid=9 tid=9 site=memcg_reclaim waited 31.0s, reported 3 time(s)" in text
    inexact = EpisodeEndReport(8, 0.0, TaskEpisodeEnd(STALL, 9, 9, "dd", Site.MEMCG_RECLAIM, 31.0, 3, "unseen",
                                                      exact=False))
    assert "or less (end not seen)" in report.render_text(inexact)
    doc = json.loads(report.render_json(rec))
    assert doc["type"] == "recovered" and doc["duration_s"] == 31.0 and doc["exact"] is True
    kill = OomKillReport(9, 0.0, (KillSeen(OomKill(0, 42, "victim", 43, 43, "alloc"), None, None, None, False),), 1.0)
    doc = json.loads(report.render_json(kill))
    assert doc["type"] == "oom_kill" and doc["victim_pid"] == 42 and doc["invoker_comm"] == "alloc"
    assert "victim pid=42 comm=victim, invoked by comm=alloc pid=43" in report.render_text(kill)


def test_escape():
    assert escape("a\\b") == "a\\\\b"
    assert escape("é") == "\\xc3\\xa9"


def test_sleep_from_before_start_is_shown_as_lower_bound():
    w = Wait(7, 7, "a", Site.MEMCG_OOM_WAIT, 0, dstate=True, start_known=False)
    text = report.render_text(block([Stall(w, 12 * NS_PER_S, 1)]))
    assert "waited>=12.0s" in text and "(asleep before allocwatch started)" in text
    rec = EpisodeEndReport(2, 0.0, TaskEpisodeEnd(STALL, 7, 7, "a", Site.MEMCG_OOM_WAIT, 20.0, 2, "woke",
                                                  start_known=False))
    assert "waited 20.0s or more (asleep before allocwatch started)" in report.render_text(rec)


def _fields(line):
    """Split a text line the way a log parser would: on spaces, honouring quotes."""
    import shlex

    return dict(tok.split("=", 1) for tok in shlex.split(line, posix=True) if "=" in tok)


def test_comm_with_spaces_cannot_add_fields():
    forged = "x pid=1 tid=1"
    rec = block([stall(77, comm=forged)], {77: TaskDetail("/a b/c=d", "D", [])})
    line = report.render_text(rec).splitlines()[1]
    assert 'comm="x pid=1 tid=1"' in line and 'cgroup="/a b/c=d"' in line
    fields = _fields(line)
    assert fields["pid"] == "77" and fields["tid"] == "77" and fields["comm"] == forged


def test_quotes_and_backslashes_in_a_comm_stay_one_field():
    comm = 'a" pid=9 \\'  # a quote, a forged field, a backslash
    line = report.render_text(block([stall(5, comm=comm)])).splitlines()[1]
    fields = _fields(line)
    assert fields["pid"] == "5" and fields["comm"] == escape(comm).replace("\\\\", "\\")


def test_undecodable_byte_and_literal_backslash_x_differ():
    from allocwatch.kernel import wire

    byte = wire.decode_comm(b"evil\xff")
    literal = wire.decode_comm(b"evil\\xff")
    assert escape(byte) == "evil\\xff" and escape(literal) == "evil\\\\xff"
    texts = {report.render_text(block([stall(1, comm=c)])).splitlines()[1] for c in (byte, literal)}
    docs = {json.loads(report.render_json(block([stall(1, comm=c)])))["tasks"][0]["comm"] for c in (byte, literal)}
    assert len(texts) == 2 and len(docs) == 2


def test_killed_and_exited_waits_say_so():
    def end(ended: str, exact: bool = True) -> EpisodeEndReport:
        return EpisodeEndReport(3, 0.0, TaskEpisodeEnd(STALL, 9, 9, "dd", Site.MEMCG_OOM_WAIT, 12.0, 1, ended,
                                                       exact=exact))

    assert "wait ended (killed) #3: comm=dd" in report.render_text(end("killed"))
    assert json.loads(report.render_json(end("killed")))["ended"] == "killed"
    assert "recovered #3" in report.render_text(end("woke"))
    assert json.loads(report.render_json(end("unseen", exact=False)))["ended"] == "unseen"


def test_long_stack_keeps_the_outermost_frames():
    frames = [f"f{i}" for i in range(30)]
    rec = block([stall(1)], {1: TaskDetail("/a", "D", frames)})
    stack_line = report.render_text(rec).splitlines()[2]
    assert stack_line.startswith("    stack: f0 <- f1") and stack_line.endswith("f26 <- f27 <- f28 <- f29")
    assert "... 18 more ..." in stack_line
    assert json.loads(report.render_json(rec))["tasks"][0]["stack"] == frames


def test_summary_and_limits_have_a_seq():
    from allocwatch.core.records import LimitsReport, SiteSummary, SummaryReport

    doc = json.loads(report.render_json(SummaryReport(11, 0.0, {"oom": SiteSummary(1, 0.5, {})}, {}, 0)))
    assert doc["type"] == "summary" and doc["seq"] == 11
    lim = LimitsReport(12, 0.0, {"dwaits_full": 3}, {"dwaits_full": 10})
    assert json.loads(report.render_json(lim))["seq"] == 12
    assert "D-state map full: 3 sleep(s) not tracked" in report.render_text(lim)


def test_tasks_past_the_block_limit_are_summed_up_by_site_and_cgroup():
    stalls = [stall(t, dur_s=10 + t / 100) for t in range(1, 8)]
    rec = StallReport(7, 0.0, stalls, 7, {t: TaskDetail("/a" if t % 2 else "/b", "D", []) for t in range(1, 8)},
                      held_back=4, max_tasks=3)
    doc = json.loads(report.render_json(rec))
    assert [t["tid"] for t in doc["tasks"]] == [7, 6, 5] and doc["due"] == 7 and doc["held_back"] == 4
    assert doc["more"] == [{"site": "memcg_oom_wait", "cgroup": "/b", "tasks": 2, "longest_s": 10.04},
                           {"site": "memcg_oom_wait", "cgroup": "/a", "tasks": 2, "longest_s": 10.03}]
    text = report.render_text(rec)
    assert "7 task(s) due" in text and "4 task report(s) held back by the rate limit" in text
    assert text.count("and 2 more task(s) site=memcg_oom_wait") == 2


def test_gfp_is_shown_decoded_beside_the_hex():
    rec = block([stall(3, gfp=0x100CCA)], {3: TaskDetail("/cg", "D", [], gfp_flags="GFP_HIGHUSER_MOVABLE")})
    assert "gfp=0x100cca(GFP_HIGHUSER_MOVABLE) order=0" in report.render_text(rec)
    assert json.loads(report.render_json(rec))["tasks"][0]["gfp_flags"] == "GFP_HIGHUSER_MOVABLE"


def test_block_context_and_memcg_say_why_and_what_else():
    from allocwatch.core.host import KswapdInfo, MemcgInfo, MemoryPicture, PressureInfo, PsiLine, TaskInfo, ZoneInfo
    from allocwatch.core.records import BlockContext, Victim

    memcg = MemcgInfo(1, "/box", 64 << 20, 64 << 20, None, True, True, {"oom_kill": 0}, 12, None)
    picture = MemoryPicture(
        {"MemAvailable": 1 << 30, "MemFree": 100 << 20, "Dirty": 8 << 20},
        (ZoneInfo(0, "Normal", 100, 200, 250, 300), ZoneInfo(0, "DMA32", 5000, 200, 250, 300)),
        PressureInfo(PsiLine(12.5, 3.0, 1.0, 10_000_000), PsiLine(4.0, 1.0, 0.5, 4_000_000)),
        {"allocstall": 10},
    )
    ctx = BlockContext(3, 1, 0, (Victim(42, "victim", 12.3),), 2, picture, {"allocstall": 7, "oom_kill": 1},
                       {"some": 1.25, "full": 0.5}, (KswapdInfo(0, 45, "D", ("down_read", "shrink_slab")),))
    detail = TaskDetail("/box", "D", ["mem_cgroup_oom_synchronize"], "GFP_KERNEL", memcg,
                        TaskInfo(3, 3, 1000, "db --serve now", "D"), dying=True)
    rec = StallReport(9, 0.0, [stall(3)], 3, {3: detail}, context=ctx)
    text = report.render_text(rec)
    assert "MemAlloc-Info: stalling=3 dying=1 exiting=0 victim=1 oom_count=2 victims: 42(victim,12s)" in text
    assert "MemAvailable=1.0GiB MemFree=100.0MiB Dirty=8.0MiB; psi memory avg10 some=12.50% full=4.00%" in text
    assert "(+1.250s some, +0.500s full since the last block)" in text
    assert "since the last block: allocstall=+7 oom_kill=+1" in text
    assert "zone node0/Normal: free=100 pages, under its min watermark (min=200 low=250 high=300)" in text
    assert "kswapd0 pid=45 state=D" in text and "stack: down_read <- shrink_slab" in text
    assert "memcg v1: usage=64.0MiB limit=64.0MiB (at its limit) oom_kill_disable=1 under_oom=1" in text
    assert 'uid=1000 cmdline="db --serve now"' in text and "(SIGKILL pending)" in text
    doc = json.loads(report.render_json(rec))
    assert doc["context"]["zones"][0]["under_watermark"] == "min" and doc["context"]["victims"][0]["pid"] == 42
    assert doc["tasks"][0]["memcg"]["near_limit"] is True and doc["tasks"][0]["uid"] == 1000
    # and what that points at, as the block's last line and in JSON (core/advice.py)
    assert [a["kind"] for a in doc["advice"]] == ["memcg_oom_disabled"]
    assert text.splitlines()[-1] == "  what to do (memcg_oom_disabled): " + doc["advice"][0]["text"]
    assert "raise the group's limit" in doc["advice"][0]["text"]


def test_a_dying_task_keeps_its_own_line_out_of_the_group():
    stalls = [stall(t, comm="db worker 1") for t in (1, 2, 3)]
    details = {1: TaskDetail("/a", "D", [], dying=True), 2: TaskDetail("/a", "D", []), 3: TaskDetail("/a", "D", [])}
    text = report.render_text(block(stalls, details))
    assert "tasks=2 site=memcg_oom_wait" in text and text.count("(SIGKILL pending)") == 1


def test_a_reclaim_wait_in_flight_says_what_it_reclaimed_so_far():
    w = Wait(5, 5, "dd", Site.MEMCG_RECLAIM, 0, 0x100CCA, 0, reclaimed_pages=1234)
    rec = block([Stall(w, 12 * NS_PER_S, 1)])
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["reclaimed_so_far_pages"] == 1234 and task["dirty_pause"] is None
    line = report.render_text(rec).splitlines()[1]
    assert "site=memcg_reclaim waited=12.0s gfp=0x100cca order=0 reclaimed_so_far=1234pages cgroup=-" in line
    none_yet = Wait(6, 6, "dd", Site.MEMCG_RECLAIM, 0, 0x100CCA, 0, reclaimed_pages=0)
    assert "reclaimed_so_far=0pages" in report.render_text(block([Stall(none_yet, 12 * NS_PER_S, 1)]))
    unknown = Wait(7, 7, "dd", Site.MEMCG_RECLAIM, 0, 0x100CCA, 0)  # no pass-end tracepoint on this kernel
    assert "reclaimed_so_far" not in report.render_text(block([Stall(unknown, 12 * NS_PER_S, 1)]))


PAUSE = DirtyPause(pause_ms=200, period_ms=216, think_ms=16, paused_ms=0, dirtied_pages=32,
                   dirtied_pause_pages=32, dirty_pages=2101, setpoint_pages=1792, limit_pages=2048)


def test_a_dirty_throttle_sleep_in_flight_says_its_pause_and_why():
    w = Wait(8, 8, "dd", Site.DIRTY_THROTTLE, 0, None, None, dstate=True, dirty_pause=PAUSE)
    rec = block([Stall(w, int(0.15 * NS_PER_S), 1)])
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["dirty_pause"] == {
        "pause_ms": 200, "period_ms": 216, "think_ms": 16, "paused_ms": 0, "dirtied_pages": 32,
        "dirtied_pause_pages": 32, "dirty_pages": 2101, "setpoint_pages": 1792, "limit_pages": 2048,
    }
    line = report.render_text(rec).splitlines()[1]
    assert ("order=- pause=200ms period=216ms think=16ms dirty=2101pages setpoint=1792pages limit=2048pages "
            "dirtied=32pages cgroup=-") in line


def test_a_throttled_task_says_the_pause_of_the_sleep_it_is_in():
    w = Wait(9, 9, "dd", Site.DIRTY_THROTTLE, 0, None, None, dstate=True, dirty_pause=PAUSE)
    f = Finding("throttled", 9, 9, "dd", Site.DIRTY_THROTTLE, 0, 5.1, 1, 0.52, waiting=w)
    rec = StallReport(7, 1_700_000_000.25, [], 0, {}, findings=[f])
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["waiting_site"] == "dirty_throttle" and task["dirty_pause"]["pause_ms"] == 200
    line = report.render_text(rec).splitlines()[1]
    assert "level=1 now=dirty_throttle pause=200ms period=216ms" in line
    between = Finding("throttled", 9, 9, "dd", Site.DIRTY_THROTTLE, 0, 5.1, 1, 0.52)  # awake at this scan
    (task,) = json.loads(report.render_json(StallReport(7, 0.0, [], 0, {}, findings=[between])))["tasks"]
    assert task["waiting_site"] is None and task["dirty_pause"] is None


NOTE = WritebackNote(0, "7:3", 12)
LOOP3 = DeviceState("7:3", "loop3", 1048576.4, 3, 0, 1 << 20, 9.96)


def test_a_writeback_wait_names_its_device_and_how_its_writes_go_in_one_line():
    w = Wait(8, 8, "dd", Site.WRITEBACK_WAIT, 0, None, None, dstate=True, writeback=NOTE)
    rec = block([Stall(w, 12 * NS_PER_S, 1)], {8: TaskDetail("/cg", "D", writeback_device=LOOP3)})
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["writeback"] == {"bdi": "7:3", "ino": 12, "device": "loop3", "written_bytes_per_s": 1048576,
                                 "writes_in_flight": 3, "reads_in_flight": 0, "written_over_s": 10.0,
                                 "write_limit_bytes_per_s": 1048576}
    lines = report.render_text(rec).splitlines()
    assert lines[2] == ("    waiting on writeback of loop3 (7:3) ino=12: written 1.0MiB/s over 10s, "
                        "3 write(s) in flight, write limit 1.0MiB/s")
    unread = block([Stall(w, 12 * NS_PER_S, 1)])  # the kernel's name alone: the device was not read
    assert report.render_text(unread).splitlines()[2] == "    waiting on writeback of 7:3 ino=12"
    assert json.loads(report.render_json(unread))["tasks"][0]["writeback"]["device"] is None


def test_memcg_reclaim_in_a_writeback_wait_and_a_throttled_task_in_one_name_the_device():
    w = Wait(6, 6, "dd", Site.MEMCG_RECLAIM, 0, 0x100CCA, 0, reclaimed_pages=1, writeback=NOTE)
    (task,) = json.loads(report.render_json(block([Stall(w, 12 * NS_PER_S, 1)],
                                                  {6: TaskDetail(writeback_device=LOOP3)})))["tasks"]
    assert task["site"] == "memcg_reclaim" and task["writeback"]["device"] == "loop3"
    f = Finding("throttled", 6, 6, "dd", Site.MEMCG_RECLAIM, 0, 5.1, 1, 0.9, waiting=w)
    rec = StallReport(7, 1_700_000_000.25, [], 0, {6: TaskDetail(writeback_device=LOOP3)}, findings=[f])
    assert report.render_text(rec).splitlines()[2].startswith("    waiting on writeback of loop3 (7:3) ino=12:")
    hostile = Wait(6, 6, "dd", Site.MEMCG_RECLAIM, 0, writeback=WritebackNote(0, "a b\n", 1))
    text = report.render_text(block([Stall(hostile, 12 * NS_PER_S, 1)]))
    assert '"a b\\x0a" ino=1' in text and len(text.splitlines()) == 3


def test_the_journal_entry_of_a_task_waiting_on_writeback_names_the_device():
    from allocwatch.outputs import journal

    w = Wait(8, 8, "dd", Site.WRITEBACK_WAIT, 0, None, None, dstate=True, writeback=NOTE)
    d = json.loads(report.render_json(block([Stall(w, 12 * NS_PER_S, 1)], {8: TaskDetail(writeback_device=LOOP3)})))
    entry = journal.task_entry(d["tasks"][0], d["seq"])
    assert entry["ALLOCWATCH_WRITEBACK_BDI"] == "7:3" and entry["ALLOCWATCH_WRITEBACK_DEVICE"] == "loop3"
    assert "waiting on writeback of loop3 (7:3)" in entry["MESSAGE"]
    assert "ALLOCWATCH_BEHIND" not in entry  # no thread behind it: no field


def test_the_journal_entry_names_the_threads_a_writeback_wait_is_behind():
    from allocwatch.core.behind import Behind
    from allocwatch.outputs import journal

    w = Wait(8, 8, "dd", Site.WRITEBACK_WAIT, 0, None, None, dstate=True, writeback=NOTE)
    rows = (Behind(31, 31, "kworker/u2:3+loop3", "memcg_high_throttle", 1.9),
            Behind(32, 32, "kworker/u2:4+loop3", "memcg_reclaim", 0.4))
    d = json.loads(report.render_json(block([Stall(w, 12 * NS_PER_S, 1)],
                                            {8: TaskDetail(writeback_device=LOOP3, behind=rows)})))
    entry = journal.task_entry(d["tasks"][0], d["seq"])
    assert entry["ALLOCWATCH_BEHIND"] == "kworker/u2:3+loop3 kworker/u2:4+loop3"
    assert "behind it, in memory waits: kworker/u2:3+loop3 pid=31 memcg_high_throttle 1.9s" in entry["MESSAGE"]


def test_the_four_kinds_share_one_block_in_text_and_json():
    """A stall and the three kinds seen across waits come out in the same block,
    longest first, each with its `kind` (JSON) and `kind=` (text, but the stall's)."""
    from allocwatch.core.findings import SiteWindow
    from allocwatch.core.victims import CgroupWaiter

    w = Wait(1, 1, "hog", Site.MEMCG_OOM_WAIT, 0, None, None, dstate=True)
    throttled = Finding("throttled", 2, 2, "dd", Site.MEMCG_RECLAIM, 0, 12.0, 1, 1.0,
                        {"memcg_reclaim": SiteWindow(3, 9.0)})
    livelock = Finding("livelock", 3, 3, "python", Site.MEMCG_RECLAIM, 0, 10.0, 1, 0.8, passes_per_s=41644.4)
    victim = Finding("stuck_victim", 4, 4, "python", Site.OOM, 0, 11.0, 1, victim_state="D", reaped=False)
    waiter = CgroupWaiter(3, 3, "python", "memcg_reclaim", 0.004, 0.8)
    details = {4: TaskDetail("/g", "D", ["percpu_rwsem_wait"], cgroup_waiting=(waiter,), cgroup_waiting_count=1)}
    rec = StallReport(7, 1_700_000_000.25, [Stall(w, 15 * NS_PER_S, 1)], 1, details,
                      findings=[livelock, victim, throttled])
    tasks = json.loads(report.render_json(rec))["tasks"]
    assert [(t["kind"], t["tid"]) for t in tasks] == [("stall", 1), ("throttled", 2), ("stuck_victim", 4),
                                                      ("livelock", 3)]
    stuck = tasks[2]
    assert stuck["reaped"] is False and stuck["waiting_in_cgroup"]["count"] == 1
    assert "reaped" not in tasks[1] and "waiting_in_cgroup" not in tasks[3]  # a victim's fields only
    text = report.render_text(rec)
    assert text.count("stall report #7") == 1
    kinds = [ln.split(" kind=")[1].split()[0] for ln in text.splitlines() if " kind=" in ln]
    assert kinds == ["throttled", "stuck_victim", "livelock"]
    assert "the OOM reaper has not run on it" in text
    assert "still waiting in its cgroup: 1 task(s): comm=python pid=3 tid=3 memcg_reclaim 0.0s share=80%" in text
    quiet = StallReport(8, 0.0, [], 0, {4: TaskDetail("/g", "D")}, findings=[replace(victim, reaped=None)])
    lines = report.render_text(quiet)
    assert "still waiting in its cgroup: none" in lines and "OOM reaper" not in lines
    # tasks of its group asleep in D state elsewhere (issue 26, item 6): counted and said
    stuck_fio = CgroupWaiter(8, 8, "fio", None, None, 0.0, "xfs_ilock")
    blocked = StallReport(9, 0.0, [], 0, {4: TaskDetail("/g", "D", cgroup_waiting=(waiter, stuck_fio),
                                                         cgroup_waiting_count=2, cgroup_blocked_count=1)},
                          findings=[victim])
    w = json.loads(report.render_json(blocked))["tasks"][0]["waiting_in_cgroup"]
    assert (w["count"], w["blocked"]) == (2, 1)
    assert [t["blocked_in"] for t in w["tasks"]] == [None, "xfs_ilock"]
    assert ("still waiting in its cgroup: 2 task(s) (1 of them blocked outside memory waits): comm=python pid=3 "
            "tid=3 memcg_reclaim 0.0s share=80%, comm=fio pid=8 tid=8 blocked in xfs_ilock (D) share=0%"
            in report.render_text(blocked))


def test_an_episode_that_ended_by_a_kill_never_reads_recovered():
    from allocwatch.core.episodes import TaskEpisodeEnd
    from allocwatch.core.records import EpisodeEndReport

    def text(kind: str, ended: str) -> str:
        end = TaskEpisodeEnd(kind, 7, 7, "dd", Site.MEMCG_RECLAIM, 31.0, 3, ended)
        return report.render_text(EpisodeEndReport(4, 0.0, end))

    assert " recovered #4" in text("stall", "woke")
    assert " wait ended (oom-killed) #4" in text("stall", "oom-killed")
    assert " throttled ended (killed) #4" in text("throttled", "killed")
    assert " livelock over #4" in text("livelock", "woke")
    for kind in ("stall", "throttled", "livelock"):
        for ended in ("oom-killed", "killed", "exited"):
            assert "recovered" not in text(kind, ended) and " over " not in text(kind, ended)


def test_a_livelock_names_the_shrinkers_its_reclaim_called_and_the_block_the_largest_slab_caches():
    """Issue 29, item 1: the shrinkers by function name, what they were asked to
    scan and freed, whether their mask forbade the file system; the machine's
    largest slab caches beside SReclaimable and SUnreclaim."""
    from allocwatch.core.host import MemoryPicture, SlabCache
    from allocwatch.core.model import ShrinkCount
    from allocwatch.core.records import BlockContext

    sb, deferred = ShrinkCount(0xFFFF1000, 412, 52000, 0, 250000, 0xC40), ShrinkCount(0xFFFF2000, 3, 9, 2, 40, 0xCC0)
    f = Finding("livelock", 3, 3, "python", Site.MEMCG_RECLAIM, 0, 10.0, 1, 0.8, passes_per_s=41644.4,
                shrinkers=(sb, deferred))
    detail = TaskDetail("/g", "R", shrink_gfp={0xC40: ("GFP_NOFS", True), 0xCC0: ("GFP_KERNEL", False)})
    mem = MemoryPicture({"SReclaimable": 300 << 20, "SUnreclaim": 40 << 20}, (), None, {})
    context = BlockContext(1, 0, 0, (), 0, mem, slab_caches=(SlabCache("dentry", 200 << 20, 1_000_000, 999_000),))
    rec = StallReport(7, 0.0, [], 1, {3: detail}, context=context, findings=[f],
                      symbols={0xFFFF1000: "super_cache_scan"})
    d = json.loads(report.render_json(rec))
    assert d["tasks"][0]["window"]["shrinkers"] == [
        {"shrinker": "super_cache_scan", "calls": 412, "asked": 52000, "freed": 0, "objects": 250000,
         "gfp": "0xc40", "gfp_flags": "GFP_NOFS", "no_fs_io": True},
        {"shrinker": "0xffff2000", "calls": 3, "asked": 9, "freed": 2, "objects": 40,  # no name: its address
         "gfp": "0xcc0", "gfp_flags": "GFP_KERNEL", "no_fs_io": False},
    ]
    assert d["context"]["slab_caches"] == [
        {"name": "dentry", "bytes": 200 << 20, "objects": 1_000_000, "active_objects": 999_000}]
    text = report.render_text(rec)
    assert ("    shrinkers in the window: super_cache_scan calls=412 asked=52000 freed=0 objects=250000 (no fs/io), "
            "0xffff2000 calls=3 asked=9 freed=2 objects=40\n") in text
    assert "  slab: reclaimable=300.0MiB unreclaimable=40.0MiB; largest: dentry 200.0MiB (1000000 objects)\n" in text
    quiet = StallReport(8, 0.0, [], 1, {}, context=BlockContext(1, 0, 0, (), 0, mem),
                        findings=[replace(f, shrinkers=())])
    assert "shrinkers" not in report.render_text(quiet) and "  slab:" not in report.render_text(quiet)


def test_tasks_sharing_their_group_stack_and_cmdline_read_as_tasks_that_do_not():
    """A block makes the plain form of what tasks share once (records.Shared):
    the JSON is the same whether the objects are shared or only equal, and
    the empty fields (no pod, no stack) each keep their own empty form."""
    from allocwatch.core.host import MemcgInfo, TaskInfo

    def memcg():
        return MemcgInfo(1, "/box", 64 << 20, 64 << 20, None, True, True, {"oom_kill": 0}, 12, None)

    def cmd():
        return "".join(["./hold", "er 9"])  # equal, not the same object

    one, frames = memcg(), ("mem_cgroup_oom_synchronize", "exc_page_fault")
    shared = {t: TaskDetail("/box", "D", frames, memcg=one, task=TaskInfo(9, t, 0, "./holder 9", "D")) for t in (1, 2)}
    apart = {t: TaskDetail("/box", "D", list(frames), memcg=memcg(), task=TaskInfo(9, t, 0, cmd(), "D"))
             for t in (1, 2)}
    bare = {1: TaskDetail("/box", "D", None), 2: TaskDetail(None, "D", [])}
    stalls = [stall(1, dur_s=13.0), stall(2)]
    a, b = (json.loads(report.render_json(block(stalls, d)))["tasks"] for d in (shared, apart))
    assert a == b and a[0]["memcg"]["path"] == "/box" and a[1]["cmdline"] == "./holder 9"
    bare_tasks = json.loads(report.render_json(block(stalls, bare)))["tasks"]
    assert [(t["pod"], t["stack"], t["recent_stack"], t["memcg"], t["cgroup"]) for t in bare_tasks] == [
        (None, [], [], None, "/box"), (None, [], [], None, None)]


def test_a_block_of_tasks_with_details_alike_and_apart_reads_as_each_made_alone():
    """records.Shared.detail gives tasks whose detail says the same one dict:
    random blocks over a few stacks, groups, cmdlines, memcgs, pods, states and
    threads behind, where each task's detail is also deep-copied (equal, shared
    with none), must read the same; a task never gets another's detail."""

    from allocwatch.core.behind import Behind
    from allocwatch.core.host import MemcgInfo, TaskInfo
    from allocwatch.core.pods import PodRef

    def fresh(x):
        """An equal object, not the same one."""
        if x is None:
            return None
        if isinstance(x, tuple):
            return [*x] if not x or isinstance(x[0], str) else tuple(replace(y) for y in x)
        return replace(x)

    def twin(d):
        return replace(d, cgroup=None if d.cgroup is None else "".join(d.cgroup), stack=fresh(d.stack),
                       memcg=fresh(d.memcg), task=fresh(d.task), pod=fresh(d.pod), behind=fresh(d.behind),
                       recent_stack=fresh(d.recent_stack), gfp_no_fs_io=fresh(d.gfp_no_fs_io),
                       beside=fresh(d.beside))

    rng = random.Random(30)
    stacks = [("mem_cgroup_oom_synchronize", "exc_page_fault"), ("folio_wait_writeback",), None]
    memcgs = [MemcgInfo(1, "/a", 1 << 20, 1 << 20, None, True, True, {"oom_kill": 0}, 3, None), None,
              MemcgInfo(1, "/b", 2 << 20, 4 << 20, None, False, False, {}, 0, None)]
    pods = [None, PodRef("uid-1", "burstable", namespace="ns", name="web-0")]
    behind = [(), (Behind(7, 7, "kworker/u8:3+flush-7:3", "memcg_reclaim", 1.5),)]
    beside = [(), (Behind(8, 8, "jbd2/loop8-8", "writeback_wait", 0.7),)]
    for _ in range(40):
        details, stalls = {}, []
        choices = {  # each field from its pool; most tasks of a block take its first pick, as threads do
            "cgroup": ["/a", "/b", None], "state": ["D", "R"], "stack": stacks, "memcg": memcgs, "pod": pods,
            "uid": [0, 1000], "cmdline": ["./x", None], "dying": [False, True], "exiting": [False, True],
            "gfp_no_fs_io": [(), ("GFP_NOFS",)], "behind": behind, "beside": beside,
            "recent_stack": [None, ("shrink_node",)]}
        base = {k: rng.choice(v) for k, v in choices.items()}
        for tid in range(1, rng.randint(2, 60)):
            f = {k: rng.choice(v) if rng.random() < 0.15 else base[k] for k, v in choices.items()}
            who = TaskInfo(9, tid, f["uid"], f["cmdline"], "D")
            details[tid] = TaskDetail(
                f["cgroup"], f["state"], f["stack"], memcg=f["memcg"], task=who,
                dying=f["dying"], exiting=f["exiting"], pod=f["pod"], gfp_no_fs_io=f["gfp_no_fs_io"],
                behind=f["behind"], beside=f["beside"], recent_stack=f["recent_stack"])
            stalls.append(stall(tid, dur_s=rng.choice([11.0, 12.5, 30.0])))
        apart = {tid: twin(d) for tid, d in details.items()}
        assert report.render_json(block(stalls, details)) == report.render_json(block(stalls, apart))


def _json_whole(dicts: list) -> str:
    """The JSON stream as it was, each record one json.dumps."""
    import json

    return "".join(json.dumps(d, ensure_ascii=True, separators=(",", ":")) + "\n" for d in dicts)


def _block_of(n: int, comm: str = "stall") -> dict:
    detail = {"cgroup": "/aw/x", "stack": ["mem_cgroup_oom_synchronize", "exc_page_fault"], "state": "D"}
    return {"type": "stall_report", "seq": 3, "time": "2026-12-07T16:00:00.000Z",
            "tasks": [{"kind": "stall", "tid": 1000 + i, "comm": comm, "waited_s": 12.5 + i, **detail}
                      for i in range(n)], "tasks_count": n, "host": {"tasks": {"a": 1}}}


def test_a_big_block_s_json_comes_out_a_task_at_a_time_and_reads_the_same():
    from allocwatch.outputs import report

    marked = _block_of(400)
    marked["host"] = {"note": "\x00allocwatch: the tasks go here"}  # a value outside the tasks says the mark
    for block in (_block_of(0), _block_of(10), _block_of(report.STREAM_TASKS), _block_of(3000, "st\udcffll \u00e9"),
                  _block_of(400, "\x00allocwatch: the tasks go here"), marked):
        whole = _json_whole([block, {"type": "limits_reached", "seq": 4}])
        pieces = list(report.render_pieces([block, {"type": "limits_reached", "seq": 4}], "json"))
        assert "".join(pieces) == whole
        if block is marked:
            assert len(pieces) == 2  # said twice: the record whole, as before
        elif len(block["tasks"]) >= report.STREAM_TASKS:
            assert len(pieces) == len(block["tasks"]) + 2 and max(map(len, pieces)) < 1000
    limits = {"type": "limits_reached", "seq": 1, "time": "t", "grown": {"waits_full": 1}, "totals": {"waits_full": 1}}
    text = [limits] * 3
    assert list(report.render_pieces(text, "text")) == [report.record_text(limits, "t allocwatch:")] * 3


def _text_whole(head: str, d: dict) -> str:
    """A stall block's text as it was, one string made of its lines."""
    lines = report.stall_head_lines(head, d)
    for g in report.group_tasks(d["tasks"]):
        if len(g) > 1 and g[0].get("kind", "stall") == "stall":
            lines += report._group_lines(g)
        else:
            for t in g:
                lines += report.task_lines(t)
    return "\n".join(lines + report.more_lines(d) + report.advice_lines(d)) + "\n"


def test_a_big_block_s_text_comes_out_a_group_of_tasks_at_a_time_and_reads_the_same():
    rng = random.Random(7)
    comms = ["hog", "dd", "pg\udcff", "java"]
    stalls = [stall(tid, comm=rng.choice(comms) if tid % 3 else f"prog{tid}", dur_s=rng.choice([11.0, 30.0]),
                    site=rng.choice([Site.MEMCG_OOM_WAIT, Site.MEMCG_RECLAIM])) for tid in range(1, 3000)]
    details = {tid: TaskDetail(f"/g{tid % 5}", "D", ["mem_cgroup_oom_synchronize"], dying=tid % 97 == 0)
               for tid in range(1, 3000)}
    listed = replace(block(stalls, details), max_tasks=100000)
    for rec in (listed, block(stalls, details), block(stalls[:1], details), block([], {})):
        d = to_dict(rec)
        whole = _text_whole(f"{d['time']} allocwatch:", d)
        pieces = list(report.render_pieces([d], "text"))
        assert "".join(pieces) == whole == report.render_dicts([d], "text")
        if rec is listed:  # a piece a group: the 1,000 programs of a task each are 1,000 pieces
            assert len(pieces) > 1000 and max(map(len, pieces)) < 2000


def test_the_stream_writes_a_block_s_pieces_in_order_a_bounded_piece_at_a_time():
    import os
    import threading

    from allocwatch.outputs import report, sinks

    r, w = os.pipe()
    writes: list[int] = []
    real = sinks.write_all

    def counted(fd, data, *a):
        writes.append(len(data))
        real(fd, data, *a)

    sinks.write_all = counted
    try:
        sink = sinks.FdSink(w, render=lambda b: report.render_pieces(b, "json"))
        block = [_block_of(5000)]
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 20), b"")))
        reader.start()
        sink.write(block)
        assert sink.close(5.0)
        os.close(w)
        reader.join(5)
    finally:
        sinks.write_all = real
    assert b"".join(got).decode() == _json_whole(block)
    assert len(writes) > 2 and max(writes) < sinks.WRITE_CHARS + 1000
    os.close(r)


def test_a_stream_sharing_its_file_writes_a_block_in_one_write_after_its_drop_notice():
    import os
    import threading

    from allocwatch.outputs import report, sinks

    r, w = os.pipe()
    err = os.dup(w)  # `>log 2>&1`: stderr is the same pipe
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert sinks.shares_file(w, err) and not sinks.shares_file(w, null)
    finally:
        os.close(null)
    writes: list[bytes] = []
    real = sinks.write_all

    def counted(fd, data, *a):
        writes.append(bytes(data))
        real(fd, data, *a)

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 20), b"")))
    reader.start()
    sinks.write_all = counted
    try:
        sink = sinks.FdSink(w, render=lambda b: report.render_pieces(b, "json"), one_write=True,
                            drop_notice=lambda n: f"NOTICE {n}\n")
        sink._emit([_block_of(3000)], 2)  # as the writer thread does after two blocks were dropped
        sink.close(2.0)
    finally:
        sinks.write_all = real
        os.close(w)
        os.close(err)
        reader.join(5)
        os.close(r)
    whole = "NOTICE 2\n" + _json_whole([_block_of(3000)])
    assert len(writes) == 1 and writes[0].decode() == whole and b"".join(got).decode() == whole


def test_a_streamed_block_after_dropped_ones_starts_with_the_notice():
    import os
    import threading

    from allocwatch.outputs import report, sinks

    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 20), b"")))
    reader.start()
    try:
        sink = sinks.FdSink(w, render=lambda b: report.render_pieces(b, "json"), drop_notice=lambda n: f"NOTICE {n}\n")
        sink._emit([_block_of(3000)], 3)
        sink.close(2.0)
    finally:
        os.close(w)
        reader.join(5)
        os.close(r)
    assert b"".join(got).decode() == "NOTICE 3\n" + _json_whole([_block_of(3000)])
