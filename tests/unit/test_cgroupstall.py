# SPDX-License-Identifier: Apache-2.0
"""Stall seconds per memory cgroup: which cgroups get a label, the cap and the
`other` bucket, the accumulator's arithmetic, the collector and the config keys."""

from __future__ import annotations

import dataclasses

import pytest

from allocwatch import config
from allocwatch.core import pods
from allocwatch.core.cgroupstall import OTHER, CgroupLabeler, CgroupStallSeconds
from allocwatch.core.model import InflightWait
from allocwatch.core.sites import Site
from allocwatch.core.tracker import Ended, Wait
from allocwatch.errors import ConfigError
from allocwatch.outputs.metrics import SnapshotCollector, registry_for
from tests.unit.fakes import fake_proc, hog_stalls_then_wakes, snapshot_daemon

S = 1_000_000_000


def test_listed_paths_label_themselves_and_what_is_under_them():
    lab = CgroupLabeler(["/kubepods/burstable/", "/system.slice"])
    assert lab.enabled
    assert lab.label("/kubepods/burstable") == "/kubepods/burstable"
    assert lab.label("/kubepods/burstable/pod1/c2") == "/kubepods/burstable"
    assert lab.label("/system.slice/cron.service") == "/system.slice"
    assert lab.label("/system.slicer") == OTHER  # a prefix of the name is not an ancestor
    assert lab.label("/user.slice") == OTHER
    assert lab.label(None) == OTHER  # the task's cgroup could not be read
    assert CgroupLabeler(["/"]).label("/any/thing") == "/"


def test_a_pattern_labels_by_its_first_group_or_the_whole_path():
    services = CgroupLabeler(pattern=r"(/system\.slice/[^/]+)(?:/.*)?")
    assert services.label("/system.slice/db.service/worker") == "/system.slice/db.service"
    assert services.label("/user.slice/x") == OTHER  # must match the whole path
    whole = CgroupLabeler(pattern=r"/jobs/[a-z]+")
    assert whole.label("/jobs/batch") == "/jobs/batch"
    assert whole.label("/jobs/batch/sub") == OTHER
    optional = CgroupLabeler(pattern=r"/a(/b)?")
    assert optional.label("/a") == OTHER  # the group did not take part: no label
    assert not CgroupLabeler().enabled


def test_the_cap_bounds_the_labels_for_the_whole_run_the_rest_is_other():
    lab = CgroupLabeler(pattern=r"/jobs/([0-9]+)", max_labels=3)
    got = [lab.label(f"/jobs/{n}") for n in range(10)]
    assert got == ["0", "1", "2"] + [OTHER] * 7
    assert lab.label("/jobs/1") == "1"  # a label once given stays
    assert lab.label("/jobs/0") == "0"
    assert len({lab.label(f"/jobs/{n}") for n in range(1000)}) == 4  # three and other


def test_labels_that_are_not_printable_text_or_say_other_count_as_other():
    lab = CgroupLabeler(pattern=r"/x/([^/]+)")
    assert lab.label("/x/a\udcffb") == OTHER  # a byte that is not UTF-8, kept as a surrogate
    assert lab.label("/x/a\nb") == OTHER
    assert lab.label("/x/other") == OTHER


def _wait(tid: int, start_ns: int, site: Site = Site.MEMCG_OOM_WAIT) -> Wait:
    return Wait(tid, tid, "t", site, start_ns)


def test_seconds_accumulate_per_cgroup_and_site_and_only_grow():
    cgroups = {1: "/a/x", 2: "/b", 3: "/a"}
    reads: list[int] = []

    def cgroup_of(pid: int, tid: int) -> str | None:
        reads.append(tid)
        return cgroups.get(tid)

    acc = CgroupStallSeconds(CgroupLabeler(["/a"]), cgroup_of)
    w1, w2 = _wait(1, 0), _wait(2, 0)
    assert acc.update(2 * S, [w1, w2], []) == {("/a", "memcg_oom_wait"): 2.0, (OTHER, "memcg_oom_wait"): 2.0}
    got = acc.update(5 * S, [w1, w2], [])
    assert got[("/a", "memcg_oom_wait")] == 5.0 and got[(OTHER, "memcg_oom_wait")] == 5.0
    assert sorted(reads) == [1, 2]  # one cgroup read per wait, not per scan
    # w1 ends at 6 s (its end seen in the same scan that still saw it in flight)
    got = acc.update(7 * S, [w1, w2], [Ended(w1, 6 * S)])
    assert got[("/a", "memcg_oom_wait")] == 6.0 and got[(OTHER, "memcg_oom_wait")] == 7.0
    # w2 leaves the map unseen; its end comes a scan late: only the rest is added
    acc.update(8 * S, [], [])
    got = acc.update(9 * S, [], [Ended(w2, 7.5 * S)])
    assert got[(OTHER, "memcg_oom_wait")] == 7.5
    # a wait that started and ended between two scans counts whole, per site
    w3 = _wait(3, 10 * S, Site.MEMCG_RECLAIM)
    got = acc.update(20 * S, [], [Ended(w3, 3 * S)])
    assert got[("/a", "memcg_reclaim")] == 3.0 and got[("/a", "memcg_oom_wait")] == 6.0


