# SPDX-License-Identifier: Apache-2.0
"""`allocwatch probes`: which wait sites this kernel offers, and how each is reached.

Live, it loads and attaches the programs as `run` would (then detaches them),
so it says what a run would get; with a captured tracefs tree it only plans.
"""

from __future__ import annotations

import json
from pathlib import Path

from allocwatch import config
from allocwatch.app.session import load_source, prepare, read_features
from allocwatch.kernel import coverage, probes


def site_report(cfg: config.Config, tracefs: Path | None, kallsyms: Path | None, as_json: bool) -> str:
    """The text (or JSON document) to print; typed errors as `run` raises them."""
    offline = tracefs is not None
    if not offline:
        prepare(cfg)
    features = read_features(cfg, tracefs, kallsyms)
    plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
    switch_how = None  # how sched_switch was attached (raw or classic, and why): live only
    oom_how = None  # how an OOM kill's cgroups are read in the kernel, or "off: why": live only
    states_how = None  # how a block reads many tasks' states (the task iterator, or /proc and why): live only
    names_how = None  # how kernel addresses are named (kallsyms, or why they are left as addresses): live only
    if offline:
        statuses = [coverage.planned(p, features) for p in plans]
    else:
        source = load_source(cfg, plans, features)
        statuses = list(source.status)
        switch_how = source.sched_switch_how or None
        oom_how = source.oom_context_how or None
        states_how = source.task_states_how or None
        names_how = source.kernel_names_how()
        source.close()
    if as_json:
        doc = {
            "kernel": features.release,
            "live": not offline,
            "kprobes": features.kprobes,
            "sched_switch": switch_how,
            "oom_context": oom_how,
            "task_states": states_how,
            "kernel_names": names_how,
            "sites": coverage.rows(statuses),
        }
        return json.dumps(doc, indent=2) + "\n"
    return coverage.render_text(statuses, features.release, switch_how, oom_how, states_how, names_how)
