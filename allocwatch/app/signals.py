# SPDX-License-Identifier: Apache-2.0
"""Signals to events, with no lock taken in the handler.

A Python signal handler runs in the main thread, between two bytecodes. The
scan loop (and top's) waits on its stop event in that thread: a handler that
set the event itself, landing while the main thread held the event's lock
inside Event.wait, waited for that lock forever, and SIGTERM never stopped the
daemon (seen once in a few dozen). Here the handler writes the signal's number
to a pipe, and a thread of its own sets the event.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from typing import Any


def relay(events: Mapping[int, threading.Event]) -> dict[int, Any]:
    """Each signal of `events` sets its event, from a thread; the handlers before, by signal."""
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)  # a full pipe drops the signal: as many are pending already

    def relay_thread() -> None:
        while data := os.read(rfd, 64):
            for sig in data:
                if sig in events:
                    events[sig].set()

    threading.Thread(target=relay_thread, name="signals", daemon=True).start()

    def caught(sig: int, _frame: Any) -> None:
        try:
            os.write(wfd, bytes([sig]))
        except OSError:
            pass

    return {sig: signal.signal(sig, caught) for sig in events}
