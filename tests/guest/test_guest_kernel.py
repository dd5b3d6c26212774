# SPDX-License-Identifier: Apache-2.0
"""On Debian's 6.1 and 6.12 kernels, in a virtme-ng guest (scripts/test-guest):
what the host's 6.18 cannot show. Kprobe pairs attach; the offline prediction
from the captured kernel is what happens live; cgroup v2 stalls are reported
while they last, with the v2 path; an OOM kill under memory.max; a loop device's
worker throttled behind the writeback wait of the writer it serves (v2 alone
charges the worker to the writer's group); every program,
kprobes included, is gone after SIGTERM.

The guest runs under TCG, so a daemon costs about 25 s to load: one daemon
serves the attach and stall tests (the raw sched_switch test loads its own
programs, with a D-sleep end threshold the daemon does not take)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from allocwatch.core import behind as behind_mod
from allocwatch.outputs import report
from lab import memcg, ramloop
from tests.kernel.daemonproc import Daemon

pytestmark = pytest.mark.kernel
ROOT = Path(__file__).resolve().parents[2]
GUEST = os.environ.get("ALLOCWATCH_GUEST", "")
KPROBE_SITES = ("reclaim_throttle", "pfmemalloc_throttle", "memcg_high_throttle")
MIB = 1 << 20


def _probes(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "allocwatch", "probes", "--json", *args],
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "warning:" not in out.stderr and "In file included" not in out.stderr, out.stderr[:2000]
    return {row["site"]: row for row in json.loads(out.stdout)["sites"]}


@pytest.fixture(scope="module")
def top_socket():
    """Where the daemon serves top: its hello says what it attached."""
    with tempfile.TemporaryDirectory(prefix="aw-guest-") as scratch:
        yield Path(scratch) / "top.sock"


@pytest.fixture(scope="module")
def daemon(top_socket):
    d = Daemon("--threshold", "1", "--scan-interval", "0.5", "--socket", str(top_socket))
    d.wait_ready(240)
    yield d
    assert d.stop(60) == 0  # and no program left: kprobes, kretprobes, tracepoints
    # memory.high and memory.max both made the hogs reclaim in their group: timed
    done = d.of_type("summary")[-1]["waits_completed"]
    assert done["memcg_reclaim"]["count"] > 0, done


def _hello(path: Path) -> dict:
    """The first line top's socket sends: what the daemon watches, and how."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(60)
        c.connect(str(path))
        got = b""
        while b"\n" not in got:
            chunk = c.recv(65536)
            assert chunk, got[:200]
            got += chunk
    return json.loads(got.split(b"\n", 1)[0])


def test_live_attach_is_what_the_capture_predicted(daemon, top_socket):
    """The daemon's own attach (its hello on top's socket) against `allocwatch
    probes` evaluated offline from the capture of this kernel: asking a live
    `probes` instead would load the programs a second time (about 40 s under TCG)."""
    hello = _hello(top_socket)
    assert hello["type"] == "hello", hello
    live = {c["site"]: c for c in hello["coverage"]}
    predicted = _probes("--tracefs", str(ROOT / "tests" / "fixtures" / "kernels" / GUEST))
    assert live.keys() == predicted.keys()
    for site, row in live.items():
        want = predicted[site]
        assert row["attached"] == bool(want["would_attach"]), (site, row, want)
        if row["attached"]:
            assert (row["mechanism"], row["target"]) == (want["mechanism"], want["target"]), (site, row, want)
    for site in KPROBE_SITES:
        assert live[site]["attached"] and live[site]["mechanism"] == "kprobe pair", live[site]


@pytest.mark.requires_cgroup_v2_memory
def test_memory_high_throttle_reported_in_flight_with_its_v2_path(daemon):
    """A task far over memory.high crawls in mem_cgroup_handle_over_high (a kprobe
    pair), sleeping up to 2 s each time: reported while it still crawls."""
    with memcg.MemCgroup("aw-guest-high") as group:
        assert group.version == 2
        hog = memcg.Hog(group, 200)
        hog.wait_ready(60)
        group.set_high_bytes(16 * MIB)
        hog.go()
        try:
            def reported(records):
                return [t for r in records if r["type"] == "stall_report" for t in r["tasks"]
                        if t["pid"] == hog.pid and t["site"] == "memcg_high_throttle"]

            assert daemon.wait_for(reported, 90), daemon.raw_lines[-3:]
            assert hog.proc.poll() is None, "reported only after it had finished"
        finally:
            group.set_high_bytes(None)
            hog.stop()
        task = reported(daemon.records)[0]
        assert task["cgroup"] and task["cgroup"].endswith("/" + group.name), task
        assert task["memcg"]["version"] == 2 and task["memcg"]["high_bytes"] == 16 * MIB, task["memcg"]
        assert task["memcg"]["events"].get("high", 0) > 0, task["memcg"]


