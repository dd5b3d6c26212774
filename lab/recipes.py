# SPDX-License-Identifier: Apache-2.0
"""Whole stalls built from memcg and slowdisk, for the kernel tests and the
benchmarks alike."""

from __future__ import annotations

import subprocess
import sys
import time

from lab import memcg, slowdisk


def reclaim_livelock(n_victims: int = 4, prefix: str = "aw-livelock") -> None:
    """The reclaim livelock: a hog looping in memcg reclaim that frees nothing while OOM victims
    that cannot exit (blocked on a frozen file system) are chosen one after another
    (about 2 s each); returns once the hog is killed, with everything undone."""
    with slowdisk.SlowDisk(size_mib=64, write_bps=0) as disk, memcg.MemCgroup(prefix) as group:
        group.set_limit_bytes(64 << 20)
        subprocess.run(["fsfreeze", "-f", str(disk.mnt)], check=True)
        victims = []
        try:
            for i in range(n_victims):
                code = f"b = bytearray(8 << 20); open('{disk.mnt}/v{i}', 'w')"
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
