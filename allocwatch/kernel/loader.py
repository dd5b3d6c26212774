# SPDX-License-Identifier: Apache-2.0
"""Compile and attach in a process of its own, which hands the fds over and exits.

bcc's module maps LLVM and clang into whatever process imports it: some
11 MiB of written pages (relocations) that stay for that process's whole run,
a quarter of the daemon's memory budget. So the daemon loads the programs in a
child (`child_command`: bpfsource.loader_main on one end of a socket pair):
the child compiles, loads and attaches exactly as in-process
(kernel/bpfsource.py), then sends the daemon what it made: the maps',
programs' and attachments' fds (SCM_RIGHTS) and how each site ended up. It
leaves with os._exit, without bcc's clean-up: that disables each perf event
(PERF_EVENT_IOC_DISABLE acts on the event, which the daemon's fd shares) and
detaches what it attached. An attachment lives for as long as any process
holds its fd, and the daemon now holds them all.

If the daemon dies before it has them, the kernel frees the fds still in the
socket, and with them the programs: nothing stays attached.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocwatch.errors import BccMissing, BpfUnavailable, KernelHeadersMissing

FDS_A_MESSAGE = 250  # SCM_MAX_FD is 253
# what a read takes; the socket's send buffer (some 200 KiB) bounds a message, and a handover is some 20 KB
MESSAGE_BYTES = 1 << 20
WAIT_SECONDS = 300.0  # a compile takes 1 to 10 s here; a guest with 2 slow CPUs, more
END_SECONDS = 10.0  # from the handover to the child's exit
ERRORS = {e.__name__: e for e in (BccMissing, BpfUnavailable, KernelHeadersMissing)}
# What the loader ignores: the daemon decides when to stop. A stop sent to the
# whole group (a service manager's stop, a Ctrl-C) finds the load finished and
# handed over, and the daemon then detaches it; should the daemon die instead,
# the handover fails and nothing stays attached.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Handover:
    """What the loader made, but the fds: they follow in this order (maps,
    programs, attachments, then the task iterator's link if there is one)."""

    maps: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    attachments: int = 0
    iter_link: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # the source's attributes as the load left them
    fd_messages: int = 0


def load_in_child(request: tuple[Any, ...]) -> tuple[Handover, list[int]]:
    """Run the loader on `request` (plans, features, options, kprobes): what it
    hands over, and the fds, now this process's. Raises the error the load
    raised in the child (BpfUnavailable and the like), or BpfUnavailable when
    the child ended without a word."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine:
        try:
            theirs.set_inheritable(True)  # the only fd the child gets but 0 to 2
            child = _Child(os.posix_spawn(sys.executable, child_command(theirs.fileno()), os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),  # stdout may be the daemon's report stream
            ], setsigmask=STOP_SIGNALS))  # held from the first instruction: see bpfsource.loader_main
        finally:
            theirs.close()
        try:
            mine.settimeout(WAIT_SECONDS)
            mine.sendall(pickle.dumps(request))
            got = _receive(mine, child)
        except BaseException as exc:
            child.kill()  # what it made, if anything, goes with it
            if isinstance(exc, (OSError, EOFError, pickle.UnpicklingError)):  # a pipe broken, a message cut
                raise BpfUnavailable(f"the loader process could not hand the programs over: {exc}") from None
            raise
        child.reap()
        for fd in got[1]:
            os.set_inheritable(fd, False)  # SCM_RIGHTS gives them without close-on-exec
        return got


class _Child:
    """The loader process, waited for once: its pid is never signalled after."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None  # its exit code once reaped (None: killed here)
        self._reaped = False

    def reap(self) -> int | None:
        """Wait for it to end (it leaves as soon as it has sent), killing it after END_SECONDS."""
        deadline = time.monotonic() + END_SECONDS
        while not self._reaped:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self._reaped, self.code = True, os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                self.kill()
            else:
                time.sleep(0.01)
        return self.code

    def kill(self) -> None:
        if not self._reaped:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self._reaped = True


def child_command(fd: int) -> list[str]:
    """This Python, isolated (no environment variable, no user site, no current
    directory on its path) and writing no bytecode, running this very package's
    loader on socket `fd`: the package's directory goes first on the path only
    where it is not on it already (a checkout; not site-packages, which would
    then come before the standard library)."""
    root = str(Path(__file__).resolve().parents[2])  # where this process found the package
    code = (f"import sys; {root!r} in sys.path or sys.path.insert(0, {root!r}); "
            f"from allocwatch.kernel.bpfsource import loader_main; loader_main({fd})")
    return [sys.executable, "-I", "-B", "-c", code]


def _receive(sock: socket.socket, child: _Child) -> tuple[Handover, list[int]]:
    try:
        data, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 0)
    except TimeoutError:
        raise BpfUnavailable(f"the loader process handed nothing over in {WAIT_SECONDS:.0f} s") from None
    except ConnectionResetError:  # it died with the request unread
        data, fds = b"", []
    if not data:
        raise BpfUnavailable(f"the loader process ended (exit code {child.reap()}) without handing the programs "
                             "over; its own words, if any, are on stderr above")
    said = pickle.loads(data)
    if isinstance(said, tuple):  # (error class name, message)
        raise ERRORS.get(said[0], BpfUnavailable)(said[1])
    handover: Handover = said
    got: list[int] = list(fds)
    try:
        for _ in range(handover.fd_messages):
            _, more, flags, _ = socket.recv_fds(sock, 1, FDS_A_MESSAGE)
            got += more
            if flags & socket.MSG_CTRUNC:  # the kernel dropped fds this process had no room for
                raise BpfUnavailable("the fds the loader process handed over did not all arrive "
                                     "(MSG_CTRUNC: is the open-file limit too low?)")
            if not more:
                raise BpfUnavailable("the loader process stopped midway through handing its fds over")
    except BaseException:
        for fd in got:
            os.close(fd)
        raise
    return handover, got


def read_request(sock: socket.socket) -> tuple[Any, ...]:
    """The child's side: what to load (plans, features, options, kprobes)."""
    return tuple(pickle.loads(sock.recv(MESSAGE_BYTES)))


def send_error(sock: socket.socket, exc: Exception) -> None:
    """The child's side: the load failed, with this error (raised again in the daemon)."""
    sock.sendall(pickle.dumps((type(exc).__name__, str(exc))))


def send_handover(sock: socket.socket, handover: Handover, fds: list[int]) -> None:
    """The child's side: what it made, then the fds, FDS_A_MESSAGE at a time."""
    chunks = [fds[i:i + FDS_A_MESSAGE] for i in range(0, len(fds), FDS_A_MESSAGE)]
    handover.fd_messages = len(chunks)
    socket.send_fds(sock, [pickle.dumps(handover)], [])
    for chunk in chunks:
        socket.send_fds(sock, [b"."], chunk)


def leave(code: int) -> None:
    """The child's end: never bcc's atexit clean-up (see above), even when stderr cannot be written."""
    try:
        sys.stderr.flush()
    except BaseException:  # a full or closed stderr must not turn this into a normal exit
        pass
    finally:
        os._exit(code)