def test_oom_kill_under_memory_max_with_its_v2_cgroup(daemon):
    with memcg.MemCgroup("aw-guest-max") as group:
        hog = memcg.Hog(group, 256)
        hog.wait_ready(60)
        group.set_limit_bytes(group.usage_bytes() + 32 * MIB)
        hog.go()
        assert hog.proc.wait(120) == -9
        assert daemon.wait_for(lambda rs: any(r["type"] == "oom_kill" and r["victim_pid"] == hog.pid for r in rs), 30)
    kill = next(r for r in daemon.of_type("oom_kill") if r["victim_pid"] == hog.pid)
    # read in the kernel at the kill (BTF offsets, the invoker's stack), not from /proc afterwards
    assert kill["victim_cgroup"].endswith("/" + group.name), kill
    assert kill["constraint"] == "memcg" and kill["constraint_source"] == "kernel", kill
    # with kprobes, the kernel's own oom_control: the group out of memory, the gfp and order its own line says
    assert kill["oom_cgroup"] == kill["victim_cgroup"], kill
    said = re.findall(r"invoked oom-killer: gfp_mask=0x([0-9a-f]+)\(([^)]*)\), order=(\d+)",
                      subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout)
    assert said, "the kernel said no oom-killer line"
    mask, names, order = said[-1]
    assert (kill["gfp"], kill["gfp_flags"], kill["order"]) == (int(mask, 16), names, int(order)), (kill, said[-1])


