# SPDX-License-Identifier: Apache-2.0
"""Stall seconds per memory cgroup, for the metrics, with a bounded label (pure).

Off unless configured. A cgroup gets a label of its own when it is listed
(`metrics_cgroups`: the path or any group under it counts for the listed
path) or when its path matches a pattern (`metrics_cgroup_pattern`: the label
is the first group the pattern captures, else the whole path). At most
`metrics_cgroup_max` labels are ever given out in a run, so a counter never
disappears once it exists; every wait beyond the cap, of a cgroup that
matches nothing, of a task whose cgroup cannot be read, or whose label would
not be printable text counts under `other`. A label is a cgroup path or part
of one, never a pid or a command.

With pod labels on (`metrics_pod_labels`), each label is also given the
namespace, pod and container of the task's cgroup (core/pods.py; empty for a
cgroup that is no pod's): the cap then counts distinct (cgroup, namespace,
pod, container) sets, and every wait past it counts under cgroup `other`
with the three empty.

The accumulator sees what the scan loop sees wait by wait: waits in flight at
a scan and the waits the kernel sends up when they end (those that reached
the lowest threshold). A wait that starts and ends between two scans, shorter
than any threshold, counts per site only (the kernel's histograms).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from allocwatch.core.tracker import NS_PER_S, Ended, Wait, WaitKey

OTHER = "other"
POD_LABELS = ("namespace", "pod", "container")
NO_POD = ("", "", "")
DEFAULT_MAX_LABELS = 20
_FORGET_AFTER_SCANS = 2  # a wait gone from the map: its end may still come a scan late


class CgroupLabeler:
    """cgroup path -> label; at most `max_labels` distinct labels, the rest `other`."""

    def __init__(
        self, paths: Sequence[str] = (), pattern: str = "", max_labels: int = DEFAULT_MAX_LABELS,
        pod_labels: Callable[[str], tuple[str, str, str]] | None = None,
    ) -> None:
        self._paths = tuple(p.rstrip("/") or "/" for p in paths)
        self._pattern = re.compile(pattern) if pattern else None
        self._max = max_labels
        self._pod_labels = pod_labels  # cgroup path -> (namespace, pod, container), NO_POD for none
        self._given: set[tuple[str, ...]] = set()

    @property
    def names(self) -> tuple[str, ...]:
        """The label names, in the order of `labels()`'s values."""
        return ("cgroup", *POD_LABELS) if self._pod_labels is not None else ("cgroup",)

    @property
    def enabled(self) -> bool:
        return bool(self._paths) or self._pattern is not None

    def _wanted(self, cgroup: str) -> str | None:
        for p in self._paths:  # the first listed path that is it or an ancestor
            if p in ("/", cgroup) or cgroup.startswith(p + "/"):
                return p
        if self._pattern is not None and (m := self._pattern.fullmatch(cgroup)) is not None:
            label = m.group(1) if self._pattern.groups else cgroup
            # bytes that are not UTF-8 (kept as surrogates) or control characters: no label of their own
            return label if label and label.isprintable() else None
        return None

    def label(self, cgroup: str | None) -> str:
        return self.labels(cgroup)[0]

    def labels(self, cgroup: str | None) -> tuple[str, ...]:
        """The label values of a task's cgroup (`names` says which)."""
        other = (OTHER, *NO_POD) if self._pod_labels is not None else (OTHER,)
        wanted = self._wanted(cgroup) if cgroup is not None else None
        if cgroup is None or wanted is None or wanted == OTHER:
            return other
        values: tuple[str, ...] = (wanted,)
        if self._pod_labels is not None:
            pod = self._pod_labels(cgroup)
            values = (wanted, *(v if v.isprintable() else "" for v in pod))
        if values in self._given:
            return values
        if len(self._given) >= self._max:
            return other
        self._given.add(values)
        return values


class CgroupStallSeconds:
    """Seconds waited per (label values..., site label), only ever growing.

    Each wait is labelled once, when first seen (one read of its task's
    cgroup); each scan adds what it waited since the last scan, and its end
    adds the rest.
    """

    def __init__(self, labeler: CgroupLabeler, cgroup_of: Callable[[int, int], str | None]) -> None:
        self._labeler = labeler
        self._cgroup_of = cgroup_of  # (pid, tid) -> memory cgroup path, None when gone
        self._seen: dict[WaitKey, tuple[tuple[str, ...], float, int]] = {}  # key -> (labels, counted s, scans unseen)
        self._totals: dict[tuple[str, ...], float] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The label names of a total's key, before the site."""
        return self._labeler.names

    def _add(self, labels: tuple[str, ...], site: str, seconds: float) -> None:
        if seconds > 0:
            key = (*labels, site)
            self._totals[key] = self._totals.get(key, 0.0) + seconds

    def _label_of(self, w: Wait) -> tuple[str, ...]:
        return self._labeler.labels(self._cgroup_of(w.pid, w.tid))

    def update(self, now_ns: int, inflight: Iterable[Wait], ended: Iterable[Ended]) -> dict[tuple[str, ...], float]:
        ended_keys = set()
        for e in ended:
            key = e.wait.key
            ended_keys.add(key)
            seen = self._seen.pop(key, None)
            label, counted, _ = seen if seen is not None else (self._label_of(e.wait), 0.0, 0)
            self._add(label, e.wait.site.label, e.duration_ns / NS_PER_S - counted)
        present = set()
        for w in inflight:
            key = w.key
            if key in ended_keys:
                continue
            present.add(key)
            label, counted, _ = self._seen.get(key) or (self._label_of(w), 0.0, 0)
            so_far = max(0, now_ns - w.start_ns) / NS_PER_S
            self._add(label, w.site.label, so_far - counted)
            self._seen[key] = (label, max(so_far, counted), 0)
        for key in [k for k in self._seen if k not in present]:
            label, counted, unseen = self._seen[key]
            if unseen + 1 >= _FORGET_AFTER_SCANS:
                del self._seen[key]
            else:
                self._seen[key] = (label, counted, unseen + 1)
        return dict(self._totals)


class CgroupCounts:
    """Events (OOM kills, by the victim's memory cgroup) per label values, only ever growing."""

    def __init__(self, labeler: CgroupLabeler) -> None:
        self._labeler = labeler
        self._totals: dict[tuple[str, ...], int] = {}

    def add(self, cgroup: str | None, n: int = 1) -> None:
        key = self._labeler.labels(cgroup)
        self._totals[key] = self._totals.get(key, 0) + n

    def totals(self) -> dict[tuple[str, ...], int]:
        """A copy; before the first event, one zero under "other" (the series is there from the start)."""
        return dict(self._totals) if self._totals else {self._labeler.labels(None): 0}
