# SPDX-License-Identifier: Apache-2.0
"""Standard streams that cannot be written: a stderr that is full, gone or
closed never changes the exit code nor crashes the daemon; output of `probes`
and `--help` that cannot be written is exit 12 or 13 in one line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from allocwatch.app import preflight

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "kernels" / "6.18"


def _allocwatch(*argv: str, close: tuple[int, ...] = (), **kw) -> subprocess.CompletedProcess:
    def closing() -> None:
        for fd in close:
            os.close(fd)

    return subprocess.run(
        [sys.executable, "-m", "allocwatch", *argv], preexec_fn=closing if close else None,
        timeout=30, check=False, **kw,
    )


@pytest.mark.parametrize("how", ["/dev/full", "closed"])
@pytest.mark.parametrize(("argv", "code"), [(("run", "--threshold", "0"), 3), (("run", "--format", "xml"), 2)])
def test_a_stderr_that_cannot_be_written_keeps_the_exit_code(how, argv, code):
    if how == "closed":
        proc = _allocwatch(*argv, close=(2,), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    else:
        with open("/dev/full", "w") as full:
            proc = _allocwatch(*argv, stdout=subprocess.PIPE, stderr=full)
    assert proc.returncode == code
    assert proc.stdout == b"", "a diagnostic went to stdout"


@pytest.mark.parametrize("buffered", [False, True])
def test_help_to_a_full_stdout_is_exit_13_in_one_line(buffered):
    """Buffered or not (3.11.7's argparse drops the write error, and a buffered stdout then fails at exit)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with open("/dev/full", "w") as full:
        proc = _allocwatch("run", "--help", stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.returncode == 13
    assert proc.stderr.splitlines() == ["allocwatch: cannot write to standard output: No space left on device"]


def test_probes_to_a_full_stdout_is_exit_13():
    with open("/dev/full", "w") as full:
        proc = _allocwatch("probes", "--tracefs", str(FIXTURE), stdout=full, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 13, proc.stderr
    assert proc.stderr.splitlines() == ["allocwatch: cannot write to standard output: No space left on device"]


def test_probes_to_a_reader_that_has_gone_is_exit_12():
    r, w = os.pipe()
    os.close(r)
    try:
        proc = _allocwatch("probes", "--json", "--tracefs", str(FIXTURE), stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert proc.returncode == 12, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "standard output was closed by its reader" in lines[0]


def test_diagnostics_to_a_gone_or_full_stderr_are_lost_and_counted():
    r, w = os.pipe()
    os.close(r)
    try:
        gone = preflight.DiagnosticStream(w)
        assert gone.write("allocwatch: a line\n") == len("allocwatch: a line\n")
        gone.flush()
        assert gone.lost == 1
    finally:
        os.close(w)
    with open("/dev/full", "w") as full:
        stream = preflight.DiagnosticStream(full.fileno())
        print("allocwatch: another", file=stream, flush=True)
        assert stream.lost >= 1


def test_diagnostics_to_a_full_non_blocking_pipe_never_block():
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        stream = preflight.DiagnosticStream(w)
        for _ in range(2000):  # 2000 * 100 bytes is more than a pipe holds
            stream.write("x" * 99 + "\n")
        assert stream.lost > 0
    finally:
        os.close(r)
        os.close(w)


GUARD = """
import os, sys
from allocwatch.app import preflight
s = preflight.guard_stderr()
try:
    os.fstat(1)
    one = os.readlink("/proc/self/fd/1")
except OSError:
    one = "closed"
# inheritable, as a standard stream is: the loader process gets it as its own stderr
os.write(int(sys.argv[1]), (os.readlink("/proc/self/fd/2") + " " + one + " " + str(os.get_inheritable(2))).encode())
"""


@pytest.mark.parametrize(("close", "stdout"), [((2,), "pipe:"), ((1, 2), "closed")])
def test_a_closed_stderr_gets_dev_null_and_a_closed_stdout_stays_closed(close, stdout):
    r, w = os.pipe()

    def setup() -> None:
        for fd in close:
            os.close(fd)

    try:
        subprocess.run([sys.executable, "-c", GUARD, str(w)], preexec_fn=setup, pass_fds=(w,),
                       stdout=subprocess.PIPE, cwd=ROOT, timeout=30, check=True)
        os.close(w)
        w = -1
        fd2, fd1, inheritable = os.read(r, 4096).decode().split()
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
    assert fd2 == "/dev/null" and inheritable == "True"
    assert fd1.startswith(stdout)
