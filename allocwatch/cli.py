"""Command line: `allocwatch run` and `allocwatch probes`.

The only place that turns errors into messages and exit codes (README lists
them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocwatch import __version__, config, preflight, topcmd
from allocwatch.errors import EXIT_INTERNAL, AllocwatchError, MetricsPortInUse, NothingAttached, OutputClosed
from allocwatch.heap import HeapTrimmer
from allocwatch.kernel import coverage, kernelinfo, probes
from allocwatch.kernel.probes import uses_dstate
from allocwatch.outputs import journal, report
from allocwatch.outputs.notify import SystemdNotifier
from allocwatch.outputs.sinks import FdSink, QueuedOutput, output_error


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also read at build time to make the man page)."""
    ap = argparse.ArgumentParser(prog="allocwatch", description="Live watchdog for memory-allocation stalls.")
    ap.add_argument("--version", action="version", version=f"allocwatch {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch in the foreground and report stalls")
    run.add_argument("--config", type=Path, help="YAML configuration file")
    run.add_argument("--threshold", type=float, metavar="SECONDS", help="first report after (default 10)")
    run.add_argument("--scan-interval", type=float, metavar="SECONDS", help="scan period (default 1)")
    run.add_argument(
        "--metrics-addr", metavar="HOST:PORT",
        help=f"serve Prometheus metrics at http://HOST:PORT/metrics (default {config.DEFAULT_METRICS_ADDR}; "
        "'' for none)",
    )
    run.add_argument("--format", choices=("text", "json"), help="report format (default text)")
    run.add_argument(
        "--output", choices=("stdout", "journal"),
        help="where reports go (default stdout; journal: structured entries to the systemd journal)",
    )
    run.add_argument(
        "--socket", metavar="PATH", help=f"socket for allocwatch top (default {config.DEFAULT_SOCKET_PATH}; '' none)"
    )
    run.add_argument(
        "--cgroup", action="append", metavar="PATH",
        help="report only tasks whose memory cgroup path starts with PATH (repeatable)",
    )

    pr = sub.add_parser("probes", help="which wait sites this kernel offers, and how")
    pr.add_argument("--json", action="store_true", help="one JSON document")
    pr.add_argument("--config", type=Path, help="YAML configuration file")
    pr.add_argument("--tracefs", type=Path, help="evaluate a captured tracefs tree instead (no attach)")
    pr.add_argument("--kallsyms", type=Path, help="with --tracefs: the captured kallsyms (default DIR/kallsyms)")
    topcmd.add_parser(sub)
    return ap


