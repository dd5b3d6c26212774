# SPDX-License-Identifier: Apache-2.0
"""Reads for a stall report: the task's memory cgroup, the machine's memory
(meminfo, zoneinfo, PSI, vmstat), kswapd per node, and who a task is.

Every function takes its root (the procfs root, or the mountinfo file that
says where the cgroup hierarchies are mounted), so tests use a fake tree.
Text is decoded with surrogateescape like procfs. A missing or unreadable
file gives None or an empty value; a malformed line is skipped, never raised.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from allocwatch.core.host import (
    KswapdInfo,
    MemcgInfo,
    MemoryPicture,
    PressureInfo,
    PsiLine,
    SlabCache,
    TaskFlags,
    TaskInfo,
    ZoneInfo,
)
from allocwatch.core.tracker import NS_PER_S
from allocwatch.kernel import mountinfo
from allocwatch.kernel.procfs import DEFAULT_PROCFS, kernel_stack, lines, read_bytes, read_text, task_file

DEFAULT_MOUNTINFO = mountinfo.MOUNTINFO

# v1 shows "no limit" as the page counter's maximum in bytes: 9223372036854771712
# with 4 KiB pages, a little less with larger ones, 2**64 - 1 on old kernels.
V1_NO_LIMIT_BYTES = 1 << 62
PF_EXITING = 0x00000004
PF_KTHREAD = 0x00200000
SIGKILL_MASK = 1 << (9 - 1)  # signal N is bit N-1 of SigPnd / ShdPnd
CMDLINE_MAX_BYTES = 256
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # USER_HZ: the unit of stat's utime and stime

MEMINFO_KEYS = frozenset({
    "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal", "SwapFree", "Dirty",
    "Writeback", "Shmem", "Slab", "SReclaimable", "SUnreclaim", "AnonPages", "Active(file)", "Inactive(file)",
})
_ZONES = ("dma", "dma32", "normal", "high", "movable", "device")  # vmstat's zone suffixes
# counter -> suffixes of the lines summed into it (per zone on older kernels)
VMSTAT_SUMS: dict[str, tuple[str, ...]] = {
    "allocstall": _ZONES, "pgscan_direct": _ZONES, "pgsteal_direct": _ZONES, "pgscan_kswapd": _ZONES,
    "pgsteal_kswapd": _ZONES, "compact_stall": (), "oom_kill": (), "workingset_refault": ("anon", "file"),
}
_VMSTAT_LINES = {
    line: total for total, suffixes in VMSTAT_SUMS.items() for line in (total, *(f"{total}_{s}" for s in suffixes))
}
_INT = re.compile(r"-?[0-9]+")
_ZONE_HEAD = re.compile(r"Node\s+(\d+),\s+zone\s+(\S+)")
_KSWAPD = re.compile(r"kswapd(\d+)(?::\d+)?")


_bytes = read_bytes
_text = read_text


def _int(text: str) -> int | None:
    text = text.strip()
    if text.isascii() and text.isdigit():  # nearly every field: no regex (10,000 stat files a block)
        return int(text)
    return int(text) if _INT.fullmatch(text) else None


def _flat(text: str | None) -> dict[str, int]:
    """A flat-keyed file ("key value" lines): the well-formed lines."""
    out = {}
    for line in lines(text or ""):
        parts = line.split()
        if len(parts) == 2 and (value := _int(parts[1])) is not None:
            out[parts[0]] = value
    return out


def _read_int(path: Path) -> int | None:
    text = _text(path)
    return None if text is None else _int(text)


def _limit(path: Path) -> int | None:
    """A limit file: bytes, or None for "max" (v2), v1's no-limit value, or unreadable."""
    text = _text(path)
    value = None if text is None else _int(text)
    return None if value is None or value >= V1_NO_LIMIT_BYTES else value


# --- memory cgroup ------------------------------------------------------------


def memcg_mount(m: mountinfo.Mount) -> tuple[int, str, Path] | None:
    """(version, root, mount point) of a memory cgroup mount, else None."""
    if m.fstype == "cgroup2":
        version = 2
    elif m.fstype == "cgroup" and "memory" in m.superopts:
        version = 1
    else:
        return None
    return version, m.root, Path(m.point)


def _under(root: str, point: Path, cgroup_path: str) -> Path | None:
    """The directory of cgroup_path in a mount of the hierarchy's `root`, or
    None when the mount shows another part of the hierarchy."""
    root = root.rstrip("/")
    if cgroup_path != root and not cgroup_path.startswith(root + "/"):
        return None
    return point / cgroup_path[len(root):].lstrip("/")


