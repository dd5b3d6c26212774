# SPDX-License-Identifier: Apache-2.0
"""Which device a writeback wait waits on: the join of the kernel's note to the
wait (core/wbdevice.py), the write rate, and the sysfs readers (kernel/blockdev.py)."""

from __future__ import annotations

import os
from pathlib import Path

from allocwatch.core.model import InflightWait, WritebackNote
from allocwatch.core.sites import SITE_DSTATE, Site
from allocwatch.core.wbdevice import DeviceCounters, NoteJoin, WriteRates, note_belongs
from allocwatch.kernel import blockdev

S = 1_000_000_000
MIB = 1 << 20
HINT_NS = 50_000_000


def sleep(start_ns: int, hint: Site | None = Site.WRITEBACK_WAIT, tid: int = 7) -> InflightWait:
    return InflightWait(tid, tid, "dd", SITE_DSTATE, start_ns, None, None, int(hint) if hint is not None else None)


def pair(site: Site, start_ns: int, tid: int = 7) -> InflightWait:
    return InflightWait(tid, tid, "dd", int(site), start_ns, 0x100CCA, 0)


def test_a_writeback_sleep_gets_the_note_taken_just_before_it():
    note = WritebackNote(10 * S - 30_000, "7:3", 12)
    assert note_belongs(sleep(10 * S), note, HINT_NS)
    assert not note_belongs(sleep(10 * S + HINT_NS + 1_000_000), note, HINT_NS)  # an earlier sleep's note
    assert not note_belongs(sleep(note.time_ns - 1), note, HINT_NS)  # the next sleep's
    assert not note_belongs(sleep(10 * S, Site.DIRTY_THROTTLE), note, HINT_NS)  # another kind of sleep
    assert not note_belongs(sleep(10 * S, None), note, HINT_NS)


def test_a_reclaim_wait_names_the_device_it_waited_on_since_it_began():
    note = WritebackNote(10 * S, "7:3", 12)
    assert note_belongs(pair(Site.MEMCG_RECLAIM, 2 * S), note, HINT_NS)  # seconds into the wait: still its
    assert note_belongs(pair(Site.DIRECT_RECLAIM, 10 * S), note, HINT_NS)
    assert not note_belongs(pair(Site.MEMCG_RECLAIM, 10 * S + 1), note, HINT_NS)  # taken before this wait
    assert not note_belongs(pair(Site.COMPACTION, 2 * S), note, HINT_NS)
    assert not note_belongs(pair(Site.MEMCG_RECLAIM, 2 * S), WritebackNote(10 * S, "", 12), HINT_NS)


def test_the_join_gives_each_wait_its_note_and_the_same_object_while_nothing_changes():
    join = NoteJoin(HINT_NS)
    reclaim, wb, other = pair(Site.MEMCG_RECLAIM, 2 * S), sleep(10 * S), sleep(10 * S, tid=8)
    note = WritebackNote(10 * S - 1000, "7:3", 12)
    got = join.join([reclaim, wb, other], {7: note})
    assert [w.writeback for w in got] == [note, note, None]
    assert got[2] is other
    again = join.join([reclaim, wb, other], {7: note})
    assert again[0] is got[0] and again[1] is got[1]
    newer = WritebackNote(10 * S + 5, "7:3", 13)  # the next sleep's: the reclaim wait takes it, this sleep not
    third = join.join([reclaim, wb], {7: newer})
    assert third[0].writeback == newer and third[1] is wb


