# SPDX-License-Identifier: Apache-2.0
"""The snapshot and its totals, the Prometheus collector over it, and the
stream's drop accounting: no kernel, fake sources, a fresh registry."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import threading
import time
import weakref

import pytest

from allocwatch.core.model import InflightWait
from allocwatch.core.sites import HIST_SLOTS, SITE_DSTATE, Site
from allocwatch.core.snapshot import (
    WAIT_BUCKETS_S,
    CumulativeHistogram,
    InFlight,
    StallSeconds,
    histogram_from_slots,
    merge_slots,
    per_site_now,
)
from allocwatch.outputs import report
from allocwatch.outputs.endpoint import MetricsServer, split_addr
from allocwatch.outputs.metrics import SnapshotCollector, registry_for
from allocwatch.outputs.sinks import FdSink
from tests.unit.fakes import hog_stalls_then_wakes, snapshot_daemon

S = 1_000_000_000


def test_histogram_buckets_are_cumulative_end_in_inf_and_sum_to_the_count():
    slots = [0] * HIST_SLOTS
    slots[0], slots[12], slots[25], slots[31] = 3, 2, 1, 4  # 31: clamped, longer than 2^31 us
    h = histogram_from_slots(slots, 7 * S)
    les = [le for le, _ in h.buckets]
    assert les[-1] == math.inf and les[:-1] == list(WAIT_BUCKETS_S)
    assert WAIT_BUCKETS_S[0] == pytest.approx(0.001024) and WAIT_BUCKETS_S[-1] == pytest.approx(67.108864)
    counts = [n for _, n in h.buckets]
    assert counts == sorted(counts) and h.count == 10 and h.sum_s == 7.0
    assert dict(h.buckets)[WAIT_BUCKETS_S[-1]] == 6  # the clamped slot is only in +Inf


def test_kernel_and_user_counted_waits_merge_per_site():
    k = [0] * HIST_SLOTS
    k[5] = 2
    u = [0] * HIST_SLOTS
    u[22] = 1
    merged = merge_slots({Site.MEMCG_RECLAIM: (k, 100)}, {Site.MEMCG_RECLAIM: (u, 5 * S), Site.OOM: (u, S)})
    assert merged["memcg_reclaim"].count == 3 and merged["memcg_reclaim"].sum_s == pytest.approx(5.0000001)
    assert merged["oom"].count == 1


def test_stall_seconds_never_step_back():
    acc = StallSeconds()
    f = InFlight(1, 1, "a", "memcg_oom_wait", 4.0, 0, True, None, None)
    empty = histogram_from_slots([0] * HIST_SLOTS, 0)
    assert acc.update({"memcg_oom_wait": empty}, [f])["memcg_oom_wait"] == 4.0
    # the wait ended unseen (too short to be sent up): the counter holds
    assert acc.update({"memcg_oom_wait": empty}, [])["memcg_oom_wait"] == 4.0
    done = histogram_from_slots([0] * 22 + [1] + [0] * 9, 5 * S)
    assert acc.update({"memcg_oom_wait": done}, [])["memcg_oom_wait"] == 5.0


def test_per_site_now_has_zeros_for_watched_sites():
    fs = [InFlight(t, t, "a", "memcg_reclaim", d, lvl, True, None, None) for t, d, lvl in ((1, 12.0, 1), (2, 3.0, 0))]
    now = per_site_now(fs, ["memcg_reclaim", "compaction"])
    assert now["memcg_reclaim"].waiting == 2 and now["memcg_reclaim"].stalled == 1
    assert now["memcg_reclaim"].longest_s == 12.0
    assert now["compaction"].waiting == 0 and now["compaction"].longest_s == 0.0


def test_cumulative_histogram_has_constant_memory():
    h = CumulativeHistogram((0.1, 1.0))
    for v in (0.05, 0.5, 5.0, 0.5):
        h.observe(v)
    assert h.freeze().buckets == ((0.1, 1), (1.0, 3), (math.inf, 4))


def test_snapshot_holds_every_wait_in_flight_and_the_records_due(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None),
                 InflightWait(9, 9, "dd", int(Site.MEMCG_RECLAIM), S, 0xCC0, 0)]
    clock["ns"] = int(2.5 * S)
    snap = d.scan_once()
    assert out.snapshots == [snap]
    assert d.latest is not None and d.latest.records == ()  # the records are the outputs' alone
    assert dataclasses.replace(d.latest, records=snap.records) == snap
    assert [(f.tid, f.level) for f in snap.inflight] == [(7, 1), (9, 0)]  # under threshold too
    assert snap.now["memcg_oom_wait"].stalled == 1 and snap.now["memcg_reclaim"].waiting == 1
    assert [r["type"] for r in snap.records] == ["stall_report"]
    assert snap.stalled_seconds["memcg_oom_wait"] == 2.5 and snap.reported == {"stall": 1}
    with pytest.raises(AttributeError):
        snap.scan = 5  # type: ignore[misc]


def test_collector_exposes_the_snapshot(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0)
    hog_stalls_then_wakes(d, src, clock)
    reg = registry_for(SnapshotCollector(lambda: d.latest, lambda: {"stdout": 3}))
    get = reg.get_sample_value
    assert get("allocwatch_wait_seconds_count", {"site": "memcg_oom_wait"}) == 1
    assert get("allocwatch_wait_seconds_bucket", {"site": "memcg_oom_wait", "le": "+Inf"}) == 1
    assert get("allocwatch_wait_seconds_bucket", {"site": "memcg_oom_wait", "le": "2.097152"}) == 0
    assert get("allocwatch_wait_seconds_bucket", {"site": "memcg_oom_wait", "le": "4.194304"}) == 1
    assert get("allocwatch_memory_stalled_seconds_total", {"site": "memcg_oom_wait"}) == 4.0
    assert get("allocwatch_tasks_waiting", {"site": "memcg_oom_wait"}) == 0
    assert get("allocwatch_stall_reports_total", {"kind": "stall"}) == 1
    assert get("allocwatch_site_attached", {"site": "congestion_wait", "mechanism": "none"}) == 0
    assert get("allocwatch_build_info", {"version": d.info["version"], "kernel": "6.18-test"}) == 1
    assert get("allocwatch_report_blocks_dropped_total", {"output": "stdout"}) == 3
    assert get("allocwatch_scans_total") == 2


def test_reports_the_rate_limit_held_back_are_counted(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0, report_interval_s=60.0)
    src.waits = [InflightWait(7, 7, "hog", SITE_DSTATE, 0, None, None, None)]
    clock["ns"] = 3 * S
    d.scan_once()  # the first block goes out
    src.waits.append(InflightWait(9, 9, "dd", int(Site.MEMCG_RECLAIM), S, 0xCC0, 0))
    clock["ns"] = int(3.5 * S)
    d.scan_once()  # dd is due within the interval: held back
    get = registry_for(SnapshotCollector(lambda: d.latest)).get_sample_value
    assert get("allocwatch_stall_reports_total", {"kind": "stall"}) == 1
    assert get("allocwatch_stall_reports_held_back_total") == 1


def test_no_label_carries_a_pid_or_comm(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0)
    src.waits = [InflightWait(t, t, f"c{t}", SITE_DSTATE, 0, None, None, None) for t in range(7, 8)]
    clock["ns"] = 3 * S
    d.scan_once()
    text = registry_for(SnapshotCollector(lambda: d.latest)).render().decode()
    allowed = {"site", "mechanism", "kind", "map", "output", "version", "kernel", "le", "reason"}
    import re

    for labels in re.findall(r"\{([^}]*)\}", text):
        keys = {kv.split("=", 1)[0] for kv in labels.split(",") if kv}
        assert keys <= allowed, keys
    assert "c7" not in text


def test_before_the_first_scan_a_scrape_still_answers():
    reg = registry_for(SnapshotCollector(lambda: None, lambda: {"stdout": 0}))
    assert reg.get_sample_value("allocwatch_report_blocks_dropped_total", {"output": "stdout"}) == 0


def test_metrics_server_binds_at_once_and_serves(tmp_path):
    srv = MetricsServer("127.0.0.1:0", registry_for(SnapshotCollector(lambda: None)))
    try:
        srv.start()
        port = srv.address[1]
        body = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"], capture_output=True, check=True)
        assert b"allocwatch_report_blocks_dropped_total" in body.stdout or b"# HELP" in body.stdout
        with pytest.raises(OSError):
            MetricsServer(f"127.0.0.1:{port}", registry_for(SnapshotCollector(lambda: None)))
    finally:
        srv.close()
    assert split_addr("[::1]:9") == ("::1", 9)


def test_stream_drops_whole_blocks_when_nobody_reads_and_says_so():
    r, w = os.pipe()
    os.set_blocking(w, True)
    sink = FdSink(w, render=lambda block: report.render_dicts(block, "text"),
                  drop_notice=lambda n: f"NOTICE {n} dropped\n", max_blocks=4)
    big = [{"type": "limits_reached", "seq": 1, "time": "t", "grown": {"waits_full": 1},
            "totals": {"waits_full": 1}}] * 2000  # ~200 KB a block: the pipe fills at once
    t0 = time.monotonic()
    for _ in range(50):
        sink.write(big)
    assert time.monotonic() - t0 < 0.5, "write() blocked on a reader that never reads"
    assert sink.dropped_blocks >= 40
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 1 << 20), b"")))
    reader.start()
    time.sleep(0.5)
    sink.write([{"type": "limits_reached", "seq": 99, "time": "t", "grown": {"waits_full": 1},
                 "totals": {"waits_full": 1}}])
    assert sink.close(5.0)
    os.close(w)
    reader.join(5)
    text = b"".join(got).decode()
    assert text.count("NOTICE") == 1 and f"NOTICE {sink.dropped_blocks} dropped" in text
    assert text.rstrip().endswith("1 since start")  # the last block got out, whole
    os.close(r)


def test_stream_keeps_no_block_once_it_is_written():
    """A block of 10,000 tasks is some 10 MiB of dicts: neither the writer thread
    (awaiting the next block) nor the daemon's latest snapshot holds it after."""
    class Record(dict):  # a dict that can be watched going
        pass

    r, w = os.pipe()
    written = threading.Event()
    sink = FdSink(w, render=lambda block: (written.set(), "x\n")[1])
    record = Record(type="limits_reached")
    gone = weakref.ref(record)
    sink.write((record,))
    del record
    assert written.wait(5) and os.read(r, 16) == b"x\n"
    deadline = time.monotonic() + 5
    while gone() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gone() is None, "the writer thread still holds the block it wrote"
    assert sink.close(2.0)
    os.close(w)
    os.close(r)


