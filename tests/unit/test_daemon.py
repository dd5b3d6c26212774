# SPDX-License-Identifier: Apache-2.0
"""The scan loop end to end, with a fake source, fake /proc and a fake clock."""

import json
import os

from allocwatch.app.daemon import Daemon
from allocwatch.config import Config
from allocwatch.core.model import DirtyPause, InflightWait, OomKill, WaitEnd
from allocwatch.core.sites import SITE_DSTATE, Site
from allocwatch.kernel import procfs
from allocwatch.kernel.probes import plan
from allocwatch.outputs import report
from tests.unit.fakes import FakeSource, ListSink, captured, fake_proc

S = 1_000_000_000


def make(tmp_path, **cfg):
    clock = {"ns": 0}
    src, sink = FakeSource(), ListSink()
    d = Daemon(
        Config(format="json", **cfg), src, plan(captured("6.18")), [sink],
        proc=tmp_path, clock_ns=lambda: clock["ns"], wall_s=lambda: 1e9,
    )
    return d, src, sink, clock


def test_procfs_readers(tmp_path):
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"])
    assert procfs.kernel_stack(tmp_path, 7, 7) == ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"]
    assert procfs.memory_cgroup(tmp_path, 7, 7) == "/box"
    assert procfs.task_state(tmp_path, 7, 7) == "D"
    assert procfs.kernel_stack(tmp_path, 8, 8) is None


def test_v2_cgroup_when_no_v1_memory_line(tmp_path):
    fake_proc(tmp_path, 7, [], cgroup="0::/system.slice/x.service\n")
    assert procfs.memory_cgroup(tmp_path, 7, 7) == "/system.slice/x.service"


def test_dstate_stall_reported_escalated_recovered(tmp_path):
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"])
    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    for t in range(1, 7):
        clock["ns"] = t * S
        d.scan_once()
    docs = [json.loads(line) for w in sink.writes for line in w.splitlines()]
    assert [(x["type"], x["tasks"][0]["level"]) for x in docs] == [("stall_report", 1), ("stall_report", 2),
                                                                   ("stall_report", 3)]
    task = docs[0]["tasks"][0]
    assert task["site"] == "memcg_oom_wait" and task["cgroup"] == "/box" and task["state"] == "D"
    assert task["stack"][0] == "mem_cgroup_oom_synchronize"
    src.waits = []
    src.events = [WaitEnd(7, 7, "hog", SITE_DSTATE, 0, int(6.5 * S), None, None, None)]
    clock["ns"] = 7 * S
    d.scan_once()
    assert len(sink.writes) == 3  # one scan of grace: a task between two waits has not recovered
    src.events = []
    clock["ns"] = 8 * S
    d.scan_once()
    last = json.loads(sink.writes[-1])
    assert last["type"] == "recovered" and last["duration_s"] == 6.5 and last["exact"] and last["reports"] == 3
    assert d.tracker.dstate_completed[Site.MEMCG_OOM_WAIT].count == 1


def test_one_write_per_scan_with_kill_block_and_recovery(tmp_path):
    d, src, sink, clock = make(tmp_path, threshold_s=1.0)
    src.waits = [InflightWait(t, t, "w", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0) for t in range(10, 15)]
    clock["ns"] = 2 * S
    d.scan_once()
    src.waits = src.waits[1:]
    src.events = [
        OomKill(0, 99, "victim", 10, 10, "w"),
        WaitEnd(10, 10, "w", int(Site.MEMCG_RECLAIM), 0, int(2.2 * S), 0xCC0, 0, None),
    ]
    clock["ns"] = 3 * S
    d.scan_once()
    src.events = []
    clock["ns"] = 4 * S
    d.scan_once()
    assert len(sink.writes) == 3  # one write per scan, whatever it holds
    types = [json.loads(line)["type"] for line in sink.writes[1].splitlines()]
    assert types == ["oom_kill", "stall_report"]  # level 3 of the 4 still waiting
    types = [json.loads(line)["type"] for line in sink.writes[2].splitlines()]
    assert types == ["stall_report", "recovered"]  # tid 10's end, after one scan of grace
    first = json.loads(sink.writes[0])
    assert len(first["tasks"]) == 5 and first["tasks"][0]["gfp"] == "0xcc0"


def test_short_unnamed_sleeps_cost_no_stack_read(tmp_path):
    d, src, sink, clock = make(tmp_path)
    src.waits = [InflightWait(t, t, "x", SITE_DSTATE, 0, None, None, None) for t in range(100)]
    clock["ns"] = S // 2
    d.scan_once()
    assert d.namer.stack_reads == 0 and sink.writes == []


def test_run_stops_on_event(tmp_path):
    import threading

    d, src, sink, clock = make(tmp_path, scan_interval_s=0.01)
    stop = threading.Event()
    t = threading.Thread(target=d.run, args=(stop,))
    t.start()
    stop.set()
    t.join(5)
    assert not t.is_alive() and d.scans >= 1


