"""Fixtures the kernel tests share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel import memcg
from tests.kernel.daemonproc import Daemon


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    """Start real daemons (`config=` YAML text goes to a scratch file); every one
    left running is killed, and every scratch file removed, after the test."""
    started: list[Daemon] = []
    configs: list[Path] = []

    def start(*args: str, config: str | None = None) -> Daemon:
        if config is not None:
            fd, name = tempfile.mkstemp(prefix="aw-config-", suffix=".yaml")
            with open(fd, "w") as f:
                f.write(config)
            configs.append(Path(name))
            args = ("--config", name, *args)
        d = Daemon(*args)
        started.append(d)
        d.wait_ready()
        return d

    yield start
    for d in started:
        d.kill()
    for c in configs:
        c.unlink(missing_ok=True)


@pytest.fixture
def world_readable_copy():
    """The package and its BPF sources in a world-readable scratch directory,
    run with the system interpreter: tests that drop privileges do not depend
    on where the checkout is."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing")
    root = Path(__file__).resolve().parents[2]
    copy = Path(tempfile.mkdtemp(prefix="aw-copy-"))
    try:
        copy.chmod(0o755)
        shutil.copytree(root / "allocwatch", copy / "allocwatch")
        shutil.copytree(root / "bpf", copy / "bpf")
        yield copy
    finally:
        shutil.rmtree(copy)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that needs the other cgroup version's memory controller skips,
    saying which it needs, unless kernel tests are required (CI): then it fails."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not call.excinfo.errisinstance(memcg.NeedsCgroupVersion):
        return
    if os.environ.get("CI") or os.environ.get("ALLOCWATCH_REQUIRE_KERNEL_TESTS") == "1":
        return
    report.outcome = "skipped"
    report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {call.excinfo.value}")
