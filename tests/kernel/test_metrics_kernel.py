# SPDX-License-Identifier: Apache-2.0
"""The live state on the real kernel: a real Prometheus scrapes a real stall,
every PromQL expression shipped in deploy/ is evaluated against it, and a
reader that never reads cannot stop the scan loop or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lab import memcg
from lab.ports import free_port
from tests.kernel.daemonproc import Daemon, allocwatch_prog_ids, progs_left
from tests.kernel.promserver import Prometheus

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "allocwatch-rules.yml"


def _scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        return r.read().decode()


def _sample(text: str, name: str, labels: str = "") -> float | None:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels) if labels else "")) and (labels or line[len(name)] in " {"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _assert_histograms_whole(text: str) -> None:
    """Each histogram series of the exposition: buckets cumulative, the last +Inf, equal to _count."""
    series: dict[tuple[str, str], list[tuple[str, float]]] = {}
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"(allocwatch_\w+)_(bucket|count)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        name, part, value = m.group(1), m.group(2), float(m.group(4))
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        le = labels.pop("le", None)
        key = (name, repr(sorted(labels.items())))
        if part == "bucket" and le is not None:
            series.setdefault(key, []).append((le, value))
        elif part == "count":
            counts[key] = value
    assert series and set(series) == set(counts), (sorted(series), sorted(counts))
    for key, buckets in series.items():
        values = [v for _, v in buckets]
        assert values == sorted(values), (key, buckets)
        assert buckets[-1][0] == "+Inf" and buckets[-1][1] == counts[key], (key, buckets[-1], counts[key])


@pytest.mark.requires_cgroup_v1_memory
@pytest.mark.requires_tool("prometheus")
def test_prometheus_scrapes_a_real_stall_and_every_shipped_expression_evaluates(tmp_path):
    from tests import deploy_exprs

    addr = f"127.0.0.1:{free_port()}"
    with memcg.MemCgroup("aw-prom") as group:
        # the test's group gets a cgroup label of its own; every other wait counts as "other"
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"metrics_cgroups: [{json.dumps(group.rel_path)}]\nmetrics_cgroup_max: 1\n")
        d = Daemon("--config", str(cfg), "--metrics-addr", addr, "--threshold", "1", "--scan-interval", "0.25")
        try:
            _scrape_a_stall_and_evaluate_every_expression(d, addr, group, deploy_exprs)
        finally:
            d.kill()


def _scrape_a_stall_and_evaluate_every_expression(d: Daemon, addr: str, group: memcg.MemCgroup, deploy_exprs) -> None:
    d.wait_ready()
    with Prometheus(addr, [RULES]) as prom:
        assert prom.wait_value('up{job="allocwatch"}', lambda v: v == 1, 20) == 1
        site = '{site="memcg_oom_wait"}'
        ours = f'{{cgroup={json.dumps(group.rel_path)}, site="memcg_oom_wait"}}'
        count0 = prom.wait_value(f"allocwatch_wait_seconds_count{site}", lambda v: True, 10) or 0.0
        hogs = memcg.stall_indefinitely(group, 5, 100)
        waiting = prom.wait_value(f"allocwatch_tasks_waiting{site}", lambda v: v >= 5, 20)
        assert waiting == 5, f"in-flight gauge reached {waiting}, not the 5 stalled tasks"
        assert prom.wait_value(f"allocwatch_tasks_stalled{site}", lambda v: v >= 5, 10) == 5
        s1 = prom.value(f"allocwatch_memory_stalled_seconds_total{site}") or 0.0
        c1 = prom.value(f"allocwatch_cgroup_memory_stalled_seconds_total{ours}") or 0.0
        time.sleep(3)
        s2 = prom.value(f"allocwatch_memory_stalled_seconds_total{site}") or 0.0
        c2 = prom.value(f"allocwatch_cgroup_memory_stalled_seconds_total{ours}") or 0.0
        assert s2 >= s1 + 5 * 2, (s1, s2)  # five tasks, about 3 s each, still waiting
        assert c2 >= c1 + 5 * 2, (c1, c2)  # the same seconds, under the group's own label
        labels = {r["metric"]["cgroup"] for r in prom.query("allocwatch_cgroup_memory_stalled_seconds_total")}
        assert labels <= {group.rel_path, "other"}, labels  # the cap (1) holds whatever else waits
        memcg.release(group)
        for h in hogs:
            assert h.wait_done(20)
            h.stop()
        grown = prom.wait_value(f"allocwatch_wait_seconds_count{site}", lambda v: v >= count0 + 5, 15)
        assert grown is not None and grown >= count0 + 5, (count0, grown)
        assert prom.wait_value(f"allocwatch_tasks_waiting{site}", lambda v: v == 0, 10) == 0
        # Every expression the rules and the dashboard ship: valid PromQL on this
        # Prometheus, and every allocwatch metric it names exists here.
        names = set(prom.api("label/__name__/values")["data"])
        exprs = deploy_exprs.rule_exprs() + deploy_exprs.dashboard_exprs()
        assert len(exprs) >= 10
        for where, expr in exprs:
            prom.query(expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
                       .replace("$__interval", "15s"))
            missing = {n for n in deploy_exprs.metric_names(expr) if n not in names}
            assert not missing, f"{where}: {expr} names {missing}, which the daemon does not export"
        rules = prom.api("rules")["data"]["groups"]
        assert rules and all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
        # promtool's linter has nothing to say about the exposition
        text = _scrape(addr)
        _assert_histograms_whole(text)
        print(f"in flight {waiting:g}; stall s per site {s1:.1f} -> {s2:.1f}, for the group {c1:.1f} -> {c2:.1f}; "
              f"completed {count0:g} -> {grown:g}; {len(exprs)} expressions evaluated")
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                              check=False)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
    assert d.stop() == 0


ATTACK_S = 25.0
ATTACK_CONNECTIONS = 48  # past both caps (32 open, 16 a peer)


@pytest.mark.requires_tool("prometheus")
@pytest.mark.requires_tool("setpriv")
def test_a_slowloris_flood_from_one_local_user_cannot_keep_prometheus_out():
    """As `nobody`, 48 connections to the endpoint, each sending one byte of an endless
    request line every 2.3 s and opened again as soon as the server closes it, for 25 s,
    while a real Prometheus scrapes every second: Prometheus's own `up` is 1 for every
    scrape of the attack, the scans go on, and the daemon shed the attacker's connections.
    (On the endpoint before the shedding and the whole-request deadline, 32 trickling
    connections held every slot for the whole attack, each past 5 s, and every scrape was 503.)"""
    from tests.kernel import slowloris

    port = free_port()
    addr = f"127.0.0.1:{port}"
    d = Daemon("--metrics-addr", addr, "--scan-interval", "0.25")
    attacker = None
    try:
        d.wait_ready()
        with Prometheus(addr) as prom:
            assert prom.wait_value('up{job="allocwatch"}', lambda v: v == 1, 20) == 1
            attacker = subprocess.Popen(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                 Path(slowloris.__file__).read_text(), "127.0.0.1", str(port), str(ATTACK_CONNECTIONS), "2.3",
                 str(ATTACK_S)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
            )
            start = time.time()
            out, err = attacker.communicate(timeout=ATTACK_S + 60)
            end = time.time()
            assert attacker.returncode == 0, err
            seen = json.loads(out)
            time.sleep(2)  # the last scrape of the attack stored
            window = f"{int(end - start) - 1}s"  # the scrapes of the attack, none before it

            def at_end(expr: str) -> float | None:
                doc = prom.api("query", query=expr, time=f"{end:.3f}")
                assert doc["status"] == "success", doc
                result = doc["data"]["result"]
                return float(result[0]["value"][1]) if result else None

            scrapes = at_end(f'count_over_time(up{{job="allocwatch"}}[{window}])') or 0.0
            up = at_end(f'sum_over_time(up{{job="allocwatch"}}[{window}])') or 0.0
            scans = at_end(f"max_over_time(allocwatch_scans_total[{window}]) - "
                           f"min_over_time(allocwatch_scans_total[{window}])")
            shed = at_end(f"max_over_time(allocwatch_metrics_connections_shed_total[{window}])")
            print(f"attacker as nobody: {json.dumps(seen)}; prometheus: {up:g} of {scrapes:g} scrapes up "
                  f"in the last {window} of the attack; {scans} scans; {shed} connections shed")
        # The attack was on: the attacker had all its connections open at once,
        # trickled into them, and opened them again as the server closed them.
        assert seen["most_open"] >= ATTACK_CONNECTIONS and seen["opened"] >= 2 * ATTACK_CONNECTIONS, seen
        assert seen["bytes_sent"] >= ATTACK_CONNECTIONS, seen
        # Prometheus got in all along: at most one scrape of the attack missed.
        assert scrapes >= ATTACK_S / 2, scrapes
        assert up >= scrapes - 1, f"{up:g} of {scrapes:g} scrapes during the attack were up"
        # ... because the daemon shed the attacker's connections, and its scans went on.
        assert shed is not None and shed >= ATTACK_CONNECTIONS, shed
        assert scans is not None and scans >= ATTACK_S, f"{scans} scans in {window} at 0.25 s"
        assert d.stop() == 0
    finally:
        if attacker is not None and attacker.poll() is None:
            attacker.kill()
            attacker.wait()
        d.kill()


def test_metrics_port_in_use_is_exit_11_before_anything_is_loaded():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = allocwatch_prog_ids()
        proc = subprocess.run(
            [sys.executable, "-m", "allocwatch", "run", "--metrics-addr", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert proc.returncode == 11, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot listen there" in proc.stderr
    assert not progs_left(before)


def _listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports the process listens on (its socket inodes in /proc/net/tcp{,6}, state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("addr", ["", "127.0.0.1:{port}"])
def test_metrics_addr_empty_serves_nothing(addr):
    port = free_port()
    d = Daemon("--metrics-addr", addr.format(port=port))
    try:
        d.wait_ready()
        served = _listening_tcp_ports(d.proc.pid)
        if addr:  # the check sees a listener where there is one
            assert served == {port} and "metrics at" in "".join(d.stderr)
        else:
            assert served == set() and "metrics off" in "".join(d.stderr), (served, d.stderr)
        assert d.stop() == 0
    finally:
        d.kill()


@pytest.mark.requires_cgroup_v1_memory
def test_a_reader_that_never_reads_cannot_stop_scans_or_sigterm():
    """stdout a pipe nobody reads, 200 tasks stalled and escalating: the pipe fills,
    scans and metrics go on, whole blocks are dropped and counted, and SIGTERM
    ends the daemon within 2 s with nothing left attached."""
    addr = f"127.0.0.1:{free_port()}"
    read_end, write_end = os.pipe()  # never read
    before = allocwatch_prog_ids()
    proc = subprocess.Popen(
        [sys.executable, "-m", "allocwatch", "run", "--format", "json", "--metrics-addr", addr,
         "--threshold", "1", "--scan-interval", "0.25"],
        stdout=write_end, stderr=subprocess.PIPE, text=True,
    )
    os.close(write_end)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "watching" in line, line
        with memcg.MemCgroup("aw-stuck") as group:
            hogs = memcg.stall_indefinitely(group, 200, 4)
            try:
                deadline = time.monotonic() + 30
                dropped = 0.0
                while time.monotonic() < deadline and dropped < 3:
                    time.sleep(1)
                    dropped = _sample(_scrape(addr), "allocwatch_report_blocks_dropped_total") or 0.0
                assert dropped >= 3, "the pipe never filled: no block was dropped"
                scans1 = _sample(_scrape(addr), "allocwatch_scans_total") or 0.0
                time.sleep(2)
                text = _scrape(addr)
                scans2 = _sample(text, "allocwatch_scans_total") or 0.0
                assert scans2 >= scans1 + 5, f"scans stopped behind a stuck reader: {scans1} -> {scans2}"
                assert _sample(text, "allocwatch_tasks_stalled", 'site="memcg_oom_wait"') >= 150
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(10)
                took = time.monotonic() - t0
            finally:
                memcg.release(group)
                for h in hogs:
                    h.stop()
        assert code == 0 and took < 2.0, f"exit {code} after {took:.2f}s"
        assert not progs_left(before), "BPF programs left after SIGTERM"
        print(f"blocks dropped {dropped:g}; scans {scans1:g} -> {scans2:g} in 2 s; "
              f"SIGTERM to exit {took:.2f}s, nothing left attached")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(read_end)


def test_bpf_stats_count_program_run_time_and_switch_off_with_the_daemon(tmp_path):
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = sysctl.read_text()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bpf_stats: true\n")
    addr = f"127.0.0.1:{free_port()}"
    d = Daemon("--config", str(cfg), "--metrics-addr", addr, "--scan-interval", "0.25")
    try:
        d.wait_ready()
        # Context switches of our own (each sleep is two), not whatever an idle machine does.
        # With BTF the switch handler is on the raw tracepoint (kernel/schedswitch.py).
        switch = "aw_rtp_sched_switch" if Path("/sys/kernel/btf/vmlinux").exists() else "aw_sched_switch"
        deadline = time.monotonic() + 10
        while True:
            for _ in range(200):
                time.sleep(0.001)
            text = _scrape(addr)
            runs = _sample(text, "allocwatch_bpf_program_runs_total", f'program="{switch}"')
            run_s = _sample(text, "allocwatch_bpf_program_run_seconds_total", f'program="{switch}"')
            if (runs and runs > 100) or time.monotonic() > deadline:
                break
        assert runs and runs > 100 and run_s and run_s > 0, text[-2000:]
        assert 10 < run_s / runs * 1e9 < 100_000, f"{run_s / runs * 1e9:.0f} ns a run"  # a plausible cost
        assert sysctl.read_text() == before  # the daemon's fd, not the global switch
        assert d.stop() == 0
    finally:
        d.kill()
    assert sysctl.read_text() == before
