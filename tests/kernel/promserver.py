# SPDX-License-Identifier: Apache-2.0
"""A real Prometheus server for kernel tests: Debian's `prometheus`, on a free
loopback port, scraping one target every second, with its own data directory
that `close()` removes (also when the test failed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from lab.ports import free_port


class Prometheus:
    def __init__(self, target: str, rule_files: list[Path] | None = None) -> None:
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed: scripts/setup --dev installs Debian's prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="aw-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = "".join(f"  - {p}\n" for p in rule_files or [])
        (self.dir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + f"scrape_configs:\n  - job_name: allocwatch\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = (self.dir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready(60)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.dir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("prometheus not ready")

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 for a bad query: keep its reason
            doc = json.loads(e.read())
        return doc

    def query(self, expr: str) -> list[dict[str, Any]]:
        doc = self.api("query", query=expr)
        assert doc["status"] == "success", f"{expr}: {doc.get('error')}"
        return doc["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, pred, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and pred(v):
                return v
            time.sleep(0.5)
        return v

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
