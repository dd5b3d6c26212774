# SPDX-License-Identifier: Apache-2.0
"""Command line: argv to a command, and typed errors to a message and an exit code.

`allocwatch run` (app/service.py), `allocwatch probes` (app/sitereport.py) and
`allocwatch top` (top/command.py), `allocwatch reload` (top/reload.py). The only place that turns errors into
messages and exit codes (docs list them); nothing imports it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from allocwatch import __version__, config
from allocwatch.app import preflight, service, sitereport
from allocwatch.errors import EXIT_INTERNAL, AllocwatchError, OutputClosed, output_error
from allocwatch.top import args as topargs


class _Parser(argparse.ArgumentParser):
    """--help through _stdout: a help that cannot be written is exit 12 or 13 in one line,
    whatever the Python patch level (3.11.7's argparse drops the write error, and the flush
    at exit then fails with 120)."""

    def print_help(self, file: Any = None) -> None:
        if file is None:
            _stdout(self.format_help())
        else:
            super().print_help(file)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also read at build time to make the man page)."""
    ap = _Parser(prog="allocwatch", description="Live watchdog for memory-allocation stalls.")
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
    topargs.add_top_parser(sub)
    topargs.add_reload_parser(sub)
    return ap


def cmd_probes(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, {})
    _stdout(sitereport.site_report(cfg, args.tracefs, args.kallsyms, args.json))
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


def cmd_run(args: argparse.Namespace) -> int:
    overrides = {
        "threshold_s": args.threshold,
        "scan_interval_s": args.scan_interval,
        "metrics_addr": args.metrics_addr,
        "format": args.format,
        "output": args.output,
        "cgroups": args.cgroup,
        "socket_path": args.socket,
    }
    return service.run(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    if sys.stderr is None or sys.stderr is sys.__stderr__:  # not when a caller has replaced it
        sys.stderr = preflight.guard_stderr()  # diagnostics never fail, and never change the exit code
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except AllocwatchError as err:  # `--help > /dev/full`
        preflight.say(str(err))
        return err.exit_code
    except OSError as exc:  # `--version > /dev/full`
        _stdout_to_devnull()
        failed = output_error(exc)
        preflight.say(str(failed))
        return failed.exit_code
    if args.command == "probes" and args.kallsyms and not args.tracefs:
        parser.error("--kallsyms describes a captured kernel: give its --tracefs DIR too")
    if args.command == "reload" and not 0 < args.timeout <= 3600:  # NaN too
        parser.error("--timeout: give seconds, more than 0 and at most 3600")
    try:
        preflight.require_stdout()
        if args.command == "probes":
            return cmd_probes(args)
        if args.command == "top":  # imported only to run: `run` never loads curses (top/args.py)
            from allocwatch.top import command as topcmd

            return topcmd.cmd_top(args)
        if args.command == "reload":
            from allocwatch.top import reload as reloadcmd

            return reloadcmd.cmd_reload(args)
        return cmd_run(args)
    except AllocwatchError as err:
        preflight.say(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `allocwatch probes | head -1`
        _stdout_to_devnull()
        closed = OutputClosed("standard output was closed by its reader before everything was written")
        preflight.say(str(closed))
        return closed.exit_code
    except Exception as exc:  # a bug: say so plainly, with the exit code for it
        preflight.say(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
