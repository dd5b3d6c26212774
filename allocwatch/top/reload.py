# SPDX-License-Identifier: Apache-2.0
"""`allocwatch reload`: ask the running daemon to read its configuration again,
and say how that went in the exit code (systemd's `ExecReload=`).

It connects to the daemon's socket as top does (with `--pid`, the socket that
process listens on, from /proc: the configuration file is not read, so a
broken one is the daemon's to refuse; else `--socket` or `socket_path`),
takes the pid of the process listening there from the kernel (SO_PEERCRED,
never a pid a message names),
notes the reload count of the latest snapshot, sends that process SIGHUP and
waits for a snapshot whose count is higher. It prints the daemon's own line and
exits 0 when the daemon reloaded, 3 when it refused the configuration (the
running one stays), 16 when no answer came in time. With `--pid` (systemd's
$MAINPID) the listening process must be that one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from allocwatch import config
from allocwatch.errors import ConfigError, NoSnapshot
from allocwatch.kernel.procfs import DEFAULT_PROCFS, listening_unix_paths
from allocwatch.top.feed import NoDaemon, SocketFeed
from allocwatch.top.safetext import terminal_text


class ReloadRefused(ConfigError):
    """The daemon read the file and refused it (exit 3, as a bad file is at start)."""


def reload_count(doc: dict[str, Any] | None) -> int:
    r = (doc or {}).get("reload")
    return int(r["seq"]) if isinstance(r, dict) and isinstance(r.get("seq"), int) else 0


def peer_pid(sock: socket.socket) -> int:
    """The pid of the process that listens on the other end, from the kernel."""
    pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return int(pid)


def reload(path: str, pid: int | None, timeout_s: float) -> str:
    """The daemon's line once it reloaded; ReloadRefused or NoSnapshot otherwise."""
    if not path:
        raise NoSnapshot("allocwatch reload needs the daemon's socket: socket_path is '' (no socket)")
    try:
        feed = SocketFeed(path)
    except NoDaemon as why:
        raise NoSnapshot(f"no reload: {why}") from None
    try:
        daemon = peer_pid(feed.sock)
        if pid is not None and pid != daemon:
            raise NoSnapshot(f"no reload: the process listening on {path} is pid {daemon}, not {pid}")
        deadline = time.monotonic() + timeout_s
        if not feed.wait_for(1, timeout_s) or feed.closed is not None:
            raise NoSnapshot(f"no reload: no snapshot from the daemon on {path} within {timeout_s:g}s"
                             + (f" ({feed.closed})" if feed.closed else ""))
        before = reload_count(feed.frames()[1])
        os.kill(daemon, signal.SIGHUP)
        while True:
            count = feed.count
            _, doc = feed.frames()
            if reload_count(doc) > before:
                said = terminal_text((doc or {})["reload"].get("said", ""))  # printed: no control character
                if not (doc or {})["reload"].get("ok"):
                    raise ReloadRefused(said)
                return said
            left = deadline - time.monotonic()
            if left <= 0 or feed.closed is not None:
                raise NoSnapshot(f"no reload: pid {daemon} did not say within {timeout_s:g}s that it reloaded"
                                 + (f" ({feed.closed})" if feed.closed else ""))
            feed.wait_for(count + 1, left)
    finally:
        feed.close()


def socket_of(pid: int, procfs: Path = DEFAULT_PROCFS) -> str:
    """The socket daemon `pid` serves top on: the one Unix socket it listens on."""
    paths = [p for p in listening_unix_paths(procfs, pid) if p.startswith("/")]
    if len(paths) != 1:
        raise NoSnapshot(f"no reload: pid {pid} listens on {len(paths)} socket(s) with a path, not one "
                         "(no daemon there, not allocwatch, or its socket_path is ''): give --socket")
    return paths[0]


def cmd_reload(args: argparse.Namespace) -> int:
    if args.socket is not None:
        path = args.socket
    elif args.pid is not None:
        path = socket_of(args.pid)
    else:
        path = config.load(args.config, {}).socket_path
    print(reload(path, args.pid, args.timeout), flush=True)
    return 0
