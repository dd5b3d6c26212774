# SPDX-License-Identifier: Apache-2.0
"""OOM kills as they are reported: each kill with its memory cgroups and
constraint, and a storm folded into one report per victims' memory cgroup per
scan (a memcg at its limit with the killer on can kill a dozen tasks a second,
and a line for each buries everything else). Pure: no kernel, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from allocwatch.core.model import OomKill

MEMCG = "memcg"  # a memory cgroup's limit was hit (mem_cgroup_out_of_memory)
GLOBAL = "global"  # not a memory cgroup's: the machine's, a cpuset's or a memory policy's


@dataclass(frozen=True)
class KillSeen:
    """One kill, with what could be learned of it."""

    kill: OomKill
    victim_cgroup: str | None
    invoker_cgroup: str | None
    constraint: str | None  # MEMCG, GLOBAL, or None: unknown
    # True: cgroups and constraint read in the kernel at the kill; False: from
    # /proc afterwards (the victim may be gone, the invoker may have moved).
    from_kernel: bool
    # The kernel's own oom_control, where it could be read (kprobes): the
    # invoker's allocation and the memory cgroup out of memory.
    gfp_flags: str | None = None  # "0xcc0(GFP_KERNEL)"
    order: int | None = None
    oom_cgroup: str | None = None


def constraint_of(memcg_oom: bool | None) -> str | None:
    return None if memcg_oom is None else MEMCG if memcg_oom else GLOBAL


def fold(kills: Sequence[KillSeen]) -> list[tuple[KillSeen, ...]]:
    """The kills grouped by the victim's memory cgroup, each group in the order
    of its kills, groups in the order of their first kill."""
    groups: dict[str | None, list[KillSeen]] = {}
    for k in kills:
        groups.setdefault(k.victim_cgroup, []).append(k)
    return [tuple(g) for g in groups.values()]


def largest(kills: Sequence[KillSeen]) -> KillSeen:
    """The kill whose victim had the most anonymous memory (the first if none says)."""
    return max(kills, key=lambda k: k.kill.victim.anon_rss_kb if k.kill.victim else -1)


def constraints(kills: Sequence[KillSeen]) -> dict[str, int]:
    """Kills per constraint ("unknown" for those it could not tell)."""
    return dict(Counter(k.constraint or "unknown" for k in kills))
