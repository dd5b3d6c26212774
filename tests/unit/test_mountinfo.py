# SPDX-License-Identifier: Apache-2.0
"""kernel/mountinfo.py: the one parser of /proc/PID/mountinfo."""

from __future__ import annotations

import os

from allocwatch.kernel import mountinfo

LINES = [
    "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw",
    "35 22 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
    r"40 22 0:12 / /mnt/a\040b\134c rw - tmpfs none rw",
    "41 40 0:13 / /mnt/a\\040b\\134c rw shared:5 - tracefs nodev rw",
    "42 22 0:14 /sub /mnt/caf\xe9 rw - ext4 /dev/loop0 rw",
    "not a mountinfo line",
]


def test_fields_and_escapes():
    ms = mountinfo.parse(LINES)
    assert len(ms) == 5
    assert ms[1] == mountinfo.Mount("/", "/sys/fs/cgroup/memory", "cgroup", "cgroup", ("rw", "memory"))
    assert ms[2].point == "/mnt/a b\\c"
    assert ms[4].root == "/sub"


def test_the_top_of_a_stack_of_mounts_is_the_last_line():
    ms = mountinfo.parse(LINES)
    assert mountinfo.fstype_at("/mnt/a b\\c", ms) == "tracefs"
    assert mountinfo.fstype_at("/mnt", ms) is None


def test_bytes_past_ascii_read_as_python_reads_file_names(tmp_path):
    """A raw byte >= 0x80 and an escaped one decode alike (surrogateescape), as os.fsdecode does."""
    f = tmp_path / "mountinfo"
    f.write_bytes(b"50 22 0:15 / /mnt/x\xff rw - tmpfs none rw\n51 22 0:16 / /mnt/y\\377 rw - tmpfs none rw\n")
    raw, escaped = mountinfo.read(f)
    assert raw.point == os.fsdecode(b"/mnt/x\xff")
    assert escaped.point == os.fsdecode(b"/mnt/y\xff")
