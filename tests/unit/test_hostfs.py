# SPDX-License-Identifier: Apache-2.0
"""The host readers (kernel/hostfs.py) on fake /proc and cgroup trees, and
the pure parts of core/host.py.

Fixture formats follow this kernel's /proc files and, for cgroup v2, the
kernel's Documentation/admin-guide/cgroup-v2.rst. Mountinfo is written at
run time, since it names absolute paths of the tree under test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from allocwatch.core.host import (
    MIB,
    KswapdInfo,
    MemcgInfo,
    MemoryPicture,
    PsiLine,
    RunSeen,
    TaskFlags,
    ZoneInfo,
    alloc_info_line,
    kswapd_quiet,
    near_limit,
    run_seen,
    vmstat_delta,
)
from allocwatch.kernel import hostfs

HOST = Path(__file__).resolve().parents[1] / "fixtures" / "host"
PROC = HOST / "proc"
NS = 1_000_000_000


def _mountinfo(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _v1_line(point: Path, root: str = "/", opts: str = "rw,memory") -> str:
    return f"35 31 0:32 {root} {point} rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup {opts}"


def _v2_line(point: Path, root: str = "/") -> str:
    return f"41 31 0:38 {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate"


# --- memory cgroup --------------------------------------------------------------


def test_memcg_v1_reads_usage_limit_oom_control_and_failcnt(tmp_path):
    mountinfo = _mountinfo(tmp_path, _v1_line(HOST / "cgroup-v1", opts="rw,cpu"), _v1_line(HOST / "cgroup-v1"))
    info = hostfs.memcg_info("/docker/abc", mountinfo)
    assert info == MemcgInfo(
        version=1, path="/docker/abc", usage_bytes=533725184, limit_bytes=512 * MIB, high_bytes=None,
        oom_kill_disable=False, under_oom=True, events={"oom_kill": 4}, failcnt=1234, pressure=None,
    )
    assert info.usage_near_limit


def test_memcg_v1_no_limit_value_and_malformed_lines(tmp_path):
    info = hostfs.memcg_info("/unlimited", _mountinfo(tmp_path, _v1_line(HOST / "cgroup-v1")))
    assert info is not None
    assert (info.usage_bytes, info.limit_bytes, info.failcnt) == (409780224, None, None)
    assert (info.oom_kill_disable, info.under_oom, info.events) == (True, None, {"oom_kill": 0})
    assert not info.usage_near_limit


def test_memcg_v2_reads_current_max_high_events_pressure(tmp_path):
    info = hostfs.memcg_info("/app.slice/web.service", _mountinfo(tmp_path, _v2_line(HOST / "cgroup-v2")))
    assert info is not None
    assert (info.version, info.usage_bytes, info.limit_bytes, info.high_bytes) == (2, 256 * MIB, 1024 * MIB, 768 * MIB)
    assert info.events == {"low": 0, "high": 12, "max": 3, "oom": 1, "oom_kill": 1, "oom_group_kill": 0}
    assert (info.oom_kill_disable, info.under_oom, info.failcnt) == (None, None, None)
    assert info.pressure is not None
    assert info.pressure.some == PsiLine(12.5, 4.02, 1.1, 9876543)
    assert info.pressure.full == PsiLine(8.0, 2.5, 0.7, 5432100)
    assert not info.usage_near_limit


def test_memcg_v2_max_means_no_limit_and_bad_event_lines_are_skipped(tmp_path):
    info = hostfs.memcg_info("/nolimit", _mountinfo(tmp_path, _v2_line(HOST / "cgroup-v2")))
    assert info is not None
    assert (info.limit_bytes, info.high_bytes) == (None, None)
    assert "oom_kill" not in info.events and info.events["oom"] == 0
    assert info.pressure is not None and info.pressure.full is None


def test_memcg_mount_root_sub_path_and_escaped_mount_point(tmp_path):
    point = tmp_path / "cg mem\tv1"
    shutil.copytree(HOST / "cgroup-v1" / "docker", point)
    escaped = str(point).replace(" ", "\\040").replace("\t", "\\011")
    mountinfo = _mountinfo(tmp_path, _v1_line(Path(escaped), root="/docker"))
    info = hostfs.memcg_info("/docker/abc", mountinfo)
    assert info is not None and info.usage_bytes == 533725184
    assert hostfs.memcg_info("/other/abc", mountinfo) is None  # that mount shows only /docker


def test_memcg_prefers_v1_memory_and_version_forces_one(tmp_path):
    shutil.copytree(HOST / "cgroup-v2" / "nolimit", tmp_path / "v2" / "nolimit")
    mountinfo = _mountinfo(tmp_path, _v2_line(tmp_path / "v2"), _v1_line(HOST / "cgroup-v1"))
    assert hostfs.memcg_info("/unlimited", mountinfo).version == 1
    assert hostfs.memcg_info("/nolimit", mountinfo) is None  # memory lives on v1: no v2 fallback
    assert hostfs.memcg_info("/nolimit", mountinfo, version=2).version == 2


def test_memcg_missing_mountinfo_mount_or_directory_gives_none(tmp_path):
    assert hostfs.memcg_info("/docker/abc", tmp_path / "absent") is None
    junk = _mountinfo(tmp_path, "garbage", "1 2 3", "35 31 0:32 / /x rw - ext4 /dev/sda1 rw", "1 2 0:1 / /y rw -")
    assert hostfs.memcg_info("/docker/abc", junk) is None
    assert hostfs.memcg_info("/gone", _mountinfo(tmp_path, _v1_line(HOST / "cgroup-v1"))) is None


def test_memcg_missing_files_give_none_fields(tmp_path):
    (tmp_path / "cg" / "empty").mkdir(parents=True)
    info = hostfs.memcg_info("/empty", _mountinfo(tmp_path, _v2_line(tmp_path / "cg")))
    assert info == MemcgInfo(2, "/empty", None, None, None, None, None, {}, None, None)


def test_memcg_threads_are_the_groups_and_those_below_it_never_through_a_link(tmp_path):
    """v1 `tasks`, v2 `cgroup.threads`; a link inside the group is not followed;
    a group that is gone has none; `most` caps the reading."""
    v1 = tmp_path / "v1"
    (v1 / "g" / "sub").mkdir(parents=True)
    (v1 / "g" / "tasks").write_text("10\n11\n")
    (v1 / "g" / "sub" / "tasks").write_text("12\n")
    (v1 / "other").mkdir()
    (v1 / "other" / "tasks").write_text("99\n")
    (v1 / "g" / "link").symlink_to(v1 / "other")
    mountinfo = _mountinfo(tmp_path, _v1_line(v1))
    assert sorted(hostfs.memcg_threads("/g", mountinfo)) == [10, 11, 12]
    assert len(hostfs.memcg_threads("/g", mountinfo, most=2)) == 2
    assert hostfs.memcg_threads("/gone", mountinfo) == []
    v2 = tmp_path / "v2"
    (v2 / "app").mkdir(parents=True)
    (v2 / "app" / "cgroup.threads").write_text("20\n21\n")
    (v2 / "app" / "cgroup.procs").write_text("20\n")
    assert sorted(hostfs.memcg_threads("/app", _mountinfo(tmp_path, _v2_line(v2)))) == [20, 21]



def _thread(proc: Path, tid: int, tgid: int, comm: str, state: str, wchan: str | None) -> None:
    d = proc / str(tid)
    d.mkdir(parents=True)
    (d / "stat").write_text(f"{tid} ({comm}) {state} 1 {tgid} {tgid} 0 -1 4194560 0\n")
    (d / "status").write_text(f"Name:\t{comm}\nState:\t{state}\nTgid:\t{tgid}\nPid:\t{tid}\n")
    if wchan is not None:
        (d / "wchan").write_text(wchan)


def test_blocked_thread_is_a_d_sleeper_with_its_process_comm_and_wchan(tmp_path):
    from allocwatch.kernel import procfs

    _thread(tmp_path, 31, 30, "fio (job) 2", "D", "xfs_ilock")
    _thread(tmp_path, 32, 30, "fio", "S", "do_epoll_wait")
    _thread(tmp_path, 33, 33, "fio", "D", "0")  # wchan hidden (not root)
    _thread(tmp_path, 34, 34, "fio", "D", None)
    assert procfs.blocked_thread(tmp_path, 31) == (30, "fio (job) 2", "xfs_ilock")
    assert procfs.blocked_thread(tmp_path, 32) is None  # sleeps interruptibly
    assert procfs.blocked_thread(tmp_path, 33) == (33, "fio", None)
    assert procfs.blocked_thread(tmp_path, 34) == (34, "fio", None)
    assert procfs.blocked_thread(tmp_path, 35) is None  # gone



@pytest.mark.parametrize(
    ("usage", "limit", "near"),
    [
        (None, 100 * MIB, False), (10 * MIB, None, False),
        (99 * MIB, 100 * MIB, True), (99 * MIB - 1, 100 * MIB, False),  # 1 % of 100 MiB is 1 MiB
        (10 * 1024 * MIB - 50 * MIB, 10 * 1024 * MIB, True),  # 1 % of 10 GiB: 102 MiB
        (10 * 1024 * MIB - 200 * MIB, 10 * 1024 * MIB, False),
        (int(31.5 * MIB), 32 * MIB, True), (30 * MIB, 32 * MIB, False),  # 1 MiB beats 1 % of 32 MiB
        (40 * MIB, 32 * MIB, True),  # over it (v1 can show that)
    ],
)
def test_near_limit_margin_is_1_mib_or_1_percent_whichever_is_larger(usage, limit, near):
    assert near_limit(usage, limit) is near


# --- the memory picture -----------------------------------------------------------


def test_memory_picture_meminfo_in_bytes_malformed_skipped():
    meminfo = hostfs.memory_picture(PROC).meminfo_bytes
    assert meminfo["MemTotal"] == 24684084 * 1024 and meminfo["SUnreclaim"] == 28248 * 1024
    assert "Writeback" not in meminfo  # malformed
    assert "Mapped" not in meminfo and "HugePages_Total" not in meminfo  # not asked for
    assert set(meminfo) == hostfs.MEMINFO_KEYS - {"Writeback"}
    assert meminfo["Active(file)"] == 98310 * 1024 and meminfo["Inactive(file)"] == 101420 * 1024


def test_memory_at_an_oom_kill_says_free_against_min_and_what_was_reclaimable():
    from allocwatch.core.host import memory_at_oom

    m = memory_at_oom(hostfs.memory_picture(PROC))
    assert m["reclaimable_bytes"] == (98310 + 101420 + 165764) * 1024
    assert m["free_bytes"] == 302460 * 1024 and m["available_bytes"] == 480008 * 1024
    zones = hostfs.memory_picture(PROC).zones
    assert m["free_above_min"] == all(z.free_pages > z.min_pages for z in zones)
    low = MemoryPicture({"MemFree": 1}, (ZoneInfo(0, "Normal", 10, 20, 25, 30), ZoneInfo(0, "DMA32", 900, 20, 25, 30)),
                        None, {})
    assert memory_at_oom(low) == {"free_above_min": False, "zones_at_or_under_min": ["node0/Normal"], "free_bytes": 1,
                                  "available_bytes": None, "reclaimable_bytes": None}


def test_memory_picture_zones_skip_unmanaged_and_malformed():
    zones = hostfs.memory_picture(PROC).zones
    assert [(z.node, z.zone) for z in zones] == [(0, "DMA"), (0, "DMA32"), (0, "Normal"), (1, "Normal")]
    assert zones[2] == ZoneInfo(0, "Normal", 9000, 8132, 10165, 12198)  # the pagesets' "high:" ignored
    assert [z.under_watermark for z in zones] == [None, None, "low", "min"]


def test_memory_picture_pressure_and_vmstat():
    picture = hostfs.memory_picture(PROC)
    assert picture.pressure is not None
    assert picture.pressure.some == PsiLine(1.25, 0.85, 1.56, 37978325)
    assert picture.pressure.full == PsiLine(0.5, 0.73, 1.36, 33732004)
    assert picture.vmstat == {
        "allocstall": 43, "pgscan_direct": 90, "pgsteal_direct": 20, "compact_stall": 2, "oom_kill": 35,
        "pgscan_kswapd": 400, "pgsteal_kswapd": 100, "workingset_refault": 873674,
    }  # allocstall_movable malformed; pgscan_direct_throttle is not pgscan_direct


def test_vmstat_of_an_old_kernel_single_and_per_zone_lines(tmp_path):
    (tmp_path / "vmstat").write_text(
        "allocstall 17\nworkingset_refault 900\npgscan_direct_dma32 5\npgscan_direct_normal 6\n"
        "pgsteal_kswapd_normal 8\npgscan_direct_throttle 1\n"
    )
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull bad\n")
    picture = hostfs.memory_picture(tmp_path)
    assert picture.vmstat == {"allocstall": 17, "workingset_refault": 900, "pgscan_direct": 11, "pgsteal_kswapd": 8}
    assert picture.pressure is not None and picture.pressure.full is None


def test_memory_picture_of_missing_files_is_empty(tmp_path):
    picture = hostfs.memory_picture(tmp_path)
    assert (dict(picture.meminfo_bytes), picture.zones, picture.pressure, dict(picture.vmstat)) == ({}, (), None, {})
    (tmp_path / "pressure").mkdir()
    (tmp_path / "pressure" / "memory").write_text("full avg10=1.00 avg60=1.00 avg300=1.00 total=5\n")
    assert hostfs.memory_picture(tmp_path).pressure is None  # no "some" line


def test_vmstat_delta():
    prev = {"allocstall": 40, "oom_kill": 35, "compact_stall": 9}
    now = {"allocstall": 43, "oom_kill": 35, "compact_stall": 2, "pgscan_direct": 90}
    assert vmstat_delta(prev, now) == {"allocstall": 3, "oom_kill": 0, "compact_stall": 0}


# --- kswapd ---------------------------------------------------------------------


def test_find_kswapd_only_kernel_threads():
    # 82 is a user process named kswapd0, 84 has a malformed stat
    assert hostfs.find_kswapd(PROC) == [(0, 80), (1, 81), (2, 83)]
    assert hostfs.find_kswapd(PROC / "absent") == []


def test_kswapd_in_d_gives_its_stack():
    assert hostfs.kswapd_state(PROC, 0, 80) == KswapdInfo(
        0, 80, "D",
        ("throttle_direct_reclaim", "shrink_node", "balance_pgdat", "kswapd", "kthread", "ret_from_fork"),
    )


def test_kswapd_in_s_gives_no_stack():
    assert hostfs.kswapd_state(PROC, 1, 81) == KswapdInfo(1, 81, "S", None)


def test_kswapd_gone_or_pid_reused_gives_no_state():
    assert hostfs.kswapd_state(PROC, 0, 99) == KswapdInfo(0, 99, None, None)
    assert hostfs.kswapd_state(PROC, 0, 82).state is None  # not a kernel thread
    assert hostfs.kswapd_state(PROC, 1, 80).state is None  # another node's kswapd
    assert hostfs.kswapd_state(PROC, 0, 99, quiet=True).stack is None


def test_kswapd_quiet_in_s_gives_where_it_sleeps():
    assert hostfs.kswapd_state(PROC, 1, 81, quiet=True) == KswapdInfo(
        1, 81, "S", ("kswapd", "kthread", "ret_from_fork", "ret_from_fork_asm"))


def test_run_time_from_schedstat_else_stat_ticks():
    assert hostfs.run_time_ns(PROC, 80) == 5_000_000  # schedstat's sum_exec_runtime
    assert hostfs.run_time_ns(PROC, 81, clock_ticks_per_s=100) == 70_000_000  # no schedstat: utime 3 + stime 4
    assert hostfs.run_time_ns(PROC, 83, clock_ticks_per_s=100) == 20_000_000  # schedstat "0 0 0": keeps none
    assert hostfs.run_time_ns(PROC, 84) is None  # malformed stat
    assert hostfs.run_time_ns(PROC, 99) is None  # gone


def test_run_seen_says_how_long_it_has_not_run_from_the_second_reading():
    first = run_seen(None, 500, now_ns=10 * NS)
    assert first is not None and first.not_run_for_ns is None  # seen once: nothing to compare
    same = run_seen(first, 500, now_ns=12 * NS)
    assert same is not None and same.not_run_for_ns == 2 * NS
    same = run_seen(same, 500, now_ns=50 * NS)
    assert same is not None and same.not_run_for_ns == 40 * NS
    grew = run_seen(same, 501, now_ns=51 * NS)
    assert grew is not None and grew.not_run_for_ns == 0
    later = run_seen(grew, 501, now_ns=53 * NS)
    assert later is not None and later.not_run_for_ns == 2 * NS
    assert run_seen(later, 3, now_ns=54 * NS) == RunSeen(3, 54 * NS, 54 * NS, seen_twice=True)  # went back: a change
    assert run_seen(later, None, now_ns=54 * NS) is None  # unreadable: forgotten


def test_kswapd_quiet_is_not_run_for_at_least_the_threshold():
    assert kswapd_quiet(10 * NS, 10 * NS) and kswapd_quiet(11 * NS, 10 * NS)
    assert not kswapd_quiet(10 * NS - 1, 10 * NS)
    assert not kswapd_quiet(None, 10 * NS) and not kswapd_quiet(10 * NS, None)


# --- tasks --------------------------------------------------------------------------


def test_task_info_cuts_cmdline_and_keeps_raw_bytes():
    info = hostfs.task_info(PROC, 1000, 1000)
    assert (info.pid, info.tid, info.uid, info.state) == (1000, 1000, 1000, "S")
    assert info.cmdline is not None and info.cmdline.endswith("...")
    raw = info.cmdline.encode("utf-8", "surrogateescape")
    assert len(raw) == hostfs.CMDLINE_MAX_BYTES + 3
    assert raw.startswith(b"/usr/bin/web --name=caf\xff --data=xxx")
    assert "\0" not in info.cmdline


def test_task_info_short_cmdline_and_comm_with_parentheses():
    assert hostfs.task_info(PROC, 1300, 1300).cmdline == "sleep 60"  # trailing NUL dropped
    assert hostfs.task_info(PROC, 1000, 1001).state == "D"  # comm "a) R (b"


def test_task_info_kernel_thread_zombie_missing_and_malformed():
    assert hostfs.task_info(PROC, 80, 80).cmdline is None  # kernel thread: empty cmdline
    zombie = hostfs.task_info(PROC, 1100, 1100)
    assert (zombie.uid, zombie.cmdline, zombie.state) == (0, None, "Z")
    gone = hostfs.task_info(PROC, 4242, 4242)
    assert (gone.uid, gone.cmdline, gone.state) == (None, None, None)
    assert hostfs.task_info(PROC, 1300, 1300).uid is None  # "Uid: not-a-number"


@pytest.mark.parametrize(
    ("pid", "tid", "flags"),
    [
        (1000, 1000, TaskFlags(dying=False, exiting=False)),
        (1000, 1001, TaskFlags(dying=True, exiting=False)),  # SIGKILL in the thread's SigPnd
        (1100, 1100, TaskFlags(dying=False, exiting=True)),  # zombie
        (1200, 1200, TaskFlags(dying=True, exiting=True)),  # PF_EXITING, SIGKILL in ShdPnd
        (1300, 1300, TaskFlags(dying=False, exiting=False)),  # malformed status
        (4242, 4242, TaskFlags(dying=False, exiting=False)),  # gone
    ],
)
def test_task_flags(pid, tid, flags):
    assert hostfs.task_flags(PROC, pid, tid) == flags


def test_alloc_info_line():
    assert alloc_info_line(3, 1, 2, 1, 35) == "MemAlloc-Info: stalling=3 dying=1 exiting=2 victim=1 oom_count=35"


def test_a_cgroup_path_too_long_for_the_kernel_is_no_crash(tmp_path):
    from allocwatch.kernel import hostfs

    mi = tmp_path / "mountinfo"
    mi.write_text(f"30 1 0:26 / {tmp_path} rw - cgroup cgroup rw,memory\n")
    assert hostfs.memcg_info("/" + "x" * 4090, mi) is None


def test_task_flags_need_only_the_stat_line(tmp_path):
    """A kill of the process puts SIGKILL in each thread's own pending set (stat's
    `signal`, field 31): seen on 6.18 for a thread in D on a frozen file system."""
    d = tmp_path / "7" / "task" / "7"
    d.mkdir(parents=True)
    fields = ["D"] + ["0"] * 40
    fields[6] = "4194560"  # PF_* without PF_EXITING
    fields[28] = str(1 << 8)  # SIGKILL
    (d / "stat").write_text("7 (x y) " + " ".join(fields) + "\n")  # no status file at all
    assert hostfs.task_flags(tmp_path, 7, 7) == TaskFlags(dying=True, exiting=False)
    fields[28] = str(1 << 14)  # SIGTERM only
    (d / "stat").write_text("7 (x y) " + " ".join(fields) + "\n")
    assert hostfs.task_flags(tmp_path, 7, 7) == TaskFlags(dying=False, exiting=False)


def test_task_now_reads_state_and_flags_past_a_comm_with_brackets_and_spaces(tmp_path):
    """comm is the task's to choose: ") D 1" in it must not be read as the state."""
    d = tmp_path / "7" / "task" / "7"
    d.mkdir(parents=True)
    fields = ["S"] + ["0"] * 40
    fields[6] = str(hostfs.PF_EXITING)
    (d / "stat").write_bytes(b"7 (a) D 1 (\xff) " + " ".join(fields).encode() + b"\n")
    assert hostfs.task_now(tmp_path, 7, 7) == ("S", TaskFlags(dying=False, exiting=True))
    (d / "stat").write_bytes(b"7 (cut")  # no closing bracket: not a stat line
    assert hostfs.task_now(tmp_path, 7, 7) == (None, TaskFlags(dying=False, exiting=False))
    (d / "stat").write_bytes(b"7 (short) Z 1\n")  # too few fields: what it has is read
    assert hostfs.task_now(tmp_path, 7, 7) == ("Z", TaskFlags(dying=False, exiting=True))


