# SPDX-License-Identifier: Apache-2.0
"""The PromQL shipped in deploy/: every alert and recording rule, every
dashboard panel target, and the metric names each one reads.

Used by tests/unit/test_deploy.py (static checks) and by the kernel tests,
which evaluate every expression against a live Prometheus scraping the real
daemon. So dashboard_exprs() returns expressions Prometheus itself accepts:
Grafana's variables are replaced by values that select everything
(GRAFANA_VALUES); pass raw=True for the text as the dashboard has it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "allocwatch-rules.yml"
RULES_TEST = PROMETHEUS_DIR / "allocwatch-rules.test.yml"
SCRAPE = PROMETHEUS_DIR / "scrape.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "allocwatch-dashboard.json"
DAEMONSET = ROOT / "deploy" / "kubernetes" / "allocwatch-daemonset.yaml"

# What Grafana would put in place of each variable the panels use, chosen to
# select every series: "All" of a multi-value variable is the allValue ".+";
# $__rate_interval is max(4 x scrape interval, interval + scrape interval),
# one minute at the 15 s scrape interval of scrape.yml; $__range is the
# dashboard's time range (any will do for checking an expression).
GRAFANA_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "instance": ".+",
    "site": ".+",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def grafana_substitute(expr: str) -> str:
    """`expr` with Grafana's $var and ${var} replaced (unknown names are left,
    so that a check can find them)."""

    # \w+ takes the whole name, so "$__rate_interval" is never read as "$__rate".
    return _VARIABLE.sub(lambda m: GRAFANA_VALUES.get(m.group(1) or m.group(2), m.group(0)), expr)


def rules() -> list[dict]:
    """Every rule of every group in the rules file, as YAML gives it."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def rule_exprs() -> list[tuple[str, str]]:
    """(alert or record name, expr) for every rule, in file order."""
    return [(rule.get("alert") or rule["record"], rule["expr"].strip()) for rule in rules()]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict | None = None) -> list[dict]:
    """Every panel, rows' nested panels (collapsed rows keep them) included."""
    out: list[dict] = []
    for panel in (dash or dashboard())["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(raw: bool = False) -> list[tuple[str, str]]:
    """(panel title, expr) for every panel target with an expr; with raw=False
    (the default) Grafana's variables are substituted (GRAFANA_VALUES)."""
    out = []
    for panel in panels():
        for target in panel.get("targets", []):
            if "expr" in target:
                expr = target["expr"].strip()
                out.append((panel["title"], expr if raw else grafana_substitute(expr)))
    return out


# -- the metric names an expression reads ---------------------------------------
#
# A small lexer, not a PromQL parser: enough for the expressions written here.
# It removes what is not a metric name (strings, label matchers, ranges,
# grouping labels, function and aggregation names, keywords, numbers and
# durations); the identifiers left are the metric names of the selectors.

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a preceding word character or dot (so "5m" and
# "1e3" give nothing), and what follows it: "(" makes it a function call.
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
# Operators and modifiers written as words; atan2 is a binary operator,
# written between its operands, so it is not followed by "(".
_KEYWORDS = frozenset("and or unless bool offset by without on ignoring group_left group_right inf nan atan2".split())


def selector_names(expr: str) -> set[str]:
    """Every metric name `expr` selects (recording rules' names included),
    as written: allocwatch_wait_seconds_bucket stays so."""
    text = _COMMENT.sub(" ", _STRING.sub('""', expr))
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    """The allocwatch_* metric names `expr` uses, as written (with _total,
    _bucket, _sum, _count where the expression has them)."""
    return {name for name in selector_names(expr) if name.startswith("allocwatch_")}
