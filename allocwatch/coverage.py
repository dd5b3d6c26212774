"""What is watched and how: per-site attach status, for `allocwatch probes`
and the daemon's start line (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from allocwatch.kernelinfo import KernelFeatures
from allocwatch.probes import SCHED_SWITCH, Mechanism, SitePlan


@dataclass(frozen=True)
class SiteStatus:
    plan: SitePlan  # as attached: an option that failed to attach is in plan.skipped
    attached: bool | None  # None: evaluated without attaching
    target: str  # tracepoints or the kprobe symbol used


def planned(plan: SitePlan, features: KernelFeatures) -> SiteStatus:
    """A site's status from the plan alone (a captured kernel, nothing attached)."""
    opt = plan.chosen
    if opt is None:
        target = ""
    elif opt.mechanism is Mechanism.KPROBE_PAIR:
        target = plan.kprobe_target(features) or ""
    else:
        target = " + ".join(tp.name for tp in opt.tracepoints) or SCHED_SWITCH.name
    return SiteStatus(plan, None, target)


def why_not(st: SiteStatus) -> str:
    plan = st.plan
    why = plan.disabled
    if not why and plan.chosen is None:
        why = "; ".join(r for _, r in plan.skipped) or plan.entry.absent
        if plan.entry.absent and plan.entry.absent not in why:
            why += f" ({plan.entry.absent})"
    return why


def rows(statuses: Sequence[SiteStatus]) -> list[dict[str, Any]]:
    out = []
    for st in statuses:
        opt = st.plan.chosen
        row: dict[str, Any] = {
            "site": st.plan.site.label,
            "what": st.plan.entry.what,
            "attached": st.attached,
            "mechanism": opt.mechanism.value if opt else None,
            "target": st.target or None,
            "why_not": why_not(st) or None,
            "passed_over": [{"mechanism": o.mechanism.value, "why": r} for o, r in st.plan.skipped],
        }
        if st.attached is None:
            row["would_attach"] = opt is not None
        out.append(row)
    return out


def render_text(statuses: Sequence[SiteStatus], release: str) -> str:
    offline = any(st.attached is None for st in statuses)
    lines = [f"kernel {release}: {'evaluated offline, nothing attached' if offline else 'attached live'}"]
    for row in rows(statuses):
        ok = row["would_attach"] if offline else row["attached"]
        state = ("would attach" if offline else "attached") if ok else "MISSING"
        how = f"{row['mechanism']}: {row['target']}" if ok else row["why_not"]
        lines.append(f"  {row['site']:<24} {state:<13} {how}")
    return "\n".join(lines) + "\n"
