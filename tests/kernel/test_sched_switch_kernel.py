# SPDX-License-Identifier: Apache-2.0
"""The D-state tracking on each way of attaching sched_switch: the raw
tracepoint with prev_state handed over (v5.18+), the raw one reading
prev->__state at its BTF offset (how kernels before v5.18 are read), and the
classic tracepoint (no BTF). A task held in the memcg OOM wait must be seen
asleep, and its sleep must end when it is let go, on all three; a sleep
seeded from user space (a task asleep before the programs came) too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from allocwatch.core.sites import SITE_DSTATE
from allocwatch.kernel import kernelinfo, probes, schedswitch, wire
from allocwatch.kernel.bpfsource import SEEDED_TUNABLE, BpfSource, LoadOptions
from allocwatch.kernel.btf import Btf
from lab import memcg

LONG_WAIT_NS = 10_000_000  # every sleep of the held task is sent up when it ends


def switch_variants() -> dict[str, tuple[str, ...]]:
    raw = tuple(schedswitch.defines(Btf.read()))
    btf = Btf.read()
    before_v5_18 = (schedswitch.DEFINE, f"AW_SWITCH_OFF_PID={btf.offset('task_struct', 'pid')}",
                    f"AW_SWITCH_OFF_STATE={btf.offset('task_struct', '__state')}")
    return {"raw": raw, "raw reading prev's state": before_v5_18, "classic": ()}


@contextmanager
def loaded(switch_defines: tuple[str, ...]) -> Iterator[BpfSource]:
    features = kernelinfo.read_features(Path("/sys/kernel/tracing"), probes.all_tracepoint_names(),
                                        probes.all_function_names())
    opts = LoadOptions(long_wait_ns=LONG_WAIT_NS, dstate_end_ns=LONG_WAIT_NS, switch_defines=switch_defines)
    src = BpfSource(probes.plan(features), features, opts)
    try:
        src.load()
        yield src
    finally:
        src.close()


def held(group: memcg.MemCgroup) -> memcg.Hog:
    (hog,) = memcg.stall_indefinitely(group, 1, 64)
    deadline = time.monotonic() + 20
    while memcg.proc_state(hog.pid) != "D":
        assert time.monotonic() < deadline, f"the hog never slept in D ({memcg.proc_state(hog.pid)})"
        time.sleep(0.05)
    return hog


def end_of(src: BpfSource, tid: int, start_ns: int, timeout_s: float = 10) -> wire.WaitEnd | None:
    """The end of the task's D sleep that began at start_ns (earlier sleeps of it end too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in src.drain():
            if isinstance(e, wire.WaitEnd) and e.tid == tid and e.site == SITE_DSTATE and e.start_ns == start_ns:
                return e
        time.sleep(0.05)
    return None


@pytest.mark.requires_cgroup_v1_memory
@pytest.mark.parametrize("variant", ["raw", "raw reading prev's state", "classic"])
def test_a_d_sleep_is_seen_and_ends_on_every_way_of_attaching(variant):
    defines = switch_variants()[variant]
    with loaded(defines) as src, memcg.MemCgroup("aw-switch") as group:
        assert src.sched_switch_how.startswith("raw" if defines else "classic"), src.sched_switch_how
        hog = held(group)
        open_now = [w for w in src.inflight() if w.tid == hog.pid and w.site == SITE_DSTATE]
        assert open_now, f"no D sleep open for {hog.pid}"
        memcg.release(group)
        assert hog.wait_done(20)
        end = end_of(src, hog.pid, open_now[0].start_ns)
        assert end is not None and end.duration_ns > 0, f"the sleep of {hog.pid} never ended"
        assert not [w for w in src.inflight() if w.tid == hog.pid and w.site == SITE_DSTATE]
        hog.stop()


@pytest.mark.requires_cgroup_v1_memory
def test_a_seeded_sleep_ends_on_the_raw_tracepoint_and_then_lookups_stop():
    """A seeded sleep is in none of the raw handler's slots: while it is open every
    switch-in is looked up, and once it has ended that stops."""
    with memcg.MemCgroup("aw-switch-seed") as group:
        hog = held(group)
        with loaded(switch_variants()["raw"]) as src:
            tunables = src._bpf[b"tunables"]
            start_ns = time.monotonic_ns()
            src.seed_dwait(hog.pid, hog.pid, "hog", start_ns)
            assert tunables[tunables.Key(SEEDED_TUNABLE)].value == 1
            time.sleep(0.1)  # a sleep shorter than LONG_WAIT_NS would end unsent
            src.inflight()
            assert tunables[tunables.Key(SEEDED_TUNABLE)].value == 1  # still asleep
            memcg.release(group)
            assert hog.wait_done(20)
            assert end_of(src, hog.pid, start_ns) is not None, "the seeded sleep never ended"
            src.inflight()
            assert tunables[tunables.Key(SEEDED_TUNABLE)].value == 0
        hog.stop()