def _memcg_dir(cgroup_path: str, mountinfo_path: Path, version: int | None) -> tuple[int, Path] | None:
    mounts = [v for m in mountinfo.parse(lines(_text(mountinfo_path) or "")) if (v := memcg_mount(m))]
    for want in (1, 2) if version is None else (version,):
        candidates = [(root, point) for v, root, point in mounts if v == want]
        if candidates:  # memory is on v1 when v1 mounts it, even with a v2 mount beside
            dirs = [d for root, point in candidates if (d := _under(root, point, cgroup_path))]
            return next(((want, d) for d in dirs if _is_dir(d)), None)
    return None


def _is_dir(d: Path) -> bool:
    """is_dir() that never raises: a 4 KiB cgroup path under a mount point is ENAMETOOLONG."""
    try:
        return d.is_dir()
    except OSError:
        return False


def _memcg_v1(path: str, d: Path) -> MemcgInfo:
    oom = _flat(_text(d / "memory.oom_control"))
    flag = {k: bool(oom[k]) if k in oom else None for k in ("oom_kill_disable", "under_oom")}
    return MemcgInfo(
        version=1, path=path, usage_bytes=_read_int(d / "memory.usage_in_bytes"),
        limit_bytes=_limit(d / "memory.limit_in_bytes"), high_bytes=None,
        oom_kill_disable=flag["oom_kill_disable"], under_oom=flag["under_oom"],
        events={k: v for k, v in oom.items() if k == "oom_kill"},
        failcnt=_read_int(d / "memory.failcnt"), pressure=None,
    )


def _memcg_v2(path: str, d: Path) -> MemcgInfo:
    return MemcgInfo(
        version=2, path=path, usage_bytes=_read_int(d / "memory.current"),
        limit_bytes=_limit(d / "memory.max"), high_bytes=_limit(d / "memory.high"),
        oom_kill_disable=None, under_oom=None, events=_flat(_text(d / "memory.events")),
        failcnt=None, pressure=_pressure(_text(d / "memory.pressure")),
    )


def memcg_info(cgroup_path: str, mountinfo: Path = DEFAULT_MOUNTINFO, version: int | None = None) -> MemcgInfo | None:
    """The memory cgroup at cgroup_path (as /proc/PID/cgroup shows it: the v1
    memory line if there is one, else the v2 "0::" line).

    The hierarchy is found in `mountinfo`: v1 (a "cgroup" mount with the
    memory option) if mounted, else v2 ("cgroup2"); `version` forces one.
    None when no such mount holds the path or its directory is missing."""
    found = _memcg_dir(cgroup_path, mountinfo, version)
    if found is None:
        return None
    ver, directory = found
    return (_memcg_v1 if ver == 1 else _memcg_v2)(cgroup_path, directory)


def memcg_threads(cgroup_path: str, mountinfo: Path = DEFAULT_MOUNTINFO, version: int | None = None,
                  most: int = 4096) -> list[int]:
    """The thread ids in the memory cgroup at cgroup_path and the groups below
    it (v1 `tasks`, v2 `cgroup.threads`), at most `most` of them; none when
    the group is gone. Symbolic links are not followed."""
    found = _memcg_dir(cgroup_path, mountinfo, version)
    if found is None:
        return []
    ver, directory = found
    name = "tasks" if ver == 1 else "cgroup.threads"
    tids: list[int] = []
    for d, _, _ in os.walk(directory, followlinks=False):
        for line in lines(_text(Path(d) / name) or ""):
            if line.isdigit():
                tids.append(int(line))
                if len(tids) >= most:
                    return tids
    return tids


# --- the memory picture -------------------------------------------------------


def _psi_line(fields: list[str]) -> PsiLine | None:
    kv = dict(f.split("=", 1) for f in fields if "=" in f)
    try:
        total = _int(kv["total"])
        avg10, avg60, avg300 = (float(kv[k]) for k in ("avg10", "avg60", "avg300"))
    except (KeyError, ValueError):
        return None
    return None if total is None else PsiLine(avg10, avg60, avg300, total)


def _pressure(text: str | None) -> PressureInfo | None:
    """A PSI file: None without a well-formed "some" line."""
    found = {}
    for line in lines(text or ""):
        kind, _, rest = line.partition(" ")
        if kind in ("some", "full") and (psi := _psi_line(rest.split())):
            found[kind] = psi
    some = found.get("some")
    return None if some is None else PressureInfo(some=some, full=found.get("full"))


