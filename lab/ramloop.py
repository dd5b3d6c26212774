# SPDX-License-Identifier: Apache-2.0
"""A loop device over a file on a RAM disk, for the guests (tests/guest).

ext4 on a loop device whose backing file lies on ext4 on a RAM disk (brd): the
loop device's worker completes each write by writing the backing file's page
cache, which the RAM disk then writes back at once, so reclaim can free it (a
backing file on tmpfs could not be freed without swap). On cgroup v2 the worker
charges that page cache to the memory cgroup of the writer whose I/O it serves
(c74d40e8b5e2, "loop: charge i/o to mem and blk cg", v5.14): a writer's group
held over memory.high throttles the very worker its writeback waits for. On
cgroup v1 the worker charges the root (the blkio hierarchy has no memory css),
so the host cannot make this.

`close()` undoes it all, each step tried even when one before it failed:
unmount, detach and remove the loop device, unmount the RAM disk, unload brd
if this loaded it, delete the directories.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

from lab.slowdisk import Steps, attach_loop, new_loop_index, remove_loop, unmount

BRD = Path("/sys/module/brd")
RAM_DEVICE = "/dev/ram0"


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def _unload_brd() -> None:
    _run("rmmod", "brd")


class LoopOnRam:
    def __init__(self, ram_mib: int = 1024, image_mib: int = 900) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="aw-ramloop-"))
        self.back = self.dir / "back"  # the RAM disk's file system, with the backing file
        self.mnt = self.dir / "mnt"  # the loop device's file system: write here
        self.loop = ""  # "/dev/loopN"
        self._loop_index: int | None = None
        self._loaded_brd = False
        self._mounted: list[Path] = []
        try:
            if BRD.exists():
                raise RuntimeError("brd is loaded already: its RAM disks may be somebody else's")
            _run("modprobe", "brd", "rd_nr=1", f"rd_size={ram_mib * 1024}")
            self._loaded_brd = True
            _run("modprobe", "loop")  # built in or loaded: no-op
            self.back.mkdir()
            self.mnt.mkdir()
            _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", RAM_DEVICE)
            self._mount(RAM_DEVICE, self.back)
            image = self.back / "disk.img"
            with image.open("wb") as f:
                f.truncate(image_mib << 20)
            self._loop_index = new_loop_index()
            self.loop = attach_loop(self._loop_index, image)
            _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", self.loop)
            self._mount(self.loop, self.mnt)
        except BaseException as exc:
            try:
                self.close()
            except Exception as cleanup:  # the first failure is the one to see
                exc.add_note(f"and then cleaning up: {cleanup}")
            raise

    @property
    def name(self) -> str:
        """The loop device's name ("loop0"): its worker's /proc name ends "+loop0"."""
        return Path(self.loop).name

    def _mount(self, device: str, where: Path) -> None:
        _run("mount", device, str(where))
        self._mounted.append(where)

    def __enter__(self) -> LoopOnRam:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        steps = Steps()
        step, failed = steps.step, steps.failed

        def umount(where: Path) -> None:
            if not unmount(where):
                raise OSError(f"{where} still mounted")
            self._mounted.remove(where)

        if self.mnt in self._mounted:
            step(lambda: umount(self.mnt))
        if self.loop and self.mnt not in self._mounted:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, check=False)
            self.loop = ""
        if self._loop_index is not None and not self.loop:
            index = self._loop_index
            step(lambda: remove_loop(index))
            self._loop_index = None
        if self.back in self._mounted and not self.loop:
            step(lambda: umount(self.back))
        if self._loaded_brd and not self._mounted:
            step(_unload_brd)
            self._loaded_brd = False
        if not self._mounted:
            for d in (self.mnt, self.back, self.dir):
                if d.exists():
                    step(d.rmdir)
        else:
            failed.append(OSError(f"{', '.join(map(str, self._mounted))} still mounted: left in place"))
        if failed:
            raise failed[0]
