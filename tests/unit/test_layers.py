"""The package's layers and their import rule (DESIGN: kernel -> core <- outputs).

core imports only the standard library and core; kernel and outputs import
core, never each other; only kernel/bpfsource imports bcc. The built wheel
holds every module and each of them imports.
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "allocwatch"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).glob("*.py"))


def test_core_imports_only_the_standard_library_and_core():
    for path in _modules("core"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "allocwatch":
                assert name.startswith("allocwatch.core"), f"{path.name} imports {name}"
            else:
                assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


@pytest.mark.parametrize(("layer", "other"), [("kernel", "outputs"), ("outputs", "kernel")])
def test_kernel_and_outputs_never_import_each_other(layer, other):
    for path in _modules(layer):
        bad = [n for n in _imports(path) if n.startswith(f"allocwatch.{other}")]
        assert not bad, f"{layer}/{path.name} imports {bad}"


def test_only_bpfsource_imports_bcc():
    importers = {p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py") if any(
        n.split(".")[0] == "bcc" for n in _imports(p))}
    assert importers == {"kernel/bpfsource.py"}


def test_built_wheel_holds_and_imports_every_module(tmp_path):
    src = tmp_path / "src"  # built from a copy, so the checkout gets no build/ directory
    for name in ("allocwatch", "bpf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(src)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("allocwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in PKG.rglob("*.py")}
    assert sources <= names, sources - names
    assert {"allocwatch/bpf/allocwatch.bpf.c", "allocwatch/bpf/allocwatch.h"} <= names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    mods = sorted(
        n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py") and "__main__" not in n
    )
    code = (
        f"import importlib, sys; sys.path.insert(0, {str(unpacked)!r}); "
        f"files = [importlib.import_module(m).__file__ for m in {mods!r}]; "
        f"assert all(f.startswith({str(unpacked)!r}) for f in files), files; "
        # the installed package finds its BPF source in itself, not in a checkout
        f"from allocwatch.kernel.bpfsource import bpf_dir; d = bpf_dir(); "
        f"assert str(d) == {str(unpacked / 'allocwatch' / 'bpf')!r}, d"
    )
    # -I: no user site, no editable-install finder of the checkout in the way
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert importlib.import_module("allocwatch.core.model")


def test_the_environment_read_is_a_short_known_list():
    """No variable points the root daemon at code to compile (an ALLOCWATCH_BPF_DIR did once):
    the product reads only these, and each ALLOCWATCH_* one is in docs/testing.md as a test switch."""
    pattern = re.compile(r'(?:environ|env)(?:\.get\(|\[)"([A-Z_]+)"|"([A-Z_]+)" (?:not )?in env|getenv\("([A-Z_]+)"')
    read = set()
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        read |= {next(g for g in m.groups() if g) for m in pattern.finditer(text)}
        unnamed = [ln for ln in text.splitlines()  # a name that is not a literal cannot be checked here
                   if re.search(r"getenv\(|environ\[|environ\.get\(", ln) and not pattern.search(ln)]
        assert not unnamed, f"{path.name}: {unnamed}"
    assert read == {"ALLOCWATCH_TEST_WEDGE", "NOTIFY_SOCKET", "NO_COLOR", "TERM"}
    testing = (ROOT / "docs" / "testing.md").read_text()
    assert all(name in testing for name in read if name.startswith("ALLOCWATCH_"))
