# SPDX-License-Identifier: Apache-2.0
"""scripts/install and scripts/uninstall, the real scripts, run in a scratch root
(`--destdir`, which neither sets up the machine nor calls systemctl): a fresh install
lists every path it made with its checksum; running it again over its own install
replaces its files, and its configuration file while nobody changed it, keeps an edited
one and says so; what it did not make (an /opt/allocwatch, a bin/allocwatch) is left
alone, intact, with exit 18, unless --force; uninstall removes exactly what install made
and still is as made, keeps and names what changed, touches nothing else and follows no
symbolic link out of the root. The service itself, installed for real under systemd,
is tests/kernel/test_service_kernel.py."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPT = "opt/allocwatch"
MANIFEST = f"{OPT}/install-manifest"
CONF = "etc/allocwatch/allocwatch.yaml"
UNIT = "etc/systemd/system/allocwatch.service"
LINK = "usr/local/bin/allocwatch"
MAN = "usr/local/share/man/man8/allocwatch.8"
IN_THE_WAY = 18  # the exit code scripts/install --help and docs/install.md give
CHECKOUT = ("scripts", "pyproject.toml", "README.md", "allocwatch", "bpf", "deploy", "systemd", "man")


def _run(script: str, root: Path, *args: str, checkout: Path = ROOT, manlib: Path | None = None
         ) -> subprocess.CompletedProcess[str]:
    argv = [str(checkout / "scripts" / script), "--destdir", str(root), *args]
    if manlib is not None:
        argv += ["--manpage-lib", str(manlib)]
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)


def _tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under root, as (kind, sha256 or link target); no link is followed."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", "-")
            else:
                out[rel] = ("f", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _manifest(root: Path) -> dict[str, tuple[str, str]]:
    entries = {}
    for line in (root / MANIFEST).read_text().splitlines():
        if line and not line.startswith("#"):
            kind, value, path = line.split("\t")
            assert path.startswith("/"), line
            entries[path[1:]] = (kind, value)
    return entries


def _assert_manifest_is_the_tree(root: Path, foreign: frozenset[str] = frozenset()) -> None:
    """What the manifest lists is exactly what is there, as it is, but for `foreign` (and the manifest)."""
    tree = {p: e for p, e in _tree(root).items() if p not in foreign and p != MANIFEST}
    assert _manifest(root) == tree


@pytest.fixture(scope="module")
def manlib(tmp_path_factory) -> Path:
    """argparse-manpage for scripts/manpage, from this interpreter, so that no test fetches it."""
    spec = importlib.util.find_spec("argparse_manpage")
    if spec is None or spec.origin is None:
        if os.environ.get("CI") or os.environ.get("ALLOCWATCH_REQUIRE_KERNEL_TESTS"):
            pytest.fail("argparse-manpage is not installed (scripts/setup --dev installs it)")
        pytest.skip("argparse-manpage is not installed (scripts/setup --dev installs it)")
    lib = tmp_path_factory.mktemp("manpage-lib")
    shutil.copytree(Path(spec.origin).parent, lib / "argparse_manpage", ignore=shutil.ignore_patterns("__pycache__"))
    return lib


@pytest.fixture(scope="module")
def first_install(tmp_path_factory, manlib) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    """One fresh install into an empty root, and a copy of it: a venv runs only where it was
    made, so each test gets it back at the same path (the `installed` fixture)."""
    base = tmp_path_factory.mktemp("install")
    root = base / "root"
    root.mkdir()
    proc = _run("install", root, manlib=manlib)
    assert proc.returncode == 0, proc.stderr
    saved = base / "saved"
    subprocess.run(["cp", "-a", str(root), str(saved)], check=True)
    return root, saved, proc


@pytest.fixture
def installed(first_install) -> Path:
    root, saved, _ = first_install
    shutil.rmtree(root)
    subprocess.run(["cp", "-a", str(saved), str(root)], check=True)
    return root


@pytest.fixture
def newer(tmp_path) -> Path:
    """A checkout of a later version: another default configuration, another package file."""
    co = tmp_path / "checkout"
    co.mkdir()
    for name in CHECKOUT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, co / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, co / name)
    with open(co / "deploy" / "allocwatch.yaml", "a") as f:
        f.write("# a later version's defaults\n")
    with open(co / "allocwatch" / "__init__.py", "a") as f:
        f.write("# a later version\n")
    return co


def _site_packages(root: Path) -> Path:
    (sp,) = (root / OPT / "lib").glob("python3*/site-packages")
    return sp


def test_a_fresh_install_lists_every_path_it_made_with_its_checksum(first_install):
    root, saved, proc = first_install
    _assert_manifest_is_the_tree(saved)
    m = _manifest(saved)
    assert m[LINK] == ("l", "/opt/allocwatch/bin/allocwatch")
    assert m[MAN] == ("l", "/opt/allocwatch/share/man/man8/allocwatch.8")
    assert (saved / OPT / "share/man/man8/allocwatch.8").read_text().startswith('.TH ALLOCWATCH "8"')
    assert (saved / CONF).read_bytes() == (ROOT / "deploy" / "allocwatch.yaml").read_bytes()
    assert (saved / UNIT).read_bytes() == (ROOT / "systemd" / "allocwatch.service").read_bytes()
    # every directory it had to make, from the root down, is listed as made
    for d in ("opt", "usr", "usr/local", "usr/local/bin", "etc", "etc/allocwatch", "etc/systemd/system"):
        assert m[d] == ("d", "-"), d
    assert f"wrote /{CONF}" in proc.stderr and "is not set up" in proc.stderr
    version = subprocess.run([str(root / OPT / "bin" / "allocwatch"), "--version"], capture_output=True,
                             text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("allocwatch "), version


def test_install_again_replaces_its_own_files_and_an_unedited_config_then_uninstall_leaves_nothing(
        installed, newer, manlib):
    before = _manifest(installed)
    proc = _run("install", installed, checkout=newer, manlib=manlib)
    assert proc.returncode == 0, proc.stderr
    assert "left alone" not in proc.stderr and "kept" not in proc.stderr, proc.stderr
    assert f"wrote /{CONF}: unchanged since install" in proc.stderr
    assert (installed / CONF).read_text().endswith("# a later version's defaults\n")
    assert (_site_packages(installed) / "allocwatch" / "__init__.py").read_text().endswith("# a later version\n")
    _assert_manifest_is_the_tree(installed)
    assert _manifest(installed)[CONF] != before[CONF]  # the new default's checksum

    out = _run("uninstall", installed)
    assert out.returncode == 0, out.stderr
    assert "kept" not in out.stderr, out.stderr  # the unedited configuration is install's: removed
    assert _tree(installed) == {}


def test_an_edited_config_is_kept_on_upgrade_and_on_uninstall_and_said(installed, newer, manlib):
    edited = (installed / CONF).read_text() + "threshold_s: 5\n"
    (installed / CONF).write_text(edited)
    proc = _run("install", installed, checkout=newer, manlib=manlib)
    assert proc.returncode == 0, proc.stderr
    assert f"kept /{CONF}: changed since install" in proc.stderr
    assert (installed / CONF).read_text() == edited
    assert (installed / OPT / "allocwatch.yaml.default").read_text().endswith("# a later version's defaults\n")
    # still listed with what install wrote, so that a later install or uninstall knows it changed
    m = _manifest(installed)
    assert m.pop(CONF) == ("f", hashlib.sha256((ROOT / "deploy" / "allocwatch.yaml").read_bytes()).hexdigest())
    assert m == {p: e for p, e in _tree(installed).items() if p not in (CONF, MANIFEST)}

    out = _run("uninstall", installed)
    assert out.returncode == 0, out.stderr
    assert f"kept /{CONF}: changed since install" in out.stderr
    assert _tree(installed) == {"etc": ("d", "-"), "etc/allocwatch": ("d", "-"),
                                CONF: ("f", hashlib.sha256(edited.encode()).hexdigest())}
    purge = _run("uninstall", installed, "--purge")
    assert purge.returncode == 0 and f"removed /{CONF} (--purge)" in purge.stderr, purge.stderr
    assert _tree(installed) == {"etc": ("d", "-")}  # the manifest that said it made /etc went first


def test_uninstall_removes_what_install_made_and_nothing_else(installed):
    foreign = {
        "usr/local/bin/other-tool": b"#!/bin/sh\n",             # beside its link
        "etc/systemd/system/other.service": b"[Service]\n",     # beside its unit
        f"{OPT}/notes.txt": b"the admin's\n",                    # in its own directory
    }
    for rel, data in foreign.items():
        (installed / rel).write_bytes(data)
    changed = f"{OPT}/bin/activate"
    with open(installed / changed, "a") as f:
        f.write("# changed by hand\n")
    keep = {p: e for p, e in _tree(installed).items() if p in foreign or p == changed}

    out = _run("uninstall", installed)
    assert out.returncode == 0, out.stderr
    assert f"kept /{changed}: changed since install" in out.stderr
    assert f"kept /{OPT}: 2 file(s) in it" in out.stderr
    left = _tree(installed)
    assert {p: e for p, e in left.items() if e[0] != "d"} == keep
    # the directories left are those that hold what was kept
    assert {p for p, e in left.items() if e[0] == "d"} == {str(Path(p).parents[i]) for p in keep
                                                           for i in range(len(Path(p).parents) - 1)}
    again = _run("uninstall", installed)  # its manifest gone, what is left is not install's
    assert again.returncode == 0 and "left /opt/allocwatch alone" in again.stderr, again.stderr
    assert _tree(installed) == left


def test_a_foreign_opt_allocwatch_is_refused_without_force_and_kept_intact(tmp_path, manlib):
    root = tmp_path / "root"
    (root / OPT).mkdir(parents=True)
    (root / OPT / "data").write_text("someone else's\n")
    before = _tree(root)
    proc = _run("install", root, manlib=manlib)
    assert proc.returncode == IN_THE_WAY, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("install: left alone: /opt/allocwatch (") and line.endswith("--force replaces it"), line
    assert _tree(root) == before
    env = {**os.environ, "DESTDIR": str(root)}  # the same, told by the environment
    proc = subprocess.run([str(ROOT / "scripts" / "install"), "--manpage-lib", str(manlib)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert proc.returncode == IN_THE_WAY and proc.stderr == line + "\n", proc.stderr
    assert _tree(root) == before
    out = _run("uninstall", root)  # no manifest: nothing of it is install's
    assert out.returncode == 0 and "left /opt/allocwatch alone" in out.stderr, out.stderr
    assert _tree(root) == before


def test_a_foreign_bin_allocwatch_is_refused_without_force_and_kept_intact(installed, manlib):
    link = installed / LINK
    link.unlink()
    link.write_text("#!/bin/sh\necho another allocwatch\n")
    before = _tree(installed)
    proc = _run("install", installed, manlib=manlib)
    assert proc.returncode == IN_THE_WAY, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert f"/{LINK} (a file, changed since install)" in line and "--force" in line, line
    assert _tree(installed) == before

    out = _run("uninstall", installed)
    assert out.returncode == 0 and f"kept /{LINK}: changed since install" in out.stderr, out.stderr
    assert (installed / LINK).read_text() == "#!/bin/sh\necho another allocwatch\n"


def test_force_replaces_what_install_did_not_make(tmp_path, manlib):
    root = tmp_path / "root"
    (root / OPT).mkdir(parents=True)
    (root / OPT / "data").write_text("someone else's\n")
    (root / LINK).parent.mkdir(parents=True)
    (root / LINK).symlink_to("/usr/bin/true")
    proc = _run("install", root, manlib=manlib)
    assert proc.returncode == IN_THE_WAY and "--force replaces them" in proc.stderr, proc.stderr
    proc = _run("install", root, "--force", manlib=manlib)
    assert proc.returncode == 0, proc.stderr
    assert "removed /opt/allocwatch: it was not made by install (--force)" in proc.stderr
    assert os.readlink(root / LINK) == "/opt/allocwatch/bin/allocwatch"
    _assert_manifest_is_the_tree(root, foreign=frozenset({"opt", "usr", "usr/local", "usr/local/bin"}))
    assert _run("uninstall", root).returncode == 0
    assert _tree(root) == {"opt": ("d", "-"), "usr": ("d", "-"), "usr/local": ("d", "-"),
                           "usr/local/bin": ("d", "-")}


def test_no_symbolic_link_out_of_the_root_is_followed(installed, tmp_path, manlib):
    """A directory of the root replaced by a link to one outside it, holding what install
    would find there: uninstall removes nothing through it; install refuses even with --force."""
    outside = tmp_path / "outside"
    shutil.copytree(installed / "etc" / "systemd", outside / "systemd", symlinks=True)
    shutil.rmtree(installed / "etc" / "systemd")
    (installed / "etc" / "systemd").symlink_to(outside / "systemd")
    before = _tree(outside)
    assert before["systemd/system/allocwatch.service"][1] == _manifest(installed)[UNIT][1]  # as install made it

    proc = _run("install", installed, "--force", manlib=manlib)
    assert proc.returncode == IN_THE_WAY and "even with --force" in proc.stderr, proc.stderr
    out = _run("uninstall", installed)
    assert out.returncode == 0, out.stderr
    assert f"kept /{UNIT}: its directory leads out of" in out.stderr
    assert _tree(outside) == before
    assert (installed / "etc" / "systemd").is_symlink()


def test_bad_command_lines(tmp_path):
    for script in ("install", "uninstall"):
        proc = _run(script, tmp_path, "--no-such-flag")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        proc = _run(script, tmp_path / "missing")
        assert proc.returncode == 2 and "is not a directory" in proc.stderr, proc.stderr
    assert _tree(tmp_path) == {}
