# SPDX-License-Identifier: Apache-2.0
"""/proc and cgroupfs files split at "\\n" only (issue 26, item 8).

str.splitlines() also breaks at the separators below, all of which a task may
put in a cgroup directory name: a task in "/x\\x1cevil" read as "/x" and was
given the sibling group's limit and usage. Fake trees hold each of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from allocwatch.app import preflight
from allocwatch.kernel import hostfs, mountinfo, procfs

SEPARATORS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
IDS = [f"U+{ord(c):04X}" for c in SEPARATORS]


def _task(proc: Path, pid: int, cgroup: bytes) -> None:
    d = proc / str(pid) / "task" / str(pid)
    d.mkdir(parents=True)
    (d / "cgroup").write_bytes(cgroup)


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_lines_split_at_newline_only(sep):
    assert "a\x1cb".splitlines() == ["a", "b"]  # what went wrong
    assert procfs.lines(f"one{sep}two\nthree\n") == [f"one{sep}two", "three"]
    assert procfs.lines("no end") == ["no end"]
    assert procfs.lines("") == []
    assert procfs.lines("a\n\nb\n") == ["a", "", "b"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_memory_cgroup_v1_keeps_the_whole_path(tmp_path, sep):
    path = f"/x{sep}evil"
    _task(tmp_path, 7, f"12:pids:/\n4:memory:{path}\n0::/\n".encode())
    assert procfs.memory_cgroup(tmp_path, 7, 7) == path


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_memory_cgroup_v2_keeps_the_whole_path(tmp_path, sep):
    path = f"/app.slice/x{sep}evil.service"
    _task(tmp_path, 7, f"0::{path}\n".encode())
    assert procfs.memory_cgroup(tmp_path, 7, 7) == path


def test_memory_cgroup_separator_before_a_fake_memory_line(tmp_path):
    # a name crafted to look like a line of its own must not be taken as one
    _task(tmp_path, 7, b"4:memory:/a\x1c5:memory:/b\n")
    assert procfs.memory_cgroup(tmp_path, 7, 7) == "/a\x1c5:memory:/b"


def test_memory_cgroup_undecodable_bytes_kept_as_surrogates(tmp_path):
    _task(tmp_path, 7, b"4:memory:/x\xff\x1cevil\n")
    path = procfs.memory_cgroup(tmp_path, 7, 7)
    assert path is not None and path.encode("utf-8", "surrogateescape") == b"/x\xff\x1cevil"


def _v1_tree(tmp_path: Path, groups: dict[str, int]) -> Path:
    """A cgroup v1 memory hierarchy with these groups and limits, and its mountinfo."""
    point = tmp_path / "memory"
    for name, limit in groups.items():
        d = point / name.lstrip("/")
        d.mkdir(parents=True)
        (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
        (d / "memory.usage_in_bytes").write_text(f"{limit - 4096}\n")
        (d / "memory.oom_control").write_bytes(b"oom_kill_disable 1\nunder_oom 1\n")
    info = tmp_path / "mountinfo"
    info.write_text(f"35 31 0:32 / {point} rw,relatime shared:17 - cgroup cgroup rw,memory\n")
    return info


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_a_task_in_x_sep_evil_gets_its_own_groups_limit_not_the_siblings(tmp_path, sep):
    path = f"/x{sep}evil"
    info = _v1_tree(tmp_path, {"/x": 512 << 20, path: 32 << 20})
    proc = tmp_path / "proc"
    _task(proc, 7, f"4:memory:{path}\n".encode())
    cgroup = procfs.memory_cgroup(proc, 7, 7)
    assert cgroup == path
    memcg = hostfs.memcg_info(cgroup, info)
    assert memcg is not None
    assert (memcg.path, memcg.limit_bytes, memcg.usage_bytes) == (path, 32 << 20, (32 << 20) - 4096)


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_mountinfo_with_a_separator_in_a_mount_point(tmp_path, sep):
    point = tmp_path / f"m{sep}nt"
    text = (f"35 31 0:32 / {point} rw shared:1 - cgroup cgroup rw,memory\n"
            f"36 31 0:33 / /other rw shared:2 - tmpfs tmpfs rw\n")
    (tmp_path / "mountinfo").write_bytes(text.encode())
    found = mountinfo.read(tmp_path / "mountinfo")
    assert [(m.point, m.fstype) for m in found] == [(str(point), "cgroup"), ("/other", "tmpfs")]


@pytest.mark.parametrize("sep", SEPARATORS, ids=IDS)
def test_flat_keyed_and_status_files_keep_their_lines(tmp_path, sep):
    # a separator inside a line must not make a well-formed line of its halves
    info = _v1_tree(tmp_path, {"/g": 1 << 20})
    (tmp_path / "memory" / "g" / "memory.oom_control").write_bytes(
        f"oom_kill_disable 1\nunder_oom 0{sep}under_oom 1\noom_kill 3\n".encode())
    memcg = hostfs.memcg_info("/g", info)
    assert memcg is not None
    assert (memcg.oom_kill_disable, memcg.under_oom, memcg.events) == (True, None, {"oom_kill": 3})
    status = tmp_path / "status"
    status.write_bytes(f"Name:\tx{sep}CapEff:\t0000000000000000\nCapEff:\t000001fffeffffff\n".encode())
    assert preflight.effective_caps(status) == 0x1FFFEFFFFFF
def test_read_bytes_reads_whole_files_of_any_size_and_none_when_it_cannot(tmp_path):
    from allocwatch.kernel.procfs import read_bytes

    for size in (0, 1, 8191, 8192, 8193, 100_000):
        f = tmp_path / f"f{size}"
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        f.write_bytes(data)
        assert read_bytes(f) == data and read_bytes(str(f)) == data
    assert read_bytes(tmp_path / "missing") is None
    assert read_bytes(tmp_path) is None  # a directory
