# SPDX-License-Identifier: Apache-2.0
"""A real terminal for tests: a shell in a tmux pane on a tmux server of its own.

Each `Pane` starts its own tmux server (`tmux -L NAME`, NAME with a per-run
suffix), so it never sees or touches anybody else's sessions; `close()` kills
that server (the pane's processes get SIGHUP, as when a terminal closes) and
removes its socket. The screen is read with `capture-pane -p`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


class Pane:
    def __init__(self, width: int = 100, height: int = 30, env: dict[str, str] | None = None) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is missing (scripts/setup --dev installs Debian's)")
        self.name = f"aw-top-{os.getpid()}-{secrets.token_hex(3)}"
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        # a plain sh with no rc files: the prompt and the screen are the test's own
        self._tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                   "env", "PS1=$ ", "ENV=", *extra, "sh")
        self._tmux("set-option", "-t", self.name, "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=10,
                             check=False)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args[:2])}: {out.stderr.strip()}")
        return out.stdout

    def type(self, line: str) -> None:
        """A command line, then Enter."""
        self._tmux("send-keys", "-t", self.name, "-l", line)
        self._tmux("send-keys", "-t", self.name, "Enter")

    def keys(self, *keys: str) -> None:
        """tmux key names: "s", "Enter", "Escape", "Down"..."""
        for k in keys:
            self._tmux("send-keys", "-t", self.name, k)

    def text(self, literal: str) -> None:
        self._tmux("send-keys", "-t", self.name, "-l", literal)

    def shell_pid(self) -> int:
        return int(self._tmux("list-panes", "-t", self.name, "-F", "#{pane_pid}").split()[0])

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name)

    def wait(self, pred: Callable[[str], bool], timeout: float) -> str | None:
        """The screen once `pred` holds for it, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if pred(shown):
                return shown
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=10, check=False)
        sock = Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / self.name
        sock.unlink(missing_ok=True)

    def __enter__(self) -> Pane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
