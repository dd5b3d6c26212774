# SPDX-License-Identifier: Apache-2.0
"""What a program on sched_switch costs a context-switch-bound workload.

`perf bench sched pipe`, both ends pinned to one CPU (every op is two task
switches there, about 5 us here), timed under each condition in turn, the
order rotated from round to round, the ratio taken to the same round's run
with nothing attached:

  off              nothing on sched_switch
  empty raw        `int empty(void *ctx) { return 0; }` on the raw tracepoint
  empty classic    the same on sched:sched_switch
  allocwatch raw   allocwatch's own handler alone (aw_rtp_sched_switch: the
                   running kernel's BTF offsets, as the daemon compiles it)
  allocwatch classic  aw_sched_switch alone, the fallback where there is no BTF
  daemon           the default daemon (`allocwatch run`, every program it attaches)

Each program is compiled and loaded once and attached around its runs; the
daemon is started before its run and stopped after (untimed). The goal is
allocwatch's handler within 0.01 of the empty program on the same attach type.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import tools
from bench.emptyprog import EMPTY_SRC

RAW_TP = b"sched_switch"
CLASSIC_TP = b"sched:sched_switch"
CONDITIONS = ("off", "empty raw", "empty classic", "allocwatch raw", "allocwatch classic", "daemon")
CPU = 0


BURSTS = 5  # a run: the fastest of this many bursts (a shared machine only ever adds time to one)


def pipe_us_per_op(loops: int, cpu: int = CPU, bursts: int = BURSTS) -> float:
    """`perf bench sched pipe`, both processes on `cpu`, `bursts` times `loops`
    ops: the usecs/op of the fastest burst."""
    return min(_one_burst(loops, cpu) for _ in range(bursts))


def _one_burst(loops: int, cpu: int) -> float:
    out = subprocess.run(["taskset", "-c", str(cpu), "perf", "bench", "sched", "pipe", "-l", str(loops)],
                         capture_output=True, text=True, check=True).stdout
    return parse_usecs_per_op(out)


def parse_usecs_per_op(text: str) -> float:
    m = re.search(r"([\d.]+)\s+usecs/op", text)
    if m is None:
        raise RuntimeError(f"perf bench sched pipe printed no usecs/op: {text[-300:]!r}")
    return float(m.group(1))


class Programs:
    """The empty programs and allocwatch's two handlers, loaded once."""

    def __init__(self) -> None:
        from allocwatch.kernel import bpfsource, kernelinfo, probes, schedswitch

        bcc = bpfsource.import_bcc()
        switch, why = schedswitch.running_kernel_defines()
        if not switch:
            raise RuntimeError(f"no raw sched_switch here: {why}")
        features = kernelinfo.read_features(tools.TRACEFS, probes.all_tracepoint_names(),
                                            probes.all_function_names())
        flags = bpfsource.cflags_for(probes.plan(features), features,
                                     bpfsource.LoadOptions(long_wait_ns=10**9, switch_defines=tuple(switch)))
        src = str(bpfsource.bpf_dir() / bpfsource.BPF_SOURCE).encode()
        self.objs: dict[str, Any] = {
            "empty raw": bcc.BPF(text=EMPTY_SRC.encode()),
            "empty classic": bcc.BPF(text=EMPTY_SRC.encode()),
        }
        with bpfsource.compiler_output():
            self.objs["allocwatch"] = bcc.BPF(src_file=src, cflags=flags)
        self.flags = [f for f in flags if "SWITCH" in f]

    @contextmanager
    def attached(self, cond: str) -> Iterator[None]:
        obj, raw, fn = {
            "empty raw": (self.objs["empty raw"], True, b"empty"),
            "empty classic": (self.objs["empty classic"], False, b"empty"),
            "allocwatch raw": (self.objs["allocwatch"], True, b"aw_rtp_sched_switch"),
            "allocwatch classic": (self.objs["allocwatch"], False, b"aw_sched_switch"),
        }[cond]
        if raw:
            obj.attach_raw_tracepoint(tp=RAW_TP, fn_name=fn)
        else:
            obj.attach_tracepoint(tp=CLASSIC_TP, fn_name=fn)
        try:
            yield
        finally:
            if raw:
                obj.detach_raw_tracepoint(tp=RAW_TP)
            else:
                obj.detach_tracepoint(tp=CLASSIC_TP)

    def ns_per_run(self, loops: int, rounds: int = 3) -> dict[str, list[float]]:
        """Each program's run time a switch (bpf_stats on: an upper bound, the stats
        cost time too), `rounds` times each, in turn: finer than the wall clock here."""
        from allocwatch.kernel import bpfstats

        fns = {"empty raw": ("empty raw", b"empty"), "empty classic": ("empty classic", b"empty"),
               "allocwatch raw": ("allocwatch", b"aw_rtp_sched_switch"),
               "allocwatch classic": ("allocwatch", b"aw_sched_switch")}
        out: dict[str, list[float]] = {c: [] for c in fns}
        fd = bpfstats.enable()
        try:
            for _ in range(rounds):
                for cond, (obj, fn) in fns.items():
                    prog_fd = self.objs[obj].funcs[fn].fd
                    with self.attached(cond):
                        t0, n0 = bpfstats.prog_stats(prog_fd)
                        _one_burst(loops, CPU)
                        t1, n1 = bpfstats.prog_stats(prog_fd)
                    out[cond].append((t1 - t0) / max(1, n1 - n0))
        finally:
            os.close(fd)
        return out

    def close(self) -> None:
        for obj in self.objs.values():
            obj.cleanup()
        self.objs = {}


def measure(rounds: int, loops: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Per condition, per round: usecs/op; the order rotated each round."""
    progs = Programs()
    runs: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    daemon_how = ""
    try:
        pipe_us_per_op(loops, bursts=1)  # untimed: the first run pays for perf's pages
        for r in range(rounds):
            order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
            say(f"sched_switch cost: round {r + 1} of {rounds}")
            for cond in order:
                if cond == "off":
                    runs[cond].append(pipe_us_per_op(loops))
                elif cond == "daemon":
                    with tools.allocwatch() as d:
                        runs[cond].append(pipe_us_per_op(loops))
                        daemon_how = ", ".join(sorted({f"{e.get('fd_type')} {e.get('tracepoint')}"
                                                       for e in tools.perf_links(d.pid)
                                                       if e.get("tracepoint") == "sched_switch"}))
                else:
                    with progs.attached(cond):
                        runs[cond].append(pipe_us_per_op(loops))
        say("sched_switch cost: ns a run with bpf_stats on")
        ns_per_run = progs.ns_per_run(loops)
    finally:
        progs.close()
    return {"rounds": rounds, "loops": loops, "bursts": BURSTS, "cpu": CPU, "runs_us_per_op": runs,
            "ns_per_run": ns_per_run, "switch_flags": progs.flags, "daemon_sched_switch": daemon_how}
