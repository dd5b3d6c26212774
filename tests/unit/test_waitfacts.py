# SPDX-License-Identifier: Apache-2.0
"""kernel/waitfacts.py on the fake /proc tree of the host tests."""

from __future__ import annotations

from allocwatch.core.sites import Site
from allocwatch.core.tracker import Wait
from allocwatch.kernel import hostfs
from allocwatch.kernel.waitfacts import WaitFacts
from tests.unit.fakes import HOST_PROC as PROC


def wait(tid: int, start_ns: int = 5) -> Wait:
    return Wait(tid=tid, pid=1000, comm="web", site=Site.MEMCG_RECLAIM, start_ns=start_ns, dstate=False)


def test_task_owner_and_task_now_are_task_facts_in_two_reads():
    info, flags = hostfs.task_facts(PROC, 1000, 1001)
    assert hostfs.task_owner(PROC, 1000, 1001) == (info.uid, info.cmdline)
    state, now_flags = hostfs.task_now(PROC, 1000, 1001)
    assert state == info.state == "D"
    assert now_flags == flags  # 1001's SIGKILL is in its own set (stat), where task_now looks


def test_facts_are_read_once_a_wait_and_a_cmdline_once_a_process_in_a_batch():
    facts = WaitFacts(PROC)
    a, b = wait(1000), wait(1001)
    facts.read_ahead([a, b], owners_of=2)
    assert facts.reads == 2 + 2 + 1  # two cgroups, two statuses, one cmdline
    assert facts.owner(a) == hostfs.task_owner(PROC, 1000, 1000)
    facts.cgroup(b)
    assert facts.reads == 5  # neither read again


def test_owners_only_for_the_first_waits_and_forgetting_ended_ones():
    facts = WaitFacts(PROC)
    a, b = wait(1000), wait(1001)
    facts.read_ahead([a, b], owners_of=1)
    assert facts.reads == 2 + 2  # two cgroups, one status and its cmdline
    facts.keep({b.key})
    assert len(facts) == 1
    facts.cgroup(a)  # forgotten: read afresh
    assert facts.reads == 5
    again = wait(1001, start_ns=99)  # a later wait of the same task: its own facts
    facts.owner(again)
    assert facts.reads == 7
