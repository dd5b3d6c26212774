#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What allocwatch costs, how fast it sees, and how far it scales: one table.

    .venv/bin/python bench/run.py [--quick] [--json FILE] [--only FIGURES] [--daemon-rev REV] [--profile]

Runs every figure of BENCHMARKS.md on the real kernel and prints one markdown
table, each figure marked against its budget. As root. --quick takes about 4 minutes,
the full run about 10. Progress goes to stderr. Nothing else may load the
machine meanwhile: run it under the same lock the kernel tests take.

FIGURES (comma-separated, default all): per-event, primitives, slowdown, idle, latency,
scale, default-stalled, memory, dstate, switch. --daemon-rev REV runs the daemon of that commit (`git archive`
into a temporary directory): HEAD to leave out uncommitted changes, an older
commit for a before/after (its allocwatch/ and bpf/); `memory` always measures this tree's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import figures, procinfo, report, tools  # noqa: E402
from bench.stats import render_markdown  # noqa: E402

ALL = ("per-event", "primitives", "slowdown", "idle", "latency", "scale", "default-stalled", "memory", "dstate",
       "switch")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "allocwatch", "bpf"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + (" (with local changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def measure(args: argparse.Namespace, only: set[str]) -> dict[str, Any]:
    mode = figures.Mode.of(args.quick)
    data: dict[str, Any] = {"mode": mode.name}
    if "idle" in only:
        data["idle"] = figures.idle(mode, say)
    if "per-event" in only:
        data["per_event"] = figures.per_event(mode, say)
    if "primitives" in only:
        say("primitives: the pieces of a begin/end handler on the memcg reclaim hooks (livelock recipe)")
        from bench import primitives

        data["primitives"] = primitives.measure()
    if "slowdown" in only:
        data["slowdown"] = figures.slowdown(mode, say)
    if "latency" in only:
        data["latency"] = figures.latency(mode, say)
    if "scale" in only:
        data["scale"] = figures.scale(mode, say)
    if "default-stalled" in only:
        data["default_stalled"] = figures.stalled_default(mode, say)
    if "memory" in only:  # this tree's daemon (not --daemon-rev's), in a fresh process
        out = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "--json"], stdout=subprocess.PIPE,
                             text=True, check=True).stdout
        data["memory"] = json.loads(out)
    if "dstate" in only:
        data["dstate"] = figures.dstate(args.quick, say)
    if "switch" in only:
        data["switch"] = figures.switch(mode, say)
    return data


def rows_of(data: dict[str, Any], label: str) -> list[Any]:
    rows: list[Any] = []
    pe, slow, idle, sc = (data.get(k) for k in ("per_event", "slowdown", "idle", "scale"))
    if pe:
        rows += report.per_event_rows(pe)
    if pe and slow:
        rows += report.true_cost_rows(pe, slow)
    if slow:
        rows += report.slowdown_rows(slow)
    if idle:
        rows += report.cpu_mem_rows(idle, slow or {}, sc or {}, data.get("default_stalled"))
        rows += report.ready_rows(idle, slow or {})
    if data.get("latency"):
        rows += report.latency_rows(data["latency"])
    if sc:
        rows += report.scale_rows(sc, label)
    if idle:
        rows += report.kernel_memory_rows(idle)
    if data.get("primitives"):
        rows += report.primitive_rows(data["primitives"])
    if data.get("dstate"):
        rows += report.dstate_rows(data["dstate"])
    if data.get("switch"):
        rows += report.switch_rows(data["switch"])
    return rows


def print_memory(data: dict[str, Any]) -> None:
    if data.get("memory"):
        from bench import memory

        print("\nWhere the memory goes (bench/memory.py): " + memory.render(data["memory"]))


def print_profiles(data: dict[str, Any]) -> None:
    for n, r in (data.get("scale") or {}).get("runs", {}).items():
        if r.get("profile"):
            p = r["profile"]
            print(f"\npy-spy, {int(n):,} stalled, {p['samples']} samples; self: "
                  + ", ".join(f"{f} {share * 100:.0f} %" for f, share in p["self"][:8])
                  + "; inclusive: " + ", ".join(f"{f} {share * 100:.0f} %" for f, share in p["inclusive"][:10]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller counts (about 4 minutes)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every raw number as JSON")
    ap.add_argument("--only", default=",".join(ALL), help="comma-separated figures: " + ", ".join(ALL))
    ap.add_argument("--daemon-rev", metavar="REV", help="run the daemon of this commit (git archive)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="print the table of an earlier --json file")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy (pip install py-spy) samples the daemon in the scale windows (JSON: profile)")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(ALL):
        ap.error(f"unknown figures: {', '.join(sorted(only - set(ALL)))}")
    if args.render:
        saved = json.loads(args.render.read_text())
        rev = saved["heading"].split("daemon of ", 1)[1].split(" ", 1)[0] if "daemon of " in saved["heading"] else ""
        print(saved["heading"] + "\n\n" + render_markdown(rows_of(saved["data"], f" ({rev})" if rev else "")))
        print_memory(saved["data"])
        print_profiles(saved["data"])
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: it loads BPF programs, makes memory cgroups and reads /proc/PID/stack")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # so that every cleanup runs
        signal.signal(sig, lambda signum, _f: sys.exit(128 + signum))
    figures.PROFILE = args.profile
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aw-bench-rev-") as tmp:
        rev = ""
        if args.daemon_rev:
            rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.daemon_rev],
                                 capture_output=True, text=True, check=True).stdout.strip()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "allocwatch", "bpf"], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            tools.DAEMON_TREE = Path(tmp)
        data = measure(args, only)
    elapsed = time.monotonic() - t0
    m = procinfo.machine()
    who = f"allocwatch daemon of {rev} (harness {commit()})" if rev else f"allocwatch {commit()}"
    head = (f"{who}, {data['mode']} run of {elapsed / 60:.1f} min, "
            f"{started:%Y-%m-%d %H:%M} UTC; {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, {m['virt']}; "
            f"kernel {m['kernel']}; Python {platform.python_version()}")
    table = render_markdown(rows_of(data, f" ({rev})" if rev else ""))
    print(head + "\n\n" + table)
    print_memory(data)
    print_profiles(data)
    if args.json:
        args.json.write_text(json.dumps({"heading": head, "machine": m, "data": data, "table": table},
                                        indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
