# SPDX-License-Identifier: Apache-2.0
"""One episode per stuck task, on the real kernel (core/episodes.py): what an
on-call pages on must not flap."""

from __future__ import annotations

import time

import pytest

from lab import memcg, slowdisk


def _dd_tasks(d, pid: int) -> list[dict]:
    return [t for r in d.of_type("stall_report") for t in r["tasks"] if t["pid"] == pid]


@pytest.mark.requires_cgroup_v1_blkio
def test_a_writer_stuck_behind_a_slow_disk_is_one_episode_until_it_is_killed(daemon_factory):
    """dd in a 64 MiB memcg writing to a 256 KiB/s disk: each memcg reclaim waits
    about 16 s on writeback (a writeback wait inside it), then the next begins.
    Per wait, that was a new stall and a recovery every 16 s. It is one episode:
    one "new", levels that keep counting, nothing ended while dd is stuck, and
    one ending when it is killed, which says so (never "recovered")."""
    d = daemon_factory("--threshold", "5")
    with slowdisk.SlowDisk(write_bps=256 << 10) as disk, memcg.MemCgroup("aw-episode") as group:
        group.set_limit_bytes(64 << 20)
        dd = disk.spawn_writer(group, 200)
        try:
            assert d.wait_for(lambda rs: _dd_tasks(d, dd.pid), 60), f"dd was never reported: {d.raw_lines[-3:]}"
            t0 = time.monotonic()
            while time.monotonic() - t0 < 30 and dd.poll() is None:  # two or three of its waits
                time.sleep(1)
            assert dd.poll() is None, "dd finished: the disk was not slow enough"
            during = [r for r in d.of_type("recovered") if r["pid"] == dd.pid]
        finally:
            disk.stop_writer(dd)
    ended = lambda rs: any(r["type"] == "recovered" and r["pid"] == dd.pid for r in rs)  # noqa: E731
    assert d.wait_for(ended, 15), "the episode's end was not said"
    assert d.stop() == 0
    tasks = _dd_tasks(d, dd.pid)
    assert during == [], during  # nothing ended while it was stuck
    assert [t["new"] for t in tasks].count(True) == 1 and tasks[0]["new"], [(t["new"], t["level"]) for t in tasks]
    levels = [t["level"] for t in tasks]
    assert levels == sorted(set(levels)) and len(levels) >= 4, levels  # one a threshold: 5, 10, 15, 20 s ...
    sites = {t["site"] for t in tasks} | {o["site"] for t in tasks for o in t["other_waits"]}
    assert "memcg_reclaim" in sites, sites
    (end,) = [r for r in d.of_type("recovered") if r["pid"] == dd.pid]
    assert end["ended"] in ("killed", "oom-killed"), end  # stop_writer sends SIGKILL
    assert end["duration_s"] >= tasks[-1]["duration_s"] and end["reports"] == len(tasks), (end, tasks)


@pytest.mark.requires_cgroup_v1_blkio
def test_nested_waits_count_once_in_a_crawls_share(daemon_factory):
    """dd in a 64 MiB memcg writing to a 768 KiB/s disk crawls through memcg reclaim
    waits of about 5 s, each with a writeback wait (and throttle sleeps) inside it.
    Per site those add up to far more than the time dd waited; the share counts the
    time once: never more than its reclaim time in the window (plus a little)."""
    d = daemon_factory()
    with slowdisk.SlowDisk(write_bps=768 << 10) as disk, memcg.MemCgroup("aw-nested") as group:
        group.set_limit_bytes(64 << 20)
        dd = disk.spawn_writer(group, 200)

        def nested(records) -> list[dict]:
            out = []
            for t in (t for r in records if r["type"] == "stall_report" for t in r["tasks"]):
                sites = (t.get("window") or {}).get("sites") or {}
                inner = sum(sites[s]["total_s"] for s in ("writeback_wait", "reclaim_throttle") if s in sites)
                if t["pid"] == dd.pid and t["kind"] == "throttled" and "memcg_reclaim" in sites and inner >= 1:
                    out.append(t)
            return out

        try:
            assert d.wait_for(nested, 60), [t.get("window") for t in _dd_tasks(d, dd.pid)]
        finally:
            disk.stop_writer(dd)
    assert d.stop() == 0
    for t in nested(d.records):
        w = t["window"]
        reclaim_share = w["sites"]["memcg_reclaim"]["total_s"] / 10
        summed = sum(s["total_s"] for s in w["sites"].values()) / 10
        assert w["share"] <= reclaim_share + 0.1 < summed, w
