# SPDX-License-Identifier: Apache-2.0
"""The backing device of a writeback wait: its block device and I/O counters
from sysfs, and a blkio write throttle on it (cgroup v1's root group).

A bdi is named "MAJ:MIN" for a block device (dev_name of bdi->dev, the disk's
device number); /sys/dev/block/MAJ:MIN links to the disk, whose `stat` counts
sectors written and `inflight` the requests in flight. Per-bdi dirty and
writeback pages are only in debugfs (bdi/NAME/stats), which is not mounted on
most hosts and which the daemon does not mount: a report leaves them out.
Every reader takes its root (sysfs, the mountinfo file), so tests use a fake
tree; a missing or malformed file gives None, never an exception.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from allocwatch.core.wbdevice import DeviceCounters, DeviceState, WriteRates, state_of
from allocwatch.kernel import mountinfo
from allocwatch.kernel.procfs import lines

DEFAULT_SYSFS = Path("/sys")
_MAJMIN = re.compile(r"[0-9]+:[0-9]+")
STAT_WRITE_SECTORS = 6  # Documentation/block/stat.rst: field 7, sectors written
STAT_IN_FLIGHT = 8  # field 9: requests in flight (reads and writes)
BLKIO_WRITE_BPS = "blkio.throttle.write_bps_device"
NAMES_KEPT = 256  # bdi -> block device names remembered


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="surrogateescape")
    except OSError:
        return None


def block_device(sys_root: Path, bdi: str) -> str | None:
    """The block device a bdi is ("7:3" -> "loop3"), else None (not MAJ:MIN, or gone)."""
    if not _MAJMIN.fullmatch(bdi):
        return None
    try:
        target = os.readlink(sys_root / "dev" / "block" / bdi)
    except OSError:
        return None
    return target.rstrip("/").rsplit("/", 1)[-1] or None


def partitions(sys_root: Path, device: str) -> tuple[str, ...]:
    """The partitions of a disk ("sda" -> ("sda1", "sda2")): the directories of
    /sys/block/DEVICE that have a `partition` file; none when it has none or is gone."""
    if not device or "/" in device or device.startswith("."):
        return ()
    try:
        children = sorted(os.listdir(sys_root / "block" / device))
    except OSError:
        return ()
    return tuple(c for c in children if (sys_root / "block" / device / c / "partition").is_file())


def counters(sys_root: Path, bdi: str) -> DeviceCounters | None:
    """The disk's counters: sectors written since boot, and requests in flight
    (reads, writes: `inflight`; else the in-flight total of `stat` as writes)."""
    if not _MAJMIN.fullmatch(bdi):
        return None
    d = sys_root / "dev" / "block" / bdi
    fields = (_text(d / "stat") or "").split()
    if len(fields) <= STAT_IN_FLIGHT or not all(f.isdigit() for f in fields[: STAT_IN_FLIGHT + 1]):
        return None
    both = (_text(d / "inflight") or "").split()
    if len(both) == 2 and all(f.isdigit() for f in both):
        return DeviceCounters(int(fields[STAT_WRITE_SECTORS]), int(both[1]), int(both[0]))
    return DeviceCounters(int(fields[STAT_WRITE_SECTORS]), int(fields[STAT_IN_FLIGHT]), None)


def write_limits(mountinfo_path: Path = mountinfo.MOUNTINFO) -> dict[str, int]:
    """The write throttles of cgroup v1's root blkio group, "MAJ:MIN" -> bytes/s:
    the flusher threads that write back dirty pages run there. (cgroup v2 has no
    root io.max; a group's own limit is not read.)"""
    for m in mountinfo.parse(lines(_text(mountinfo_path) or "")):
        if m.fstype == "cgroup" and "blkio" in m.superopts and m.root == "/":
            return parse_limits(_text(Path(m.point) / BLKIO_WRITE_BPS))
    return {}


def parse_limits(text: str | None) -> dict[str, int]:
    out = {}
    for line in lines(text or ""):
        parts = line.split()
        if len(parts) == 2 and _MAJMIN.fullmatch(parts[0]) and parts[1].isdigit() and int(parts[1]) > 0:
            out[parts[0]] = int(parts[1])
    return out


class WritebackDevices:
    """The devices writeback waits in flight wait on: read once a scan while any
    is (one small sysfs file or two a device), so a report has a write rate
    measured over the seconds before it."""

    def __init__(self, sys_root: Path = DEFAULT_SYSFS, mountinfo_path: Path = mountinfo.MOUNTINFO) -> None:
        self.sys_root = sys_root
        self.mountinfo_path = mountinfo_path
        self.rates = WriteRates()
        self._names: dict[str, str | None] = {}
        self._partitions: dict[str, tuple[str, ...]] = {}  # bdi -> its disk's partitions
        self._counters: dict[str, DeviceCounters | None] = {}
        self._limits: dict[str, int] | None = None  # read at the first state() after a sample

    def sample(self, bdis: Iterable[str], now_ns: int) -> None:
        self._counters = {}
        self._limits = None
        for bdi in set(bdis):
            c = self._counters[bdi] = counters(self.sys_root, bdi)
            if c is not None:
                self.rates.observe(bdi, c.written_sectors, now_ns)

    def _name(self, bdi: str) -> str | None:
        if bdi not in self._names:
            if len(self._names) >= NAMES_KEPT:
                self._names.clear()
                self._partitions.clear()
            name = self._names[bdi] = block_device(self.sys_root, bdi)
            self._partitions[bdi] = partitions(self.sys_root, name) if name else ()
        return self._names[bdi]

    def state(self, bdi: str) -> DeviceState:
        """The device as of the last sample (the throttles read once a scan, when asked)."""
        if self._limits is None:
            self._limits = write_limits(self.mountinfo_path)
        name = self._name(bdi)
        return state_of(bdi, name, self._counters.get(bdi), self.rates.rate(bdi), self._limits.get(bdi),
                        self._partitions.get(bdi, ()))
