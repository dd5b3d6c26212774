# SPDX-License-Identifier: Apache-2.0
"""Naming D-state sleeps: hints, stacks read once, pruning."""

from allocwatch.core.classify import StackClassifier
from allocwatch.core.dstate import DstateNamer
from allocwatch.core.model import InflightWait, WaitEnd
from allocwatch.core.sites import SITE_DSTATE, Site
from allocwatch.kernel.probes import CATALOG

S = 1_000_000_000
OOM_STACK = ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory", "exc_page_fault", "asm_exc_page_fault"]


def classifier(*sites):
    return StackClassifier([e for e in CATALOG if e.site in sites])


def raw(tid=5, start=0, hint=None):
    return InflightWait(tid, tid, "t", SITE_DSTATE, start, None, None, hint)


def test_innermost_known_frame_wins():
    c = classifier(Site.WRITEBACK_WAIT, Site.ALLOC_SLOWPATH, Site.MEMCG_OOM_WAIT)
    assert c.classify(OOM_STACK) is Site.MEMCG_OOM_WAIT
    frames = ["folio_wait_bit_common", "folio_wait_writeback", "shrink_folio_list",
              "try_to_free_pages", "__alloc_pages_slowpath.constprop.0"]
    assert c.classify(frames) is Site.WRITEBACK_WAIT
    assert c.classify(["folio_wait_bit_common", "__alloc_pages_slowpath.constprop.0"]) is Site.ALLOC_SLOWPATH
    assert c.classify(["io_schedule", "blk_mq_get_tag"]) is None


def test_stack_read_once_after_classify_age():
    reads = []

    def read(pid, tid):
        reads.append(tid)
        return OOM_STACK

    n = DstateNamer(classifier(Site.MEMCG_OOM_WAIT), read, classify_after_ns=S)
    assert n.name_all([raw()], S // 2) == []  # too young: not even read
    assert reads == []
    for now in (S, 2 * S, 3 * S):
        waits = n.name_all([raw()], now)
        assert [w.site for w in waits] == [Site.MEMCG_OOM_WAIT] and waits[0].dstate
    assert reads == [5]
    assert n.stack_of(5, 0) == OOM_STACK


def test_unnamed_sleep_is_not_a_wait_and_not_reread():
    reads = []
    n = DstateNamer(classifier(Site.MEMCG_OOM_WAIT), lambda p, t: reads.append(t) or ["io_schedule"], S)
    assert n.name_all([raw()], 2 * S) == []
    assert n.name_all([raw()], 3 * S) == []
    assert reads == [5]


def test_hint_names_at_once_without_waiting():
    n = DstateNamer(classifier(), lambda p, t: None, classify_after_ns=10 * S)
    waits = n.name_all([raw(hint=int(Site.WRITEBACK_WAIT))], 1)
    assert [w.site for w in waits] == [Site.WRITEBACK_WAIT]


def test_end_named_from_cache_then_pruned():
    n = DstateNamer(classifier(Site.MEMCG_OOM_WAIT), lambda p, t: OOM_STACK, S)
    n.name_all([raw()], 2 * S)
    n.name_all([], 3 * S)  # it ended before this snapshot
    end = WaitEnd(5, 5, "t", SITE_DSTATE, 0, int(2.5 * S), None, None, None)
    named = n.name_end(end)
    assert named is not None and named.wait.site is Site.MEMCG_OOM_WAIT
    n.prune()
    assert n.name_end(end) is None


def test_comm_from_proc_keeps_its_raw_bytes(tmp_path):
    """A task stuck before start is named from /proc/PID/stat: CR, ')' and 0xff survive."""
    from allocwatch.core.model import encode_comm
    from allocwatch.kernel import procfs

    raw = b"a\rb) c\xff"
    d = tmp_path / "9" / "task" / "9"
    d.mkdir(parents=True)
    (d / "stat").write_bytes(b"9 (" + raw + b") D 1 2 3\n")
    ((pid, tid, comm),) = procfs.tasks_in_state(tmp_path, "D")
    assert (pid, tid) == (9, 9) and encode_comm(comm) == raw


def test_the_same_entries_name_the_same_without_a_look_and_a_young_one_still_ripens():
    reads = []
    n = DstateNamer(classifier(Site.MEMCG_OOM_WAIT), lambda p, t: reads.append(t) or ["mem_cgroup_oom_synchronize"],
                    classify_after_ns=S)
    old, young = raw(tid=5, start=0), raw(tid=6, start=S)
    first = n.name_all([old, young], 2 * S // 1 - S // 2)  # 1.5 s: the young one (0.5 s) is not named yet
    assert [w.tid for w in first] == [5] and reads == [5]
    second = n.name_all([old, young], 3 * S)  # the same objects, but one was unripe: looked at again
    assert [w.tid for w in second] == [5, 6] and reads == [5, 6]
    third = n.name_all([old, young], 9 * S)  # the same objects, all named: the last answer
    assert [w.tid for w in third] == [5, 6] and all(a is b for a, b in zip(third, second, strict=True))
    assert n.name_all([old, raw(tid=6, start=S)], 9 * S)[1].tid == 6  # an equal but new entry: looked at


def test_equal_stacks_are_kept_as_one_list():
    def read(pid, tid):
        return list(OOM_STACK) if tid != 9 else ["io_schedule", "blk_mq_get_tag"]

    n = DstateNamer(classifier(Site.MEMCG_OOM_WAIT), read, classify_after_ns=0)
    n.name_all([raw(tid) for tid in (5, 6, 9)], S)
    five, six, nine = (n.stack_of(tid, 0) for tid in (5, 6, 9))
    assert five == OOM_STACK and five is six and nine == ["io_schedule", "blk_mq_get_tag"]
