# SPDX-License-Identifier: Apache-2.0
"""The daemon's Unix socket for `allocwatch top`: a hello, then one snapshot per scan.

Each line is one JSON object (core/snapview.py): first `hello` (version,
kernel, coverage), then a `snapshot` after every scan. `publish()` returns at
once: it hands the snapshot to the socket's own thread through a queue of
QUEUE_SNAPSHOTS (a snapshot that finds it full is dropped and counted), and
that thread renders it once into one frame (the line's bytes) that every client
shares: nothing is copied per client. A client holds at most two frames: the
one it is being sent (with how far it has got) and the latest that came since,
which it begins once the first is done, so a client that is behind skips to the
newest snapshot at a line boundary. What the clients make the daemon hold is at
most one frame each and the latest, however long they stay. One that has not
finished a frame for `max_behind_s` while newer ones came has fallen behind: it
is closed and counted, never waited for.

Who may read: the socket is mode 0600 (0660 with `socket_group`), owned by
the daemon's user, in a directory made 0700 (0750) when it does not exist
(an existing private one, 0700 or 0750 and the daemon's, gets the group too);
and each client's credentials (SO_PEERCRED) are checked again on accept: root,
the daemon's own user, or a member of the group. Anyone else gets one line
saying so and is closed.

Where: every directory from / down to the socket's, symlinks followed as the
kernel does, must be root's or the daemon's, and the socket's own may be
written by nobody else. A sticky directory others may write (/tmp) is only
passed through, towards a directory of the daemon's: in it, another user could
take the socket's name first (`check_location`, a ConfigError: exit 3, which
systemd does not restart). The directory's owner and mode are changed through a
descriptor opened without following a symlink, the socket is bound with its
final mode (umask) and its group set with lchown; a socket left by a daemon
that died is removed only when it is the daemon's own, and at exit the path is
removed only while it still names the socket bound (device and inode).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import selectors
import socket
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from allocwatch.core.snapshot import Snapshot
from allocwatch.core.snapview import snapshot_dict
from allocwatch.errors import ConfigError, SocketUnavailable

QUEUE_SNAPSHOTS = 2  # scans the socket thread may lag behind before snapshots are dropped
DEFAULT_MAX_BEHIND_S = 10.0  # a client that finishes no frame this long while newer ones come is closed
DEFAULT_MAX_CLIENTS = 16
REFUSED_TYPE = "refused"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SYMLINKS_MAX = 40  # as the kernel's path walk (MAXSYMLINKS)


def _line(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


def group_id(name: str) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SocketUnavailable(f"socket_group: no group named {name!r} on this host") from None


def may_read(uid: int, gid: int, group: int | None, own_uid: int) -> bool:
    """Root, the daemon's own user, or (with a group) a member of it, by primary or listed membership."""
    if uid in (0, own_uid):
        return True
    if group is None:
        return False
    if gid == group:
        return True
    try:
        return pwd.getpwuid(uid).pw_name in grp.getgrgid(group).gr_mem
    except KeyError:
        return False


def _others_write(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o022)


def _unsafe(path: str, why: str) -> ConfigError:
    return ConfigError(
        f"socket_path: {path} {why}: another user could put a socket of their own in the daemon's place; "
        "choose a directory only root or the daemon's user may write, such as /run/allocwatch"
    )


def _absolute(d: Path) -> str:
    """Not normalised: `..` after a symlink is the symlink's target's parent, as the kernel sees it."""
    return str(d) if str(d).startswith("/") else f"{os.getcwd()}/{d}"


def check_location(d: Path, uid: int | None = None, made_below: bool = False) -> os.stat_result:
    """The socket's directory `d`, walked from / as the kernel walks it (symlinks
    followed): each directory must belong to root or `uid` (the daemon's), and
    one others may write is passed only when it is sticky and the entry taken
    from it is root's or the daemon's. `d` itself may be written by nobody else:
    in a sticky directory another user could still take the socket's name first
    (`made_below`: `d` is where the daemon is to make its own directory, so it may
    be sticky). Returns the lstat of the directory `d` names; a ConfigError (exit 3)
    when another user could put a socket in the daemon's place."""
    own = {0, os.geteuid() if uid is None else uid}
    todo = [p for p in _absolute(d).split("/") if p]
    cur, cur_st, hops = "/", os.lstat("/"), 0
    if cur_st.st_uid not in own:
        raise _unsafe("/", f"belongs to uid {cur_st.st_uid}")
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            cur = os.path.dirname(cur)  # cur holds no symlink, and every directory above it was checked
            cur_st = os.lstat(cur)
            continue
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except OSError as exc:
            raise SocketUnavailable(f"socket_path: {nxt}: {exc.strerror}") from None
        sticky = bool(cur_st.st_mode & stat.S_ISVTX)
        if _others_write(cur_st) and not (sticky and st.st_uid in own):
            raise _unsafe(cur, "may be written by other users"
                          + (f", and {nxt} is uid {st.st_uid}'s" if sticky else ""))
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > SYMLINKS_MAX:
                raise SocketUnavailable(f"socket_path: {d}: too many levels of symbolic links")
            target = os.readlink(nxt)
            todo[:0] = [p for p in target.split("/") if p]
            if target.startswith("/"):
                cur, cur_st = "/", os.lstat("/")
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise SocketUnavailable(f"socket_path: {nxt} is not a directory")
        if st.st_uid not in own:
            raise _unsafe(nxt, f"belongs to uid {st.st_uid}")
        cur, cur_st = nxt, st
    sticky = bool(cur_st.st_mode & stat.S_ISVTX)
    if _others_write(cur_st) and not (made_below and sticky):
        where = cur if cur == _absolute(d) else f"{d} ({cur})"
        raise _unsafe(where, "may be written by other users"
                      + (" (sticky is not enough: the socket's name could be taken first)" if sticky else ""))
    return cur_st