@pytest.mark.requires_cgroup_v2_memory
def test_a_writeback_wait_lists_the_loop_worker_throttled_behind_it(daemon):
    """The waits behind the wait (the memcg writeback deadlock, throttled rather
    than stuck). dd writes with O_DSYNC to ext4 on a loop device over a RAM disk,
    from a group (with the io controller: its I/O carries the group's blkcg) that
    a holder's 80 MiB keeps over a memory.high of 64 MiB (no swap: it stays over).
    Written 64 KiB at a time, dd's own throttling at each return to user space is
    a quarter of the worker's, which comes every 64 pages it charges. Each write
    waits on its writeback, which the loop device's worker completes by writing
    the backing file's page cache, charged to dd's group (c74d40e8b5e2, v5.14):
    the worker is throttled over memory.high while dd waits for it. A block lists
    dd with the worker behind it: its /proc name (kworker/...+loopN), its site and
    how long it has waited."""
    with ramloop.LoopOnRam() as disk, memcg.MemCgroup("aw-guest-behind") as group:
        assert group.version == 2
        group.give_io_controller()  # dd's writeback then carries its group's blkcg, and the worker charges it
        holder = memcg.Hog(group, 80)
        dd = None
        try:
            holder.wait_ready(60)
            holder.go()
            assert holder.wait_done(60), "the holder did not touch its 80 MiB"
            group.set_high_bytes(64 * MIB)
            dd = group.spawn(["dd", "if=/dev/zero", f"of={disk.mnt / 'f'}", "bs=64k", "count=6400", "oflag=dsync"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            worker = f"+{disk.name}"

            def behind(records):
                return [(t, b) for r in records if r["type"] == "stall_report" for t in r["tasks"]
                        if t["pid"] == dd.pid for b in t.get("behind") or () if b["name"].endswith(worker)]

            def seen() -> dict[str, Any]:
                """On failure: what the blocks said of dd and of the loop device's workers."""
                tasks = [t for r in daemon.records if r["type"] == "stall_report" for t in r["tasks"]]
                return {"dd": sorted({(t["kind"], t["site"], *sorted(t.get("per_site") or ())) for t in tasks
                                      if t["pid"] == dd.pid}),
                        "workers": sorted({(t["comm"], t["site"]) for t in tasks if t["comm"].startswith("kworker")})}

            assert daemon.wait_for(behind, 120), (f"no block with {disk.name}'s worker behind dd", seen())
            assert dd.poll() is None, "reported only after dd had finished"
        finally:
            group.set_high_bytes(None)
            if dd is not None:
                dd.kill()
                dd.wait(60)
            holder.stop()
    rows = behind(daemon.records)
    for _, b in rows:
        assert b["name"].startswith("kworker/") and b["pid"] != dd.pid, b
        assert b["site"] in ("memcg_high_throttle", "memcg_reclaim") and b["waited_s"] >= 0, b
    # dd was listed for waiting on writeback, for one of the reasons the daemon takes (core/behind.on_writeback):
    # at the site (in its window, or now), on that device's writeback, with the wait in its stack (as when its
    # own throttle is what the scan saw, and the stack read a moment later is in the wait), or throttled by
    # reclaim until writeback progresses
    def on_writeback(t: dict[str, Any]) -> bool:
        return (t["site"] == "writeback_wait" or "writeback_wait" in (t.get("per_site") or {})
                or (t.get("writeback") or {}).get("device") == disk.name
                or bool(behind_mod.WRITEBACK_FRAMES.intersection(t.get("stack") or ()))
                or any("WRITEBACK" in reason for reason in t.get("throttle_reasons") or {}))

    assert any(on_writeback(t) for t, _ in rows), [
        {k: t.get(k) for k in ("kind", "site", "per_site", "writeback", "stack", "throttle_reasons")}
        for t, _ in rows][:2]
    text = report.render_dicts([r for r in daemon.records if r["type"] == "stall_report"], "text")
    assert re.search(rf"behind it, in memory waits: kworker/\S+\{worker} pid=\d+ memcg_(high_throttle|reclaim)",
                     text), text[-3000:]


@pytest.mark.requires_cgroup_v2_memory
def test_d_sleeps_are_timed_on_the_raw_sched_switch():
    """Both kernels hand prev_state to the raw sched_switch (fa2c3254d7cf, v5.18):
    the program compiled from their BTF sees a task over memory.high fall asleep
    in D and wake (tests/kernel/test_sched_switch_kernel.py does the rest on the host).
    The same load has the task iterator, whose letters are the stat files' (the
    host's tests/kernel/test_task_iter_kernel.py checks every field)."""
    import os
    import time

    from allocwatch.core.sites import SITE_DSTATE
    from allocwatch.kernel import kernelinfo, probes, schedswitch, taskiter, wire
    from allocwatch.kernel.bpfsource import BpfSource, LoadOptions

    flags, why = schedswitch.running_kernel_defines()
    assert schedswitch.PREV_STATE_DEFINE in flags, why
    iter_flags, why = taskiter.running_kernel_defines()
    assert iter_flags, why
    features = kernelinfo.read_features(Path("/sys/kernel/tracing"), probes.all_tracepoint_names(),
                                        probes.all_function_names())
    src = BpfSource(probes.plan(features), features,
                    LoadOptions(long_wait_ns=10_000_000, dstate_end_ns=10_000_000, switch_defines=tuple(flags),
                                iter_defines=tuple(iter_flags)))
    try:
        src.load()
        assert src.sched_switch_how == "raw tracepoint", src.sched_switch_how
        assert src.task_states_how == "task iterator", src.task_states_how
        states = src.task_states()
        assert states is not None and states[os.getpid()][0] == "R"
        stat = {t: _stat_letter(t) for t in states}
        agree = sum(1 for t, (letter, _) in states.items() if stat[t] == letter)
        assert agree >= 0.9 * len(states) and agree >= 10, (agree, len(states))  # a few change state between reads
        with memcg.MemCgroup("aw-guest-raw") as group:
            hog = memcg.Hog(group, 200)
            hog.wait_ready(60)
            group.set_high_bytes(16 * MIB)
            hog.go()
            opened, ended = set(), set()
            try:
                deadline = time.monotonic() + 60
                while not (opened and ended & opened) and time.monotonic() < deadline:
                    opened |= {w.start_ns for w in src.inflight() if w.tid == hog.pid and w.site == SITE_DSTATE}
                    ended |= {e.start_ns for e in src.drain()
                              if isinstance(e, wire.WaitEnd) and e.tid == hog.pid and e.site == SITE_DSTATE}
                    time.sleep(0.2)
            finally:
                group.set_high_bytes(None)
                hog.stop()
            assert ended & opened, (len(opened), len(ended))
    finally:
        src.close()


def _stat_letter(tid: int) -> str | None:
    try:
        raw = Path(f"/proc/{tid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 1:].split()[0].decode()