def test_an_end_shorter_than_what_was_counted_never_steps_back():
    acc = CgroupStallSeconds(CgroupLabeler(["/"]), lambda pid, tid: "/")
    w = _wait(1, 0)
    assert acc.update(4 * S, [w], [])[("/", "memcg_oom_wait")] == 4.0
    assert acc.update(5 * S, [], [Ended(w, 3 * S)])[("/", "memcg_oom_wait")] == 4.0


def test_waits_gone_unseen_are_forgotten():
    acc = CgroupStallSeconds(CgroupLabeler(["/"]), lambda pid, tid: "/")
    for i in range(100):
        acc.update((i + 1) * S, [_wait(i, i * S)], [])
    assert len(acc._seen) <= 2


def test_the_collector_serves_per_cgroup_seconds_only_when_configured(tmp_path):
    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0, metrics_cgroups=("/box",))
    fake_proc(tmp_path, 8, ["mem_cgroup_oom_synchronize"], cgroup="4:memory:/elsewhere\n")
    hog_stalls_then_wakes(d, src, clock, InflightWait(8, 8, "dd", int(Site.MEMCG_RECLAIM), S, 0xCC0, 0))
    get = registry_for(SnapshotCollector(lambda: d.latest)).get_sample_value
    name = "allocwatch_cgroup_memory_stalled_seconds_total"
    assert get(name, {"cgroup": "/box", "site": "memcg_oom_wait"}) == 4.0
    assert get(name, {"cgroup": OTHER, "site": "memcg_reclaim"}) == 2.0
    plain, _, _, pclock = snapshot_daemon(tmp_path / "plain", threshold_s=2.0)
    plain.scan_once()
    assert registry_for(SnapshotCollector(lambda: plain.latest)).get_sample_value(
        name, {"cgroup": OTHER, "site": "memcg_reclaim"}) is None


@pytest.mark.parametrize(
    "values",
    [
        {"metrics_cgroups": ["/kubepods"], "metrics_cgroup_max": 5},
        {"metrics_cgroup_pattern": r"(/system\.slice/[^/]+)(/.*)?"},
        {"metrics_cgroup_max": 1000},
    ],
)
def test_config_keys_accepted(values):
    cfg = config.from_mapping(values)
    for k, v in values.items():
        assert getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v)


