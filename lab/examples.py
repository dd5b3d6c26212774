# SPDX-License-Identifier: Apache-2.0
"""The docs' example reports, made again from real runs.

`python -m lab.examples NAME` (as root) starts the real daemon with text reports
and its defaults, makes one kind of stall with the lab's recipes, and prints
every line the daemon wrote. The README's example is `high` (cgroup v2: run it
in a guest, `scripts/test-guest 6.12 --example high`); the others run here.
Everything made is undone, as in the tests.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from lab import memcg, recipes, slowdisk

MIB = 1 << 20


class _TextDaemon:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocwatch", "run", "--format", "text", "--metrics-addr", "", "--socket", ""],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        first = self.proc.stderr.readline()
        if "watching" not in first:
            raise SystemExit(f"examples: the daemon did not start: {first.strip()}")
        self.lines: list[str] = []
        out = self.proc.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self._reader.start()

    def wait_line(self, pred: Callable[[str], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(pred(ln) for ln in list(self.lines)):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self._reader.join(5)


def _level(n: int, kind: str = "") -> Callable[[str], bool]:
    return lambda ln: f"level={n}" in ln and (not kind or f"kind={kind}" in ln)


def high(d: _TextDaemon) -> None:
    """cgroup v2: a program touching 200 MiB in a group whose memory.high is 16 MiB."""
    with memcg.MemCgroup("backup") as group:
        if group.version != 2:
            raise SystemExit("examples: high needs the memory controller on cgroup v2 (a guest)")
        with memcg.Hog(group, 200) as hog:
            hog.wait_ready(60)
            group.set_high_bytes(16 * MIB)
            hog.go()
            try:
                d.wait_line(_level(4, "throttled"), 120)
            finally:
                group.set_high_bytes(None)
            hog.wait_done(60)  # lifted: it runs to the end of its memory
            d.wait_line(lambda ln: "throttled over" in ln, 30)


def crawl(d: _TextDaemon) -> None:
    """dd in a 64 MiB group writing to a disk throttled to 256 KiB/s."""
    with slowdisk.SlowDisk(write_bps=256 << 10) as disk, memcg.MemCgroup("aw-crawl") as group:
        group.set_limit_bytes(64 * MIB)
        dd = disk.spawn_writer(group, 200)
        try:
            d.wait_line(_level(2), 60)
        finally:
            disk.stop_writer(dd)
        d.wait_line(lambda ln: " over #" in ln or "recovered" in ln, 30)


def nofs(d: _TextDaemon) -> None:
    """fio writers on XFS behind a 1 MiB/s disk in a 96 MiB group holding 200,000 negative
    dentries of that file system: reclaim with GFP_NOFS, whose shrinkers free nothing."""
    with recipes.fio_on_slow_xfs(negative_dentries=200_000):
        d.wait_line(lambda ln: "shrinkers in the window:" in ln and "(no fs/io)" in ln, 90)
        d.wait_line(_level(2), 60)
    time.sleep(2)


def dirty(d: _TextDaemon) -> None:
    """Dirty throttling: dd behind a 1 MiB/s disk with 8 MiB of dirty memory allowed."""
    with slowdisk.SlowDisk(write_bps=1 * MIB) as disk, memcg.MemCgroup("aw-dirty") as group:
        disk.set_dirty_bytes(8 * MIB, 4 * MIB)
        dd = disk.spawn_writer(group, 300)
        try:
            d.wait_line(_level(2, "throttled"), 40)
        finally:
            disk.stop_writer(dd)
        d.wait_line(lambda ln: "throttled over" in ln, 20)


def livelock(d: _TextDaemon) -> None:
    """A hog looping in memcg reclaim, freeing nothing, while nine OOM victims that cannot
    exit (small, on a frozen file system) are chosen one after another, 2 s each."""
    recipes.reclaim_livelock(9, "aw-live", victim_mib=0)
    time.sleep(2)


def victim(d: _TextDaemon) -> None:
    """An OOM victim asleep on a frozen file system, a second task in the group's OOM wait
    (its OOM killer then off), a third blocked on the same file system."""
    with slowdisk.SlowDisk(size_mib=64, write_bps=0) as disk, memcg.MemCgroup("aw-victim") as group:
        subprocess.run(["fsfreeze", "-f", str(disk.mnt)], check=True)
        procs: list[subprocess.Popen[str]] = []
        hogs: list[memcg.Hog] = []
        try:
            for adj, code in ((1000, f"b = bytearray(40 << 20); open('{disk.mnt}/v', 'w')"),
                              (-1000, f"open('{disk.mnt}/b', 'w')")):
                procs.append(group.spawn(["sh", "-c", f"echo {adj} > /proc/self/oom_score_adj; "
                                                      f'exec {sys.executable} -I -S -c "{code}"']))
            time.sleep(1)
            hogs = [memcg.Hog(group, 100), memcg.Hog(group, 100)]
            for h in hogs:
                h.wait_ready(30)
            group.set_limit_bytes(group.usage_bytes() + 16 * MIB)
            hogs[0].go()
            time.sleep(3)
            if group.version == 1:
                group.set_oom_kill_disable(True)
            hogs[1].go()
            d.wait_line(_level(2, "stuck_victim"), 40)
        finally:
            subprocess.run(["fsfreeze", "-u", str(disk.mnt)], check=True)
            for p in procs:
                p.kill()
                p.wait(30)
            for h in hogs:
                h.stop()
        d.wait_line(lambda ln: "stuck victim gone" in ln, 20)


def kill(d: _TextDaemon) -> None:
    """One OOM kill: a program touching 200 MiB in a 64 MiB group."""
    with memcg.MemCgroup("aw-kill") as group, memcg.Hog(group, 200) as hog:
        hog.wait_ready(30)
        group.set_limit_bytes(64 * MIB)
        hog.go()
        hog.proc.wait(60)
        d.wait_line(lambda ln: "oom kill #" in ln, 10)


def storm(d: _TextDaemon) -> None:
    """An OOM storm: stress-ng (--vm 2 --vm-bytes 600M --vm-keep) in a 256 MiB group for 5 s."""
    with memcg.MemCgroup("demo") as group:
        group.set_limit_bytes(256 * MIB)
        proc = group.spawn(["stress-ng", "--vm", "2", "--vm-bytes", "600M", "--vm-keep", "--timeout", "5s"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(60)
        finally:
            proc.kill()
            proc.wait(30)
        time.sleep(2)


EXAMPLES: dict[str, Callable[[_TextDaemon], None]] = {
    f.__name__: f for f in (high, crawl, nofs, dirty, livelock, victim, kill, storm)}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in EXAMPLES:
        print(f"usage: python -m lab.examples {'|'.join(EXAMPLES)}", file=sys.stderr)
        return 2
    d = _TextDaemon()
    try:
        EXAMPLES[argv[0]](d)
    finally:
        d.stop()
    sys.stdout.write("".join(d.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
