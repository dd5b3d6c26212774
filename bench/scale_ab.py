# SPDX-License-Identifier: Apache-2.0
"""The daemons of two (or more) commits side by side on N stalled tasks, every task listed.

    .venv/bin/python bench/scale_ab.py --tasks 10000 --seconds 20 --rounds 3 REV_A REV_B   (as root)
    .venv/bin/python bench/scale_ab.py --default ...   the default settings instead

Issue 30's condition (threshold 3 s, a scan every second, `max_tasks_per_block`
above N, so every task is reported again at every level): N threads of one
process held in the memcg OOM wait (bench/workloads.py), the daemon of each
commit (`git archive` of its allocwatch/ and bpf/) started, the stall made,
and the daemon's CPU time over a steady window of --seconds taken, with its
RssAnon at the window's end and sampled every 0.2 s over the window (peak and
mean), how late its first reports were and its mean scan. The commits take
turns, the order reversed every round, so what drifts on the machine falls on
both; then each one's median and range. A window of 20 s holds six or seven
blocks of N tasks: a 5 s window (bench/run.py --quick) holds one or two, and
reads what it caught.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import figures, tools, workloads

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD_S = 3


def _tree(rev: str, into: Path) -> Path:
    """The daemon of `rev`: its allocwatch/ and bpf/ from git."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "allocwatch", "bpf"], capture_output=True,
                             check=True).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(revs: list[str], tasks: int, seconds: float, rounds: int,
            settings: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """`settings`: the daemon's (None: issue 30's condition; {}: the defaults)."""
    mode = figures.Mode("scale-ab", 1, 0, 0, 0, 0, 0, 0, (tasks,), THRESHOLD_S, seconds)
    out: dict[str, list[dict[str, Any]]] = {rev: [] for rev in revs}
    with tempfile.TemporaryDirectory(prefix="aw-bench-ab-") as tmp, workloads.threads_binary() as exe:
        trees = {rev: _tree(rev, Path(tmp) / str(i)) for i, rev in enumerate(revs)}
        for r in range(rounds):
            for rev in revs if r % 2 == 0 else reversed(revs):
                tools.DAEMON_TREE = trees[rev]
                x = figures.scale_one(exe, tasks, mode, settings)
                row = {"cpu_pct": 100 * x["cpu_s"] / x["wall_s"], "rss_anon_mib": x["rss_kb"]["RssAnon"] / 1024,
                       "rss_anon_peak_mib": x["rss_anon_window"]["peak_kb"] / 1024,
                       "rss_anon_mean_mib": x["rss_anon_window"]["mean_kb"] / 1024,
                       "late_max_s": x["late_max_s"], "reported": x["reported"], "stalled": x["stalled"],
                       "scan_mean_ms": x["scan_mean_s"] * 1e3}
                out[rev].append(row)
                print(f"round {r + 1} {rev}: CPU {row['cpu_pct']:.1f} %, RssAnon {row['rss_anon_mib']:.1f} MiB "
                      f"(over the window: peak {row['rss_anon_peak_mib']:.1f}, mean {row['rss_anon_mean_mib']:.1f}), "
                      f"{row['reported']:,} of {row['stalled']:,} reported, the last {row['late_max_s']:.2f} s past "
                      f"the threshold, {row['scan_mean_ms']:.0f} ms a scan", flush=True)
    return out


def _spread(values: list[float], unit: str, digits: int = 1) -> str:
    m, lo, hi = statistics.median(values), min(values), max(values)
    return f"{m:.{digits}f}{unit} ({lo:.{digits}f} to {hi:.{digits}f}, n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("revs", nargs="+", metavar="REV", help="commits to compare (git revisions)")
    ap.add_argument("--tasks", type=int, default=10000, help="stalled threads (default 10000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="the steady window (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="turns each commit takes (default 3)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every run's numbers as JSON")
    ap.add_argument("--default", action="store_true",
                    help="the default settings (threshold 10 s, blocks list 1,000 tasks), not issue 30's condition")
    args = ap.parse_args(argv)
    revs = [subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", r], capture_output=True, text=True,
                           check=True).stdout.strip() for r in args.revs]
    got = measure(revs, args.tasks, args.seconds, args.rounds, {} if args.default else None)
    how = "the default settings" if args.default else f"every task listed, threshold {THRESHOLD_S} s"
    print(f"\n{args.tasks:,} stalled, {how}, {args.seconds:g} s windows:")
    for rev, rows in got.items():
        print(f"  {rev}: CPU {_spread([x['cpu_pct'] for x in rows], ' %')}; "
              f"RssAnon {_spread([x['rss_anon_mib'] for x in rows], ' MiB')} at the window's end, "
              f"peak {_spread([x['rss_anon_peak_mib'] for x in rows], ' MiB')}, "
              f"mean {_spread([x['rss_anon_mean_mib'] for x in rows], ' MiB')}; "
              f"the last report {_spread([x['late_max_s'] for x in rows], ' s', 2)} past the threshold")
    if args.json:
        args.json.write_text(json.dumps({"tasks": args.tasks, "seconds": args.seconds, "runs": got}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
