# SPDX-License-Identifier: Apache-2.0
"""The programs under test, started and stopped by the harness: allocwatch's
daemon, bcc's drsnoop, a bpftrace one-liner, and empty BPF programs on the
daemon's own hooks. Each is ended by the pid the harness started, and every
file it made is removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.emptyprog import EMPTY_SRC
from lab.ports import free_port

TRACEFS = Path("/sys/kernel/tracing")
# The checkout whose daemon runs (None: this one); bench/run.py --daemon-rev sets it.
DAEMON_TREE: Path | None = None


def bpftool_json(*args: str) -> Any:
    out = subprocess.run(["bpftool", *args, "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "null")


def perf_links(pid: int) -> list[dict[str, Any]]:
    """The BPF programs `pid` has attached through perf events (bpftool perf list)."""
    return [e for e in bpftool_json("perf", "list") or [] if e.get("pid") == pid]


def prog_info(prog_id: int) -> dict[str, Any]:
    info: dict[str, Any] = bpftool_json("prog", "show", "id", str(prog_id))
    return info


def run_stats(prog_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(run_time_ns, run_cnt) per program id (bpftool prog show)."""
    by_id = {p["id"]: p for p in bpftool_json("prog", "show") or []}
    return {i: (int(by_id[i].get("run_time_ns", 0)), int(by_id[i].get("run_cnt", 0))) for i in prog_ids if i in by_id}


def tracepoint_category(name: str) -> str:
    """'mm_vmscan_memcg_reclaim_begin' -> 'vmscan:mm_vmscan_memcg_reclaim_begin' (from tracefs)."""
    for cat in sorted(os.listdir(TRACEFS / "events")):
        if (TRACEFS / "events" / cat / name).is_dir():
            return f"{cat}:{name}"
    return name


def wait_attached(pid: int, proc: subprocess.Popen[Any], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before attaching")
        links = perf_links(pid)
        if links:
            time.sleep(0.3)  # the rest of its probes
            return perf_links(pid)
        time.sleep(0.1)
    raise RuntimeError(f"{proc.args!r} attached nothing within {timeout_s:.0f} s")


def end(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
    """Stop a process this harness started (by its pid), SIGKILL after `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Allocwatch:
    """`allocwatch run --format json` with a config of `settings`; stdout to a file,
    each line kept with the wall time it arrived; stderr read for the ready line."""

    def __init__(self, settings: dict[str, Any], metrics: bool = False, tree: Path | None = None,
                 poll_s: float = 0.02) -> None:
        """`tree`: run the daemon of another checkout (a before/after comparison);
        `poll_s`: how often the output file is looked at (the arrival times' resolution)."""
        self.poll_s = poll_s
        tree = tree if tree is not None else DAEMON_TREE
        fd, cfg = tempfile.mkstemp(prefix="aw-bench-", suffix=".yaml")
        os.write(fd, "".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()).encode())
        os.close(fd)
        self.cfg = Path(cfg)
        fd, out = tempfile.mkstemp(prefix="aw-bench-", suffix=".jsonl")
        self.out_path = Path(out)
        self.addr = f"127.0.0.1:{free_port()}" if metrics else ""
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocwatch", "run", "--format", "json", "--config", cfg,
             "--metrics-addr", self.addr, "--socket", ""],
            stdout=fd, stderr=subprocess.PIPE, text=True, cwd=tree,
            env=None if tree is None else {**os.environ, "PYTHONPATH": str(tree)},
        )
        os.close(fd)
        self.stderr: list[str] = []
        self.lines: list[tuple[float, str]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.ready_s = float("nan")
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True),
                         threading.Thread(target=self._tail, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "watching" in line and not self._ready.is_set():
                self.ready_s = time.monotonic() - self.t0
                self._ready.set()
            self.stderr.append(line)

    def _tail(self) -> None:
        with self.out_path.open() as f:
            partial = ""
            while True:
                chunk = f.read()
                now = time.time()
                if chunk:
                    partial += chunk
                    *whole, partial = partial.split("\n")
                    self.lines.extend((now, ln) for ln in whole if ln)
                elif self._stop.is_set():
                    return
                else:
                    time.sleep(self.poll_s)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            raise RuntimeError("allocwatch did not start: " + "".join(self.stderr))
        return self.ready_s

    def records(self) -> list[tuple[float, dict[str, Any]]]:
        """(arrival wall time, record) for every line so far."""
        return [(t, json.loads(ln)) for t, ln in list(self.lines)]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=10) as r:
            text: str = r.read().decode()
            return text

    def stop(self) -> int:
        code = end(self.proc)
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        self._stop.set()
        self.cfg.unlink(missing_ok=True)
        self.out_path.unlink(missing_ok=True)


@contextlib.contextmanager
def allocwatch(settings: dict[str, Any] | None = None, metrics: bool = False, poll_s: float = 0.02
               ) -> Iterator[Allocwatch]:
    d = Allocwatch(settings or {}, metrics, poll_s=poll_s)
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def histogram(text: str, name: str) -> dict[str, float]:
    """Cumulative buckets of a label-less histogram, by `le`."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)}


# ------------------------------------------------------------ other tools --

BPFTRACE_SCRIPT = (
    "tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin { @start[tid] = nsecs; } "
    "tracepoint:vmscan:mm_vmscan_memcg_reclaim_end /@start[tid]/ "
    "{ @us = hist((nsecs - @start[tid]) / 1000); @n = count(); delete(@start[tid]); }"
)
DRSNOOP = "/usr/sbin/drsnoop-bpfcc"


def drsnoop_blocker() -> str:
    """Why Debian's drsnoop refuses to start here, in its own words ('' if it would)."""
    syms = Path("/proc/kallsyms").read_text()
    if re.search(r" (vm_stat|vm_zone_stat)$", syms, re.M):
        return ""
    return "no vm_stat or vm_zone_stat in /proc/kallsyms (CONFIG_KALLSYMS_ALL off)"


