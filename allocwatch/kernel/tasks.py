# SPDX-License-Identifier: Apache-2.0
"""What a report says of a task, read from /proc when the block (or top's live view) is made.

A listed task gets the full detail (`detail`: state, flags, stack, decoded gfp,
its memory cgroup's figures, uid and cmdline); a task a block only counts gets
its cgroup and whether it is dying or exiting (`brief`). A cgroup's figures
are read once per block (`new_block` forgets them): 200 tasks of one group
cost one read. The facts that cannot change in a wait come from WaitFacts,
read once a wait.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from allocwatch.core import gfp
from allocwatch.core.behind import KERNEL_NAMES_READ
from allocwatch.core.findings import Finding
from allocwatch.core.host import MemcgInfo, TaskFlags, TaskInfo
from allocwatch.core.pods import PodRef
from allocwatch.core.records import TaskDetail
from allocwatch.core.tracker import Wait
from allocwatch.kernel import hostfs, procfs
from allocwatch.kernel.taskiter import states_at_once
from allocwatch.kernel.waitfacts import WaitFacts

GFP_MASKS_KEPT = 256  # distinct masks decoded and kept
StackOf = Callable[[int, int], Sequence[str] | None]  # (tid, start_ns) -> the stack a D sleep was named by
TaskStates = Callable[[], Mapping[int, tuple[str, TaskFlags]] | None]  # every task's (state, flags), by tid


class TaskReader:
    def __init__(
        self, proc: Path, facts: WaitFacts, dstate_stack: StackOf,
        recent_stack: Callable[[int], Sequence[str] | None] | None = None,
        gfp_table: Sequence[tuple[int, str]] = (),
        pod_of: Callable[[str | None], PodRef | None] = lambda cgroup: None,
        task_states: TaskStates | None = None,
    ) -> None:
        self.proc = proc
        self.pod_of = pod_of  # a cgroup's Kubernetes pod (kernel/podnames.py)
        self.facts = facts
        self._dstate_stack = dstate_stack
        self._recent_stack = recent_stack  # only the real source has one: BPF's stack at reclaim entry
        self.gfp_table = tuple(gfp_table)
        self._memcg_cache: dict[str, MemcgInfo | None] = {}
        self._cmdlines: dict[int, str | None] = {}  # a block's cmdlines by pid
        self._blocked: dict[str, list[tuple[int, int, str, str | None]]] = {}  # a block's D threads by cgroup
        self._kernel_waits: list[tuple[Wait, str]] | None = None  # a block's waits of kernel threads, named
        self._gfp_said: dict[int | None, tuple[str | None, tuple[str, ...]]] = {}  # a mask: decoded, and if no FS/IO
        self._task_states = task_states
        self._states: Mapping[int, tuple[str, TaskFlags]] = {}  # this block's, read at once
        self._host_tasks = 0  # how many tasks the last read of every task's state gave

    def new_block(self, tasks: int = 0) -> None:
        """Figures and cmdlines of this block, not of the last one; `tasks`: how
        many tasks' states it may read (many, against the host's: every task's at once)."""
        self._memcg_cache = {}
        self._cmdlines = {}
        self._blocked = {}
        self._kernel_waits = None
        states = None
        if self._task_states is not None and states_at_once(tasks, self._host_tasks):
            states = self._task_states()
            self._host_tasks = len(states) if states else self._host_tasks
        self._states = states or {}

    def forget_states(self) -> None:
        """The block has read its tasks: its read of every task's state is not kept till the next."""
        self._states = {}

    def _now(self, pid: int, tid: int) -> tuple[str | None, TaskFlags]:
        """Its state letter and flags: from the block's read of every task, else its stat."""
        said = self._states.get(tid)
        return said if said is not None else hostfs.task_now(self.proc, pid, tid)

    def new_scan(self) -> None:
        """Figures of this scan (top's live view), not of the last report block."""
        self._memcg_cache = {}
        self._blocked = {}

    def detail(self, w: Wait) -> TaskDetail:
        stack = self._dstate_stack(w.tid, w.start_ns) if w.dstate else None
        if stack is None:
            stack = procfs.kernel_stack(self.proc, w.pid, w.tid)
        cgroup = self.facts.cgroup(w)
        uid, cmdline = self.facts.owner(w, self._cmdlines)
        state, flags = self._now(w.pid, w.tid)  # the one read a listed task's report waits for
        info = TaskInfo(pid=w.pid, tid=w.tid, uid=uid, cmdline=cmdline, state=state)
        gfp_flags, no_fs_io = self._gfp_words(w.gfp)
        return TaskDetail(
            cgroup=cgroup,
            state=state,
            stack=stack,
            gfp_flags=gfp_flags,
            gfp_no_fs_io=no_fs_io,
            memcg=self.memcg(cgroup),
            task=info,
            dying=flags.dying,
            exiting=flags.exiting,
            recent_stack=None if stack else self.recent_stack(w.tid),
            pod=self.pod_of(cgroup),
        )

    def finding_detail(self, f: Finding, extra: Callable[[str | None], Mapping[str, Any]]) -> TaskDetail:
        """A finding's task in full; `extra(cgroup)` adds what the finding's kind says of its cgroup."""
        stack = procfs.kernel_stack(self.proc, f.pid, f.tid)
        cgroup = procfs.memory_cgroup(self.proc, f.pid, f.tid)
        flags = hostfs.task_flags(self.proc, f.pid, f.tid)
        return TaskDetail(
            cgroup=cgroup, state=procfs.task_state(self.proc, f.pid, f.tid), stack=stack,
            memcg=self.memcg(cgroup), task=hostfs.task_info(self.proc, f.pid, f.tid),
            dying=flags.dying, exiting=flags.exiting, recent_stack=None if stack else self.recent_stack(f.tid),
            gfp_flags=gfp.describe(f.gfp, self.gfp_table) if self.gfp_table else None,
            gfp_no_fs_io=self.no_fs_io([*f.gfp_waits, *([f.waiting.gfp] if f.waiting is not None else [])]),
            pod=self.pod_of(cgroup),
            shrink_gfp={c.gfp: (gfp.decode(c.gfp, self.gfp_table), gfp.lacks_fs_or_io(c.gfp, self.gfp_table))
                        for c in f.shrinkers} if self.gfp_table else {},
            **extra(cgroup),
        )

    def _gfp_words(self, mask: int | None) -> tuple[str | None, tuple[str, ...]]:
        """A wait's mask decoded, and as no_fs_io says it: once a mask (10,000
        threads of one workload wait with one or two)."""
        said = self._gfp_said.get(mask)
        if said is None:
            if len(self._gfp_said) >= GFP_MASKS_KEPT:
                self._gfp_said.clear()
            said = self._gfp_said[mask] = (gfp.describe(mask, self.gfp_table) if self.gfp_table else None,
                                           self.no_fs_io([mask]))
        return said

    def no_fs_io(self, masks: Sequence[int | None]) -> tuple[str, ...]:
        """The masks that may not start file system or block I/O to reclaim, decoded, each once."""
        found = dict.fromkeys(m for m in masks if m is not None and gfp.lacks_fs_or_io(m, self.gfp_table))
        return tuple(gfp.decode(m, self.gfp_table) for m in found)

    def brief(self, pid: int, tid: int, read: Mapping[int, TaskDetail], wait: Wait | None = None) -> TaskDetail:
        """A task the block only counts (past max_tasks_per_block): its cgroup, for
        the count by cgroup, and whether it is dying or exiting, for MemAlloc-Info.
        A stalled wait's cgroup is read once (WaitFacts): each escalation read it
        again otherwise (10,000 stalled: 10,000 reads every threshold)."""
        if tid in read:
            cgroup = read[tid].cgroup
        elif wait is not None:
            cgroup = self.facts.cgroup(wait)
        else:
            cgroup = procfs.memory_cgroup(self.proc, pid, tid)
        flags = self._now(pid, tid)[1]
        return TaskDetail(cgroup=cgroup, dying=flags.dying, exiting=flags.exiting)

    def glance(self, w: Wait) -> TaskDetail:
        """Its memory cgroup (and pod) and state only: a row of top's live view past the detailed few."""
        cgroup = procfs.memory_cgroup(self.proc, w.pid, w.tid)
        return TaskDetail(cgroup=cgroup, state=procfs.task_state(self.proc, w.pid, w.tid), pod=self.pod_of(cgroup))

    def recent_stack(self, tid: int) -> Sequence[str] | None:
        return self._recent_stack(tid) if self._recent_stack is not None else None

    def cgroup(self, pid: int, tid: int) -> str | None:
        return procfs.memory_cgroup(self.proc, pid, tid)

    def live_cgroup(self, pid: int, tid: int) -> str | None:
        """A task's memory cgroup, or None once it has exited (a zombie shows the root)."""
        if procfs.task_state(self.proc, pid, tid) in (None, "Z", "X"):
            return None
        return procfs.memory_cgroup(self.proc, pid, tid)

    def blocked_in(self, cgroup: str, leave_out: Callable[[int], bool]) -> list[tuple[int, int, str, str | None]]:
        """(tid, pid, comm, wchan) of the threads of `cgroup` (and below) in D
        state now, those `leave_out(tid)` says aside: read when a stuck
        victim's block is made, one stat read a thread of its group, once a
        block however many victims of the group it lists."""
        found = self._blocked.get(cgroup)
        if found is None:
            found = self._blocked[cgroup] = []
            for tid in hostfs.memcg_threads(cgroup, self.proc / "self" / "mountinfo"):
                blocked = procfs.blocked_thread(self.proc, tid)
                if blocked is not None:
                    found.append((tid, *blocked))
        return [row for row in found if not leave_out(row[0])]

    def kernel_waits(self, waits: Sequence[Wait]) -> list[tuple[Wait, str]]:
        """The waits of kernel threads among `waits`, each with the thread's /proc
        name, once a block (a kernel thread is its own process: pid == tid; at
        most KERNEL_NAMES_READ names read)."""
        if self._kernel_waits is None:
            self._kernel_waits = []
            names: dict[int, str | None] = {}
            for w in waits:
                if w.pid != w.tid:
                    continue
                if w.tid not in names:
                    if len(names) >= KERNEL_NAMES_READ:
                        break
                    names[w.tid] = hostfs.kernel_thread_name(self.proc, w.pid, w.tid)
                name = names[w.tid]
                if name is not None:
                    self._kernel_waits.append((w, name))
        return self._kernel_waits

    def memcg(self, cgroup: str | None) -> MemcgInfo | None:
        """Read once per cgroup per block: 200 tasks of one group cost one read."""
        if cgroup is None:
            return None
        if cgroup not in self._memcg_cache:
            self._memcg_cache[cgroup] = hostfs.memcg_info(cgroup, self.proc / "self" / "mountinfo")
        return self._memcg_cache[cgroup]