@pytest.mark.parametrize(
    "values,needle",
    [
        ({"metrics_cgroups": ["kubepods"]}, "starting with '/'"),
        ({"metrics_cgroup_pattern": "(unclosed"}, "not a valid regular expression"),
        ({"metrics_cgroup_pattern": "x" * 1001}, "at most 1000"),
        ({"metrics_cgroup_pattern": 5}, "regular expression"),
        ({"metrics_cgroup_max": 0}, "from 1 to 1000"),
        ({"metrics_cgroup_max": 1001}, "from 1 to 1000"),
    ],
)
def test_config_keys_refused(values, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        config.from_mapping(values)


# -- pod labels (metrics_pod_labels) -------------------------------------------------

UID = "8f1d2a6c-3b4e-4f5a-9c7d-1e2f3a4b5c6d"


def _pod_path(n: int) -> str:
    return f"/kubepods/burstable/pod{UID}/{n:064x}"


def test_pod_labels_share_the_cap_with_the_cgroup_and_then_go_to_other():
    names = {UID: ("shop", "cart")}

    def pod_labels(cgroup: str) -> tuple[str, str, str]:
        ref = pods.parse(cgroup)
        if ref is not None and ref.uid in names:
            ref = dataclasses.replace(ref, namespace=names[ref.uid][0], name=names[ref.uid][1])
        return pods.metric_labels(ref)

    lab = CgroupLabeler(["/kubepods", "/system.slice"], max_labels=3, pod_labels=pod_labels)
    assert lab.names == ("cgroup", "namespace", "pod", "container")
    assert lab.labels(_pod_path(1)) == ("/kubepods", "shop", "cart", f"{1:064x}")
    assert lab.labels(_pod_path(1)) == ("/kubepods", "shop", "cart", f"{1:064x}")  # the same set: no new one
    assert lab.labels("/system.slice/a.service") == ("/system.slice", "", "", "")  # no pod: empty
    assert lab.labels(_pod_path(2)) == ("/kubepods", "shop", "cart", f"{2:064x}")  # the third set
    assert lab.labels(_pod_path(3)) == (OTHER, "", "", "")  # past the cap: one bucket
    assert lab.labels("/elsewhere") == (OTHER, "", "", "")
    assert lab.labels(None) == (OTHER, "", "", "")
    assert lab.labels(_pod_path(1)) == ("/kubepods", "shop", "cart", f"{1:064x}")  # given out: kept
    assert lab.label(_pod_path(2)) == "/kubepods"


def test_a_pod_label_that_is_not_printable_is_left_empty():
    lab = CgroupLabeler(["/"], pod_labels=lambda cg: ("ns\x1b[2J", "p\n", "c"))
    assert lab.labels("/x") == ("/", "", "", "c")


def test_without_pod_labels_the_family_keeps_cgroup_alone():
    lab = CgroupLabeler(["/kubepods"])
    assert lab.names == ("cgroup",) and lab.labels(_pod_path(1)) == ("/kubepods",)


def test_the_collector_serves_namespace_pod_and_container_when_asked(tmp_path):
    logs = tmp_path / "logs"
    (logs / f"shop_cart_{UID}").mkdir(parents=True)
    d, src, out, clock = snapshot_daemon(tmp_path / "p", threshold_s=2.0, metrics_cgroups=("/kubepods",),
                                         metrics_pod_labels=True, pod_logs_dir=str(logs))
    (tmp_path / "p" / "7" / "task" / "7" / "cgroup").write_text(f"4:memory:{_pod_path(9)}\n0::/\n")
    fake_proc(tmp_path / "p", 8, ["mem_cgroup_oom_synchronize"], cgroup="4:memory:/elsewhere\n")
    hog_stalls_then_wakes(d, src, clock, InflightWait(8, 8, "dd", int(Site.MEMCG_RECLAIM), S, 0xCC0, 0))
    get = registry_for(SnapshotCollector(lambda: d.latest)).get_sample_value
    name = "allocwatch_cgroup_memory_stalled_seconds_total"
    pod = {"cgroup": "/kubepods", "namespace": "shop", "pod": "cart", "container": f"{9:064x}"}
    assert get(name, {**pod, "site": "memcg_oom_wait"}) == 4.0
    assert get(name, {"cgroup": OTHER, "namespace": "", "pod": "", "container": "", "site": "memcg_reclaim"}) == 2.0
    assert get(name, {"cgroup": "/kubepods", "site": "memcg_oom_wait"}) is None  # no series without the pod labels


@pytest.mark.parametrize("values", [{"metrics_pod_labels": True}, {"pod_logs_dir": ""}, {"pod_logs_dir": "/host/pods"}])
def test_pod_keys_accepted(values):
    cfg = config.from_mapping(values)
    for k, v in values.items():
        assert getattr(cfg, k) == v


@pytest.mark.parametrize("values,needle", [
    ({"metrics_pod_labels": "yes"}, "metrics_pod_labels"),
    ({"pod_logs_dir": "var/log/pods"}, "absolute directory path"),
    ({"pod_logs_dir": "/a\nb"}, "absolute directory path"),
    ({"pod_logs_dir": 5}, "absolute directory path"),
])
def test_pod_keys_refused(values, needle):
    with pytest.raises(ConfigError, match=needle):
        config.from_mapping(values)


def test_oom_kills_are_counted_by_the_victims_cgroup_when_cgroups_are_labelled(tmp_path):
    """The alert rules rate OOM kills per cgroup (deploy/prometheus): with cgroups to label, the
    kills carry the victim's label, under the same cap and "other"; without, one series."""
    from allocwatch.core.model import OomKill

    d, src, out, clock = snapshot_daemon(tmp_path, threshold_s=2.0, metrics_cgroups=("/box",))
    fake_proc(tmp_path, 42, ["do_exit"], cgroup="4:memory:/box/job\n")
    fake_proc(tmp_path, 43, ["do_exit"], cgroup="4:memory:/elsewhere\n")
    get = registry_for(SnapshotCollector(lambda: d.latest)).get_sample_value
    d.scan_once()
    assert get("allocwatch_oom_kills_total", {"cgroup": OTHER}) == 0  # there from the start
    src.events = [OomKill(0, 42, "victim", 50, 50, "hog"), OomKill(0, 43, "far", 50, 50, "hog")]
    clock["ns"] += 10**9
    d.scan_once()
    assert get("allocwatch_oom_kills_total", {"cgroup": "/box"}) == 1
    assert get("allocwatch_oom_kills_total", {"cgroup": OTHER}) == 1
    plain, psrc, _, pclock = snapshot_daemon(tmp_path / "plain", threshold_s=2.0)
    psrc.events = [OomKill(0, 42, "victim", 50, 50, "hog")]
    plain.scan_once()
    pget = registry_for(SnapshotCollector(lambda: plain.latest)).get_sample_value
    # the kernel's count (the fake source's stats say 0): one series with no label
    assert pget("allocwatch_oom_kills_total", {}) == 0 and pget("allocwatch_oom_kills_total", {"cgroup": OTHER}) is None
