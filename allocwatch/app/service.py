# SPDX-License-Identifier: Apache-2.0
"""`allocwatch run`: the service's lifecycle around the scan loop.

In this order: the configuration, the capabilities and tracefs, the record
stream, the metrics endpoint and top's socket (bound before anything is
loaded: a port in use is exit 11, a socket in use exit 14), the programs, the
scan loop with its snapshots going out, the one line that says it is watching,
READY to systemd; then scans until SIGINT or SIGTERM, a reload between two
scans on SIGHUP, the summary record, and everything detached.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from allocwatch import __version__, config
from allocwatch.app import preflight, selfcare, signals
from allocwatch.app.daemon import Daemon
from allocwatch.app.session import Session, prepare
from allocwatch.core.snapshot import ReloadOutcome
from allocwatch.core.snapview import hello_dict
from allocwatch.errors import AllocwatchError, MetricsPortInUse
from allocwatch.outputs import journal, report, sinks
from allocwatch.outputs.notify import SystemdNotifier
from allocwatch.outputs.sinks import FdSink, QueuedOutput


def _metrics_server(cfg: config.Config, daemon_ref: list, sinks: list, sock: Any = None):
    """Bind the metrics address before anything is loaded: a port in use is exit 11."""
    listen = cfg.metrics_listen
    if listen is None:
        return None
    from allocwatch.kernel import sockdiag
    from allocwatch.outputs.endpoint import MetricsServer
    from allocwatch.outputs.metrics import SnapshotCollector, registry_for

    served: list[MetricsServer] = []
    collector = SnapshotCollector(
        lambda: daemon_ref[0].latest if daemon_ref else None,
        lambda: {s.name: s.dropped_blocks for s in sinks},
        lambda: sock.stats() if sock is not None else {},
        lambda: served[0].counters() if served else {},
    )
    try:
        served.append(MetricsServer(listen, registry_for(collector), on_error=preflight.say,
                                    owner=sockdiag.loopback_owner))
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

    sock = SocketServer(cfg.socket_path, cfg.socket_group, on_error=preflight.say) if cfg.socket_path else None
    try:
        return _metrics_server(cfg, daemon_ref, sinks, sock), sock
    except BaseException:
        _close(sock)
        raise


def _reload(
    path: Path | None, overrides: Mapping[str, Any], running: config.Config
) -> tuple[config.Config | None, str]:
    """SIGHUP: the configuration file again (flags still win). A bad one is refused
    with one line and the running one stays; what needs a restart is said. The
    new configuration (None when refused) and the line said."""
    try:
        new = config.load(path, overrides)
    except AllocwatchError as err:
        line = f"reload refused: {err}; the running configuration stays"
        preflight.say(line)
        return None, line
    stuck = [k for k in config.RESTART_KEYS if getattr(new, k) != getattr(running, k)]
    kept = dataclasses.replace(new, **{k: getattr(running, k) for k in stuck})
    line = (f"reloaded {path or 'the defaults'}: threshold {kept.threshold_s:g}s, "
            f"scan every {kept.scan_interval_s:g}s, format {kept.format}"
            + (f"; needs a restart to change: {', '.join(stuck)}" if stuck else ""))
    preflight.say(line)
    return kept, line


def _handle_signals(stop: threading.Event, reload_asked: threading.Event) -> None:
    """First thing in `run` once the file is read: SIGINT and SIGTERM ask to stop, SIGHUP to reload. A
    signal that comes while the programs load is remembered: a stop then ends the
    run as soon as the load is done, a reload is done between the first two scans
    (before, SIGHUP's default action ended the daemon with no line, its socket left
    behind). The handlers take no lock (app/signals.py)."""
    signals.relay({signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGHUP: reload_asked})


def _reloader(
    path: Path | None, overrides: Mapping[str, Any], daemon: Daemon, source: Any, fmt: list[str],
    notifier: SystemdNotifier, asked: threading.Event,
) -> Callable[[], None]:
    """A reload asked for (SIGHUP), done by the scan loop between two scans."""

    def between_scans() -> None:
        if asked.is_set():
            asked.clear()
            notifier.reloading()
            new, said = _reload(path, overrides, daemon.cfg)
            seq = daemon.last_reload.seq + 1 if daemon.last_reload is not None else 1
            daemon.last_reload = ReloadOutcome(seq, new is not None, said)  # in the next snapshot: allocwatch reload
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
        preflight.say(f"bpf_stats: the kernel refused BPF_ENABLE_STATS ({exc.strerror}); no per-program run time")


def _test_wedge() -> Callable[[], None]:
    """For the watchdog test only: with ALLOCWATCH_TEST_WEDGE=1 in the environment,
    SIGUSR2 makes the scan loop hang for good, so systemd's watchdog must end it."""
    if os.environ.get("ALLOCWATCH_TEST_WEDGE") != "1":
        return lambda: None
    asked = threading.Event()
    signal.signal(signal.SIGUSR2, lambda *_: asked.set())

    def between_scans() -> None:
        if asked.is_set():
            preflight.say("ALLOCWATCH_TEST_WEDGE: the scan loop hangs now")
            threading.Event().wait()

    return between_scans