def check_socket_path(path: str) -> None:
    """At start, before anything is made: the place of the socket (check_location).
    A directory still to be made is checked again once made (it could be taken first)."""
    d = Path(path).parent
    if os.path.lexists(d):
        check_location(d)
    elif os.path.lexists(d.parent):
        check_location(d.parent, made_below=True)


def _prepare_dir(d: Path, gid: int | None) -> bool:
    """True when it made the directory (and so removes it again at exit)."""
    mode = 0o750 if gid is not None else 0o700
    try:
        d.mkdir(mode=mode)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        raise SocketUnavailable(f"socket_path: cannot make the directory {d}: {exc.strerror}") from None
    try:
        st = check_location(d)
        # A directory of the daemon's own (mode 0700 or 0750, as systemd's RuntimeDirectory=
        # makes it) is given to the group too; a shared one such as /run is never changed.
        private = st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) in (0o700, 0o750)
        if made or (private and gid is not None):
            _set_dir_mode(d, st, mode, gid)
    except BaseException:
        if made:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return made


def _set_dir_mode(d: Path, checked: os.stat_result, mode: int, gid: int | None) -> None:
    """Owner and mode through a descriptor of the very directory checked: no symlink followed."""
    fd = os.open(os.path.realpath(d), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
            raise SocketUnavailable(f"socket_path: {d} changed while it was made ready")
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # whatever the umask
    finally:
        os.close(fd)


def _clear_stale(path: Path) -> None:
    """A socket left by a daemon that died is removed when it is this user's; a live
    one, another user's or another file is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketUnavailable(f"socket_path: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno != errno.ECONNREFUSED:
            raise SocketUnavailable(f"socket_path: {path}: {exc.strerror or exc}") from None
        if st.st_uid != os.geteuid():
            raise SocketUnavailable(
                f"socket_path: {path} is uid {st.st_uid}'s socket, not this user's: not removed"
            ) from None
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            path.unlink()
        return
    finally:
        probe.close()
    raise SocketUnavailable(f"socket_path: another allocwatch answers on {path}")


class _Client:
    """What the socket thread keeps for one client: the frame it is being sent
    and how much of it has gone, and the latest frame that came since. Frames
    are the bytes every client shares; none is copied here."""

    __slots__ = ("behind_since_ns", "frame", "next", "sent", "sock")

    def __init__(self, sock: socket.socket, first: bytes) -> None:
        self.sock = sock
        self.frame: bytes | None = first  # being sent, from `sent` on
        self.sent = 0
        self.next: bytes | None = None  # the latest frame, begun when `frame` is done
        self.behind_since_ns: int | None = None  # a newer frame has waited since then

    def offer(self, frame: bytes, now_ns: int) -> None:
        """The newest frame: begun at once when none is being sent, else it waits in place
        of any frame waiting (skipped: the client sees the newest at a line boundary)."""
        if self.frame is None:
            self.frame, self.sent = frame, 0
            return
        self.next = frame
        if self.behind_since_ns is None:
            self.behind_since_ns = now_ns

    def behind_for_ns(self, now_ns: int) -> int:
        return 0 if self.behind_since_ns is None else now_ns - self.behind_since_ns

    def send(self) -> None:
        """As much as the socket takes (raises what send() raises); a frame done begins the next."""
        while self.frame is not None:
            self.sent += self.sock.send(memoryview(self.frame)[self.sent:])
            if self.sent < len(self.frame):
                return
            self.frame, self.sent, self.next, self.behind_since_ns = self.next, 0, None, None

    def frames(self) -> tuple[bytes, ...]:
        return tuple(f for f in (self.frame, self.next) if f is not None)


class SocketServer:
    """Listening from construction on; `close()` stops the thread and removes the socket."""

    def __init__(
        self,
        path: str,
        group: str = "",
        max_behind_s: float = DEFAULT_MAX_BEHIND_S,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        render: Callable[[Snapshot], Mapping[str, Any]] = snapshot_dict,
        on_error: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.path = Path(path)
        self._gid = group_id(group)
        self._group = group
        self._max_behind_ns = int(max_behind_s * 1e9)
        self._max_clients = max_clients
        self._render = render
        self._on_error = on_error  # said once; the socket goes on without that snapshot
        self.render_failed = 0
        self._hello = _line({"type": "hello"})
        self._queue: deque[Snapshot] = deque()
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}
        self.clients_dropped = 0  # fell behind
        self.clients_refused = 0  # not allowed, or too many
        self.snapshots_dropped = 0  # the socket thread itself fell behind
        self._listener = self._listen()
        bound = os.lstat(self.path)
        self._bound = (bound.st_dev, bound.st_ino)  # what close() may remove
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="socket", daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        self._made_dir = _prepare_dir(self.path.parent, self._gid)
        _clear_stale(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o117 if self._gid is not None else 0o177)  # bound with its final mode: no chmod after
        try:
            s.bind(str(self.path))
        except OSError as exc:
            s.close()
            raise SocketUnavailable(f"socket_path: cannot listen on {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        if self._gid is not None:
            os.chown(self.path, -1, self._gid, follow_symlinks=False)
        s.listen(8)
        return s

    # -- the scan loop's side: never blocks --------------------------------------

    def set_hello(self, hello: Mapping[str, Any]) -> None:
        self._hello = _line(hello)

    def stats(self) -> dict[str, int]:
        return {"clients_dropped": self.clients_dropped, "clients_refused": self.clients_refused,
                "snapshots_dropped": self.snapshots_dropped + self.render_failed}

    def held_bytes(self) -> int:
        """The bytes of the frames the clients hold, each frame counted once (a read from
        another thread: a moment's figure)."""
        frames = {id(f): len(f) for c in list(self._clients.values()) for f in c.frames()}
        return sum(frames.values())

    def wanted(self) -> bool:
        """Somebody listens: the daemon then reads the live view (a plain read, no lock)."""
        return bool(self._clients)

    def publish(self, snap: Snapshot) -> None:
        if not self._clients:
            return
        with self._lock:
            if len(self._queue) >= QUEUE_SNAPSHOTS:
                self.snapshots_dropped += 1
                return
            self._queue.append(snap)
        self._wake()

    def _wake(self) -> None:
        if self._closing:  # the pipe is close()'s now, and may be closed
            return
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the socket thread and remove the socket. The wake pipe is closed
        here, once the thread has ended: closed by the thread, a wake written
        after it would go to a closed descriptor, or to a file that reused it."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == self._bound:  # ours, not a successor's or another file
                self.path.unlink()
        if self._made_dir:
            with contextlib.suppress(OSError):  # not empty: somebody else's files, left alone
                self.path.parent.rmdir()

    # -- the socket thread -----------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._closing:
                for key, events in sel.select(timeout=1.0):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        self._fan_out(sel)
                    else:
                        self._service(sel, key.data, events)
        finally:
            for c in list(self._clients.values()):
                self._drop(sel, c)
            sel.close()
            self._listener.close()

    def _refuse(self, conn: socket.socket, why: str) -> None:
        self.clients_refused += 1
        with contextlib.suppress(OSError):
            conn.send(_line({"type": REFUSED_TYPE, "error": why}))  # one small line: fits the socket buffer
        conn.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if not may_read(uid, gid, self._gid, os.geteuid()):
            who = f"root or members of group {self._group}" if self._group else "root"
            return self._refuse(conn, f"uid {uid} may not read allocwatch's socket: only {who} may")
        if len(self._clients) >= self._max_clients:
            return self._refuse(conn, f"too many clients ({self._max_clients}) already")
        conn.setblocking(False)
        c = _Client(conn, self._hello)
        self._clients[conn.fileno()] = c
        sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def _fan_out(self, sel: selectors.BaseSelector) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                snap = self._queue.popleft()
            if not self._clients:
                continue
            try:
                data = _line(self._render(snap))
            except Exception as exc:  # a bug: the snapshot is lost, the socket and the scans go on
                self.render_failed += 1
                if self.render_failed == 1:
                    self._on_error(f"internal error: cannot render a snapshot for top: {type(exc).__name__}: {exc}")
                continue
            for c in list(self._clients.values()):
                c.offer(data, snap.mono_ns)
                if c.behind_for_ns(snap.mono_ns) > self._max_behind_ns:  # no frame done for that long
                    self.clients_dropped += 1
                    self._drop(sel, c)
                    continue
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

    def _service(self, sel: selectors.BaseSelector, c: _Client, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                if not c.sock.recv(4096):  # the client went away (it never needs to write)
                    return self._drop(sel, c)
            except BlockingIOError:
                pass
            except OSError:
                return self._drop(sel, c)
        if events & selectors.EVENT_WRITE:
            try:
                c.send()
            except BlockingIOError:
                return
            except OSError:
                return self._drop(sel, c)
        if c.frame is None:
            sel.modify(c.sock, selectors.EVENT_READ, c)

    def _drop(self, sel: selectors.BaseSelector, c: _Client) -> None:
        self._clients.pop(c.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        c.sock.close()
