# SPDX-License-Identifier: Apache-2.0
"""The memcg recipes themselves, on the real kernel: groups go away, stalls and OOM kills happen."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lab import memcg


def _cgroup_of(pid: int, group: memcg.MemCgroup) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (group.version == 1 and "memory" in controllers.split(",")) or (group.version == 2 and controllers == ""):
            return path
    raise AssertionError(f"no memory cgroup line for {pid}")


class _Boom(Exception):
    pass


def test_group_removed_even_when_the_body_raises() -> None:
    outsider = subprocess.Popen(["sleep", "60"])  # not started by the group: moved out, not killed
    try:
        with pytest.raises(_Boom), memcg.MemCgroup("aw-selftest") as group:
            path = group.path
            assert path.is_dir() and group.version in (1, 2)
            assert group.name.startswith("aw-selftest-")
            assert group.inode == path.stat().st_ino
            ours = group.spawn(["sleep", "60"])
            assert _cgroup_of(ours.pid, group) == group.rel_path  # joined before exec
            (path / "cgroup.procs").write_text(str(outsider.pid))
            assert sorted(group.pids()) == sorted([ours.pid, outsider.pid])
            raise _Boom
        assert not path.exists()
        assert ours.returncode == -9  # killed and reaped
        assert outsider.poll() is None
        assert _cgroup_of(outsider.pid, group) != group.rel_path
    finally:
        outsider.kill()
        outsider.wait()


@pytest.mark.requires_cgroup_v1_memory
def test_indefinite_stall_then_release() -> None:
    with memcg.MemCgroup("aw-selftest-stall") as group:
        hogs = memcg.stall_indefinitely(group, 3, 100)
        try:
            time.sleep(2.0)
            assert not any(h.wait_done(0) for h in hogs), "a hog finished under the limit"
            for h in hogs:
                assert h.proc.poll() is None
                assert memcg.proc_state(h.pid) == "D", h.pid
                assert "mem_cgroup_oom_synchronize" in memcg.kernel_stack(h.pid), memcg.kernel_stack(h.pid)
            assert group.under_oom()
            assert group.oom_kill_count() == 0
            t0 = time.monotonic()
            memcg.release(group)
            for h in hogs:
                assert h.wait_done(max(0.0, t0 + 10 - time.monotonic())), f"hog {h.pid} did not finish"
            assert time.monotonic() - t0 < 10
            assert group.usage_bytes() >= 300 * memcg.MIB
            for h in hogs:
                assert h.finish(5) == 0
        finally:
            for h in hogs:
                h.stop()


def test_oom_kill() -> None:
    with memcg.MemCgroup("aw-selftest-oom") as group:
        group.set_limit_bytes(64 * memcg.MIB)
        before = group.oom_kill_count()
        with memcg.Hog(group, 200) as hog:
            hog.wait_ready(30)
            hog.go()
            assert hog.proc.wait(30) == -9
            assert not hog.done
        assert group.oom_kill_count() > before
