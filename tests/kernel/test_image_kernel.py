# SPDX-License-Identifier: Apache-2.0
"""The image and the DaemonSet's contract, up to the kubelet's door.

scripts/build-image builds the image from nothing (its base from Debian's
packages), once per session; the test runs it under podman with exactly what
deploy/kubernetes/allocwatch-daemonset.yaml gives the pod (tests/kernel/pod.py
reads it from there): host PID namespace, the listed capabilities only, a
read-only root file system, the listed host paths and emptyDirs, the same
command line. A real stall made on the host must reach the container's stdout
and its metrics, scraped by a real Prometheus, and the socket for
`allocwatch top` (what `kubectl exec` would run); `podman stop` (SIGTERM, the
grace period of the manifest) must leave no program loaded. The image and the
container are named with a per-run suffix and removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import memcg
from tests.kernel.daemonproc import allocwatch_prog_ids, progs_left
from tests.kernel.pod import ROOT, PodRun, cni_chains, podman, remove_cgroup, remove_cni_chains, ulimits
from tests.kernel.promserver import Prometheus

pytestmark = pytest.mark.requires_tool("podman", "mmdebstrap", "prometheus")

METRICS_PORT = 19464
CNI_IPAM = Path("/var/lib/cni/networks")
BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    tag = f"localhost/allocwatch:test-{os.getpid()}-{secrets.token_hex(3)}"
    start = time.monotonic()
    try:
        proc = subprocess.run([str(ROOT / "scripts" / "build-image"), "--tag", tag], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S, check=False)
        assert proc.returncode == 0, f"scripts/build-image exited {proc.returncode}: {proc.stderr[-3000:]}"
        assert proc.stdout.strip() == tag
        size = subprocess.run([*podman(), "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True,
                              text=True, check=True).stdout.strip()
        print(f"\nimage {tag}: {int(size) / 1e6:.0f} MB, built in {time.monotonic() - start:.0f}s")
        yield tag
    finally:
        subprocess.run([*podman(), "rmi", "--force", tag], capture_output=True, check=False)


class Pod:
    """The container running, attached: its stdout's JSON lines and its stderr collected as they come.

    Around it, what a kubelet would make, named after the container and removed by
    `close()`: a network of its own (its bridge goes with it, and the iptables
    chains CNI made for it) and a parent cgroup (podman's monitor, conmon, stays
    in the test's own)."""

    def __init__(self, image: str) -> None:
        self.name = f"aw-pod-{os.getpid()}-{secrets.token_hex(3)}"
        self.chains_before = cni_chains()
        subprocess.run([*podman(), "network", "create", self.name], capture_output=True, check=True, timeout=60)
        self.run = PodRun(image, self.name, network=self.name, cgroup_parent=f"/{self.name}")
        assert METRICS_PORT in self.run.ports, self.run.ports
        self.proc = subprocess.Popen(self.run.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, json_lines: bool) -> None:
        for line in stream:
            if json_lines:
                self.records.append(json.loads(line))  # every stdout line is one JSON object
            else:
                self.stderr.append(line)

    def wait(self, pred, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return True
            if self.proc.poll() is not None:
                return pred()
            time.sleep(0.2)
        return False

    def address(self) -> str:
        """The pod's own IP address, as a cluster's Prometheus reaches it."""
        fmt = '{{(index .NetworkSettings.Networks "' + self.name + '").IPAddress}}'
        out = subprocess.run([*podman(), "inspect", "--format", fmt, self.name], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
        assert out, f"no address for {self.name}"
        return out

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*podman(), "exec", self.name, *argv], capture_output=True, text=True, timeout=90,
                              check=False)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the manifest's grace period, as the kubelet does; the exit code."""
        subprocess.run([*podman(), "stop", "-t", str(self.run.grace_s), self.name], capture_output=True,
                       timeout=self.run.grace_s + 30, check=False)
        code = self.proc.wait(30)
        for t in self._threads:
            t.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.stop()
        subprocess.run([*podman(), "rm", "--force", self.name], capture_output=True, check=False)
        subprocess.run([*podman(), "network", "rm", "--force", self.name], capture_output=True, check=False)
        remove_cni_chains(cni_chains() - self.chains_before)
        shutil.rmtree(CNI_IPAM / self.name, ignore_errors=True)  # host-local's addresses, left by network rm
        self.run.close()
        remove_cgroup(self.name)


def test_the_image_keeps_no_build_state(image):
    """allocwatch installed as a package, its entrypoint on PATH; no pip, compiler, apt lists or
    caches, and no bytecode of allocwatch's build in the image."""
    script = ("command -v allocwatch; python3 -c 'import allocwatch, bcc, yaml; print(allocwatch.__file__)'; "
              "ls -d /usr/local/lib/python3*/dist-packages/allocwatch-*.dist-info; "
              "echo LEFT; command -v pip pip3 gcc cc clang; "
              "find /var/lib/apt/lists /var/cache/apt -type f ! -name lock; "
              "find / -xdev -path '*allocwatch*' -name '*.pyc'; ls -d /src /staging /root/.cache 2>/dev/null; true")
    # no network, and a parent cgroup of its own removed after: nothing of podman's is left
    cgroup = f"aw-img-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        proc = subprocess.run([*podman(), "run", "--rm", "--network=none", f"--cgroup-parent=/{cgroup}",
                               "--cgroups=no-conmon", *ulimits(), "--entrypoint", "sh", image, "-c", script],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        remove_cgroup(cgroup)
    assert proc.returncode == 0, proc.stderr
    found, left = proc.stdout.split("LEFT\n")
    assert found.splitlines()[0] == "/usr/local/bin/allocwatch", found
    assert "/usr/local/lib/python3" in found and ".dist-info" in found, found
    assert left.split() == [], f"left in the image: {left}"


