# SPDX-License-Identifier: Apache-2.0
"""Naming a D-state sleep after the wait site it is in (pure).

A sleep is named after a hint left by a tracepoint just before it (see
bpf/allocwatch.bpf.c), else after the innermost function in its kernel stack
that belongs to a site the probe plan left to stack classification.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from allocwatch.core.sites import Site

# Compiler clones and split-off parts of a function keep its name before the dot.
_SUFFIX_RE = re.compile(r"\.(constprop|isra|part|cold|llvm)\.?\d*.*$")


def base_symbol(symbol: str) -> str:
    """`__alloc_pages_slowpath.constprop.0` -> `__alloc_pages_slowpath`."""
    return _SUFFIX_RE.sub("", symbol)


class NamedSite(Protocol):
    """A catalog entry as the classifier sees it (kernel.probes.SiteEntry)."""

    @property
    def site(self) -> Site: ...

    @property
    def stack_frames(self) -> tuple[str, ...]: ...


class StackClassifier:
    def __init__(self, entries: Iterable[NamedSite]) -> None:
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
