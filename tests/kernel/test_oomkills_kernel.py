# SPDX-License-Identifier: Apache-2.0
"""An OOM storm on the real kernel (issue 26, item 1): stress-ng in a memory
cgroup v1 of 256 MiB with the OOM killer on kills a dozen tasks a second. Every
kill must be counted (JSON `count`, the metric), each said with the victim's
memory cgroup and the constraint read in the kernel at the kill (memcg, never
the 'global' a late read of /proc gave), and the text must fold them into at
most one line per cgroup per scan."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request

import pytest

from lab import memcg
from lab.ports import free_port
from tests.kernel.daemonproc import TextDaemon

STORM_S = 15


def _oom_kills_metric(addr: str) -> float:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as r:
        text = r.read().decode()
    return float(re.search(r"^allocwatch_oom_kills_total (\S+)$", text, re.M).group(1))


def _text_count(line: str) -> int:
    """The kills one text line says: 'oom kills #N: 37 in ...' or one 'oom kill #N:'."""
    m = re.search(r" oom kills #\d+: (\d+) in ", line)
    return int(m.group(1)) if m else 1


@pytest.mark.requires_cgroup_v1_memory
@pytest.mark.requires_tool("stress-ng")
def test_an_oom_storm_in_a_memcg_is_counted_whole_said_memcg_with_its_cgroup_and_folded(daemon_factory):
    addr = f"127.0.0.1:{free_port()}"
    with memcg.MemCgroup("aw-storm") as group:
        group.set_limit_bytes(256 * memcg.MIB)
        d = daemon_factory("--metrics-addr", addr)
        text = TextDaemon()
        try:
            metric_before = _oom_kills_metric(addr)
            kills_before = group.oom_kill_count()
            storm = group.spawn(["stress-ng", "--vm", "2", "--vm-bytes", "600M", "--vm-keep",
                                 "--timeout", f"{STORM_S}s", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            storm.wait(STORM_S + 60)
            kills = group.oom_kill_count() - kills_before
            time.sleep(2.5)  # two scans more: every kill drained and said
            mine = [r for r in d.of_type("oom_kill") if r["cgroup"] == group.rel_path]
            lines = [ln for ln in text.lines if " oom kill" in ln and f"cgroup={group.rel_path}" in ln]
            metric = _oom_kills_metric(addr) - metric_before
        finally:
            try:
                text_code = text.stop()
            finally:
                text.kill()
    assert kills >= 30, f"the storm made only {kills} kill(s)"
    said = sum(r["count"] for r in mine)
    print(f"{kills} kills in {STORM_S} s: {len(mine)} JSON record(s) say {said}, {len(lines)} text line(s), "
          f"the metric grew {metric:g}")
    # every kill counted: JSON, text and the metric (which also counts any other kill on the machine)
    assert said == kills, [(r["seq"], r["count"]) for r in mine]
    assert sum(_text_count(ln) for ln in lines) == kills, lines
    assert metric >= kills
    # the constraint, read in the kernel, right for every kill; the victims' and invokers' cgroup named
    for r in mine:
        assert r["constraint"] == "memcg" and r["constraint_source"] == "kernel", r
        assert r["constraints"] == {"memcg": r["count"]}, r
        assert all(v["invoker_cgroup"] == r["cgroup"] and v["constraint"] == "memcg" for v in r["victims"]), r
        # the machine at the kill (issue 29, item 5): a group's limit, not the machine out of memory
        m = r["memory_at_kill"]
        assert m["free_above_min"] is True and m["zones_at_or_under_min"] == [], m
        assert m["reclaimable_bytes"] > 0 and m["available_bytes"] > 1 << 30, m
    # folded: one record and one line per cgroup per scan, and far fewer than the kills
    times = [r["time"] for r in mine]
    assert len(times) == len(set(times)), "two records of one cgroup in one scan"
    assert len(mine) <= STORM_S + 5 and len(lines) <= STORM_S + 5, (len(mine), len(lines))
    assert all(ln.count("\n") == 1 for ln in lines)
    assert all("free>min in every zone reclaimable=" in ln for ln in lines), lines[:2]
    assert text_code == 0
