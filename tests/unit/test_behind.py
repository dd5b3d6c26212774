# SPDX-License-Identifier: Apache-2.0
"""The waits behind a writeback wait (core/behind.py): the kernel threads in memory
waits that work for the device a task waits on, named by their workqueue."""

from __future__ import annotations

from allocwatch.core import behind
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Wait

S = NS_PER_S


def kwait(tid: int, site: Site, since_s: float) -> Wait:
    return Wait(tid, tid, "kworker/u8:3", site, int(since_s * S))


def test_the_workers_of_the_device_a_task_waits_on_longest_first():
    waits = [
        (kwait(5, Site.MEMCG_RECLAIM, 90), "kworker/u8:3+flush-7:3"),  # the flusher of bdi 7:3
        (kwait(6, Site.MEMCG_RECLAIM, 95), "kworker/u8:1+loop3"),  # loop3's worker
        (kwait(6, Site.WRITEBACK_WAIT, 97), "kworker/u8:1+loop3"),  # the same thread, a shorter wait inside
        (kwait(7, Site.DIRECT_RECLAIM, 80), "kworker/u8:2+loop30"),  # another device
        (kwait(8, Site.DIRECT_RECLAIM, 80), "jbd2/loop3-8"),  # loop3's journal
        (kwait(9, Site.MEMCG_RECLAIM, 50), "kworker/1:1+events"),
    ]
    got = behind.behind(waits, {"7:3", "loop3"}, waiter_tid=100, now_ns=100 * S)
    assert [(b.tid, b.name, b.site, b.waited_s) for b in got] == [
        (8, "jbd2/loop3-8", "direct_reclaim", 20.0),
        (5, "kworker/u8:3+flush-7:3", "memcg_reclaim", 10.0),
        (6, "kworker/u8:1+loop3", "memcg_reclaim", 5.0),
    ]


def test_with_no_device_known_every_writeback_helper_and_never_the_waiter_itself():
    waits = [(kwait(5, Site.MEMCG_RECLAIM, 90), "kworker/u8:3+flush-7:3"),
             (kwait(9, Site.MEMCG_RECLAIM, 50), "kworker/1:1+events"),
             (kwait(10, Site.MEMCG_RECLAIM, 50), "kcryptd/253:0")]
    assert [b.tid for b in behind.behind(waits, set(), waiter_tid=10, now_ns=100 * S)] == [5]
    assert behind.behind([], {"loop3"}, 1, 0) == ()


def test_a_device_is_a_whole_word_of_the_name():
    assert behind.works_for("xfsaild/loop3", {"loop3"}) and behind.works_for("kworker/0:2+xfs-buf/loop3", {"loop3"})
    assert not behind.works_for("kworker/u8:2+loop30", {"loop3"})
    assert not behind.works_for("kworker/u8:2+flush-7:30", {"7:3"})
    assert not behind.works_for("kworker/u8:2+flush-17:3", {"7:3"})


def test_a_task_waits_on_writeback_at_the_site_in_its_stack_or_throttled_for_it():
    assert behind.on_writeback({Site.WRITEBACK_WAIT}, None)
    assert behind.on_writeback({Site.MEMCG_RECLAIM}, ["folio_wait_bit", "folio_wait_writeback"])
    assert behind.on_writeback({Site.MEMCG_RECLAIM}, [], throttled_for_writeback=True)  # cgroup v2's memcg reclaim
    assert not behind.on_writeback({Site.MEMCG_RECLAIM, Site.DIRTY_THROTTLE}, ["balance_dirty_pages"])


def test_a_helper_waiting_on_writeback_itself_waits_beside_the_task_not_ahead_of_it():
    """jbd2's commit in folio_wait_writeback on the same device (seen on 6.18 with
    dioread_lock) holds nothing up: only its memory waits count."""
    waits = [(kwait(8, Site.WRITEBACK_WAIT, 90), "jbd2/loop3-8"),
             (kwait(9, Site.DIRTY_THROTTLE, 90), "kworker/u8:2+flush-7:3"),
             (kwait(10, Site.MEMCG_RECLAIM, 95), "kworker/u8:1+loop3")]
    assert [b.tid for b in behind.behind(waits, {"7:3", "loop3"}, waiter_tid=100, now_ns=100 * S)] == [10]
    # listed apart, beside it: jbd2 and the flusher of that device wait on its writes too
    side = behind.beside(waits, {"7:3", "loop3"}, waiter_tid=100, now_ns=100 * S)
    assert [(b.tid, b.name, b.site) for b in side] == [(8, "jbd2/loop3-8", "writeback_wait"),
                                                        (9, "kworker/u8:2+flush-7:3", "dirty_throttle")]


def test_nothing_is_beside_a_task_whose_device_is_not_known():
    """A helper waiting on some writeback says nothing of a wait whose device is unknown."""
    waits = [(kwait(8, Site.WRITEBACK_WAIT, 90), "jbd2/loop3-8")]
    assert behind.beside(waits, set(), waiter_tid=100, now_ns=100 * S) == ()
    assert behind.beside(waits, {"loop4"}, waiter_tid=100, now_ns=100 * S) == ()