def _features(
    cfg: config.Config, tracefs: Path | None = None, kallsyms: Path | None = None
) -> kernelinfo.KernelFeatures:
    root = tracefs or Path(cfg.tracefs)
    return kernelinfo.read_features(
        root,
        probes.all_tracepoint_names(),
        probes.all_function_names(),
        kallsyms=kallsyms or (Path("/proc/kallsyms") if tracefs is None else tracefs / "kallsyms"),
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
    from allocwatch.kernel.bpfsource import BpfSource, LoadOptions

    opts = LoadOptions(
        long_wait_ns=cfg.thresholds().min_ns,
        dstate_end_ns=cfg.classify_after_ns,
        begin_stacks=cfg.begin_stacks,
        max_waits=cfg.max_inflight,
        max_dwaits=cfg.max_inflight,
    )
    source = BpfSource(plans, features, opts)
    source.load()
    return source


def _tracefs(cfg: config.Config) -> None:
    if preflight.ensure_tracefs(Path(cfg.tracefs)):
        print(f"allocwatch: tracefs was not mounted: mounted it at {preflight.TRACEFS_STANDARD}", file=sys.stderr)


def cmd_probes(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, {})
    offline = args.tracefs is not None
    if not offline:
        preflight.require_capabilities()
        _tracefs(cfg)
    features = _features(cfg, args.tracefs, args.kallsyms)
    plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
    if offline:
        statuses = [coverage.planned(p, features) for p in plans]
    else:
        source = _load_source(cfg, plans, features)
        statuses = list(source.status)
        source.close()
    if args.json:
        doc = {
            "kernel": features.release,
            "live": not offline,
            "kprobes": features.kprobes,
            "sites": coverage.rows(statuses),
        }
        _stdout(json.dumps(doc, indent=2) + "\n")
    else:
        _stdout(coverage.render_text(statuses, features.release))
    return 0


def _stdout(text: str) -> None:
    """Write and flush, or raise the typed error (exit 12 or 13). Nothing is
    left in the buffer to fail again at exit."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        _stdout_to_devnull()
        raise output_error(exc) from None


def _stdout_to_devnull() -> None:
    """After a write to stdout failed: what is left in its buffer goes nowhere,
    so the flush at exit does not fail again (exit 120)."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != 1:
        os.dup2(null, 1)
        os.close(null)


def _gfp_table(cfg: config.Config) -> list[tuple[int, str]]:
    """The running kernel's gfp flag names, from the first reclaim-begin event that has them."""
    from allocwatch.kernel import gfpnames

    for event in ("vmscan/mm_vmscan_memcg_reclaim_begin", "vmscan/mm_vmscan_direct_reclaim_begin"):
        table = gfpnames.read_table(Path(cfg.tracefs), event)
        if table:
            return table
    return []


def _throttle_names(cfg: config.Config) -> dict[int, str]:
    from allocwatch.kernel import gfpnames

    return gfpnames.read_throttle_reasons(Path(cfg.tracefs))


def _compaction_names(cfg: config.Config) -> dict[int, str]:
    from allocwatch.kernel import gfpnames

    return gfpnames.read_symbolic(Path(cfg.tracefs), "compaction/mm_compaction_end", "status")


def _metrics_server(cfg: config.Config, daemon_ref: list, sinks: list, sock: Any = None):
    """Bind the metrics address before anything is loaded: a port in use is exit 11."""
    listen = cfg.metrics_listen
    if listen is None:
        return None
    from allocwatch.outputs.metrics import MetricsServer, SnapshotCollector, registry_for

    served: list[MetricsServer] = []
    collector = SnapshotCollector(
        lambda: daemon_ref[0].latest if daemon_ref else None,
        lambda: {s.name: s.dropped_blocks for s in sinks},
        lambda: sock.stats() if sock is not None else {},
        lambda: {"refused": served[0].server.refused} if served else {},
    )
    try:
        served.append(MetricsServer(listen, registry_for(collector)))
        return served[0]
    except OSError as exc:
        raise MetricsPortInUse(
            f"metrics_addr {listen}: cannot listen there ({exc.strerror or exc}); choose another with "
            "--metrics-addr HOST:PORT, or --metrics-addr '' for none"
        ) from None


def _close(*servers: Any) -> None:
    for s in servers:
        if s is not None:
            s.close()


def _listeners(cfg: config.Config, daemon_ref: list, sinks: list) -> tuple[Any, Any]:
    """The metrics endpoint and top's socket, before anything is loaded: a port in use
    is exit 11, a socket in use exit 14."""
    from allocwatch.outputs.socket import SocketServer

    def said(line: str) -> None:
        print(f"allocwatch: {line}", file=sys.stderr, flush=True)

    sock = SocketServer(cfg.socket_path, cfg.socket_group, on_error=said) if cfg.socket_path else None
    try:
        return _metrics_server(cfg, daemon_ref, sinks, sock), sock
    except BaseException:
        _close(sock)
        raise


def _serve_top(daemon: Any, sock: Any) -> None:
    """top's socket: a hello, then each scan's snapshot, with the live view while a client listens."""
    from allocwatch.core.snapview import hello_dict
    from allocwatch.live import LiveReader

    sock.set_hello(hello_dict(daemon.info, [dataclasses.asdict(c) for c in daemon.coverage]))
    daemon.live = LiveReader(sock.wanted, on_error=lambda line: print(f"allocwatch: {line}", file=sys.stderr))
    daemon.outputs.append(sock)


# Keys a running daemon cannot change: they shape what is loaded or bound at start.
RESTART_KEYS = (
    "max_inflight", "tracefs", "hot_paths", "disable_sites", "metrics_addr", "begin_stacks", "bpf_stats",
    "oom_score_adj", "lock_memory", "output", "socket_path", "socket_group",
    "metrics_cgroups", "metrics_cgroup_pattern", "metrics_cgroup_max",  # a counter's labels stay for the run
)


def _reload(args: argparse.Namespace, overrides: dict, running: config.Config) -> config.Config | None:
    """SIGHUP: the configuration file again (flags still win). A bad one is refused
    with one line and the running one stays; what needs a restart is said."""
    try:
        new = config.load(args.config, overrides)
    except AllocwatchError as err:
        print(f"allocwatch: reload refused: {err}; the running configuration stays", file=sys.stderr, flush=True)
        return None
    stuck = [k for k in RESTART_KEYS if getattr(new, k) != getattr(running, k)]
    kept = dataclasses.replace(new, **{k: getattr(running, k) for k in stuck})
    print(
        f"allocwatch: reloaded {args.config or 'the defaults'}: threshold {kept.threshold_s:g}s, "
        f"scan every {kept.scan_interval_s:g}s, format {kept.format}"
        + (f"; needs a restart to change: {', '.join(stuck)}" if stuck else ""),
        file=sys.stderr, flush=True,
    )
    return kept


def _reloader(
    args: argparse.Namespace, overrides: dict, daemon: Any, source: Any, fmt: list[str], notifier: SystemdNotifier
):
    """SIGHUP asks for a reload; the scan loop does it between two scans."""
    asked = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: asked.set())

    def between_scans() -> None:
        if asked.is_set():
            asked.clear()
            notifier.reloading()
            new = _reload(args, overrides, daemon.cfg)
            if new is not None:
                daemon.reload(new)
                source.set_tunables(new.thresholds().min_ns, new.classify_after_ns)
                fmt[0] = new.format
            notifier.reloaded(f"watching; configuration {'reloaded' if new is not None else 'kept (reload refused)'}")

    return between_scans


