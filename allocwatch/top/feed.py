# SPDX-License-Identifier: Apache-2.0
"""Where `allocwatch top` gets its snapshots: the daemon's socket, or a session
of its own (top/session.py). Both give snapshot dicts (core/snapview.py).

`SocketFeed` connects, checks who answers, reads the hello, and keeps the
latest two snapshots from a reader thread, so the screen never waits on the
socket. It says why when it cannot: no daemon answers (`NoDaemon`: top then
starts its own session), the process that answers runs as a user top does not
trust (`UntrustedSocket`, exit 19: nothing it sent is read), or the daemon is
there and this user may not read it (`SocketRefused`, exit 15).

Trusted: root, the user running top, and `daemon_user` when one is configured
(SO_PEERCRED gives the uid the listening process had when it called listen()).
Another user's socket at the path (a name taken in a directory others may
write, before the daemon came) is refused before a byte of it is read.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

from allocwatch.core.snapview import HELLO_TYPE, SNAPSHOT_TYPE
from allocwatch.errors import AllocwatchError, SocketRefused, UntrustedSocket
from allocwatch.top.safetext import terminal_text

HELLO_TIMEOUT_S = 5.0
LINE_MAX_BYTES = 256 << 20  # a snapshot line longer than this is not allocwatch's
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def trusted_uids(daemon_uid: int | None = None) -> frozenset[int]:
    """Whose socket top reads: root, the user running top, and the configured daemon user."""
    return frozenset({0, os.geteuid()} | ({daemon_uid} if daemon_uid is not None else set()))


class NoDaemon(AllocwatchError):
    """Nothing listens on the socket (not an exit: top starts its own session)."""


class Feed:
    """The latest two snapshots, as dicts; `wait()` returns when a new one came."""

    source = ""
    settled_mono = 0.0  # CLOCK_MONOTONIC after which a snapshot shows everything (an own session names sleeps late)

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._latest: dict[str, Any] | None = None
        self._previous: dict[str, Any] | None = None
        self._count = 0
        self.last_put_mono = 0.0
        self.closed: str | None = None  # why the feed ended, if it did

    def put(self, doc: dict[str, Any]) -> None:
        with self._cond:
            self._previous, self._latest = self._latest, doc
            self._count += 1
            self.last_put_mono = time.monotonic()
            self._cond.notify_all()

    def end(self, why: str) -> None:
        with self._cond:
            self.closed = why
            self._cond.notify_all()

    def frames(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(previous, latest)."""
        with self._cond:
            return self._previous, self._latest

    @property
    def count(self) -> int:
        return self._count

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Until `count` snapshots have come in all (or the feed ended)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count >= count or self.closed is not None, timeout_s)

    def wait_settled(self, timeout_s: float) -> bool:
        """Until two snapshots have come (rates need two), the last after `settled_mono`."""
        with self._cond:
            return self._cond.wait_for(
                lambda: (self._count >= 2 and self.last_put_mono >= self.settled_mono) or self.closed is not None,
                timeout_s,
            )

    def close(self) -> None:
        pass


class SocketFeed(Feed):
    def __init__(self, path: str, trusted: frozenset[int] | None = None) -> None:
        super().__init__()
        self.path = path
        self.source = terminal_text(f"daemon {path}")
        self.hello: Mapping[str, Any] = {}
        self._sock = self._connect()
        self._check_peer(trusted if trusted is not None else trusted_uids())
        self._file = self._sock.makefile("rb")
        self.hello = self._first()
        self._thread = threading.Thread(target=self._read, name="top-feed", daemon=True)
        self._thread.start()

    @property
    def sock(self) -> socket.socket:
        """The connected socket (for its peer's credentials)."""
        return self._sock

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise SocketRefused(
                    f"cannot read the daemon's socket {terminal_text(self.path)}: {exc.strerror} (only root, "
                    "or members of the group named by socket_group, may)"
                ) from None
            raise NoDaemon(f"no daemon answers on {terminal_text(self.path)}: {exc.strerror or exc}") from None
        return s

    def _check_peer(self, trusted: frozenset[int]) -> None:
        """Before anything is read: the process that answers must run as a trusted user."""
        pid, uid, _ = _UCRED.unpack(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if uid not in trusted:
            self._sock.close()
            raise UntrustedSocket(
                f"{terminal_text(self.path)} is served by pid {pid} of uid {uid}, not by root, this user or "
                "daemon_user: not reading it (another user's socket in the daemon's place?)"
            )

    def _first(self) -> Mapping[str, Any]:
        self._sock.settimeout(HELLO_TIMEOUT_S)
        try:
            doc = json.loads(self._file.readline(LINE_MAX_BYTES) or b"null")
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("type") == "refused":
            self.close()
            raise SocketRefused(f"the daemon refused: {terminal_text(doc.get('error', ''))}")
        if not isinstance(doc, dict) or doc.get("type") != HELLO_TYPE:
            self.close()
            raise NoDaemon(f"no allocwatch hello on {terminal_text(self.path)}")
        self._sock.settimeout(None)
        return doc

    def _read(self) -> None:
        try:
            for line in iter(lambda: self._file.readline(LINE_MAX_BYTES), b""):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("type") == SNAPSHOT_TYPE:
                    self.put(doc)
            self.end("the daemon closed the socket (stopped, or this client fell behind)")
        except (OSError, ValueError) as exc:
            self.end(f"the daemon's socket failed: {exc}")

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
