# SPDX-License-Identifier: Apache-2.0
"""The -D flags of the raw sched_switch program, from the running kernel's BTF.

Every context switch runs the D-state tracking. On the raw tracepoint it costs
less than on the classic one (no record is filled in for it), but the raw one
hands over struct pointers: the incoming task's pid is read from
`next->pid`, at the offset BTF gives, never at one of whatever headers bcc
compiles against. The outgoing task is `current` still, so its pid and comm
come from helpers. Without BTF, or without the fields, the classic
sched:sched_switch tracepoint is attached instead (its fields come with
its format file, so no struct is read there).

The raw arguments are the tracepoint's TP_PROTO, after the void *__data every
raw tracepoint takes first, as BTF says in the typedef btf_trace_sched_switch:
  - since fa2c3254d7cf ("sched/tracing: Don't re-read p->state when emitting
    sched_switch event", v5.18): (bool preempt, struct task_struct *prev,
    struct task_struct *next, unsigned int prev_state);
  - before: (bool preempt, prev, next), and the state is read from prev:
    `__state` (unsigned int) since 2f064a59a11f ("sched: Change task_struct::state",
    v5.14), `state` (long) before it. The kernel's own tracepoint read it there
    too on those kernels, with the same race the first commit fixed.
"""

from __future__ import annotations

from allocwatch.kernel.btf import INT, PTR, Btf, BtfError

DEFINE = "AW_RTP_SCHED_SWITCH"
PREV_STATE_DEFINE = "AW_RTP_SCHED_SWITCH_PREV_STATE"  # prev_state is the fourth argument
RAW_TP = "sched_switch"  # raw tracepoints are named without their category
FN = "aw_rtp_sched_switch"
TYPEDEF = "btf_trace_sched_switch"


def defines(btf: Btf) -> list[str]:
    """The -D flags (without -D) for the raw sched_switch program on the kernel
    this BTF describes; BtfError when its arguments or fields are not as expected."""
    params = btf.typedef_params(TYPEDEF)
    kinds = [p.kind for p in params]
    if kinds[:4] != [PTR, INT, PTR, PTR] or len(params) not in (4, 5):
        raise BtfError(f"{TYPEDEF} takes arguments of BTF kinds {kinds}, not (__data, preempt, prev, next[, state])")
    if btf.member_size("task_struct", "pid") != 4:
        raise BtfError("task_struct.pid is not 32 bits wide")
    flags = [DEFINE, f"AW_SWITCH_OFF_PID={btf.offset('task_struct', 'pid')}"]
    if len(params) == 5:  # fa2c3254d7cf (v5.18): prev_state is handed over
        if params[4].kind != INT or params[4].size_or_type != 4:
            raise BtfError(f"{TYPEDEF}'s prev_state is not an unsigned int")
        return [*flags, PREV_STATE_DEFINE]
    # Before v5.18: prev's state, `__state` since 2f064a59a11f (v5.14), `state` before.
    for member in ("__state", "state"):
        try:
            offset, size = btf.offset("task_struct", member), btf.member_size("task_struct", member)
        except BtfError:
            continue
        if size not in (4, 8):
            raise BtfError(f"task_struct.{member} is {size} bytes wide")
        # little-endian: the low 32 bits, where every state bit is, come first
        return [*flags, f"AW_SWITCH_OFF_STATE={offset}"]
    raise BtfError("task_struct has neither __state nor state")


def running_kernel_defines() -> tuple[list[str], str]:
    """(the -D flags, "") for the running kernel, or ([], why not)."""
    try:
        return defines(Btf.read()), ""
    except BtfError as exc:
        return [], str(exc)
