# SPDX-License-Identifier: Apache-2.0
"""Files shipped for deployment: they must parse and agree with the code."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from allocwatch import config

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_the_defaults():
    assert config.load(ROOT / "deploy" / "allocwatch.yaml", {}) == config.Config()


def test_example_config_names_every_key():
    """Every key, set or in a comment, so that the file the service reads tells all it may say."""
    from allocwatch.config.schema import KEYS

    text = (ROOT / "deploy" / "allocwatch.yaml").read_text()
    missing = [k for k in KEYS if not re.search(rf"^#? ?{k}:", text, re.M)]
    assert not missing, missing


INSTALLED_EXE = "/opt/allocwatch/bin/allocwatch"  # where scripts/install puts it
EXPOSURE_MAX = 3.0  # docs/service.md says the figure


def _unit_here(tmp_path: Path) -> Path:
    """The shipped unit, pointed at this checkout's allocwatch (verify checks the file exists)."""
    exe = Path(sys.executable).parent / "allocwatch"
    assert exe.exists(), f"{exe} is not installed (scripts/setup installs it)"
    unit = (ROOT / "systemd" / "allocwatch.service").read_text()
    assert f"ExecStart={INSTALLED_EXE} run" in unit
    path = tmp_path / "allocwatch.service"
    path.write_text(unit.replace(INSTALLED_EXE, str(exe)))
    return path


@pytest.mark.requires_tool("systemd-analyze")
def test_unit_file_verifies(tmp_path):
    proc = subprocess.run(["systemd-analyze", "verify", str(_unit_here(tmp_path))], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # not even a warning


@pytest.mark.requires_tool("systemd-analyze")
def test_unit_exposure_is_at_most_the_documented_figure(tmp_path):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_unit_here(tmp_path))],
        capture_output=True, text=True, check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout[-500:] + proc.stderr
    exposure = float(m.group(1))
    assert exposure <= EXPOSURE_MAX, proc.stdout
    service = (ROOT / "docs" / "service.md").read_text()
    assert f"exposure {exposure:.1f}" in service, f"docs/service.md must say the exposure figure ({exposure:.1f})"


def test_pip_install_into_a_venv_with_system_site_packages(tmp_path):
    """`pip install .` resolves every required dependency from Debian's packages
    (systemd-python is an extra: nothing has to be built from C)."""
    src = tmp_path / "src"  # a copy: a build leaves files behind
    for name in ("allocwatch", "bpf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation", "--no-index", str(src)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = subprocess.run([str(venv / "bin" / "allocwatch"), "--version"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.startswith("allocwatch "), out
