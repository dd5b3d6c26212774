# SPDX-License-Identifier: Apache-2.0
"""The DaemonSet's pod under podman: the container of
deploy/kubernetes/allocwatch-daemonset.yaml run with what the manifest gives it,
read from the manifest itself, so a change there is a change here.

What is mirrored, field by field: hostPID (--pid=host); hostNetwork false (a
network namespace of its own on a bridge; as in a cluster, Prometheus scrapes
the pod's own address, no port is published on the host); runAsUser; readOnlyRootFilesystem (--read-only, and none of
podman's own tmpfs mounts, which a kubelet does not make); capabilities (drop
ALL, add the listed ones only); seccompProfile RuntimeDefault (podman's default
profile) or Unconfined; the AppArmor annotation; the memory limit; every volume
(a hostPath bound at its mountPath, read-only as the mount says; an emptyDir as
a kubelet makes it: a fresh directory of mode 0777 on disk, a tmpfs of mode 0777
for medium Memory); command and args. A field of the container or the pod that
this module does not know fails the build of the command line, so nothing in
the manifest goes untested by accident.

Not mirrored, with the reason: the probes (the test scrapes /metrics itself);
the priority class (the kubelet gives oom_score_adj -997; lowering it needs
CAP_SYS_RESOURCE, which root here lacks); tolerations, service account, CPU
requests (scheduling only). Podman sets RLIMIT_NOFILE and RLIMIT_NPROC in every
container where containerd leaves its own; root here cannot raise them, so
they are set to this process's NOFILE and an NPROC under its hard limit.
"""

from __future__ import annotations

import json
import resource
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "deploy" / "kubernetes" / "allocwatch-daemonset.yaml"

MIRRORED_POD = {"hostPID", "hostNetwork", "containers", "volumes", "terminationGracePeriodSeconds"}
SCHEDULING_ONLY_POD = {"serviceAccountName", "automountServiceAccountToken", "priorityClassName", "tolerations"}
MIRRORED_CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "ports", "securityContext",
                      "resources", "volumeMounts", "env"}
PROBES = {"startupProbe", "readinessProbe", "livenessProbe"}
MIRRORED_SECURITY = {"privileged", "runAsUser", "runAsNonRoot", "readOnlyRootFilesystem", "seccompProfile",
                     "capabilities"}
APPARMOR = "container.apparmor.security.beta.kubernetes.io/"


class PodSpecError(ValueError):
    pass


def daemonset(manifest: Path = DAEMONSET) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d is not None]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    return ds


def podman() -> list[str]:
    """podman, with runc where crun refuses this host's hybrid cgroups (as scripts/build-image decides)."""
    unified = Path("/sys/fs/cgroup/unified")
    hybrid = unified.is_dir() and (unified / "cgroup.controllers").exists()
    return ["podman", "--runtime", "runc"] if hybrid and shutil.which("runc") else ["podman"]