class SeedingSource(FakeSource):
    def __init__(self):
        super().__init__()
        self.seeded: dict[int, int] = {}

    def seed_dwait(self, tid, pid, comm, start_ns):
        self.seeded[tid] = start_ns
        self.waits.append(InflightWait(tid, pid, comm, SITE_DSTATE, start_ns, None, None, None))

    def drop_dwait(self, tid, start_ns):
        self.seeded.pop(tid, None)
        self.waits = [w for w in self.waits if w.tid != tid]


def test_tasks_already_in_d_at_start_are_seeded_as_lower_bounds(tmp_path):
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"])
    fake_proc(tmp_path, 8, ["ep_poll"], state="S")
    clock = {"ns": 100 * S}
    src, sink = SeedingSource(), ListSink()
    d = Daemon(Config(format="json", threshold_s=1.0), src, plan(captured("6.18")), [sink],
               proc=tmp_path, clock_ns=lambda: clock["ns"], wall_s=lambda: 1e9)
    assert d.seed_preexisting() == 1 and src.seeded == {7: 100 * S}
    clock["ns"] = 102 * S
    d.scan_once()
    (task,) = json.loads(sink.writes[0])["tasks"]
    assert task["tid"] == 7 and task["start_known"] is False and task["duration_s"] == 2.0
    d.scan_once()  # the end of a seeded sleep is a lower bound too
    src.waits = []
    src.events = [WaitEnd(7, 7, "a", SITE_DSTATE, 100 * S, 5 * S, None, None, None)]
    for t in (106, 107):
        clock["ns"] = t * S
        d.scan_once()
        src.events = []
    rec = json.loads(sink.writes[-1])
    assert rec["type"] == "recovered" and rec["start_known"] is False and rec["duration_s"] == 5.0


def test_summary_merges_kernel_histograms_and_stack_named_sleeps(tmp_path):
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize"])
    d, src, sink, clock = make(tmp_path, threshold_s=1.0)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    clock["ns"] = 2 * S
    d.scan_once()
    src.waits = []
    src.events = [WaitEnd(7, 7, "hog", SITE_DSTATE, 0, 3 * S, None, None, None)]
    clock["ns"] = 3 * S
    d.scan_once()
    doc = d.summary()
    assert doc["type"] == "summary"
    assert doc["waits_completed"]["memcg_reclaim"] == {
        "count": 41, "total_s": 0.0041, "buckets": {"0.001024": 40, "0.262144": 1}
    }
    oom = doc["waits_completed"]["memcg_oom_wait"]
    assert oom["count"] == 1 and oom["total_s"] == 3.0
    assert oom["buckets"] == {"4.194304": 1}  # stack-named sleeps land in a bucket too
    hist = d.completed()["memcg_oom_wait"]
    assert hist.buckets[-1] == (float("inf"), 1) and hist.count == 1


def test_the_summary_lists_the_episodes_a_stop_leaves_open(tmp_path):
    """Task 7 still in its wait at the stop, task 8's wait just ended (its end waits
    for one more scan): the summary lists both, 7 held, 8 quiet; a stop with every
    episode ended lists none."""
    for t in (7, 8):
        fake_proc(tmp_path, t, ["mem_cgroup_oom_synchronize"])
    d, src, sink, clock = make(tmp_path, threshold_s=1.0)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None),
                 InflightWait(8, 8, "cat", SITE_DSTATE, S, None, None, None)]
    clock["ns"] = 3 * S
    d.scan_once()
    src.waits = src.waits[:1]
    clock["ns"] = 4 * S
    d.scan_once()
    doc = d.summary()
    assert [(e["pid"], e["comm"], e["kind"], e["site"], e["duration_s"], e["quiet"]) for e in doc["open_episodes"]] == [
        (7, "hog", "stall", "memcg_oom_wait", 4.0, False), (8, "cat", "stall", "memcg_oom_wait", 2.0, True)]
    assert doc["open_episodes_count"] == 2
    text = report.render_dicts([doc], "text")
    assert "  still open at exit: 2 episode(s)\n    hog pid=7 tid=7 stall at memcg_oom_wait for 4.0s" in text
    assert "cat pid=8 tid=8 stall at memcg_oom_wait for 2.0s, reported 1 time(s) (nothing held it" in text
    src.waits = []
    for ns in (5 * S, 6 * S):
        clock["ns"] = ns
        d.scan_once()
    after = d.summary()
    assert after["open_episodes"] == [] and after["open_episodes_count"] == 0
    assert "still open" not in report.render_dicts([after], "text")


def test_the_summary_lists_at_most_max_tasks_per_block_open_episodes_and_counts_the_rest(tmp_path):
    for t in (7, 8, 9):
        fake_proc(tmp_path, t, ["mem_cgroup_oom_synchronize"])
    d, src, sink, clock = make(tmp_path, threshold_s=1.0, max_tasks_per_block=2)
    src.waits = [InflightWait(t, t, "hog", SITE_DSTATE, (t - 7) * S, None, None, None) for t in (7, 8, 9)]
    clock["ns"] = 4 * S
    d.scan_once()
    doc = d.summary()
    assert [e["tid"] for e in doc["open_episodes"]] == [7, 8] and doc["open_episodes_count"] == 3  # longest first
    assert "  still open at exit: 3 episode(s), 1 not listed" in report.render_dicts([doc], "text")