def test_the_write_rate_is_taken_over_seconds_of_reads_so_a_burst_is_averaged():
    rates = WriteRates()
    assert rates.observe("7:3", 1000, 10 * S) is None  # one read: no rate
    for tenth in range(1, 40):  # a scan every 0.1 s, nothing written: under 5 s, no rate yet
        assert rates.observe("7:3", 1000, 10 * S + tenth * S // 10) is None
    # a throttled loop device: 4 MiB (8192 sectors) at once after 8 s of nothing
    assert rates.observe("7:3", 1000 + 8192, 15 * S) == (4 * MIB / 5, 5.0)  # not 4 MiB/s: over 5 s
    for tenth in range(1, 51):
        got = rates.observe("7:3", 1000 + 8192, 15 * S + tenth * S // 10)
    assert got == (4 * MIB / 10, 10.0)  # 10 s on: the window holds 10 s, the burst in it
    assert rates.observe("7:3", 1000 + 8192, 26 * S)[0] == 0  # the burst left the window
    rate = rates.rate("7:3")
    assert rate is not None and rate[0] == 0 and 10 <= rate[1] < 11  # the reads kept are about a second apart
    assert rates.observe("7:3", 10, 27 * S) is None  # the counters went back: a new device under that name
    assert rates.observe("8:0", 0, 100 * S) is None
    assert rates.rate("7:3") is None  # not read for a window: forgotten


def fake_sys(tmp_path: Path, stat: str = "", inflight: str | None = "       0        3\n") -> Path:
    sys = tmp_path / "sys"
    disk = sys / "devices" / "virtual" / "block" / "loop3"
    disk.mkdir(parents=True)
    (sys / "dev" / "block").mkdir(parents=True)
    os.symlink("../../devices/virtual/block/loop3", sys / "dev" / "block" / "7:3")
    (disk / "stat").write_text(stat or "  10 0 80 5   40 0 2048 900   3 100 905 0 0 0 0 0 0\n")
    if inflight is not None:
        (disk / "inflight").write_text(inflight)
    return sys


def test_a_bdi_is_named_by_its_block_device_and_read_from_sysfs(tmp_path):
    sys = fake_sys(tmp_path)
    assert blockdev.block_device(sys, "7:3") == "loop3"
    assert blockdev.block_device(sys, "7:4") is None  # gone
    assert blockdev.block_device(sys, "../../etc") is None  # not MAJ:MIN: never a path
    assert blockdev.counters(sys, "7:3") == DeviceCounters(2048, 3, 0)
    assert blockdev.counters(sys, "0:53") is None


def test_a_disks_partitions_are_the_children_with_a_partition_file(tmp_path):
    sys = tmp_path / "sys"
    for child, part in (("sda1", True), ("sda2", True), ("queue", False), ("holders", False)):
        (sys / "block" / "sda" / child).mkdir(parents=True)
        if part:
            (sys / "block" / "sda" / child / "partition").write_text("1\n")
    assert blockdev.partitions(sys, "sda") == ("sda1", "sda2")
    assert blockdev.partitions(sys, "loop3") == ()  # gone, or none
    assert blockdev.partitions(sys, "../sda") == () and blockdev.partitions(sys, "") == ()


def test_counters_without_an_inflight_file_take_the_stat_total_and_a_bad_stat_gives_none(tmp_path):
    sys = fake_sys(tmp_path, inflight=None)
    assert blockdev.counters(sys, "7:3") == DeviceCounters(2048, 3, None)
    (sys / "dev" / "block" / "7:3" / "stat").write_text("1 2 3\n")
    assert blockdev.counters(sys, "7:3") is None


def test_the_root_blkio_groups_write_throttles_are_read_from_where_v1_mounts_it(tmp_path):
    blkio = tmp_path / "blkio"
    blkio.mkdir()
    (blkio / blockdev.BLKIO_WRITE_BPS).write_text("7:3 1048576\n7:4 0\nbad line\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 25 0:26 / {blkio} rw,nosuid - cgroup cgroup rw,blkio\n")
    assert blockdev.write_limits(mi) == {"7:3": 1 << 20}
    mi.write_text(f"30 25 0:26 / {blkio} rw,nosuid - cgroup2 cgroup2 rw\n")
    assert blockdev.write_limits(mi) == {}


def test_a_v2_groups_write_limit_is_the_lowest_io_max_wbps_of_it_and_its_ancestors(tmp_path):
    root = tmp_path / "cg2"
    (root / "system.slice" / "backup.service").mkdir(parents=True)
    (root / "system.slice" / "io.max").write_text("8:0 rbps=max wbps=4194304 riops=max wiops=max\n")
    (root / "system.slice" / "backup.service" / "io.max").write_text(
        "8:0 rbps=1048576 wbps=max riops=max wiops=max\n7:3 rbps=max wbps=524288 riops=max wiops=100\n")
    assert blockdev.io_max_chain(root, "/system.slice/backup.service") == {"8:0": 4 << 20, "7:3": 512 << 10}
    assert blockdev.io_max_chain(root, "/system.slice") == {"8:0": 4 << 20}
    assert blockdev.io_max_chain(root, "/") == {} and blockdev.io_max_chain(root, "/gone/x") == {}
    assert blockdev.io_max_chain(root, "/system.slice/../..") == {}  # never a path out of the tree
    assert blockdev.parse_io_max("8:0 wbps=max\nbad\n8:1 wbps=0\n") == {}


def test_a_tasks_v2_write_limit_joins_the_v1_root_limit_the_lower_one_shown(tmp_path):
    sys = fake_sys(tmp_path)
    root = tmp_path / "cg2"
    (root / "app").mkdir(parents=True)
    (root / "app" / "io.max").write_text("7:3 rbps=max wbps=262144 riops=max wiops=max\n")
    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 25 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n")
    devices = blockdev.WritebackDevices(sys, mi)
    devices.sample(["7:3"], 10 * S)
    assert devices.state("7:3", "/app").write_limit_bytes_per_s == 256 << 10
    assert devices.state("7:3", "/other").write_limit_bytes_per_s is None
    assert devices.state("7:3").write_limit_bytes_per_s is None  # no group known: v1's root rule only


def test_the_devices_of_waits_in_flight_are_sampled_each_scan_for_a_rate(tmp_path):
    sys = fake_sys(tmp_path)
    devices = blockdev.WritebackDevices(sys, tmp_path / "no-mountinfo")
    devices.sample(["7:3", "7:3"], 10 * S)
    first = devices.state("7:3")
    assert (first.device, first.written_bytes_per_s, first.writes_in_flight) == ("loop3", None, 3)
    (sys / "dev" / "block" / "7:3" / "stat").write_text("10 0 80 5 40 0 7168 900 0 100 905\n")
    devices.sample(["7:3"], 15 * S)
    later = devices.state("7:3")
    assert later.written_bytes_per_s == 512 << 10 and later.written_over_s == 5.0
    assert later.write_limit_bytes_per_s is None
    nfs = devices.state("0:53")
    assert (nfs.bdi, nfs.device, nfs.written_bytes_per_s) == ("0:53", None, None)
