# SPDX-License-Identifier: Apache-2.0
"""Compile and attach in a process of its own, which hands the fds over and exits.

bcc's module maps LLVM and clang into whatever process imports it: some
11 MiB of written pages (relocations) that stay for that process's whole run,
a quarter of the daemon's memory budget. So the daemon loads the programs in a
child (`python -m allocwatch.kernel.loader FD`): the child compiles, loads and
attaches exactly as in-process (kernel/bpfsource.py), then sends the daemon,
over a socket pair, what it made: the maps', programs' and attachments' fds
(SCM_RIGHTS) and how each site ended up. It leaves with os._exit, without
bcc's clean-up, which would detach what it attached: an attachment lives for
as long as any process holds its fd, and the daemon now holds them all.

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
MESSAGE_BYTES = 1 << 20  # the largest handover seen is some 20 KB
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
            pid = os.posix_spawn(sys.executable, child_command(theirs.fileno()), os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),  # stdout may be the daemon's report stream
            ], setsigmask=STOP_SIGNALS)  # held from the first instruction: see bpfsource.loader_main
        finally:
            theirs.close()
        try:
            mine.settimeout(WAIT_SECONDS)
            mine.sendall(pickle.dumps(request))
            return _receive(mine, pid)
        finally:
            _reap(pid)


def _reap(pid: int) -> int | None:
    """Wait for the child to end (it leaves as soon as it has sent), killing it
    after END_SECONDS; its exit code, or None when it was killed."""
    deadline = time.monotonic() + END_SECONDS
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def child_command(fd: int) -> list[str]:
    """This Python, isolated (no environment variable, no user site, no current
    directory on its path), running this very package's loader on socket `fd`."""
    root = str(Path(__file__).resolve().parents[2])  # where this process found the package
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            f"from allocwatch.kernel.bpfsource import loader_main; loader_main({fd})")
    return [sys.executable, "-I", "-c", code]


def _receive(sock: socket.socket, pid: int) -> tuple[Handover, list[int]]:
    try:
        data, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 0)
    except TimeoutError:
        raise BpfUnavailable(f"the loader process handed nothing over in {WAIT_SECONDS:.0f} s") from None
    except ConnectionResetError:  # it died with the request unread
        data, fds = b"", []
    if not data:
        raise BpfUnavailable(f"the loader process ended (exit code {_reap(pid)}) without handing the programs "
                             "over; its own words, if any, are on stderr above")
    said = pickle.loads(data)
    if isinstance(said, tuple):  # (error class name, message)
        raise ERRORS.get(said[0], BpfUnavailable)(said[1])
    handover: Handover = said
    got: list[int] = list(fds)
    try:
        for _ in range(handover.fd_messages):
            _, more, _, _ = socket.recv_fds(sock, 1, FDS_A_MESSAGE)
            if not more:
                raise BpfUnavailable("the loader process stopped midway through handing its fds over")
            got += more
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
    """The child's end: not bcc's atexit clean-up, which would detach what the daemon now holds."""
    sys.stderr.flush()
    os._exit(code)
