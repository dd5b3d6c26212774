# SPDX-License-Identifier: Apache-2.0
"""The live view a viewer gets (Snapshot.live) and the snapshot's one dict form."""

from __future__ import annotations

import json

from allocwatch.app.live import LiveReader
from allocwatch.core.model import InflightWait
from allocwatch.core.sites import SITE_DSTATE, Site
from allocwatch.core.snapview import hello_dict, snapshot_dict
from tests.unit.fakes import S, fake_proc, snapshot_daemon


def _scan(tmp_path, wanted: bool, max_detailed: int = 64):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0)
    fake_proc(tmp_path, 9, ["shrink_folio_list", "try_to_free_mem_cgroup_pages"], cgroup="4:memory:/box/b\n")
    d.live = LiveReader(lambda: wanted, max_detailed=max_detailed)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None),
                 InflightWait(9, 9, "dd\nx", int(Site.MEMCG_RECLAIM), S, 0xCC0, 0, reclaimed_pages=12)]
    clock["ns"] = int(2.5 * S)
    return d.scan_once()


def test_no_viewer_no_live_view(tmp_path):
    snap = _scan(tmp_path, wanted=False)
    assert snap.live is None
    doc = snapshot_dict(snap)
    assert doc["context"] is None and all("cgroup" not in t for t in doc["inflight"])


def test_live_view_has_rows_detail_context_and_thresholds(tmp_path):
    snap = _scan(tmp_path, wanted=True)
    doc = json.loads(json.dumps(snapshot_dict(snap)))  # survives JSON as it is
    assert doc["type"] == "snapshot" and doc["info"]["kernel"] == "6.18-test"
    rows = {t["tid"]: t for t in doc["inflight"]}
    hog, dd = rows[7], rows[9]
    assert hog["kind"] == "stall" and hog["site"] == "memcg_oom_wait" and hog["duration_s"] == 2.5
    assert hog["cgroup"] == "/box" and hog["state"] == "D" and hog["stack"] == ["mem_cgroup_oom_synchronize"]
    assert dd["kind"] == "wait" and dd["comm"] == "dd\\x0ax" and dd["gfp"] == "0xcc0" and dd["cgroup"] == "/box/b"
    assert hog["detail"] is True and doc["thresholds_s"] == {"*": 2.0}
    assert dd["reclaimed_so_far_pages"] == 12 and hog["reclaimed_so_far_pages"] is None  # as a report says it
    assert doc["context"]["kswapd"] == [] and "meminfo_bytes" in doc["context"]
    assert doc["sites"]["memcg_reclaim"]["waiting"] == 1
    assert doc["sites"]["memcg_reclaim"]["completed"]["count"] == 41
    assert doc["coverage"][0] == {"site": "memcg_oom_wait", "mechanism": "sched_switch D-state + stack",
                                  "attached": True}


def test_only_the_longest_get_full_detail(tmp_path):
    snap = _scan(tmp_path, wanted=True, max_detailed=1)
    rows = {t["tid"]: t for t in snapshot_dict(snap)["inflight"]}
    assert rows[7]["detail"] is True and rows[9]["detail"] is False
    assert rows[9]["cgroup"] == "/box/b" and rows[9]["stack"] == []  # cgroup and state, no stack read


def test_hello_names_the_protocol_and_coverage():
    h = hello_dict({"version": "1", "kernel": "k"}, [{"site": "oom", "mechanism": "tp", "attached": True}])
    assert h["type"] == "hello" and h["protocol"] == 1 and h["version"] == "1" and h["coverage"][0]["site"] == "oom"


def test_a_live_view_that_fails_never_stops_the_scan(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0)
    said: list[str] = []
    d.live = LiveReader(lambda: True, on_error=said.append)
    d.tasks.new_scan = lambda: 1 / 0  # a bug where only the live view looks
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    for t in (1, 2):
        clock["ns"] = t * S
        snap = d.scan_once()
    assert snap.live is None and snap.inflight and len(said) == 1 and "ZeroDivisionError" in said[0]
