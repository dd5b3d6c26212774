# SPDX-License-Identifier: Apache-2.0
"""The house of the tests: test modules share code through helper modules
(tests/unit/fakes.py, tests/kernel/*.py that are not test_*) and conftest
fixtures, never by importing each other; bench/ and tests/ share only lab/,
and lab/ is the standard library, itself and the product."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# code run in a child process sits in strings: read those too
IMPORT_TEXT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ]+)|import\s+([\w.]+))", re.M)


def _imported(path: Path) -> set[str]:
    """Every module `path` imports (and each `from M import N` as M.N too), in
    its code and in the code it keeps in strings for a child to run."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for m in IMPORT_TEXT.finditer(node.value):
                if m.group(1):
                    names.add(m.group(1))
                    names.update(f"{m.group(1)}.{n.strip()}" for n in m.group(2).split(",") if n.strip())
                else:
                    names.add(m.group(3))
    return names


def _sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_no_module_under_tests_imports_a_test_module():
    bad = {
        p.relative_to(ROOT).as_posix(): sorted(n for n in _imported(p) if n.split(".")[-1].startswith("test_"))
        for p in _sources("tests")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_bench_imports_nothing_from_tests():
    bad = {p.relative_to(ROOT).as_posix(): sorted(n for n in _imported(p) if n.split(".")[0] == "tests")
           for p in _sources("bench")}
    assert not {k: v for k, v in bad.items() if v}


def test_lab_imports_only_the_standard_library_lab_and_the_product():
    bad = {p.relative_to(ROOT).as_posix(): sorted(
               n for n in _imported(p)
               if n.split(".")[0] not in ("lab", "allocwatch") and n.split(".")[0] not in sys.stdlib_module_names
               and n != "__future__"
               and not n.startswith("__future__."))
           for p in _sources("lab")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_layout_rules_see_what_they_look_for(tmp_path):
    """The reader above finds a test module imported in code and in a child's code."""
    probe = tmp_path / "probe.py"  # written from a template the reader does not take for an import itself
    probe.write_text('from tests.unit import {a}\nCHILD = """\nfrom tests.unit.{b} import X\n"""\n'.format(
        a="test_daemon", b="test_mapread"))
    names = _imported(probe)
    assert "tests.unit.test_daemon" in names and "tests.unit.test_mapread" in names
