# SPDX-License-Identifier: Apache-2.0
"""The harness's numbers as table rows, each marked against its budget."""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.stats import Row, cpu_share, fmt_ns, fmt_pct, percentile, ratios, spread, verdict

MIB_KB = 1024
# Published per-event floors (bare-metal x86, for comparison with this machine's own empty program).
FLOORS = "raw tracepoint a few ns, classic tracepoint ~10 ns, kprobe ~16 ns, kretprobe ~43 ns (bare metal)"
# What a ratio can resolve here: the median of 7 base/base pairs of 2 GiB storms falls in 0.965..1.036.
RESOLUTION = 0.036
RARE = 1000  # runs below which a per-event figure is mostly cold caches


def per_event_rows(pe: dict[str, Any]) -> list[Row]:
    rows = []
    empties_seen: list[float] = []
    for phase in ("storm", "livelock"):
        ph = pe["phases"].get(phase)
        if not ph:
            continue
        rare = []
        for name, p in sorted(ph["programs"].items(), key=lambda kv: -kv[1]["runs"]):
            if p["runs"] == 0:
                continue
            e = ph["empty"].get(p["hook"], {"run_ns": 0, "runs": 0})
            real = p["run_ns"] / p["runs"]
            empty = e["run_ns"] / e["runs"] if e["runs"] else math.nan
            x = real / empty if empty else math.nan
            if p["runs"] < RARE:
                rare.append(f"{name.split(' ')[0]} {real:,.0f} ns ({p['runs']:,} runs; empty {fmt_ns(empty)})")
                continue
            empties_seen.append(empty)
            rows.append(Row(
                f"per-event cost: {name.split(' ')[0]}", f"{phase}, {p['hook']}",
                f"{real:,.0f} ns a run ({p['runs']:,} runs); empty program on the hook {fmt_ns(empty)}; {x:.1f}x",
                "within 2x the empty program",
                verdict(x <= 2, "" if x <= 2 else f"{real - empty:,.0f} ns of work beyond the dispatch")))
        if rare:
            rows.append(Row("per-event cost: rare events", f"{phase}, under {RARE:,} runs (cold caches dominate)",
                            "; ".join(rare), "within 2x the empty program", verdict(None, "too few runs to judge")))
    for kind, ext in pe.get("externals", {}).items():
        if "error" in ext:
            rows.append(Row(f"per-event cost: {kind}", "storm", f"could not start: {ext['error']}", "compare",
                            verdict(None)))
            continue
        runs = sum(p["runs"] for p in ext["programs"].values())
        ns = sum(p["run_ns"] for p in ext["programs"].values())
        rows.append(Row(f"per-event cost: {kind}", "storm",
                        f"{ns / runs:,.0f} ns a run ({runs:,} runs, all its programs)" if runs
                        else f"0 runs ({len(ext['programs'])} programs attached)", "compare", verdict(None)))
    if empties_seen:
        s = spread([v for v in empties_seen if not math.isnan(v)])
        rows.append(Row("floor: empty program", "classic tracepoints, this VM, bpf_stats on",
                        f"{s.median:.0f} ns a run (hooks {s.low:.0f} to {s.high:.0f})", FLOORS, verdict(None)))
    return rows


def true_cost_rows(pe: dict[str, Any], slow: dict[str, Any]) -> list[Row]:
    rows = []
    for phase, key in (("storm", "storm_s"), ("pagefault", "pagefault_s")):
        ph = pe["phases"].get(phase)
        off = slow.get("off", {}).get(key) or []
        if not ph or not off:
            continue
        ns = sum(p["run_ns"] for p in ph["programs"].values()) / ph["runs"]
        runs = sum(p["runs"] for p in ph["programs"].values()) / ph["runs"]
        wall = statistics.median(off)
        share = ns / 1e9 / wall
        rows.append(Row("true cost (events x ns)", f"{'2 GiB storm' if phase == 'storm' else 'page-fault loop'}",
                        f"{runs:,.0f} program runs, {ns / 1e6:.2f} ms of BPF time a run, {fmt_pct(share, 3)} "
                        f"of its {wall:.2f} s (bpf_stats on: an upper bound)", "under 1 %", verdict(share < 0.01)))
    return rows