def test_task_facts_read_a_process_cmdline_once_for_its_threads(monkeypatch):
    reads: list[str] = []
    real = hostfs._bytes

    def counting(path):
        if str(path).endswith("cmdline"):
            reads.append(str(path))
        return real(path)

    monkeypatch.setattr(hostfs, "_bytes", counting)
    seen: dict[int, str | None] = {}
    a, _ = hostfs.task_facts(PROC, 1000, 1000, seen)
    b, _ = hostfs.task_facts(PROC, 1000, 1001, seen)
    assert a.cmdline == b.cmdline and len(reads) == 1 and 1000 in seen
    hostfs.task_facts(PROC, 1000, 1001)  # no dict given: read afresh
    assert len(reads) == 2


def test_slabinfo_gives_the_caches_holding_the_most_memory_largest_first():
    text = (
        "slabinfo - version: 2.1\n"
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> "
        "<batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n"
        "dentry            999000 1000000    192   21    1 : tunables    0    0    0 : slabdata  47619  47620      0\n"
        "ext4_inode_cache   1000   1500   1184   27    8 : tunables    0    0    0 : slabdata     56     56      0\n"
        "broken line\n"
        "kmalloc-8             0      0      8  512    1 : tunables    0    0    0 : slabdata      0      0      0\n"
    )
    caches = hostfs.parse_slabinfo(text, 4096, n=2)
    assert [(c.name, c.bytes, c.objects, c.active_objects) for c in caches] == [
        ("dentry", 47620 * 4096, 1000000, 999000), ("ext4_inode_cache", 56 * 8 * 4096, 1500, 1000)]
    assert hostfs.parse_slabinfo(None, 4096) == () and hostfs.slab_caches(Path("/nonexistent-proc")) == ()


def test_a_kernel_thread_s_name_is_its_workers_and_a_user_task_has_none(tmp_path):
    def stat(pid: int, comm: str, flags: int) -> None:
        d = tmp_path / str(pid) / "task" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({comm}) D 2 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n")

    stat(90, "kworker/u8:3+flush-7:3", 0x04208060)  # PF_KTHREAD | PF_WQ_WORKER ...
    stat(91, "loop3) x (y", 0x00400100)  # a user task whose comm holds ') '
    assert hostfs.kernel_thread_name(tmp_path, 90, 90) == "kworker/u8:3+flush-7:3"
    assert hostfs.kernel_thread_name(tmp_path, 91, 91) is None
    assert hostfs.kernel_thread_name(tmp_path, 92, 92) is None  # gone
