# SPDX-License-Identifier: Apache-2.0
"""The waits behind a writeback wait (pure).

A task that waits on writeback waits for whoever completes it: the flusher
working for that device (a kworker whose name says `+flush-7:3`, the bdi), the
loop device's worker (`+loop3`), the file system's threads and workqueues
(`jbd2/loop3-8`, `xfsaild/loop3`, `+xfs-buf/loop3`), dm-crypt's (`kcryptd/253:0`).
When those are themselves waiting for memory, the task is stuck behind them
(the memcg writeback deadlock: reclaim waits on writeback that needs memory).
`behind()` picks, from the kernel threads in memory waits now, the ones that
work for the devices the task waits on, by name (a kworker's /proc name carries
the workqueue of its work since v4.18, 6b59808bfe48); with no device known,
every kernel thread whose name is that of a writeback helper. `beside()` picks
those of the task's device that wait on its writeback themselves (jbd2's commit).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Wait

# Names (or name parts) of the kernel threads and workqueues that complete writeback.
HELPER_WORDS = ("flush-", "writeback", "loop", "kcryptd", "dmcrypt", "jbd2", "xfs", "nfsiod", "rpciod", "dm-")
BEHIND_SHOWN = 16


@dataclass(frozen=True, slots=True)
class Behind:
    """A kernel thread in a memory wait that a writeback wait may be waiting for."""

    tid: int
    pid: int
    name: str  # its /proc name: "kworker/u8:3+flush-7:3"
    site: str
    waited_s: float


# A helper waiting on writeback itself (jbd2's commit waiting for the data it ordered, in
# folio_wait_writeback) waits beside the task, on the same device: it holds nothing up
# (`beside()` lists those of the task's device apart).
BESIDE = frozenset({Site.WRITEBACK_WAIT, Site.DIRTY_THROTTLE})
WRITEBACK_FRAMES = frozenset({"folio_wait_writeback", "wait_on_page_writeback"})
KERNEL_NAMES_READ = 64  # at most this many kernel threads' names read a block


def on_writeback(sites: Iterable[Site], stack: Iterable[str] | None, throttled_for_writeback: bool = False) -> bool:
    """Whether a task waits on writeback: at the site, with its wait in its stack,
    or throttled by reclaim until writeback progresses (VMSCAN_THROTTLE_WRITEBACK:
    what memcg reclaim does instead of waiting on a folio on cgroup v2)."""
    return (throttled_for_writeback or Site.WRITEBACK_WAIT in sites
            or any(f in WRITEBACK_FRAMES for f in stack or ()))


def writeback_devices(w: Wait) -> set[str]:
    """The bdi a wait is known to wait on the writeback of ("7:3", from the
    kernel's writeback tracepoint), or none."""
    return {w.writeback.bdi} if w.writeback is not None and w.writeback.bdi else set()


def _names_device(name: str, device: str) -> bool:
    """`device` ("7:3", "loop3") as a whole word of `name` ("loop3" is not in "loop30")."""
    return re.search(r"(?<![\w:])" + re.escape(device) + r"(?![\w:])", name) is not None


def works_for(name: str, devices: Collection[str]) -> bool:
    """Whether the kernel thread `name` works for the writeback of one of `devices`
    (bdi and block device names); with none known, whether it is a writeback helper."""
    if devices:
        return any(_names_device(name, d) for d in devices if d)
    return any(w in name for w in HELPER_WORDS)


def behind(
    kernel_waits: Iterable[tuple[Wait, str]], devices: Collection[str], waiter_tid: int, now_ns: int,
) -> tuple[Behind, ...]:
    """Of the kernel threads in memory waits (each wait with the thread's /proc
    name), those the writeback wait of `waiter_tid` may be behind: longest first,
    one row a thread (its longest wait), at most BEHIND_SHOWN."""
    return _rows(kernel_waits, devices, waiter_tid, now_ns, lambda w: w.site not in BESIDE)


def beside(
    kernel_waits: Iterable[tuple[Wait, str]], devices: Collection[str], waiter_tid: int, now_ns: int,
) -> tuple[Behind, ...]:
    """The kernel threads of the devices the task waits on that wait on their
    writeback themselves (jbd2's commit waiting for the data it ordered): not
    ahead of the task, but a sign that every writer to that file system will soon
    wait too (on the journal). Only with a device known: any helper waiting on
    any writeback says nothing of this one."""
    if not devices:
        return ()
    return _rows(kernel_waits, devices, waiter_tid, now_ns, lambda w: w.site in BESIDE)


def _rows(
    kernel_waits: Iterable[tuple[Wait, str]], devices: Collection[str], waiter_tid: int, now_ns: int,
    keep: Callable[[Wait], bool],
) -> tuple[Behind, ...]:
    best: dict[int, Behind] = {}
    for w, name in kernel_waits:
        if w.tid == waiter_tid or not keep(w) or not works_for(name, devices):
            continue
        row = Behind(w.tid, w.pid, name, w.site.label, max(0, now_ns - w.start_ns) / NS_PER_S)
        if w.tid not in best or row.waited_s > best[w.tid].waited_s:
            best[w.tid] = row
    return tuple(sorted(best.values(), key=lambda b: (-b.waited_s, b.tid))[:BEHIND_SHOWN])
