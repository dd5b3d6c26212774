# SPDX-License-Identifier: Apache-2.0
"""Naming D-state sleeps: hint or stack, read once per sleep and cached.

A D-state sleep becomes a `Wait` only when it can be named after a site;
other sleeps (disk I/O, locks outside memory management) are not stalls of
this tool's kind and are left out. The stack of a sleep is read at most once,
after it has lasted `classify_after_ns`, so short sleeps cost nothing here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from allocwatch.core.classify import StackClassifier
from allocwatch.core.model import InflightWait, OneCopy, WaitEnd
from allocwatch.core.sites import NR_SITES, Site
from allocwatch.core.tracker import Ended, Wait

StackReader = Callable[[int, int], "list[str] | None"]  # (pid, tid) -> frames
STACKS_KEPT = 4096  # distinct stacks kept as one copy each


@dataclass(slots=True)
class _Named:
    site: Site | None
    frames: list[str] | None
    # the Wait made from the map entry last read: an entry that did not change
    # comes back as the same object (kernel/mapread.py), and so does its Wait
    raw: InflightWait | None = None
    wait: Wait | None = None


class DstateNamer:
    def __init__(self, classifier: StackClassifier, read_stack: StackReader, classify_after_ns: int) -> None:
        self._classifier = classifier
        self._read_stack = read_stack
        self._classify_after_ns = classify_after_ns
        self._named: dict[tuple[int, int], _Named] = {}
        self.stack_reads = 0
        self._seen: list[InflightWait] = []  # the sleeps of the last full name_all, for prune()
        self._seeded: set[tuple[int, int]] = set()
        self._unrelated: list[tuple[int, int]] = []  # (tid, start_ns) named "not a memory wait"
        self._last: tuple[list[InflightWait], list[Wait]] | None = None  # the last name_all: in, out
        self._unripe = 0  # sleeps of the last name_all too young to name yet
        self._pruned = False  # prune() has run since the last full name_all
        self._stacks: OneCopy[tuple[str, ...], list[str]] = OneCopy(STACKS_KEPT)  # (_one_copy)

    def _one_copy(self, frames: list[str] | None) -> list[str] | None:
        """One list for equal stacks: 10,000 threads asleep at one place held
        10,000 equal lists (the names in them were already one copy each), and
        a block that shares the list makes its plain form once. Read, never changed."""
        return self._stacks.get(tuple(frames), frames) if frames else frames

    def set_classify_after(self, ns: int) -> None:
        self._classify_after_ns = ns
        self._last = None

    def seeded(self, tid: int, start_ns: int) -> None:
        """Note a sleep found in D at start: its real start is unknown."""
        self._seeded.add((tid, start_ns))
        self._last = None

    def stack_of(self, tid: int, start_ns: int) -> list[str] | None:
        named = self._named.get((tid, start_ns))
        return named.frames if named else None

    def _hint_site(self, hint: int | None) -> Site | None:
        return Site(hint) if hint is not None and 0 <= hint < NR_SITES else None

    def _name(self, key: tuple[int, int], raw: InflightWait, now_ns: int) -> _Named | None:
        named = self._named.get(key)
        if named is None:
            hinted = self._hint_site(raw.site_hint)
            if hinted is None and now_ns - raw.start_ns < self._classify_after_ns:
                return None
            frames = self._one_copy(self._read_stack(raw.pid, raw.tid))
            self.stack_reads += 1
            site = hinted if hinted is not None else self._classifier.classify(frames or [])
            named = self._named[key] = _Named(site, frames)
            if site is None and frames is not None:
                self._unrelated.append(key)
        return named

    def name_all(self, raws: Sequence[InflightWait], now_ns: int) -> list[Wait]:
        """The nameable sleeps among `raws`. Call `prune()` after `name_end()`.

        The same entries as last time (the very objects: the map reader gives an
        unchanged entry back as it was), with none of them waiting to be old
        enough to classify, name the same: the last answer is given again."""
        last = self._last
        if (last is not None and not self._unripe and len(raws) == len(last[0])
                and all(map(operator.is_, raws, last[0]))):
            return list(last[1])
        waits = []
        self._pruned = False
        known = self._named
        unripe = 0
        for raw in raws:
            key = (raw.tid, raw.start_ns)
            named = known.get(key)
            if named is None:
                named = self._name(key, raw, now_ns)
                if named is None:
                    unripe += 1  # too young to read its stack: time alone may name it
                    continue
            if named.site is None:
                continue
            wait = named.wait
            if named.raw is not raw or wait is None:
                wait = _wait(raw, named.site, key not in self._seeded)
                named.raw, named.wait = raw, wait
            waits.append(wait)
        self._unripe = unripe
        self._seen = list(raws)
        self._last = (self._seen, waits)
        return list(waits)

    def take_unrelated(self) -> list[tuple[int, int]]:
        """Sleeps named "not a memory wait" since the last call: the caller
        stops tracking them in the kernel."""
        out, self._unrelated = self._unrelated, []
        return out

    def prune(self) -> None:
        """Forget sleeps that were not in the last `name_all()` (nothing to do
        after one that gave its last answer again: the same sleeps as then)."""
        if self._pruned:
            return
        # made here, not kept: a set of 10,000 sleeps is about 1 MB
        live = {(raw.tid, raw.start_ns) for raw in self._seen}
        for key in [k for k in self._named if k not in live]:
            del self._named[key]
        self._seeded &= live
        self._pruned = True

    def name_end(self, end: WaitEnd) -> Ended | None:
        named = self._named.get((end.tid, end.start_ns))
        site = named.site if named else self._hint_site(end.site_hint)
        if site is None:
            return None
        known = (end.tid, end.start_ns) not in self._seeded
        return Ended(_wait(end, site, known), end.duration_ns, end.site_hint is not None, end.how)


def _wait(raw: InflightWait | WaitEnd, site: Site, start_known: bool = True) -> Wait:
    if not isinstance(raw, InflightWait):
        return Wait(raw.tid, raw.pid, raw.comm, site, raw.start_ns, raw.gfp, raw.order, True, start_known)
    return Wait(raw.tid, raw.pid, raw.comm, site, raw.start_ns, raw.gfp, raw.order, True, start_known,
                dirty_pause=raw.dirty_pause, writeback=raw.writeback)
