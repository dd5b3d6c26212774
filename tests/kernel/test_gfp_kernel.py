# SPDX-License-Identifier: Apache-2.0
"""The gfp mask that matters, on the real kernel: fio writers on XFS behind a slow
disk reclaim their memcg with GFP_NOFS (XFS may not recurse into the file system),
and every kind of report says so."""

from __future__ import annotations

import time

import pytest

from lab import recipes


@pytest.mark.requires_cgroup_v1_blkio
@pytest.mark.requires_tool("fio")
@pytest.mark.requires_tool("mkfs.xfs")
def test_fio_on_xfs_behind_a_slow_disk_is_reported_with_gfp_nofs(daemon_factory):
    d = daemon_factory()
    with recipes.fio_on_slow_xfs():
        def fio_reported(records) -> bool:
            return any(t["comm"].startswith("fio") for r in records if r["type"] == "stall_report"
                       for t in r["tasks"])

        assert d.wait_for(fio_reported, 60), f"fio was never reported: {d.raw_lines[-3:]}"
        time.sleep(25)  # windows of its waits
    assert d.stop() == 0
    tasks = [t for r in d.of_type("stall_report") for t in r["tasks"] if t["comm"].startswith("fio")]
    assert tasks
    # every kind carries the mask of the waits that make it up, and names the one without __GFP_FS
    for t in tasks:  # a wait that allocates says its mask (dirty throttling has none)
        sites = {t["site"], *((t.get("window") or {}).get("sites") or {})}
        if sites & {"memcg_reclaim", "direct_reclaim"}:
            assert t["gfp"] is not None and t["gfp_flags"], t
    nofs = [t for t in tasks if any("GFP_NOFS" in m for m in t["gfp_no_fs_io"])]
    assert nofs, [(t["kind"], t["site"], t["gfp_flags"], t["gfp_no_fs_io"], t.get("window")) for t in tasks]
    kinds = {t["kind"] for t in nofs}
    assert kinds, kinds
