"""Files shipped for deployment: they must parse and agree with the code."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from allocwatch import config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_the_defaults():
    assert config.load(ROOT / "deploy" / "allocwatch.yaml", {}) == config.Config()


def test_unit_file_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "allocwatch"
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (scripts/setup installs it)")
    unit = (ROOT / "systemd" / "allocwatch.service").read_text()
    assert "ExecStart=/usr/local/bin/allocwatch run" in unit
    (tmp_path / "allocwatch.service").write_text(unit.replace("/usr/local/bin/allocwatch", str(exe)))
    proc = subprocess.run(
        [analyze, "verify", str(tmp_path / "allocwatch.service")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
