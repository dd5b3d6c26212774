# SPDX-License-Identifier: Apache-2.0
"""What a stall report says of a task that does not change while it waits,
read once per wait, and ahead of the wait's first report.

A block lists each task with its memory cgroup, uid and cmdline beside its state
and flags. Only the last two must be read when the block is made: a task cannot
change its own uid while it sleeps in the kernel (credentials change only by the
task itself, commit_creds() on current), and its cgroup and its process's
cmdline are taken as they were when first read in the wait. The daemon reads
them for waits nearing their threshold (`Tracker.scan`'s `nearing`), so that a
block of 20,000 tasks due at once reads one file a task, stat, and not three:
its /proc reads are what kept the last of them from their threshold.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from allocwatch.core.tracker import Wait, WaitKey
from allocwatch.kernel import hostfs, procfs


class WaitFacts:
    """Per wait in flight: its task's memory cgroup, and its uid and cmdline."""

    def __init__(self, proc: Path) -> None:
        self._proc = proc
        self._cgroups: dict[WaitKey, str | None] = {}
        self._owners: dict[WaitKey, tuple[int | None, str | None]] = {}
        self.reads = 0  # files read for these facts since start, for tests and benchmarks

    def cgroup(self, w: Wait) -> str | None:
        """The task's memory cgroup, as first read in this wait."""
        key = w.key
        if key in self._cgroups:
            return self._cgroups[key]
        cgroup = self._cgroups[key] = procfs.memory_cgroup(self._proc, w.pid, w.tid)
        self.reads += 1
        return cgroup

    def owner(self, w: Wait, cmdlines: dict[int, str | None] | None = None) -> tuple[int | None, str | None]:
        """(uid, cmdline) of the task, as first read in this wait; `cmdlines` by
        pid shares one read among the threads of a process within one call's batch."""
        key = w.key
        found = self._owners.get(key)
        if found is None:
            self.reads += 1 if cmdlines is not None and w.pid in cmdlines else 2
            found = self._owners[key] = hostfs.task_owner(self._proc, w.pid, w.tid, cmdlines)
        return found

    def read_ahead(self, nearing: Iterable[Wait], owners_of: int) -> None:
        """Read the cgroup of every wait in `nearing` (longest first), and the
        owner of the first `owners_of`: those the block will list in full."""
        cmdlines: dict[int, str | None] = {}
        for i, w in enumerate(nearing):
            self.cgroup(w)
            if i < owners_of:
                self.owner(w, cmdlines)

    def keep(self, live: Collection[WaitKey]) -> None:
        """Forget waits not in `live` (the waits in flight now)."""
        if len(self._cgroups) > len(live):
            self._cgroups = {k: v for k, v in self._cgroups.items() if k in live}
        if len(self._owners) > len(live):
            self._owners = {k: v for k, v in self._owners.items() if k in live}

    def __len__(self) -> int:
        return max(len(self._cgroups), len(self._owners))
