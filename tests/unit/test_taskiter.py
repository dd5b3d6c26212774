# SPDX-License-Identifier: Apache-2.0
"""kernel/taskiter.py: the task iterator's records decoded as /proc says them,
its -D flags from BTF, and a block's TaskReader taking states from it (the
real iterator against /proc: tests/kernel/test_task_iter_kernel.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from allocwatch.core.host import TaskFlags
from allocwatch.core.sites import Site
from allocwatch.core.tracker import Wait
from allocwatch.kernel import hostfs, taskiter
from allocwatch.kernel.btf import INT, STRUCT, Btf, BtfError
from allocwatch.kernel.tasks import TaskReader
from allocwatch.kernel.waitfacts import WaitFacts
from tests.unit.btfblob import Blob

SIGKILL_BIT = 1 << 8


def record(tid: int, state: int, exit_state: int = 0, flags: int = 0, signal: int = 0) -> bytes:
    return struct.pack("<5I", tid, state, exit_state, flags, signal)


@pytest.mark.parametrize(("state", "exit_state", "said"), [
    (0x0, 0, "R"),
    (0x1, 0, "S"),
    (0x2, 0, "D"),
    (0x102, 0, "D"),  # TASK_KILLABLE: the memcg OOM wait
    (0x402, 0, "I"),  # TASK_IDLE: an idle kernel thread
    (0x2001, 0, "S"),  # TASK_FREEZABLE (v6.1) changes no letter
    (0x2102, 0, "D"),
    (0x4, 0, None),  # stopped
    (0x8, 0, None),  # traced
    (0x40, 0, None),  # parked
    (0x200, 0, None),  # waking
    (0x1000, 0, None),  # an rtlock wait, which /proc shows as D
    (0x8000, 0, None),  # frozen
    (0x100, 0, None),  # a flag bit alone
    (0x80, 0x20, None),  # a zombie: /proc says it from exit_state
    (0x0, 0x10, None),
])
def test_a_letter_only_where_the_raw_state_says_it_exactly(state, exit_state, said):
    assert taskiter.letter(state, exit_state) == said


def test_records_decode_to_letters_and_flags_as_the_stat_file_gives_them():
    data = (record(10, 0x102) + record(11, 0x102, signal=SIGKILL_BIT | 1 << 14)
            + record(12, 0x1, flags=hostfs.PF_EXITING) + record(13, 0x4) + record(14, 0x80, exit_state=0x20)
            + record(15, 0x0, signal=1 << 14))
    got = taskiter.decode(data + b"\x01\x02")  # a torn record at the end is dropped
    assert got == {
        10: ("D", TaskFlags(dying=False, exiting=False)),
        11: ("D", TaskFlags(dying=True, exiting=False)),
        12: ("S", TaskFlags(dying=False, exiting=True)),
        15: ("R", TaskFlags(dying=False, exiting=False)),  # SIGTERM pending is not dying
    }
    assert taskiter.decode(b"") == {}


def iter_kernel(state_member: str = "__state", state_bytes: int = 4, iterators: bool = True,
                pid_bytes: int = 4) -> bytes:
    b = Blob()
    u32 = b.add(INT, "unsigned int", 4, struct.pack("<I", 32))
    u64 = b.add(INT, "long unsigned int", 8, struct.pack("<I", 64))
    u16 = b.add(INT, "short unsigned int", 2, struct.pack("<I", 16))
    state_t = u32 if state_bytes == 4 else u64
    b.struct("sigpending", 24, [("list", u64, 0), ("signal", u64, 16)])
    sigpending = b.next_id - 1
    b.struct("task_struct", 4096, [(state_member, state_t, 24), ("flags", u32, 44), ("exit_state", u32, 1160),
                                   ("pid", u32 if pid_bytes == 4 else u16, 1264), ("pending", sigpending, 1888)])
    if iterators:
        b.struct("bpf_iter_meta", 24, [("seq", u64, 0)], kind=STRUCT)
    return b.bytes()


def test_defines_take_the_running_kernel_s_offsets():
    assert taskiter.defines(Btf(iter_kernel())) == [
        "AW_TASK_ITER", "AW_ITER_OFF_PID=1264", "AW_ITER_OFF_STATE=24", "AW_ITER_OFF_EXIT_STATE=1160",
        "AW_ITER_OFF_FLAGS=44", "AW_ITER_OFF_SIGNAL=1904"]
    # before 2f064a59a11f (v5.14): `long state`, whose low half holds every state bit
    assert "AW_ITER_OFF_STATE=24" in taskiter.defines(Btf(iter_kernel("state", 8)))


def test_no_defines_before_v5_8_or_with_fields_of_another_width():
    with pytest.raises(BtfError, match="v5.8"):
        taskiter.defines(Btf(iter_kernel(iterators=False)))
    with pytest.raises(BtfError, match="pid"):
        taskiter.defines(Btf(iter_kernel(pid_bytes=2)))
    with pytest.raises(BtfError, match="neither __state nor state"):
        taskiter.defines(Btf(iter_kernel("status")))


def stat_tree(root: Path, tids: list[int], state: str = "S", signal: int = 0) -> None:
    for tid in tids:
        d = root / "100" / "task" / str(tid)
        d.mkdir(parents=True, exist_ok=True)
        fields = ["0"] * 40
        fields[27] = str(signal)  # the 29th field after comm, state being the first
        (d / "stat").write_text(f"{tid} (w) {state} " + " ".join(fields) + "\n")
        (d / "status").write_text("Uid:\t0\t0\t0\t0\n")
        (d / "cgroup").write_text("4:memory:/box\n")
        (d / "stack").write_text("")
    (root / "100" / "cmdline").write_bytes(b"w\0")


def wait(tid: int) -> Wait:
    return Wait(tid, 100, "w", Site.MEMCG_OOM_WAIT, 0)


def reader(root: Path, states: dict[int, tuple[str, TaskFlags]] | None, reads: list[int]) -> TaskReader:
    def task_states():
        reads.append(1)
        return states
    return TaskReader(root, WaitFacts(root), lambda tid, start: None, task_states=task_states)


def test_a_big_block_takes_states_from_one_read_and_a_task_it_lacks_from_stat(tmp_path):
    tids = list(range(1000, 1000 + taskiter.STATES_AT_ONCE_FROM))
    stat_tree(tmp_path, tids, state="S", signal=SIGKILL_BIT)  # /proc would say S and dying: the bulk read wins
    said = {t: ("D", TaskFlags(dying=t == 1001, exiting=False)) for t in tids[1:]}  # not the first one
    reads: list[int] = []
    r = reader(tmp_path, said, reads)
    r.new_block(len(tids))
    assert reads == [1]
    assert r.detail(wait(1001)).state == "D" and r.detail(wait(1001)).dying
    assert r.brief(100, 1002, {}, wait(1002)).dying is False  # the bulk read's, not the stat file's
    first = r.detail(wait(1000))
    assert first.state == "S" and first.dying  # the iterator did not say it: its stat did


def test_a_small_block_or_a_failed_read_reads_each_stat(tmp_path):
    stat_tree(tmp_path, [1000], state="S")
    reads: list[int] = []
    r = reader(tmp_path, {1000: ("D", TaskFlags(dying=False, exiting=False))}, reads)
    r.new_block(taskiter.STATES_AT_ONCE_FROM - 1)
    assert reads == [] and r.detail(wait(1000)).state == "S"
    failed = reader(tmp_path, None, reads)  # the iterator's read failed: None
    failed.new_block(10_000)
    assert reads == [1] and failed.detail(wait(1000)).state == "S"
    # a later small block forgets the big one's states
    r.new_block(10_000)
    assert r.detail(wait(1000)).state == "D"
    r.new_block(1)
    assert r.detail(wait(1000)).state == "S"
    r.new_block(10_000)
    r.forget_states()  # the block has read its tasks
    assert r.detail(wait(1000)).state == "S"


def test_every_task_at_once_only_where_one_read_costs_less_than_the_stat_files():
    assert not taskiter.states_at_once(99, 0) and taskiter.states_at_once(100, 0)
    # 120,000 tasks on the host: one read costs what 10,000 stat files do
    assert not taskiter.states_at_once(9_999, 120_000) and taskiter.states_at_once(10_000, 120_000)


def test_the_reader_learns_the_host_s_tasks_from_its_last_read(tmp_path):
    stat_tree(tmp_path, [1000])
    reads: list[int] = []
    host = {t: ("S", TaskFlags(dying=False, exiting=False)) for t in range(2400)}  # 2,400 tasks: 200 a stat file
    r = reader(tmp_path, host, reads)
    r.new_block(150)
    assert reads == [1]  # nothing known of the host yet: 100 is enough
    r.new_block(150)
    assert reads == [1]  # 150 stat files cost less than one read of 2,400 tasks
    r.new_block(200)
    assert reads == [1, 1]
