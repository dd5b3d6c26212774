# SPDX-License-Identifier: Apache-2.0
"""The package's layers and their import rules (docs/architecture.md).

Each folder is one layer and the wiring is a layer of its own:
- errors.py imports nothing of the package; core/ only the standard library and core;
- kernel/ and outputs/ import core and errors, never each other;
- config/ imports core and errors;
- app/ (the wiring) imports anything but cli and top;
- top/ imports core, errors, config, outputs' formatting (outputs/report.py), app.session,
  app.signals and kernel/procfs.py;
- cli.py imports app, top, config and errors, and nothing imports it but __main__.
There is no import circle, no module reads another module's `_name`, and only
kernel/bpfsource.py imports bcc. The built wheel holds every module and each of them imports.
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

# The package's own modules each layer may import (by dotted prefix), besides itself and `allocwatch`'s __init__.
ALLOWED: dict[str, tuple[str, ...]] = {
    "errors": (),
    "core": ("allocwatch.core",),
    "kernel": ("allocwatch.core", "allocwatch.errors", "allocwatch.kernel"),
    "outputs": ("allocwatch.core", "allocwatch.errors", "allocwatch.outputs"),
    "config": ("allocwatch.core", "allocwatch.errors", "allocwatch.config"),
    "app": ("allocwatch.core", "allocwatch.errors", "allocwatch.config", "allocwatch.kernel", "allocwatch.outputs",
            "allocwatch.app"),
    "top": ("allocwatch.core", "allocwatch.errors", "allocwatch.config", "allocwatch.outputs.report",
            "allocwatch.app.session", "allocwatch.app.signals", "allocwatch.kernel.procfs", "allocwatch.top"),
    "cli": ("allocwatch.app", "allocwatch.top", "allocwatch.config", "allocwatch.errors"),
    "__main__": ("allocwatch.cli",),
    "__init__": (),
}
# Packages from outside the standard library, and the one module each may be imported by.
THIRD_PARTY = {"bcc": "kernel/bpfsource.py", "yaml": "config/yamlfile.py", "systemd": "outputs/journal.py"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Every name imported anywhere in the module (inside functions too), dotted;
    `from a import b` gives both `a` and `a.b`."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _package_imports(path: Path) -> set[str]:
    """The package's own modules `path` imports (a name resolved to the module that defines it)."""
    found = set()
    for imported in _imports(path):
        name = imported
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != "allocwatch":
            found.add(name)
    return found


@pytest.mark.parametrize("path", list(MODULES.values()), ids=list(MODULES))
def test_each_module_imports_only_what_its_layer_may(path):
    layer = _layer(path)
    allowed = ALLOWED[layer]
    for name in _package_imports(path):
        assert name.startswith(allowed), f"{path.relative_to(PKG)} ({layer}) imports {name}"
    for name in _imports(path):
        top = name.split(".")[0]
        if top in THIRD_PARTY:
            assert path.relative_to(PKG).as_posix() == THIRD_PARTY[top], f"{path.relative_to(PKG)} imports {top}"
        elif top != "allocwatch" and layer == "core":
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


def test_only_bpfsource_imports_bcc():
    importers = {p.relative_to(PKG).as_posix() for p in MODULES.values() if any(
        n.split(".")[0] == "bcc" for n in _imports(p))}
    assert importers == {"kernel/bpfsource.py"}


def test_nothing_imports_cli_but_main():
    importers = {m for m, p in MODULES.items() if "allocwatch.cli" in _package_imports(p)}
    assert importers == {"allocwatch.__main__"}


def _circles() -> list[list[str]]:
    graph = {m: sorted(_package_imports(p) - {m}) for m, p in MODULES.items()}
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph.get(m, []):
            if state.get(n) == 1:
                found.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    return found


def test_no_import_circle():
    assert _circles() == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_reads(path: Path) -> list[str]:
    """`x._name` (or getattr(x, "_name")) where x is not self, cls, a class of the module itself
    or a standard library module (os._exit is the standard library's own API), and
    `from allocwatch... import _name`."""
    tree = ast.parse(path.read_text())
    own = {"self", "cls"} | {(a.asname or a.name).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                             for a in n.names if a.name.split(".")[0] in sys.stdlib_module_names}
    own |= {n.name for n in tree.body if isinstance(n, ast.ClassDef)}  # the module's own classes
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in own):
                out.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
            out.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("allocwatch"):
            out += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
    return out


def test_no_module_reads_another_modules_private_names():
    others = [*sorted((ROOT / "bench").glob("*.py")), *sorted((ROOT / "lab").glob("*.py"))]
    reads = {p.relative_to(ROOT).as_posix(): r for p in [*MODULES.values(), *others] if (r := _private_reads(p))}
    assert reads == {}


def test_the_rules_catch_a_circle_and_a_private_read(tmp_path, monkeypatch):
    """The checks above can fail: a module that reads a private name, and two that import each other."""
    bad = tmp_path / "bad.py"
    bad.write_text("from allocwatch.app import daemon\nx = daemon._secret\n")
    assert _private_reads(bad) == ["2: daemon._secret"]
    fake = {"allocwatch.a": tmp_path / "a.py", "allocwatch.b": tmp_path / "b.py"}
    fake["allocwatch.a"].write_text("from allocwatch import b\n")
    fake["allocwatch.b"].write_text("import allocwatch.a\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    assert _circles() == [["allocwatch.a", "allocwatch.b", "allocwatch.a"]]


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


def test_the_daemons_command_line_loads_no_part_of_top_and_no_subprocess():
    """`allocwatch run` parses its command line with top's and reload's arguments
    (top/args.py) but never loads curses, top's views or its socket client, nor
    subprocess (preflight mounts tracefs with it, when it must): together they
    were 0.7 MiB of the daemon's idle memory."""
    code = ("import sys, allocwatch.cli; print(sorted(m for m in sys.modules "
            "if m in ('curses', 'subprocess') or m.startswith('allocwatch.top.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "['allocwatch.top.args']", out.stdout
