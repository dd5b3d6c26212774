# SPDX-License-Identifier: Apache-2.0
"""A Kubernetes pod from a task's cgroup path (core/pods.py), its name from the
pods log dir (kernel/podnames.py), and how every output shows it.

The fixtures are cgroup paths as /proc/PID/cgroup shows them (the memory line
on v1, the 0:: line on v2), written from the naming rules: the kubelet's
(`kubepods`, a QoS level for Burstable and BestEffort, `pod<uid>`; under the
systemd driver each level a slice named after its whole path, `-` inside a name
written `_`) and the runtimes' (containerd: `cri-containerd-<id>.scope`, CRI-O:
`crio-<id>.scope`, `crio-<id>` under cgroupfs, Docker: `docker-<id>.scope`;
under cgroupfs containerd and Docker name the group by the bare ID).
"""

from __future__ import annotations

import json

import pytest

from allocwatch.config import Config
from allocwatch.core import pods
from allocwatch.core.pods import BESTEFFORT, BURSTABLE, GUARANTEED, PodRef
from allocwatch.core.records import StallReport, TaskDetail
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Stall, Wait
from allocwatch.kernel.podnames import MAX_PODS, PodNames, split_name
from allocwatch.outputs import journal, report
from allocwatch.top import view as topview
from allocwatch.top.model import task_rows
from tests.unit.fakes import hog_stalls_then_wakes, snapshot_daemon, top_doc, top_task

UID = "8f1d2a6c-3b4e-4f5a-9c7d-1e2f3a4b5c6d"
UID_ = UID.replace("-", "_")  # as a systemd slice name writes it
STATIC_UID = "6d3b5f0c2a1e4d7b8c9a0f1e2d3c4b5a"  # a static pod's: the kubelet's hash of its manifest
CID = "5e1c0b9a8d7f6e5d4c3b2a19081726354a5b6c7d8e9f0a1b2c3d4e5f60718293"

