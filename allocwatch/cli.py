"""Command line: `allocwatch run` and `allocwatch probes`.

The only place that turns errors into messages and exit codes (README lists
them).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from allocwatch import __version__, config, kernelinfo, preflight, probes
from allocwatch.errors import EXIT_INTERNAL, AllocwatchError, NothingAttached
from allocwatch.probes import uses_dstate
from allocwatch.report import SiteSummary, render_summary
from allocwatch.sinks import FdSink
from allocwatch.sites import hist_slot_upper_s
from allocwatch.tracker import NS_PER_S


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="allocwatch", description="Live watchdog for memory-allocation stalls.")
    ap.add_argument("--version", action="version", version=f"allocwatch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch in the foreground and report stalls")
    run.add_argument("--config", type=Path, help="YAML configuration file")
    run.add_argument("--threshold", type=float, metavar="SECONDS", help="first report after (default 10)")
    run.add_argument("--scan-interval", type=float, metavar="SECONDS", help="scan period (default 1)")
    run.add_argument("--metrics-addr", metavar="HOST:PORT", help="serve Prometheus metrics there")
    run.add_argument("--format", choices=("text", "json"), help="report format (default text)")

    pr = sub.add_parser("probes", help="which wait sites this kernel offers, and how")
    pr.add_argument("--json", action="store_true", help="one JSON document")
    pr.add_argument("--config", type=Path, help="YAML configuration file")
    pr.add_argument("--tracefs", type=Path, help="evaluate a captured tracefs tree instead (no attach)")
    pr.add_argument("--kallsyms", type=Path, help="with --tracefs: the captured kallsyms")
    return ap


def _features(
    cfg: config.Config, tracefs: Path | None = None, kallsyms: Path | None = None
) -> kernelinfo.KernelFeatures:
    root = tracefs or Path(cfg.tracefs)
    return kernelinfo.read_features(
        root,
        probes.all_tracepoint_names(),
        probes.all_function_names(),
        kallsyms=kallsyms or Path("/proc/kallsyms"),
        sysfs=Path("/sys") if tracefs is None else tracefs,
        release=None if tracefs is None else _captured_release(tracefs),
        assume_proc_stack=None if tracefs is None else True,
    )


def _captured_release(tracefs: Path) -> str:
    try:
        return (tracefs / "release").read_text().strip() + f" (captured at {tracefs})"
    except OSError:
        return f"captured at {tracefs}"


def _load_source(cfg: config.Config, plans, features):
    from allocwatch.bpfsource import BpfSource, LoadOptions

    opts = LoadOptions(
        long_wait_ns=cfg.thresholds().min_ns,
        max_waits=cfg.max_inflight,
        max_dwaits=cfg.max_inflight,
    )
    source = BpfSource(plans, features, opts)
    t0 = time.monotonic()
    source.load()
    source.load_seconds = time.monotonic() - t0
    return source


def _probe_rows(statuses: list[Any], features: kernelinfo.KernelFeatures) -> list[dict[str, Any]]:
    rows = []
    for st in statuses:
        plan = st.plan
        opt = plan.chosen
        why = plan.disabled or st.error
        if not why and opt is None:
            reasons = [r for _, r in plan.skipped]
            why = "; ".join(reasons) or plan.entry.absent
            if plan.entry.absent and plan.entry.absent not in why:
                why += f" ({plan.entry.absent})"
        rows.append(
            {
                "site": plan.site.label,
                "what": plan.entry.what,
                "attached": st.attached,
                "mechanism": opt.mechanism.value if opt else None,
                "target": st.target or None,
                "why_not": why or None,
                "passed_over": [{"mechanism": o.mechanism.value, "why": r} for o, r in plan.skipped],
            }
        )
    return rows


class _PlanStatus:
    """A plan evaluated without attaching (offline, or without root)."""

    def __init__(self, plan: probes.SitePlan, features: kernelinfo.KernelFeatures) -> None:
        self.plan = plan
        self.attached = False
        self.error = ""
        opt = plan.chosen
        if opt is None:
            self.target = ""
        elif opt.mechanism is probes.Mechanism.KPROBE_PAIR:
            self.target = plan.kprobe_target(features) or ""
        else:
            self.target = " + ".join(tp.name for tp in opt.tracepoints) or probes.SCHED_SWITCH.name


def cmd_probes(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, {})
    offline = args.tracefs is not None
    if not offline:
        preflight.require_root()
        preflight.ensure_tracefs(Path(cfg.tracefs))
    features = _features(cfg, args.tracefs, args.kallsyms)
    plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
    if offline:
        statuses: list[Any] = [_PlanStatus(p, features) for p in plans]
    else:
        source = _load_source(cfg, plans, features)
        statuses = list(source.status)
        source.close()
    rows = _probe_rows(statuses, features)
    if offline:
        for row, st in zip(rows, statuses, strict=False):
            row["attached"] = None
            row["would_attach"] = st.plan.chosen is not None
    if args.json:
        doc = {"kernel": features.release, "live": not offline, "kprobes": features.kprobes, "sites": rows}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"kernel {features.release}: {'attached live' if not offline else 'evaluated offline, nothing attached'}")
    for row in rows:
        ok = row["would_attach"] if offline else row["attached"]
        state = ("would attach" if offline else "attached") if ok else "MISSING"
        how = f"{row['mechanism']}: {row['target']}" if ok else row["why_not"]
        print(f"  {row['site']:<24} {state:<13} {how}")
    return 0


def _summary(source, daemon, cfg: config.Config) -> str:
    completed: dict[str, SiteSummary] = {}
    for site, (slots, total_ns) in source.histograms().items():
        buckets = {f"{hist_slot_upper_s(i):g}": n for i, n in enumerate(slots) if n}
        completed[site.label] = SiteSummary(sum(slots), total_ns / NS_PER_S, buckets)
    for site, totals in daemon.tracker.dstate_completed.items():
        prev = completed.get(site.label)
        count = totals.count + (prev.count if prev else 0)
        total_s = totals.total_ns / NS_PER_S + (prev.total_s if prev else 0.0)
        completed[site.label] = SiteSummary(count, total_s, prev.buckets if prev else {})
    return render_summary(time.time(), cfg.format, completed, source.stats(), daemon.oom_kills)


def cmd_run(args: argparse.Namespace) -> int:
    from allocwatch.daemon import Daemon

    overrides = {
        "threshold_s": args.threshold,
        "scan_interval_s": args.scan_interval,
        "metrics_addr": args.metrics_addr,
        "format": args.format,
    }
    cfg = config.load(args.config, overrides)
    preflight.require_root()
    preflight.ensure_tracefs(Path(cfg.tracefs))
    features = _features(cfg)
    plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
    source = _load_source(cfg, plans, features)
    try:
        attached = [s for s in source.status if s.attached]
        if not attached:
            raise NothingAttached("no wait site could be attached: see 'allocwatch probes' for why")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        missing = [s.plan.site.label for s in source.status if not s.attached]
        print(
            f"allocwatch {__version__}: watching {len(attached)} of {len(source.status)} wait sites "
            f"(loaded in {source.load_seconds:.2f}s; not attached: {', '.join(missing) or 'none'}); "
            f"threshold {cfg.threshold_s:g}s, scan every {cfg.scan_interval_s:g}s",
            file=sys.stderr,
            flush=True,
        )
        if cfg.metrics_addr:
            print(
                f"allocwatch: metrics_addr {cfg.metrics_addr}: the Prometheus exporter is not in this "
                "version yet; nothing is served",
                file=sys.stderr,
                flush=True,
            )
        sink = FdSink(sys.stdout.fileno())
        daemon = Daemon(cfg, source, plans, sink)
        if uses_dstate(plans):
            seeded = daemon.seed_preexisting()
            if seeded:
                print(f"allocwatch: {seeded} task(s) already asleep in D: timed from now", file=sys.stderr)
        daemon.run(stop)
        sink.write(_summary(source, daemon, cfg))
    finally:
        source.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "probes":
            return cmd_probes(args)
        return cmd_run(args)
    except AllocwatchError as err:
        print(f"allocwatch: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly, with the exit code for it
        print(f"allocwatch: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
