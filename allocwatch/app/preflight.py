# SPDX-License-Identifier: Apache-2.0
"""Checks before loading BPF: capabilities, tracefs, stdout, stderr. Each
failure is a typed error whose message names the cause and the fix.

The mount rule: a configuration value never decides where something is
mounted. allocwatch mounts tracefs only at the kernel's standard place, only
when nothing is mounted there, and says so; any other configured path must
already be a tracefs mount point.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from allocwatch.errors import ForeignPidNamespace, NotPrivileged, OutputClosed, TracefsMissing
from allocwatch.kernel import mountinfo as mounts
from allocwatch.kernel import procfs

TRACEFS_STANDARD = Path("/sys/kernel/tracing")

# Capability numbers from include/uapi/linux/capability.h.
CAP_DAC_READ_SEARCH = 2
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38  # since v5.8 (980737282232, "capabilities: Introduce CAP_PERFMON")
CAP_BPF = 39  # since v5.8 (a17b53c4a4b5, "bpf, capability: Introduce CAP_BPF")
CAP_NAMES = {
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}


# -- capabilities -------------------------------------------------------------


def needed_capabilities(euid: int, cap_last_cap: int) -> list[int]:
    """What loading, attaching and reading stacks need on this kernel.

    CAP_BPF and CAP_PERFMON load tracing programs and attach them (perf
    events); CAP_SYS_ADMIN reads /proc/PID/stack (root-only since v4.20,
    f8a00cef1720) and is what kernels before v5.8 ask for everything. Off
    root, tracefs and /proc/PID/stack are mode 0400/0700 root files, so
    CAP_DAC_READ_SEARCH is needed to read them, and CAP_SYS_PTRACE to pass
    the ptrace access check on other users' stacks.
    """
    caps = [CAP_SYS_ADMIN]
    if cap_last_cap >= CAP_BPF:
        caps += [CAP_BPF, CAP_PERFMON]
    if euid != 0:
        caps += [CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]
    return sorted(caps)


def missing_capabilities(effective: int, euid: int, cap_last_cap: int) -> list[str]:
    return sorted(CAP_NAMES[c] for c in needed_capabilities(euid, cap_last_cap) if not effective >> c & 1)


def effective_caps(status: Path = Path("/proc/self/status")) -> int:
    for line in procfs.read_lines(status):
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _cap_last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return CAP_BPF


def require_capabilities(
    euid: int | None = None, effective: int | None = None, cap_last_cap: int | None = None
) -> None:
    euid = os.geteuid() if euid is None else euid
    effective = effective_caps() if effective is None else effective
    missing = missing_capabilities(effective, euid, _cap_last_cap() if cap_last_cap is None else cap_last_cap)
    if missing:
        who = "root" if euid == 0 else f"uid {euid}"
        raise NotPrivileged(
            f"allocwatch runs as {who} without {', '.join(missing)}: it needs them to load BPF programs, "
            "attach them and read kernel stacks; run it as root with its capabilities, or grant them "
            "(AmbientCapabilities= in a unit)"
        )


# -- tracefs --------------------------------------------------------------------


def ensure_tracefs(tracefs: Path, mountinfo: Path = mounts.MOUNTINFO) -> bool:
    """Check that `tracefs` is a tracefs mount; True if this call mounted it.

    Only the standard place is ever mounted, and only when nothing is mounted
    there. A configured path that is not a tracefs mount is an error.
    """
    fstype = mounts.fstype_at(os.path.realpath(tracefs), mounts.read(mountinfo))
    if fstype == "tracefs":
        return False
    standard = os.path.realpath(tracefs) == os.path.realpath(TRACEFS_STANDARD)
    if not standard:
        what = f"a {fstype} mount" if fstype else "not a mount point"
        raise TracefsMissing(
            f"tracefs: {_cut(str(tracefs))} is {what}, not tracefs; allocwatch mounts tracefs only at "
            f"{TRACEFS_STANDARD}: leave the key out, or give a path where tracefs is mounted"
        )
    if fstype is not None:
        raise TracefsMissing(
            f"{TRACEFS_STANDARD} has {fstype} mounted on it, not tracefs: allocwatch leaves it alone; "
            f"mount tracefs somewhere and give that path as tracefs"
        )
    import subprocess  # here only: the daemon never loads it otherwise (0.4 MiB with locale)

    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(TRACEFS_STANDARD)], capture_output=True, text=True, check=False
    )
    now = mounts.fstype_at(os.path.realpath(TRACEFS_STANDARD), mounts.read(mountinfo))
    if proc.returncode != 0 or now != "tracefs":
        why = (proc.stderr.strip().splitlines() or ["not mounted afterwards"])[-1]
        raise TracefsMissing(
            f"tracefs is not mounted at {TRACEFS_STANDARD} and mounting it failed ({why}): "
            f"mount it with 'mount -t tracefs nodev {TRACEFS_STANDARD}' (needs CONFIG_TRACING)"
        )
    return True


def _cut(text: str, limit: int = 80) -> str:
    text = text.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- stdout -----------------------------------------------------------------------


def require_stdout(fd: int = 1) -> None:
    """Reports go to `fd`: refuse to start when it is closed (`>&-`), before
    anything else is opened and could take its number."""
    try:
        os.fstat(fd)
    except OSError:
        raise OutputClosed(
            f"standard output (fd {fd}) is closed: reports would have nowhere to go; "
            "give the daemon a stdout (a file, a pipe, /dev/null, or the journal)"
        ) from None


# -- stderr -----------------------------------------------------------------------


def say(line: str) -> None:
    """One diagnostic line on standard error (main guards it: a full or closed stderr loses the line)."""
    print(f"allocwatch: {line}", file=sys.stderr, flush=True)


class DiagnosticStream(io.TextIOBase):
    """Standard error for the daemon's one-line diagnostics: each write goes
    straight to the fd and never raises. A stderr that is full (`2>/dev/full`),
    gone or non-blocking and full loses the line, counted in `lost`; the
    daemon goes on, and its exit code stays the one its cause decides."""

    def __init__(self, fd: int = 2) -> None:
        super().__init__()
        self._fd = fd
        self.lost = 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> int:
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:  # EPIPE, ENOSPC, EIO, EAGAIN: a diagnostic is not worth the daemon
            self.lost += 1
        return len(text)


def guard_stderr(fd: int = 2) -> DiagnosticStream:
    """The stream diagnostics go to. A stderr closed at start (`2>&-`) is given
    /dev/null first, so no file opened later takes its number (bcc and libbpf
    write their warnings to fd 2)."""
    try:
        os.fstat(fd)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)  # inheritable, as a standard stream is
            os.close(null)  # when it took a closed stdout's number, stdout stays closed
        else:  # the loader process (kernel/loader.py) gets it as its stderr, not as a free number
            os.set_inheritable(fd, True)
    return DiagnosticStream(fd)


def pid_view(run_anyway: bool, proc: Path = procfs.DEFAULT_PROCFS, pid: int | None = None) -> str:
    """"" when the kernel's tids are the ones `proc` names; else why not, or
    ForeignPidNamespace unless the configuration says to run anyway."""
    why = procfs.foreign_pid_view(proc, pid)
    if why and not run_anyway:
        raise ForeignPidNamespace(
            f"{why}: the kernel reports the host's tids, so this /proc cannot show the tasks it reports and the "
            "sites found by stack see nothing; run it in the host's PID namespace (hostPID in Kubernetes), "
            "or set foreign_pid_namespace: true to run with less")
    return why


def pid_namespace_note(why: str, blind_sites: list[str]) -> str | None:
    """The start-up line of a run in a foreign PID namespace (`why`), None in the host's."""
    if not why:
        return None
    lost = f"not attached: {', '.join(blind_sites)}; " if blind_sites else ""
    return (f"foreign_pid_namespace: true: {why}: {lost}the other sites' reports lack the task's stack, "
            "cgroup, uid and command line, and the cgroup filter and per-cgroup metrics see none of them")
