"""top's own session, when no daemon answers: the daemon's scan loop in-process.

The same code as `allocwatch run` loads and attaches the programs (cli's
helpers) and the same Daemon scans; its snapshots go to top instead of a
socket, each with the live view. `close()` stops the scans and detaches every
program, whatever ended top (q, SIGINT, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from allocwatch import cli, config, preflight
from allocwatch.core.snapshot import Snapshot
from allocwatch.core.snapview import snapshot_dict
from allocwatch.daemon import Daemon
from allocwatch.errors import NothingAttached
from allocwatch.kernel import coverage, probes
from allocwatch.kernel.probes import uses_dstate
from allocwatch.live import LiveReader
from allocwatch.outputs.topfeed import Feed


class OwnSession(Feed):
    def __init__(self, cfg: config.Config, why: str) -> None:
        super().__init__()
        self.source = f"own session ({why})"
        preflight.require_capabilities()
        cli._tracefs(cfg)
        features = cli._features(cfg)
        plans = probes.plan(features, cfg.disabled, cfg.hot_paths)
        self._bpf: Any = cli._load_source(cfg, plans, features)
        try:
            if not any(s.attached for s in self._bpf.status):
                raise NothingAttached("no wait site could be attached: see 'allocwatch probes' for why")
            effective = self._bpf.effective_plans
            self.daemon = Daemon(
                cfg, self._bpf, effective, [self], coverage=coverage.snapshot_coverage(self._bpf.status),
                kernel=features.release, gfp_table=cli._gfp_table(cfg), compaction_names=cli._compaction_names(cfg),
                throttle_names=cli._throttle_names(cfg),
            )
            self.daemon.live = LiveReader(lambda: True)
            if uses_dstate(effective):
                self.daemon.seed_preexisting()
        except BaseException:
            self._bpf.close()
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
        self._bpf.close()
