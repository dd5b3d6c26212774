# SPDX-License-Identifier: Apache-2.0
"""Run time and run count of loaded BPF programs, from the kernel's own stats.

The kernel counts them only while stats are on: `kernel.bpf_stats_enabled`
for everyone, or an fd from BPF_ENABLE_STATS (since v5.8, d46edd671a14,
"bpf: Sharing bpf runtime stats with BPF_ENABLE_STATS"), which keeps them on
for as long as it is open and so switches off when the daemon dies. Read with
BPF_OBJ_GET_INFO_BY_FD into the leading part of struct bpf_prog_info (uapi,
append-only: the offsets below never move; a test checks them against the
installed header).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_SYS_BPF = 321  # x86_64
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


class ProgInfo(ctypes.Structure):
    """struct bpf_prog_info up to run_cnt (208 bytes; the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("_lens", ctypes.c_uint32 * 2),
        ("_insns", ctypes.c_uint64 * 2),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("_between", ctypes.c_uint8 * (192 - 80)),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
    ]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _StatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind `fd`."""
    info = ProgInfo()
    attr = _InfoAttr(fd, ctypes.sizeof(info), ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return int(info.run_time_ns), int(info.run_cnt)


def sysctl_on(path: Path = STATS_SYSCTL) -> bool:
    try:
        return path.read_text().strip() not in ("", "0")
    except OSError:
        return False


def enable() -> int:
    """Turn run-time stats on for as long as the returned fd stays open."""
    return _bpf(BPF_ENABLE_STATS, _StatsAttr(BPF_STATS_RUN_TIME))
