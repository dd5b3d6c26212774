# SPDX-License-Identifier: Apache-2.0
"""Every task's state at once: the task iterator's -D flags and its output decoded (no bcc here).

A block that lists 10,000 stalled tasks read 10,000 /proc stat files for three
facts a task: its state letter, whether SIGKILL is pending on it (dying) and
whether it is exiting; a fifth of the daemon's time with every task listed.
The BPF task iterator (bpf_iter__task in bpf/allocwatch.bpf.c, v5.8+) writes
those fields raw for every task in one read (bpfsource.BpfSource.task_states),
and this decodes them as /proc says them:

- the letter is the kernel's __task_state_index() over the raw state, for the
  states it maps without doubt (running, sleeping, disk sleep, idle, with the
  wakekill and freezer bits, which the letter ignores). Any other (stopped,
  traced, parked, waking, new, frozen, an rtlock wait, a zombie or a dead
  task) is left out, and the caller reads that task's stat as before;
- dying: SIGKILL (bit 8) in the task's own pending set, the stat file's
  `signal` field, as hostfs.task_now reads it;
- exiting: PF_EXITING in its flags (a zombie or dead task is left out above).

The offsets are the running kernel's, from BTF, never from the headers bcc
compiles against.
"""

from __future__ import annotations

import array
import ctypes

from allocwatch.core.host import TaskFlags
from allocwatch.kernel.btf import Btf, BtfError
from allocwatch.kernel.hostfs import PF_EXITING, SIGKILL_MASK
from allocwatch.kernel.wire import TaskNow

DEFINE = "AW_TASK_ITER"
FN = "bpf_iter__task"  # bcc attaches a bpf_iter__<target> function to that iterator target
RECORD_BYTES = ctypes.sizeof(TaskNow)
FIELDS = RECORD_BYTES // ctypes.sizeof(ctypes.c_uint32)  # all of them 32-bit
# A block that reads this many tasks' states or more reads every task's at once
# (kernel/tasks.py); a smaller one reads their stat files. One stat file (11.1
# us here) costs what the iterator's read and decoding cost for 12 tasks of the
# host (923 ns a task): on a host of 100,000 tasks, a block of 8,000 is where
# the one read starts to pay.
STATES_AT_ONCE_FROM = 100
HOST_TASKS_PER_STAT_READ = 12


def states_at_once(tasks: int, host_tasks: int) -> bool:
    """Whether a block reading `tasks` tasks' states reads every task's at once,
    on a host whose last read of them gave `host_tasks` (0: none yet)."""
    return tasks >= max(STATES_AT_ONCE_FROM, host_tasks // HOST_TASKS_PER_STAT_READ)


# include/linux/sched.h. The bits a state may carry that /proc's letter ignores:
# TASK_WAKEKILL (0x100), TASK_FREEZABLE (0x2000) and __TASK_FREEZABLE_UNSAFE
# (0x4000, both since f5d39b020809, v6.1; unused bits before), and TASK_NOLOAD
# (0x400), which with TASK_UNINTERRUPTIBLE is TASK_IDLE, the letter I.
TASK_INTERRUPTIBLE = 0x1
TASK_UNINTERRUPTIBLE = 0x2
TASK_WAKEKILL = 0x100
TASK_NOLOAD = 0x400
TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
FREEZER_BITS = 0x2000 | 0x4000
SAID = TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE | TASK_WAKEKILL | TASK_NOLOAD | FREEZER_BITS


def letter(state: int, exit_state: int) -> str | None:
    """/proc's state letter for these raw fields, or None where this does not say it exactly."""
    if exit_state or state & ~SAID:
        return None
    if state & TASK_IDLE == TASK_IDLE:
        return "I"
    if state & TASK_UNINTERRUPTIBLE:
        return "D"
    if state & TASK_INTERRUPTIBLE:
        return "S"
    return "R" if state == 0 else None  # a flag bit alone is no state /proc names


def decode(data: bytes) -> dict[int, tuple[str, TaskFlags]]:
    """tid -> (state letter, flags) for each task the records say exactly; a
    torn last record is dropped. 10,000 tasks: a few ms, not 10,000 reads."""
    words = array.array("I")
    words.frombytes(data[: len(data) - len(data) % RECORD_BYTES])
    # a handful of distinct (state, dying, exiting) on a host: each decoded once, its answer shared
    made: dict[tuple[int, int, bool, bool], tuple[str, TaskFlags] | None] = {}
    out: dict[int, tuple[str, TaskFlags]] = {}
    n = FIELDS
    for tid, state, exit_state, flags, signal in zip(words[0::n], words[1::n], words[2::n], words[3::n],
                                                     words[4::n], strict=True):
        key = (state, exit_state, bool(signal & SIGKILL_MASK), bool(flags & PF_EXITING))
        if key in made:
            said = made[key]
        else:
            said = made[key] = _said(*key)
        if said is not None:
            out[tid] = said
    return out


def _said(state: int, exit_state: int, dying: bool, exiting: bool) -> tuple[str, TaskFlags] | None:
    said = letter(state, exit_state)
    return (said, TaskFlags(dying=dying, exiting=exiting)) if said is not None else None


def defines(btf: Btf) -> list[str]:
    """The -D flags (without -D) of the iterator on the kernel this BTF
    describes; BtfError where a field is missing or not of the width read."""
    try:
        btf.struct("bpf_iter_meta")  # eaaacd23910f (v5.8) brought iterators
    except BtfError:
        raise BtfError("no BPF iterators on this kernel (v5.8+)") from None
    for member in ("__state", "state"):  # __state since 2f064a59a11f (v5.14), `long state` before
        try:
            state_off = btf.offset("task_struct", member)
        except BtfError:
            continue
        if btf.member_size("task_struct", member) not in (4, 8):
            raise BtfError(f"task_struct.{member} is neither 4 nor 8 bytes wide")
        break
    else:
        raise BtfError("task_struct has neither __state nor state")
    for member, size in (("pid", 4), ("exit_state", 4), ("flags", 4)):
        if btf.member_size("task_struct", member) != size:
            raise BtfError(f"task_struct.{member} is not {size * 8} bits wide")
    if btf.member_size("sigpending", "signal") < 4:
        raise BtfError("sigpending.signal is narrower than 32 bits")
    signal_off = btf.offset("task_struct", "pending") + btf.offset("sigpending", "signal")
    return [DEFINE, f"AW_ITER_OFF_PID={btf.offset('task_struct', 'pid')}", f"AW_ITER_OFF_STATE={state_off}",
            f"AW_ITER_OFF_EXIT_STATE={btf.offset('task_struct', 'exit_state')}",
            f"AW_ITER_OFF_FLAGS={btf.offset('task_struct', 'flags')}", f"AW_ITER_OFF_SIGNAL={signal_off}"]


def running_kernel_defines() -> tuple[list[str], str]:
    """(the -D flags, "") for the running kernel, or ([], why not)."""
    try:
        return defines(Btf.read()), ""
    except BtfError as exc:
        return [], str(exc)
