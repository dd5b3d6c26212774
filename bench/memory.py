# SPDX-License-Identifier: Apache-2.0
"""Where the daemon's memory goes with 10,000 tasks stalled, attributed.

The daemon's own source and scan loop, in this process, built as `allocwatch run`
builds them at the default settings (metrics and outputs aside: a sink renders
each block as the stdout output would, and drops it; no mlockall, so the heap
trims take their unlocked path), scanning every second.
Measured idle (after 3 scans) and with 10,000 threads of one process in the
memcg OOM wait (after the scans of 15 s: the first block, listing 1,000, has
been made), each as a difference from the process before the source loaded:

- RssAnon, and its parts in /proc/self/smaps: the C heap, other anonymous mappings
  (Python's object arenas, the map readers' buffers) and the libraries' written pages;
- the bytes of Python's small-object allocator in use (sys._debugmallocstats);
- glibc's count of its heap in use and free (mallinfo2);
- the size of what each of the daemon's structures holds: every object reachable
  from it, counted once, in the order of `structures()` (a shared object counts for
  the first that reaches it);
- then what malloc_trim(0) gives back of the heap.

    .venv/bin/python bench/memory.py      # as root; about 40 s (bench/run.py runs it: `--only memory`)
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocwatch import config
from allocwatch.app.daemon import Daemon
from allocwatch.app.selfcare import HeapTrimmer
from allocwatch.app.session import Session
from allocwatch.outputs import report
from bench import procinfo, workloads

N_STALLED = 10_000
HOLD_S = 15.0  # past the default threshold of 10 s: the first block is made
_SKIP = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class RenderingSink:
    """What the stdout output does with a snapshot's records, without the writing."""

    def __init__(self) -> None:
        self.chars = 0

    def publish(self, snap: Any) -> None:
        if snap.records:
            self.chars += len(report.render_dicts(snap.records, "text"))


def structures(d: Daemon) -> list[tuple[str, Any]]:
    """What the daemon keeps, by owner, in the order sizes are counted."""
    readers = getattr(d.source, "map_readers", {})
    return [
        *((f"map reader: {name}", r) for name, r in readers.items()),
        ("D-state namer (stacks, named sleeps)", d.namer),
        ("tracker (its last answer)", d.tracker),
        ("findings (per-task window samples)", d.findings),
        ("wait facts (cgroup, uid, cmdline)", d.facts),
        ("the last scan (waits, shares, accounts)", d.last_scan),
        ("the latest snapshot", d.latest),
        ("the rest of the daemon", d),
    ]


def deep_sizes(d: Daemon) -> dict[str, int]:
    seen: set[int] = set()
    out = {}
    for label, root in structures(d):
        total, stack = 0, [root]
        while stack:
            x = stack.pop()
            if id(x) in seen or isinstance(x, _SKIP):
                continue
            seen.add(id(x))
            total += sys.getsizeof(x)
            stack.extend(gc.get_referents(x))
        out[label] = total
    return out


def pymalloc_in_use() -> int:
    """Bytes in allocated blocks of Python's small-object allocator."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()
    m = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    return int(m.group(1).replace(",", "")) if m else 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def c_heap() -> dict[str, int]:
    """glibc's own count (mallinfo2, glibc 2.33): bytes in use and free in its
    arenas, and in chunks it mapped on their own (mmap); {} without it."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {"in use": m.uordblks, "free": m.fordblks, "mapped chunks": m.hblkhd}


def anon_parts() -> dict[str, int]:
    """Anonymous bytes of this process by kind of mapping (smaps)."""
    parts = {"heap": 0, "anonymous mappings": 0, "libraries' written pages": 0}
    kind = "anonymous mappings"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            kind = ("heap" if name == "[heap]" else "anonymous mappings" if not name or name.startswith("[")
                    else "libraries' written pages")
        elif line.startswith("Anonymous:"):
            parts[kind] += int(line.split()[1]) * 1024
    return parts


