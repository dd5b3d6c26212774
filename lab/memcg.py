# SPDX-License-Identifier: Apache-2.0
"""Real memory cgroups and memory hogs for kernel tests and benchmarks.

``MemCgroup`` makes a child memory cgroup for one test and always removes it
again; ``Hog`` is a child process that allocates and touches anonymous memory
when told to; ``stall_indefinitely`` / ``release`` hold many tasks in the
memcg OOM wait (cgroup v1) and let them go.

Which cgroup version is used:

* cgroup v1: the ``memory`` hierarchy is mounted (normally at
  /sys/fs/cgroup/memory). The group is made under this process's own memcg,
  the path on the ``N:memory:/path`` line of /proc/self/cgroup.
* cgroup v2: a cgroup2 mount whose root lists ``memory`` in
  cgroup.controllers (normally /sys/fs/cgroup). The "no internal processes"
  rule means a cgroup that has processes of its own (the root excepted) cannot
  hand the memory controller to its children, and this process normally lives
  in such a leaf (a session scope, a container's cgroup). So the group is made
  under the nearest cgroup on the path from this process's own cgroup up to
  the root that can give children the memory controller: one that already has
  ``memory`` in cgroup.subtree_control, or failing that, one with no processes
  (or the root) where writing ``+memory`` to cgroup.subtree_control succeeds.
  Under systemd that is usually the user slice or the service's slice. The
  ``+memory`` written there is left in place on exit: other groups may rely on
  it, and turning it off would strip their memory.* files. No process is ever
  moved to make room. If no such cgroup exists (a container whose cgroup
  namespace root has processes), the constructor raises an error that says
  so; run the tests from a delegated sub-tree then.

The standard library, and the product's mountinfo parser.
"""

from __future__ import annotations

import atexit
import errno
import os
import secrets
import select
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from allocwatch.kernel import mountinfo, procfs

__all__ = [
    "HOG_SOURCE",
    "CgroupError",
    "Hog",
    "MemCgroup",
    "NeedsCgroupVersion",
    "hog_command",
    "kernel_stack",
    "memory_controller_version",
    "proc_state",
    "release",
    "stall_indefinitely",
]

MIB = 1 << 20


class CgroupError(RuntimeError):
    """A memory cgroup cannot be made, used or removed here."""


class NeedsCgroupVersion(CgroupError):
    """A knob of the other cgroup version was asked for. Tests say which version
    they need with a marker (requires_cgroup_v1_memory, requires_cgroup_v2_memory),
    decided before they run, with `memory_controller_version()`."""


# --------------------------------------------------------------------------
# Finding the memory controller


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) for every cgroup mount."""
    cgroups = (m for m in mountinfo.read() if m.fstype in ("cgroup", "cgroup2"))
    return [(m.fstype, m.root, m.point, set(m.superopts)) for m in cgroups]


def _own_cgroups() -> dict[str, str]:
    """Controller list ("memory", "" for v2, ...) -> path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in procfs.read_lines("/proc/self/cgroup"):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        for c in controllers.split(","):
            if c:
                paths[c] = path
    return paths


