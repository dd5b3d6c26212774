# SPDX-License-Identifier: Apache-2.0
"""A pod's namespace and name from its UID: the kubelet's pod log directories.

The kubelet keeps each pod's container logs in `<pods log dir>/<namespace>_<name>_<uid>`
(/var/log/pods by default). Neither a namespace nor a pod name may hold `_`
(both are DNS labels or subdomains), so the directory's name splits into the
three at its first two `_`. The names are read with one listdir, kept, and read
again only when a UID is asked for that the last listing did not have, at most
once a second, so a scan never waits on more than one listdir however many
pods it meets. Only a task whose cgroup is a pod's makes it read at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

from allocwatch.core import pods
from allocwatch.core.pods import PodRef

DEFAULT_POD_LOGS_DIR = "/var/log/pods"
MAX_PODS = 10_000  # directory entries kept at most: a node runs a few hundred pods
REFRESH_AFTER_S = 1.0  # an unknown UID reads the directory again at most this often


def split_name(entry: str) -> tuple[str, str, str] | None:
    """`<namespace>_<name>_<uid>` -> (namespace, name, uid), else None."""
    parts = entry.split("_", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


class PodNames:
    """Pod UID -> (namespace, name), from the pods log directory; off when `directory` is ''."""

    def __init__(self, directory: str, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self._clock_s = clock_s
        self._names: dict[str, tuple[str, str]] = {}
        self._read_at: float | None = None
        self.listings = 0  # directory reads since start, for tests

    def set_directory(self, directory: str) -> None:
        """A reload's: names from another directory are read afresh."""
        if directory != self.directory:
            self.directory, self._names, self._read_at = directory, {}, None

    def _refresh(self) -> None:
        self._read_at = self._clock_s()
        self.listings += 1
        names: dict[str, tuple[str, str]] = {}
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if len(names) >= MAX_PODS:
                        break
                    found = split_name(entry.name)
                    if found is not None:
                        names[found[2]] = (found[0], found[1])
        except OSError:  # not mounted here, or gone: no names
            pass
        self._names = names

    def lookup(self, uid: str) -> tuple[str, str] | None:
        if not self.directory:
            return None
        found = self._names.get(uid)
        if found is None and (self._read_at is None or self._clock_s() - self._read_at >= REFRESH_AFTER_S):
            self._refresh()
            found = self._names.get(uid)
        return found

    def pod(self, cgroup: str | None) -> PodRef | None:
        """The pod a task's memory cgroup is in, with its namespace and name when the directory has them."""
        ref = pods.parse(cgroup)
        if ref is None:
            return None
        found = self.lookup(ref.uid)
        return replace(ref, namespace=found[0], name=found[1]) if found else ref
