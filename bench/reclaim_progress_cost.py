# SPDX-License-Identifier: Apache-2.0
"""What counting the pages a reclaim wait has reclaimed so far costs.

    .venv/bin/python bench/reclaim_progress_cost.py [--rounds N] [--storm-mib M]   (as root)

`aw_lru_shrink_inactive` runs at the end of every shrink_inactive_list() pass,
in every task that reclaims (kswapd too), and adds what the pass freed to the
task's open direct or memcg reclaim wait. Each round runs the reclaim-storm
recipe (a 64 MiB memcg, dd of M MiB into a file) under three conditions, the
order rotated from round to round: `off` (the direct and memcg reclaim pairs
only, as the daemon attaches them), `real` (plus the handler on
vmscan:mm_vmscan_lru_shrink_inactive) and `empty` (plus an empty program
there: the price of attaching anything at all). The programs are loaded once
and attached per condition. The kernel's run-time stats are on throughout
(BPF_ENABLE_STATS), so every condition pays them alike: the cost per event is
the handler's run time over its runs, next to the empty program's; the storm's
wall-clock time gives the ratio to `off`. Then one round of the livelock
recipe (reclaim that frees nothing, tens of thousands of passes a second) with
`real` attached counts how often the handler runs there, against the passes.
Last, the dirty-pause note: aw_balance_dirty_pages built without it, with it,
and an empty program, all attached to writeback:balance_dirty_pages at once
over 10 s of the dirty-throttling recipe, each with its own run time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocwatch.kernel import bpfsource, bpfstats
from bench.emptyprog import EMPTY_SRC
from lab import memcg, recipes, slowdisk

BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"
PAIRS = (
    ("vmscan:mm_vmscan_memcg_reclaim_begin", "aw_memcg_reclaim_begin"),
    ("vmscan:mm_vmscan_memcg_reclaim_end", "aw_memcg_reclaim_end"),
    ("vmscan:mm_vmscan_direct_reclaim_begin", "aw_direct_reclaim_begin"),
    ("vmscan:mm_vmscan_direct_reclaim_end", "aw_direct_reclaim_end"),
)
PASS_END = "vmscan:mm_vmscan_lru_shrink_inactive"
REAL, EMPTY, PASSES = "aw_lru_shrink_inactive", "empty", "aw_memcg_reclaim_end"
CONDITIONS = ("off", "real", "empty")


class Programs:
    def __init__(self) -> None:
        bcc = bpfsource.import_bcc()
        flags = [f"-I{BPF_DIR}", "-DAW_TP_MEMCG_RECLAIM", "-DAW_TP_DIRECT_RECLAIM", "-DAW_TP_LRU_SHRINK_INACTIVE"]
        self.real = bcc.BPF(src_file=str(BPF_DIR / bpfsource.BPF_SOURCE).encode(), cflags=flags)
        self.empty = bcc.BPF(text=EMPTY_SRC.encode())
        self.fds = {REAL: self.real.load_func(REAL.encode(), bcc.BPF.TRACEPOINT).fd,
                    EMPTY: self.empty.load_func(EMPTY.encode(), bcc.BPF.TRACEPOINT).fd}
        for tp, fn in PAIRS:
            self.real.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        self.fds[PASSES] = self.real.funcs[PASSES.encode()].fd

    def attach(self, condition: str) -> Any:
        """The BPF object the extra program was attached from, or None for `off`."""
        if condition == "off":
            return None
        obj, fn = (self.real, REAL) if condition == "real" else (self.empty, EMPTY)
        obj.attach_tracepoint(tp=PASS_END.encode(), fn_name=fn.encode())
        return obj

    def stats(self) -> dict[str, tuple[int, int]]:
        return {name: bpfstats.prog_stats(fd) for name, fd in self.fds.items()}


def storm(mib: int) -> float:
    """Seconds for dd to write `mib` MiB through a 64 MiB memcg."""
    workdir = Path(tempfile.mkdtemp(prefix="aw-bench-storm-", dir="/var/tmp"))
    try:
        with memcg.MemCgroup("aw-bench-storm") as group:
            group.set_limit_bytes(64 << 20)
            t0 = time.monotonic()
            dd = group.spawn(["dd", "if=/dev/zero", f"of={workdir / 'f'}", "bs=1M", f"count={mib}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert dd.wait(300) == 0
            return time.monotonic() - t0
    finally:
        (workdir / "f").unlink(missing_ok=True)
        workdir.rmdir()


BDP = "writeback:balance_dirty_pages"


def dirty_pause_cost(reverse: bool, seconds: float = 10.0) -> dict[str, tuple[int, int]]:
    """(run ns, runs) of aw_balance_dirty_pages without and with the pause note, and
    of an empty program, all on the tracepoint at once, over a dirty-throttled writer
    (dirty throttling: vm.dirty_bytes 8 MiB, a 1 MiB/s device). They run in the order
    attached, and the first pays for what is cold: `reverse` swaps the two."""
    bcc = bpfsource.import_bcc()
    src = str(BPF_DIR / bpfsource.BPF_SOURCE).encode()
    base = [f"-I{BPF_DIR}", "-DAW_TP_BALANCE_DIRTY_PAGES"]
    variants = [("hint only", base), ("hint + pause", [*base, "-DAW_HAVE_DIRTY_PAUSE"])]
    objs = {name: bcc.BPF(src_file=src, cflags=flags) for name, flags in (variants[::-1] if reverse else variants)}
    objs["empty"] = bcc.BPF(text=b"int aw_balance_dirty_pages(void *ctx) { return 0; }\n")
    fds = {}
    for name, obj in objs.items():
        obj.attach_tracepoint(tp=BDP.encode(), fn_name=b"aw_balance_dirty_pages")
        fds[name] = obj.funcs[b"aw_balance_dirty_pages"].fd
    before = {n: bpfstats.prog_stats(fd) for n, fd in fds.items()}
    with slowdisk.SlowDisk(write_bps=1 << 20) as disk, memcg.MemCgroup("aw-bench-dirty") as group:
        disk.set_dirty_bytes(8 << 20, 4 << 20)
        dd = disk.spawn_writer(group, 300)
        time.sleep(seconds)
        after = {n: bpfstats.prog_stats(fd) for n, fd in fds.items()}
        dd.kill()
        disk.set_write_bps(0)
        dd.wait(60)
    for obj in objs.values():
        obj.cleanup()
    return delta(after, before)


def delta(after: dict[str, tuple[int, int]], before: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


def ns_per_run(d: tuple[int, int]) -> float:
    return d[0] / d[1] if d[1] else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--storm-mib", type=int, default=1024)
    args = ap.parse_args()
    progs = Programs()
    stats_fd = bpfstats.enable()
    times: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    per_run: dict[str, list[float]] = {"real": [], "empty": []}
    events: list[int] = []
    passes: list[int] = []
    try:
        storm(64)  # warm up: first-touch costs out of the timed rounds
        for r in range(args.rounds):
            order = CONDITIONS[r % 3:] + CONDITIONS[: r % 3]
            for cond in order:
                obj = progs.attach(cond)
                before = progs.stats()
                took = storm(args.storm_mib)
                d = delta(progs.stats(), before)
                if obj is not None:
                    obj.detach_tracepoint(tp=PASS_END.encode())
                    fn = REAL if cond == "real" else EMPTY
                    per_run[cond].append(ns_per_run(d[fn]))
                    events.append(d[fn][1])
                passes.append(d[PASSES][1])
                times[cond].append(took)
                extra = f" {per_run[cond][-1]:6.1f} ns a run, {d[REAL if cond == 'real' else EMPTY][1]:7d} runs" \
                    if obj is not None else ""
                print(f"round {r + 1} {cond:5}: {took:6.3f} s, {d[PASSES][1]:6d} memcg reclaim passes{extra}",
                      flush=True)
        progs.attach("real")
        before = progs.stats()
        t0 = time.monotonic()
        recipes.reclaim_livelock(prefix="aw-bench-live")
        live_s = time.monotonic() - t0
        d = delta(progs.stats(), before)
        dirty = [dirty_pause_cost(reverse) for reverse in (False, True)]
    finally:
        os.close(stats_fd)
    off = statistics.median(times["off"])
    print(f"storm of {args.storm_mib} MiB, {args.rounds} rounds; medians (range):")
    for cond in CONDITIONS:
        ratios = [t / o for t, o in zip(times[cond], times["off"], strict=True)]
        print(f"  {cond:5}: {statistics.median(times[cond]):.3f} s ({min(times[cond]):.3f} to {max(times[cond]):.3f}),"
              f" ratio to off {statistics.median(ratios):.3f} ({min(ratios):.3f} to {max(ratios):.3f})")
    for cond in ("real", "empty"):
        print(f"  {cond:5} program: {statistics.median(per_run[cond]):.1f} ns a run "
              f"({min(per_run[cond]):.1f} to {max(per_run[cond]):.1f})")
    print(f"  events a storm: {statistics.median(events):.0f} pass ends, {statistics.median(passes):.0f} memcg "
          f"reclaim passes; off median {off:.3f} s")
    print(f"livelock ({live_s:.1f} s): {d[REAL][1]} pass ends ({ns_per_run(d[REAL]):.1f} ns a run), "
          f"{d[PASSES][1]} memcg reclaim passes")
    for run in dirty:
        print("balance_dirty_pages, 10 s of a dirty-throttled writer, in the order attached: " + "; ".join(
            f"{name} {ns_per_run(v):.1f} ns a run ({v[1]} runs)" for name, v in run.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