def slowdown_rows(slow: dict[str, Any]) -> list[Row]:
    rows = []
    for key, label in (("storm_s", "2 GiB reclaim storm"), ("pagefault_s", "page-fault loop")):
        off = slow["off"][key]
        for cond in ("allocwatch", "drsnoop", "bpftrace"):
            if cond in slow["errors"]:
                rows.append(Row(f"slowdown: {label}", cond, f"could not run: {slow['errors'][cond]}",
                                "compare", verdict(None)))
                continue
            r = spread(ratios(slow[cond][key], off))
            t = spread(slow[cond][key])
            measured = f"ratio {r.fmt(3)}; {t.median:.3f} s vs off {statistics.median(off):.3f} s"
            if cond == "allocwatch":
                # A median below 1 is no cost: it is the noise, as the do-nothing condition shows.
                ok = r.low <= 1.0 <= r.high and r.median <= 1 + RESOLUTION
                idle_tool = spread(ratios(slow["drsnoop"][key], off)) if "drsnoop" not in slow["errors"] else None
                why = f"the range holds 1.00; resolution here about +-{RESOLUTION:.3f}"
                if idle_tool and idle_tool.n:
                    why += f"; drsnoop, whose programs never run here, reads {idle_tool.median:.3f}"
                rows.append(Row(f"slowdown: {label}", "default daemon vs none, alternating", measured,
                                "indistinguishable from 1.00", verdict(ok, why)))
            else:
                rows.append(Row(f"slowdown: {label}", cond, measured, "compare", verdict(None)))
    for cond in ("allocwatch", "drsnoop", "bpftrace"):
        if cond in slow["errors"] or not slow[cond]["saw"]:
            continue
        what = {"allocwatch": "memcg reclaim waits completed (summary)", "drsnoop": "direct reclaim lines printed",
                "bpftrace": "memcg reclaim begin/end pairs (@n)"}[cond]
        rows.append(Row("what it saw, a storm + page-fault run", cond,
                        f"{spread(slow[cond]['saw']).fmt(0)} {what}", "compare", verdict(None)))
    return rows


def cpu_mem_rows(idle: dict[str, Any], slow: dict[str, Any], sc: dict[str, Any],
                 default: dict[str, Any] | None = None) -> list[Row]:
    """CPU and memory; with 10,000 stalled the budget is judged on the default daemon
    (`default`) when it ran, the scale figure's runs (every task listed) are shown beside."""
    rows = []
    share = cpu_share(idle["cpu_s"], idle["wall_s"])
    rows.append(Row("daemon CPU", f"idle, {idle['wall_s']:.0f} s", fmt_pct(share), "under 0.5 % of a core",
                    verdict(share < 0.005)))
    storms = [cpu_share(c, w) for c, w in slow.get("allocwatch", {}).get("storm_cpu_s", [])]
    if storms:
        s = spread(storms)
        rows.append(Row("daemon CPU", "during a 2 GiB storm", f"{fmt_pct(s.median)} ({fmt_pct(s.low)} to "
                        f"{fmt_pct(s.high)}, n={s.n})", "under 5 %", verdict(s.median < 0.05)))
    runs = sc.get("runs", {})
    for title, source in (("default daemon", (default or {}).get("runs", {})),
                          ("every task listed", runs)):
        for n in ("1000", "10000", "20000"):
            if n not in source:
                continue
            r = source[n]
            share = cpu_share(r["cpu_s"], r["wall_s"])
            budget = 0.10 if n == "10000" and (title == "default daemon" or not default) else None
            rows.append(Row("daemon CPU", f"{int(n):,} tasks stalled ({r['stalled']:,} in D), {title}, "
                            f"{r['wall_s']:.0f} s", fmt_pct(share, 1), "under 10 %" if budget else "-",
                            verdict(share < budget) if budget else verdict(None)))
    rss = idle["rss_kb"]
    rows.append(Row("daemon memory", "idle", f"RssAnon {rss['RssAnon'] / MIB_KB:.1f} MiB, RssFile "
                    f"{rss['RssFile'] / MIB_KB:.1f} MiB", "RssAnon at most 30 MB",
                    verdict(rss["RssAnon"] * 1024 <= 30e6)))
    for title, source in (("default daemon", (default or {}).get("runs", {})), ("every task listed", runs)):
        for n in ("10000", "20000"):
            if n not in source:
                continue
            rss = source[n]["rss_kb"]
            judged = n == "10000" and (title == "default daemon" or not default)
            # sampled over the window (JSON of 2026-12-07 on): the peak is judged, else the one read at its end
            window = source[n].get("rss_anon_window") or {}
            peak_kb = window.get("peak_kb", rss["RssAnon"])
            over = (f" (over the window: peak {window['peak_kb'] / MIB_KB:.1f}, mean {window['mean_kb'] / MIB_KB:.1f})"
                    if window.get("samples") else "")
            rows.append(Row("daemon memory", f"{int(n):,} stalled, {title}", f"RssAnon {rss['RssAnon'] / MIB_KB:.1f} "
                            f"MiB{over}, RssFile {rss['RssFile'] / MIB_KB:.1f} MiB",
                            "RssAnon at most 40 MB" if judged else "-",
                            verdict(peak_kb * 1024 <= 40e6) if judged else verdict(None)))
    return rows


