# SPDX-License-Identifier: Apache-2.0
"""tests/kernel/pod.py: the podman command line the DaemonSet's contract test runs is the
manifest's, field by field, and a field it does not mirror is refused, not ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.kernel.pod import DAEMONSET, PodRun, PodSpecError


def test_the_command_line_is_the_manifests():
    run = PodRun("img:x", "aw-pod-unit", network="aw-net", cgroup_parent="/aw-cg")
    try:
        argv = run.argv
        assert "--pid=host" in argv and "--read-only" in argv and "--read-only-tmpfs=false" in argv
        caps = [a.split("=", 1)[1] for a in argv if a.startswith("--cap-add=")]
        assert sorted(caps) == sorted(f"CAP_{c}" for c in ("BPF", "PERFMON", "SYS_ADMIN", "DAC_READ_SEARCH",
                                                           "SYS_PTRACE", "SYSLOG"))
        assert "--cap-drop=all" in argv and "--privileged" not in argv
        assert "-p" not in argv and "--network=aw-net" in argv and run.ports == [19464]  # the pod's own address
        assert "--cgroup-parent=/aw-cg" in argv
        assert argv[argv.index("--memory") + 1] == str(256 << 20)
        mounts = [argv[i + 1] for i, a in enumerate(argv) if a in ("-v", "--mount")]
        assert "/sys/kernel/tracing:/sys/kernel/tracing:rw" in mounts
        assert "/lib/modules:/lib/modules:ro" in mounts and "/usr/src:/usr/src:ro" in mounts
        assert "/sys/fs/cgroup:/sys/fs/cgroup:ro" in mounts
        assert "type=tmpfs,destination=/run,tmpfs-mode=0777,tmpfs-size=1048576" in mounts  # the socket's emptyDir
        tmp = next(m for m in mounts if m.endswith(":/tmp:rw"))
        assert (run.scratch / "tmp").stat().st_mode & 0o777 == 0o777  # as a kubelet makes an emptyDir
        assert tmp.startswith(str(run.scratch))
        logs = next(m for m in mounts if m.endswith(":/var/log/pods:ro"))  # DirectoryOrCreate
        assert logs == "/var/log/pods:/var/log/pods:ro" if Path("/var/log/pods").exists() else logs.startswith(
            str(run.scratch)), logs
        entry = json.loads(argv[argv.index("--entrypoint") + 1])
        assert entry[:2] == ["allocwatch", "run"] and argv[-1] == "img:x"
        assert run.grace_s == 30
    finally:
        run.close()
    assert not run.scratch.exists()


def test_a_field_it_does_not_mirror_is_refused(tmp_path):
    docs = [d for d in yaml.safe_load_all(DAEMONSET.read_text()) if d is not None]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["procMount"] = "Unmasked"
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(PodSpecError, match="procMount"):
        PodRun("img:x", "aw-pod-unit", manifest=manifest)