# (path, qos, container id, runtime): the memory line on v1 and the 0:: line on v2 read the same
LAYOUTS = {
    # systemd driver (v1 memory hierarchy and v2 alike)
    "systemd containerd burstable": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope",
        BURSTABLE, CID, "containerd"),
    "systemd containerd besteffort": (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        BESTEFFORT, CID, "containerd"),
    "systemd containerd guaranteed": (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope", GUARANTEED, CID, "containerd"),
    "systemd cri-o burstable": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{CID}.scope",
        BURSTABLE, CID, "cri-o"),
    "systemd cri-o guaranteed": (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope", GUARANTEED, CID, "cri-o"),
    "systemd docker besteffort": (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope",
        BESTEFFORT, CID, "docker"),
    # cgroupfs driver
    "cgroupfs containerd burstable": (f"/kubepods/burstable/pod{UID}/{CID}", BURSTABLE, CID, None),
    "cgroupfs containerd besteffort": (f"/kubepods/besteffort/pod{UID}/{CID}", BESTEFFORT, CID, None),
    "cgroupfs containerd guaranteed": (f"/kubepods/pod{UID}/{CID}", GUARANTEED, CID, None),
    "cgroupfs cri-o burstable": (f"/kubepods/burstable/pod{UID}/crio-{CID}", BURSTABLE, CID, "cri-o"),
    "cgroupfs cri-o guaranteed": (f"/kubepods/pod{UID}/crio-{CID}", GUARANTEED, CID, "cri-o"),
    # a task below the container's own group (a container's own sub-groups)
    "cgroupfs nested below the container": (f"/kubepods/besteffort/pod{UID}/{CID}/init", BESTEFFORT, CID, None),
    # the pod's own group: no container
    "systemd pod group": (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
                          BURSTABLE, None, None),
    "cgroupfs pod group": (f"/kubepods/pod{UID}", GUARANTEED, None, None),
    # CRI-O's monitor beside the container: the pod's, no container
    "systemd cri-o conmon": (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope",
        BURSTABLE, None, None),
    # behind a prefix: a kind node (its kubelet's --cgroup-root /kubelet), a node in a container
    "kind systemd": (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope", BESTEFFORT, CID, "containerd"),
    "kind cgroupfs": (f"/kubelet/kubepods/burstable/pod{UID}/{CID}", BURSTABLE, CID, None),
    "node in a docker scope": (
        f"/system.slice/docker-{'a' * 64}.scope/kubepods/burstable/pod{UID}/{CID}", BURSTABLE, CID, None),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_gives_the_pod_its_qos_and_container(layout):
    path, qos, cid, runtime = LAYOUTS[layout]
    assert pods.parse(path) == PodRef(uid=UID, qos=qos, container_id=cid, runtime=runtime)


def test_a_static_pods_uid_is_32_hex_digits():
    assert pods.parse(f"/kubepods/burstable/pod{STATIC_UID}/{CID}") == PodRef(STATIC_UID, BURSTABLE, CID)
    assert pods.parse(f"/kubepods.slice/kubepods-pod{STATIC_UID}.slice/docker-{CID}.scope") == PodRef(
        STATIC_UID, GUARANTEED, CID, "docker")


@pytest.mark.parametrize("path", [
    None, "", "/", "/user.slice/user-0.slice/session-1.scope",
    f"/system.slice/docker-{CID}.scope",  # a plain Docker container: no pod
    "/kubepods", "/kubepods/burstable", "/kubepods.slice/kubepods-burstable.slice",  # QoS groups, no pod
    f"/box/pod{UID}/{CID}",  # pod<uid> with no kubepods above it
    f"/kubepods/other/pod{UID}/{CID}",  # no such QoS level
    "/kubepods/burstable/podnot-a-uid/x",
    f"/kubepods/burstable/pod{UID_}/{CID}",  # '_' only in a systemd slice's name
    f"/kubepods.slice/kubepods-burstable-pod{UID_}",  # a slice without .slice
])
def test_paths_of_no_pod_give_none(path):
    assert pods.parse(path) is None


def test_a_container_id_must_be_64_hex_digits():
    assert pods.parse(f"/kubepods/pod{UID}/{CID[:63]}").container_id is None
    assert pods.parse(f"/kubepods/pod{UID}/{CID}.scope").container_id is None  # a scope no runtime names so


def test_metric_labels_name_the_pod_else_its_uid():
    assert pods.metric_labels(None) == ("", "", "")
    assert pods.metric_labels(PodRef(UID, BURSTABLE, CID)) == ("", UID, CID)
    assert pods.metric_labels(PodRef(UID, BURSTABLE, None, None, "shop", "cart")) == ("shop", "cart", "")


# -- the pods log dir ---------------------------------------------------------------


def test_split_name_takes_namespace_name_and_uid():
    assert split_name(f"kube-system_coredns-5d78c9869d-abcde_{UID}") == ("kube-system", "coredns-5d78c9869d-abcde",
                                                                         UID)
    assert split_name("noseparator") is None
    assert split_name("a_b") is None
    assert split_name("_b_c") is None


def _logs(tmp_path, *pods_):
    d = tmp_path / "pods"
    d.mkdir()
    for name in pods_:
        (d / name).mkdir()
    return d


def test_the_pods_dir_names_a_pod_from_its_cgroup(tmp_path):
    d = _logs(tmp_path, f"shop_cart-7d9f_{UID}", f"kube-system_coredns-1_{STATIC_UID}", "not-a-pod")
    names = PodNames(str(d))
    got = names.pod(LAYOUTS["systemd containerd burstable"][0])
    assert got == PodRef(UID, BURSTABLE, CID, "containerd", "shop", "cart-7d9f")
    assert names.pod(f"/kubepods/pod{STATIC_UID}").name == "coredns-1"
    assert names.pod("/system.slice/x.service") is None
    assert names.listings == 1  # one listing served both


def test_an_unknown_uid_reads_the_dir_again_at_most_once_a_second(tmp_path):
    d = _logs(tmp_path)
    now = {"s": 100.0}
    names = PodNames(str(d), clock_s=lambda: now["s"])
    path = f"/kubepods/burstable/pod{UID}/{CID}"
    assert names.pod(path) == PodRef(UID, BURSTABLE, CID)  # no name yet: the cgroup's facts still
    (d / f"shop_cart_{UID}").mkdir()  # the kubelet makes it
    for _ in range(100):
        assert names.pod(path).name is None  # within the second: no listing again
    assert names.listings == 1
    now["s"] += 1.0
    assert names.pod(path).name == "cart"
    assert names.listings == 2
    now["s"] += 5.0
    assert names.pod(path).name == "cart"  # known: no listing
    assert names.listings == 2


def test_a_missing_or_unset_dir_gives_no_names_and_no_error(tmp_path):
    path = f"/kubepods/pod{UID}/{CID}"
    assert PodNames(str(tmp_path / "absent")).pod(path) == PodRef(UID, GUARANTEED, CID)
    off = PodNames("")
    assert off.pod(path) == PodRef(UID, GUARANTEED, CID) and off.listings == 0


def test_a_pod_not_in_a_pods_cgroup_never_reads_the_dir(tmp_path):
    names = PodNames(str(_logs(tmp_path, f"a_b_{UID}")))
    assert names.pod("/system.slice/sshd.service") is None and names.listings == 0


def test_the_names_kept_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("allocwatch.kernel.podnames.MAX_PODS", 3)
    d = _logs(tmp_path, *(f"ns_p{i}_{i:032x}" for i in range(10)))
    names = PodNames(str(d))
    names.lookup("0" * 32)
    assert len(names._names) == 3 and MAX_PODS > 3


# -- in every output ----------------------------------------------------------------


def _pod_block(pod: PodRef | None) -> StallReport:
    s = Stall(Wait(3, 3, "hog", Site.MEMCG_OOM_WAIT, 0, 0xCC0, 0, dstate=True), 12 * NS_PER_S, 1)
    return StallReport(7, 1_700_000_000.25, [s], 1, {3: TaskDetail("/kubepods/x", "D", ["x"], pod=pod)})


def test_json_text_and_journal_carry_the_pod():
    pod = PodRef(UID, BURSTABLE, CID, "containerd", "shop", "cart")
    rec = _pod_block(pod)
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["pod"] == {"namespace": "shop", "name": "cart", "uid": UID, "qos": "burstable", "container_id": CID,
                           "runtime": "containerd"}
    lines = report.render_text(rec).splitlines()
    assert f"    pod: namespace=shop name=cart uid={UID} qos=burstable container={CID} runtime=containerd" in lines
    entries = list(journal.entries(json.loads(report.render_json(rec))))
    fields = entries[1]
    assert fields["ALLOCWATCH_POD_NAMESPACE"] == "shop" and fields["ALLOCWATCH_POD_NAME"] == "cart"
    assert fields["ALLOCWATCH_POD_UID"] == UID and fields["ALLOCWATCH_POD_QOS"] == "burstable"
    assert fields["ALLOCWATCH_POD_CONTAINER_ID"] == CID and fields["ALLOCWATCH_POD_RUNTIME"] == "containerd"
    assert "pod: namespace=shop" in fields["MESSAGE"]


def test_a_pod_without_names_shows_what_its_cgroup_says():
    rec = _pod_block(PodRef(UID, GUARANTEED))
    (task,) = json.loads(report.render_json(rec))["tasks"]
    assert task["pod"]["namespace"] is None and task["pod"]["container_id"] is None
    assert f"    pod: uid={UID} qos=guaranteed" in report.render_text(rec).splitlines()
    fields = list(journal.entries(json.loads(report.render_json(rec))))[1]
    assert "ALLOCWATCH_POD_NAMESPACE" not in fields and fields["ALLOCWATCH_POD_UID"] == UID


def test_no_pod_no_line_and_no_fields():
    rec = _pod_block(None)
    assert json.loads(report.render_json(rec))["tasks"][0]["pod"] is None
    assert "pod:" not in report.render_text(rec)
    assert not [k for k in list(journal.entries(json.loads(report.render_json(rec))))[1] if "POD" in k]


def test_a_hostile_pod_name_is_escaped_and_quoted():
    rec = _pod_block(PodRef(UID, BURSTABLE, None, None, "ns", "evil\nname x"))
    text = report.render_text(rec)
    assert 'name="evil\\x0aname x"' in text and "evil\nname" not in text


def test_the_scan_loop_reports_a_pods_task_with_its_pod(tmp_path):
    logs = tmp_path / "logs"
    (logs / f"shop_cart_{UID}").mkdir(parents=True)
    d, src, out, clock = snapshot_daemon(tmp_path / "p", threshold_s=2.0, pod_logs_dir=str(logs))
    path = LAYOUTS["systemd cri-o burstable"][0]
    (tmp_path / "p" / "7" / "task" / "7" / "cgroup").write_text(f"4:memory:{path}\n0::/\n")
    hog_stalls_then_wakes(d, src, clock)
    (rec,) = [json.loads(ln) for w in out.writes for ln in w.splitlines() if '"stall_report"' in ln]
    assert rec["tasks"][0]["pod"] == {"namespace": "shop", "name": "cart", "uid": UID, "qos": "burstable",
                                      "container_id": CID, "runtime": "cri-o"}
    d.reload(Config(format="json", threshold_s=2.0, pod_logs_dir=""))  # a reload can turn the names off
    assert d.pods.pod(path).name is None


def test_another_directory_forgets_the_names_of_the_last(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / f"ns_old_{UID}").mkdir(parents=True)
    (b / f"ns_new_{UID}").mkdir(parents=True)
    names = PodNames(str(a))
    assert names.lookup(UID) == ("ns", "old")
    names.set_directory(str(b))
    assert names.lookup(UID) == ("ns", "new")


def test_tops_detail_names_the_pod():
    pod = {"namespace": "shop", "name": "cart", "uid": UID, "qos": "burstable", "container_id": CID,
           "runtime": "containerd"}
    (row,) = task_rows(top_doc([top_task(7, 12.0, level=1, detail=True, pod=pod)]))
    lines = topview.detail_lines(row, 80)
    assert all(len(line) <= 80 for line, _ in lines)
    text = "\n".join(line for line, _ in lines).replace("\n    ", " ")  # wrapped, not cut
    assert f"pod: namespace=shop name=cart uid={UID} qos=burstable container={CID} runtime=containerd" in text
    (plain,) = task_rows(top_doc([top_task(8, 12.0, level=1, detail=True, pod=None)]))
    assert "pod:" not in "\n".join(line for line, _ in topview.detail_lines(plain, 80))
