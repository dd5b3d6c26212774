"""Where rendered reports go. A sink takes a whole scan's text in one call.

The stdout sink writes it with as few write(2) calls as the pipe allows, under
a lock, so blocks from two calls never interleave.
"""

from __future__ import annotations

import os
import threading


class FdSink:
    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        if not text:
            return
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        with self._lock:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
