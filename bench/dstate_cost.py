#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What allocwatch's D-state tracking costs, next to the /proc sweep it replaces.

Run as root with the interpreter that has bcc (Debian: /usr/bin/python3):

    /usr/bin/python3 bench/dstate_cost.py [--quick] [--json FILE] [--tmpdir DIR]

It prints one table; ``--json FILE`` also writes it, with every raw timing.
A full run takes about 3 minutes; ``--quick`` (3 rounds, small counts) about 20 s.

Mechanism under test
--------------------
``aw_sched_switch`` in bpf/allocwatch.bpf.c runs on every ``sched:sched_switch``:
it looks the incoming task up in the ``dwaits`` hash (deleting a hit), and when
the outgoing task sleeps in TASK_UNINTERRUPTIBLE it inserts an entry. The
alternative is a periodic sweep of /proc/*/task/*/stat for tasks in D.

1. Context-switch cost, wall clock. The project's own source is compiled with
   bcc (``-I<checkout>/bpf -DLONG_WAIT_NS=1000000000ULL``) and only
   ``aw_sched_switch`` is attached, to ``sched:sched_switch``. A trivial
   program (``int empty(void *ctx) { return 0; }``) on the same tracepoint is
   the baseline: it pays for enabling the tracepoint and the BPF dispatch, so
   real - empty is the program body. Two workloads, each run in a fresh worker
   process (this script with ``--worker``, so bcc/LLVM is not in it) pinned to
   one CPU and timed inside the worker:
     A  pipe ping-pong between two processes on that CPU: every round trip is
        two task-to-task switches, both S-state (the lookup-miss path);
     B  4 KiB O_DIRECT pwrite + fdatasync on a disk-backed file system: the
        writer sleeps in D twice per op (the insert, lookup-hit, delete path).
        The op count is calibrated at start to take ~1.5 s.
   A worker times its run as 10 equal blocks and reports median block x 10
   (the plain total is kept in the JSON): a VM hiccup inside a run then
   spoils one block, not the run. Each round runs the three conditions (off,
   real, empty) back to back, the order rotated from round to round so that
   no condition always goes first; 13 rounds (3 with --quick). Reported:
   median time per condition, the median [min, max] of the per-round ratios
   with/off, and ns per switch = (median with - median off) / sched_switch
   events per run, with a 90 % bootstrap interval (rounds resampled whole).

   Load once, attach per condition: each program is compiled and loaded once
   and attached/detached around every run (bcc's attach_tracepoint /
   detach_tracepoint; a few ms, untimed). Loading per round would put LLVM and
   the verifier (0.2 to 0.4 s, ~100 MB RSS) between runs for nothing: the
   loaded program is the same either way, and a loaded but detached program
   costs a context switch nothing. Maps keep their state across conditions;
   entries left by a detach are deleted at the task's next switch-in.

   Counting: wall-clock runs keep ``kernel.bpf_stats_enabled`` off, because
   the stats themselves cost time per hit (measured here: an empty program
   reads ~149 ns a hit with stats on). After the rounds, one extra run per
   program and workload has the stats on: its run_cnt (bpftool prog show
   --json, by program id) is the sched_switch events per run, and
   run_time_ns/run_cnt is reported for real and empty side by side. A third
   tiny program, attached only in those counting runs, counts the events whose
   prev_state is TASK_UNINTERRUPTIBLE (D sleeps), to show which path ran.
   The sysctl is restored to its previous value, also on error or SIGTERM.
   The workload's own switches (getrusage) are recorded for every run.

2. /proc sweep: one sweep lists /proc, lists every /proc/<pid>/task, reads
   each task's stat (state letter after the last ')') and reads the kernel
   stack of any task in D. Two readers: allocwatch's own (imported from
   allocwatch.kernel.procfs: tasks_in_state, kernel_stack), and a bare
   os.open/os.read/os.close (the leanest Python sweep).
   Median of 20 sweeps (wall and CPU time), tasks seen, us per task; then the
   same with a child process holding 2,000 extra idle threads, killed after.

