# SPDX-License-Identifier: Apache-2.0
"""A Kubernetes pod and container from a task's cgroup path, by the kubelet's naming (pure).

The kubelet makes one cgroup per QoS class and one per pod under a root named
`kubepods`: Guaranteed pods directly under it, Burstable and BestEffort pods
under `burstable` and `besteffort`; a pod's group is `pod` and its UID. The
container runtime makes each container's group inside the pod's. The layout
is the same on cgroup v1 (the memory hierarchy's paths) and v2; what differs is
the cgroup driver:

- cgroupfs: `/kubepods/burstable/pod<uid>/<container id>`, and the same for
  `besteffort`; `/kubepods/pod<uid>/<container id>` for Guaranteed. CRI-O names
  its groups `crio-<id>` there too.
- systemd: each level is a slice named after its whole path with `-` between
  the levels and every `-` inside a name written `_` (systemd reads `-` in a
  slice name as nesting): `kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _>.slice`, `kubepods.slice/kubepods-pod<uid>.slice`
  for Guaranteed. Containers are scopes named by the runtime:
  `cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` (CRI-O; its
  monitor is `crio-conmon-<id>.scope`), `docker-<id>.scope` (Docker).

A prefix before `kubepods` (a nested node such as kind's, a kubelet
`--cgroup-root`, the daemon's own cgroup namespace) changes nothing: the path
is matched on its components. A container ID is 64 hex digits; a pod UID is an
RFC 4122 UUID, or 32 hex digits for a static pod (the kubelet's hash of its
manifest). A task in the pod's own group (not in a container's) has no
container ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GUARANTEED, BURSTABLE, BESTEFFORT = "guaranteed", "burstable", "besteffort"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
_CGROUPFS_POD = re.compile(rf"pod({_UID})")
# systemd: the slice's name is the whole path joined by '-' (kubepods[-qos]-pod<uid>), after any root's
_SYSTEMD_POD = re.compile(rf"(?:.+-)?kubepods(?:-(burstable|besteffort))?-pod({_UID})\.slice")
_CONTAINER = re.compile(r"(cri-containerd-|crio-|docker-)?([0-9a-f]{64})(\.scope)?")
_RUNTIMES = {"cri-containerd-": "containerd", "crio-": "cri-o", "docker-": "docker"}
_QOS_DIRS = {"burstable": BURSTABLE, "besteffort": BESTEFFORT}


@dataclass(frozen=True)
class PodRef:
    """What a cgroup path says of a pod; `namespace` and `name` come from elsewhere (the pods log dir)."""

    uid: str  # as the API server gives it: with '-'
    qos: str  # guaranteed, burstable or besteffort
    container_id: str | None = None  # 64 hex digits; None for a task in the pod's own group
    runtime: str | None = None  # containerd, cri-o, docker; None when the name does not say (cgroupfs)
    namespace: str | None = None
    name: str | None = None


def _container(component: str | None) -> tuple[str | None, str | None]:
    if component is None or (m := _CONTAINER.fullmatch(component)) is None:
        return None, None
    prefix, cid, scope = m.groups()
    if scope and not prefix:  # `<id>.scope` is no runtime's name
        return None, None
    return cid, _RUNTIMES.get(prefix) if prefix else None


def parse(cgroup: str | None) -> PodRef | None:
    """The pod (and container) a cgroup path is in, or None when it is no kubelet pod's."""
    if not cgroup or "kubepods" not in cgroup:
        return None
    parts = [p for p in cgroup.split("/") if p]
    for i, part in enumerate(parts):
        if (m := _SYSTEMD_POD.fullmatch(part)) is not None:
            qos = _QOS_DIRS.get(m.group(1) or "", GUARANTEED)
            uid = m.group(2).replace("_", "-")
        elif (m := _CGROUPFS_POD.fullmatch(part)) is not None and "_" not in m.group(1) and i > 0:
            parent = parts[i - 1]
            if parent in _QOS_DIRS and i > 1 and parts[i - 2] == "kubepods":
                qos = _QOS_DIRS[parent]
            elif parent == "kubepods":
                qos = GUARANTEED
            else:
                continue
            uid = m.group(1)
        else:
            continue
        cid, runtime = _container(parts[i + 1] if i + 1 < len(parts) else None)
        return PodRef(uid=uid, qos=qos, container_id=cid, runtime=runtime)
    return None


def metric_labels(ref: PodRef | None) -> tuple[str, str, str]:
    """(namespace, pod, container) for the metrics: the pod's name, else its UID
    when the pods log dir does not name it; all empty for no pod."""
    if ref is None:
        return "", "", ""
    return ref.namespace or "", ref.name or ref.uid, ref.container_id or ""
