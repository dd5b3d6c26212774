# SPDX-License-Identifier: Apache-2.0
"""The gfp mask that matters, on the real kernel: fio writers on XFS behind a slow
disk reclaim their memcg with GFP_NOFS (XFS may not recurse into the file system),
and every kind of report says so."""

from __future__ import annotations

import pytest

from allocwatch.outputs import report
from lab import recipes


@pytest.mark.requires_cgroup_v1_blkio
@pytest.mark.requires_tool("fio")
@pytest.mark.requires_tool("mkfs.xfs")
def test_fio_on_xfs_behind_a_slow_disk_is_reported_with_gfp_nofs(daemon_factory):
    """...and, with 200,000 negative dentries of the XFS file system charged to
    the group, a throttled writer's window names the shrinkers its reclaim called:
    the file system's (super_cache_scan) asked to scan objects, asked without
    __GFP_FS, and freeing none, as the block's largest slab caches say why."""
    d = daemon_factory()
    with recipes.fio_on_slow_xfs(negative_dentries=200_000):
        def fio_reported(records) -> bool:
            return any(t["comm"].startswith("fio") for r in records if r["type"] == "stall_report"
                       for t in r["tasks"])

        assert d.wait_for(fio_reported, 60), f"fio was never reported: {d.raw_lines[-3:]}"

        def shrinkers_seen(records) -> bool:  # windows of its waits: fio's first reclaims fault its buffers in
            return any(s["no_fs_io"] for r in records if r["type"] == "stall_report" for t in r["tasks"]
                       if t["comm"].startswith("fio") for s in (t.get("window") or {}).get("shrinkers", ()))

        d.wait_for(shrinkers_seen, 90)  # what it saw is asserted below, after the stop
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
    # the shrinkers (issue: "all memory in the inode and dentry caches, and the shrinkers cannot run under GFP_NOFS")
    windows = [t for t in tasks if t["kind"] in ("throttled", "livelock")]
    assert windows, [(t["kind"], t["site"]) for t in tasks]
    sb = [s for t in windows for s in t["window"]["shrinkers"] if s["shrinker"] == "super_cache_scan"]
    assert sb, [t["window"]["shrinkers"] for t in windows]
    nofs_sb = [s for s in sb if s["no_fs_io"]]
    assert nofs_sb and all(s["asked"] > 0 and s["freed"] == 0 for s in nofs_sb), sb
    assert all(s["gfp_flags"] and "GFP_NOFS" in s["gfp_flags"] for s in nofs_sb), nofs_sb
    blocks = [r for r in d.of_type("stall_report") if any(t.get("window", {}).get("shrinkers") for t in r["tasks"])]
    assert blocks and all(r["context"]["slab_caches"] for r in blocks), [r["context"]["slab_caches"] for r in blocks]
    assert any(c["name"] == "dentry" for r in blocks for c in r["context"]["slab_caches"]), blocks[-1]["context"]
    text = report.render_dicts(blocks, "text")
    assert "shrinkers in the window: super_cache_scan" in text or ", super_cache_scan calls=" in text, text
    assert "  slab: reclaimable=" in text, text
