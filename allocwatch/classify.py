"""Naming a D-state sleep after the wait site it is in (pure).

A sleep is named after a hint left by a tracepoint just before it (see
bpf/allocwatch.bpf.c), else after the innermost function in its kernel stack
that belongs to a site the probe plan left to stack classification.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from allocwatch.kernelinfo import base_symbol
from allocwatch.probes import SiteEntry
from allocwatch.sites import Site


class StackClassifier:
    def __init__(self, entries: Iterable[SiteEntry]) -> None:
        self._by_frame: dict[str, Site] = {}
        for entry in entries:
            for frame in entry.stack_frames:
                self._by_frame.setdefault(frame, entry.site)

    def classify(self, frames: Sequence[str]) -> Site | None:
        """The site of the innermost known frame; `frames` innermost first."""
        for frame in frames:
            site = self._by_frame.get(base_symbol(frame))
            if site is not None:
                return site
        return None