def reading(d: Daemon | None) -> dict[str, Any]:
    gc.collect()
    return {"anon": anon_parts(), "pymalloc": pymalloc_in_use(), "c_heap": c_heap(),
            "sizes": deep_sizes(d) if d else {}}


def measure(say: Any = lambda _t: None) -> dict[str, Any]:
    cfg = config.load(None, {})
    before = reading(None)
    session = Session.load(cfg)
    try:
        sink = RenderingSink()
        d = session.daemon([sink])
        trimmer = HeapTrimmer(locked=False)  # between scans, as `allocwatch run` has it
        for _ in range(3):
            d.scan_once()
            trimmer.after_scan()
            time.sleep(cfg.scan_interval_s)
        idle = reading(d)
        say(f"memory: {N_STALLED:,} stalled, scanning for {HOLD_S:.0f} s")
        with workloads.threads_binary() as exe, workloads.stalled_threads(exe, N_STALLED, "aw-bench-mem") as s:
            t0 = time.monotonic()
            while time.monotonic() - t0 < HOLD_S:
                d.scan_once()
                trimmer.after_scan()
                time.sleep(cfg.scan_interval_s)
            stalled = reading(d)
            HeapTrimmer(locked=False).trim()
            trimmed = anon_parts()
            in_d = len(procinfo.threads_in_d(s.pid))
        return {"before": before, "idle": idle, "stalled": stalled, "n": N_STALLED, "in_d": in_d,
                "trimmed": trimmed, "trims": trimmer.trims, "rendered_chars": sink.chars, "reported": dict(d.reported)}
    finally:
        session.close()


def render(m: dict[str, Any]) -> str:
    """The attribution as a markdown table (MiB over the process before load)."""
    mib = 1 << 20
    lines = [f"{m['n']:,} stalled ({m['in_d']:,} in D), default settings; MiB, idle and stalled, "
             "over the process before the source was loaded", "",
             "| part | idle | stalled | stalled - idle |", "|---|---|---|---|"]

    def row(label: str, a: float, b: float) -> None:
        lines.append(f"| {label} | {a / mib:.1f} | {b / mib:.1f} | {(b - a) / mib:+.1f} |")

    b0, i, s = m["before"], m["idle"], m["stalled"]
    for k in b0["anon"]:
        row(f"RssAnon: {k}", i["anon"][k] - b0["anon"][k], s["anon"][k] - b0["anon"][k])
    row("RssAnon, in all", sum(i["anon"].values()) - sum(b0["anon"].values()),
        sum(s["anon"].values()) - sum(b0["anon"].values()))
    row("Python small objects in use (pymalloc)", i["pymalloc"] - b0["pymalloc"], s["pymalloc"] - b0["pymalloc"])
    for k in s.get("c_heap", {}):
        row(f"C heap (malloc): {k}", i["c_heap"][k] - b0["c_heap"][k], s["c_heap"][k] - b0["c_heap"][k])
    for k in s["sizes"]:
        row(f"held by {k}", i["sizes"].get(k, 0), s["sizes"][k])
    row("held by the daemon, in all", sum(i["sizes"].values()), sum(s["sizes"].values()))
    t = m.get("trimmed")
    if t:
        lines.append("")
        freed = (s["anon"]["heap"] - t["heap"]) / mib
        lines.append(f"The trims between scans (app/selfcare.py) ran {m.get('trims', '?')} times; one more "
                     f"malloc_trim(0) at the end gave back {freed:.1f} MiB of the heap.")
    return "\n".join(lines)


if __name__ == "__main__":
    # --json: the raw numbers, for bench/run.py, which runs this in a fresh process
    # (its own heap, after its other figures, is no baseline)
    result = measure(lambda t: print(f"[{time.strftime('%H:%M:%S')}] {t}", file=sys.stderr, flush=True))
    print(json.dumps(result) if sys.argv[1:] == ["--json"] else render(result))
