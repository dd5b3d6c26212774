# SPDX-License-Identifier: Apache-2.0
"""Wait-site identities, mirrored from bpf/allocwatch.h (AW_SITE_*).

tests/unit/test_wire.py checks that every number here matches the header.
"""

from __future__ import annotations

import enum


class Site(enum.IntEnum):
    ALLOC_SLOWPATH = 0
    ALLOC_PAGES = 1
    DIRECT_RECLAIM = 2
    MEMCG_RECLAIM = 3
    MEMCG_SOFTLIMIT_RECLAIM = 4
    NODE_RECLAIM = 5
    TOO_MANY_ISOLATED = 6
    RECLAIM_THROTTLE = 7
    CONGESTION_WAIT = 8
    WAIT_IFF_CONGESTED = 9
    THROTTLE_VM_WRITEOUT = 10
    COMPACTION = 11
    DIRTY_THROTTLE = 12
    WRITEBACK_WAIT = 13
    PFMEMALLOC_THROTTLE = 14
    MEMCG_OOM_WAIT = 15
    MEMCG_HIGH_THROTTLE = 16
    OOM = 17
    OOM_REAPER = 18

    @property
    def label(self) -> str:
        """The name used in reports, config keys and metric labels (made once a
        site, below: a report asks it of each of 10,000 tasks)."""
        return SITE_LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> Site:
        """The site whose label is exactly `label` (no case folding: "OOM" and
        look-alikes such as a dotless i are not labels)."""
        if not isinstance(label, str):
            raise ValueError(f"a wait site label is a string, not {type(label).__name__}")
        site = {s.label: s for s in cls}.get(label)
        if site is None:
            shown = repr(label[:60]) + ("..." if len(label) > 60 else "")
            raise ValueError(f"unknown wait site {shown}")
        return site


SITE_LABELS: dict[Site, str] = {site: site.name.lower() for site in Site}  # read only

NR_SITES = 19
SITE_DSTATE = 31
SITE_NONE = 0xFFFFFFFF
HIST_SLOTS = 32

EV_WAIT_END = 1
EV_OOM_KILL = 2

# How a wait ended (aw_event.how), as reports name it.
END_HOW = {0: "woke", 1: "killed", 2: "exited"}

STAT_NAMES = ("events_lost", "waits_full", "dwaits_full", "unmatched_end", "oom_kills")

GFP_UNKNOWN = 0xFFFFFFFFFFFFFFFF


def hist_slot_upper_s(slot: int) -> float:
    """Upper bound, in seconds, of histogram slot `slot` ([2^k, 2^(k+1)) us)."""
    return (2 ** (slot + 1)) / 1e6
