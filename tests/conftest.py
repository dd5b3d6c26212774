# SPDX-License-Identifier: Apache-2.0
"""Shared pytest set-up: the repository root on sys.path (tests import `lab`
and `tests...`); markers are registered in pyproject.toml. tests/guest runs
only inside a guest kernel (scripts/test-guest sets ALLOCWATCH_GUEST).

What a test needs of the machine is said by its markers and decided here,
before the test (and its fixtures) run: `kernel` (root, to load BPF programs
and make memory cgroups; tests/kernel/conftest.py gives it to every test
there), `requires_cgroup_v1_memory`, `requires_cgroup_v2_memory`,
`requires_cgroup_v1_blkio` (lab/slowdisk.py's throttle) and
`requires_tool(NAME, ...)`. A test whose need is not met skips, saying which;
where the tests are required to run (CI set, or ALLOCWATCH_REQUIRE_KERNEL_TESTS=1)
it fails instead."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

collect_ignore = [] if os.environ.get("ALLOCWATCH_GUEST") else ["guest"]


def _required() -> bool:
    """Kernel tests must run here (CI, or ALLOCWATCH_REQUIRE_KERNEL_TESTS=1), not skip."""
    return bool(os.environ.get("CI")) or os.environ.get("ALLOCWATCH_REQUIRE_KERNEL_TESTS") == "1"


def _unmet(item: pytest.Item) -> str | None:
    """Why `item` cannot run on this machine, by its markers; None if it can."""
    if item.get_closest_marker("kernel") is not None and os.geteuid() != 0:
        return f"needs root: kernel tests load BPF programs and make memory cgroups (euid {os.geteuid()})"
    for mark in item.iter_markers("requires_tool"):
        missing = [name for name in mark.args if shutil.which(name) is None]
        if missing:
            return f"needs {', '.join(missing)} on PATH (scripts/setup --dev installs it)"
    if item.get_closest_marker("requires_cgroup_v1_blkio") is not None:
        from lab import slowdisk

        if not slowdisk.BLKIO_RULE.exists():
            return f"needs the cgroup v1 blkio controller: {slowdisk.BLKIO_RULE} is not there (the slow disk's rule)"
    wanted = [v for v in (1, 2) if item.get_closest_marker(f"requires_cgroup_v{v}_memory") is not None]
    if wanted:
        from lab import memcg

        have = memcg.memory_controller_version()
        if have not in wanted:
            here = f"cgroup v{have}" if have else "none"
            return f"needs cgroup v{wanted[0]} memory: this machine's memory controller is {here}"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = _unmet(item)
    if reason is None:
        return
    if _required():
        pytest.fail(reason + "; kernel tests are required here (CI or ALLOCWATCH_REQUIRE_KERNEL_TESTS=1)")
    pytest.skip(reason)
