# SPDX-License-Identifier: Apache-2.0
"""The task iterator against /proc, on the real kernel: for every task whose
stat file reads the same before and after the iterator's read, the raw flags
and pending-signal word are the stat file's `flags` and `signal` fields, and
the letter, where the iterator gives one, is the stat file's. A task held in
the memcg OOM wait reads D; a thread with SIGUSR1 pending shows it in its own
set; a stopped process and a zombie are left to /proc."""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from allocwatch.core.host import TaskFlags
from allocwatch.kernel import kernelinfo, probes, taskiter
from allocwatch.kernel.bpfsource import BpfSource, LoadOptions
from lab import memcg

# A thread that blocks SIGUSR1, then sends itself one: it stays pending in
# that thread's own set (the stat file's `signal` field).
PENDING_CHILD = """
import signal, threading, time
ready = threading.Event()
def hold():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    ready.set()
    time.sleep(600)
t = threading.Thread(target=hold, daemon=True)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
t.start()
ready.wait()
print(t.native_id, flush=True)
time.sleep(600)
"""
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)


def stat_fields(tid: int) -> list[str] | None:
    """The stat file's fields after comm (state first), or None once the task is gone."""
    try:
        raw = Path(f"/proc/{tid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 1:].decode().split()


def records(data: bytes) -> dict[int, tuple[int, int, int, int]]:
    words = array.array("I")
    words.frombytes(data)
    n = taskiter.FIELDS
    return {w[0]: (w[1], w[2], w[3], w[4]) for w in (words[i:i + n] for i in range(0, len(words), n))}


def agree(tids: list[int], before: dict[int, list[str] | None], after: dict[int, list[str] | None],
          raw: dict[int, tuple[int, int, int, int]], said: Mapping[int, tuple[str, TaskFlags]]) -> tuple[int, int]:
    """Check each task whose stat read the same before and after against the
    iterator's record; (tasks compared, of them with a letter)."""
    compared = lettered = 0
    for t in tids:
        b, a = before[t], after[t]
        if t not in raw or b is None or b != a:
            continue  # gone, changed while read, or a task this pid namespace's iterator skips
        state, _, flags, signal_lo = raw[t]
        assert flags == int(b[6]) & 0xFFFFFFFF, f"{t}: flags {flags:#x}, stat says {int(b[6]):#x}"
        # the stat file shows the word without bit 31 (fs/proc/array.c: & 0x7fffffff)
        assert signal_lo & 0x7FFFFFFF == int(b[28]), f"{t}: signal {signal_lo:#x}, stat says {b[28]}"
        compared += 1
        if t in said:
            assert said[t][0] == b[0], f"{t}: {said[t][0]} from the iterator, {b[0]} in stat (raw {state:#x})"
            lettered += 1
    return compared, lettered


@pytest.mark.requires_cgroup_v1_memory
def test_the_task_iterator_says_what_each_task_s_stat_file_says():
    iter_defines, why = taskiter.running_kernel_defines()
    assert iter_defines, f"no task iterator on this kernel: {why}"
    features = kernelinfo.read_features(Path("/sys/kernel/tracing"), probes.all_tracepoint_names(),
                                        probes.all_function_names())
    src = BpfSource(probes.plan(features), features,
                    LoadOptions(long_wait_ns=10**9, iter_defines=tuple(iter_defines)))
    children: list[subprocess.Popen] = []
    try:
        src.load()
        assert src.task_states_how == "task iterator", src.task_states_how
        with memcg.MemCgroup("aw-iter") as group:
            (hog,) = memcg.stall_indefinitely(group, 1, 64)
            pending = subprocess.Popen([sys.executable, "-c", PENDING_CHILD], stdout=subprocess.PIPE, text=True)
            children.append(pending)
            assert pending.stdout is not None
            holder_tid = int(pending.stdout.readline())
            stopped = subprocess.Popen(["sleep", "600"])
            children.append(stopped)
            os.kill(stopped.pid, signal.SIGSTOP)
            zombie = subprocess.Popen(["true"])
            children.append(zombie)
            deadline = time.monotonic() + 20
            while not (memcg.proc_state(hog.pid) == "D" and memcg.proc_state(stopped.pid) == "T"
                       and memcg.proc_state(zombie.pid) == "Z"):
                assert time.monotonic() < deadline, "the D, T and Z tasks never all settled"
                time.sleep(0.05)

            tids = [int(p.name) for p in Path("/proc").glob("[0-9]*/task/[0-9]*")]
            before = {t: stat_fields(t) for t in tids}
            data = src.read_task_iter()
            after = {t: stat_fields(t) for t in tids}
            assert data is not None and len(data) % taskiter.RECORD_BYTES == 0
            raw = records(data)
            said = taskiter.decode(data)
            compared, lettered = agree(tids, before, after, raw, said)
            assert compared >= 20 and lettered >= 20, (compared, lettered)
            assert said[hog.pid][0] == "D"
            assert raw[holder_tid][3] & SIGUSR1_BIT and not said[holder_tid][1].dying
            assert stopped.pid not in said and zombie.pid not in said  # T and Z: /proc says them
            assert said[os.getpid()][0] == "R"
            memcg.release(group)
            assert hog.wait_done(20)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait()
        src.close()