def _seven_blocks_then_eight_waits(tmp_path, first_scan_ns, eight_since_ns, **cfg):
    """Tasks 7 and 8 in the memcg OOM wait, threshold 1 s: 7 since 0, scanned at
    first_scan_ns (its first block); then 8 in flight too, since eight_since_ns."""
    for t in (7, 8):
        fake_proc(tmp_path, t, ["mem_cgroup_oom_synchronize"])
    d, src, sink, clock = make(tmp_path, threshold_s=1.0, **cfg)
    src.waits = [InflightWait(7, 7, "a", SITE_DSTATE, 0, None, None, None)]
    clock["ns"] = first_scan_ns
    d.scan_once()
    src.waits.append(InflightWait(8, 8, "b", SITE_DSTATE, eight_since_ns, None, None, None))
    return d, src, sink, clock


def test_rate_limit_holds_blocks_back_and_says_so(tmp_path):
    d, src, sink, clock = _seven_blocks_then_eight_waits(tmp_path, 1 * S, S, report_interval_s=5.0)
    for t in (2, 3, 4):  # 7 escalates, 8 becomes due: within 5 s of the first block
        clock["ns"] = t * S
        d.scan_once()
    clock["ns"] = 6 * S
    d.scan_once()
    blocks = [json.loads(w.splitlines()[0]) for w in sink.writes]
    assert len(blocks) == 2 and blocks[1]["held_back"] >= 2, blocks


def test_cgroup_filter_reports_only_matching_tasks_and_their_ends(tmp_path):
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize"], cgroup="4:memory:/box/web\n")
    fake_proc(tmp_path, 8, ["mem_cgroup_oom_synchronize"], cgroup="4:memory:/other\n")
    d, src, sink, clock = make(tmp_path, threshold_s=1.0, cgroups=("/box",))
    src.waits = [InflightWait(t, t, "x", SITE_DSTATE, 0, None, None, None) for t in (7, 8)]
    clock["ns"] = 2 * S
    d.scan_once()
    src.waits = []
    src.events = [WaitEnd(t, t, "x", SITE_DSTATE, 0, 3 * S, None, None, None) for t in (7, 8)]
    for t in (3, 4):
        clock["ns"] = t * S
        d.scan_once()
        src.events = []
    docs = [json.loads(line) for w in sink.writes for line in w.splitlines()]
    assert [t["tid"] for t in docs[0]["tasks"]] == [7]
    assert [r["tid"] for r in docs if r["type"] == "recovered"] == [7]


def test_a_block_a_few_ms_early_is_not_held_back_and_held_back_tasks_come_out_later(tmp_path):
    d, src, sink, clock = _seven_blocks_then_eight_waits(tmp_path, int(1.005 * S), 0)  # report interval 1 s, scan 1 s
    clock["ns"] = int(1.999 * S)  # 0.994 s later: within the slack
    d.scan_once()
    tids = [{t["tid"] for t in json.loads(w.splitlines()[0])["tasks"]} for w in sink.writes]
    assert tids == [{7}, {8}]  # 8 went out, not held back by a 6 ms drift


def test_held_back_stalls_are_in_the_next_block(tmp_path):
    d, src, sink, clock = _seven_blocks_then_eight_waits(tmp_path, 1 * S, S, report_interval_s=10.0)
    clock["ns"] = 2 * S  # 8 is due, held back
    d.scan_once()
    clock["ns"] = 11 * S
    d.scan_once()
    blocks = [json.loads(w.splitlines()[0]) for w in sink.writes]
    assert len(blocks) == 2 and 8 in {t["tid"] for t in blocks[1]["tasks"]} and blocks[1]["held_back"] >= 1


def _loop3(d, tmp_path):
    """A fake sysfs where bdi 7:3 is the block device loop3, read by the daemon's
    device reader: the disk's directory, for its stat."""
    from allocwatch.kernel.blockdev import WritebackDevices

    sysfs = tmp_path / "sys"
    disk = sysfs / "block" / "loop3"
    disk.mkdir(parents=True)
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / "7:3").symlink_to(disk)
    d.wb_devices = WritebackDevices(sysfs, tmp_path / "no-mountinfo")
    return disk