def ulimits() -> list[str]:
    """podman's --ulimit flags for limits root here may set (see the module's docstring)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=32768:32768"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def _unknown(what: str, have: dict[str, Any], known: set[str]) -> None:
    extra = set(have) - known
    if extra:
        raise PodSpecError(f"{what}: {sorted(extra)} not mirrored by tests/kernel/pod.py: mirror them there")


class PodRun:
    """The `podman run` command line of the DaemonSet's one container.

    `scratch` holds the emptyDir directories (removed by `close()`); `ports`
    the container ports, reached at the pod's address."""

    def __init__(self, image: str, name: str, manifest: Path = DAEMONSET,
                 network: str | None = None, cgroup_parent: str | None = None) -> None:
        """`network` and `cgroup_parent` stand for what a kubelet makes around the
        container: the pod's own network and its cgroup."""
        ds = daemonset(manifest)
        template = ds["spec"]["template"]
        spec = template["spec"]
        _unknown("pod spec", spec, MIRRORED_POD | SCHEDULING_ONLY_POD)
        (c,) = spec["containers"]
        _unknown("container", c, MIRRORED_CONTAINER | PROBES)
        sc = c.get("securityContext", {})
        _unknown("securityContext", sc, MIRRORED_SECURITY)
        if sc.get("privileged"):
            raise PodSpecError("privileged: true is not what this test checks")
        self.grace_s = int(spec.get("terminationGracePeriodSeconds", 30))
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        argv = [*podman(), "run", "--name", name, "--user", str(sc.get("runAsUser", 0))]
        argv.append("--pid=host" if spec.get("hostPID") else "--pid=private")
        if spec.get("hostNetwork"):
            argv.append("--network=host")
        elif network:
            argv.append(f"--network={network}")
        if cgroup_parent:
            argv += [f"--cgroup-parent={cgroup_parent}", "--cgroups=no-conmon"]
        self.ports = [int(p["containerPort"]) for p in c.get("ports", [])]
        if sc.get("readOnlyRootFilesystem"):
            argv += ["--read-only", "--read-only-tmpfs=false"]
        caps = sc.get("capabilities", {})
        argv += [f"--cap-drop={d.lower()}" for d in caps.get("drop", [])]
        argv += [f"--cap-add=CAP_{a}" for a in caps.get("add", [])]
        seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            argv += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":
            raise PodSpecError(f"seccompProfile {seccomp} not mirrored")
        apparmor = template["metadata"].get("annotations", {}).get(APPARMOR + c["name"])
        if apparmor == "unconfined":
            argv += ["--security-opt", "apparmor=unconfined"]
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        if limit:
            argv += ["--memory", str(_bytes(limit))]
        argv += self._volumes(spec.get("volumes", []), c.get("volumeMounts", []))
        for env in c.get("env", []):
            argv += ["--env", f"{env['name']}={env['value']}"]
        argv += ulimits()
        if "command" in c:
            argv += ["--entrypoint", json.dumps(c["command"])]
        argv.append(image)
        argv += c.get("args", [])
        self.argv = argv
        self.command = c.get("command")

    def _volumes(self, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> list[str]:
        by_name = {v["name"]: v for v in volumes}
        out: list[str] = []
        for m in mounts:
            _unknown(f"volumeMount {m['name']}", m, {"name", "mountPath", "readOnly"})
            v = by_name[m["name"]]
            ro = bool(m.get("readOnly"))
            if "hostPath" in v:
                host = Path(v["hostPath"]["path"])
                kind = v["hostPath"].get("type")
                if kind == "Directory" and not host.is_dir():
                    raise PodSpecError(f"hostPath {host} (type Directory) is not a directory here")
                if kind == "DirectoryOrCreate" and not host.exists():
                    # the kubelet would make it, empty; an empty scratch directory is the same
                    # to the pod, and this machine is left as it was
                    host = self.scratch / f"hostpath-{v['name']}"
                    host.mkdir()
                out += ["-v", f"{host}:{m['mountPath']}:{'ro' if ro else 'rw'}"]
            elif "emptyDir" in v:
                if v["emptyDir"].get("medium") == "Memory":
                    opts = f"type=tmpfs,destination={m['mountPath']},tmpfs-mode=0777"
                    if "sizeLimit" in v["emptyDir"]:
                        opts += f",tmpfs-size={_bytes(v['emptyDir']['sizeLimit'])}"
                    out += ["--mount", opts + (",ro" if ro else "")]
                else:
                    d = self.scratch / v["name"]
                    d.mkdir()
                    d.chmod(0o777)  # as the kubelet makes an emptyDir
                    out += ["-v", f"{d}:{m['mountPath']}:{'ro' if ro else 'rw'}"]
            else:
                raise PodSpecError(f"volume {v['name']}: {sorted(v)} not mirrored")
        return out

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def remove_cgroup(name: str) -> None:
    """Remove the cgroup /`name`, made by --cgroup-parent, and what is under it, in every hierarchy."""
    for parent in Path("/sys/fs/cgroup").glob(f"*/{name}"):
        for d in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            d.rmdir()
        parent.rmdir()


def cni_chains() -> set[tuple[str, str]]:
    """The (table, chain) pairs of iptables whose chain is CNI's (CNI-*)."""
    out: set[tuple[str, str]] = set()
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
        out |= {(table, line.split()[1]) for line in rules.splitlines() if line.startswith("-N CNI-")}
    return out


def remove_cni_chains(chains: set[tuple[str, str]]) -> None:
    """Remove these chains, and the rules of other chains that jump to them: what
    podman's CNI plugins leave behind once the last network is gone."""
    for table in {t for t, _ in chains}:
        names = {c for t, c in chains if t == table}
        rules = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
        for line in rules.splitlines():
            parts = shlex.split(line)
            jumps_to = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if parts[:1] == ["-A"] and parts[1] not in names and jumps_to in names:
                subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True, check=False)
        for name in names:
            subprocess.run(["iptables", "-t", table, "-F", name], capture_output=True, check=False)
        for name in names:
            subprocess.run(["iptables", "-t", table, "-X", name], capture_output=True, check=False)
