# SPDX-License-Identifier: Apache-2.0
"""Whole stalls built from memcg and slowdisk, for the kernel tests and the
benchmarks alike."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lab import memcg, slowdisk


def reclaim_livelock(n_victims: int = 4, prefix: str = "aw-livelock", victim_mib: int = 8) -> None:
    """The reclaim livelock: a hog looping in memcg reclaim that frees nothing while OOM victims
    that cannot exit (blocked on a frozen file system, each holding `victim_mib` besides its
    Python) are chosen one after another (about 2 s each); returns once the hog is killed,
    with everything undone."""
    with slowdisk.SlowDisk(size_mib=64, write_bps=0) as disk, memcg.MemCgroup(prefix) as group:
        group.set_limit_bytes(64 << 20)
        subprocess.run(["fsfreeze", "-f", str(disk.mnt)], check=True)
        victims = []
        try:
            for i in range(n_victims):
                code = f"b = bytearray({victim_mib} << 20); open('{disk.mnt}/v{i}', 'w')"
                victims.append(group.spawn(
                    ["sh", "-c", f'echo 1000 > /proc/self/oom_score_adj; exec {sys.executable} -I -S -c "{code}"']))
            time.sleep(2)
            hog = memcg.Hog(group, 128)
            hog.wait_ready(30)
            hog.go()
            hog.proc.wait(90)
        finally:
            subprocess.run(["fsfreeze", "-u", str(disk.mnt)], check=True)
            for v in victims:
                v.kill()
                v.wait(30)


@contextmanager
def fio_on_slow_xfs(
    prefix: str = "aw-nofs", numjobs: int = 2, negative_dentries: int = 0,
) -> Iterator[tuple[memcg.MemCgroup, Any]]:
    """fio writers on XFS behind a 1 MiB/s disk in a 96 MiB group full of clean page cache,
    32 MiB dirty at most: XFS cannot write a dirty page back from reclaim (a group full of
    dirty pages would be OOM-killed), so reclaim finds pages under writeback and waits on them,
    asking with GFP_NOFS. `negative_dentries`: that many names looked up and not found in the
    file system first, from the group (dentries charged to it, which only the file system's
    shrinker frees, and not under GFP_NOFS). Yields (group, fio); everything is undone on the
    way out."""
    with slowdisk.SlowDisk(write_bps=1 << 20, fs="xfs") as disk, memcg.MemCgroup(prefix) as group:
        disk.set_dirty_bytes(32 << 20, 16 << 20)
        group.set_limit_bytes(96 << 20)
        fill = disk.dir / "fill"  # the group full of clean page cache first (a fast disk): fio's writes reclaim
        try:
            group.spawn(["dd", "if=/dev/zero", f"of={fill}", "bs=1M", "count=128", "conv=fsync"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(60)
            if negative_dentries:
                code = f"import os\nfor i in range({negative_dentries}):\n    os.path.exists('{disk.mnt}/nx%d' % i)"
                group.spawn([sys.executable, "-I", "-S", "-c", code]).wait(120)
            fio = group.spawn(
                ["fio", "--name=w", f"--directory={disk.mnt}", "--rw=write", "--bs=1M", "--size=512M",
                 f"--numjobs={numjobs}", "--ioengine=psync", "--group_reporting", "--runtime=300"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                yield group, fio
            finally:
                fio.kill()
                disk.set_write_bps(0)
                fio.wait(120)
                for pid in group.pids():  # fio's jobs are its children
                    subprocess.run(["kill", "-9", str(pid)], check=False)
                deadline = time.monotonic() + 60
                while group.pids() and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            fill.unlink(missing_ok=True)
