"""Configuration: built-in defaults, an optional YAML file, then flags.

Every key is declared once in `_KEYS` with its type check; an unknown key or
a value of the wrong type is a ConfigError naming the key and what it wants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocwatch.errors import ConfigError, ConfigUnreadable
from allocwatch.sites import Site
from allocwatch.tracker import NS_PER_S, Thresholds


@dataclass(frozen=True)
class Config:
    threshold_s: float = 10.0
    thresholds_s: dict[str, float] = field(default_factory=dict)  # per site label
    scan_interval_s: float = 1.0
    format: str = "text"
    metrics_addr: str | None = None
    disable_sites: tuple[str, ...] = ()
    hot_paths: bool = False
    classify_after_s: float = 1.0
    max_inflight: int = 32768
    tracefs: str = "/sys/kernel/tracing"

    def thresholds(self) -> Thresholds:
        return Thresholds(
            default_ns=int(self.threshold_s * NS_PER_S),
            per_site_ns={Site.from_label(k): int(v * NS_PER_S) for k, v in self.thresholds_s.items()},
        )

    @property
    def disabled(self) -> list[Site]:
        return [Site.from_label(s) for s in self.disable_sites]

    @property
    def classify_after_ns(self) -> int:
        """Never later than the lowest threshold, so no stall is named late."""
        return int(min(self.classify_after_s, self.thresholds().min_ns / NS_PER_S) * NS_PER_S)


def _positive_number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"{key}: expected a positive number of seconds, got {v!r}")
    return float(v)


def _site_label(key: str, v: Any) -> str:
    try:
        return Site.from_label(str(v)).label
    except ValueError:
        names = ", ".join(s.label for s in Site)
        raise ConfigError(f"{key}: unknown wait site {v!r} (known: {names})") from None


def _thresholds(key: str, v: Any) -> dict[str, float]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: expected a mapping of site: seconds, got {v!r}")
    return {_site_label(key, k): _positive_number(f"{key}.{k}", s) for k, s in v.items()}


def _format(key: str, v: Any) -> str:
    if v not in ("text", "json"):
        raise ConfigError(f"{key}: expected 'text' or 'json', got {v!r}")
    return str(v)


def _addr(key: str, v: Any) -> str | None:
    if v is None:
        return None
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464), got {v!r}")
    return f"{host or '127.0.0.1'}:{port}"


def _sites(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of site names, got {v!r}")
    return tuple(_site_label(key, s) for s in v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _count(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1024 <= v <= 1 << 22:
        raise ConfigError(f"{key}: expected an integer from 1024 to 4194304, got {v!r}")
    return v


def _path(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: expected a path, got {v!r}")
    return v


_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "threshold_s": _positive_number,
    "thresholds_s": _thresholds,
    "scan_interval_s": _positive_number,
    "format": _format,
    "metrics_addr": _addr,
    "disable_sites": _sites,
    "hot_paths": _bool,
    "classify_after_s": _positive_number,
    "max_inflight": _count,
    "tracefs": _path,
}


def from_mapping(values: Mapping[str, Any], base: Config | None = None, source: str = "config") -> Config:
    checked = {}
    for key, value in values.items():
        check = _KEYS.get(key)
        if check is None:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{source}: unknown key {key!r} (known keys: {known})")
        try:
            checked[key] = check(key, value)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return dataclasses.replace(base or Config(), **checked)


def load_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigUnreadable(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def load(path: Path | None, overrides: Mapping[str, Any]) -> Config:
    """Defaults, then the file (if any), then command-line overrides."""
    cfg = Config()
    if path is not None:
        cfg = from_mapping(load_file(path), cfg, source=str(path))
    return from_mapping({k: v for k, v in overrides.items() if v is not None}, cfg, source="command line")
