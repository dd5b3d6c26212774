# SPDX-License-Identifier: Apache-2.0
"""What is watched and how: per-site attach status, for `allocwatch probes`
and the daemon's start line (pure).

Coverage is counted over what this kernel could have: a site the kernel
removed long ago (congestion_wait) or that the configuration turned off (the
hot allocator entry) is shown as such, not as missing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from allocwatch.core.snapshot import SiteCoverage
from allocwatch.kernel.kernelinfo import KernelFeatures
from allocwatch.kernel.probes import Mechanism, SitePlan, tracepoints_to_attach
from allocwatch.kernel.taskiter import HOST_TASKS_PER_STAT_READ, STATES_AT_ONCE_FROM


class State(str, enum.Enum):
    ATTACHED = "attached"
    WOULD_ATTACH = "would attach"  # evaluated offline
    OFF = "off (config)"
    NOT_IN_KERNEL = "not in this kernel"
    MISSING = "MISSING"  # the kernel has the site, and nothing here can watch it

    @property
    def counts(self) -> bool:
        """Part of what this kernel could have watched."""
        return self not in (State.OFF, State.NOT_IN_KERNEL)


@dataclass(frozen=True)
class SiteStatus:
    plan: SitePlan  # as attached: an option that failed to attach is in plan.skipped
    attached: bool  # live: attached; offline: would attach
    target: str  # tracepoints or the kprobe symbol used
    live: bool = True  # False: evaluated from a captured kernel, nothing attached
    in_kernel: bool = True  # False: this kernel version has no such site

    @property
    def state(self) -> State:
        if self.attached:
            return State.ATTACHED if self.live else State.WOULD_ATTACH
        if self.plan.disabled:
            return State.OFF
        if not self.in_kernel:
            return State.NOT_IN_KERNEL
        return State.MISSING


def planned(plan: SitePlan, features: KernelFeatures) -> SiteStatus:
    """A site's status from the plan alone (a captured kernel, nothing attached)."""
    opt = plan.chosen
    if opt is None:
        target = ""
    elif opt.mechanism is Mechanism.KPROBE_PAIR:
        target = plan.kprobe_target(features) or ""
    else:
        target = " + ".join(tp.name for tp in tracepoints_to_attach(opt, features))
    return SiteStatus(plan, opt is not None, target, live=False, in_kernel=plan.entry.in_kernel(features.version))


def why_not(st: SiteStatus) -> str:
    plan = st.plan
    why = plan.disabled
    if not why and plan.chosen is None:
        if not st.in_kernel and plan.entry.absent:
            return plan.entry.absent
        why = "; ".join(r for _, r in plan.skipped) or plan.entry.absent
        if plan.entry.absent and plan.entry.absent not in why:
            why += f" ({plan.entry.absent})"
    return why


@dataclass(frozen=True)
class Summary:
    attached: int
    could_have: int  # sites this kernel has and the configuration wants
    off: int
    not_in_kernel: int
    missing: tuple[str, ...]  # labels

    def line(self) -> str:
        extra = []
        if self.not_in_kernel:
            extra.append(f"{self.not_in_kernel} not in this kernel")
        if self.off:
            extra.append(f"{self.off} off by configuration")
        tail = f" ({', '.join(extra)})" if extra else ""
        missing = f"; missing: {', '.join(self.missing)}" if self.missing else ""
        return f"{self.attached} of {self.could_have} wait sites{tail}{missing}"


def summarize(statuses: Sequence[SiteStatus]) -> Summary:
    states = [st.state for st in statuses]
    return Summary(
        attached=sum(s in (State.ATTACHED, State.WOULD_ATTACH) for s in states),
        could_have=sum(s.counts for s in states),
        off=states.count(State.OFF),
        not_in_kernel=states.count(State.NOT_IN_KERNEL),
        missing=tuple(st.plan.site.label for st in statuses if st.state is State.MISSING),
    )


def snapshot_coverage(statuses: Sequence[SiteStatus]) -> list[SiteCoverage]:
    """Per site, what the snapshot (and so the metrics) say about its attachment."""
    out = []
    for st in statuses:
        opt = st.plan.chosen
        if opt is not None and st.attached:
            out.append(SiteCoverage(st.plan.site.label, opt.mechanism.value, True, st.target))
        else:
            out.append(SiteCoverage(st.plan.site.label, "", st.attached))
    return out


def rows(statuses: Sequence[SiteStatus]) -> list[dict[str, Any]]:
    out = []
    for st in statuses:
        opt = st.plan.chosen
        row: dict[str, Any] = {
            "site": st.plan.site.label,
            "what": st.plan.entry.what,
            "state": st.state.value,
            "attached": st.attached if st.live else None,
            "mechanism": opt.mechanism.value if opt else None,
            "target": st.target or None,
            "why_not": why_not(st) or None,
            "passed_over": [{"mechanism": o.mechanism.value, "why": r} for o, r in st.plan.skipped],
        }
        if not st.live:
            row["would_attach"] = st.attached
        out.append(row)
    return out


def render_text(statuses: Sequence[SiteStatus], release: str, switch_how: str | None = None,
                oom_how: str | None = None, states_how: str | None = None, names_how: str | None = None) -> str:
    """`switch_how`: how sched:sched_switch was attached, live ("raw tracepoint", or
    "classic tracepoint (why not raw)"); None offline or when nothing needed it.
    `oom_how`: how an OOM kill's cgroups are read in the kernel, live, or "off: why".
    `states_how`: how a block reads many tasks' states, live ("task iterator", or "/proc (why)").
    `names_how`: how kernel addresses are named, live (`KernelSymbols.how`)."""
    offline = any(not st.live for st in statuses)
    lines = [f"kernel {release}: {'evaluated offline, nothing attached' if offline else 'attached live'}"]
    for st, row in zip(statuses, rows(statuses), strict=True):
        how = f"{row['mechanism']}: {row['target']}" if st.attached else row["why_not"]
        lines.append(f"  {row['site']:<24} {st.state.value:<19} {how}")
    if switch_how:
        lines.append(f"sched:sched_switch (D-state timing) on the {switch_how}")
    if oom_how:
        read = ("read after the kill, from /proc (" + oom_how.removeprefix("off: ") + ")"
                if oom_how.startswith("off: ") else "read in the kernel at the kill, on the " + oom_how)
        lines.append(f"oom:mark_victim (an OOM kill's cgroups and constraint) {read}")
    if states_how:
        lines.append(f"tasks' states, for a block of {STATES_AT_ONCE_FROM} or more and one for every "
                     f"{HOST_TASKS_PER_STAT_READ} tasks on the host, read with the {states_how}"
                     if states_how == "task iterator" else f"tasks' states read from {states_how}")
    if names_how:
        lines.append(f"kernel addresses (a finding's shrinkers, a stack taken at reclaim entry) {names_how}")
    verb = "would watch" if offline else "watching"
    lines.append(f"{verb} {summarize(statuses).line()}")
    return "\n".join(lines) + "\n"