3. Conclusion: the machine's rates over 5 s (context switches from /proc/stat
   ``ctxt``; D sleeps from the counter program), after loading but with none
   of the measured programs attached, priced at the larger of A's wall-clock
   ns/switch and the real program's bpf_stats ns/hit in A, plus the extra a
   D sleep costs (bpf_stats: B's run time beyond its hits at A's
   per-hit price, per D sleep), against one lean sweep a second; and the
   switch rate at which the two would cost the same.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import mmap
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
CHECKOUT = SCRIPT.parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))
BPF_DIR = CHECKOUT / "bpf"
BPF_SRC = BPF_DIR / "allocwatch.bpf.c"

TRACEPOINT = b"sched:sched_switch"
REAL_FN = b"aw_sched_switch"
EMPTY_FN = b"empty"
COUNTER_FN = b"count_switch"
STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
# sched_switch's prev_state for TASK_UNINTERRUPTIBLE (and TASK_KILLABLE).
REPORT_UNINTERRUPTIBLE = 2

COUNTER_SRC = """
BPF_ARRAY(counts, u64, 2);
int count_switch(struct tracepoint__sched__sched_switch *args)
{
    u32 k = 0;
    u64 *v = counts.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    if (args->prev_state == AW_D) {
        k = 1;
        v = counts.lookup(&k);
        if (v)
            __sync_fetch_and_add(v, 1);
    }
    return 0;
}
"""

CONDITIONS = ("off", "real", "empty")
DIO_BLOCK = 4096
DIO_SLOTS = 16
BLOCKS = 10  # a worker times its run as this many equal blocks
BOOTSTRAP = 4000
BLOCK_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "bcachefs", "nilfs2"}


@dataclass(frozen=True)
class Settings:
    rounds: int
    pingpong_round_trips: int
    dio_target_s: float
    sweeps: int
    extra_threads: int
    ctxt_window_s: float

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                rounds=3,
                pingpong_round_trips=50_000,
                dio_target_s=0.4,
                sweeps=5,
                extra_threads=2_000,
                ctxt_window_s=2.0,
            )
        return cls(
            rounds=13, pingpong_round_trips=200_000, dio_target_s=1.5, sweeps=20, extra_threads=2_000, ctxt_window_s=5.0
        )


# ---------------------------------------------------------------- workers --
# Run in a fresh process (this file with --worker ...); print one JSON line.


def _own_switches() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_nvcsw + ru.ru_nivcsw


def block_result(block_s: list[float], task_switches: int) -> dict[str, Any]:
    """A worker's answer: its blocks, their sum, and median block x blocks (robust to a hiccup)."""
    return {
        "elapsed_s": sum(block_s),
        "robust_s": statistics.median(block_s) * len(block_s),
        "block_s": block_s,
        "task_switches": task_switches,
    }


