# SPDX-License-Identifier: Apache-2.0
"""What the kernel tests share: every test here is a `kernel` test (root, BPF
and memory cgroups) that needs bpftool (the harness lists the programs loaded
with it); tests/conftest.py decides both before it runs. And the fixtures below."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel.daemonproc import Daemon

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by it
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.kernel)
            item.add_marker(pytest.mark.requires_tool("bpftool"))


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
    on where the checkout is. Its tests are marked requires_tool("setpriv")."""
    root = Path(__file__).resolve().parents[2]
    copy = Path(tempfile.mkdtemp(prefix="aw-copy-"))
    try:
        copy.chmod(0o755)
        shutil.copytree(root / "allocwatch", copy / "allocwatch")
        shutil.copytree(root / "bpf", copy / "bpf")
        yield copy
    finally:
        shutil.rmtree(copy)
