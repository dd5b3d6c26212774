# SPDX-License-Identifier: Apache-2.0
"""What to do (core/advice.py) on the real kernel: a real stall's block ends with
the line its facts support, in text and in JSON.

Each daemon reports only the test's own memory cgroup (`--cgroup`), so other
stalls on a shared machine cannot add lines of their own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import memcg, slowdisk
from tests.kernel.daemonproc import TextDaemon


def _block_of(lines: list[str], marker: str) -> list[str]:
    """The first text stall block holding `marker`: its head and its indented lines."""
    for i, line in enumerate(lines):
        if " stall report #" not in line:
            continue
        block = [line.rstrip("\n")]
        for nxt in lines[i + 1 :]:
            if not nxt.startswith("  "):
                break
            block.append(nxt.rstrip("\n"))
        if any(marker in ln for ln in block):
            return block
    return []


@pytest.mark.requires_cgroup_v1_memory
def test_memcg_oom_wait_with_the_killer_off_ends_with_raise_the_limit_or_enable_the_killer(daemon_factory):
    with memcg.MemCgroup("aw-advice") as group:
        args = ("--threshold", "1", "--scan-interval", "0.25", "--cgroup", group.rel_path)
        d = daemon_factory(*args)
        text = TextDaemon(*args)
        hogs: list[memcg.Hog] = []
        try:
            hogs = memcg.stall_indefinitely(group, 2, 100)

            def advised(records) -> bool:
                return any(a["kind"] == "memcg_oom_disabled"
                           for r in records if r["type"] == "stall_report" for a in r.get("advice", ()))

            assert d.wait_for(advised, 20), f"no advice: {d.raw_lines[-3:]}"
            assert text.wait_line(lambda ln: "what to do (memcg_oom_disabled)" in ln, 20), text.lines[-10:]
            assert all(h.proc.poll() is None for h in hogs), "the hogs were not held in the wait"
        finally:
            memcg.release(group)
            for h in hogs:
                h.stop()
            try:
                text_code = text.stop()
            finally:
                text.kill()
    assert text_code == 0
    rec = next(r for r in d.of_type("stall_report") if r.get("advice"))
    assert {t["site"] for t in rec["tasks"]} == {"memcg_oom_wait"}, rec["tasks"]
    (a,) = [a for a in rec["advice"] if a["kind"] == "memcg_oom_disabled"]
    assert f"memory cgroup {group.rel_path} at its limit" in a["text"] and "oom_kill_disable=1" in a["text"]
    assert "raise the group's limit" in a["text"] and "enable its OOM killer" in a["text"]
    # in the real text block: the facts it rests on above, and the line last
    block = _block_of(text.lines, "site=memcg_oom_wait")
    assert block, text.lines[:20]
    assert any("oom_kill_disable=1" in ln and "(at its limit)" in ln for ln in block), block
    assert block[-1].startswith("  what to do (memcg_oom_disabled): seen: memory cgroup "), block
    assert "look at: raise the group's limit" in block[-1] and "or enable its OOM killer" in block[-1], block
    assert d.stop() == 0


@pytest.mark.requires_cgroup_v1_blkio
def test_memcg_reclaim_waiting_on_a_slow_device_points_at_that_device(daemon_factory):
    """dd in a 64 MiB memcg writing to a loop device throttled to 512 KiB/s: memcg reclaim
    waits on that device's writeback, and the block says to look at the device."""
    with slowdisk.SlowDisk(write_bps=512 << 10) as disk, memcg.MemCgroup("aw-advice-wb") as group:
        d = daemon_factory("--threshold", "3", "--scan-interval", "0.5", "--cgroup", group.rel_path)
        device = f"{Path(disk.loop).name} ({disk.majmin})"
        group.set_limit_bytes(64 << 20)
        dd = disk.spawn_writer(group, 100)
        try:
            def named(rec) -> bool:  # a writeback advice naming the throttled device
                return any(a["kind"] == "writeback" and f"look at: {device}, the device behind" in a["text"]
                           for a in rec.get("advice", ()))

            def advised(records) -> bool:
                return any(named(r) for r in records if r["type"] == "stall_report")

            assert d.wait_for(advised, 90), f"no writeback advice naming {device}: {d.raw_lines[-3:]}"
            assert dd.poll() is None, "advised only after dd had finished"
        finally:
            disk.stop_writer(dd)
    rec = next(r for r in d.of_type("stall_report") if named(r))
    a = next(a for a in rec["advice"] if a["kind"] == "writeback")
    assert a["text"].startswith(f"seen: dd pid={dd.pid} waiting on page writeback"), a
    assert f", on writeback of {device}; " in a["text"], a
    assert "its speed and I/O throttling (" in a["text"] and "write limit 0.5MiB/s)" in a["text"], a
    # every clause rests on a fact of the block: a task of dd waiting on writeback
    dd_tasks = [t for t in rec["tasks"] if t["pid"] == dd.pid]
    assert any("writeback_wait" in {t["site"], t.get("waiting_site")} | {o["site"] for o in t["other_waits"]}
               or "folio_wait_writeback" in t["stack"]
               or any("WRITEBACK" in k for k in (t.get("window") or {}).get("throttle_reasons", {}))
               for t in dd_tasks), dd_tasks
    # nothing said that the block does not show
    assert "memcg_oom_disabled" not in {x["kind"] for x in rec["advice"]}
    assert d.stop() == 0
