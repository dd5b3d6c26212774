# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics: a custom collector over the latest snapshot
(outputs/exposition.py writes the text, outputs/endpoint.py serves it).

The collector builds every family at scrape time from the snapshot it is
given (a callable, read with a plain reference swap: a scrape never waits on
the scan loop). Labels are bounded: `site` and `mechanism` come from the
catalog, `kind` and `map` from fixed lists, `cgroup` from the configured cgroups
(capped, the rest `other`); never a pid, tid or comm.
docs/metrics.md lists every family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

from allocwatch.core.snapshot import Histogram, Snapshot
from allocwatch.outputs.endpoint import MAX_CONNECTIONS
from allocwatch.outputs.exposition import CounterFamily, Family, GaugeFamily, HistogramFamily, render

# Kernel-side limit counters, by the `map` label of allocwatch_map_full_total.
_MAP_FULL = {"waits_full": "waits", "dwaits_full": "dwaits"}
STALL_KINDS = ("stall", "throttled", "livelock", "stuck_victim")


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(le) else f"{le:.12g}", float(n)) for le, n in h.buckets]


class SnapshotCollector:
    """Metric families from `latest()`; `drops()` gives report blocks dropped per output."""

    def __init__(
        self,
        latest: Callable[[], Snapshot | None],
        drops: Callable[[], Mapping[str, int]] = dict,
        socket: Callable[[], Mapping[str, int]] = dict,
        endpoint: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._latest = latest
        self._drops = drops
        self._socket = socket  # top's socket: clients_dropped, clients_refused, snapshots_dropped
        self._endpoint = endpoint  # this endpoint (outputs/endpoint.py): refused, shed

    def collect(self) -> Iterator[Family]:
        snap = self._latest()
        if snap is None:  # bound before the first scan: say only that it is up
            yield from self._drop_families()
            return
        yield from self._info(snap)
        yield from self._waits(snap)
        yield from self._health(snap)
        yield from self._drop_families()

    def _info(self, snap: Snapshot) -> Iterator[Family]:
        info = GaugeFamily(
            "allocwatch_build_info", "allocwatch version and the kernel it runs on (always 1)",
            labels=["version", "kernel"],
        )
        info.add_metric([snap.info.get("version", ""), snap.info.get("kernel", "")], 1)
        yield info
        attached = GaugeFamily(
            "allocwatch_site_attached", "1 if the wait site is watched, 0 if not (see `allocwatch probes`)",
            labels=["site", "mechanism"],
        )
        for c in snap.coverage:
            attached.add_metric([c.site, c.mechanism or "none"], 1 if c.attached else 0)
        yield attached

    def _waits(self, snap: Snapshot) -> Iterator[Family]:
        hist = HistogramFamily(
            "allocwatch_wait_seconds", "Completed waits at a memory stall site, by duration", labels=["site"]
        )
        for site, h in sorted(snap.completed.items()):
            hist.add_metric([site], _buckets(h), h.sum_s)
        yield hist
        families = {
            "waiting": GaugeFamily(
                "allocwatch_tasks_waiting", "Tasks waiting at the site now, under their threshold too",
                labels=["site"],
            ),
            "stalled": GaugeFamily(
                "allocwatch_tasks_stalled", "Tasks waiting at the site now for at least its threshold",
                labels=["site"],
            ),
            "longest": GaugeFamily(
                "allocwatch_longest_wait_seconds", "The longest wait in flight at the site now", labels=["site"]
            ),
        }
        for site, now in sorted(snap.now.items()):
            families["waiting"].add_metric([site], now.waiting)
            families["stalled"].add_metric([site], now.stalled)
            families["longest"].add_metric([site], now.longest_s)
        yield from families.values()
        stalled = CounterFamily(
            "allocwatch_memory_stalled_seconds",
            "Seconds tasks have spent waiting at the site, completed and in flight (where PSI says how much, "
            "this says where)",
            labels=["site"],
        )
        for site, v in sorted(snap.stalled_seconds.items()):
            stalled.add_metric([site], v)
        yield stalled
        if snap.cgroup_stalled_seconds:  # only with cgroups to label (metrics_cgroups, metrics_cgroup_pattern)
            by_cgroup = CounterFamily(
                "allocwatch_cgroup_memory_stalled_seconds",
                "Seconds tasks of the memory cgroup have spent waiting at the site, as far as the scans saw them "
                "(cgroups not configured, or beyond the cap, count as cgroup=\"other\")",
                labels=[*snap.cgroup_label_names, "site"],  # with metrics_pod_labels: namespace, pod, container too
            )
            for labels, v in sorted(snap.cgroup_stalled_seconds.items()):
                by_cgroup.add_metric(list(labels), v)
            yield by_cgroup
        reports = CounterFamily(
            "allocwatch_stall_reports", "Tasks reported as stalled (new or escalated), by kind", labels=["kind"]
        )
        for kind in STALL_KINDS:
            reports.add_metric([kind], snap.reported.get(kind, 0))
        yield reports
        held = CounterFamily(
            "allocwatch_stall_reports_held_back",
            "Tasks whose stall report the rate limit (report_interval_s) held back for a later block",
        )
        held.add_metric([], snap.counters.get("held_back", 0))
        yield held
        if snap.cgroup_oom_kills is None:
            kills = CounterFamily("allocwatch_oom_kills", "OOM kills seen (oom:mark_victim)")
            kills.add_metric([], snap.counters.get("oom_kills", 0))
        else:  # with cgroups to label: by the victim's, as the stalled seconds are (the same cap and "other")
            kills = CounterFamily("allocwatch_oom_kills", "OOM kills seen (oom:mark_victim), by the victim's memory "
                                  "cgroup (cgroups not configured, unknown, or beyond the cap, count as "
                                  "cgroup=\"other\")", labels=list(snap.cgroup_label_names))
            for labels, n in sorted(snap.cgroup_oom_kills.items()):
                kills.add_metric(list(labels), n)
        yield kills

    def _health(self, snap: Snapshot) -> Iterator[Family]:
        c = snap.counters
        lost = CounterFamily("allocwatch_events_lost", "Ring-buffer events lost (buffer full)")
        lost.add_metric([], c.get("events_lost", 0))
        yield lost
        full = CounterFamily(
            "allocwatch_map_full", "Waits not tracked because an in-kernel map was full", labels=["map"]
        )
        for key, label in _MAP_FULL.items():
            full.add_metric([label], c.get(key, 0))
        yield full
        dropped = CounterFamily(
            "allocwatch_dstate_unrelated_dropped",
            "D-state sleeps named as not a memory wait, their entry given back (the map was half full)",
        )
        dropped.add_metric([], c.get("dwaits_unrelated_dropped", 0))
        yield dropped
        scans = CounterFamily("allocwatch_scans", "Scans of the waits in flight")
        scans.add_metric([], snap.scan)
        yield scans
        last = GaugeFamily("allocwatch_last_scan_timestamp_seconds", "When the latest scan ran (Unix time)")
        last.add_metric([], snap.time_s)
        yield last
        durations = HistogramFamily("allocwatch_scan_duration_seconds", "How long one scan took")
        durations.add_metric([], _buckets(snap.scan_durations), snap.scan_durations.sum_s)
        yield durations
        if snap.programs:  # only while the kernel counts (bpf_stats, or kernel.bpf_stats_enabled)
            run_s = CounterFamily(
                "allocwatch_bpf_program_run_seconds", "Time the kernel spent running each allocwatch BPF program",
                labels=["program"],
            )
            runs = CounterFamily(
                "allocwatch_bpf_program_runs", "How many times each allocwatch BPF program ran", labels=["program"]
            )
            for name, (ns, cnt) in sorted(snap.programs.items()):
                run_s.add_metric([name], ns / 1e9)
                runs.add_metric([name], cnt)
            yield run_s
            yield runs

    def _drop_families(self) -> Iterator[Family]:
        dropped = CounterFamily(
            "allocwatch_report_blocks_dropped",
            "Report blocks dropped whole because an output was slower than the reports",
            labels=["output"],
        )
        for output, n in sorted(self._drops().items()):
            dropped.add_metric([output], n)
        yield dropped
        sock = self._socket()
        clients = CounterFamily(
            "allocwatch_socket_clients_dropped",
            "Clients of top's socket closed by the daemon: fell behind (no snapshot finished for 10 s), or refused",
            labels=["reason"],
        )
        clients.add_metric(["behind"], sock.get("clients_dropped", 0))
        clients.add_metric(["refused"], sock.get("clients_refused", 0))
        yield clients
        snaps = CounterFamily(
            "allocwatch_socket_snapshots_dropped", "Snapshots the socket's own thread was too far behind to send"
        )
        snaps.add_metric([], sock.get("snapshots_dropped", 0))
        yield snaps
        endpoint = self._endpoint()
        refused = CounterFamily(
            "allocwatch_metrics_connections_refused",
            f"Connections to this endpoint answered 503 and closed at once: {MAX_CONNECTIONS} were open (or as many "
            "as one peer may hold), every one with its request in",
        )
        refused.add_metric([], endpoint.get("refused", 0))
        yield refused
        shed = CounterFamily(
            "allocwatch_metrics_connections_shed",
            "Connections to this endpoint closed for a newer one before they had sent a whole request "
            "(clients that say nothing or trickle, at the cap)",
        )
        shed.add_metric([], endpoint.get("shed", 0))
        yield shed


class Registry:
    """What a scrape reads: the collector's families, as text."""

    def __init__(self, collector: SnapshotCollector) -> None:
        self._collector = collector

    def render(self) -> bytes:
        return render(self._collector.collect())

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value by its full name (`_total`, `_bucket` ... included) and labels; None if absent."""
        want = dict(labels or {})
        for family in self._collector.collect():
            for sample in family.samples:
                if family.name + sample.suffix == name and dict(sample.labels) == want:
                    return sample.value
        return None


def registry_for(collector: SnapshotCollector) -> Registry:
    return Registry(collector)
