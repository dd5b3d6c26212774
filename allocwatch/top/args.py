# SPDX-License-Identifier: Apache-2.0
"""The command lines of `allocwatch top` and `allocwatch reload`, apart from their code.

cli.py parses every subcommand's arguments with these, and imports top/command.py
and top/reload.py only to run them: the daemon's own process (`allocwatch run`)
then never loads curses, top's views or its socket client (0.7 MiB of the
daemon's idle memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ANSWER_TIMEOUT_S = 30.0  # reload: how long to wait for the daemon's answer, by default


def add_top_parser(sub: Any) -> None:
    top = sub.add_parser("top", help="the live picture: who waits for memory now, where, for how long")
    top.add_argument("--interval", type=float, metavar="SECONDS", help="refresh (default 1; 0.05 to 60)")
    top.add_argument("--once", action="store_true", help="print one frame as text and exit")
    top.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    top.add_argument("--socket", metavar="PATH", help="the daemon's socket (default: socket_path)")
    top.add_argument("--config", type=Path, help="YAML configuration file (socket_path, thresholds)")


def add_reload_parser(sub: Any) -> None:
    rl = sub.add_parser("reload", help="make the running daemon read its configuration again; exit 3 if refused")
    rl.add_argument("--config", type=Path, help="YAML configuration file (for socket_path, without --pid)")
    rl.add_argument("--socket", metavar="PATH", help="the daemon's socket (default: the one --pid listens on, "
                    "else socket_path)")
    rl.add_argument("--pid", type=int, help="the daemon's pid (systemd: $MAINPID): its socket is found from /proc "
                    "and must be its own")
    rl.add_argument("--timeout", type=float, default=ANSWER_TIMEOUT_S, metavar="SECONDS",
                    help=f"how long to wait for the daemon's answer (default {ANSWER_TIMEOUT_S:g})")