def _enable_bpf_stats(source: Any) -> None:
    try:
        source.enable_program_stats()
    except OSError as exc:
        print(f"allocwatch: bpf_stats: the kernel refused BPF_ENABLE_STATS ({exc.strerror}); "
              "no per-program run time", file=sys.stderr)


def _test_wedge() -> Callable[[], None]:
    """For the watchdog test only: with ALLOCWATCH_TEST_WEDGE=1 in the environment,
    SIGUSR2 makes the scan loop hang for good, so systemd's watchdog must end it."""
    if os.environ.get("ALLOCWATCH_TEST_WEDGE") != "1":
        return lambda: None
    asked = threading.Event()
    signal.signal(signal.SIGUSR2, lambda *_: asked.set())

    def between_scans() -> None:
        if asked.is_set():
            print("allocwatch: ALLOCWATCH_TEST_WEDGE: the scan loop hangs now", file=sys.stderr, flush=True)
            threading.Event().wait()

    return between_scans


def _between_scans(*steps: Callable[[], None]) -> Callable[[], None]:
    def run_all() -> None:
        for step in steps:
            step()

    return run_all


def _announce(cfg: config.Config, source: Any, serving: bool, seeded: int, lock_note: str | None) -> None:
    """The one line that says it is watching, and what it could not do for itself
    (`lock_note`: why lock_memory did not lock, if it did not)."""
    why_not = [w for w in (preflight.lower_oom_score(cfg.oom_score_adj), lock_note,
                           preflight.pid_namespace_note()) if w]
    rss = source.rss_kb
    memory = (f"; RSS {rss.get('RssAnon', 0) // 1024}+{rss.get('RssFile', 0) // 1024} MB anon+file "
              f"(compiler text dropped: file was {source.rss_kb_before_drop.get('RssFile', 0) // 1024} MB)"
              if rss else "")
    served = f"; metrics at http://{cfg.metrics_listen}/metrics" if serving else "; metrics off"
    print(
        f"allocwatch {__version__}: watching {coverage.summarize(source.status).line()} "
        f"(loaded in {source.load_seconds:.2f}s); "
        f"threshold {cfg.threshold_s:g}s, scan every {cfg.scan_interval_s:g}s{served}{memory}"
        + (f"; {seeded} task(s) already asleep in D, timed from now" if seeded else ""),
        file=sys.stderr,
        flush=True,
    )
    for line in why_not:  # after the line that says it is watching, which scripts wait for
        print(f"allocwatch: {line}", file=sys.stderr, flush=True)


