# SPDX-License-Identifier: Apache-2.0
"""Fakes and builders the unit tests share (a plain module: test modules import
it, never each other).

- `captured(name)`: the features of a kernel captured under tests/fixtures/kernels.
- `FakeSource`, `ListSink`, `fake_proc`: a BPF source, an output and a /proc for
  the scan loop; `snapshot_daemon` puts a Daemon over them with a fake clock, and
  `hog_stalls_then_wakes` drives it through one stall and its end.
- `top_task`, `top_doc`: the JSON a daemon's socket gives `allocwatch top`.
- `FakeMap`, `reader_over`: a BPF hash map behind a fake batch lookup, and a
  MapReader over it (also run in a child process).
- `HOST_FIXTURE`, `HOST_PROC`: a captured host's cgroupfs and /proc.
"""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path
from typing import Any

from allocwatch.app.daemon import Daemon
from allocwatch.config import Config
from allocwatch.core.model import InflightWait, WaitEnd
from allocwatch.core.sites import SITE_DSTATE, Site
from allocwatch.core.snapshot import SiteCoverage
from allocwatch.kernel import kernelinfo, probes
from allocwatch.kernel.kernelinfo import KernelFeatures
from allocwatch.kernel.mapread import MapReader
from allocwatch.kernel.probes import plan
from allocwatch.outputs import report

S = 1_000_000_000
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"
HOST_FIXTURE = FIXTURES / "host"
HOST_PROC = HOST_FIXTURE / "proc"


# -- kernels ----------------------------------------------------------------------


def captured(name: str) -> KernelFeatures:
    """The kernel captured in tests/fixtures/kernels/NAME (scripts/capture-kernel)."""
    root = KERNELS / name
    return kernelinfo.read_features(
        root, probes.all_tracepoint_names(), probes.all_function_names(),
        kallsyms=root / "kallsyms", sysfs=root, release=name, assume_proc_stack=True,
    )


# -- the scan loop ----------------------------------------------------------------


class FakeSource:
    def __init__(self):
        self.waits: list[InflightWait] = []
        self.events: list = []

    def inflight(self):
        return list(self.waits)

    def drain(self):
        out, self.events = self.events, []
        return out

    def histograms(self):
        slots = [0] * 32
        slots[6] = 40  # 64 to 128 us
        slots[17] = 1  # 131 to 262 ms
        return {Site.MEMCG_RECLAIM: (slots, 41 * 100_000), Site.MEMCG_OOM_WAIT: ([0] * 32, 0)}

    def stats(self):
        return {"events_lost": 0}

    def drop_dwait(self, tid, start_ns):
        self.dropped = [*getattr(self, "dropped", []), (tid, start_ns)]

    def let_go_dwait(self, tid, start_ns):
        """As the raw sched_switch with room in the map: left for the kernel."""
        return False


class ListSink:
    """An output that keeps what a stream would write: one text per scan with records."""

    def __init__(self, fmt="json"):
        self.fmt = fmt
        self.writes: list[str] = []
        self.snapshots = []

    def publish(self, snap):
        self.snapshots.append(snap)
        if snap.records:
            self.writes.append(report.render_dicts(snap.records, self.fmt))


def fake_proc(tmp_path, pid, stack, cgroup="4:memory:/box\n0::/\n", state="D"):
    d = tmp_path / str(pid) / "task" / str(pid)
    d.mkdir(parents=True)
    (d / "stack").write_text("".join(f"[<0>] {f}+0x1/0x2\n" for f in stack))
    (d / "cgroup").write_text(cgroup)
    (d / "stat").write_text(f"{pid} (a) b) c) {state} 1 2 3\n")
    return tmp_path


def snapshot_daemon(tmp_path, **cfg):
    """A Daemon over a FakeSource and a ListSink on the 6.18 plan, with task 7 in
    the memcg OOM wait in a fake /proc: (daemon, source, sink, clock)."""
    fake_proc(tmp_path, 7, ["mem_cgroup_oom_synchronize"])
    clock = {"ns": 0}
    src, out = FakeSource(), ListSink()
    coverage = [SiteCoverage("memcg_oom_wait", "sched_switch D-state + stack", True),
                SiteCoverage("congestion_wait", "", False)]
    d = Daemon(Config(format="json", **cfg), src, plan(captured("6.18")), [out], proc=tmp_path,
               clock_ns=lambda: clock["ns"], wall_s=lambda: 1e9, coverage=coverage, kernel="6.18-test")
    return d, src, out, clock


