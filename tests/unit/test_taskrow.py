# SPDX-License-Identifier: Apache-2.0
"""A stall block's tasks as rows (core/records.py TaskRow): each reads, renders
and advises exactly as the dict it stands for, and a block of them is far smaller."""

from __future__ import annotations

import json
import random
import tracemalloc
from dataclasses import replace

import pytest

from allocwatch.core import advice
from allocwatch.core.behind import Behind
from allocwatch.core.host import MemcgInfo, TaskInfo
from allocwatch.core.model import DirtyPause, WritebackNote
from allocwatch.core.records import StallReport, TaskDetail, TaskRow, plain_record, to_dict
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Stall, Wait
from allocwatch.core.wbdevice import DeviceState
from allocwatch.outputs import journal, report

MEMCGS = [None, MemcgInfo(2, "/a", 100 << 20, 100 << 20, 90 << 20, None, None, {"high": 3}, None, None),
          MemcgInfo(1, "/b", 50 << 20, 50 << 20, None, True, True, {}, 7, None)]
STACKS = [None, ["mem_cgroup_oom_synchronize", "x"], ["folio_wait_writeback", "a"], [f"f{i}" for i in range(20)]]


def random_block(rng: random.Random, n: int, max_tasks: int = 100000) -> StallReport:
    """n tasks at every site, with and without what the kernel says of their wait,
    sharing (or not) their stacks, memcgs and devices as a real block's do."""
    sites = list(Site)
    device = DeviceState("7:3", "loop3", 1e6, 3, 0, 1 << 20, 10.0)
    stalls, details = [], {}
    for i in range(n):
        tid = 100 + i
        w = Wait(tid, 100 + i // 3, rng.choice(["hog", "pg\udcff", "a b", "\x1b[2J"]), rng.choice(sites), 0,
                 rng.choice([None, 0xCC0, 0x1100CCA]), rng.choice([None, 0, 3]), start_known=rng.random() < 0.9,
                 reclaimed_pages=rng.randrange(1000) if rng.random() < 0.2 else None,
                 dirty_pause=DirtyPause(*[rng.randrange(100) for _ in range(9)]) if rng.random() < 0.1 else None,
                 writeback=WritebackNote(0, "7:3", 12) if rng.random() < 0.2 else None)
        dur_ns = int((10 + 20 * rng.random()) * NS_PER_S)
        stalls.append(Stall(w, dur_ns, rng.choice([1, 2, 3]), rng.choice([None, dur_ns // 2])))
        if rng.random() < 0.15:  # a second wait of the same task
            stalls.append(Stall(replace(w, site=rng.choice(sites), writeback=None), dur_ns // 2, 1))
        if rng.random() < 0.9:
            details[tid] = TaskDetail(
                rng.choice(["/a", "/b", None]), rng.choice(["D", "R", None]), rng.choice(STACKS),
                rng.choice([None, "GFP_KERNEL"]), rng.choice(MEMCGS), rng.choice([None, TaskInfo(1, 1, 0, "c", "D")]),
                rng.random() < 0.1, rng.random() < 0.05, gfp_no_fs_io=rng.choice([(), ("GFP_NOFS",)]),
                writeback_device=rng.choice([None, device]),
                behind=rng.choice([(), (Behind(5, 5, "kworker/u8:3+flush-7:3", "memcg_reclaim", 12.5),)]),
                beside=rng.choice([(), (Behind(6, 6, "jbd2/loop3-8", "writeback_wait", 3.0),)]))
    return StallReport(1, 1.7e9, stalls, n, details, max_tasks=max_tasks)


def test_a_row_reads_as_the_dict_it_stands_for():
    rows = [t for t in to_dict(random_block(random.Random(3), 300))["tasks"] if isinstance(t, TaskRow)]
    assert len(rows) == 300
    for row in rows:
        d = row.as_dict()
        assert list(row) == list(d) and len(row) == len(d) == 30  # the same keys, in JSON's order
        assert row == d and d == row and dict(row) == d
        assert all(row[k] == d[k] and row.get(k) == d[k] and k in row for k in d)
        assert row.get("window") is None and row.get("window", 5) == 5 and "window" not in row
        with pytest.raises(KeyError):
            row["window"]
        assert json.loads(json.dumps(row.as_dict())) == json.loads(report._ENCODER.encode(row))


@pytest.mark.parametrize("seed", range(6))
def test_a_block_of_rows_renders_and_advises_as_the_same_block_of_dicts(seed):
    rng = random.Random(seed)
    d = to_dict(random_block(rng, rng.choice([2, 40, 600]), max_tasks=rng.choice([5, 100000])))
    assert any(isinstance(t, TaskRow) for t in d["tasks"])
    dicts = plain_record(d)
    assert all(type(t) is dict for t in dicts["tasks"]) and dicts["tasks"] == d["tasks"]
    # the advice reads one row of each kind of facts: what it says is what every task's dict says
    assert advice.advise(d) == advice.advise(dicts) == d["advice"]
    for fmt in ("json", "text"):
        assert report.render_dicts([d], fmt) == report.render_dicts([dicts], fmt)
    assert list(journal.entries(d)) == list(journal.entries(dicts))
    assert json.loads(report.render_dicts([d], "json")) == json.loads(json.dumps(dicts))


def test_tasks_sharing_facts_are_counted_in_the_advice_as_many():
    rows = to_dict(random_block(random.Random(1), 1))["tasks"]
    many = {**to_dict(random_block(random.Random(1), 1)), "tasks": rows * 7}  # one row seven times: seven tasks
    dicts = {**many, "tasks": [rows[0].as_dict() for _ in range(7)]}
    assert advice.advise(many) == advice.advise(dicts)


def test_a_listed_block_of_10000_rows_holds_less_than_half_of_its_dicts():
    stack = ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory", "exc_page_fault"]
    memcg = MEMCGS[1]
    who = TaskInfo(1000, 1000, 0, "/tmp/threads 10000", "D")
    stalls = [Stall(Wait(t, 1000, "threads", Site.MEMCG_OOM_WAIT, 0, 0x1100CCA, 0), 12 * NS_PER_S + t, 2)
              for t in range(1000, 11000)]
    details = {s.wait.tid: TaskDetail("/g", "D", stack, "GFP_HIGHUSER_MOVABLE", memcg, who) for s in stalls}
    rec = StallReport(1, 1.7e9, stalls, len(stalls), details, max_tasks=100000)
    tracemalloc.start()
    try:
        d = to_dict(rec)
        rows_bytes = tracemalloc.get_traced_memory()[0]
        dicts = [t.as_dict() for t in d["tasks"]]
        dicts_bytes = tracemalloc.get_traced_memory()[0] - rows_bytes
    finally:
        tracemalloc.stop()
    assert len(dicts) == 10000
    assert len(advice.Facts(d["tasks"]).tasks) == 1  # one program stuck in one place: one set of facts to read
    assert rows_bytes < dicts_bytes / 2, (rows_bytes, dicts_bytes)


def test_a_row_s_own_fields_are_written_as_the_encoder_writes_them_or_by_it():
    assert report.FAST_OWN_JSON  # the keys are those it writes: a block's rows go the fast way
    base = ("stall", 7, 7, 'a "b\\" \\x1b', "memcg_oom_wait", 12.5, 0.1, True, 2, False, "0xcc0", None, None,
            [{"site": "compaction", "duration_s": 3.0}])
    odd = [base, base[:5] + (float("nan"),) + base[6:], base[:1] + (7.0,) + base[2:],  # not finite, not an int
           base[:12] + (True,) + base[13:], base[:13] + ((),), base[:3] + ("\udcff\u00e9",) + base[4:],
           base[:13] + (None,), base[:11] + (["GFP_NOFS"],) + base[12:],  # not a list, not a string
           base[:10] + (1,) + (True,) + base[12:], base[:5] + (1e16,) + (-0.0,) + base[7:]]
    detail, site = {"cgroup": "/g", "stack": ["x"]}, {"writeback": None}
    for own in odd:
        row = TaskRow(own, detail, site)
        got = report.task_json(row)
        assert got == report._ENCODER.encode(row.as_dict()), own


def few_kinds_block(rng: random.Random, n: int = 600) -> StallReport:
    """n tasks of a few kinds of facts each: two details, three sites, some with the
    kernel's note of a writeback or a dirty pause, some with a second wait."""
    device = DeviceState("7:3", "loop3", 1e6, 3, 0, 1 << 20, 10.0)
    kinds = [TaskDetail("/a", "D", STACKS[1], "GFP_KERNEL", MEMCGS[1], TaskInfo(1, 1, 0, "c", "D")),
             TaskDetail("/b", "D", STACKS[2], None, MEMCGS[2], None, gfp_no_fs_io=("GFP_NOFS",),
                        writeback_device=device,
                        behind=(Behind(5, 5, "kworker/u8:3+flush-7:3", "memcg_reclaim", 12.5),))]
    sites = [Site.MEMCG_RECLAIM, Site.WRITEBACK_WAIT, Site.DIRTY_THROTTLE]
    stalls, details = [], {}
    for i in range(n):
        tid = 1000 + i
        note = rng.random()
        w = Wait(tid, 1000 + i % 7, "hog", rng.choice(sites), 0, 0xCC0, 0,
                 writeback=WritebackNote(0, "7:3", 12) if note < 0.1 else None,
                 dirty_pause=DirtyPause(*range(9)) if 0.1 <= note < 0.2 else None)
        dur_ns = int((10 + 20 * rng.random()) * NS_PER_S)
        stalls.append(Stall(w, dur_ns, 1))
        if rng.random() < 0.1:
            stalls.append(Stall(replace(w, site=Site.COMPACTION, writeback=None, dirty_pause=None), dur_ns // 2, 1))
        details[tid] = rng.choice(kinds)
    return StallReport(1, 1.7e9, stalls, n, details, max_tasks=100000)


def _same_everywhere(d) -> None:
    dicts = plain_record(d)
    assert advice.advise(d) == advice.advise(dicts) == d["advice"]
    for fmt in ("json", "text"):
        assert report.render_dicts([d], fmt) == report.render_dicts([dicts], fmt)
    assert list(journal.entries(d)) == list(journal.entries(dicts))


@pytest.mark.parametrize("seed", range(4))
def test_a_block_of_a_few_kinds_of_facts_advises_from_one_of_each_as_from_all(seed):
    d = to_dict(few_kinds_block(random.Random(seed)))
    assert len(d["tasks"]) > report.STREAM_TASKS  # written a task at a time
    firsts = advice.Facts(d["tasks"]).tasks
    assert 6 <= len(firsts) < len(d["tasks"]) / 2  # a few kinds, each read once (a note or a second wait: its own)
    assert {a["kind"] for a in d["advice"]} >= {advice.WRITEBACK, advice.NO_FS_IO, advice.DIRTY_THROTTLE}
    _same_everywhere(d)


def _two_tasks(second: str) -> StallReport:
    """Two tasks alike but for one thing, the longer one first: what the second alone has."""
    stack = ["folio_wait_writeback", "x"]
    one = TaskDetail("/a", "D", stack, None, MEMCGS[1])
    site = Site.COMPACTION if second == "site" else Site.WRITEBACK_WAIT
    a = Wait(1, 1, "hog", Site.WRITEBACK_WAIT, 0, 0xCC0, 0)
    b = Wait(2, 2, "hog", site, 0, 0xCC0, 0, writeback=WritebackNote(0, "7:3", 12) if second == "note" else None)
    stalls = [Stall(a, 20 * NS_PER_S, 1), Stall(b, 10 * NS_PER_S, 1)]
    if second == "other":
        stalls.append(Stall(replace(b, site=Site.DIRTY_THROTTLE), 5 * NS_PER_S, 1))
    details = {1: one, 2: replace(one, gfp_no_fs_io=("GFP_NOFS",)) if second == "detail" else one}
    return StallReport(1, 1.7e9, stalls, 2, details, max_tasks=100000)


@pytest.mark.parametrize(("part", "second"), [(0, "detail"), (1, "note"), (2, "site"), (3, "other")])
def test_each_part_of_the_facts_key_is_needed(monkeypatch, part, second):
    """Two tasks differ in what one part of the key stands for: with it, each is read
    and the advice is its dicts'; without it, the second goes unread and it is not."""
    d = to_dict(_two_tasks(second))
    assert len(advice.Facts(d["tasks"]).tasks) == 2
    _same_everywhere(d)
    real = TaskRow.facts_key.fget
    monkeypatch.setattr(TaskRow, "facts_key", property(lambda row: tuple(
        x for j, x in enumerate(real(row)) if j != part)))
    assert len(advice.Facts(d["tasks"]).tasks) == 1
    assert advice.advise(d) != advice.advise(plain_record(d))
