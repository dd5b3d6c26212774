# SPDX-License-Identifier: Apache-2.0
"""Reads of /proc for one task: kernel stack, memory cgroup, state.

Every function takes the procfs root, so tests point it at a fake tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_PROCFS = Path("/proc")
# The inode number of the initial PID namespace: fixed since commit 98f842e675f9
# ("proc: Usable inode numbers for the namespace file descriptors") (v3.8),
# include/linux/proc_ns.h.
PROC_PID_INIT_INO = 0xEFFFFFFC


def read_bytes(path: str | Path) -> bytes | None:
    """The whole file, or None when it cannot be read. By descriptor, with no
    file object: a block of 10,000 tasks reads a stat file of each, and the
    buffered reader's set-up was a third of each read (13 us against 9 here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        first = os.read(fd, 8192)
        more = os.read(fd, 65536) if first else b""
        if not more:
            return first
        chunks = [first, more]
        while more:
            more = os.read(fd, 65536)
            chunks.append(more)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path: str | Path) -> str | None:
    """The file as text; bytes that are not UTF-8 kept as surrogates (the
    same decoding as comms from the BPF side), so nothing is lost."""
    raw = read_bytes(path)
    return None if raw is None else raw.decode("utf-8", "surrogateescape")


_read = read_text


def lines(text: str) -> list[str]:
    """The lines of a /proc, sysfs, tracefs or cgroupfs file, split at "\\n" only.

    str.splitlines() also breaks at \\r, \\x0b, \\x0c, \\x1c, \\x1d, \\x1e,
    U+0085, U+2028 and U+2029, all of which a task may put in a name it chooses
    (a cgroup directory, a comm): "/x\\x1cevil" would read as "/x". The kernel
    ends each line with "\\n" and nothing else."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


def read_lines(path: str | Path) -> list[str]:
    """`lines` of a file read as bytes (undecodable bytes kept as surrogates);
    OSError as open() raises it."""
    with open(path, "rb") as f:
        return lines(f.read().decode("utf-8", "surrogateescape"))


def foreign_pid_view(procfs: Path = DEFAULT_PROCFS, pid: int | None = None) -> str:
    """Why the tids the kernel gives BPF (bpf_get_current_pid_tgid: the initial
    PID namespace's) are not the ones this `procfs` names; "" when they are.

    Both must hold: this process is in the initial PID namespace (the inode of
    /proc/self/ns/pid, shown in its link "pid:[N]"), and `procfs` is mounted
    from that namespace (its "self" names this process's own pid). A /proc
    NSpid line cannot tell: a container's own /proc shows only its own pids."""
    pid = os.getpid() if pid is None else pid
    try:
        ns = os.readlink(procfs / "self" / "ns" / "pid")
    except OSError as exc:
        return f"cannot tell which PID namespace it is in: {procfs}/self/ns/pid: {exc.strerror}"
    if ns != f"pid:[{PROC_PID_INIT_INO}]":
        return f"runs in a PID namespace of its own ({ns}), not the host's"
    try:
        self_pid = os.readlink(procfs / "self")
    except OSError as exc:
        return f"{procfs} is not the host's: {procfs}/self: {exc.strerror}"
    if self_pid != str(pid):
        return f"{procfs} is mounted from another PID namespace: its 'self' is {self_pid}, this process is {pid}"
    return ""


def task_dir(procfs: Path, pid: int, tid: int) -> Path:
    return procfs / str(pid) / "task" / str(tid)


def task_file(procfs: Path, pid: int, tid: int, name: str) -> str:
    """A file of the task, as a string: a block of 10,000 tasks reads 50,000 of
    them, and building a Path each time cost more than the reads."""
    return f"{procfs}/{pid}/task/{tid}/{name}"


def kernel_stack(procfs: Path, pid: int, tid: int) -> list[str] | None:
    """Function names of the task's kernel stack, innermost first.

    None when it cannot be read (not root, task gone); an empty list when the
    task is running (the kernel cannot show a running task's stack).
    """
    text = _read(task_file(procfs, pid, tid, "stack"))
    if text is None:
        return None
    frames = []
    for line in lines(text):
        # "[<0>] mem_cgroup_oom_synchronize+0x1a5/0x1e0"
        sym = line.split("] ", 1)[-1].strip()
        name = sym.split("+", 1)[0].strip()
        if name:
            # interned: 10,000 tasks stalled at one site hold one copy of each name
            frames.append(sys.intern(name))
    return frames


def memory_cgroup(procfs: Path, pid: int, tid: int) -> str | None:
    """The task's memory cgroup path: the v1 memory hierarchy, else the v2 one."""
    text = _read(task_file(procfs, pid, tid, "cgroup"))
    if text is None:
        return None
    unified = None
    for line in lines(text):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if "memory" in parts[1].split(","):
            return sys.intern(parts[2])
        if parts[0] == "0" and parts[1] == "":
            unified = parts[2]
    return None if unified is None else sys.intern(unified)  # kept per wait: one copy a cgroup


def task_state(procfs: Path, pid: int, tid: int) -> str | None:
    """The one-letter state from /proc/<pid>/task/<tid>/stat (R, S, D, ...)."""
    text = _read(task_file(procfs, pid, tid, "stat"))
    if text is None:
        return None
    # comm may hold spaces and parentheses: the state follows the last ')'.
    rest = text.rsplit(")", 1)[-1].split()
    return rest[0] if rest else None


def blocked_thread(procfs: Path, tid: int) -> tuple[int, str, str | None] | None:
    """(pid, comm, wchan) of thread `tid` when it sleeps in D state, else None
    (running, sleeping interruptibly, or gone). /proc/<tid> names any thread."""
    text = _read(f"{procfs}/{tid}/stat")
    if text is None or ")" not in text:
        return None
    head, rest = text.rsplit(")", 1)
    fields = rest.split()
    if not fields or fields[0] != "D":
        return None
    tgid = next((ln.split()[1] for ln in lines(_read(f"{procfs}/{tid}/status") or "")
                 if ln.startswith("Tgid:") and len(ln.split()) == 2), None)
    if tgid is None or not tgid.isdigit():
        return None
    wchan = _read(f"{procfs}/{tid}/wchan")
    return int(tgid), head.split("(", 1)[-1], (wchan.strip() or None) if wchan and wchan.strip() != "0" else None


SO_ACCEPTCON = 0x10000  # /proc/net/unix Flags of a listening socket


def listening_unix_paths(procfs: Path, pid: int) -> list[str]:
    """The paths of the Unix sockets process `pid` listens on (its fds' socket
    inodes, named in /proc/PID/net/unix: its own network namespace); none when
    it is gone or not readable."""
    try:
        fds = os.listdir(procfs / str(pid) / "fd")
    except OSError:
        return []
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(procfs / str(pid) / "fd" / fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]") and link[8:-1].isdigit():
            inodes.add(int(link[8:-1]))
    out = []
    for line in lines(_read(procfs / str(pid) / "net" / "unix") or "")[1:]:
        f = line.split(None, 7)
        if len(f) == 8 and f[6].isdigit() and int(f[6]) in inodes and f[3].isalnum() and int(f[3], 16) & SO_ACCEPTCON:
            out.append(f[7])
    return out


def tasks_in_state(procfs: Path, state: str) -> list[tuple[int, int, str]]:
    """(pid, tid, comm) of every task whose state letter is `state`."""
    found = []
    try:
        pids = [int(p) for p in os.listdir(procfs) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(procfs / str(pid) / "task") if t.isdigit()]
        except OSError:
            continue
        for tid in tids:
            text = _read(task_file(procfs, pid, tid, "stat"))
            if text is None or ")" not in text:
                continue
            head, rest = text.rsplit(")", 1)
            fields = rest.split()
            if fields and fields[0] == state:
                # "pid (comm) S ...": comm is raw bytes, any of them, ')' too
                found.append((pid, tid, head.split("(", 1)[-1]))
    return found
