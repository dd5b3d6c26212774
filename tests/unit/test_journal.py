# SPDX-License-Identifier: Apache-2.0
"""The journal output: entries and fields per record, a sender that is slow or failing."""

import json
import socket
import threading

import pytest

from allocwatch.core.model import OomKill
from allocwatch.core.oomkills import KillSeen
from allocwatch.core.records import OomKillReport, StallReport, TaskDetail, to_dict
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Stall, Wait
from allocwatch.errors import OutputFailed
from allocwatch.outputs import journal

HOSTILE = "x\nMESSAGE_ID=0\x1b"


def stall(tid, site=Site.MEMCG_OOM_WAIT, dur_s=12.0, comm="hog"):
    return Stall(Wait(tid, tid + 1000, comm, site, 0, 0xCC0, 0, dstate=True), int(dur_s * NS_PER_S), 1)


def stall_dict(*stalls, details=None):
    return to_dict(StallReport(7, 1_700_000_000.25, list(stalls), len(stalls), details or {}))


def test_stall_block_is_a_head_entry_and_one_entry_per_task():
    d = stall_dict(stall(1), stall(2, Site.DIRECT_RECLAIM, 20.0), details={1: TaskDetail("/a/b", "D", ["f1", "f2"])})
    head, *tasks = journal.entries(d)
    assert head["MESSAGE_ID"] == journal.MESSAGE_IDS["stall_report"] and head["PRIORITY"] == "4"
    assert head["MESSAGE"].startswith("allocwatch: stall report #7: 2 task(s) due")
    assert "comm=" not in head["MESSAGE"]  # the tasks are entries of their own
    assert [t["ALLOCWATCH_SITE"] for t in tasks] == ["direct_reclaim", "memcg_oom_wait"]  # longest first
    one = tasks[1]
    assert one["MESSAGE_ID"] == journal.MESSAGE_IDS["stall_task"]
    assert one["ALLOCWATCH_PID"] == "1001" and one["ALLOCWATCH_TID"] == "1"
    assert one["ALLOCWATCH_DURATION_S"] == "12.000" and one["ALLOCWATCH_CGROUP"] == "/a/b"
    assert one["ALLOCWATCH_STACK"] == "f1\nf2" and one["ALLOCWATCH_REPORT_SEQ"] == "7"
    assert one["MESSAGE"].startswith("allocwatch: stalled: comm=hog pid=1001 tid=1 site=memcg_oom_wait waited=12.0s")
    assert json.loads(one["ALLOCWATCH_JSON"])["stack"] == ["f1", "f2"]
    assert "ALLOCWATCH_CGROUP" not in tasks[0]  # unknown: left out, not sent empty


def test_a_task_cannot_forge_fields_or_lines():
    (_, task) = journal.entries(stall_dict(stall(3, comm=HOSTILE)))
    assert "\n" not in task["MESSAGE"] and "\x1b" not in task["MESSAGE"]
    assert task["ALLOCWATCH_COMM"] == "x\\x0aMESSAGE_ID=0\\x1b"
    assert task["MESSAGE_ID"] == journal.MESSAGE_IDS["stall_task"]


def test_oom_kill_is_an_error_with_its_victim():
    kill = OomKill(time_ns=0, victim_pid=9, victim_comm="big", invoker_tid=5, invoker_pid=5, invoker_comm="hog")
    (e,) = journal.entries(to_dict(OomKillReport(3, 1_700_000_000.0, (KillSeen(kill, None, None, None, False),), 1.0)))
    assert e["PRIORITY"] == "3" and e["MESSAGE_ID"] == journal.MESSAGE_IDS["oom_kill"]
    assert e["ALLOCWATCH_VICTIM_PID"] == "9" and e["MESSAGE"].startswith("allocwatch: oom kill #3: victim pid=9")
    assert e["ALLOCWATCH_COUNT"] == "1"


def test_every_message_id_is_a_distinct_128_bit_id():
    ids = list(journal.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids) and all(len(i) == 32 and int(i, 16) for i in ids)


def test_a_stuck_journal_drops_whole_blocks_never_blocks_publish():
    release = threading.Event()
    sent: list[dict] = []

    def slow(fields):
        release.wait(10)
        sent.append(fields)

    sink = journal.JournalSink(slow, max_blocks=2)
    d = stall_dict(stall(1))
    for _ in range(20):
        sink.write([d])  # returns at once while the sender is stuck
    assert sink.dropped_blocks >= 17
    release.set()
    sink.write([d])  # a later block gets out, after a notice of the drop
    assert sink.close(5)
    kinds = [f["ALLOCWATCH_TYPE"] for f in sent]
    assert "blocks_dropped" in kinds
    assert kinds.count("stall_task") == sink.written_blocks


def test_a_failing_journal_is_counted_and_said_once():
    said = []

    def gone(_fields):
        raise ConnectionRefusedError(111, "Connection refused")

    sink = journal.JournalSink(gone, on_error=said.append)
    for _ in range(3):
        sink.write([stall_dict(stall(1))])
    assert sink.close(5) is True  # not fatal: the watchdog goes on
    assert sink.failed_entries == 6 and len(said) == 1 and "Connection refused" in said[0]


def test_open_sink_needs_a_listening_journald(tmp_path):
    with pytest.raises(OutputFailed, match="no journald socket"):
        journal.open_sink(print, socket=tmp_path / "socket")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputFailed, match="no journald socket"):
        journal.open_sink(print, socket=tmp_path / "file")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(str(tmp_path / "journal"))

        def missing():
            raise ImportError("no module named systemd")

        with pytest.raises(OutputFailed, match="python3-systemd"):
            journal.open_sink(print, socket=tmp_path / "journal", sender=missing)
        sink = journal.open_sink(print, socket=tmp_path / "journal", sender=lambda: lambda f: None)
        assert sink.close(1)
    finally:
        s.close()


def test_a_finding_s_shrinkers_are_a_field_of_its_entry():
    from allocwatch.core.findings import Finding
    from allocwatch.core.model import ShrinkCount

    f = Finding("livelock", 3, 3, "python", Site.MEMCG_RECLAIM, 0, 10.0, 1, 0.8, shrinkers=(
        ShrinkCount(0xA, 9, 900, 0, 50, 0xC40), ShrinkCount(0xB, 1, 1, 1, 1, 0xC40)))
    d = to_dict(StallReport(7, 0.0, [], 1, {}, findings=[f], symbols={0xA: "super_cache_scan", 0xB: "x\ny"}))
    (_, task) = journal.entries(d)
    assert task["ALLOCWATCH_SHRINKERS"] == "super_cache_scan x\\x0ay"  # escaped like every name
    assert "shrinkers in the window: super_cache_scan calls=9" in task["MESSAGE"]
    (_, bare) = journal.entries(stall_dict(stall(1)))
    assert "ALLOCWATCH_SHRINKERS" not in bare
