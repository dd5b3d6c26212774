# SPDX-License-Identifier: Apache-2.0
"""The real daemon as a child process, for kernel tests.

Starts `python -m allocwatch run --format json ...`, collects its JSON lines
as they come, and on stop sends SIGTERM and checks the BPF programs it
loaded are gone (`bpftool prog show`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PROG_PREFIX = "aw_"


def allocwatch_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True)
    return {p["id"] for p in json.loads(out.stdout) if str(p.get("name", "")).startswith(PROG_PREFIX)}


# A raw tracepoint's link frees its program after an RCU grace period, not at the
# close of its fd (1a80dbcb2dba, "bpf: support deferring bpf_link dealloc to after
# RCU grace period", v6.9): its id can outlive the process that loaded it by a
# moment, longer while tasks stall.
PROGS_GONE_S = 10.0


def progs_left(before: set[int], timeout_s: float = PROGS_GONE_S) -> set[int]:
    """The aw_ programs loaded now that were not in `before`, once those left by a
    process that has exited are freed (empty), or whatever is still there after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := allocwatch_prog_ids() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Daemon:
    def __init__(self, *args: str, spawn: Callable[..., subprocess.Popen[Any]] = subprocess.Popen) -> None:
        """`spawn` starts it (MemCgroup.spawn puts it in a memory cgroup)."""
        self.before = allocwatch_prog_ids()
        self.proc = spawn(
            # metrics and top's socket off unless a test asks (a later flag wins),
            # so daemons of two tests never fight over the default port or path
            [sys.executable, "-m", "allocwatch", "run", "--format", "json", "--metrics-addr", "", "--socket", "",
             *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.records: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.ours: set[int] = set()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.raw_lines.append(line)
                self.records.append(json.loads(line))  # every line must be one JSON object
                self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.stderr.append(line)
                self._cond.notify_all()

    def wait_ready(self, timeout: float = 60.0) -> None:
        ok = self._wait(lambda: any("watching" in s for s in self.stderr) or self.proc.poll() is not None, timeout)
        assert ok and self.proc.poll() is None, f"daemon did not start: {''.join(self.stderr)}"
        self.ours = allocwatch_prog_ids() - self.before
        assert self.ours, "the daemon says it is watching but no aw_* BPF program is loaded"

    def _wait(self, pred: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r.get("type") == kind]

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        return self._wait(lambda: pred(list(self.records)), timeout)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or `sig`); returns the exit code once every program it loaded is gone."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not exit within {timeout:.0f}s of SIGTERM") from None
        for t in self._threads:
            t.join(5)
        left = self.ours & progs_left(self.before)
        assert not left, f"BPF programs left loaded after SIGTERM: {sorted(left)}"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class TextDaemon:
    """The real daemon with text reports: its stdout lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocwatch", "run", "--format", "text", "--metrics-addr", "", "--socket", "",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None and self.proc.stdout is not None
        first = self.proc.stderr.readline()
        assert "watching" in first, first
        out = self.proc.stdout
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(out.readline, "")), daemon=True)
        self._reader.start()

    def wait_line(self, pred: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pred(ln) for ln in list(self.lines)):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
