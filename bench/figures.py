# SPDX-License-Identifier: Apache-2.0
"""Each figure of the harness: measure, then return its raw numbers (a dict
that goes into the JSON as it is). bench/report.py turns them into rows."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procinfo, tools, workloads
from bench.tools import Allocwatch, External
from lab import memcg, recipes

Say = Callable[[str], None]
# bench/run.py --profile: py-spy samples the daemon over each scale window (it perturbs that CPU figure).
PROFILE = False


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # alternating rounds of the slowdown figure
    storm_mib: int
    pf_chunks: int  # 256 MiB chunks a page-fault loop run touches
    idle_s: float
    cost_storms: int  # storms under bpf_stats for the per-event figure
    livelock_victims: int  # 2 s of livelock each
    latency_episodes: int
    scales: tuple[int, ...]
    scale_threshold_s: float
    steady_s: float

    @classmethod
    def of(cls, quick: bool) -> Mode:
        if quick:
            return cls("quick", 3, 2048, 8, 10, 2, 2, 8, (1000, 10000), 3, 5)
        return cls("full", 9, 2048, 16, 30, 3, 4, 30, (1000, 10000, 20000), 5, 10)


def _delta(after: dict[Any, tuple[int, int]], before: dict[Any, tuple[int, int]]) -> dict[Any, tuple[int, int]]:
    return {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1]) for k, v in after.items()}


def _hooks(d: Allocwatch) -> dict[int, str]:
    """prog id -> category:tracepoint, for what the daemon attached."""
    hooks = {}
    for e in tools.perf_links(d.pid):
        if e.get("fd_type") == "tracepoint":
            hooks[e["prog_id"]] = tools.tracepoint_category(e["tracepoint"])
        elif e.get("fd_type") == "raw_tracepoint":  # beside an empty program on the raw one too
            hooks[e["prog_id"]] = tools.RAW_PREFIX + e["tracepoint"]
    return hooks


# ----------------------------------------------------- per-event costs --

def per_event(mode: Mode, say: Say) -> dict[str, Any]:
    """The daemon's programs (bpf_stats: true) beside an empty program on each of
    their hooks, over reclaim storms, a page-fault loop and the livelock recipe."""
    out: dict[str, Any] = {"phases": {}}
    with tools.allocwatch({"bpf_stats": True}) as d:
        hooks = _hooks(d)
        names = {i: tools.prog_info(i).get("name", "?") for i in hooks}
        empties = tools.EmptyOnHooks(sorted(set(hooks.values())))
        try:
            phases: list[tuple[str, Callable[[], float]]] = [
                ("storm", lambda: sum(workloads.storm(mode.storm_mib) for _ in range(mode.cost_storms))),
                ("pagefault", lambda: workloads.pagefault_loop(256, mode.pf_chunks)),
                ("livelock", lambda: _timed(lambda: recipes.reclaim_livelock(mode.livelock_victims,
                                                                             prefix="aw-bench-live"))),
            ]
            for phase, run in phases:
                say(f"per-event cost: {phase}")
                s0, e0 = tools.run_stats(list(hooks)), empties.stats()
                wall = run()
                s1, e1 = tools.run_stats(list(hooks)), empties.stats()
                progs = _delta(s1, s0)
                out["phases"][phase] = {
                    "wall_s": wall,
                    "runs": mode.cost_storms if phase == "storm" else 1,
                    "programs": {f"{names[i]} ({i})": {"hook": hooks[i], "run_ns": v[0], "runs": v[1]}
                                 for i, v in progs.items()},
                    "empty": {tp: {"run_ns": v[0], "runs": v[1]} for tp, v in _delta(e1, e0).items()},
                }
        finally:
            empties.close()
    out["externals"] = {}
    from allocwatch.kernel import bpfstats

    fd = bpfstats.enable()
    try:
        for kind in ("bpftrace", "drsnoop"):
            say(f"per-event cost: {kind} on a storm")
            try:
                ext = External(kind)
            except Exception as e:
                out["externals"][kind] = {"error": str(e).splitlines()[0]}
                continue
            try:
                s0 = tools.run_stats(ext.prog_ids)
                wall = workloads.storm(mode.storm_mib)
                s1 = tools.run_stats(ext.prog_ids)
                ext.stop()
                out["externals"][kind] = {"wall_s": wall, "saw": ext.saw(),
                                          "programs": {str(i): {"run_ns": v[0], "runs": v[1]}
                                                       for i, v in _delta(s1, s0).items()}}
            finally:
                ext.close()
    finally:
        os.close(fd)
    return out


def _timed(fn: Callable[[], None]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


# ---------------------------------------------------------- slowdown --

CONDITIONS = ("off", "allocwatch", "drsnoop", "bpftrace")


def slowdown(mode: Mode, say: Say) -> dict[str, Any]:
    """Storm and page-fault loop under each condition, the order rotated every round."""
    res: dict[str, Any] = {c: {"storm_s": [], "pagefault_s": [], "saw": []} for c in CONDITIONS}
    res["allocwatch"] |= {"ready_s": [], "storm_cpu_s": []}
    res["errors"] = {}
    workloads.storm(256)  # warm-up, untimed
    workloads.pagefault_loop(256, 1)
    for r in range(mode.rounds):
        k = r % len(CONDITIONS)
        for cond in CONDITIONS[k:] + CONDITIONS[:k]:
            if cond in res["errors"]:
                continue
            try:
                _one_condition(cond, mode, res[cond])
            except Exception as e:
                res["errors"][cond] = str(e).splitlines()[0]
                say(f"slowdown: {cond} failed: {res['errors'][cond]}")
                continue
            say(f"slowdown round {r + 1}/{mode.rounds} {cond:10}: storm {res[cond]['storm_s'][-1]:.3f} s, "
                f"page faults {res[cond]['pagefault_s'][-1]:.3f} s")
    return res


def _one_condition(cond: str, mode: Mode, into: dict[str, Any]) -> None:
    def both() -> None:
        into["storm_s"].append(workloads.storm(mode.storm_mib))
        into["pagefault_s"].append(workloads.pagefault_loop(256, mode.pf_chunks))

    if cond == "off":
        both()
        into["saw"].append(0)
    elif cond == "allocwatch":
        d = Allocwatch({}, metrics=True)
        try:
            into["ready_s"].append(d.wait_ready())
            c0 = procinfo.cpu_seconds(d.pid)
            t0 = time.monotonic()
            into["storm_s"].append(workloads.storm(mode.storm_mib))
            into["storm_cpu_s"].append((procinfo.cpu_seconds(d.pid) - c0, time.monotonic() - t0))
            into["pagefault_s"].append(workloads.pagefault_loop(256, mode.pf_chunks))
            d.stop()
            summary = [r for _, r in d.records() if r.get("type") == "summary"]
            done = summary[-1]["waits_completed"] if summary else {}
            into["saw"].append(done.get("memcg_reclaim", {}).get("count", 0))
        finally:
            d.close()
    else:
        ext = External(cond)
        try:
            both()
            ext.stop()
            into["saw"].append(ext.saw())
        finally:
            ext.close()


# ------------------------------------------------------ idle, memory --

def idle(mode: Mode, say: Say) -> dict[str, Any]:
    say(f"idle daemon: {mode.idle_s:g} s")
    with tools.allocwatch({}, metrics=True) as d:
        time.sleep(3)
        c0, t0 = procinfo.cpu_seconds(d.pid), time.monotonic()
        time.sleep(mode.idle_s)
        cpu, wall = procinfo.cpu_seconds(d.pid) - c0, time.monotonic() - t0
        rss = procinfo.rss_kb(d.pid)
        maps = map_sizes(list(_hooks(d)))
        return {"ready_s": d.ready_s, "cpu_s": cpu, "wall_s": wall, "rss_kb": rss, "maps": maps}


def map_sizes(prog_ids: list[int]) -> list[dict[str, Any]]:
    ids: set[int] = set()
    for i in prog_ids:
        ids |= set(tools.prog_info(i).get("map_ids", []))
    return [{k: m.get(k) for k in ("id", "name", "type", "max_entries", "bytes_memlock")}
            for m in tools.bpftool_json("map", "show") or [] if m["id"] in ids]


# --------------------------------------------------- detection latency --

def latency(mode: Mode, say: Say) -> dict[str, Any]:
    """Episodes of 3 tasks held in the memcg OOM wait, each until all three are
    reported, at a random phase of the scan loop; threshold 1 s."""
    threshold = 1.0
    rng = random.Random(20)
    pids: list[set[int]] = []
    with tools.allocwatch({"threshold_s": threshold}, poll_s=0.002) as d, memcg.MemCgroup("aw-bench-lat") as group:
        for ep in range(mode.latency_episodes):
            hogs = memcg.stall_indefinitely(group, 3, 64)
            want = {h.pid for h in hogs}
            deadline = time.monotonic() + threshold + 10
            while time.monotonic() < deadline and not want <= _reported(d):
                time.sleep(0.05)
            memcg.release(group)
            for h in hogs:
                h.stop()
            pids.append(want)
            say(f"latency episode {ep + 1}/{mode.latency_episodes}")
            time.sleep(rng.uniform(0.2, 1.2))
        records = d.records()
    lateness, write = [], []
    missing = 0
    for want in pids:
        firsts = _first_reports(records, want)
        missing += len(want - set(firsts))
        lateness += [v["lateness_s"] for v in firsts.values()]
        write += [v["write_s"] for v in firsts.values()]
    return {"threshold_s": threshold, "scan_interval_s": 1.0, "lateness_s": lateness, "write_s": write,
            "missing": missing, "episodes": len(pids)}


def _reported(d: Allocwatch) -> set[int]:
    return {t["tid"] for _, r in d.records() if r.get("type") == "stall_report" for t in r.get("tasks", [])}


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


def _first_reports(records: list[tuple[float, dict[str, Any]]], tids: set[int], threshold: float = 1.0
                   ) -> dict[int, dict[str, float]]:
    """tid -> how late its first report reached the reader, past its threshold:
    (duration_s - threshold) at the scan, plus the scan's time to the line's arrival."""
    out: dict[int, dict[str, float]] = {}
    for arrival, rec in records:
        if rec.get("type") != "stall_report":
            continue
        write_lag = arrival - _epoch(rec["time"])
        for t in rec.get("tasks", []):
            if t["tid"] in tids and t["tid"] not in out:
                out[t["tid"]] = {"decision_s": t["duration_s"] - threshold, "write_s": write_lag,
                                 "lateness_s": t["duration_s"] - threshold + write_lag}
    return out


# -------------------------------------------------------------- scale --

def scale(mode: Mode, say: Say) -> dict[str, Any]:
    out: dict[str, Any] = {"threshold_s": mode.scale_threshold_s, "scan_interval_s": 1.0, "runs": {}}
    with workloads.threads_binary() as exe:
        for n in mode.scales:
            say(f"scale: {n:,} stalled at once")
            out["runs"][str(n)] = scale_one(exe, n, mode)
            r = out["runs"][str(n)]
            say(f"scale {n:,}: {r['stalled']:,} stalled, {r['reported']:,} reported, "
                f"cpu {r['cpu_s'] / r['wall_s'] * 100:.1f} %, late max {r['late_max_s']:.2f} s")
    return out


def stalled_default(mode: Mode, say: Say) -> dict[str, Any]:
    """Daemon CPU and memory with 1,000 and 10,000 stalled, at the default settings
    (threshold 10 s, blocks list 1,000 tasks and count the rest)."""
    out: dict[str, Any] = {"threshold_s": 10.0, "runs": {}}
    with workloads.threads_binary() as exe:
        for n in (1000, 10000):
            say(f"default daemon, {n:,} stalled")
            out["runs"][str(n)] = scale_one(exe, n, mode, {})
    return out


def scale_one(exe: Path, n: int, mode: Mode, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One daemon (`settings`; issue 30's condition by default: every task listed) and `n`
    stalled threads: its CPU over the steady window, RssAnon, how late its first reports were."""
    if settings is None:
        settings = {"threshold_s": mode.scale_threshold_s, "max_tasks_per_block": 100000}
    threshold = float(settings.get("threshold_s", 10.0))
    d = Allocwatch(settings, metrics=True)
    try:
        d.wait_ready()
        time.sleep(2)
        with workloads.stalled_threads(exe, n) as s:
            time.sleep(threshold + 3)
            m0 = d.metrics()
            c0, t0 = procinfo.cpu_seconds(d.pid), time.monotonic()
            prof = tools.PySpy(d.pid, mode.steady_s) if PROFILE else None
            sampler = procinfo.RssSampler(d.pid)
            time.sleep(mode.steady_s)
            cpu, wall = procinfo.cpu_seconds(d.pid) - c0, time.monotonic() - t0
            rss_window = sampler.stop()
            profile = prof.top() if prof else None
            m1 = d.metrics()
            rss = procinfo.rss_kb(d.pid)
            stalled = procinfo.threads_in_d(s.pid)
        d.stop()
        records = d.records()
    finally:
        d.close()
    firsts = _first_reports(records, stalled, threshold)
    late = sorted(v["lateness_s"] for v in firsts.values())
    summary = next((r for _, r in reversed(records) if r.get("type") == "summary"), {})
    name = "allocwatch_scan_duration_seconds"
    h0, h1 = tools.histogram(m0, name), tools.histogram(m1, name)
    scans = tools.metric_value(m1, name + "_count") - tools.metric_value(m0, name + "_count")
    scan_sum = tools.metric_value(m1, name + "_sum") - tools.metric_value(m0, name + "_sum")
    return {
        "n": n, "stalled": len(stalled), "reported": len(firsts), "missing": len(stalled - set(firsts)),
        "late_p50_s": late[len(late) // 2] if late else float("nan"),
        "late_p99_s": late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan"),
        "late_max_s": late[-1] if late else float("nan"),
        "over_budget": sum(1 for v in late if v > 1.0 + 0.5),
        "cpu_s": cpu, "wall_s": wall, "rss_kb": rss, "rss_anon_window": rss_window,
        "scans": scans, "scan_mean_s": scan_sum / scans if scans else float("nan"),
        "scan_buckets": {le: h1[le] - h0.get(le, 0) for le in h1},
        "stats": summary.get("stats", {}),
        "profile": profile,
    }


# ------------------------------------------------------------ D state --

def dstate(quick: bool, say: Say) -> dict[str, Any]:
    """bench/dstate_cost.py's measurements, run from here."""
    from bench import dstate_cost

    say("D-state tracking (bench/dstate_cost.py)")
    m = dstate_cost.measure_all(dstate_cost.Settings.for_mode(quick), None)
    ping, dio = m["workloads"]
    return {
        "ping_ns_per_hit": {c: ping.counting[c].ns_per_hit for c in ("real", "empty")},
        "dio_ns_per_hit": {c: dio.counting[c].ns_per_hit for c in ("real", "empty")},
        "ping_ns_per_switch_wall": ping.ns_per_switch("real"),
        "ping_ns_per_switch_ci": ping.ns_per_switch_ci("real"),
        "sweeps": [{"label": s.label, "reader": s.reader, "ms": s.median_wall * 1e3, "tasks": s.median_tasks,
                    "us_per_task": s.us_per_task} for s in m["sweeps"]],
    }


# ------------------------------------------------------- sched_switch --

def switch(mode: Mode, say: Say) -> dict[str, Any]:
    """bench/switchcost.py: sched pipe with nothing, empty programs, allocwatch's handlers, the daemon."""
    from bench import switchcost

    say("sched_switch cost: perf bench sched pipe (bench/switchcost.py)")
    return switchcost.measure(5 if mode.name == "quick" else 9, 40_000, say)