def test_a_wait_on_writeback_and_the_reclaim_around_it_name_the_device_with_its_write_rate(tmp_path):
    """The device's counters are read every scan while a wait names it: the first
    block already has a rate measured over the seconds before it."""
    from allocwatch.core.model import WritebackNote

    d, src, sink, clock = make(tmp_path, threshold_s=5.5)
    disk = _loop3(d, tmp_path)
    note = WritebackNote(S // 2, "7:3", 12)
    src.waits = [
        InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, reclaimed_pages=1, writeback=note),
        InflightWait(7, 7, "dd", SITE_DSTATE, S // 2 + 1000, None, None, int(Site.WRITEBACK_WAIT), writeback=note),
    ]
    for second, sectors in ((1, 0), (3, 4096), (6, 5120)):  # 2 MiB in 2 s, then 512 KiB in 3 s
        (disk / "stat").write_text(f"0 0 0 0 9 0 {sectors} 0 2 0 0\n")
        clock["ns"] = second * S
        d.scan_once()
    (rec,) = [json.loads(line) for w in sink.writes for line in w.splitlines()]
    assert {t["site"] for t in rec["tasks"]} == {"memcg_reclaim"}  # the sleep is in the same task line
    wb = rec["tasks"][0]["writeback"]
    assert wb == {"bdi": "7:3", "ino": 12, "device": "loop3", "written_bytes_per_s": 512 << 10,
                  "writes_in_flight": 2, "reads_in_flight": None, "written_over_s": 5.0,
                  "write_limit_bytes_per_s": None}


def test_the_threads_behind_a_writeback_wait_are_those_of_its_device(tmp_path):
    """With the device known (bdi 7:3, block device loop3), only the kernel threads
    that name it are behind the wait: loop3's worker and journal, not loop30's."""
    from allocwatch.core.model import WritebackNote

    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    _loop3(d, tmp_path)
    fake_proc(tmp_path, 7, ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list"])
    for tid, name in ((5, "kworker/u8:1+loop3"), (6, "kworker/u8:2+loop30"), (8, "jbd2/loop3-8")):
        t = tmp_path / str(tid) / "task" / str(tid)
        t.mkdir(parents=True)
        (t / "stat").write_text(f"{tid} ({name}) D 2 0 0 0 -1 {0x04208060} 0 0 0\n")
    src.waits = [InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, writeback=WritebackNote(1, "7:3", 12))]
    src.waits += [InflightWait(tid, tid, "kworker", int(Site.MEMCG_RECLAIM), S, 0xC00, 0) for tid in (5, 6, 8)]
    clock["ns"] = 3 * S
    d.scan_once()
    (dd,) = [t for t in json.loads(sink.writes[-1])["tasks"] if t["tid"] == 7]
    assert dd["writeback"]["device"] == "loop3"
    assert [b["name"] for b in dd["behind"]] == ["kworker/u8:1+loop3", "jbd2/loop3-8"]


def test_the_journal_thread_waiting_on_the_same_writeback_is_listed_beside_the_wait(tmp_path):
    """jbd2 of loop3 in its own writeback wait is not ahead of dd but beside it, in
    JSON and in the text line under dd; loop3's worker in reclaim stays behind."""
    from allocwatch.core.model import WritebackNote

    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    _loop3(d, tmp_path)
    fake_proc(tmp_path, 7, ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list"])
    for tid, name in ((5, "kworker/u8:1+loop3"), (8, "jbd2/loop3-8")):
        t = tmp_path / str(tid) / "task" / str(tid)
        t.mkdir(parents=True)
        (t / "stat").write_text(f"{tid} ({name}) D 2 0 0 0 -1 {0x04208060} 0 0 0\n")
    src.waits = [InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, writeback=WritebackNote(1, "7:3", 12)),
                 InflightWait(5, 5, "kworker", int(Site.MEMCG_RECLAIM), S, 0xC00, 0),
                 InflightWait(8, 8, "jbd2/loop3-8", int(Site.WRITEBACK_WAIT), 2 * S, None, None)]
    clock["ns"] = 3 * S
    d.scan_once()
    rec = json.loads(sink.writes[-1])
    (dd,) = [t for t in rec["tasks"] if t["tid"] == 7]
    assert [b["name"] for b in dd["behind"]] == ["kworker/u8:1+loop3"]
    assert dd["beside"] == [{"tid": 8, "pid": 8, "name": "jbd2/loop3-8", "site": "writeback_wait", "waited_s": 1.0}]
    text = report.render_dicts([rec], "text")
    assert "    beside it, waiting on the same device's writeback: jbd2/loop3-8 pid=8 writeback_wait 1.0s" in text


def test_the_journal_of_a_partition_is_beside_a_wait_on_its_disks_writeback(tmp_path):
    """Writeback of bdi 8:0 (sda) while the journal of the file system on sda1
    waits on it too: jbd2/sda1-8 is named after the partition, and is beside."""
    from allocwatch.core.model import WritebackNote
    from allocwatch.kernel.blockdev import WritebackDevices

    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    sysfs = tmp_path / "sys"
    (sysfs / "block" / "sda" / "sda1").mkdir(parents=True)
    (sysfs / "block" / "sda" / "sda1" / "partition").write_text("1\n")
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / "8:0").symlink_to(sysfs / "block" / "sda")
    d.wb_devices = WritebackDevices(sysfs, tmp_path / "no-mountinfo")
    fake_proc(tmp_path, 7, ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list"])
    t = tmp_path / "8" / "task" / "8"
    t.mkdir(parents=True)
    (t / "stat").write_text(f"8 (jbd2/sda1-8) D 2 0 0 0 -1 {0x04208060} 0 0 0\n")
    src.waits = [InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, writeback=WritebackNote(1, "8:0", 12)),
                 InflightWait(8, 8, "jbd2/sda1-8", int(Site.WRITEBACK_WAIT), 2 * S, None, None)]
    clock["ns"] = 3 * S
    d.scan_once()
    (dd,) = [t for t in json.loads(sink.writes[-1])["tasks"] if t["tid"] == 7]
    assert dd["writeback"]["device"] == "sda" and [b["name"] for b in dd["beside"]] == ["jbd2/sda1-8"]


