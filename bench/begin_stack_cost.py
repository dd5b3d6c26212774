# SPDX-License-Identifier: Apache-2.0
"""What taking a task's stack as it enters reclaim costs, at the livelock rate.

    .venv/bin/python bench/begin_stack_cost.py [--rounds N]      (as root)

Runs the reclaim-livelock recipe (a task in a 64 MiB memcg looping in reclaim
that frees nothing, about 30,000 passes a second, while OOM victims that
cannot exit are tried one after another) under the real daemon, alternating
`begin_stacks: true` and `false`, and reads the kernel's own run time and run
count of the reclaim-begin handler from the daemon's metrics (`bpf_stats:
true`). Prints per round the ns a run and the passes, then the medians and
their spread. The stack is taken at most once a second per task and site (the
wait entry's noted_ns says when), so its cost per pass is a compare, plus a
stack walk and an LRU update once a second.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import recipes
from lab.ports import free_port

PROGRAM = "aw_memcg_reclaim_begin"


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{program="{PROGRAM}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def one_round(begin_stacks: bool, n_victims: int = 6) -> tuple[float, float]:
    """(ns a run of the reclaim-begin handler, runs) over one livelock."""
    cfg = Path(tempfile.mkstemp(prefix="aw-bench-", suffix=".yaml")[1])
    cfg.write_text(f"bpf_stats: true\nbegin_stacks: {'true' if begin_stacks else 'false'}\nthreshold_s: 5\n")
    addr = f"127.0.0.1:{free_port()}"
    d = subprocess.Popen([sys.executable, "-m", "allocwatch", "run", "--config", str(cfg), "--metrics-addr", addr,
                          "--format", "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert d.stderr is not None and "watching" in d.stderr.readline()
        recipes.reclaim_livelock(n_victims, prefix="aw-bench")
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
            text = r.read().decode()
        runs = _sample(text, "allocwatch_bpf_program_runs_total")
        run_s = _sample(text, "allocwatch_bpf_program_run_seconds_total")
        return (run_s / runs * 1e9 if runs else 0.0), runs
    finally:
        d.terminate()
        d.wait(20)
        cfg.unlink()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            ns, runs = one_round(on)
            results[on].append((ns, runs))
            print(f"round {r + 1} begin_stacks={on!s:5}: {ns:7.1f} ns a run, {runs:9.0f} runs", flush=True)
    for on in (False, True):
        per = [ns for ns, _ in results[on]]
        print(f"begin_stacks={on!s:5}: median {statistics.median(per):.1f} ns a run "
              f"(range {min(per):.1f} to {max(per):.1f}), {statistics.median([n for _, n in results[on]]):.0f} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