def _between_scans(*steps: Callable[[], None]) -> Callable[[], None]:
    def run_all() -> None:
        for step in steps:
            step()

    return run_all


def _announce(cfg: config.Config, session: Session, serving: bool, seeded: int, lock_note: str | None) -> None:
    """The one line that says it is watching, and what it could not do for itself
    (`lock_note`: why lock_memory did not lock, if it did not)."""
    why_not = [w for w in (selfcare.lower_oom_score(cfg.oom_score_adj), lock_note,
                           session.blind_note()) if w]
    rss = session.rss_kib
    memory = f"; RSS {rss.get('RssAnon', 0) // 1024}+{rss.get('RssFile', 0) // 1024} MB anon+file" if rss else ""
    served = f"; metrics at http://{cfg.metrics_listen}/metrics" if serving else "; metrics off"
    print(
        f"allocwatch {__version__}: watching {session.line()} "
        f"(loaded in {session.load_seconds:.2f}s); "
        f"threshold {cfg.threshold_s:g}s, scan every {cfg.scan_interval_s:g}s{served}{memory}"
        + (f"; {seeded} task(s) already asleep in D, timed from now" if seeded else ""),
        file=sys.stderr,
        flush=True,
    )
    for line in why_not:  # after the line that says it is watching, which scripts wait for
        preflight.say(line)


def _sink(cfg: config.Config, fmt: list[str], stop: threading.Event) -> QueuedOutput:
    """The record stream: stdout (fatal when its reader goes), or the journal."""
    if cfg.output == "journal":
        return journal.open_sink(on_error=preflight.say, on_fatal=lambda _err: stop.set())
    return FdSink(
        1,
        render=lambda block: report.render_pieces(block, fmt[0]),
        drop_notice=lambda n: report.render_drop_notice(n, time.time(), fmt[0]),
        on_fatal=lambda _err: stop.set(),
        name="standard output",
        one_write=sinks.shares_file(1, 2),  # the daemon's own lines on stderr go to the same place
    )


def run(path: Path | None, overrides: Mapping[str, Any]) -> int:
    """Watch until SIGINT or SIGTERM; 0, or a typed error for the CLI to turn into its exit code."""
    selfcare.one_arena()  # before any thread starts: every thread's memory in the heap a trim gives back
    cfg = config.load(path, overrides)  # milliseconds: a bad file is its exit code, with no handler yet
    if cfg.socket_path:  # a place others may write is a bad configuration too (exit 3), said before anything
        from allocwatch.outputs.socket import check_socket_path

        check_socket_path(cfg.socket_path)
    stop = threading.Event()
    reload_asked = threading.Event()
    _handle_signals(stop, reload_asked)
    prepare(cfg)
    daemon_ref: list[Daemon] = []
    fmt = [cfg.format]  # a reload may change it
    sink = _sink(cfg, fmt, stop)
    server, sock = _listeners(cfg, daemon_ref, [sink])
    try:
        session = Session.load(cfg)
    except BaseException:
        _close(server, sock)
        raise
    source = session.source
    try:
        if cfg.bpf_stats:
            _enable_bpf_stats(source)
        session.require_attached()
        notifier = SystemdNotifier()
        outputs: list[Any] = [sink, notifier] + ([sock] if sock is not None else [])
        daemon = session.daemon(outputs, sock.wanted if sock is not None else None, on_error=preflight.say)
        daemon_ref.append(daemon)
        if sock is not None:  # top's socket: a hello, then each scan's snapshot
            sock.set_hello(hello_dict(daemon.info, [dataclasses.asdict(c) for c in daemon.coverage]))
        seeded = session.seed(daemon)
        lock_note = selfcare.lock_memory() if cfg.lock_memory else None
        trimmer = selfcare.HeapTrimmer(locked=cfg.lock_memory and lock_note is None, on_error=preflight.say)
        _announce(cfg, session, server is not None, seeded, lock_note)
        notifier.ready(f"watching {session.line()}")
        if server is not None:
            server.start()
        reload_step = _reloader(path, overrides, daemon, source, fmt, notifier, reload_asked)
        with selfcare.Collector() as collector:
            daemon.run(stop, _between_scans(collector.after_scan, trimmer.after_scan, reload_step, _test_wedge()))
        notifier.stopping()
        if sink.error is None:
            sink.write([daemon.summary()])
            sink.close(timeout_s=0.3)  # a reader that is stuck does not hold up the stop
        if sink.error is not None:
            raise sink.error
    finally:
        session.close()
        _close(server, sock)
    return 0
