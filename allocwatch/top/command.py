# SPDX-License-Identifier: Apache-2.0
"""`allocwatch top`: the live picture, from the daemon's socket or a session of its own.

It connects to the daemon's socket (`socket_path`, or `--socket`); when no
daemon answers there, it loads and attaches the programs itself, with the
daemon's own code, and its header says so. A socket it may not read is exit
15, not a reason to load a second copy; one served by a user it does not
trust is exit 19 (top/feed.py). What it prints goes through top/safetext.py.
SIGINT, SIGTERM and SIGHUP (the terminal closed) end it like q: the screen is given back and everything
attached is detached.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import sys
import threading
import time

from allocwatch import config
from allocwatch.app.signals import relay
from allocwatch.errors import ConfigError, NoSnapshot, NotPrivileged
from allocwatch.top import view
from allocwatch.top.feed import Feed, NoDaemon, SocketFeed, trusted_uids
from allocwatch.top.model import visible_rows
from allocwatch.top.safetext import terminal_text
from allocwatch.top.screen import Screen

FIRST_SNAPSHOT_TIMEOUT_S = 30.0


def _daemon_uid(cfg: config.Config) -> int | None:
    if not cfg.daemon_user:
        return None
    try:
        return pwd.getpwnam(cfg.daemon_user).pw_uid
    except KeyError:
        raise ConfigError(f"daemon_user: no user named {cfg.daemon_user!r} on this host") from None


def _feed(cfg: config.Config, path: str) -> Feed:
    trusted = trusted_uids(_daemon_uid(cfg))
    try:
        if not path:
            raise NoDaemon("socket_path is '' (no socket)")
        return SocketFeed(path, trusted)
    except NoDaemon as why:  # nothing answers there: the same code, in-process (its scans at top's --interval)
        from allocwatch.top.session import OwnSession

        try:
            return OwnSession(cfg, terminal_text(f"no daemon on {path or '-'}"))
        except NotPrivileged as err:
            raise NotPrivileged(f"{why}; top would start a session of its own, but {err}") from None


def _print_once(feed: Feed, as_json: bool, width: int) -> None:
    prev, doc = feed.frames()
    if doc is None:
        raise TimeoutError
    if as_json:  # ensure_ascii: every character outside printable ASCII (DEL and C1 too) as \uNNNN
        print(json.dumps(doc, ensure_ascii=True))
        return
    rows = visible_rows(doc)
    age = max(0.0, time.time() - doc["time_s"])
    for text, _ in view.frame_lines(doc, prev, rows, feed.source, age, width):
        print(terminal_text(text)[:width])


def cmd_top(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, {"scan_interval_s": args.interval})
    interval_s = cfg.scan_interval_s
    stop = threading.Event()
    # from the start: a signal while its own session loads ends it as cleanly as q
    old = relay({sig: stop for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)})  # no lock taken
    feed: Feed | None = None
    try:
        feed = _feed(cfg, args.socket if args.socket is not None else cfg.socket_path)
        if args.once or args.json:
            _wait_settled(feed, stop)
            if not stop.is_set():
                _print_once(feed, args.json, shutil.get_terminal_size((120, 24)).columns)
        elif not sys.stdout.isatty() or os.environ.get("TERM", "dumb") == "dumb":
            _plain_loop(feed, interval_s, stop)  # a dumb terminal: frames as text, one an interval
        else:
            Screen(feed, interval_s, stop).run()
    finally:
        if feed is not None:
            feed.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0


def _wait_settled(feed: Feed, stop: threading.Event) -> None:
    deadline = time.monotonic() + FIRST_SNAPSHOT_TIMEOUT_S
    while not stop.is_set() and not feed.wait_settled(0.2):
        if time.monotonic() >= deadline:
            break
    if not stop.is_set() and (feed.frames()[1] is None or feed.count < 2):
        raise NoSnapshot(f"top: no snapshot from {feed.source} within {FIRST_SNAPSHOT_TIMEOUT_S:.0f}s: "
                         f"{terminal_text(feed.closed or 'it sent none')}")


def _plain_loop(feed: Feed, interval_s: float, stop: threading.Event) -> None:
    while not stop.is_set():
        if feed.frames()[1] is not None:
            _print_once(feed, False, shutil.get_terminal_size((80, 24)).columns)
            print(flush=True)
        stop.wait(interval_s)