def test_site_detail_of_waits_in_flight_reaches_the_block(tmp_path):
    """Pages reclaimed so far grow scan by scan; a hinted dirty-throttle sleep keeps its pause."""
    d, src, sink, clock = make(tmp_path, threshold_s=0.1, thresholds_s={"memcg_reclaim": 1.0})
    pause = DirtyPause(200, 216, 16, 0, 32, 32, 2101, 1792, 2048)
    src.waits = [
        InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, reclaimed_pages=40),
        InflightWait(8, 8, "dd", SITE_DSTATE, int(0.9 * S), None, None, int(Site.DIRTY_THROTTLE), dirty_pause=pause),
    ]
    clock["ns"] = S
    d.scan_once()
    tasks = {t["tid"]: t for t in json.loads(sink.writes[-1])["tasks"]}
    assert tasks[7]["reclaimed_so_far_pages"] == 40 and tasks[7]["dirty_pause"] is None
    assert tasks[8]["site"] == "dirty_throttle" and tasks[8]["dirty_pause"]["pause_ms"] == 200
    assert tasks[8]["reclaimed_so_far_pages"] is None
    src.waits = [InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, reclaimed_pages=97)]
    clock["ns"] = 2 * S
    d.scan_once()
    (task,) = json.loads(sink.writes[-1].splitlines()[0])["tasks"]
    assert task["level"] == 2 and task["reclaimed_so_far_pages"] == 97  # as of this scan, not the first


def test_a_dstate_entry_whose_task_is_awake_is_dropped_not_reported(tmp_path):
    """The kernel map can keep a sleep whose switch-in was missed: when it comes
    due and /proc shows the task awake, it is given back, not reported."""
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize"], state="S")
    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    dropped = []
    src.drop_dwait = lambda tid, start_ns: dropped.append((tid, start_ns))
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    for t in range(1, 4):
        clock["ns"] = t * S
        d.scan_once()
    assert dropped == [(7, 0)] and sink.writes == []
    assert d.counters({})["dwaits_stale_dropped"] == 1


def test_oom_constraint_is_memcg_when_the_group_has_kills_of_its_own(tmp_path, monkeypatch):
    """Read after the kill, the invoker's group may be back under its limit: its
    own oom_kill count still says the OOM was the group's (seen on 6.1, cgroup v2)."""
    from allocwatch.core.host import MemcgInfo
    from allocwatch.kernel import hostfs

    d, *_ = make(tmp_path)

    def info(kills, usage):
        return MemcgInfo(version=2, path="/g", usage_bytes=usage, limit_bytes=64 << 20, high_bytes=None,
                         oom_kill_disable=None, under_oom=None, events={"oom_kill": kills}, failcnt=None, pressure=None)

    for kills, usage, want in ((1, 20 << 20, "memcg"), (0, 20 << 20, "global"), (0, 64 << 20, "memcg")):
        monkeypatch.setattr(hostfs, "memcg_info", lambda *a, kills=kills, usage=usage, **k: info(kills, usage))
        assert d.host.oom_constraint("/g") == want, (kills, usage)


def test_a_stuck_victim_says_whether_it_was_reaped_and_who_waits_in_its_cgroup(tmp_path):
    """An OOM victim that cannot exit: a victim asleep in D a threshold after it was chosen, the OOM
    reaper's short pass counted in its account only (no end event), and the task that
    invoked the OOM still reclaiming in the same group; a task elsewhere is left out."""
    from allocwatch.core.model import Acct
    from allocwatch.core.sites import NR_SITES
    from allocwatch.core.snapshot import SiteCoverage

    fake_proc(tmp_path, 42, ["percpu_rwsem_wait", "mnt_want_write"], cgroup="4:memory:/box/g\n0::/\n")
    fake_proc(tmp_path, 50, [], cgroup="4:memory:/box/g\n0::/\n", state="R")
    fake_proc(tmp_path, 60, [], cgroup="4:memory:/elsewhere\n0::/\n", state="R")
    clock = {"ns": 0}
    src, sink = FakeSource(), ListSink()
    reaped = [0] * NR_SITES
    reaped[Site.OOM_REAPER] = 1
    src.task_accounts = lambda: {42: Acct(42, 42, "oom_reaper", (0,) * NR_SITES, tuple(reaped), 0, 0, 0)}
    d = Daemon(
        Config(format="json", threshold_s=10.0), src, plan(captured("6.18")), [sink], proc=tmp_path,
        clock_ns=lambda: clock["ns"], wall_s=lambda: 1e9,
        coverage=[SiteCoverage("oom_reaper", "tracepoint pair", True)],
    )
    src.events = [OomKill(0, 42, "victim", 50, 50, "hog")]
    src.waits = [InflightWait(50, 50, "hog", int(Site.MEMCG_RECLAIM), 9 * S, 0xCC0, 0),
                 InflightWait(60, 60, "far", int(Site.MEMCG_RECLAIM), 9 * S, 0xCC0, 0)]
    for t in range(1, 12):
        clock["ns"] = t * S
        d.scan_once()
    (block,) = [json.loads(ln) for w in sink.writes for ln in w.splitlines() if '"stall_report"' in ln]
    (victim,) = [t for t in block["tasks"] if t["kind"] == "stuck_victim"]
    assert (victim["pid"], victim["comm"], victim["state"], victim["duration_s"]) == (42, "victim", "D", 10.0)
    assert victim["reaped"] is True and victim["stack"][0] == "percpu_rwsem_wait"
    w = victim["waiting_in_cgroup"]
    assert w["count"] == 1
    assert [(x["pid"], x["site"], x["waited_s"]) for x in w["tasks"]] == [(50, "memcg_reclaim", 2.0)]
    text = report.render_dicts([block], "text")
    assert "kind=stuck_victim" in text and "the OOM reaper has run on it" in text
    assert "still waiting in its cgroup: 1 task(s): comm=hog pid=50 tid=50 memcg_reclaim 2.0s" in text


