# SPDX-License-Identifier: Apache-2.0
"""Configuration: built-in defaults, an optional YAML file, then flags.

Every key is declared once in `schema.KEYS`, with its check (checks.py) and
whether a reload can change it (RESTART_KEYS: those it cannot); an unknown key or a
value of the wrong type or out of range is a ConfigError (exit 3) whose one
line names the key and what it accepts. The file is read by yamlfile.py: one
that cannot be read, is not a regular file or is too large is ConfigUnreadable
(exit 4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from allocwatch.config.checks import (
    CLASSIFY_AFTER_MAX_S,
    CLASSIFY_AFTER_MIN_S,
    MAX_INFLIGHT_MAX,
    MAX_INFLIGHT_MIN,
    SCAN_INTERVAL_MAX_S,
    SCAN_INTERVAL_MIN_S,
    SHOWN_MAX_CHARS,
    THRESHOLD_MAX_S,
    THRESHOLD_MIN_S,
    shown,
)
from allocwatch.config.schema import DEFAULT_METRICS_ADDR, DEFAULT_SOCKET_PATH, KEYS, RESTART_KEYS, Config
from allocwatch.config.yamlfile import CONFIG_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES, load_file, shown_path
from allocwatch.errors import ConfigError

__all__ = [
    "CLASSIFY_AFTER_MAX_S", "CLASSIFY_AFTER_MIN_S", "CONFIG_MAX_BYTES", "DEFAULT_METRICS_ADDR", "DEFAULT_SOCKET_PATH",
    "MAX_INFLIGHT_MAX", "MAX_INFLIGHT_MIN", "RESTART_KEYS", "SCAN_INTERVAL_MAX_S", "SCAN_INTERVAL_MIN_S",
    "SHOWN_MAX_CHARS", "THRESHOLD_MAX_S", "THRESHOLD_MIN_S", "YAML_MAX_DEPTH", "YAML_MAX_NODES", "Config",
    "from_mapping", "load", "load_file", "shown",
]


def from_mapping(values: Mapping[str, Any], base: Config | None = None, source: str = "config") -> Config:
    checked = {}
    for key, value in values.items():
        spec = KEYS.get(key) if isinstance(key, str) else None
        if spec is None:
            known = ", ".join(sorted(KEYS))
            raise ConfigError(f"{source}: unknown key {shown(key)} (known keys: {known})")
        try:
            checked[key] = spec.check(key, value)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return dataclasses.replace(base or Config(), **checked)


def load(path: Path | None, overrides: Mapping[str, Any]) -> Config:
    """Defaults, then the file (if any), then command-line overrides."""
    cfg = Config()
    if path is not None:
        cfg = from_mapping(load_file(path), cfg, source=shown_path(path))
    return from_mapping({k: v for k, v in overrides.items() if v is not None}, cfg, source="command line")