def _join(mount_point: str, mount_root: str, cg_path: str) -> Path:
    """The directory of cgroup `cg_path` (as /proc shows it) under a mount of `mount_root`."""
    rel = cg_path
    if mount_root not in ("", "/"):
        if cg_path == mount_root:
            rel = "/"
        elif cg_path.startswith(mount_root.rstrip("/") + "/"):
            rel = cg_path[len(mount_root.rstrip("/")) :]
    return Path(mount_point) / rel.lstrip("/")


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _write(path: Path, value: str) -> None:
    """One write(2) of `value`; the error names the file and the value."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise OSError(e.errno, f"opening {path} to write {value!r}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"writing {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _keyed(path: Path) -> dict[str, int]:
    """A "key value" per line file (memory.oom_control, memory.events)."""
    out: dict[str, int] = {}
    for line in procfs.lines(_read(path)):
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _pids_in(directory: Path) -> list[int]:
    try:
        text = _read(directory / "cgroup.procs")
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def _controller() -> tuple[int, Path, Path, str]:
    """(version, top of its mount, this process's own cgroup directory there, that
    cgroup's path as /proc shows it) of the memory controller groups are made under."""
    own = _own_cgroups()
    mounts = _mounts()
    if "memory" in own:
        for fstype, root, point, opts in mounts:
            if fstype == "cgroup" and "memory" in opts:
                home = _join(point, root, own["memory"])
                if home.is_dir():
                    return 1, Path(point), home, own["memory"]
        raise CgroupError(
            "this process is in a cgroup v1 memory hierarchy but no mount of it was found in /proc/self/mountinfo"
        )
    if "" not in own:
        raise CgroupError("no memory controller: /proc/self/cgroup has neither a memory line nor a v2 line")
    for fstype, root, point, _ in mounts:
        if fstype != "cgroup2":
            continue
        mount_top = Path(point)
        try:
            if "memory" not in _read(mount_top / "cgroup.controllers").split():
                continue
        except OSError:
            continue
        home = _join(point, root, own[""])
        if not home.is_dir():
            continue
        return 2, mount_top, home, own[""]
    raise CgroupError(
        "no memory controller: no cgroup v1 memory hierarchy and no cgroup2 mount with memory in cgroup.controllers"
    )


def memory_controller_version() -> int | None:
    """1 or 2: the cgroup version of the memory controller `MemCgroup` makes its
    groups under (read from /proc/self, nothing made); None if there is none."""
    try:
        return _controller()[0]
    except (CgroupError, OSError):
        return None


# --------------------------------------------------------------------------
# The group

_LIVE: set[MemCgroup] = set()


@atexit.register
def _close_leftovers() -> None:
    """Last resort for a group not closed (no `with`, or an interpreter exit)."""
    for group in sorted(_LIVE, key=lambda g: -len(g.path.parts)):  # a nested group before its parent
        try:
            group.close()
        except Exception as e:
            sys.stderr.write(f"memcg: could not remove {group.path}: {e}\n")


class MemCgroup:
    """A child memory cgroup for one test, removed on exit even if the test failed.

    Use as a context manager (``with MemCgroup("aw-test") as g:``); the
    directory exists from construction on. ``close()`` (run by ``__exit__``)
    lifts the limits, kills and reaps the processes started with ``spawn``
    (and only those), moves every other task left in the group back to
    ``evacuate_to`` (the parent on v1, this process's own cgroup on v2) and
    removes the directory, retrying for a few seconds while the kernel
    finishes releasing exiting tasks.
    """

    RMDIR_RETRY_S = 5.0
    KILL_WAIT_S = 10.0

    def __init__(self, prefix: str = "aw-test", name: str | None = None, parent: MemCgroup | None = None) -> None:
        """`name`, when given, is the directory's whole name (it must hold a
        per-run suffix of its own, e.g. another group's name, or be inside a
        `parent` that has one): a test of names
        that look like another group's (`x` and `x\\x1cevil`) needs both exact.
        With `parent` (a group of this kind, open), the group is made inside it
        (e.g. a kubelet's nested layout under a group of the test's own);
        close it before the parent."""
        if not prefix or "/" in prefix or prefix in (".", ".."):
            raise ValueError(f"bad cgroup name prefix {prefix!r}")
        if name is not None and (not name or "/" in name or "\n" in name or name in (".", "..")):
            raise ValueError(f"bad cgroup name {name!r}")
        self.name = name if name is not None else f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        version, parent_dir, parent_rel, evacuate_to = self._locate() if parent is None else self._inside(parent)
        self._version = version
        self._parent_dir = parent_dir
        self.evacuate_to = evacuate_to
        self._path = parent_dir / self.name
        self._rel_path = parent_rel.rstrip("/") + "/" + self.name
        try:
            self._path.mkdir()
        except OSError as e:
            raise CgroupError(f"cannot make memory cgroup {self._path}: {e}") from e
        _LIVE.add(self)
        try:
            self._inode = self._path.stat().st_ino
            if version == 2 and not (self._path / "memory.max").exists():
                raise CgroupError(f"{self._path} has no memory.max: the memory controller is not enabled for it")
        except BaseException:
            self.close()
            raise

    # -- where ---------------------------------------------------------------

    @staticmethod
    def _locate() -> tuple[int, Path, str, Path]:
        """(version, parent directory, parent path as /proc shows it, where leftover tasks go)."""
        version, mount_top, home, home_rel = _controller()
        if version == 1:
            return 1, home, home_rel, home
        return (2, *MemCgroup._v2_parent(mount_top, home, home_rel), home)

    @staticmethod
    def _inside(parent: MemCgroup) -> tuple[int, Path, str, Path]:
        if not parent.path.is_dir():
            raise CgroupError(f"{parent.path} is already removed")
        if parent.version == 2 and "memory" not in _read(parent.path / "cgroup.subtree_control").split():
            try:
                _write(parent.path / "cgroup.subtree_control", "+memory")
            except OSError as e:
                raise CgroupError(f"cannot give {parent.path}'s children the memory controller: {e}") from e
        return parent.version, parent.path, parent.rel_path, parent.evacuate_to

    @staticmethod
    def _v2_parent(mount_top: Path, home: Path, home_rel: str) -> tuple[Path, str]:
        """The nearest cgroup from `home` up that can give a child the memory controller."""
        tried: list[str] = []
        directory, rel = home, home_rel
        while True:
            subtree = directory / "cgroup.subtree_control"
            if "memory" in _read(subtree).split():
                return directory, rel
            is_top = directory == mount_top
            if "memory" in _read(directory / "cgroup.controllers").split() and (is_top or not _pids_in(directory)):
                try:
                    _write(subtree, "+memory")
                    return directory, rel
                except OSError as e:
                    tried.append(f"{directory}: {e.strerror}")
            else:
                tried.append(f"{directory}: has processes or no memory controller")
            if is_top or directory == directory.parent:
                break
            directory = directory.parent
            rel = rel.rsplit("/", 1)[0] or "/"
        raise CgroupError(
            "cgroup v2: no cgroup from this process's own up to the top can give a child the memory "
            "controller (a cgroup with processes cannot, the 'no internal processes' rule). Run the tests "
            "from a leaf of a delegated sub-tree. Tried: " + "; ".join(tried)
        )

    # -- identity ------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The group's directory."""
        return self._path

    @property
    def version(self) -> int:
        """1 or 2."""
        return self._version

    @property
    def rel_path(self) -> str:
        """The group as it appears in /proc/<pid>/cgroup (memory line on v1, 0:: line on v2)."""
        return self._rel_path

    @property
    def inode(self) -> int:
        """st_ino of the directory (the kernfs id BPF sees as the cgroup id)."""
        return self._inode

    def __repr__(self) -> str:
        return f"MemCgroup(v{self._version}, {str(self._path)!r})"

    # -- knobs ---------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self._path / name

    def set_limit_bytes(self, n: int | None) -> None:
        """The hard limit: v1 memory.limit_in_bytes (-1 = none), v2 memory.max ("max" = none)."""
        if self._version == 1:
            _write(self._file("memory.limit_in_bytes"), "-1" if n is None else str(int(n)))
        else:
            _write(self._file("memory.max"), "max" if n is None else str(int(n)))

    def set_high_bytes(self, n: int | None) -> None:
        """v2 memory.high (the throttling limit; "max" = none). cgroup v1 has none."""
        if self._version == 1:
            raise NeedsCgroupVersion(
                "needs cgroup v2 memory: memory.high exists only on cgroup v2; "
                "on v1 hold tasks with set_limit_bytes + set_oom_kill_disable"
            )
        _write(self._file("memory.high"), "max" if n is None else str(int(n)))

    def give_io_controller(self) -> None:
        """v2: the io controller for this group too (`+io` in its parent's
        cgroup.subtree_control, left in place on exit as `+memory` is), so the
        I/O its tasks submit carries its own blkcg: a loop device's worker then
        charges the page cache it writes to this group's memory (c74d40e8b5e2,
        v5.14), where without it the root's. Must come before a task joins."""
        if self._version == 1:
            raise NeedsCgroupVersion("needs cgroup v2: on v1 blkio is a hierarchy of its own")
        parent = self._path.parent
        if "io" not in _read(parent / "cgroup.subtree_control").split():
            try:
                _write(parent / "cgroup.subtree_control", "+io")
            except OSError as e:
                raise CgroupError(f"cannot give {parent}'s children the io controller: {e}") from e

    def usage_bytes(self) -> int:
        """Memory charged to the group: v1 memory.usage_in_bytes, v2 memory.current."""
        name = "memory.usage_in_bytes" if self._version == 1 else "memory.current"
        return int(_read(self._file(name)).strip())

    def set_oom_kill_disable(self, disable: bool) -> None:
        """v1 memory.oom_control: with 1, page-fault charges over the limit wait instead of OOM-killing."""
        if self._version != 1:
            raise NeedsCgroupVersion(
                "needs cgroup v1 memory: cgroup v2 has no oom_kill_disable (memory.oom_control is v1 only); "
                "to hold tasks in a memory wait on v2 use set_high_bytes (memory.high)"
            )
        _write(self._file("memory.oom_control"), "1" if disable else "0")

    def oom_kill_count(self) -> int:
        """OOM kills in this group: v1 `oom_kill` of memory.oom_control, v2 `oom_kill` of memory.events."""
        name = "memory.oom_control" if self._version == 1 else "memory.events"
        return _keyed(self._file(name)).get("oom_kill", 0)

    def under_oom(self) -> bool:
        """v1 memory.oom_control `under_oom`: some task of the group waits in the memcg OOM wait."""
        if self._version != 1:
            raise NeedsCgroupVersion("needs cgroup v1 memory: under_oom is cgroup v1 only (memory.oom_control)")
        return _keyed(self._file("memory.oom_control")).get("under_oom", 0) != 0

    # -- tasks ---------------------------------------------------------------

    def pids(self) -> list[int]:
        """The processes (thread-group ids) in the group now."""
        return _pids_in(self._path)

    def spawn(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the group: the child joins it after fork, before exec.

        A `preexec_fn` writes "0" (the writing task itself, for both cgroup
        versions) to cgroup.procs: only os.open, os.write and os.close of
        values made before the fork run between fork and exec, so it takes no
        lock another thread of this process could hold (the usual danger of
        preexec_fn in a threaded parent). The exec, and everything it
        allocates, is charged to the group. The process is tracked: close()
        kills and reaps it if it still runs. A `preexec_fn` given by the
        caller runs after the child has joined.
        """
        if self._closed:
            raise CgroupError(f"{self._path} is already removed")
        procs = os.fsencode(self._file("cgroup.procs"))
        user_fn: Callable[[], Any] | None = popen_kwargs.pop("preexec_fn", None)

        def join_group() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
            if user_fn is not None:
                user_fn()

        try:
            proc = subprocess.Popen(list(argv), preexec_fn=join_group, **popen_kwargs)  # noqa: PLW1509
        except subprocess.SubprocessError as e:
            raise CgroupError(
                f"could not start {argv[0]!r} inside {self._path} (joining the group failed?): {e}"
            ) from e
        self._procs.append(proc)
        return proc

    # -- removal -------------------------------------------------------------

    def _lift_limits(self) -> None:
        # Let tasks held in a memory wait run (and exit) before they are killed or moved.
        knobs = (
            [("memory.limit_in_bytes", "-1"), ("memory.oom_control", "0")]
            if self._version == 1
            else [("memory.max", "max"), ("memory.high", "max")]
        )
        for name, value in knobs:
            try:
                _write(self._file(name), value)
            except OSError:
                pass

    def _evacuate(self) -> None:
        for pid in self.pids():
            try:
                _write(self.evacuate_to / "cgroup.procs", str(pid))
            except OSError as e:
                if e.errno != errno.ESRCH:  # it exited meanwhile
                    raise

    def close(self) -> None:
        """Remove the group (idempotent). Raises CgroupError if the directory stays."""
        if self._closed:
            return
        self._lift_limits()
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.KILL_WAIT_S
        stuck: list[int] = []
        for proc in self._procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stuck.append(proc.pid)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        deadline = time.monotonic() + self.RMDIR_RETRY_S
        while True:
            try:
                self._evacuate()
                self._path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise CgroupError(
                        f"could not remove {self._path}: {e} (tasks left: {self.pids()}, "
                        f"spawned and not reaped: {stuck})"
                    ) from e
                time.sleep(0.05)
        self._closed = True
        _LIVE.discard(self)

    def __enter__(self) -> MemCgroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # The body failed: still remove the group, but do not hide the body's error.
        try:
            self.close()
        except Exception as e:
            warnings.warn(f"memcg cleanup after a failure: {e}", RuntimeWarning, stacklevel=2)


# --------------------------------------------------------------------------
# Memory hogs

HOG_SOURCE = """\
import mmap, os, sys
size = int(sys.argv[1]) << 20
m = mmap.mmap(-1, max(size, 4096), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
if hasattr(mmap, "MADV_NOHUGEPAGE"):
    m.madvise(mmap.MADV_NOHUGEPAGE)
offsets = range(0, size, 4096)
if len(sys.argv) > 2:  # a comm to take, in hex (any bytes: tests of hostile names)
    fd = os.open("/proc/self/comm", os.O_WRONLY)
    os.write(fd, bytes.fromhex(sys.argv[2]))
    os.close(fd)
os.write(1, b"ready\\n")
if os.read(0, 64):
    for off in offsets:
        m[off] = 1
    os.write(1, b"done\\n")
    os.read(0, 64)
"""
"""The hog, run as ``python -I -S -c HOG_SOURCE MIB``.

It maps MIB MiB of private anonymous memory (no transparent huge pages) and
prints "ready"; on a line on stdin it writes one byte per 4 KiB page, prints
"done" and holds the memory until the next line or EOF on stdin. EOF instead
of the go line makes it exit without touching anything.

Everything that needs a system call or kernel memory (the mapping, the
madvise, stdin/stdout buffers: it uses os.read/os.write on fds 0 and 1) is
done before "ready". After "go" it only page-faults, so under a full group
with oom_kill_disable it waits in the memcg OOM wait. Mapping after "go"
does not work: mmap's own kernel-memory charge (the VMA) then fails with
ENOMEM once another hog has used up the headroom, and that hog dies.
"""


def hog_command(mib: int, python: str | None = None, comm: bytes | None = None) -> list[str]:
    """argv of a hog touching `mib` MiB (`python` defaults to sys.executable);
    with `comm`, the hog names itself that (at most 15 bytes, any bytes)."""
    if mib < 0:
        raise ValueError("mib must be >= 0")
    argv = [python or sys.executable, "-I", "-S", "-c", HOG_SOURCE, str(int(mib))]
    return [*argv, comm.hex()] if comm else argv


class Hog:
    """A hog process inside `group` (tracked by it), driven over its stdin/stdout."""

    def __init__(self, group: MemCgroup, mib: int, comm: bytes | None = None, **popen_kwargs: Any) -> None:
        self.mib = mib
        self.group = group
        self.proc: subprocess.Popen[bytes] = group.spawn(
            hog_command(mib, comm=comm), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, **popen_kwargs
        )
        self._buf = b""
        self._eof = False
        self.ready = False
        self.done = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _readline(self, timeout: float) -> str | None:
        """The next stdout line; None on timeout, "" at EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            if self._eof:
                return ""
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                self._eof = True
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for "ready"; raises TimeoutError or RuntimeError (it exited) otherwise."""
        line = self._readline(timeout)
        if line is None:
            raise TimeoutError(f"hog {self.pid} not ready within {timeout} s")
        if line != "ready\n":
            raise RuntimeError(f"hog {self.pid} did not start: {line!r}, exit status {self.proc.poll()}")
        self.ready = True

    def go(self) -> None:
        """Tell it to allocate and touch its memory."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"go\n")
        except BrokenPipeError:
            raise RuntimeError(f"hog {self.pid} is gone (exit status {self.proc.poll()})") from None

    def wait_done(self, timeout: float) -> bool:
        """True once it has touched all its memory; False on timeout or if it died first."""
        if self.done:
            return True
        line = self._readline(timeout)
        self.done = line == "done\n"
        return self.done

    def finish(self, timeout: float = 10.0) -> int | None:
        """Let it exit on its own (closes its stdin); returns the exit status or None."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGKILL and reap it (idempotent)."""
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> Hog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stall_indefinitely(
    group: MemCgroup,
    n_tasks: int,
    mib: int,
    headroom_mib: int = 4,
    ready_timeout: float = 30.0,
    comm: bytes | None = None,
) -> list[Hog]:
    """Hold `n_tasks` hogs of `mib` MiB each in the memcg OOM wait until `release(group)` (cgroup v1).

    Only page-fault charges wait under oom_kill_disable; kernel-memory
    charges (exec, most syscalls) fail at once with ENOMEM. So: start the
    hogs with no limit, wait until each says ready, then set the limit to the
    group's usage plus `headroom_mib` and oom_kill_disable, then tell them to
    go. They wait in mem_cgroup_oom_synchronize (shown as D, really
    TASK_KILLABLE). The hogs are returned at once, with no wait for them to
    reach the wait; on any error the ones started are killed.
    """
    if group.version != 1:
        raise NeedsCgroupVersion(
            "needs cgroup v1 memory: stall_indefinitely holds tasks with oom_kill_disable; "
            "on v2 slow tasks with set_high_bytes instead"
        )
    hogs: list[Hog] = []
    try:
        group.set_limit_bytes(None)
        group.set_oom_kill_disable(False)
        hogs = [Hog(group, mib, comm) for _ in range(n_tasks)]
        deadline = time.monotonic() + ready_timeout
        for h in hogs:
            h.wait_ready(max(0.0, deadline - time.monotonic()))
        group.set_limit_bytes(group.usage_bytes() + headroom_mib * MIB)
        group.set_oom_kill_disable(True)
        for h in hogs:
            h.go()
    except BaseException:
        for h in hogs:
            h.stop()
        raise
    return hogs


def release(group: MemCgroup) -> None:
    """Remove the limit so stalled hogs finish; then clear oom_kill_disable (v1) / memory.high (v2)."""
    group.set_limit_bytes(None)
    if group.version == 1:
        group.set_oom_kill_disable(False)
    else:
        group.set_high_bytes(None)


# --------------------------------------------------------------------------
# /proc helpers


def proc_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, D, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def kernel_stack(pid: int) -> str:
    """/proc/<pid>/stack (root only; empty while the task runs)."""
    return Path(f"/proc/{pid}/stack").read_text()
