# SPDX-License-Identifier: Apache-2.0
"""kernel/btf.py on a BTF blob made here, laid out as include/uapi/linux/btf.h says."""

from __future__ import annotations

import struct

import pytest

from allocwatch.kernel import oomcontext, schedswitch
from allocwatch.kernel.btf import ARRAY, FUNC_PROTO, INT, PTR, TYPEDEF, UNION, Btf, BtfError
from tests.unit.btfblob import Blob


def kernel_like() -> bytes:
    b = Blob()
    u32 = b.add(INT, "unsigned int", 4, struct.pack("<I", 32))
    u64 = b.add(INT, "u64", 8, struct.pack("<I", 64))
    ptr = b.add(PTR, "", 0)
    arr = b.add(ARRAY, "", 0, struct.pack("<III", ptr, u32, 14))
    b.enum("cgroup_subsys_id", [("cpuset_cgrp_id", 0), ("memory_cgrp_id", 4)])
    b.enum("oom_constraint", [("CONSTRAINT_NONE", 0), ("CONSTRAINT_CPUSET", 1),
                              ("CONSTRAINT_MEMORY_POLICY", 2), ("CONSTRAINT_MEMCG", 3)])
    anon = b.struct("", 8, [("id", u64, 0)], kind=UNION)
    b.struct("kernfs_node", 128, [("count", u32, 0), ("", anon, 96)])
    b.struct("task_struct", 4096, [("state", u32, 0), ("pid", u32, 1264), ("cgroups", ptr, 2376)])
    b.struct("css_set", 256, [("refcount", u32, 0), ("subsys", arr, 8)])
    b.struct("cgroup_subsys_state", 200, [("cgroup", ptr, 0)])
    b.struct("cgroup", 2000, [("self", u64, 0), ("kn", ptr, 256)])
    return b.bytes()


def test_offsets_through_anonymous_members_and_enums():
    btf = Btf(kernel_like())
    assert btf.offset("task_struct", "cgroups") == 2376
    assert btf.offset("kernfs_node", "id") == 96  # inside an anonymous union
    assert btf.member_size("kernfs_node", "id") == 8
    assert btf.enum_value("memory_cgrp_id") == 4
    with pytest.raises(BtfError):
        btf.offset("task_struct", "nope")
    with pytest.raises(BtfError):
        btf.struct("oom_control")


KALLSYMS = (
    "ffffffff816ad000 t try_charge_memcg\n"
    "ffffffff816ad180 t mem_cgroup_out_of_memory\n"
    "ffffffff816ad2c0 T mem_cgroup_oom_synchronize\n"
    "ffffffff81212000 t mem_cgroup_out_of_memory.cold\n"
    "ffffffffc0000000 t some_module_fn\t[xfs]\n"
)


def test_oom_context_defines():
    btf = Btf(kernel_like())
    assert oomcontext.defines(btf, KALLSYMS) == [
        "AW_OOM_CONTEXT", "AW_OFF_TASK_PID=1264", "AW_OFF_TASK_CGROUPS=2376", "AW_OFF_CSS_SET_MEMCG=40",
        "AW_OFF_CSS_CGROUP=0", "AW_OFF_CGROUP_KN=256", "AW_OFF_KN_ID=96",
        "AW_MEMCG_OOM_START=0xffffffff816ad180ULL", "AW_MEMCG_OOM_END=0xffffffff816ad2c0ULL",
    ]


def test_a_function_s_text_ends_at_the_next_symbol_and_hidden_addresses_give_none():
    assert oomcontext.text_range(KALLSYMS, "mem_cgroup_out_of_memory") == (0xFFFFFFFF816AD180, 0xFFFFFFFF816AD2C0)
    assert oomcontext.text_range(KALLSYMS, "absent") is None
    hidden = "0000000000000000 t mem_cgroup_out_of_memory\n0000000000000000 T next\n"  # not root
    assert oomcontext.text_range(hidden, "mem_cgroup_out_of_memory") is None
    with pytest.raises(BtfError):
        oomcontext.defines(Btf(kernel_like()), "")


def test_not_btf_is_a_typed_error():
    with pytest.raises(BtfError):
        Btf(b"\0" * 32)


def switch_kernel(with_prev_state: bool, state_member: str = "__state", state_bytes: int = 4) -> bytes:
    """task_struct and btf_trace_sched_switch as a kernel of each era lays them out:
    prev_state an argument since fa2c3254d7cf (v5.18); before, prev's `__state`
    (2f064a59a11f, v5.14) or `long state`."""
    b = Blob()
    u32 = b.add(INT, "unsigned int", 4, struct.pack("<I", 32))
    state_t = u32 if state_bytes == 4 else b.add(INT, "long int", 8, struct.pack("<I", 64))
    boolean = b.add(INT, "_Bool", 1, struct.pack("<I", 8))
    task = b.struct("task_struct", 4096, [(state_member, state_t, 24), ("pid", u32, 1264)])
    void_ptr = b.add(PTR, "", 0)
    task_ptr = b.add(PTR, "", task)
    params = [void_ptr, boolean, task_ptr, task_ptr] + ([u32] if with_prev_state else [])
    proto = b.add(FUNC_PROTO, "", 0, b"".join(struct.pack("<II", 0, t) for t in params), len(params))
    b.add(TYPEDEF, "btf_trace_sched_switch", b.add(PTR, "", proto))
    return b.bytes()


def test_raw_sched_switch_takes_prev_state_as_an_argument_since_v5_18():
    assert schedswitch.defines(Btf(switch_kernel(True))) == [
        "AW_RTP_SCHED_SWITCH", "AW_SWITCH_OFF_PID=1264", "AW_RTP_SCHED_SWITCH_PREV_STATE"]


def test_raw_sched_switch_reads_prev_s_state_before_v5_18():
    assert schedswitch.defines(Btf(switch_kernel(False))) == [
        "AW_RTP_SCHED_SWITCH", "AW_SWITCH_OFF_PID=1264", "AW_SWITCH_OFF_STATE=24"]
    assert schedswitch.defines(Btf(switch_kernel(False, "state", 8)))[-1] == "AW_SWITCH_OFF_STATE=24"


def test_no_raw_sched_switch_without_its_prototype():
    """The loader then attaches the classic tracepoint (tests/unit/test_bpfsource.py)."""
    with pytest.raises(BtfError, match="btf_trace_sched_switch"):
        schedswitch.defines(Btf(kernel_like()))
