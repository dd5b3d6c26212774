# SPDX-License-Identifier: Apache-2.0
"""What /proc says of one process: CPU time, resident memory, threads in D.

The parsers are pure (text in, numbers out); the readers take a pid."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15) of a /proc/PID/stat line, in clock ticks."""
    # comm may hold spaces and parentheses: the fields after it follow the last ')'.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def parse_rss_kb(status: str) -> dict[str, int]:
    """RssAnon, RssFile, RssShmem, VmRSS of /proc/PID/status, in KiB."""
    out = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def state_letter(stat: str) -> str:
    return stat.rsplit(")", 1)[1].split()[0]


def cpu_seconds(pid: int) -> float:
    return parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK


def rss_kb(pid: int) -> dict[str, int]:
    return parse_rss_kb(Path(f"/proc/{pid}/status").read_text())


def threads_in_d(pid: int) -> set[int]:
    """Tids of `pid`'s threads in D (TASK_KILLABLE shows as D too)."""
    found = set()
    task_dir = Path(f"/proc/{pid}/task")
    for tid in os.listdir(task_dir):
        try:
            fd = os.open(task_dir / tid / "stat", os.O_RDONLY)
        except OSError:
            continue
        try:
            stat = os.read(fd, 4096).decode(errors="replace")
        except OSError:
            continue
        finally:
            os.close(fd)
        if state_letter(stat) == "D":
            found.add(int(tid))
    return found


def machine() -> dict[str, str]:
    """nproc, RAM, hypervisor, kernel: the table's heading."""
    mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    virt = "VM (hypervisor flag set)" if " hypervisor" in cpuinfo else "bare metal (no hypervisor flag)"
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "ram": f"{mem_kb / (1 << 20):.1f} GiB",
        "cpu": model,
        "virt": virt,
        "kernel": os.uname().release,
    }


class RssSampler:
    """RssAnon read every `every_s` from start to `stop()`: its peak and mean in KiB.
    One read at a window's end lands anywhere between a block of 10,000 tasks
    being made and its memory given back (10 to 20 MiB apart); the peak is what
    the process needed, the mean what it held. `read` gives KiB (injected in tests)."""

    def __init__(self, pid: int, every_s: float = 0.2, read: Callable[[], int] | None = None) -> None:
        self._read = read or (lambda: rss_kb(pid)["RssAnon"])
        self._every_s = every_s
        self._stop = threading.Event()
        self.samples: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.samples.append(self._read())
            except OSError:  # the process has gone
                return
            if self._stop.wait(self._every_s):
                return

    def stop(self) -> dict[str, float]:
        """{"peak_kb", "mean_kb", "samples"}; NaN figures when no read succeeded."""
        self._stop.set()
        self._thread.join(5)
        got = list(self.samples)
        if not got:
            return {"peak_kb": float("nan"), "mean_kb": float("nan"), "samples": 0}
        return {"peak_kb": float(max(got)), "mean_kb": sum(got) / len(got), "samples": len(got)}
