# SPDX-License-Identifier: Apache-2.0
"""Every configuration key: its default (`Config`), its check (`KEYS`), and
whether a running daemon takes a new value at a reload (SIGHUP) or needs a
restart (`RESTART_KEYS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from allocwatch.config.checks import (
    CLASSIFY_AFTER_MAX_S,
    CLASSIFY_AFTER_MIN_S,
    MAX_TASKS_PER_BLOCK_MAX,
    MAX_TASKS_PER_BLOCK_MIN,
    REPORT_INTERVAL_MAX_S,
    REPORT_INTERVAL_MIN_S,
    SCAN_INTERVAL_MAX_S,
    SCAN_INTERVAL_MIN_S,
    boolean,
    cgroup_pattern,
    cgroup_prefixes,
    dir_or_off,
    group_name,
    inflight_count,
    int_range,
    listen_addr,
    output_kind,
    path,
    per_site_thresholds,
    plain_range,
    ranged,
    report_format,
    site_labels,
    socket_path,
    threshold,
    user_name,
)
from allocwatch.core.findings import WindowRules
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Thresholds

# Loopback only, unless configured otherwise. The Prometheus project's list of
# default exporter ports has filled 9100-9999 and goes on from 10000; 19464 is
# clear of both (and of OpenTelemetry's 9464).
DEFAULT_METRICS_PORT = 19464
DEFAULT_METRICS_ADDR = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
# Where `allocwatch top` finds the daemon. A Unix socket path is at most 107
# bytes (sun_path holds 108 with its NUL).
DEFAULT_SOCKET_PATH = "/run/allocwatch/allocwatch.sock"
METRICS_CGROUP_MAX = 1000  # cgroup labels at most, whatever is configured


@dataclass(frozen=True)
class Config:
    threshold_s: float = 10.0
    thresholds_s: dict[str, float] = field(default_factory=dict)  # per site label
    scan_interval_s: float = 1.0
    format: str = "text"
    output: str = "stdout"  # or "journal": structured entries to the systemd journal
    metrics_addr: str | None = None  # None: not given (DEFAULT_METRICS_ADDR); "": metrics off; else "host:port"
    disable_sites: tuple[str, ...] = ()
    hot_paths: bool = False
    bpf_stats: bool = False  # count BPF programs' run time while the daemon runs
    begin_stacks: bool = True  # BPF takes a task's stack as it enters reclaim, at most once a second
    oom_score_adj: int = -900  # set on itself at start when it may (CAP_SYS_RESOURCE to lower it)
    lock_memory: bool = True  # mlockall(MCL_ONFAULT) once loaded: its pages stay in RAM as it touches them
    # run although its /proc is not the host's PID namespace (sites found by stack marked not attached)
    foreign_pid_namespace: bool = False
    classify_after_s: float = 1.0
    max_inflight: int = 32768
    tracefs: str = "/sys/kernel/tracing"
    report_interval_s: float = 1.0  # at most one stall block this often; what is held back is counted
    max_tasks_per_block: int = 1000  # beyond it, a block sums up the rest by site and cgroup
    cgroups: tuple[str, ...] = ()  # report only tasks whose memory cgroup path starts with one of these
    metrics_cgroups: tuple[str, ...] = ()  # stall seconds per cgroup for these paths (and what is under each)
    metrics_cgroup_pattern: str = ""  # and for cgroup paths this regex matches whole (label: its first group)
    metrics_cgroup_max: int = 20  # at most this many cgroup labels in a run; the rest count as "other"
    metrics_pod_labels: bool = False  # namespace, pod and container labels beside cgroup (same cap)
    pod_logs_dir: str = "/var/log/pods"  # the kubelet's <namespace>_<name>_<uid> directories; "" for none
    throttle_window_s: float = 10.0  # the sliding window of the throttled and livelock rules
    throttle_share: float = 0.5  # throttled: at least this share of the window spent in memory waits
    livelock_passes_per_s: float = 100.0  # livelock: at least this many reclaim passes a second, none freeing
    socket_path: str = DEFAULT_SOCKET_PATH  # the live snapshots for `allocwatch top`; "" for none
    socket_group: str = ""  # a group whose members may read the socket too; "" for root only
    # the user a daemon not run as root runs as: top trusts a socket served by it (besides root and its own user)
    daemon_user: str = ""

    def window_rules(self) -> WindowRules:
        return WindowRules(
            window_ns=round(self.throttle_window_s * NS_PER_S),
            share=self.throttle_share,
            threshold_ns=round(self.threshold_s * NS_PER_S),
            livelock_passes_per_s=self.livelock_passes_per_s,
        )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            default_ns=round(self.threshold_s * NS_PER_S),
            per_site_ns={Site.from_label(k): round(v * NS_PER_S) for k, v in self.thresholds_s.items()},
        )

    @property
    def metrics_listen(self) -> str | None:
        """Where to serve metrics, or None when they are off."""
        if self.metrics_addr == "":
            return None
        return self.metrics_addr or DEFAULT_METRICS_ADDR

    @property
    def disabled(self) -> list[Site]:
        return [Site.from_label(s) for s in self.disable_sites]

    @property
    def classify_after_ns(self) -> int:
        """Never later than the lowest threshold, so no stall is named late."""
        return min(round(self.classify_after_s * NS_PER_S), self.thresholds().min_ns)


@dataclass(frozen=True)
class Key:
    check: Callable[[str, Any], Any]  # the value, or a ConfigError naming the key and what it accepts
    restart: bool = False  # it shapes what is loaded or bound at start: a reload keeps the running value


KEYS: dict[str, Key] = {
    # taken at a reload (SIGHUP), from the next scan on
    "threshold_s": Key(threshold),
    "thresholds_s": Key(per_site_thresholds),
    "scan_interval_s": Key(ranged(SCAN_INTERVAL_MIN_S, SCAN_INTERVAL_MAX_S)),
    "format": Key(report_format),
    "report_interval_s": Key(ranged(REPORT_INTERVAL_MIN_S, REPORT_INTERVAL_MAX_S)),
    "max_tasks_per_block": Key(int_range(MAX_TASKS_PER_BLOCK_MIN, MAX_TASKS_PER_BLOCK_MAX)),
    "cgroups": Key(cgroup_prefixes),
    "throttle_window_s": Key(ranged(1.0, 600.0)),
    "throttle_share": Key(plain_range(0.05, 1.0, "a share of the window")),
    "livelock_passes_per_s": Key(plain_range(1.0, 1e7, "passes a second")),
    "classify_after_s": Key(ranged(CLASSIFY_AFTER_MIN_S, CLASSIFY_AFTER_MAX_S)),
    "daemon_user": Key(user_name),  # read by top only, when it connects
    "pod_logs_dir": Key(dir_or_off),
    # need a restart: they shape what is loaded or bound at start
    "max_inflight": Key(inflight_count, restart=True),
    "tracefs": Key(path, restart=True),
    "hot_paths": Key(boolean, restart=True),
    "disable_sites": Key(site_labels, restart=True),
    "metrics_addr": Key(listen_addr, restart=True),
    "begin_stacks": Key(boolean, restart=True),
    "bpf_stats": Key(boolean, restart=True),
    "oom_score_adj": Key(int_range(-1000, 1000), restart=True),
    "lock_memory": Key(boolean, restart=True),
    "foreign_pid_namespace": Key(boolean, restart=True),
    "output": Key(output_kind, restart=True),
    "socket_path": Key(socket_path, restart=True),
    "socket_group": Key(group_name, restart=True),
    "metrics_cgroups": Key(cgroup_prefixes, restart=True),  # a counter's labels stay for the run
    "metrics_cgroup_pattern": Key(cgroup_pattern, restart=True),
    "metrics_cgroup_max": Key(int_range(1, METRICS_CGROUP_MAX), restart=True),
    "metrics_pod_labels": Key(boolean, restart=True),
}

RESTART_KEYS = tuple(k for k, key in KEYS.items() if key.restart)
