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


def test_a_listed_block_of_10000_rows_holds_a_third_of_its_dicts():
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
           base[:12] + (True,) + base[13:], base[:13] + ((),), base[:3] + ("\udcff\u00e9",) + base[4:]]
    detail, site = {"cgroup": "/g", "stack": ["x"]}, {"writeback": None}
    for own in odd:
        row = TaskRow(own, detail, site)
        got = report._task_json(row, {}, {})
        assert got == report._ENCODER.encode(row.as_dict()), own