def ready_rows(idle: dict[str, Any], slow: dict[str, Any]) -> list[Row]:
    s = spread([idle["ready_s"], *slow.get("allocwatch", {}).get("ready_s", [])])
    return [Row("start to ready", "process start to the 'watching' line", s.fmt(2, " s"), "under 2 s",
                verdict(s.high < 2, "" if s.high < 2 else "the slowest start"))]


def latency_rows(lat: dict[str, Any]) -> list[Row]:
    v = lat["lateness_s"]
    p50, p99 = percentile(v, 50), percentile(v, 99)
    lag = percentile(lat.get("write_s", []), 99)
    return [Row("detection latency", f"threshold {lat['threshold_s']:g} s, scan every {lat['scan_interval_s']:g} s, "
                f"{len(v)} stalled tasks in {lat.get('episodes', '?')} episodes ({lat['missing']} missed)",
                f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(v):.3f} s past the threshold (scan to the line read: "
                f"p99 {lag:.3f} s)" if v else "none",
                "p99 within one scan interval", verdict(bool(v) and p99 <= lat["scan_interval_s"]
                                                        and lat["missing"] == 0))]


def scale_rows(sc: dict[str, Any], label: str = "") -> list[Row]:
    rows = []
    limit = sc["scan_interval_s"] + 0.5
    for n, r in sc["runs"].items():
        stats = r["stats"]
        lost = stats.get("events_lost", "?"), stats.get("waits_full", "?")
        ok = r["missing"] == 0 and r["over_budget"] == 0 and lost == (0, 0)
        rows.append(Row(
            f"scale{label}", f"{int(n):,} stalled at once ({r['stalled']:,} in D), threshold {sc['threshold_s']:g} s",
            f"{r['reported']:,} reported, {r['missing']} missed; past the threshold p50 {r['late_p50_s']:.2f} s, "
            f"p99 {r['late_p99_s']:.2f} s, max {r['late_max_s']:.2f} s ({r['over_budget']} over {limit:g} s); "
            f"events_lost {lost[0]}, waits_full {lost[1]}; per scan {r['scan_mean_s'] * 1e3:.0f} ms "
            f"(mean of {r['scans']:.0f}); CPU {fmt_pct(cpu_share(r['cpu_s'], r['wall_s']), 1)}; "
            f"RssAnon {r['rss_kb']['RssAnon'] / MIB_KB:.0f} MiB",
            f"each within {limit:g} s of its threshold; nothing lost", verdict(ok)))
    return rows


def kernel_memory_rows(idle: dict[str, Any]) -> list[Row]:
    maps = idle["maps"]
    total = sum(m["bytes_memlock"] or 0 for m in maps)
    big = sorted(maps, key=lambda m: -(m["bytes_memlock"] or 0))[:5]
    detail = ", ".join(f"{m['name']} {m['type']} x{m['max_entries']:,} {m['bytes_memlock'] / 2**20:.1f} MiB"
                       for m in big)
    return [Row("kernel memory", f"{len(maps)} maps at the default settings",
                f"{total / 2**20:.1f} MiB bytes_memlock; largest: {detail}", "reported", verdict(None))]


