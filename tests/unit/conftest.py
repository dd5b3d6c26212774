# SPDX-License-Identifier: Apache-2.0
"""Fixtures shared by the unit tests of the shipped deploy/ files."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:  # a failure, not a skip: these checks are the point of the files
        pytest.fail("promtool is not installed: scripts/setup --dev installs Debian's prometheus (it has promtool)")
    return path
