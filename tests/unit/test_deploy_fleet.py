# SPDX-License-Identifier: Apache-2.0
"""Where the fleet meets allocwatch (docs/fleet.md): the federation and
remote-write configurations (promtool, and what their selectors keep), and the
node-problem-detector monitor, whose rules are run here the way
node-problem-detector runs them, over the journal entries allocwatch writes
and over the lines the manual shows."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from allocwatch.outputs import journal
from tests.deploy_exprs import PROMETHEUS_DIR, ROOT, rules

FEDERATE = PROMETHEUS_DIR / "federate.yml"
REMOTE_WRITE = PROMETHEUS_DIR / "remote-write.yml"
NPD_MONITOR = ROOT / "deploy" / "node-problem-detector" / "allocwatch-monitor.json"
DOCS = ROOT / "docs"



def promtool_ok(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# -- Prometheus across clusters ---------------------------------------------------


def test_fleet_configs_are_valid_prometheus_configs(promtool):
    promtool_ok(promtool, "check", "config", str(FEDERATE))
    assert "1 rule files found" in promtool_ok(promtool, "check", "config", str(REMOTE_WRITE))


def _recorded() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


# A sample of what a node's Prometheus holds: (name, job) and whether it goes on.
SENT = [(name, "allocwatch", True) for name in sorted(_recorded())] + [
    ("allocwatch_build_info", "allocwatch", True),
    ("up", "allocwatch", True),
    ("ALERTS", "", True),
    ("up", "node", False),
    ("allocwatch_wait_seconds_bucket", "allocwatch", False),
    ("allocwatch_cgroup_memory_stalled_seconds_total", "allocwatch", False),
    ("allocwatch_tasks_stalled", "allocwatch", False),
    ("node_memory_MemAvailable_bytes", "node", False),
]


def test_fleet_md_lists_every_recorded_series_and_file():
    text = (DOCS / "fleet.md").read_text()
    for name in _recorded():
        assert f"`{name}`" in text, name
    for path in (FEDERATE, REMOTE_WRITE, NPD_MONITOR):
        assert str(path.relative_to(ROOT)) in text, path


def test_remote_write_sends_the_per_node_series_only():
    doc = yaml.safe_load(REMOTE_WRITE.read_text())
    assert doc["rule_files"] == ["allocwatch-rules.yml"]
    assert doc["global"]["external_labels"]["allocwatch_runbooks"]  # the alerts' runbook base
    (rw,) = doc["remote_write"]
    keep, drop = rw["write_relabel_configs"]
    assert keep["action"] == "keep" and keep["source_labels"] == ["__name__", "job"]
    assert drop == {"regex": "allocwatch_runbooks", "action": "labeldrop"}
    # Prometheus joins the source labels with ";" and anchors the regex at both ends.
    regex = re.compile(keep["regex"])
    for name, job, sent in SENT:
        assert bool(regex.fullmatch(f"{name};{job}")) is sent, (name, job)


def test_federation_takes_the_per_node_series_only(promtool, tmp_path):
    doc = yaml.safe_load(FEDERATE.read_text())
    (job,) = doc["scrape_configs"]
    assert job["honor_labels"] is True and job["metrics_path"] == "/federate"
    assert {"regex": "allocwatch_runbooks", "action": "labeldrop"} in job["metric_relabel_configs"]
    selectors = job["params"]["match[]"]
    # Each is PromQL Prometheus accepts (promtool parses rules' expressions).
    path = tmp_path / "match.yml"
    path.write_text(yaml.safe_dump(
        {"groups": [{"name": "m", "rules": [{"record": f"m:match:s{i}", "expr": s} for i, s in enumerate(selectors)]}]}
    ))
    promtool_ok(promtool, "check", "rules", str(path))
    # What they select, by name and job.
    name_re = re.fullmatch(r'\{__name__=~"(.+)"\}', selectors[0])
    assert name_re, selectors[0]
    taken = re.compile(name_re.group(1))
    for name, job_label, sent in SENT:
        chosen = (
            taken.fullmatch(name) is not None
            or name in selectors
            or (name == "up" and f'up{{job="{job_label}"}}' in selectors)
            or (name == "ALERTS" and any(s.startswith("ALERTS{") for s in selectors))
        )
        assert chosen is sent, (name, job_label)


# -- node-problem-detector --------------------------------------------------------

# The fields node-problem-detector's system log monitor reads (MonitorConfig,
# its watcher's config, a condition, a rule); anything else it ignores silently.
NPD_KEYS = {"plugin", "pluginConfig", "logPath", "lookback", "delay", "bufferSize", "source", "metricsReporting",
            "conditions", "rules"}
NPD_CONDITION_KEYS = {"type", "reason", "message"}
NPD_RULE_KEYS = {"type", "condition", "reason", "pattern", "patternGeneratedMessageSuffix"}
# Go's regexp (RE2) has none of these; Python would accept them.
NOT_RE2 = re.compile(r"\(\?[=!<>]|\(\?P=|\\[1-9]|\\Z|[*+?}]\+")


def npd() -> dict:
    return json.loads(NPD_MONITOR.read_text())


def test_npd_monitor_is_a_journald_system_log_monitor_of_allocwatch():
    doc = npd()
    assert set(doc) <= NPD_KEYS, set(doc) - NPD_KEYS
    assert doc["plugin"] == "journald"
    # The journald watcher matches SYSLOG_IDENTIFIER to pluginConfig.source.
    assert doc["pluginConfig"] == {"source": journal.IDENTIFIER}
    assert doc["bufferSize"] >= 1
    (cond,) = doc["conditions"]
    assert set(cond) == NPD_CONDITION_KEYS and cond["type"] == "MemoryAllocationStall"
    for rule in doc["rules"]:
        assert set(rule) <= NPD_RULE_KEYS, rule
        assert rule["type"] in ("temporary", "permanent")
        assert (rule["type"] == "permanent") == ("condition" in rule), rule
        if rule["type"] == "permanent":
            assert rule["condition"] == cond["type"] and rule["reason"] != cond["reason"]
        assert not NOT_RE2.search(rule["pattern"]), f"not RE2: {rule['pattern']}"
        re.compile(rule["pattern"])


class NpdLogMonitor:
    """node-problem-detector's system log monitor, as its log_buffer.go and
    log_monitor.go do it: each message (MESSAGE, trimmed) is pushed into a ring
    of bufferSize messages; after each push every rule's pattern, with `\\z`
    appended, is searched in the ring's messages joined by newlines. A match of
    a temporary rule is an event; of a permanent one, the condition set."""

    def __init__(self, doc: dict) -> None:
        self.size = doc["bufferSize"]
        self.rules = [(r, re.compile(r["pattern"] + r"\Z")) for r in doc["rules"]]  # Python's \Z is Go's \z
        self.ring: list[str] = []
        self.hits: list[tuple[str, str]] = []  # (reason, the message pushed)

    def push(self, message: str) -> list[str]:
        self.ring = ([*self.ring, message.strip()])[-self.size :]
        text = "\n".join(self.ring)
        reasons = [rule["reason"] for rule, pattern in self.rules if pattern.search(text)]
        self.hits += [(reason, message) for reason in reasons]
        return reasons


TIME = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z ")


def doc_blocks() -> list[list[str]]:
    """The report examples of the manual: each code block that holds allocwatch lines."""
    blocks = []
    for page in ("reports.md", "kinds-of-stall.md"):
        for body in re.findall(r"^```\n(.*?)^```", (DOCS / page).read_text(), re.M | re.S):
            lines = body.rstrip("\n").split("\n")
            if any("allocwatch: " in line or line.startswith("  comm=") for line in lines):
                blocks.append(lines)
    return blocks


def as_journal_entries(lines: list[str]) -> list[str]:
    """The MESSAGEs `--output journal` writes for these text lines: a record
    without its time; a stall block's head with its context lines, then one
    entry per task, "allocwatch: stalled: " and its own lines (journal.py)."""
    messages: list[str] = []
    head, in_task = None, False  # the index of the stall block's head entry; inside a task's lines
    for line in lines:
        if TIME.match(line):
            messages.append(TIME.sub("", line))
            head = len(messages) - 1 if " stall report #" in line else None
            in_task = False
        elif line.startswith("  comm="):
            messages.append(f"{journal.HEAD} stalled: {line[2:]}")
            in_task = True
        elif line.startswith("    ") and in_task:
            messages[-1] += "\n" + line
        elif head is not None:  # a context, "and N more" or "what to do" line of the head
            messages[head] += "\n" + line
            in_task = False
        else:  # a block shown from its middle: the line as it stands
            messages.append(line)
            in_task = False
    return messages


LEVEL = re.compile(r"\blevel=(\d+)\b")


def expected(message: str) -> set[str]:
    first = message.strip().split("\n", 1)[0]
    want = set()
    if re.search(r"allocwatch: stall report #\d+: \d+ task\(s\) due \(([1-9]\d*) new\)", first):
        want.add("MemoryAllocationStall")
    if re.search(r"allocwatch: oom kills? #\d+: ", first):
        want.add("AllocwatchOOMKill")
    level = LEVEL.search(first)
    if level and "comm=" in first and int(level.group(1)) >= 6:
        want.add("TaskStalledSixThresholds")
    return want


def run_monitor(messages: list[str]) -> NpdLogMonitor:
    mon = NpdLogMonitor(npd())
    for m in messages:
        got = mon.push(m)
        assert sorted(got) == sorted(expected(m)), f"{m[:200]!r}: rules {got}, expected {sorted(expected(m))}"
    return mon


def test_npd_rules_on_the_journal_entries_of_the_manuals_reports():
    messages = [m for block in doc_blocks() for m in as_journal_entries(block)]
    mon = run_monitor(messages)
    reasons = [r for r, _ in mon.hits]
    # Real lines of each kind are there, so each rule was seen firing.
    assert reasons.count("MemoryAllocationStall") >= 2
    assert reasons.count("AllocwatchOOMKill") >= 3
    assert reasons.count("TaskStalledSixThresholds") >= 1
    assert sum(1 for m in messages if LEVEL.search(m) and int(LEVEL.search(m).group(1)) < 6) >= 5


def test_npd_rules_on_the_text_output_as_the_journal_keeps_it_line_by_line():
    # `--format text` on stdout under systemd: each line an entry of its own.
    messages = [line for block in doc_blocks() for line in block]
    mon = run_monitor(messages)
    assert {r for r, _ in mon.hits} == {"MemoryAllocationStall", "AllocwatchOOMKill", "TaskStalledSixThresholds"}


def _task(level: int, new: bool, comm: str = "db worker 1") -> dict:
    return {
        "kind": "stall", "tid": 4211, "pid": 4211, "comm": comm, "site": "memcg_oom_wait", "duration_s": 10.0 * level,
        "level": level, "new": new, "gfp": None, "order": None, "cgroup": "/kubepods/burstable/pod-cart-1",
        "state": "D", "stack": ["mem_cgroup_oom_synchronize", "pagefault_out_of_memory"], "start_known": True,
        "other_waits": [], "recent_stack": [], "uid": 0, "cmdline": "db --level=9", "dying": False,
        "exiting": False, "memcg": None,
    }


def test_npd_rules_on_entries_the_journal_output_makes():
    """journal.entries() itself: a new stall is one event (never one per task
    or per escalation); the sixth threshold sets the condition, the fifth not."""
    mon = NpdLogMonitor(npd())
    new_block = {"type": "stall_report", "seq": 1, "time": "t", "stalled": 2, "due": 2, "held_back": 0,
                 "tasks": [_task(1, True), _task(1, True, "x level=7")], "more": []}
    pushed = [(e["MESSAGE"], mon.push(e["MESSAGE"])) for e in journal.entries(new_block)]
    assert [r for _, r in pushed] == [["MemoryAllocationStall"], [], []], pushed
    for level in range(2, 7):
        block = {**new_block, "seq": level, "tasks": [_task(level, False)]}
        got = [mon.push(e["MESSAGE"]) for e in journal.entries(block)]
        assert got == ([[], ["TaskStalledSixThresholds"]] if level == 6 else [[], []]), (level, got)


def test_npd_rules_are_not_fooled_by_names_a_task_chooses():
    """A comm or cgroup that spells a field or a record (the text quotes it)
    neither sets the condition nor makes an event."""
    mon = NpdLogMonitor(npd())
    tasks = [_task(1, False, comm) for comm in (
        "x state=D level=9 y",
        "allocwatch: stalled: comm=x state=D level=9",
        "allocwatch: stall report #1: 1 task(s) due (1 new)",
        "allocwatch: oom kill #1: victim",
    )]
    tasks.append({**_task(2, False), "cgroup": "/x state=D level=99 (new)"})
    block = {"type": "stall_report", "seq": 9, "time": "t", "stalled": 5, "due": 5, "held_back": 0,
             "tasks": tasks, "more": []}
    messages = [e["MESSAGE"] for e in journal.entries(block)]
    assert all('"' in m for m in messages[1:]), messages  # quoted, as the renderer does
    for m in messages:
        assert mon.push(m) == [], m
    for m in messages:  # and line by line, as text on stdout would be
        for line in m.split("\n"):
            assert mon.push(line) == [], line


# -- a real run: the shipped configurations in three real Prometheus servers --------

EXPOSITION = """\
# TYPE allocwatch_tasks_stalled gauge
allocwatch_tasks_stalled{site="memcg_reclaim"} 2
# TYPE allocwatch_site_attached gauge
allocwatch_site_attached{site="memcg_reclaim",mechanism="tracepoint"} 1
# TYPE allocwatch_build_info gauge
allocwatch_build_info{version="0",kernel="6.18"} 1
# TYPE allocwatch_oom_kills_total counter
allocwatch_oom_kills_total 3
"""


def _shipped(path: Path, replace: dict[str, str]) -> str:
    """The shipped file with each of `replace` substituted (each must be there)."""
    text = path.read_text()
    for old, new in replace.items():
        assert old in text, (path.name, old)
        text = text.replace(old, new)
    return text


def _serve_exposition():
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = EXPOSITION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _names(port: int, deadline_s: float, want: str) -> set[str]:
    import time
    import urllib.request

    end = time.monotonic() + deadline_s
    names: set[str] = set()
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/label/__name__/values", timeout=5) as r:
                names = set(json.loads(r.read())["data"])
        except OSError:
            pass
        if want in names:
            break
        time.sleep(0.5)
    return names


def _labels(port: int) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/labels", timeout=5) as r:
        return set(json.loads(r.read())["data"])


@pytest.mark.requires_tool("prometheus")
def test_remote_write_and_federation_really_carry_the_per_node_series_only(tmp_path):
    """A node's Prometheus on remote-write.yml (scraping allocwatch's exposition,
    evaluating the rules) writes to a receiving Prometheus; a central one on
    federate.yml federates from it. Both end with the recorded series, build
    info, up and ALERTS, the cluster label, and no raw series nor runbook label."""
    from lab.ports import free_port

    target = _serve_exposition()
    node, receiver, central = free_port(), free_port(), free_port()
    (tmp_path / "allocwatch-rules.yml").write_text((PROMETHEUS_DIR / "allocwatch-rules.yml").read_text())
    (tmp_path / "node.yml").write_text(_shipped(REMOTE_WRITE, {
        "scrape_interval: 15s": "scrape_interval: 1s",
        "evaluation_interval: 15s": "evaluation_interval: 1s",
        "localhost:19464": f"127.0.0.1:{target.server_address[1]}",
        "https://metrics.example/api/v1/push": f"http://127.0.0.1:{receiver}/api/v1/write",
    }))
    (tmp_path / "central.yml").write_text(_shipped(FEDERATE, {
        "scrape_interval: 1m": "scrape_interval: 1s",
        "prometheus.cluster-a.example:9090": f"127.0.0.1:{node}",
        "          - prometheus.cluster-b.example:9090\n": "",
    }))
    (tmp_path / "receiver.yml").write_text("global: {}\n")
    servers = []
    try:
        for name, port, extra in (("receiver", receiver, ["--web.enable-remote-write-receiver"]),
                                  ("node", node, []), ("central", central, [])):
            log = (tmp_path / f"{name}.log").open("w")
            servers.append((subprocess.Popen(
                ["prometheus", f"--config.file={tmp_path / f'{name}.yml'}", f"--storage.tsdb.path={tmp_path / name}",
                 f"--web.listen-address=127.0.0.1:{port}", *extra],
                stdout=log, stderr=subprocess.STDOUT), log))
        recorded = _recorded()
        at_node = _names(node, 60, "allocwatch:tasks_stalled:max")
        assert {"allocwatch_tasks_stalled", "allocwatch:tasks_stalled:max"} <= at_node, at_node  # raw and recorded
        for port in (receiver, central):
            names = _names(port, 60, "allocwatch:tasks_stalled:max")
            allocwatch = {n for n in names if n.startswith("allocwatch")}
            assert "allocwatch:tasks_stalled:max" in allocwatch and "up" in names, (port, names)
            assert allocwatch <= recorded | {"allocwatch_build_info"}, (port, allocwatch)  # no raw series
            labels = _labels(port)
            assert "cluster" in labels and "allocwatch_runbooks" not in labels, (port, labels)
    finally:
        for proc, log in servers:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        target.shutdown()
        target.server_close()
