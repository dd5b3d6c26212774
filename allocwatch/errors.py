# SPDX-License-Identifier: Apache-2.0
"""Typed errors. Library code raises these; only the CLI turns them into a
message and an exit code (listed in docs/exit-codes.md)."""

from __future__ import annotations

import errno


class AllocwatchError(Exception):
    """Base class: `str(err)` is one line naming the cause and the fix."""

    exit_code = 1


class ConfigError(AllocwatchError):
    """An unknown or ill-typed configuration key or flag value."""

    exit_code = 3


class ConfigUnreadable(AllocwatchError):
    exit_code = 4


class NotPrivileged(AllocwatchError):
    """Not root, or root without the capabilities BPF needs."""

    exit_code = 5


class BccMissing(AllocwatchError):
    exit_code = 6


class KernelHeadersMissing(AllocwatchError):
    exit_code = 7


class TracefsMissing(AllocwatchError):
    exit_code = 8


class BpfUnavailable(AllocwatchError):
    """The bpf() syscall or program load was refused."""

    exit_code = 9


class NothingAttached(AllocwatchError):
    exit_code = 10


class MetricsPortInUse(AllocwatchError):
    """The metrics address cannot be bound (in use, or not an address of this host)."""

    exit_code = 11


class OutputClosed(AllocwatchError):
    """Standard output is closed, or its reader has gone (EPIPE)."""

    exit_code = 12


class OutputFailed(AllocwatchError):
    """A report could not be written: full disk, I/O error."""

    exit_code = 13


class SocketUnavailable(AllocwatchError):
    """The socket for `allocwatch top` cannot be made: in use, a wrong file there, or its group unknown."""

    exit_code = 14


class SocketRefused(AllocwatchError):
    """`allocwatch top`: the daemon's socket is there but this user may not read it."""

    exit_code = 15


class NoSnapshot(AllocwatchError):
    """`allocwatch top --once/--json`: the daemon answered but sent no snapshot in time."""

    exit_code = 16


class ForeignPidNamespace(AllocwatchError):
    """The kernel's tids are not the ones this /proc names: a PID namespace of its
    own, or a /proc from another one. Blind to what it must report."""

    exit_code = 17


class UntrustedSocket(AllocwatchError):
    """`allocwatch top`: the process that answers on the socket runs as a user top does not
    trust (not root, not top's own user, not `daemon_user`): not read."""

    exit_code = 19


def output_error(exc: OSError, name: str = "standard output", then: str = "") -> AllocwatchError:
    """The typed error for a write to `name` that failed with `exc`."""
    if exc.errno in (errno.EPIPE, errno.EBADF, errno.ECONNRESET):
        return OutputClosed(f"{name} was closed by its reader ({exc.strerror})" + (f": {then}" if then else ""))
    return OutputFailed(f"cannot write to {name}: {exc.strerror or exc}")


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
