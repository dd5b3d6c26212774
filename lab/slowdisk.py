# SPDX-License-Identifier: Apache-2.0
"""A slow block device for kernel tests and benchmarks (memcg reclaim waiting on writeback, dirty throttling).

A loop device of its own over a sparse file, ext4 without a journal (with one on
request, or XFS), mounted in a temporary directory, its writes throttled by a
cgroup-v1 blkio rule on the root blkio group (the flusher kworkers live there).
The loop device is added for this disk and removed after it: a block device keeps
its writeback state (bandwidth estimate, writeback counts) across attaches, so a
reused loop0 would carry into a test what earlier tests did to it.
`close()` undoes it all in this order: the caller kills its writers first, then
the rule is lifted (blocked writers then drain and exit), then unmount, detach,
remove and delete. Dirty-page sysctls changed through `set_dirty_bytes` are
restored too.
"""

from __future__ import annotations

import fcntl
import functools
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.memcg import MemCgroup

BLKIO_RULE = Path("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device")
VM = Path("/proc/sys/vm")
LOOP_CONTROL = Path("/dev/loop-control")
LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81  # <linux/loop.h>


def loop_ctl(request: int, index: int) -> int:
    fd = os.open(LOOP_CONTROL, os.O_RDWR)
    try:
        return fcntl.ioctl(fd, request, index)
    finally:
        os.close(fd)


def _write(path: Path, value: str) -> None:
    path.write_text(f"{value}\n")


def new_loop_index() -> int:
    """A loop device added for this disk, for remove_loop to remove: LOOP_CTL_ADD
    with -1 adds one at the lowest free index (since v5.14; before, it returned
    EEXIST while any device was unbound), else one at an index no device has.
    Never one the machine had: removing that would take it from its owner."""
    try:
        return loop_ctl(LOOP_CTL_ADD, -1)
    except OSError:
        pass
    taken = [int(p.name[4:]) for p in Path("/sys/block").glob("loop*") if p.name[4:].isdigit()]
    first = max(taken, default=-1) + 1
    for index in range(first, first + 64):
        try:
            return loop_ctl(LOOP_CTL_ADD, index)
        except FileExistsError:  # added by someone else meanwhile
            continue
    raise OSError(f"no loop device could be added at indexes {first} to {first + 63}")


def attach_loop(index: int, image: Path) -> str:
    """Attach `image` to the loop device `index` (added by new_loop_index, once
    devtmpfs has made its node); its path, "/dev/loopN"."""
    device = f"/dev/loop{index}"
    for _ in range(50):
        if Path(device).exists():
            break
        time.sleep(0.1)
    _run("losetup", device, str(image))
    return device


def unmount(where: Path) -> bool:
    """Unmount, retried while the last writer's pages settle; False if still mounted."""
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode == 0:
            return True
        time.sleep(0.2)
    return False


class Steps:
    """The steps of a close(): each tried even when one before it failed (a
    leftover mount or loop device would outlive the test), the failures kept in
    order; the caller raises the first once all are done."""

    def __init__(self) -> None:
        self.failed: list[BaseException] = []

    def step(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # raised after the other steps
            self.failed.append(exc)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


class SlowDisk:
    def __init__(self, size_mib: int = 1024, write_bps: int = 512 << 10, fs: str = "ext4",
                 journal: bool = False, mount_options: str = "") -> None:
        """`fs`: ext4 (without a journal unless `journal`) or xfs; `mount_options` for mount -o."""
        self.dir = Path(tempfile.mkdtemp(prefix="aw-slowdisk-", dir="/var/tmp"))
        self.image = self.dir / "disk.img"
        self.mnt = self.dir / "mnt"
        self.loop = ""
        self.majmin = ""
        self._loop_index: int | None = None  # of the loop device added for this disk
        self._sysctls: dict[str, str] = {}
        self._mounted = False
        try:
            self.mnt.mkdir()
            with self.image.open("wb") as f:
                f.truncate(size_mib << 20)
            self._loop_index = new_loop_index()
            self.loop = attach_loop(self._loop_index, self.image)
            if fs == "xfs":
                _run("mkfs.xfs", "-q", "-f", self.loop)
            else:
                _run("mkfs.ext4", "-q", "-F", *(() if journal else ("-O", "^has_journal")), self.loop)
            _run("mount", *(("-o", mount_options) if mount_options else ()), self.loop, str(self.mnt))
            self._mounted = True
            self.majmin = _run("lsblk", "-dno", "MAJ:MIN", self.loop).strip()
            self.set_write_bps(write_bps)
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup:  # the first failure is the one to see
                exc.add_note(f"and then cleaning up: {cleanup}")
            raise

    def set_write_bps(self, bps: int) -> None:
        BLKIO_RULE.write_text(f"{self.majmin} {bps}\n")

    def spawn_writer(self, group: MemCgroup, mib: int, name: str = "f") -> subprocess.Popen[Any]:
        """dd writing `mib` MiB of zeros to the file `name` here from `group`, its output
        discarded; end it with `stop_writer`. A second writer wants a name of its own:
        dd truncates its file, and waits there on the writeback of the pages it drops."""
        return group.spawn(["dd", "if=/dev/zero", f"of={self.mnt / name}", "bs=1M", f"count={mib}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_writer(self, writer: subprocess.Popen[Any]) -> None:
        """SIGKILL does not end a writer blocked on throttled writeback until the
        rule is lifted: kill, lift, then reap."""
        writer.kill()
        self.set_write_bps(0)
        writer.wait(60)

    def set_dirty_bytes(self, dirty: int, background: int) -> None:
        for name in ("dirty_ratio", "dirty_background_ratio"):
            self._sysctls.setdefault(name, (VM / name).read_text().strip())
        (VM / "dirty_bytes").write_text(f"{dirty}\n")
        (VM / "dirty_background_bytes").write_text(f"{background}\n")

    def close(self) -> None:
        """Every step is tried even when one before it failed (Steps)."""
        steps = Steps()
        step, failed = steps.step, steps.failed
        if self.majmin:
            step(lambda: self.set_write_bps(0))  # lift the rule: blocked writeback drains
        # Writing the ratios zeroes the *_bytes values (writing 0 to those is refused).
        for name, value in self._sysctls.items():
            step(functools.partial(_write, VM / name, value))
        self._sysctls = {}
        if self._mounted:
            self._mounted = not unmount(self.mnt)
        if self.loop and not self._mounted:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
            self.loop = ""
        step(self._remove_loop)
        if not self._mounted:
            self.image.unlink(missing_ok=True)
            if self.mnt.exists():
                self.mnt.rmdir()
            self.dir.rmdir()
        else:
            failed.append(OSError(f"{self.mnt} still mounted: left in place"))
        if failed:
            raise failed[0]

    def _remove_loop(self) -> None:
        index = self._loop_index
        if index is None or self.loop:
            return
        remove_loop(index)
        self._loop_index = None

    def __enter__(self) -> SlowDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_loop(index: int) -> None:
    """Remove the loop device `index` (detached): LOOP_CTL_REMOVE, retried while
    the detach settles."""
    last: OSError | None = None
    for _ in range(50):  # busy while the detach settles
        try:
            loop_ctl(LOOP_CTL_REMOVE, index)
            return
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise OSError(f"loop device {index} not removed: {last}")