def dstate_rows(ds: dict[str, Any]) -> list[Row]:
    rows = [Row("D-state tracking: aw_sched_switch", "pipe ping-pong (S sleeps)",
                f"{ds['ping_ns_per_hit']['real']:.0f} ns a switch, empty {ds['ping_ns_per_hit']['empty']:.0f} ns "
                f"(bpf_stats); wall clock {ds['ping_ns_per_switch_wall']:+.0f} ns (90 % CI "
                f"{ds['ping_ns_per_switch_ci'][0]:+.0f} to {ds['ping_ns_per_switch_ci'][1]:+.0f})",
                "reported", verdict(None)),
            Row("D-state tracking: aw_sched_switch", "O_DIRECT + fdatasync (D sleeps)",
                f"{ds['dio_ns_per_hit']['real']:.0f} ns a switch, empty {ds['dio_ns_per_hit']['empty']:.0f} ns",
                "reported", verdict(None))]
    for s in ds["sweeps"]:
        rows.append(Row("D-state: a /proc sweep instead", f"{s['reader']}, {s['label']}",
                        f"{s['ms']:.1f} ms for {s['tasks']:,} tasks ({s['us_per_task']:.1f} us a task)",
                        "reported", verdict(None)))
    return rows


def primitive_rows(prim: dict[str, Any]) -> list[Row]:
    """What each piece of a begin/end handler costs on the same hook (bench/primitives.py)."""
    empty = prim.get("empty", {}).get("begin", (float("nan"), 0))[0]
    rows = []
    for name, r in prim.items():
        (b, runs), (e, _) = r["begin"], r["end"]
        rows.append(Row(f"handler pieces: {name}", "livelock, memcg reclaim begin / end",
                        f"begin {b:.0f} ns, end {e:.0f} ns ({runs:,} runs; {max(b, e) / empty:.1f}x the empty begin)",
                        "reported", verdict(None)))
    return rows


def switch_rows(sw: dict[str, Any]) -> list[Row]:
    """sched pipe under each condition, as ratios to nothing attached (bench/switchcost.py)."""
    runs = sw["runs_us_per_op"]
    off = runs["off"]
    where = (f"perf bench sched pipe, both ends on CPU {sw['cpu']}, the fastest of {sw.get('bursts', 1)} bursts "
             f"of {sw['loops']:,} ops a run, alternating")
    rows = [Row("sched_switch: nothing attached", where,
                f"{spread(off).fmt(2, ' us')} an op", "reported", verdict(None))]
    for cond, base in (("empty raw", ""), ("empty classic", ""), ("allocwatch raw", "empty raw"),
                       ("allocwatch classic", "empty classic"), ("daemon", "empty raw")):
        s = spread(ratios(runs[cond], off))
        text = f"ratio {s.fmt(3)}; {statistics.median(runs[cond]):.2f} us an op"
        if not base:
            rows.append(Row(f"sched_switch: {cond}", where, text, "reported", verdict(None)))
            continue
        # per round, against the same round's base: the rounds drift together
        g = spread([(c - b) / o for c, b, o in zip(runs[cond], runs[base], off, strict=True)])
        rows.append(Row(f"sched_switch: {cond}", where, f"{text}; {g.median:+.3f} over {base} (per round "
                        f"{g.low:+.3f} to {g.high:+.3f})", f"within 0.01 of {base}",
                        verdict(g.median <= 0.01, f"{g.median:+.3f}")))
    if sw.get("daemon_sched_switch"):
        rows[-1] = Row(rows[-1].figure, rows[-1].condition,
                       f"{rows[-1].measured} (attached: {sw['daemon_sched_switch']})", rows[-1].budget,
                       rows[-1].verdict)
    if sw.get("ns_per_run"):
        ns = {c: statistics.median(v) for c, v in sw["ns_per_run"].items()}
        rows.append(Row("sched_switch: ns a run", "the same pipe, bpf_stats on, median of "
                        f"{len(next(iter(sw['ns_per_run'].values())))} bursts each",
                        f"allocwatch raw {ns['allocwatch raw']:.0f} ns, empty raw {ns['empty raw']:.0f} ns "
                        f"({ns['allocwatch raw'] - ns['empty raw']:+.0f}); allocwatch classic "
                        f"{ns['allocwatch classic']:.0f} ns, empty classic {ns['empty classic']:.0f} ns "
                        f"({ns['allocwatch classic'] - ns['empty classic']:+.0f})", "reported", verdict(None)))
    return rows
