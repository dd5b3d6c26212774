# SPDX-License-Identifier: Apache-2.0
"""The -D flags of the OOM-context program (raw oom:mark_victim), from the
running kernel's BTF: where to find a task's memory cgroup id.

task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id; on 64-bit kernels a
kernfs node's id is the inode number of its cgroupfs directory.
"""

from __future__ import annotations

from allocwatch.kernel.btf import Btf, BtfError

DEFINE = "AW_OOM_CONTEXT"
POINTER_BYTES = 8


def defines(btf: Btf) -> list[str]:
    """The -D flags (without -D) for AW_OOM_CONTEXT; BtfError when a link is missing."""
    memcg_id = btf.enum_value("memory_cgrp_id")
    if btf.member_size("kernfs_node", "id") != 8:
        raise BtfError("kernfs_node.id is not 64 bits wide")
    offsets = {
        "AW_OFF_TASK_PID": btf.offset("task_struct", "pid"),
        "AW_OFF_TASK_CGROUPS": btf.offset("task_struct", "cgroups"),
        "AW_OFF_CSS_SET_MEMCG": btf.offset("css_set", "subsys") + POINTER_BYTES * memcg_id,
        "AW_OFF_CSS_CGROUP": btf.offset("cgroup_subsys_state", "cgroup"),
        "AW_OFF_CGROUP_KN": btf.offset("cgroup", "kn"),
        "AW_OFF_KN_ID": btf.offset("kernfs_node", "id"),
    }
    return [DEFINE, *(f"{k}={v}" for k, v in offsets.items())]


def constraint_names(btf: Btf) -> dict[int, str]:
    """enum oom_constraint value -> the name reports use (memcg, global, cpuset, mempolicy)."""
    short = {"CONSTRAINT_NONE": "global", "CONSTRAINT_CPUSET": "cpuset",
             "CONSTRAINT_MEMORY_POLICY": "mempolicy", "CONSTRAINT_MEMCG": "memcg"}
    return {v: short.get(n, n.lower()) for v, n in btf.enum_names("oom_constraint").items()}
