# SPDX-License-Identifier: Apache-2.0
"""deploy/: the Prometheus config, rules and their unit tests (checked with
promtool), the Grafana dashboard and the Kubernetes DaemonSet. Nothing here
talks to a cluster, a Grafana or a running daemon; the kernel tests evaluate
the same expressions (tests/deploy_exprs.py) against a live Prometheus."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.deploy_exprs import (
    DAEMONSET,
    DASHBOARD,
    PROMETHEUS_DIR,
    ROOT,
    RULES,
    RULES_TEST,
    SCRAPE,
    dashboard,
    dashboard_exprs,
    metric_names,
    panels,
    rule_exprs,
    rules,
    selector_names,
)

# Every name the daemon serves, as a query writes it (counters with _total,
# histograms as their three series), from the metric list it exports.
GAUGES = {
    "allocwatch_build_info",
    "allocwatch_site_attached",
    "allocwatch_tasks_waiting",
    "allocwatch_tasks_stalled",
    "allocwatch_longest_wait_seconds",
    "allocwatch_last_scan_timestamp_seconds",
}
COUNTERS = {
    "allocwatch_memory_stalled_seconds_total",
    "allocwatch_cgroup_memory_stalled_seconds_total",
    "allocwatch_stall_reports_total",
    "allocwatch_oom_kills_total",
    "allocwatch_events_lost_total",
    "allocwatch_map_full_total",
    "allocwatch_dstate_unrelated_dropped_total",
    "allocwatch_scans_total",
    "allocwatch_report_blocks_dropped_total",
}
HISTOGRAMS = {"allocwatch_wait_seconds", "allocwatch_scan_duration_seconds"}
EXPORTED = GAUGES | COUNTERS | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# `up` is Prometheus's own, per target.
KNOWN = EXPORTED | {"up"}

ALERTS = {
    "AllocwatchNodeMemoryStalled",
    "AllocwatchStallsSpreading",
    "AllocwatchBlind",
    "AllocwatchCgroupStalled",
    "AllocwatchTaskStalled",
    "AllocwatchStallsRepeating",
    "AllocwatchOOMKills",
    "AllocwatchEventsLost",
    "AllocwatchSiteDetached",
    "AllocwatchExporterDown",
    "AllocwatchScanLoopStalled",
    "AllocwatchReportsDropped",
}
# What pages: stalls that last and spread, the watchdog down or blind. The rest warn.
PAGING = {
    "AllocwatchNodeMemoryStalled",
    "AllocwatchStallsSpreading",
    "AllocwatchExporterDown",
    "AllocwatchScanLoopStalled",
    "AllocwatchBlind",
}
SEVERITIES = {"critical", "warning"}
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL = (
    "{{ with $externalLabels.allocwatch_runbooks }}{{ . }}{{ else }}docs/runbooks{{ end }}/%s.md"
)
METRICS_PORT = 19464



def run(*argv: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, timeout=120)


def promtool_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"promtool exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


# -- prometheus -----------------------------------------------------------------


def test_scrape_config_is_a_valid_prometheus_yml(promtool):
    proc = run(promtool, "check", "config", str(SCRAPE))
    promtool_ok(proc)
    assert "1 rule files found" in proc.stdout  # it did follow rule_files


def test_scrape_config_content():
    text = SCRAPE.read_text()
    doc = yaml.safe_load(text)
    assert doc["rule_files"] == [RULES.name]  # relative, so the directory can move
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "allocwatch"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"] == [{"targets": [f"localhost:{METRICS_PORT}"]}]
    assert re.search(r"#\s*scrape_interval: 1s", text), "the comment on scraping every second is gone"


def test_rules_check(promtool):
    promtool_ok(run(promtool, "check", "rules", str(RULES)))


def test_rules_unit_tests_pass(promtool):
    # cwd: the test file names the rules file relative to itself; promtool
    # resolves that against the test file's directory, cwd only makes sure.
    promtool_ok(run(promtool, "test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR))


def test_alerts_are_complete():
    alerts = [r for r in rules() if "alert" in r]
    assert {r["alert"] for r in alerts} == ALERTS
    assert len(alerts) == len(ALERTS), "an alert name is used twice"
    for r in alerts:
        name = r["alert"]
        assert "for" in r, f"{name} has no for:"
        assert r.get("labels", {}).get("severity") in SEVERITIES, name
        assert r.get("annotations", {}).keys() >= {"summary", "description"}, name


def test_only_what_a_human_must_act_on_pages():
    severity = {r["alert"]: r["labels"]["severity"] for r in rules() if "alert" in r}
    assert {name for name, s in severity.items() if s == "critical"} == PAGING
    assert set(severity.values()) == SEVERITIES  # critical pages, everything else warns


def test_every_alert_has_a_runbook_in_docs():
    for r in (r for r in rules() if "alert" in r):
        name = r["alert"]
        assert r["annotations"].get("runbook_url") == RUNBOOK_URL % name, name
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name}: no {page.relative_to(ROOT)}"
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), name
        assert f"Severity: {r['labels']['severity']}." in text, name
        for heading in ("## What it means", "## What to check", "## How to fix"):
            assert heading in text, f"{page.name} lacks {heading}"
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == ALERTS, "a runbook for an alert that does not exist"
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"[{name}]({name}.md)" in index for name in ALERTS)


def test_per_cgroup_alerts_carry_namespace_and_pod_through():
    # Aggregated by (instance, cgroup, namespace, pod): the labels pass when
    # the series have them and cost nothing when they do not.
    for name, expr in rule_exprs():
        if "allocwatch_cgroup_memory_stalled_seconds_total" in expr or "allocwatch_oom_kills_total" in expr:
            groupings = re.findall(r"by \(([^)]*)\)", expr)
            assert groupings and all(
                {"instance", "cgroup", "namespace", "pod"} <= {g.strip() for g in grouping.split(",")}
                for grouping in groupings
                if "cgroup" in grouping
            ), name
            assert any("cgroup" in g for g in groupings), name


def test_the_wait_buckets_the_rules_name_exist():
    from allocwatch.core.snapshot import EMPTY_HISTOGRAM

    bounds = {f"{le:.12g}" for le, _ in EMPTY_HISTOGRAM.buckets}  # as the exporter writes le
    for name, expr in rule_exprs():
        for le in re.findall(r'le="([^"]+)"', expr):
            assert le in bounds | {"+Inf"}, f"{name}: le={le} is not a bucket the daemon exports"


def test_recording_rules_follow_the_naming_convention():
    records = [r["record"] for r in rules() if "record" in r]
    assert "allocwatch:memory_stalled_seconds:rate5m" in records
    assert len(records) >= 2
    for name in records:  # level:metric:operations, the Prometheus convention
        assert re.fullmatch(r"allocwatch:[a-z0-9_]+:[a-z0-9_]+", name), name


def test_every_alert_is_tested_firing_and_quiet_and_every_record_checked():
    doc = yaml.safe_load(RULES_TEST.read_text())
    assert doc["rule_files"] == [RULES.name]
    firing, quiet, exprs = set(), set(), []
    for case in doc["tests"]:
        for t in case.get("alert_rule_test", []):
            (firing if t.get("exp_alerts") else quiet).add(t["alertname"])
        exprs += [t["expr"] for t in case.get("promql_expr_test", [])]
    assert ALERTS - firing == set(), "alerts never tested firing"
    assert ALERTS - quiet == set(), "alerts never tested not firing"
    tested = set().union(*(selector_names(e) for e in exprs))
    records = {r["record"] for r in rules() if "record" in r}
    assert records - tested == set(), "recording rules without a promql_expr_test"


def test_rule_exprs_use_only_exported_metrics():
    records = {name for name, _ in rule_exprs() if ":" in name}
    for name, expr in rule_exprs():
        used = selector_names(expr)
        assert used, f"{name}: no metric found in {expr!r}"
        assert used - KNOWN - records == set(), f"{name} uses unknown metrics"


# -- the helper the kernel tests use --------------------------------------------


def test_metric_names_as_written():
    assert metric_names(
        'histogram_quantile(0.99, sum by (instance, le) (rate(allocwatch_wait_seconds_bucket{site="x"}[5m])))'
    ) == {"allocwatch_wait_seconds_bucket"}
    assert metric_names("max by (site) (max_over_time(allocwatch_site_attached[1h])) == 1") == {
        "allocwatch_site_attached"
    }
    # Label values and recording rules are not metric names; `up` is not allocwatch's.
    expr = 'allocwatch:x:rate5m{site="allocwatch_fake"} or up{job="allocwatch"} offset 5m unless vector(1)'
    assert metric_names(expr) == set()
    assert selector_names(expr) == {"allocwatch:x:rate5m", "up"}
    assert selector_names("time() - allocwatch_scans_total > 1e3 and on (job) group_left (x) up") == {
        "allocwatch_scans_total",
        "up",
    }


def test_exprs_lists_are_whole():
    assert {name for name, _ in rule_exprs()} == {r.get("alert") or r["record"] for r in rules()}
    targets = [t for p in panels() for t in p.get("targets", [])]
    assert len(dashboard_exprs()) == len(targets)  # every target has an expr


# -- grafana --------------------------------------------------------------------


def test_dashboard_structure():
    dash = dashboard()  # parses
    assert 36 <= dash["schemaVersion"] <= 39
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    inst = variables["instance"]
    assert inst["type"] == "query"
    assert inst["query"]["query"] == inst["definition"] == "label_values(allocwatch_build_info, instance)"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels(dash):
        assert {"gridPos", "title", "type"} <= p.keys(), p.get("id")


def test_every_panel_queries_through_the_datasource_variable():
    want = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for p in panels():
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        assert p["datasource"] == want, p["title"]
        for t in p["targets"]:
            assert t.get("datasource") == want, f"{p['title']!r} target {t.get('refId')}"
            assert t.get("expr", "").strip(), f"{p['title']!r} target {t.get('refId')} has no expr"


def test_dashboard_panels_the_brief_asks_for():
    by_type: dict[str, list[dict]] = {}
    for p in panels():
        by_type.setdefault(p["type"], []).append(p)
    (heat,) = by_type["heatmap"]
    (target,) = heat["targets"]
    assert target["format"] == "heatmap" and "allocwatch_wait_seconds_bucket" in target["expr"]
    assert "rate(" in target["expr"] and heat["repeat"] == "site"
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs()))
    for name in (
        "allocwatch_tasks_stalled",
        "allocwatch_tasks_waiting",
        "allocwatch_memory_stalled_seconds_total",
        "allocwatch_cgroup_memory_stalled_seconds_total",
        "allocwatch_oom_kills_total",
        "allocwatch_events_lost_total",
        "allocwatch_map_full_total",
        "allocwatch_report_blocks_dropped_total",
        "allocwatch_scan_duration_seconds_bucket",
        "allocwatch_scans_total",
        "allocwatch_site_attached",
    ):
        assert name in used, f"no panel shows {name}"
    assert any("histogram_quantile" in e and "scan_duration" in e for _, e in dashboard_exprs())


def test_dashboard_exprs_use_only_exported_metrics():
    for title, expr in dashboard_exprs():
        assert "$" not in expr, f"{title!r}: a Grafana variable GRAFANA_VALUES lacks: {expr}"
        used = selector_names(expr)
        assert used, f"{title!r}: no metric in {expr!r}"
        assert used - KNOWN == set(), f"{title!r} uses unknown metrics"


def test_dashboard_exprs_are_valid_promql(promtool, tmp_path):
    # promtool has no "check expression"; a rules file with each expression
    # as a recording rule gets them parsed by Prometheus's own parser.
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:panel:expr{i}", "expr": e} for i, (_, e) in enumerate(dashboard_exprs())],
    }
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    promtool_ok(run(promtool, "check", "rules", str(path)))


# -- kubernetes -----------------------------------------------------------------


def k8s_docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d is not None]  # a comment-only doc is None
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds))
    return {d["kind"]: d for d in docs}


def pod_spec() -> dict:
    return k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]


def test_daemonset_documents():
    docs = k8s_docs()
    assert set(docs) == {"Namespace", "ServiceAccount", "DaemonSet"}
    assert docs["Namespace"]["metadata"]["name"] == "allocwatch"
    for kind in ("ServiceAccount", "DaemonSet"):
        assert docs[kind]["metadata"]["namespace"] == "allocwatch", kind
    ds = docs["DaemonSet"]
    assert ds["apiVersion"] == "apps/v1"
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pod_spec()["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert "validated offline only" in DAEMONSET.read_text().lower()


def test_daemonset_container():
    spec = pod_spec()
    assert spec["hostPID"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"]  # every taint
    (c,) = spec["containers"]
    assert c["image"] == "allocwatch:latest"
    assert c["command"] == ["allocwatch", "run", "--metrics-addr", f"0.0.0.0:{METRICS_PORT}", "--format", "json"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The four the daemon's start-up check asks for, plus SYS_PTRACE for
    # /proc/PID/stack's ptrace access check and SYSLOG for /proc/kallsyms'
    # addresses (see the manifest's comments).
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_ADMIN", "DAC_READ_SEARCH", "SYS_PTRACE", "SYSLOG"}
    assert c["resources"]["requests"]["memory"] == "160Mi"
    assert c["resources"]["limits"]["memory"] == "256Mi"
    (port,) = c["ports"]
    assert port["containerPort"] == METRICS_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/metrics", "port": port["name"]}, probe
    annotations = k8s_docs()["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_daemonset_volumes_all_mounted():
    spec = pod_spec()
    (c,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert len(volumes) == len(spec["volumes"]) and len(mounts) == len(c["volumeMounts"])
    assert volumes.keys() == mounts.keys(), "a volume not mounted, or a mount without a volume"
    host = {name: v["hostPath"]["path"] for name, v in volumes.items() if "hostPath" in v}
    by_path = {path: mounts[name] for name, path in host.items()}
    assert by_path.keys() == {"/sys/kernel/tracing", "/sys/fs/cgroup", "/lib/modules", "/usr/src", "/var/log/pods"}
    for path, mount in by_path.items():
        assert mount["mountPath"] == path, path  # the daemon and bcc look at the standard places
    # kprobes may be created by writing tracefs's kprobe_events.
    assert by_path["/sys/kernel/tracing"].get("readOnly") is not True
    for path in ("/sys/fs/cgroup", "/lib/modules", "/usr/src", "/var/log/pods"):
        assert by_path[path]["readOnly"] is True, path


def test_commented_podmonitor_is_valid_when_uncommented():
    text = DAEMONSET.read_text()
    last = text.rsplit("\n---\n", 1)[1]
    body = [line[2:] for line in last.splitlines() if line.startswith("# ") or line == "#"]
    start = next(i for i, line in enumerate(body) if line.startswith("apiVersion:"))
    pm = yaml.safe_load("\n".join(body[start:]))
    assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == "allocwatch"
    labels = k8s_docs()["DaemonSet"]["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[pm["spec"]["jobLabel"]] == "allocwatch"  # job="allocwatch", as the rules match
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (c,) = pod_spec()["containers"]
    assert endpoint["port"] == c["ports"][0]["name"] and endpoint["path"] == "/metrics"


def test_helper_paths_exist():
    # The kernel tests find the files through these names.
    for path in (SCRAPE, RULES, RULES_TEST, DASHBOARD, DAEMONSET):
        assert path.is_file(), path


# -- kubernetes schemas -----------------------------------------------------------

# Kubernetes releases the manifests must be valid for: the oldest supported
# here, and the newest release kubernetes-validate knows (added at run time).
K8S_OLDEST = "1.30.0"


@pytest.fixture(scope="module")
def k8s_validate():
    try:
        import kubernetes_validate
    except ImportError:  # a failure, not a skip: the schema check is the point
        pytest.fail("kubernetes-validate is not installed: scripts/setup --dev installs it into .venv")
    return kubernetes_validate


def _k8s_versions(k8s_validate) -> list[str]:
    newest = k8s_validate.latest_version()  # "1.37.0"
    assert tuple(int(n) for n in newest.split(".")[:2]) >= (1, 30)
    return [K8S_OLDEST, newest]


def test_daemonset_is_valid_against_kubernetes_schemas_offline(k8s_validate, monkeypatch):
    # The schemas ship inside the package: no network is used (any connect fails here).
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d is not None]
    for version in _k8s_versions(k8s_validate):
        for doc in docs:
            k8s_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_schema_check_refuses_what_it_should(k8s_validate):
    # The same check on a broken copy fails: an unknown field (strict), a
    # wrong type, a missing required field.
    ds = k8s_docs()["DaemonSet"]
    broken = []
    for mutate in (
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=1),
        lambda d: d["spec"]["template"]["spec"].update(hostPid=True),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ):
        doc = yaml.safe_load(yaml.safe_dump(ds))
        mutate(doc)
        broken.append(doc)
    for version in _k8s_versions(k8s_validate):
        for doc in broken:
            with pytest.raises(k8s_validate.ValidationError):
                k8s_validate.validate(doc, version, strict=True)