def test_a_stuck_victim_in_a_memory_wait_of_its_own_still_says_who_waits_in_its_cgroup(tmp_path):
    """A victim stuck in memcg reclaim behind writeback (XFS, fio) is also a stall of
    its own, in the same blocks: every one of its reports still lists who waits in
    its group (issue 26, item 6 reported a count of 0 from the second report on)."""
    from allocwatch.core.snapshot import SiteCoverage

    fake_proc(tmp_path, 42, ["folio_wait_writeback", "shrink_folio_list"], cgroup="4:memory:/box/g\n0::/\n")
    fake_proc(tmp_path, 50, [], cgroup="4:memory:/box/g\n0::/\n", state="R")
    clock = {"ns": 0}
    src, sink = FakeSource(), ListSink()
    d = Daemon(
        Config(format="json", threshold_s=10.0), src, plan(captured("6.18")), [sink], proc=tmp_path,
        clock_ns=lambda: clock["ns"], wall_s=lambda: 1e9,
        coverage=[SiteCoverage("oom_reaper", "tracepoint pair", True)],
    )
    src.events = [OomKill(0, 42, "victim", 50, 50, "hog")]
    src.waits = [InflightWait(42, 42, "victim", int(Site.MEMCG_RECLAIM), 0, 0x100CCA, 0),
                 InflightWait(50, 50, "hog", int(Site.MEMCG_RECLAIM), 9 * S, 0xCC0, 0)]
    for t in range(1, 32):
        clock["ns"] = t * S
        d.scan_once()
    blocks = [json.loads(ln) for w in sink.writes for ln in w.splitlines() if '"stall_report"' in ln]
    victims = [t for b in blocks for t in b["tasks"] if t["kind"] == "stuck_victim"]
    assert victims and any(t["pid"] == 42 and t["kind"] == "stall" for b in blocks for t in b["tasks"])
    for v in victims:
        assert v["waiting_in_cgroup"]["count"] == 1, v["waiting_in_cgroup"]
        assert [x["pid"] for x in v["waiting_in_cgroup"]["tasks"]] == [50]


def test_each_tasks_share_of_the_window_is_in_the_snapshot_and_its_rows(tmp_path):
    """The share the throttled rule reads is exported per task: the snapshot's shares,
    and the share of each row of waits in flight that the socket (and top) give."""
    from allocwatch.core.model import Acct
    from allocwatch.core.sites import NR_SITES
    from allocwatch.core.snapview import snapshot_dict

    d, src, _, clock = make(tmp_path)
    done = [0] * NR_SITES
    count = [0] * NR_SITES

    def accounts():
        return {7: Acct(7, 7, "dd", tuple(done), tuple(count), 0, 0, 0, busy_ns=sum(done))}

    src.task_accounts = accounts
    d.scan_once()  # t=0: its first sample
    done[Site.DIRTY_THROTTLE], count[Site.DIRTY_THROTTLE] = 3 * S, 15  # 3 s of sleeps in the 10 s since
    src.waits = [InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 8 * S, 0xCC0, 0)]  # and 2 s in flight
    clock["ns"] = 10 * S
    snap = d.scan_once()
    assert snap.shares[7] == 0.5
    (row,) = snapshot_dict(snap)["inflight"]
    assert row["tid"] == 7 and row["share"] == 0.5


