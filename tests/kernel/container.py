# SPDX-License-Identifier: Apache-2.0
"""A real systemd to test the service under: this machine's own /usr booted by
systemd-nspawn as a throw-away container.

`--volatile=yes` gives the container a tmpfs root with this machine's /usr
read-only in it: whatever the test installs (/opt, /etc) vanishes with it, and
the host's mounts, cgroups, /dev and /tmp are left alone. tracefs is bound in
(bcc reads it) and the checkout is bound read-only at its own path. Never boot
systemd with a bare `unshare` instead: that shares /tmp, /sys/fs/cgroup and
/dev with the host and changes them for everyone.

The container is named with a per-run suffix and always powered off (killed
if it will not go) by `close()`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

BOOT_TIMEOUT_S = 90.0


class ContainerError(RuntimeError):
    pass


class Container:
    def __init__(self, checkout: Path, prefix: str = "aw-svc") -> None:
        nspawn = shutil.which("systemd-nspawn")
        if nspawn is None:
            raise ContainerError("systemd-nspawn is not installed (scripts/setup --dev installs systemd-container)")
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.log_path = Path(f"/tmp/{self.name}.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                nspawn, "-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "-M", self.name,
                "--capability=all", "--system-call-filter=bpf perf_event_open",
                "--bind=/sys/kernel/tracing", f"--bind-ro={checkout}",
                "-b", "--", "systemd.firstboot=off",
                # units of this machine's image that must not start in a copy of it; wait-online
                # (pulled in with podman's networking) would hold the boot at "starting" for 2 min
                *(f"systemd.mask={u}" for u in (
                    "postgresql.service", "prometheus.service", "systemd-networkd-wait-online.service",
                    "podman.service", "podman.socket", "podman-restart.service", "podman-auto-update.timer",
                    "cni-dhcp.service", "cni-dhcp.socket", "fio.service")),
            ],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.leader = 0
        try:
            self._wait_booted()
        except BaseException:
            self.close()
            raise

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited {self.proc.returncode}: {self.log_tail()}")
            if not self.leader:
                self.leader = self._find_leader()
            if self.leader:
                state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.5)
        raise ContainerError(f"the container's systemd did not come up in {BOOT_TIMEOUT_S:.0f}s: {self.log_tail()}")

    def _find_leader(self) -> int:
        """The container's PID 1: nspawn's child whose comm is systemd."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return 0

    def run(self, argv: list[str], check: bool = True, timeout_s: float = 120.0, input_text: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (all of its namespaces)."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True,
            timeout=timeout_s, check=False, input=input_text,
        )
        if check and proc.returncode != 0:
            raise ContainerError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc

    def sh(self, script: str, check: bool = True, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], check=check, timeout_s=timeout_s)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.leader:
                self.run(["systemctl", "poweroff"], check=False, timeout_s=30)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own nspawn: it takes the container with it
                self.proc.wait(30)
        self._log.close()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
