# SPDX-License-Identifier: Apache-2.0
"""app/hostcontext.py on a copy of the host tests' fake /proc: kswapd's state
and run time kept scan by scan, and what a block then says of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from allocwatch.app.hostcontext import HostContext
from allocwatch.core.records import BlockContext, StallReport
from allocwatch.outputs import report
from tests.unit.fakes import HOST_PROC

NS = 1_000_000_000
QUIET_NS = 10 * NS
SLEEPING = ("kswapd", "kthread", "ret_from_fork", "ret_from_fork_asm")


def _proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    shutil.copytree(HOST_PROC, proc)
    (proc / "81" / "schedstat").write_text("7000 0 1\n")
    return proc


def _block(host: HostContext, now_ns: int) -> BlockContext:
    return host.block_context(0, {}, now_ns, {}, (), kswapd_quiet_ns=QUIET_NS)


def test_kswapd_not_run_for_is_unknown_after_one_scan(tmp_path):
    host = HostContext(_proc(tmp_path))
    host.watch(100 * NS)
    ctx = _block(host, 100 * NS)
    assert ctx.kswapd_not_run_for_s == {}
    stacks = {k.pid: k.stack for k in ctx.kswapd}
    assert stacks[81] is None  # in S, and not known to be quiet: no stack
    assert stacks[80] is not None and stacks[80][0] == "throttle_direct_reclaim"  # in D: its stack, as before


def test_a_kswapd_that_has_not_run_for_the_threshold_shows_where_it_sleeps(tmp_path):
    proc = _proc(tmp_path)
    host = HostContext(proc)
    for s in (100, 105, 112):
        host.watch(s * NS)
    ctx = _block(host, 112 * NS)
    assert ctx.kswapd_not_run_for_s == {80: 12.0, 81: 12.0, 83: 12.0}
    assert {k.pid: k.stack for k in ctx.kswapd}[81] == SLEEPING

    (proc / "81" / "schedstat").write_text("9000 0 2\n")  # it ran
    host.watch(113 * NS)
    ctx = _block(host, 113 * NS)
    assert ctx.kswapd_not_run_for_s[81] == 0.0 and ctx.kswapd_not_run_for_s[80] == 13.0
    assert {k.pid: k.stack for k in ctx.kswapd}[81] is None
    host.watch(122 * NS)  # quiet again, for less than the threshold
    assert {k.pid: k.stack for k in _block(host, 122 * NS).kswapd}[81] is None
    host.watch(123 * NS)
    assert {k.pid: k.stack for k in _block(host, 123 * NS).kswapd}[81] == SLEEPING


def test_a_kswapd_gone_is_forgotten(tmp_path):
    proc = _proc(tmp_path)
    host = HostContext(proc)
    host.watch(100 * NS)
    host.watch(120 * NS)
    assert 81 in host.kswapd_not_run_for_s()
    (proc / "81" / "stat").unlink()
    host.kswapd()  # sees it gone: looks for kswapd again at the next scan
    host.watch(121 * NS)
    assert 81 not in host.kswapd_not_run_for_s() and 81 not in host.kswapd_for_s(121 * NS)


def test_the_block_says_it_in_json_and_text(tmp_path):
    host = HostContext(_proc(tmp_path))
    host.watch(100 * NS)
    host.watch(142 * NS)
    rec = StallReport(1, 0.0, [], 0, context=_block(host, 142 * NS))
    doc = json.loads(report.render_json(rec))
    k1 = next(k for k in doc["context"]["kswapd"] if k["pid"] == 81)
    assert k1["state_for_s"] == 42.0 and k1["not_run_for_s"] == 42.0 and k1["stack"] == list(SLEEPING)
    text = report.render_text(rec)
    assert "  kswapd1 pid=81 state=S for>=42s not run for>=42s\n    stack: kswapd <- kthread <- " in text

    fresh = HostContext(_proc(tmp_path / "again"))
    fresh.watch(100 * NS)
    doc = json.loads(report.render_json(StallReport(1, 0.0, [], 0, context=_block(fresh, 100 * NS))))
    assert all(k["not_run_for_s"] is None for k in doc["context"]["kswapd"])