def hog_stalls_then_wakes(d, src, clock, *others):
    """A task in the memcg OOM wait since 0, seen at 3 s (past a 2 s threshold) with
    `others` in flight beside it, and woken at 4 s."""
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None), *others]
    clock["ns"] = 3 * S
    d.scan_once()
    src.waits = []
    src.events = [WaitEnd(7, 7, "hog", SITE_DSTATE, 0, 4 * S, None, None, None)]
    clock["ns"] = 4 * S
    d.scan_once()


# -- top's documents --------------------------------------------------------------


def top_task(tid: int, wait: float, site: str = "memcg_oom_wait", comm: str = "hog", cgroup: str = "/box",
             level: int = 0, pid: int | None = None, share: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"kind": "stall" if level else "wait", "tid": tid, "pid": pid or tid, "comm": comm, "site": site,
            "duration_s": wait, "level": level, "start_known": True, "gfp": None, "order": None, "share": share,
            "detail": False, "cgroup": cgroup, "state": "D", **kw}


def top_doc(inflight, scan: int = 2, time_s: float = 100.0, sites=None, episodes=(), thresholds=None):
    return {
        "type": "snapshot", "scan": scan, "time_s": time_s, "inflight": list(inflight), "episodes": list(episodes),
        "thresholds_s": thresholds or {"*": 10.0}, "sites": sites or {}, "counters": {"oom_kills": 2},
        "coverage": [{"site": "memcg_oom_wait", "mechanism": "x", "attached": True},
                     {"site": "congestion_wait", "mechanism": "", "attached": False}],
        "context": {"psi": {"some_avg10_pct": 1.5, "full_avg10_pct": 0.5},
                    "meminfo_bytes": {"MemAvailable": 3 << 30, "MemFree": 2 << 30},
                    "kswapd": [{"node": 0, "pid": 45, "state": "S", "state_for_s": 12.0, "not_run_for_s": 12.0,
                                "stack": []}]},
    }


# -- BPF maps ---------------------------------------------------------------------


class FakeMap:
    """A hash map behind a fake BPF_MAP_LOOKUP_BATCH: hands out at most `per_call`
    entries a call, with a bucket token, and ENOENT once the map is done."""

    def __init__(self, entries: dict[int, int], per_call: int = 1000, err: int = 0) -> None:
        self.entries = entries
        self.per_call = per_call
        self.err = err
        self.calls = 0

    def __call__(self, fd, in_batch, out_batch, keys, values, count) -> int:
        self.calls += 1
        if self.err:
            ctypes.set_errno(self.err)
            return -1
        start = ctypes.cast(in_batch, ctypes.POINTER(ctypes.c_uint32))[0] if in_batch else 0
        items = sorted(self.entries.items())[start:]
        room = ctypes.cast(count, ctypes.POINTER(ctypes.c_uint32))
        n = min(room[0], self.per_call, len(items))
        kp = ctypes.cast(keys, ctypes.POINTER(ctypes.c_uint32))
        vp = ctypes.cast(values, ctypes.POINTER(ctypes.c_uint64))
        for i, (k, v) in enumerate(items[:n]):
            kp[i], vp[i] = k, v
        room[0] = n
        ctypes.cast(out_batch, ctypes.POINTER(ctypes.c_uint32))[0] = start + n
        if n == len(items):
            ctypes.set_errno(errno.ENOENT)
            return -1
        return 0


def batch_of(fake: FakeMap):
    # The reader reads errno with ctypes.get_errno(): give it a real function's
    # errno handling by calling through a CFUNCTYPE with use_errno.
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, use_errno=True)
    return proto(fake)


def reader_over(fake: FakeMap, decoded: list[tuple[int, int]], max_entries: int = 64) -> MapReader[tuple[int, int]]:
    def decode(k: bytes, v: bytes) -> tuple[int, int]:
        pair = (int.from_bytes(k, "little"), int.from_bytes(v, "little"))
        decoded.append(pair)
        return pair

    return MapReader(3, 4, 8, max_entries, batch_of(fake), decode)
