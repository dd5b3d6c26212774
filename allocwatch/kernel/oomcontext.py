# SPDX-License-Identifier: Apache-2.0
"""The -D flags of the OOM-context program (raw oom:mark_victim), from the
running kernel: where to find a task's memory cgroup id (BTF), and where
mem_cgroup_out_of_memory() lies (kallsyms), whose presence on the invoker's
stack tells a memory cgroup's OOM from the machine's.

task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id; on 64-bit kernels a
kernfs node's id is the inode number of its cgroupfs directory.
"""

from __future__ import annotations

import array
from collections.abc import Iterable
from pathlib import Path

from allocwatch.kernel.btf import Btf, BtfError

DEFINE = "AW_OOM_CONTEXT"
RAW_TP = "mark_victim"  # raw tracepoints are named without their category
FN = "aw_rtp_mark_victim"
POINTER_BYTES = 8
MEMCG_OOM_FN = "mem_cgroup_out_of_memory"
KALLSYMS = Path("/proc/kallsyms")


def text_range(kallsyms: str | Iterable[str], name: str) -> tuple[int, int] | None:
    """[start, end) of function `name` (or a compiler clone of it, `name.cold` aside)
    in a /proc/kallsyms text, or its lines as an open file gives them: end is the
    next symbol's address. None when absent or when the addresses are hidden (all
    zero: not root, or kptr_restrict). The addresses are kept as an array (5 MB
    of symbols, 200,000 lines: a list of ints and the text whole cost the daemon
    RssAnon it never gave back)."""
    start = None
    addrs = array.array("Q")
    for line in kallsyms.split("\n") if isinstance(kallsyms, str) else kallsyms:
        parts = line.split(None, 3)
        if len(parts) < 3:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        addrs.append(addr)
        sym = parts[2]
        if start is None and parts[1] in "tT" and (sym == name or (sym.startswith(name + ".") and ".cold" not in sym)):
            start = addr
    if not start:
        return None
    end = min((a for a in addrs if a > start), default=None)
    return None if end is None else (start, end)


def defines(btf: Btf, kallsyms: str | Iterable[str]) -> list[str]:
    """The -D flags (without -D) for AW_OOM_CONTEXT; BtfError when a link or the
    function is missing."""
    memcg_id = btf.enum_value("memory_cgrp_id")
    if btf.member_size("kernfs_node", "id") != 8:
        raise BtfError("kernfs_node.id is not 64 bits wide")
    where = text_range(kallsyms, MEMCG_OOM_FN)
    if where is None:
        raise BtfError(f"no {MEMCG_OOM_FN} with an address in kallsyms")
    offsets = {
        "AW_OFF_TASK_PID": btf.offset("task_struct", "pid"),
        "AW_OFF_TASK_CGROUPS": btf.offset("task_struct", "cgroups"),
        "AW_OFF_CSS_SET_MEMCG": btf.offset("css_set", "subsys") + POINTER_BYTES * memcg_id,
        "AW_OFF_CSS_CGROUP": btf.offset("cgroup_subsys_state", "cgroup"),
        "AW_OFF_CGROUP_KN": btf.offset("cgroup", "kn"),
        "AW_OFF_KN_ID": btf.offset("kernfs_node", "id"),
    }
    return [DEFINE, *(f"{k}={v}" for k, v in offsets.items()),
            f"AW_MEMCG_OOM_START={where[0]:#x}ULL", f"AW_MEMCG_OOM_END={where[1]:#x}ULL"]


OC_DEFINE = "AW_OOM_OC"
OC_FUNCTION = "out_of_memory"
OC_ENTRY_FN = "aw_kp_oom_oc"
OC_RETURN_FN = "aw_kr_oom_oc"
# enum oom_constraint's enumerators, in the words reports use
CONSTRAINT_WORDS = {"CONSTRAINT_NONE": "global", "CONSTRAINT_CPUSET": "cpuset",
                    "CONSTRAINT_MEMORY_POLICY": "mempolicy", "CONSTRAINT_MEMCG": "memcg"}


def oc_defines(btf: Btf) -> list[str]:
    """The -D flags of the probe on out_of_memory(struct oom_control *oc), where the
    kernel gives the OOM's gfp mask, order, constraint and memory cgroup
    (kprobes only: no tracepoint carries oc); BtfError when a member is missing."""
    for member, size in (("gfp_mask", 4), ("order", 4), ("constraint", 4), ("memcg", 8)):
        if btf.member_size("oom_control", member) != size:
            raise BtfError(f"oom_control.{member} is not {size} bytes wide")
    return [
        OC_DEFINE,
        f"AW_OFF_OC_GFP={btf.offset('oom_control', 'gfp_mask')}",
        f"AW_OFF_OC_ORDER={btf.offset('oom_control', 'order')}",
        f"AW_OFF_OC_CONSTRAINT={btf.offset('oom_control', 'constraint')}",
        f"AW_OFF_OC_MEMCG={btf.offset('oom_control', 'memcg')}",
        f"AW_OFF_MEMCG_CSS={btf.offset('mem_cgroup', 'css')}",
    ]


def constraint_words(btf: Btf) -> dict[int, str]:
    """enum oom_constraint value -> the word reports use (memcg, global, cpuset, mempolicy)."""
    return {v: CONSTRAINT_WORDS.get(n, n.lower()) for v, n in btf.enum_names("oom_constraint").items()}


def running_kernel_defines(
    with_oc: bool, kallsyms: Path = KALLSYMS
) -> tuple[list[str], dict[int, str], str]:
    """(the -D flags, constraint words, "") for the running kernel, or ([], {}, why
    not). `with_oc`: the kernel takes kprobes on out_of_memory, so oc is read too."""
    try:
        btf = Btf.read()
        with kallsyms.open(newline="\n", errors="replace") as lines:  # "\n" only: see procfs.lines
            flags = defines(btf, lines)
    except (BtfError, OSError) as exc:
        return [], {}, str(exc)
    if with_oc:
        try:
            return flags + oc_defines(btf), constraint_words(btf), ""
        except BtfError:
            pass  # the stack still tells a memcg's OOM
    return flags, {}, ""