class External:
    """drsnoop or bpftrace, output to a file; `saw` after stop says what it counted."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        fd, out = tempfile.mkstemp(prefix=f"aw-bench-{kind}-", suffix=".out")
        self.out = Path(out)
        self.kallsyms: Path | None = None
        if kind == "bpftrace":
            argv = ["bpftrace", "-e", BPFTRACE_SCRIPT]
        else:
            argv = ["/usr/bin/python3", "-u", DRSNOOP]
            if drsnoop_blocker():
                argv = self._drsnoop_shim(argv)
        self.proc = subprocess.Popen(argv, stdout=fd, stderr=subprocess.STDOUT)
        os.close(fd)
        try:
            self.links = wait_attached(self.proc.pid, self.proc, 60)
        except BaseException:
            self.close()
            raise
        self.prog_ids = sorted({e["prog_id"] for e in self.links})

    def _drsnoop_shim(self, argv: list[str]) -> list[str]:
        """drsnoop looks up vm_zone_stat's address only to copy the zone counters
        beside each event (printed with -v). Give it this kernel's kallsyms plus a
        zero address for that symbol, in a mount namespace of its own: the copy
        then fails (bpf_probe_read_kernel refuses a user address) and leaves
        zeros; everything it times and counts is unchanged."""
        fd, name = tempfile.mkstemp(prefix="aw-bench-kallsyms-")
        os.write(fd, Path("/proc/kallsyms").read_bytes() + b"0000000000000000 D vm_zone_stat\n")
        os.close(fd)
        self.kallsyms = Path(name)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "{name}" /proc/kallsyms && exec "$@"', "sh", *argv]

    def stop(self) -> None:
        end(self.proc, signal.SIGINT)

    def saw(self) -> int:
        text = self.out.read_text(errors="replace")
        if self.kind == "bpftrace":
            m = re.search(r"^@n: (\d+)", text, re.M)
            return int(m.group(1)) if m else 0
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return max(0, len([ln for ln in lines if re.match(r"^\S+\s+\d+\s+[\d.]+\s+\d+", ln)]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        self.out.unlink(missing_ok=True)
        if self.kallsyms is not None:
            self.kallsyms.unlink(missing_ok=True)


RAW_PREFIX = "raw:"  # a hook that is a raw tracepoint: "raw:sched_switch"


class EmptyOnHooks:
    """An empty program on each of `tracepoints` ("category:event", or RAW_PREFIX and
    the event for a raw tracepoint), each in a BPF object of its own."""

    def __init__(self, tracepoints: list[str]) -> None:
        from allocwatch.kernel import bpfsource, bpfstats

        bcc = bpfsource.import_bcc()
        self._stats = bpfstats.prog_stats
        self.objs: dict[str, Any] = {}
        try:
            for tp in tracepoints:
                obj = bcc.BPF(text=EMPTY_SRC.encode())
                self.objs[tp] = obj
                if tp.startswith(RAW_PREFIX):
                    obj.attach_raw_tracepoint(tp=tp.removeprefix(RAW_PREFIX).encode(), fn_name=b"empty")
                else:
                    obj.attach_tracepoint(tp=tp.encode(), fn_name=b"empty")
        except BaseException:
            self.close()
            raise

    def stats(self) -> dict[str, tuple[int, int]]:
        return {tp: self._stats(obj.funcs[b"empty"].fd) for tp, obj in self.objs.items()}

    def close(self) -> None:
        for obj in self.objs.values():
            obj.cleanup()
        self.objs = {}


class PySpy:
    """py-spy (PyPI) sampling `pid` for `seconds`, not pausing it; `top()` waits and
    gives the functions with the most samples, by self and by inclusive time."""

    def __init__(self, pid: int, seconds: float) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        fd, out = tempfile.mkstemp(prefix="aw-bench-pyspy-", suffix=".txt")
        os.close(fd)
        self.out = Path(out)
        self.proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--duration", str(int(seconds)),
                                      "--rate", "50", "--format", "raw", "--output", out, "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def top(self, n: int = 12) -> dict[str, Any]:
        try:
            self.proc.wait(120)
            return collapsed_top(self.out.read_text(), n)
        finally:
            end(self.proc)
            self.out.unlink(missing_ok=True)


def collapsed_top(text: str, n: int) -> dict[str, Any]:
    """Self and inclusive sample counts per function of collapsed stacks ("a;b;c 12" lines)."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # one function, all its lines
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):  # a recursive function counts once
            incl[f] = incl.get(f, 0) + k
    def best(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, c / total) for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:n]] if total else []
    # the frames every sample passes through (the entry point down to the loop) say nothing
    below_root = {f: c for f, c in incl.items() if c < 0.8 * total}
    return {"samples": total, "self": best(own), "inclusive": best(below_root)}
