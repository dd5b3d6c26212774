# SPDX-License-Identifier: Apache-2.0
"""The backing device of a writeback wait: its block device and I/O counters
from sysfs, and the write throttles on it: cgroup v1's root blkio group (where
the flusher threads write), cgroup v2's io.max of the task's group and its
ancestors (v2 writes a group's dirty pages back in that group).

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


def cgroup2_root(mountinfo_path: Path = mountinfo.MOUNTINFO) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (its root), else None."""
    for m in mountinfo.parse(lines(_text(mountinfo_path) or "")):
        if m.fstype == "cgroup2" and m.root == "/":
            return Path(m.point)
    return None


def parse_io_max(text: str | None) -> dict[str, int]:
    """cgroup v2 io.max lines ("8:0 rbps=max wbps=1048576 riops=max wiops=max"):
    "MAJ:MIN" -> its write limit in bytes/s, for the devices that have one."""
    out = {}
    for line in lines(text or ""):
        parts = line.split()
        if not parts or not _MAJMIN.fullmatch(parts[0]):
            continue
        for kv in parts[1:]:
            key, _, value = kv.partition("=")
            if key == "wbps" and value.isdigit() and int(value) > 0:
                out[parts[0]] = int(value)
    return out


def io_max_chain(root: Path, cgroup: str) -> dict[str, int]:
    """The write limits that hold for the writeback of a cgroup v2 group's pages:
    its io.max and every ancestor's, the lowest per device (the root has none)."""
    out: dict[str, int] = {}
    parts = [p for p in cgroup.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts):
        return out
    for depth in range(len(parts), 0, -1):
        for dev, bps in parse_io_max(_text(root.joinpath(*parts[:depth]) / "io.max")).items():
            out[dev] = min(bps, out.get(dev, bps))
    return out


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
        self._v2_root: Path | None | bool = False  # cgroup v2's mount: False until looked up
        self._v2_limits: dict[str, dict[str, int]] = {}  # cgroup -> its io.max chain, per sample

    def sample(self, bdis: Iterable[str], now_ns: int) -> None:
        self._counters = {}
        self._limits = None
        self._v2_limits = {}
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

    def state(self, bdi: str, cgroup: str | None = None) -> DeviceState:
        """The device as of the last sample (the throttles read once a scan, when
        asked): the lowest write limit of v1's root blkio group and, for a task
        in `cgroup` (its cgroup v2 path), the io.max of its group and ancestors."""
        if self._limits is None:
            self._limits = write_limits(self.mountinfo_path)
        limits = [x for x in (self._limits.get(bdi), self._v2_chain(cgroup).get(bdi)) if x is not None]
        name = self._name(bdi)
        return state_of(bdi, name, self._counters.get(bdi), self.rates.rate(bdi), min(limits, default=None),
                        self._partitions.get(bdi, ()))

    def _v2_chain(self, cgroup: str | None) -> dict[str, int]:
        if cgroup is None:
            return {}
        if self._v2_root is False:
            self._v2_root = cgroup2_root(self.mountinfo_path)
        if not isinstance(self._v2_root, Path):
            return {}
        if cgroup not in self._v2_limits:
            self._v2_limits[cgroup] = io_max_chain(self._v2_root, cgroup)
        return self._v2_limits[cgroup]