def worker_pingpong(round_trips: int, cpu: int) -> dict[str, Any]:
    """Two processes on one CPU bounce a byte through two pipes."""
    os.sched_setaffinity(0, {cpu})
    per_block = max(1, round_trips // BLOCKS)
    round_trips = per_block * BLOCKS
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for _ in range(round_trips):
                if not os.read(to_child_r, 1):
                    break
                os.write(to_parent_w, b"x")
        except OSError:
            code = 1
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(to_parent_w)
    before = _own_switches()
    block_s = []
    for _ in range(BLOCKS):
        t0 = time.perf_counter()
        for _ in range(per_block):
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
        block_s.append(time.perf_counter() - t0)
    own = _own_switches() - before
    _, status, child_ru = os.wait4(pid, 0)
    if status != 0:
        raise RuntimeError(f"ping-pong child ended with status {status}")
    return block_result(block_s, own + child_ru.ru_nvcsw + child_ru.ru_nivcsw)


def worker_dio(ops: int, cpu: int, path: str) -> dict[str, Any]:
    """Small O_DIRECT overwrites, each followed by fdatasync: D-state sleeps."""
    os.sched_setaffinity(0, {cpu})
    per_block = max(1, ops // BLOCKS)
    buf = mmap.mmap(-1, DIO_BLOCK)  # page aligned, as O_DIRECT wants
    buf.write(b"a" * DIO_BLOCK)
    fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    try:
        for slot in range(DIO_SLOTS):  # allocate the blocks before timing
            os.pwrite(fd, buf, slot * DIO_BLOCK)
        os.fsync(fd)
        before = _own_switches()
        block_s = []
        for _ in range(BLOCKS):
            t0 = time.perf_counter()
            for i in range(per_block):
                os.pwrite(fd, buf, (i % DIO_SLOTS) * DIO_BLOCK)
                os.fdatasync(fd)
            block_s.append(time.perf_counter() - t0)
        own = _own_switches() - before
    finally:
        os.close(fd)
    return block_result(block_s, own)


def worker_threads(count: int) -> None:
    """Hold `count` idle threads until stdin closes (or we are killed)."""
    threading.stack_size(256 * 1024)
    release = threading.Event()
    for _ in range(count):
        threading.Thread(target=release.wait, daemon=True).start()
    print(json.dumps({"threads": threading.active_count()}), flush=True)
    sys.stdin.read()
    release.set()


def worker_main(argv: list[str]) -> int:
    kind, *rest = argv
    if kind == "pingpong":
        print(json.dumps(worker_pingpong(int(rest[0]), int(rest[1]))), flush=True)
    elif kind == "dio":
        print(json.dumps(worker_dio(int(rest[0]), int(rest[1]), rest[2])), flush=True)
    elif kind == "threads":
        worker_threads(int(rest[0]))
    else:
        raise SystemExit(f"unknown worker {kind!r}")
    return 0


# ------------------------------------------------------- process handling --


def worker_cmd(*args: object) -> list[str]:
    return [sys.executable, str(SCRIPT), "--worker", *(str(a) for a in args)]


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group this script started for `proc`, then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_worker(*args: object, timeout_s: float = 120.0) -> dict[str, Any]:
    proc = subprocess.Popen(worker_cmd(*args), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        kill_group(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed with status {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def idle_threads(count: int) -> Iterator[int]:
    """A child process holding `count` idle threads; yields its pid."""
    proc = subprocess.Popen(
        worker_cmd("threads", count), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("thread holder died before it was ready")
        yield proc.pid
    finally:
        kill_group(proc)


def raise_on_sigterm() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so that every cleanup runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# ---------------------------------------------------------- file systems --


def mount_of(path: Path) -> tuple[str, str]:
    """(fstype, source) of the mount holding `path`, from /proc/self/mountinfo."""
    real = str(path.resolve())
    best = ("", "", "")
    from allocwatch.kernel import mountinfo

    for m in mountinfo.read():
        mnt, fstype, source = m.point, m.fstype, m.source
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best[0]):
            best = (mnt, fstype, source)
    return best[1], best[2]


def o_direct_works(directory: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(prefix=".aw-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    try:
        os.close(os.open(name, os.O_RDWR | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        os.unlink(name)


def pick_disk_dir(requested: Path | None) -> tuple[Path, str]:
    """A writable directory on a block-device file system that takes O_DIRECT."""
    candidates = [requested] if requested else [Path("/var/tmp"), CHECKOUT, Path(tempfile.gettempdir())]
    tried = []
    for cand in candidates:
        fstype, source = mount_of(cand)
        ok = fstype in BLOCK_FS and source.startswith("/dev/") and o_direct_works(cand)
        tried.append(f"{cand} ({fstype} on {source})")
        if ok:
            return cand, f"{fstype} on {source}"
    raise SystemExit("no disk-backed directory with O_DIRECT found; tried " + ", ".join(tried))


# ---------------------------------------------------------------- BPF side --


def prog_id_of(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise RuntimeError(f"fd {fd} is not a BPF program")


@dataclass
class Prog:
    """One loaded BPF program that can be attached to sched_switch and detached."""

    label: str
    bpf: Any
    fn: bytes
    prog_id: int = 0
    fd: int = -1
    attached: bool = False

    def __post_init__(self) -> None:
        from bcc import BPF

        fd = self.bpf.load_func(self.fn, BPF.TRACEPOINT).fd
        self.prog_id = prog_id_of(fd)
        self.fd = fd

    def attach(self) -> None:
        self.bpf.attach_tracepoint(tp=TRACEPOINT, fn_name=self.fn)
        self.attached = True

    def detach(self) -> None:
        if not self.attached:
            return
        # bcc >= 0.29 takes fn_name; Debian 12's 0.26 detaches by tracepoint only
        # (each Prog has its own BPF object, so that is the same thing here).
        if "fn_name" in inspect.signature(self.bpf.detach_tracepoint).parameters:
            self.bpf.detach_tracepoint(tp=TRACEPOINT, fn_name=self.fn)
        else:
            self.bpf.detach_tracepoint(tp=TRACEPOINT)
        self.attached = False

    def run_stats(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt): bpftool prog show --json, else fdinfo."""
        if shutil.which("bpftool"):
            out = subprocess.run(
                ["bpftool", "prog", "show", "id", str(self.prog_id), "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            info = json.loads(out)
            return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))
        fields = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/self/fdinfo/{self.fd}").read_text().splitlines()
            if ":\t" in line
        )
        return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


def load_programs() -> dict[str, Prog]:
    from bcc import BPF

    from bench.emptyprog import EMPTY_SRC

    real = BPF(src_file=str(BPF_SRC).encode(), cflags=[f"-I{BPF_DIR}", "-DLONG_WAIT_NS=1000000000ULL"])
    empty = BPF(text=EMPTY_SRC)
    counter = BPF(text=COUNTER_SRC, cflags=[f"-DAW_D={REPORT_UNINTERRUPTIBLE}"])
    return {
        "real": Prog("real", real, REAL_FN),
        "empty": Prog("empty", empty, EMPTY_FN),
        "counter": Prog("counter", counter, COUNTER_FN),
    }


def read_counter(counter: Prog) -> tuple[int, int]:
    """(all sched_switch events, events whose prev_state is D) so far."""
    table = counter.bpf["counts"]
    return int(table[0].value), int(table[1].value)


@contextlib.contextmanager
def attached(*progs: Prog | None) -> Iterator[None]:
    done = []
    try:
        for p in progs:
            if p is not None:
                p.attach()
                done.append(p)
        yield
    finally:
        for p in reversed(done):
            p.detach()


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 inside; the previous value restored after."""
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1\n")
    try:
        yield
    finally:
        STATS_SYSCTL.write_text(previous + "\n")


# -------------------------------------------------------------- workloads --


@dataclass
class CountingRun:
    elapsed_s: float
    events: int
    d_sleeps: int
    run_time_ns: int
    run_cnt: int

    @property
    def ns_per_hit(self) -> float:
        return self.run_time_ns / self.run_cnt if self.run_cnt else float("nan")


@dataclass
class WorkloadResult:
    name: str
    detail: str
    times: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONDITIONS})
    total_times: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONDITIONS})
    task_switches: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in CONDITIONS})
    counting: dict[str, CountingRun] = field(default_factory=dict)

    def median(self, cond: str) -> float:
        return statistics.median(self.times[cond])

    def ratios(self, cond: str) -> list[float]:
        return [w / o for w, o in zip(self.times[cond], self.times["off"], strict=True)]

    def ns_per_switch(self, cond: str) -> float:
        events = self.counting[cond].events
        return (self.median(cond) - self.median("off")) * 1e9 / events if events else float("nan")

    def ns_per_switch_ci(self, cond: str, level: float = 0.90) -> tuple[float, float]:
        """Bootstrap interval of ns_per_switch: resample whole rounds (pairs), with replacement."""
        events = self.counting[cond].events
        rng = random.Random(1)
        pairs = list(zip(self.times[cond], self.times["off"], strict=True))
        deltas = sorted(
            (statistics.median(w for w, _ in sample) - statistics.median(o for _, o in sample)) * 1e9 / events
            for sample in (rng.choices(pairs, k=len(pairs)) for _ in range(BOOTSTRAP))
        )
        tail = (1 - level) / 2
        return deltas[int(tail * len(deltas))], deltas[int((1 - tail) * len(deltas)) - 1]


def rotated(round_no: int) -> tuple[str, ...]:
    k = round_no % len(CONDITIONS)
    return CONDITIONS[k:] + CONDITIONS[:k]


def counting_run(prog: Prog, counter: Prog, workload: Callable[[], dict[str, Any]]) -> CountingRun:
    """One run with bpf_stats on and the D-sleep counter attached (untimed for the medians)."""
    with bpf_stats_enabled():
        t0, n0 = prog.run_stats()
        e0, d0 = read_counter(counter)
        with attached(prog, counter):
            res = workload()
        t1, n1 = prog.run_stats()
        e1, d1 = read_counter(counter)
    return CountingRun(
        elapsed_s=res["elapsed_s"], events=e1 - e0, d_sleeps=d1 - d0, run_time_ns=t1 - t0, run_cnt=n1 - n0
    )


def measure_workload(
    result: WorkloadResult, workload: Callable[[], dict[str, Any]], progs: dict[str, Prog], rounds: int
) -> WorkloadResult:
    print(f"  {result.name}: warm-up", file=sys.stderr, flush=True)
    workload()
    for r in range(rounds):
        for cond in rotated(r):
            with attached(progs.get(cond)):
                res = workload()
            result.times[cond].append(res["robust_s"])
            result.total_times[cond].append(res["elapsed_s"])
            result.task_switches[cond].append(res["task_switches"])
        line = "  ".join(f"{c} {result.times[c][-1]:.3f}s" for c in CONDITIONS)
        print(f"  {result.name}: round {r + 1}/{rounds}: {line}", file=sys.stderr, flush=True)
    for cond in ("real", "empty"):
        result.counting[cond] = counting_run(progs[cond], progs["counter"], workload)
    return result


def calibrate_dio(cpu: int, path: Path, target_s: float) -> int:
    trial = 300
    run_worker("dio", trial, cpu, path)  # warm the file and the device
    per_op = run_worker("dio", trial, cpu, path)["elapsed_s"] / trial
    return max(200, round(target_s / per_op / 100) * 100)


# ------------------------------------------------------------- /proc sweep --


def read_raw(path: Path) -> str:
    """The leanest Python read: one open, one read, one close."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def sweep_allocwatch(procfs: Path = Path("/proc")) -> tuple[int, int]:
    """The same sweep with allocwatch's own /proc readers (allocwatch.kernel.procfs)."""
    from allocwatch.kernel import procfs as aw_procfs

    tasks = sum(len(os.listdir(procfs / p / "task")) for p in os.listdir(procfs) if p.isdigit()
                and os.path.isdir(procfs / p / "task"))
    dtasks = aw_procfs.tasks_in_state(procfs, "D")
    for pid, tid, _ in dtasks:
        aw_procfs.kernel_stack(procfs, pid, tid)
    return tasks, len(dtasks)


def sweep_proc(read: Callable[[Path], str], procfs: Path = Path("/proc")) -> tuple[int, int]:
    """One scan: (tasks seen, tasks in D); reads the stack of every D task."""
    tasks = dstate = 0
    for pid in os.listdir(procfs):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir(procfs / pid / "task")
        except OSError:
            continue
        for tid in tids:
            task = procfs / pid / "task" / tid
            try:
                stat = read(task / "stat")
            except OSError:
                continue
            tasks += 1
            # comm may hold spaces and parentheses: the state follows the last ')'.
            rest = stat.rsplit(")", 1)[-1].split()
            if rest and rest[0] == "D":
                dstate += 1
                with contextlib.suppress(OSError):
                    read(task / "stack")
    return tasks, dstate


@dataclass
class SweepResult:
    label: str
    reader: str
    wall_s: list[float]
    cpu_s: list[float]
    tasks: list[int]
    dstate: list[int]

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def median_tasks(self) -> int:
        return round(statistics.median(self.tasks))

    @property
    def us_per_task(self) -> float:
        return self.median_wall * 1e6 / self.median_tasks


SWEEPS: dict[str, Callable[[], tuple[int, int]]] = {
    "allocwatch.kernel.procfs": sweep_allocwatch,
    "os.read": lambda: sweep_proc(read_raw),
}
READERS = tuple(SWEEPS)


def measure_sweeps(label: str, reader: str, count: int) -> SweepResult:
    sweep = SWEEPS[reader]
    sweep()  # warm dentries
    res = SweepResult(label, reader, [], [], [], [])
    for _ in range(count):
        c0, t0 = time.thread_time(), time.perf_counter()
        tasks, dstate = sweep()
        res.wall_s.append(time.perf_counter() - t0)
        res.cpu_s.append(time.thread_time() - c0)
        res.tasks.append(tasks)
        res.dstate.append(dstate)
    return res


# ---------------------------------------------------------------- machine --


def ctxt_total() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    raise RuntimeError("no ctxt line in /proc/stat")


def machine_rates(counter: Prog, window_s: float) -> dict[str, float]:
    """Context switches a second (/proc/stat ctxt) and D sleeps a second (counter program)."""
    with attached(counter):
        c0, (_, d0), t0 = ctxt_total(), read_counter(counter), time.perf_counter()
        time.sleep(window_s)
        c1, (_, d1), t1 = ctxt_total(), read_counter(counter), time.perf_counter()
    return {"window_s": window_s, "ctxt_per_s": (c1 - c0) / (t1 - t0), "dsleeps_per_s": (d1 - d0) / (t1 - t0)}


def other_sched_switch_progs(ours: set[int]) -> list[int]:
    """Ids of BPF programs someone else has on sched_switch (noise for us)."""
    if not shutil.which("bpftool"):
        return []
    out = subprocess.run(["bpftool", "perf", "list", "--json"], capture_output=True, text=True, check=False).stdout
    try:
        entries = json.loads(out or "[]")
    except json.JSONDecodeError:
        return []
    return sorted(
        {e["prog_id"] for e in entries if e.get("tracepoint") == "sched_switch" and e.get("prog_id") not in ours}
    )


# ----------------------------------------------------------------- report --


def fmt_ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def workload_rows(w: WorkloadResult) -> list[list[str]]:
    off_switches = statistics.median(w.task_switches["off"])
    rows = [[w.name, "off", f"{w.median('off'):.3f} s", "-", f"{off_switches:,.0f} task sw", "-", "-"]]
    for cond in ("real", "empty"):
        c = w.counting[cond]
        rows.append(
            [
                w.name,
                f"{cond} prog",
                f"{w.median(cond):.3f} s",
                fmt_ratio(w.ratios(cond)),
                f"{c.events:,} sw, {c.d_sleeps:,} D",
                "{:+.0f} ns/switch (90% CI {:+.0f}, {:+.0f})".format(w.ns_per_switch(cond), *w.ns_per_switch_ci(cond)),
                f"{c.ns_per_hit:.0f} ns/hit",
            ]
        )
    return rows


def sweep_row(s: SweepResult) -> list[str]:
    cpu_ms = statistics.median(s.cpu_s) * 1e3
    return [
        f"/proc sweep ({s.reader})",
        s.label,
        f"{s.median_wall * 1e3:.2f} ms",
        "-",
        f"{s.median_tasks:,} tasks, {max(s.dstate)} D",
        f"{s.us_per_task:.2f} us/task",
        f"cpu {cpu_ms:.2f} ms",
    ]


def render_table(rows: list[list[str]]) -> str:
    header = [
        "measurement",
        "condition",
        "median",
        "ratio vs off: median [min, max]",
        "events per run",
        "cost (wall)",
        "cost (bpf_stats)",
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def extra_ns_per_dsleep(ping: WorkloadResult, dio: WorkloadResult) -> float:
    """bpf_stats: B's run time beyond what its hits cost at A's (lookup-miss) price, per D sleep.

    Both runs had the stats on, so their per-hit inflation cancels.
    """
    a, b = ping.counting["real"], dio.counting["real"]
    return (b.run_time_ns - b.run_cnt * a.ns_per_hit) / b.d_sleeps if b.d_sleeps else float("nan")


def switch_price(ping: WorkloadResult) -> tuple[float, str]:
    """ns per context switch for the conclusion: the larger (more conservative) of
    A's wall-clock estimate and the real program's bpf_stats time per hit in A."""
    wall, stats = ping.ns_per_switch("real"), ping.counting["real"].ns_per_hit
    return (wall, "A wall clock") if wall >= stats else (stats, "A bpf_stats, above A's wall clock")


def conclusion(
    ping: WorkloadResult, dio: WorkloadResult, sweeps: list[SweepResult], rates: dict[str, float]
) -> tuple[str, dict[str, float]]:
    per_switch, source = switch_price(ping)
    per_d = max(extra_ns_per_dsleep(ping, dio), 0.0)
    bpf_ns_per_s = rates["ctxt_per_s"] * per_switch + rates["dsleeps_per_s"] * per_d
    numbers = rates | {
        "ns_per_switch_used": per_switch,
        "extra_ns_per_dsleep_stats": per_d,
        "tracking_cpu_share": bpf_ns_per_s / 1e9,
    }
    sweep_txt = []
    for s in (s for s in sweeps if s.reader == "os.read"):
        # One sweep a second: its wall time (= its CPU time) is the CPU share.
        even = s.median_wall * 1e9 / per_switch
        numbers[f"sweep_cpu_share_{s.median_tasks}_tasks"] = s.median_wall
        numbers[f"break_even_ctxt_per_s_{s.median_tasks}_tasks"] = even
        sweep_txt.append(
            f"{s.median_wall * 1e3:.2f} ms/s ({s.median_wall * 100:.2g} % of one CPU) with {s.median_tasks:,} tasks, "
            f"{s.median_wall * 1e9 / max(bpf_ns_per_s, 1e-9):,.0f}x the tracking, break-even at {even:,.0f} switches/s"
        )
    line = (
        f"conclusion: at this machine's {rates['ctxt_per_s']:,.0f} switches/s and {rates['dsleeps_per_s']:,.1f} "
        f"D sleeps/s (over {rates['window_s']:g} s), tracking costs {per_switch:.0f} ns/switch ({source}) "
        f"+ {per_d:.0f} ns/D sleep (B bpf_stats) = {bpf_ns_per_s / 1e3:.1f} us/s "
        f"({bpf_ns_per_s / 1e7:.2g} % of one CPU); a /proc sweep (os.read) every 1 s costs " + "; ".join(sweep_txt)
    )
    return line, numbers


# ------------------------------------------------------------------- main --


def measure_all(settings: Settings, tmpdir: Path | None) -> dict[str, Any]:
    cpu = max(os.sched_getaffinity(0))
    disk_dir, disk_desc = pick_disk_dir(tmpdir)
    print("compiling and loading BPF programs ...", file=sys.stderr, flush=True)
    progs = load_programs()
    print(f"context switch rate over {settings.ctxt_window_s:g} s ...", file=sys.stderr, flush=True)
    rates = machine_rates(progs["counter"], settings.ctxt_window_s)
    ours = {p.prog_id for p in progs.values()}
    foreign_before = other_sched_switch_progs(ours)

    fd, name = tempfile.mkstemp(prefix="aw-dstate-cost-", dir=disk_dir)
    os.close(fd)
    data_file = Path(name)
    try:
        rt = settings.pingpong_round_trips
        ping = WorkloadResult(f"A pipe ping-pong x{rt:,}", "S-state sleeps, task-to-task switches on one CPU")
        measure_workload(ping, lambda: run_worker("pingpong", rt, cpu), progs, settings.rounds)
        ops = calibrate_dio(cpu, data_file, settings.dio_target_s)
        dio = WorkloadResult(f"B O_DIRECT+fdatasync x{ops:,}", f"D-state sleeps, file on {disk_desc}")
        measure_workload(dio, lambda: run_worker("dio", ops, cpu, data_file), progs, settings.rounds)
    finally:
        data_file.unlink(missing_ok=True)
    foreign_after = other_sched_switch_progs(ours)

    print("sweeping /proc ...", file=sys.stderr, flush=True)
    sweeps = [measure_sweeps("as is", reader, settings.sweeps) for reader in READERS]
    with idle_threads(settings.extra_threads):
        extra = f"+{settings.extra_threads:,} threads"
        sweeps += [measure_sweeps(extra, reader, settings.sweeps) for reader in READERS]
    return {
        "rates": rates,
        "cpu": cpu,
        "workloads": [ping, dio],
        "sweeps": sweeps,
        "foreign_progs": sorted(set(foreign_before) | set(foreign_after)),
    }


def to_json(
    m: dict[str, Any], settings: Settings, table: str, concl: str, numbers: dict[str, float], elapsed_s: float
) -> dict[str, Any]:
    def workload(w: WorkloadResult) -> dict[str, Any]:
        return {
            "name": w.name,
            "detail": w.detail,
            "times_s": w.times,
            "total_times_s": w.total_times,
            "task_switches": w.task_switches,
            "median_s": {c: w.median(c) for c in CONDITIONS},
            "ratios": {c: w.ratios(c) for c in ("real", "empty")},
            "ns_per_switch": {c: w.ns_per_switch(c) for c in ("real", "empty")},
            "ns_per_switch_ci90": {c: w.ns_per_switch_ci(c) for c in ("real", "empty")},
            "counting_runs": {c: vars(r) | {"ns_per_hit": r.ns_per_hit} for c, r in w.counting.items()},
        }

    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "workload_cpu": m["cpu"],
        "settings": vars(settings),
        "elapsed_s": elapsed_s,
        "machine_rates": m["rates"],
        "other_sched_switch_prog_ids": m["foreign_progs"],
        "workloads": [workload(w) for w in m["workloads"]],
        "sweeps": [vars(s) | {"median_wall_s": s.median_wall, "us_per_task": s.us_per_task} for s in m["sweeps"]],
        "conclusion": concl,
        "conclusion_numbers": numbers,
        "table": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds and small counts")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--tmpdir", type=Path, help="disk-backed directory for workload B's file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if os.geteuid() != 0:
        raise SystemExit("run as root (BPF, bpf_stats sysctl, /proc/<pid>/stack)")
    raise_on_sigterm()
    settings = Settings.for_mode(args.quick)
    start = time.perf_counter()
    m = measure_all(settings, args.tmpdir)
    elapsed = time.perf_counter() - start

    rows = [row for w in m["workloads"] for row in workload_rows(w)] + [sweep_row(s) for s in m["sweeps"]]
    table = render_table(rows)
    ping, dio = m["workloads"]
    concl, numbers = conclusion(ping, dio, m["sweeps"], m["rates"])
    print(
        f"allocwatch D-state tracking cost: kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"{settings.rounds} rounds, workloads pinned to CPU {m['cpu']}, {elapsed:.0f} s"
    )
    print(table)
    print(concl)
    if m["foreign_progs"]:
        print(f"note: other BPF programs were on sched_switch during the run: ids {m['foreign_progs']}")
    if args.json:
        args.json.write_text(json.dumps(to_json(m, settings, table, concl, numbers, elapsed), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
