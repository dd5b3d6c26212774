# SPDX-License-Identifier: Apache-2.0
"""The daemon under the pressure it watches: in a memory cgroup with a hog that
drives it to its limit, through a reclaim storm and an OOM kill, it keeps
scanning, reports the kill, and is not the one killed.

Here the daemon cannot lower its own oom_score_adj (no CAP_SYS_RESOURCE on
these machines), so what spares it is its size: bcc and the compiler never map
into it (a loader process compiles and attaches), and its pages locked as it
touches them."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from lab import memcg
from lab.ports import free_port
from tests.kernel.daemonproc import Daemon

MIB = 1 << 20
SCAN_INTERVAL_S = 0.5
HEADROOM_MIB = 128  # the hog gets this much before the group's limit, far more than the daemon holds
THRASH_S = 6.0
LONGEST_GAP_S = 5 * SCAN_INTERVAL_S  # a scan loop that stalled in reclaim would show seconds here


class ScanWatcher:
    """Reads allocwatch_last_scan_timestamp_seconds every 0.1 s; the longest time
    between two new values is the longest the scan loop went without a scan."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[float, float]] = []  # (when read, the scan's timestamp) for each new value
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                text = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                self.failures += 1
                continue
            for line in text.splitlines():
                if line.startswith("allocwatch_last_scan_timestamp_seconds "):
                    ts = float(line.split()[1])
                    if not self.seen or ts != self.seen[-1][1]:
                        self.seen.append((time.monotonic(), ts))

    def longest_gap_s(self) -> float:
        return max((b[0] - a[0] for a, b in zip(self.seen, self.seen[1:], strict=False)), default=float("inf"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _uncached_file(path: Path, mib: int) -> None:
    """A file whose pages are not in the page cache: whoever reads it next is charged for them."""
    chunk = b"\x5a" * MIB
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def test_daemon_in_a_memcg_at_its_limit_keeps_scanning_and_is_not_the_victim():
    """A reader streams a file twice the group's headroom through the page cache
    (memcg reclaim on every read, for THRASH_S), then a hog takes everything."""
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="aw-pressure-", dir="/var/tmp"))  # a disk, not tmpfs
    try:
        big = scratch / "cache.bin"
        _uncached_file(big, 2 * HEADROOM_MIB)
        with memcg.MemCgroup("aw-pressure") as group:
            d = Daemon("--scan-interval", str(SCAN_INTERVAL_S), "--metrics-addr", f"127.0.0.1:{port}",
                       spawn=group.spawn)
            try:
                d.wait_ready()
                watcher = ScanWatcher(f"http://127.0.0.1:{port}/metrics")
                hog = memcg.Hog(group, 512)
                hog.wait_ready(30)
                group.set_limit_bytes(group.usage_bytes() + HEADROOM_MIB * MIB)
                reader = group.spawn(["sh", "-c", f"while :; do cat {big} > /dev/null; done"])
                time.sleep(THRASH_S)
                reader.kill()
                reader.wait(10)
                t0 = time.monotonic()
                hog.go()
                assert hog.proc.wait(60) == -9, "the hog was not killed"
                killed_at = time.monotonic()
                assert d.wait_for(
                    lambda rs: any(r["type"] == "oom_kill" and r["victim_pid"] == hog.pid for r in rs), 10
                ), d.stderr[-3:]
                time.sleep(2 * SCAN_INTERVAL_S)  # and it goes on scanning after the kill
                watcher.close()
                assert d.proc.poll() is None, f"the daemon died: {d.stderr[-3:]}"
                kills = d.of_type("oom_kill")
                victims = {v["pid"] for k in kills for v in k["victims"]}
                assert victims == {hog.pid}, kills  # nobody else, the daemon least of all
                assert len([s for s in watcher.seen if s[0] > killed_at]) >= 2, watcher.seen[-5:]
                gap_s = watcher.longest_gap_s()
                print(f"{len(watcher.seen)} scans seen over {THRASH_S}s of reclaim and the kill "
                      f"({killed_at - t0:.1f}s after the hog went); longest gap {gap_s:.2f}s")
                assert gap_s <= LONGEST_GAP_S, (gap_s, watcher.seen)
            finally:
                code = d.stop()
            assert code == 0
            reclaim = d.of_type("summary")[-1]["waits_completed"]["memcg_reclaim"]["count"]
            assert reclaim >= 100, f"no reclaim storm: {reclaim} memcg reclaim passes"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
