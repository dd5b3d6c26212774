# SPDX-License-Identifier: Apache-2.0
"""A memory cgroup's path from its id: the kernel names a cgroup by its kernfs
node id, which on 64-bit kernels is the inode number of its directory in
cgroupfs. The OOM-context program reads ids at the kill; this turns them into
the paths /proc/PID/cgroup would have shown, by walking the memory hierarchy
(v1's memory mount when there is one, else cgroup2) only when an id is new.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from allocwatch.kernel import hostfs, mountinfo

# A walk stops after this many directories: a host with more cgroups than
# this leaves the deeper ones unnamed rather than stall the scan.
MAX_DIRS = 100_000


def memory_hierarchy(mounts: Iterable[mountinfo.Mount]) -> tuple[str, Path] | None:
    """(root within the hierarchy, mount point) of the mount that shows the
    memory controller: v1's memory mount when there is one, else cgroup2."""
    found = [v for m in mounts if (v := hostfs.memcg_mount(m))]
    for want in (1, 2):
        for version, root, point in found:
            if version == want:
                return root, point
    return None


def walk(root: str, point: Path, max_dirs: int = MAX_DIRS) -> dict[int, str]:
    """Inode -> cgroup path ("/a/b", as /proc/PID/cgroup names it) of every
    directory under `point`, which shows the hierarchy from `root`."""
    base = root.rstrip("/")
    found: dict[int, str] = {}
    try:
        found[os.stat(point).st_ino] = base or "/"
    except OSError:
        return found
    todo = [(str(point), base)]
    while todo and len(found) < max_dirs:
        d, path = todo.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        found[e.inode()] = f"{path}/{e.name}"
                        todo.append((e.path, f"{path}/{e.name}"))
        except OSError:  # removed while walked
            continue
    return found


class MemcgPaths:
    """Ids to paths, with the last walk kept: a walk happens only for an id it
    has not seen, at most once per call, so a storm of kills in one group costs
    one walk. A group made and removed between two calls stays unnamed."""

    def __init__(self, mountinfo_path: Path = hostfs.DEFAULT_MOUNTINFO) -> None:
        self.mountinfo_path = mountinfo_path
        self._paths: dict[int, str] = {}
        self.walks = 0

    def paths(self, ids: Iterable[int | None]) -> dict[int, str]:
        """The paths of those of `ids` it can name now."""
        want = {i for i in ids if i}
        if want - self._paths.keys():
            try:
                where = memory_hierarchy(mountinfo.read(self.mountinfo_path))
            except OSError:
                where = None
            if where is not None:
                self._paths = walk(*where)
                self.walks += 1
        return {i: self._paths[i] for i in want if i in self._paths}