def _meminfo(text: str | None) -> dict[str, int]:
    out = {}
    for line in lines(text or ""):
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in MEMINFO_KEYS and len(parts) == 2 and parts[1] == "kB" and (kib := _int(parts[0])) is not None:
            out[key] = kib * 1024
    return out


def _zone_value(line: str) -> tuple[str, int] | None:
    """("free" | "min" | "low" | "high" | "managed", pages) of a zone's line."""
    parts = line.split()
    if parts[:2] == ["pages", "free"] and len(parts) == 3:
        parts = ["free", parts[2]]
    if len(parts) == 2 and parts[0] in ("free", "min", "low", "high", "managed"):
        value = _int(parts[1])
        return None if value is None else (parts[0], value)
    return None


def _zone(node: int, name: str, values: dict[str, int]) -> ZoneInfo | None:
    if values.get("managed") == 0 or not {"free", "min", "low", "high"} <= values.keys():
        return None
    return ZoneInfo(node, name, values["free"], values["min"], values["low"], values["high"])


def _zones(text: str | None) -> tuple[ZoneInfo, ...]:
    """Each zone of /proc/zoneinfo with its free pages and watermarks;
    zones the kernel manages no pages of (managed 0) left out."""
    heads: list[tuple[int, str, dict[str, int]]] = []
    for line in lines(text or ""):
        if m := _ZONE_HEAD.match(line):
            heads.append((int(m[1]), m[2], {}))
        elif heads and (kv := _zone_value(line)):
            heads[-1][2].setdefault(*kv)
    return tuple(z for node, name, values in heads if (z := _zone(node, name, values)))


