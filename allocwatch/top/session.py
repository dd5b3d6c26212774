# SPDX-License-Identifier: Apache-2.0
"""top's own session, when no daemon answers: the daemon's scan loop in-process.

The same code as `allocwatch run` loads and attaches the programs (app.session)
and the same Daemon scans; its snapshots go to top instead of a
socket, each with the live view. `close()` stops the scans and detaches every
program, whatever ended top (q, SIGINT, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import threading
import time

from allocwatch import config
from allocwatch.app.session import Session
from allocwatch.core.snapshot import Snapshot
from allocwatch.core.snapview import snapshot_dict
from allocwatch.top.feed import Feed


class OwnSession(Feed):
    def __init__(self, cfg: config.Config, why: str) -> None:
        super().__init__()
        self.source = f"own session ({why})"
        self._session = Session.open(cfg)
        try:
            self.daemon = self._session.daemon([self], live_wanted=lambda: True)
            self._session.seed(self.daemon)
        except BaseException:
            self._session.close()
            raise
        # a sleep already in D is named once it has lasted classify_after_s: a frame
        # printed before that would miss it
        self.settled_mono = time.monotonic() + cfg.classify_after_s + cfg.scan_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.daemon.run, args=(self._stop,), name="top-session", daemon=True)
        self._thread.start()

    def publish(self, snap: Snapshot) -> None:
        self.put(snapshot_dict(snap))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._session.close()