def test_stream_reports_a_gone_reader_once():
    r, w = os.pipe()
    os.close(r)
    errors = []
    sink = FdSink(w, render=lambda b: "x\n", on_fatal=errors.append)
    sink.write([{"a": 1}])
    sink.close(2.0)
    os.close(w)
    assert sink.error is not None and sink.error.exit_code == 12 and errors == [sink.error]


def test_prog_info_offsets_match_the_installed_uapi_header(tmp_path):
    """bpfstats reads struct bpf_prog_info by offset: the header must agree."""
    import ctypes
    import shutil

    from allocwatch.kernel import bpfstats

    assert shutil.which("gcc"), "gcc is needed to read the installed linux/bpf.h"
    src = tmp_path / "off.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\n"
        "int main(void){printf(\"%zu %zu %zu %d %d\\n\", offsetof(struct bpf_prog_info, run_time_ns),"
        " offsetof(struct bpf_prog_info, run_cnt), offsetof(struct bpf_prog_info, name),"
        " BPF_OBJ_GET_INFO_BY_FD, BPF_ENABLE_STATS); return 0;}\n"
    )
    subprocess.run(["gcc", str(src), "-o", str(tmp_path / "off")], check=True)
    got = subprocess.run([str(tmp_path / "off")], capture_output=True, text=True, check=True).stdout.split()
    info = bpfstats.ProgInfo
    assert [int(x) for x in got] == [
        info.run_time_ns.offset, info.run_cnt.offset, info.name.offset,
        bpfstats.BPF_OBJ_GET_INFO_BY_FD, bpfstats.BPF_ENABLE_STATS,
    ]
    assert ctypes.sizeof(info) == 208


def test_program_run_time_is_exported_only_while_counted(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path)
    d.scan_once()
    reg = registry_for(SnapshotCollector(lambda: d.latest))
    assert reg.get_sample_value("allocwatch_bpf_program_runs_total", {"program": "aw_sched_switch"}) is None
    src.program_stats = lambda: {"aw_sched_switch": (2_000_000_000, 7)}
    d.scan_once()
    assert reg.get_sample_value("allocwatch_bpf_program_runs_total", {"program": "aw_sched_switch"}) == 7
    assert reg.get_sample_value("allocwatch_bpf_program_run_seconds_total", {"program": "aw_sched_switch"}) == 2.0


def test_kernel_limit_counters_are_metrics(tmp_path):
    d, src, _out, _clock = snapshot_daemon(tmp_path)
    src.stats = lambda: {"events_lost": 2, "waits_full": 5, "dwaits_full": 77}
    d.scan_once()
    get = registry_for(SnapshotCollector(lambda: d.latest)).get_sample_value
    assert get("allocwatch_map_full_total", {"map": "dwaits"}) == 77
    assert get("allocwatch_map_full_total", {"map": "waits"}) == 5
    assert get("allocwatch_events_lost_total") == 2