def test_a_task_has_its_cgroup_read_once_per_wait_listed_or_counted(tmp_path, monkeypatch):
    """Past max_tasks_per_block a task is only counted (by cgroup). Listed or
    counted, its cgroup is read once in its wait and kept for the escalations,
    until the wait ends."""
    for t in range(10, 14):
        fake_proc(tmp_path, t, ["mem_cgroup_oom_synchronize"], cgroup=f"4:memory:/box{t}\n")
    reads: list[int] = []
    real = procfs.memory_cgroup

    def counting(proc, pid, tid):
        reads.append(tid)
        return real(proc, pid, tid)

    monkeypatch.setattr(procfs, "memory_cgroup", counting)
    d, src, sink, clock = make(tmp_path, threshold_s=1.0, max_tasks_per_block=1)
    src.waits = [InflightWait(t, t, "w", int(Site.MEMCG_RECLAIM), (14 - t) * S // 10, 0xCC0, 0) for t in range(10, 14)]
    for t in (2, 3, 4):  # three blocks: levels 1, 2, 3 of the same four waits
        clock["ns"] = t * S
        d.scan_once()
    blocks = [json.loads(w) for w in sink.writes]
    assert len(blocks) == 3 and all(len(b["tasks"]) == 1 for b in blocks)
    listed = {b["tasks"][0]["tid"] for b in blocks}
    assert len(listed) == 1
    (shown,) = listed
    counted = sorted({10, 11, 12, 13} - listed)
    assert sorted(reads) == [10, 11, 12, 13]  # once each, over three blocks
    gone = next(w for w in src.waits if w.tid == counted[0])
    src.waits = [w for w in src.waits if w is not gone]  # that wait ended: its cgroup is forgotten
    clock["ns"] = 5 * S
    d.scan_once()
    assert gone.tid not in {k[0] for k in d.facts._cgroups}


def test_a_map_that_fills_is_said_in_the_next_block_and_on_stderr_once_per_growth(tmp_path):
    d, src, sink, clock = make(tmp_path)
    said: list[str] = []
    d.on_limit = said.append
    counts = {"events_lost": 0, "dwaits_full": 0}
    src.stats = lambda: dict(counts)
    d.scan_once()
    counts["dwaits_full"] = 76
    clock["ns"] += S
    d.scan_once()
    clock["ns"] += S
    d.scan_once()  # nothing grew: nothing said
    counts["dwaits_full"], counts["waits_full"] = 77, 5
    clock["ns"] += S
    d.scan_once()
    limits = [json.loads(ln) for w in sink.writes for ln in w.splitlines() if '"limits_reached"' in ln]
    assert [r["grown"] for r in limits] == [{"dwaits_full": 76}, {"waits_full": 5, "dwaits_full": 1}]
    assert limits[-1]["totals"] == {"waits_full": 5, "dwaits_full": 77} and limits[0]["seq"] < limits[1]["seq"]
    assert len(said) == 3 and said[0].startswith("D-state map full: 76 sleep(s) not tracked")
    assert any(s.startswith("in-flight wait map full: 5 wait(s)") for s in said)


def test_what_a_block_says_of_a_task_that_cannot_change_is_read_before_it_is_due(tmp_path, monkeypatch):
    """cgroup, uid and cmdline of a wait nearing its threshold are read in an
    earlier scan (two scan intervals ahead); the scan that makes its block reads
    only stat, and the block still says them all."""
    fake_proc(tmp_path, 10, ["mem_cgroup_oom_synchronize"], cgroup="4:memory:/box\n")
    (tmp_path / "10" / "task" / "10" / "status").write_text("Name:\tw\nUid:\t1234\t1234\t1234\t1234\n")
    (tmp_path / "10" / "cmdline").write_bytes(b"w\0--fast\0")
    d, src, sink, clock = make(tmp_path, threshold_s=5.0)
    opened: list[tuple[int, str]] = []

    def watch(real):
        def watching(path, *a, **kw):
            if str(path).startswith(str(tmp_path)):
                opened.append((clock["ns"] // S, str(path).rsplit("/", 1)[-1]))
            return real(path, *a, **kw)
        return watching

    monkeypatch.setattr("builtins.open", watch(open))  # file objects
    monkeypatch.setattr("os.open", watch(os.open))  # and descriptors (procfs.read_bytes)
    src.waits = [InflightWait(10, 10, "w", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0)]
    for t in range(1, 7):
        clock["ns"] = t * S
        d.scan_once()
    facts = {"cgroup", "status", "cmdline"}
    assert {name for at, name in opened if at < 3} & facts == set()  # not before it nears
    assert {name for at, name in opened if at == 3} & facts == facts  # 2 s from its threshold of 5 s
    due = {name for at, name in opened if at == 5}
    assert "stat" in due and not {"cgroup", "status", "cmdline"} & due
    (block,) = [json.loads(w) for w in sink.writes]
    (task,) = block["tasks"]
    assert (task["cgroup"], task["uid"], task["cmdline"], task["state"]) == ("/box", 1234, "w --fast", "D")


def test_read_ahead_reads_owners_only_for_the_tasks_a_block_lists(tmp_path):
    for t in range(10, 14):
        fake_proc(tmp_path, t, ["mem_cgroup_oom_synchronize"], cgroup=f"4:memory:/box{t}\n")
    d, src, sink, clock = make(tmp_path, threshold_s=5.0, max_tasks_per_block=2)
    src.waits = [InflightWait(t, t, "w", int(Site.MEMCG_RECLAIM), t * S // 10, 0xCC0, 0) for t in range(10, 14)]
    clock["ns"] = 4_500_000_000  # each 3.2 to 3.5 s in: within 2 s of its threshold
    d.scan_once()
    assert {k[0] for k in d.facts._cgroups} == {10, 11, 12, 13}  # every task's, for the count by cgroup
    assert {k[0] for k in d.facts._owners} == {10, 11}  # the two longest: those a block lists
    assert not sink.writes


def test_a_task_waiting_on_writeback_lists_the_kernel_threads_in_memory_waits_behind_it(tmp_path):
    """Issue 29, item 4: dd waits on writeback (its memcg reclaim sits in
    folio_wait_writeback); the flusher kworker of the device is itself in memcg
    reclaim, another kworker is not a writeback helper, a user thread named like
    one is no kernel thread: only the flusher is listed under dd."""
    fake_proc(tmp_path, 7, ["folio_wait_bit", "folio_wait_writeback", "shrink_folio_list"])
    for tid, name, flags in ((5, "kworker/u8:3+flush-7:3", 0x04208060), (6, "kworker/1:1+events", 0x04208060),
                             (9, "flush-7:3", 0x00400100)):
        t = tmp_path / str(tid) / "task" / str(tid)
        t.mkdir(parents=True)
        (t / "stat").write_text(f"{tid} ({name}) D 2 0 0 0 -1 {flags} 0 0 0\n")
    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    src.waits = [
        InflightWait(7, 7, "dd", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0),
        InflightWait(5, 5, "kworker/u8:3", int(Site.MEMCG_RECLAIM), int(2.5 * S), 0xC00, 0),
        InflightWait(6, 6, "kworker/1:1", int(Site.DIRECT_RECLAIM), int(2.5 * S), 0xCC0, 0),
        InflightWait(9, 9, "flush-7:3", int(Site.DIRECT_RECLAIM), int(2.5 * S), 0xCC0, 0),
    ]
    clock["ns"] = 3 * S
    d.scan_once()
    (dd,) = [t for t in json.loads(sink.writes[-1])["tasks"] if t["tid"] == 7]
    assert dd["behind"] == [{"tid": 5, "pid": 5, "name": "kworker/u8:3+flush-7:3", "site": "memcg_reclaim",
                             "waited_s": 0.5}]
    assert "    behind it, in memory waits: kworker/u8:3+flush-7:3 pid=5 memcg_reclaim 0.5s" in report.render_dicts(
        [json.loads(sink.writes[-1])], "text")


def test_a_sleep_named_unrelated_is_left_to_the_kernel_until_the_map_is_crowded(tmp_path):
    """Deleting a sleep the raw sched_switch counted, while it is open, leaves its
    slot's count behind for good: the source is asked to let it go (it keeps it
    while there is room), once per sleep, and the two outcomes are counted apart."""
    fake_proc(tmp_path, 9, ["wait_for_vfork_done", "kernel_clone"])
    fake_proc(tmp_path, 10, ["wait_for_vfork_done", "kernel_clone"])
    d, src, sink, clock = make(tmp_path, threshold_s=2.0)
    crowded = {"now": False}
    asked = []

    def let_go(tid, start_ns):
        asked.append((tid, start_ns))
        return crowded["now"]

    src.let_go_dwait = let_go
    src.waits = [InflightWait(9, 9, "sh", SITE_DSTATE, 0, None, None, None)]
    for t in range(1, 5):
        clock["ns"] = t * S
        d.scan_once()
    assert asked == [(9, 0)] and sink.writes == []  # named once, never reported, while it stays in the map
    assert (d.counters({})["dwaits_unrelated_left"], d.counters({})["dwaits_unrelated_dropped"]) == (1, 0)
    crowded["now"] = True
    src.waits.append(InflightWait(10, 10, "sh", SITE_DSTATE, 5 * S, None, None, None))
    for t in range(5, 9):
        clock["ns"] = t * S
        d.scan_once()
    assert asked == [(9, 0), (10, 5 * S)] and sink.writes == []
    assert (d.counters({})["dwaits_unrelated_left"], d.counters({})["dwaits_unrelated_dropped"]) == (1, 1)


def test_entries_that_did_not_change_give_the_very_waits_of_the_last_scan(tmp_path):
    """The source gives back an unchanged map entry as the very object it gave
    before (kernel/mapread.py); so do the waits made of it, and the tracker's
    answer for a scan in which nothing moved is the last one (core/tracker.py)."""
    d, src, _, clock = make(tmp_path, threshold_s=1.0)
    answers = []
    real = d.tracker.scan
    d.tracker.scan = lambda *a, **k: answers.append(real(*a, **k)) or answers[-1]
    src.waits = [InflightWait(t, t, "w", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0) for t in range(10, 13)]
    clock["ns"] = 5 * S
    d.scan_once()
    first = list(d.last_scan[0])
    clock["ns"] = 6 * S
    d.scan_once()
    assert all(a is b for a, b in zip(first, d.last_scan[0], strict=True))
    assert answers[1] is answers[0]
    moved = InflightWait(11, 11, "w", int(Site.MEMCG_RECLAIM), 0, 0xCC0, 0, reclaimed_pages=7)  # the kernel wrote it
    src.waits = [src.waits[0], moved, src.waits[2]]
    clock["ns"] = 7 * S
    d.scan_once()
    now = d.last_scan[0]
    assert now[0] is first[0] and now[2] is first[2] and now[1] is not first[1]
    assert now[1].reclaimed_pages == 7
