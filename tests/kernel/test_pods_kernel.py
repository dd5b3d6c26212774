# SPDX-License-Identifier: Apache-2.0
"""A stall in a Kubernetes pod's container, on the real kernel: the report names the pod.

No kubelet runs here: the test makes the memory cgroups a kubelet with the
cgroupfs driver makes (`kubepods/burstable/pod<uid>/<container id>`), under a
group of its own with a per-run name (as a nested node's kubelet would sit
under its node's group), and a directory like the kubelet's /var/log/pods in
scratch space. A task held in the memcg OOM wait in the container's group must
be reported with the pod's UID, QoS class, container ID, namespace and name.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import uuid

import pytest

from lab import memcg


@pytest.mark.requires_cgroup_v1_memory
def test_a_stall_in_a_pods_container_is_reported_with_the_pod(daemon_factory, tmp_path):
    uid = str(uuid.uuid4())
    container_id = secrets.token_hex(32)
    logs = tmp_path / "pods"
    (logs / f"shop_cart-7d9f_{uid}" / "cart").mkdir(parents=True)  # <namespace>_<name>_<uid>/<container>
    (logs / f"kube-system_coredns-1_{uuid.uuid4()}").mkdir()  # another pod's
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(memcg.MemCgroup("aw-pods"))
        group = node
        for name in ("kubepods", "burstable", f"pod{uid}", container_id):
            group = stack.enter_context(memcg.MemCgroup(name=name, parent=group))
        assert group.rel_path.endswith(f"/kubepods/burstable/pod{uid}/{container_id}")
        d = daemon_factory("--threshold", "1", "--scan-interval", "0.25", "--cgroup", group.rel_path,
                           config=f"pod_logs_dir: {json.dumps(str(logs))}\n")
        hogs: list[memcg.Hog] = []
        try:
            hogs = memcg.stall_indefinitely(group, 1, 100)

            def named(records) -> bool:
                return any((t.get("pod") or {}).get("name") for r in records if r["type"] == "stall_report"
                           for t in r["tasks"])

            assert d.wait_for(named, 20), f"no pod named: {d.raw_lines[-3:]}"
            assert hogs[0].proc.poll() is None, "the hog was not held in the wait"
        finally:
            memcg.release(group)
            for h in hogs:
                h.stop()
    rec = next(r for r in d.of_type("stall_report") if named([r]))
    (task,) = [t for t in rec["tasks"] if t["pid"] == hogs[0].proc.pid]
    assert task["site"] == "memcg_oom_wait" and task["cgroup"] == group.rel_path, task
    assert task["pod"] == {"namespace": "shop", "name": "cart-7d9f", "uid": uid, "qos": "burstable",
                           "container_id": container_id, "runtime": None}, task["pod"]
    assert d.stop() == 0