def _vmstat(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line, value in _flat(text).items():
        if (total := _VMSTAT_LINES.get(line)) is not None:
            out[total] = out.get(total, 0) + value
    return out


SLAB_CACHES_SHOWN = 5


def parse_slabinfo(text: str | None, page_bytes: int, n: int = SLAB_CACHES_SHOWN) -> tuple[SlabCache, ...]:
    """The `n` caches holding the most memory, largest first (slabinfo 2.x:
    name active_objs num_objs objsize objperslab pagesperslab : tunables ... :
    slabdata active_slabs num_slabs sharedavail). Malformed lines are passed over."""
    found = []
    for line in lines(text or ""):
        if line.startswith(("slabinfo", "#")):
            continue
        head, _, rest = line.partition(":")
        fields = head.split()
        slabdata = rest.rpartition("slabdata")[2].split()
        if len(fields) < 6 or len(slabdata) < 2:
            continue
        nums = [_int(f) for f in (fields[1], fields[2], fields[5], slabdata[1])]
        if any(v is None for v in nums):
            continue
        active, total, pages_per_slab, slabs = (v or 0 for v in nums)
        found.append(SlabCache(fields[0], slabs * pages_per_slab * page_bytes, total, active))
    found.sort(key=lambda c: (-c.bytes, c.name))
    return tuple(found[:n])


def slab_caches(proc: Path = DEFAULT_PROCFS) -> tuple[SlabCache, ...]:
    """The largest slab caches now; () when /proc/slabinfo is unreadable (it is root's)."""
    return parse_slabinfo(_text(proc / "slabinfo"), os.sysconf("SC_PAGE_SIZE"))


def memory_picture(proc: Path = DEFAULT_PROCFS) -> MemoryPicture:
    """meminfo, zoneinfo, PSI memory and vmstat, each empty / None when unreadable."""
    return MemoryPicture(
        meminfo_bytes=_meminfo(_text(proc / "meminfo")),
        zones=_zones(_text(proc / "zoneinfo")),
        pressure=_pressure(_text(proc / "pressure" / "memory")),
        vmstat=_vmstat(_text(proc / "vmstat")),
    )


# --- tasks: kswapd, who a task is, dying / exiting ----------------------------


def _stat(path: str | Path) -> tuple[str, list[str]]:
    """(comm, fields after it) of a stat file; ("", []) when unreadable.
    comm may hold spaces and ')': the fields follow the last ')'."""
    text = _text(path)
    if text is None or ")" not in text:
        return "", []
    head, rest = text.rsplit(")", 1)
    return head.partition("(")[2], rest.split()


def _stat_flags(fields: list[str]) -> int:
    """The task's PF_* flags (stat field 9: the 7th after comm)."""
    value = _int(fields[6]) if len(fields) > 6 else None
    return value or 0


def _pids(proc: Path) -> list[int]:
    try:
        return [int(p) for p in os.listdir(proc) if p.isascii() and p.isdigit()]
    except OSError:
        return []


def _kswapd_node(comm: str, fields: list[str]) -> int | None:
    m = _KSWAPD.fullmatch(comm)
    return int(m[1]) if m and _stat_flags(fields) & PF_KTHREAD else None


def find_kswapd(proc: Path = DEFAULT_PROCFS) -> list[tuple[int, int]]:
    """(node, pid) of each kswapd kernel thread ("kswapd0", "kswapd0:0"), sorted.
    A scan of every /proc/PID/stat: do it once, again when a pid is gone."""
    found = []
    for pid in _pids(proc):
        node = _kswapd_node(*_stat(proc / str(pid) / "stat"))
        if node is not None:
            found.append((node, pid))
    return sorted(found)


def kswapd_state(proc: Path, node: int, pid: int, quiet: bool = False) -> KswapdInfo:
    """kswapd's state letter, and its kernel stack only when in D or `quiet`
    (it has not run for long: where does it sleep?). State None when the pid
    is gone or is no longer that node's kswapd (rescan then)."""
    comm, fields = _stat(proc / str(pid) / "stat")
    state = fields[0] if fields and _kswapd_node(comm, fields) == node else None
    stack = kernel_stack(proc, pid, pid) if state == "D" or (quiet and state is not None) else None
    return KswapdInfo(node=node, pid=pid, state=state, stack=None if stack is None else tuple(stack))


def run_time_ns(proc: Path, pid: int, clock_ticks_per_s: int = CLOCK_TICKS_PER_S) -> int | None:
    """How long the task has been on a CPU in all, in ns: schedstat's first field
    (sum_exec_runtime). Where schedstat is missing (no CONFIG_SCHED_INFO) or its
    first field is 0, stat's utime + stime in clock ticks: a resolution of
    1 / clock_ticks_per_s, 10 ms at USER_HZ 100. None when neither is readable.

    Before commit c5895d3f06cb ("sched: Simplify sched_info_on()") (v5.14) a kernel
    without CONFIG_SCHEDSTATS whose delay accounting was off printed "0 0 0" there;
    no thread that ever ran has a run time of 0."""
    text = _text(proc / str(pid) / "schedstat")
    first = _int(text.split()[0]) if text and text.split() else None
    if first:
        return first
    fields = _stat(proc / str(pid) / "stat")[1]
    ticks = [_int(f) for f in fields[11:13]]  # utime, stime: stat fields 14 and 15
    if len(ticks) < 2 or None in ticks:
        return None
    return sum(t for t in ticks if t is not None) * NS_PER_S // clock_ticks_per_s


def _status(text: str | None) -> dict[str, list[str]]:
    """/proc/.../status as key -> its whitespace-separated values."""
    out = {}
    for line in lines(text or ""):
        key, sep, rest = line.partition(":")
        if sep:
            out[key] = rest.split()
    return out


def _cmdline(raw: bytes | None) -> str | None:
    """NUL-separated arguments, space-joined, cut to CMDLINE_MAX_BYTES then "..."."""
    raw = (raw or b"").rstrip(b"\0").replace(b"\0", b" ")
    if not raw:
        return None
    cut = raw[:CMDLINE_MAX_BYTES] + (b"..." if len(raw) > CMDLINE_MAX_BYTES else b"")
    return cut.decode("utf-8", "surrogateescape")


def task_info(proc: Path, pid: int, tid: int) -> TaskInfo:
    """uid (real, of the thread), cmdline (of the process) and state letter;
    each None when unreadable."""
    return task_facts(proc, pid, tid)[0]


def task_facts(
    proc: Path, pid: int, tid: int, cmdlines: dict[int, str | None] | None = None
) -> tuple[TaskInfo, TaskFlags]:
    """task_info and task_flags from one read of the thread's stat and status.
    `cmdlines`, by pid, is filled and reused: the threads of a process share
    one (10,000 stalled threads of one process, one read, not 10,000)."""
    status = _status(_text(task_file(proc, pid, tid, "status")))
    fields = _stat(task_file(proc, pid, tid, "stat"))[1]
    uids = status.get("Uid", [])
    info = TaskInfo(pid=pid, tid=tid, uid=_int(uids[0]) if uids else None, cmdline=_cmdline_of(proc, pid, cmdlines),
                    state=fields[0] if fields else None)
    return info, _flags(fields, status)


def task_owner(
    proc: Path, pid: int, tid: int, cmdlines: dict[int, str | None] | None = None
) -> tuple[int | None, str | None]:
    """The thread's real uid (status) and its process's cmdline; `cmdlines` as
    for task_facts. Each None when unreadable."""
    uids = _status(_text(task_file(proc, pid, tid, "status"))).get("Uid", [])
    return (_int(uids[0]) if uids else None), _cmdline_of(proc, pid, cmdlines)


def _cmdline_of(proc: Path, pid: int, cmdlines: dict[int, str | None] | None) -> str | None:
    if cmdlines is not None and pid in cmdlines:
        return cmdlines[pid]
    cmdline = _cmdline(_bytes(f"{proc}/{pid}/cmdline"))
    if cmdlines is not None:
        cmdlines[pid] = cmdline
    return cmdline


_FLAGS = {(dying, exiting): TaskFlags(dying=dying, exiting=exiting) for dying in (False, True)
          for exiting in (False, True)}
_STATES: dict[bytes, str] = {}  # state letters, decoded once


def task_now(proc: Path, pid: int, tid: int) -> tuple[str | None, TaskFlags]:
    """The thread's state letter and task_flags, from one read of its stat (as
    task_flags: SIGKILL in the thread's own pending set says dying). Read as
    bytes, split only as far as the signal field: a block of 10,000 listed
    tasks reads 10,000 of these (12.9 -> 11.5 us a task here, the rest is the
    open, read and close)."""
    raw = _bytes(task_file(proc, pid, tid, "stat"))
    close = raw.rfind(b")") if raw is not None else -1
    fields = raw[close + 1:].split(None, 29) if raw is not None and close >= 0 else []
    if not fields:
        return None, _FLAGS[False, False]
    state = _STATES.get(fields[0])
    if state is None:
        state = fields[0].decode("ascii", "replace")
        if len(_STATES) < 64:
            _STATES[fields[0]] = state
    exiting = state in ("Z", "X") or bool(_bytes_int(fields, 6) & PF_EXITING)
    return state, _FLAGS[bool(_bytes_int(fields, 28) & SIGKILL_MASK), exiting]


def _bytes_int(fields: list[bytes], i: int) -> int:
    """Field i as an unsigned decimal, 0 when absent or not one."""
    if i >= len(fields) or not fields[i].isdigit():
        return 0
    return int(fields[i])


def _flags(fields: list[str], status: dict[str, list[str]]) -> TaskFlags:
    exiting = bool(fields) and (fields[0] in ("Z", "X") or bool(_stat_flags(fields) & PF_EXITING))
    return TaskFlags(dying=_sigkill_in_stat(fields) or _sigkill_pending(status), exiting=exiting)


def _sigkill_in_stat(fields: list[str]) -> bool:
    """SIGKILL in the thread's own pending set: stat field 31, `signal` (the 29th
    after comm). A kill of the whole process puts SIGKILL in every thread's own
    set too (complete_signal(), for a fatal signal), so this alone says dying."""
    value = _int(fields[28]) if len(fields) > 28 else None
    return bool(value and value & SIGKILL_MASK)


def _sigkill_pending(status: dict[str, list[str]]) -> bool:
    for key in ("SigPnd", "ShdPnd"):
        try:
            if int(status.get(key, ["0"])[0], 16) & SIGKILL_MASK:
                return True
        except (ValueError, IndexError):
            continue
    return False


def kernel_thread_name(proc: Path, pid: int, tid: int) -> str | None:
    """The name /proc gives a kernel thread (a workqueue worker's says the
    workqueue of its work: "kworker/u8:3+flush-7:3"); None for a user task, or
    when gone. One read of its stat."""
    comm, fields = _stat(task_file(proc, pid, tid, "stat"))
    return comm if fields and _stat_flags(fields) & PF_KTHREAD else None


def task_flags(proc: Path, pid: int, tid: int) -> TaskFlags:
    """dying and exiting as TaskFlags defines them, from the thread's stat alone
    (pending signals, state, flags): a stall block reads this for every task it
    only counts, and status is fifty lines the kernel formats for one bit (10,000
    stalled: half the block's /proc time). False when unreadable."""
    return task_now(proc, pid, tid)[1]
