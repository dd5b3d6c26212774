"""Checks before loading BPF: privileges and tracefs. Each failure is a typed
error whose message names the cause and the fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from allocwatch.errors import NotRoot, TracefsMissing


def require_root(euid: int | None = None) -> None:
    if (os.geteuid() if euid is None else euid) != 0:
        raise NotRoot(
            "allocwatch needs root to load BPF programs (CAP_BPF, CAP_PERFMON and "
            "CAP_SYS_ADMIN for tracepoints): run it with sudo or as a root service"
        )


def ensure_tracefs(tracefs: Path) -> None:
    """Mount tracefs at `tracefs` if its events are not there yet."""
    if (tracefs / "events").is_dir():
        return
    proc = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(tracefs)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not (tracefs / "events").is_dir():
        why = proc.stderr.strip() or "no events directory after mounting"
        raise TracefsMissing(
            f"tracefs is not mounted at {tracefs} and mounting it failed ({why}): "
            f"mount it with 'mount -t tracefs nodev {tracefs}' (needs CONFIG_TRACING)"
        )