@pytest.mark.requires_cgroup_v1_memory
def test_the_daemonset_pod_reports_a_host_stall_and_detaches_on_sigterm(image):
    before = allocwatch_prog_ids()
    pod = Pod(image)
    try:
        ready = pod.wait(lambda: any("watching" in s for s in pod.stderr), 120)
        assert ready, f"the pod did not start (exit {pod.proc.poll()}): {''.join(pod.stderr)[-3000:]}"
        assert allocwatch_prog_ids() - before, "the pod says it is watching but no aw_* program is loaded"
        with Prometheus(f"{pod.address()}:{METRICS_PORT}") as prom, memcg.MemCgroup("aw-pod") as group:
            (hog,) = memcg.stall_indefinitely(group, 1, 100)

            def reported() -> list[dict[str, Any]]:
                return [t for r in list(pod.records) if r["type"] == "stall_report" for t in r["tasks"]
                        if t["tid"] == hog.pid]

            # the manifest's command line: the default 10 s threshold
            assert pod.wait(lambda: bool(reported()), 60), f"no report for {hog.pid}: {pod.records[-3:]}"
            task = reported()[0]
            assert task["site"] == "memcg_oom_wait" and task["pid"] == hog.pid, task
            assert task["cgroup"].endswith("/" + group.name), task["cgroup"]
            assert task["memcg"]["oom_kill_disable"] is True and task["memcg"]["under_oom"] is True, task["memcg"]
            assert "mem_cgroup_oom_synchronize" in task["stack"], task["stack"]
            stalled = prom.wait_value('allocwatch_tasks_stalled{job="allocwatch",site="memcg_oom_wait"}',
                                      lambda v: v >= 1, 30)
            assert stalled is not None and stalled >= 1, f"Prometheus saw allocwatch_tasks_stalled={stalled}"
            assert prom.value('up{job="allocwatch"}') == 1.0
            # the socket in its emptyDir: `kubectl exec ... allocwatch top --once --json`
            top = pod.exec("allocwatch", "top", "--once", "--json")
            assert top.returncode == 0, top.stderr
            assert [t["site"] for t in json.loads(top.stdout)["inflight"] if t["pid"] == hog.pid] == ["memcg_oom_wait"]
            # with the pod's capabilities /proc/kallsyms shows addresses (CAP_SYSLOG): shrinkers get names
            names = pod.exec("python3", "-c", "from allocwatch.kernel.ksyms import KernelSymbols; "
                                              "print(KernelSymbols().how())")
            assert names.returncode == 0 and names.stdout.startswith("named from /proc/kallsyms ("), names
            memcg.release(group)
            assert hog.wait_done(20), "the hog did not finish after the limit was raised"
            assert pod.wait(lambda: any(r["type"] == "recovered" and r["tid"] == hog.pid for r in pod.records), 15)
            hog.stop()
        assert pod.stop() == 0, "".join(pod.stderr)[-2000:]
        assert [r for r in pod.records if r["type"] == "summary"], "no summary after SIGTERM"
        assert not progs_left(before), "BPF programs left loaded after podman stop"
    finally:
        pod.close()