def _sink(cfg: config.Config, fmt: list[str], stop: threading.Event) -> QueuedOutput:
    """The record stream: stdout (fatal when its reader goes), or the journal."""
    if cfg.output == "journal":
        return journal.open_sink(
            on_error=lambda line: print(f"allocwatch: {line}", file=sys.stderr, flush=True),
            on_fatal=lambda _err: stop.set(),
        )
    return FdSink(
        1,
        render=lambda block: report.render_dicts(block, fmt[0]),
        drop_notice=lambda n: report.render_drop_notice(n, time.time(), fmt[0]),
        on_fatal=lambda _err: stop.set(),
        name="standard output",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from allocwatch.daemon import Daemon

    overrides = {
        "threshold_s": args.threshold,
        "scan_interval_s": args.scan_interval,
        "metrics_addr": args.metrics_addr,
        "format": args.format,
        "output": args.output,
        "cgroups": args.cgroup,
        "socket_path": args.socket,
    }
    cfg = config.load(args.config, overrides)
    preflight.require_capabilities()
    _tracefs(cfg)
    daemon_ref: list[Daemon] = []
    stop = threading.Event()
    fmt = [cfg.format]  # a reload may change it
    sink = _sink(cfg, fmt, stop)
    server, sock = _listeners(cfg, daemon_ref, [sink])
    try:
        features = _features(cfg)
        plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
        source = _load_source(cfg, plans, features)
    except BaseException:
        _close(server, sock)
        raise
    try:
        if cfg.bpf_stats:
            _enable_bpf_stats(source)
        attached = [s for s in source.status if s.attached]
        if not attached:
            raise NothingAttached("no wait site could be attached: see 'allocwatch probes' for why")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        attached_plans = source.effective_plans
        notifier = SystemdNotifier()
        daemon = Daemon(
            cfg, source, attached_plans, [sink, notifier], coverage=coverage.snapshot_coverage(source.status),
            kernel=features.release, gfp_table=_gfp_table(cfg), compaction_names=_compaction_names(cfg),
            throttle_names=_throttle_names(cfg),
        )
        daemon_ref.append(daemon)
        if sock is not None:
            _serve_top(daemon, sock)
        daemon.on_limit = lambda line: print(f"allocwatch: {line}", file=sys.stderr, flush=True)
        seeded = daemon.seed_preexisting() if uses_dstate(attached_plans) else 0
        lock_note = preflight.lock_memory() if cfg.lock_memory else None
        trimmer = HeapTrimmer(locked=cfg.lock_memory and lock_note is None,
                              on_error=lambda line: print(f"allocwatch: {line}", file=sys.stderr, flush=True))
        _announce(cfg, source, server is not None, seeded, lock_note)
        notifier.ready(f"watching {coverage.summarize(source.status).line()}")
        if server is not None:
            server.start()
        reload_step = _reloader(args, overrides, daemon, source, fmt, notifier)
        daemon.run(stop, _between_scans(trimmer.after_scan, reload_step, _test_wedge()))
        notifier.stopping()
        if sink.error is None:
            sink.write([daemon.summary()])
            sink.close(timeout_s=0.3)  # a reader that is stuck does not hold up the stop
        if sink.error is not None:
            raise sink.error
    finally:
        source.close()
        _close(server, sock)
    return 0


def main(argv: list[str] | None = None) -> int:
    if sys.stderr is None or sys.stderr is sys.__stderr__:  # not when a caller has replaced it
        sys.stderr = preflight.guard_stderr()  # diagnostics never fail, and never change the exit code
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except OSError as exc:  # `--help > /dev/full`
        _stdout_to_devnull()
        err = output_error(exc)
        print(f"allocwatch: {err}", file=sys.stderr)
        return err.exit_code
    if args.command == "probes" and args.kallsyms and not args.tracefs:
        parser.error("--kallsyms describes a captured kernel: give its --tracefs DIR too")
    try:
        preflight.require_stdout()
        if args.command == "probes":
            return cmd_probes(args)
        if args.command == "top":
            return topcmd.cmd_top(args)
        return cmd_run(args)
    except AllocwatchError as err:
        print(f"allocwatch: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `allocwatch probes | head -1`
        _stdout_to_devnull()
        closed = OutputClosed("standard output was closed by its reader before everything was written")
        print(f"allocwatch: {closed}", file=sys.stderr)
        return closed.exit_code
    except Exception as exc:  # a bug: say so plainly, with the exit code for it
        print(f"allocwatch: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
