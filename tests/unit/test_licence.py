# SPDX-License-Identifier: Apache-2.0
"""Every source file says its licence in an SPDX line near its top: the BPF C
`GPL-2.0-only OR BSD-2-Clause` (the kernel wants a GPL-compatible licence for the
helpers it calls), everything else Apache-2.0; and the licence texts are beside them."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BPF_LICENCE = "GPL-2.0-only OR BSD-2-Clause"
# Files that cannot carry a comment or are not source: prose, data, captured kernels.
NOT_SOURCE = (".md", ".json", ".txt", ".gitignore")


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _source_files() -> list[str]:
    return [f for f in _tracked() if not f.startswith(("tests/fixtures/", "LICENSE")) and not f.endswith(NOT_SOURCE)]


def _spdx(path: Path) -> str | None:
    for line in path.read_text(errors="replace").splitlines()[:3]:
        if "SPDX-License-Identifier:" in line:
            return line.split("SPDX-License-Identifier:", 1)[1].strip()
    return None


def test_every_source_file_has_its_spdx_line():
    files = _source_files()
    assert len(files) > 150, files  # the walk found the tree
    wrong = {}
    for f in files:
        want = BPF_LICENCE if f.startswith("bpf/") else "Apache-2.0"
        if (found := _spdx(ROOT / f)) != want:
            wrong[f] = found
    assert wrong == {}


def test_the_licence_texts_are_there():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    for name in BPF_LICENCE.split(" OR "):
        assert (ROOT / "LICENSES" / f"{name}.txt").stat().st_size > 1000 or name == "BSD-2-Clause"
    assert "Redistribution and use in source and binary forms" in (ROOT / "LICENSES" / "BSD-2-Clause.txt").read_text()


def test_a_file_without_the_line_is_found(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('"""No licence line."""\n')
    assert _spdx(f) is None
