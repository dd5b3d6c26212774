# SPDX-License-Identifier: Apache-2.0
"""allocwatch(8), made from the argument parser by scripts/manpage: every option of every
subcommand is in it, no line of it is lost to roff, its exit codes are the code's; and
`allocwatch --version` says the package's version."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import allocwatch
from allocwatch import errors
from allocwatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _roff(text: str) -> str:
    return text.replace("-", r"\-")


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    if importlib.util.find_spec("argparse_manpage") is None:
        if os.environ.get("ALLOCWATCH_REQUIRE_KERNEL_TESTS"):
            pytest.fail("argparse-manpage is not installed (scripts/setup --dev installs it)")
        pytest.skip("argparse-manpage is not installed (scripts/setup --dev installs it)")
    out = tmp_path_factory.mktemp("man") / "allocwatch.8"
    proc = subprocess.run([str(ROOT / "scripts" / "manpage"), sys.executable, str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]


def _section(page: str, heading: str) -> str:
    start = page.index(heading)
    nxt = page.find("\n.SH", start + len(heading))
    return page[start : nxt if nxt != -1 else None]


def test_the_page_is_section_8_of_this_version(page):
    assert page.startswith('.TH ALLOCWATCH "8" ')
    assert f'"allocwatch {allocwatch.__version__}"' in page.splitlines()[0]


def test_every_option_of_every_subcommand_is_in_the_page(page):
    subs = _subcommands()
    assert set(subs) == {"run", "probes", "top", "reload"}
    for name, parser in subs.items():
        options = _options(parser)
        assert options, name
        section = _section(page, f"'allocwatch {name}'" + r"\/\fR" + "\n.TP")
        for opt in options:
            assert rf"\fB{_roff(opt)}\fR" in section, f"allocwatch {name} {opt} is not in the man page"
    assert rf"\fB{_roff('--version')}\fR" in page


def test_no_line_is_read_as_a_roff_request_and_lost(page):
    """A line starting with ' is a roff request: a help text wrapped there would vanish."""
    assert not [ln for ln in page.splitlines() if ln.startswith("'")]
    assert "'' for none" in page  # the --metrics-addr help that once wrapped there


def test_exit_status_lists_the_codes_of_the_code(page):
    listed = {int(m) for m in re.findall(r"^\.B (\d+)$", _section(page, ".SH EXIT STATUS"), re.M)}
    codes = {errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_USAGE}
    codes |= {c.exit_code for c in vars(errors).values()
              if isinstance(c, type) and issubclass(c, errors.AllocwatchError) and c is not errors.AllocwatchError}
    assert listed == codes


def test_version_prints_the_package_version():
    exe = Path(sys.executable).parent / "allocwatch"
    assert exe.exists(), f"{exe} is not installed (scripts/setup installs it)"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"allocwatch {allocwatch.__version__}\n"
