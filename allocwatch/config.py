"""Configuration: built-in defaults, an optional YAML file, then flags.

Every key is declared once in `_KEYS` with its check; an unknown key or a
value of the wrong type or out of range is a ConfigError (exit 3) whose one
line names the key and what it accepts. A file that cannot be read, is not a
regular file or is larger than CONFIG_MAX_BYTES is ConfigUnreadable (exit 4).

No message ever quotes an untrusted value whole: `_shown` cuts it. The YAML
loader refuses anchors and aliases, merge keys, duplicate keys, nesting deeper
than YAML_MAX_DEPTH and more than YAML_MAX_NODES values, so no file costs more
than a bounded amount of time and memory.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import os
import re
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from allocwatch.core.findings import WindowRules
from allocwatch.core.sites import Site
from allocwatch.core.tracker import NS_PER_S, Thresholds
from allocwatch.errors import ConfigError, ConfigUnreadable

# Accepted ranges, in seconds unless named otherwise. The upper bound on a
# threshold keeps LONG_WAIT_NS (passed to the BPF compiler as <ns>ULL) far
# below 2**64; the lower bound keeps it from rounding to 0 ns.
THRESHOLD_MIN_S = 0.1
THRESHOLD_MAX_S = 86400.0
SCAN_INTERVAL_MIN_S = 0.05
SCAN_INTERVAL_MAX_S = 60.0
CLASSIFY_AFTER_MIN_S = 0.01
CLASSIFY_AFTER_MAX_S = 86400.0
REPORT_INTERVAL_MIN_S = 0.05
REPORT_INTERVAL_MAX_S = 3600.0
MAX_TASKS_PER_BLOCK_MIN = 1
MAX_TASKS_PER_BLOCK_MAX = 100000
MAX_INFLIGHT_MIN = 1024
MAX_INFLIGHT_MAX = 1 << 22  # 4194304

# Loopback only, unless configured otherwise. The Prometheus project's list of
# default exporter ports has filled 9100-9999 and goes on from 10000; 19464 is
# clear of both (and of OpenTelemetry's 9464).
DEFAULT_METRICS_PORT = 19464
DEFAULT_METRICS_ADDR = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
# Where `allocwatch top` finds the daemon. A Unix socket path is at most 107
# bytes (sun_path holds 108 with its NUL).
DEFAULT_SOCKET_PATH = "/run/allocwatch/allocwatch.sock"
SOCKET_PATH_MAX_BYTES = 107
GROUP_NAME_MAX_CHARS = 32
CONFIG_MAX_BYTES = 1 << 20  # 1 MiB
YAML_MAX_DEPTH = 16  # nested mappings/sequences
YAML_MAX_NODES = 10000  # scalars, mappings and sequences in one file
PATH_MAX_CHARS = 4096
PATTERN_MAX_CHARS = 1000
METRICS_CGROUP_MAX = 1000  # cgroup labels at most, whatever is configured
SHOWN_MAX_CHARS = 60
_NUMBER_MAX_CHARS = 64  # a YAML number literal longer than this is refused before it is built


@dataclass(frozen=True)
class Config:
    threshold_s: float = 10.0
    thresholds_s: dict[str, float] = field(default_factory=dict)  # per site label
    scan_interval_s: float = 1.0
    format: str = "text"
    output: str = "stdout"  # or "journal": structured entries to the systemd journal
    metrics_addr: str | None = None  # None: not given (DEFAULT_METRICS_ADDR); "": metrics off; else "host:port"
    disable_sites: tuple[str, ...] = ()
    hot_paths: bool = False
    bpf_stats: bool = False  # count BPF programs' run time while the daemon runs
    begin_stacks: bool = True  # BPF takes a task's stack as it enters reclaim, at most once a second
    oom_score_adj: int = -900  # set on itself at start when it may (CAP_SYS_RESOURCE to lower it)
    lock_memory: bool = True  # mlockall(MCL_ONFAULT) once loaded: its pages stay in RAM as it touches them
    classify_after_s: float = 1.0
    max_inflight: int = 32768
    tracefs: str = "/sys/kernel/tracing"
    report_interval_s: float = 1.0  # at most one stall block this often; what is held back is counted
    max_tasks_per_block: int = 1000  # beyond it, a block sums up the rest by site and cgroup
    cgroups: tuple[str, ...] = ()  # report only tasks whose memory cgroup path starts with one of these
    metrics_cgroups: tuple[str, ...] = ()  # stall seconds per cgroup for these paths (and what is under each)
    metrics_cgroup_pattern: str = ""  # and for cgroup paths this regex matches whole (label: its first group)
    metrics_cgroup_max: int = 20  # at most this many cgroup labels in a run; the rest count as "other"
    throttle_window_s: float = 10.0  # the sliding window of the throttled and livelock rules
    throttle_share: float = 0.5  # throttled: at least this share of the window spent in memory waits
    livelock_passes_per_s: float = 100.0  # livelock: at least this many reclaim passes a second, none freeing
    socket_path: str = DEFAULT_SOCKET_PATH  # the live snapshots for `allocwatch top`; "" for none
    socket_group: str = ""  # a group whose members may read the socket too; "" for root only

    def window_rules(self) -> WindowRules:
        return WindowRules(
            window_ns=round(self.throttle_window_s * NS_PER_S),
            share=self.throttle_share,
            threshold_ns=round(self.threshold_s * NS_PER_S),
            livelock_passes_per_s=self.livelock_passes_per_s,
        )

    def thresholds(self) -> Thresholds:
        return Thresholds(
            default_ns=round(self.threshold_s * NS_PER_S),
            per_site_ns={Site.from_label(k): round(v * NS_PER_S) for k, v in self.thresholds_s.items()},
        )

    @property
    def metrics_listen(self) -> str | None:
        """Where to serve metrics, or None when they are off."""
        if self.metrics_addr == "":
            return None
        return self.metrics_addr or DEFAULT_METRICS_ADDR

    @property
    def disabled(self) -> list[Site]:
        return [Site.from_label(s) for s in self.disable_sites]

    @property
    def classify_after_ns(self) -> int:
        """Never later than the lowest threshold, so no stall is named late."""
        return min(round(self.classify_after_s * NS_PER_S), self.thresholds().min_ns)


def _shown(v: Any) -> str:
    """A short, one-line, safely computed description of an untrusted value."""
    if isinstance(v, Mapping):
        return f"a mapping of {len(v)} item{'s' * (len(v) != 1)}"
    if isinstance(v, (list, tuple, set, frozenset)):
        return f"a list of {len(v)} item{'s' * (len(v) != 1)}"
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
        return f"an integer of {v.bit_length()} bits"
    if isinstance(v, (str, bytes)):
        text = repr(v[: SHOWN_MAX_CHARS + 1])  # repr escapes every control and newline
    else:
        try:
            text = repr(v)
        except Exception:
            text = f"a {type(v).__name__}"
        if not text.isprintable():
            text = f"a {type(v).__name__}"
    if len(text) > SHOWN_MAX_CHARS:
        text = text[: SHOWN_MAX_CHARS - 3] + "..."
    return text


def _one_line(text: str, limit: int = 200) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(key: str, v: Any, lo: float, hi: float, what: str) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok and isinstance(v, float) and not math.isfinite(v):
        ok = False
    if not ok or not lo <= v <= hi:
        raise ConfigError(f"{key}: expected {what} from {lo:g} to {hi:g}, got {_shown(v)}")
    return float(v)


def _plain_range(lo: float, hi: float, what: str) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        return _number(key, v, lo, hi, what)

    return check


def _ranged(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        return _number(key, v, lo, hi, "a positive number of seconds")

    return check


_threshold = _ranged(THRESHOLD_MIN_S, THRESHOLD_MAX_S)


def _site_label(key: str, v: Any) -> str:
    if isinstance(v, str):
        try:
            return Site.from_label(v).label
        except ValueError:
            pass
    names = ", ".join(s.label for s in Site)
    raise ConfigError(f"{key}: unknown wait site {_shown(v)} (known: {names})")


def _thresholds(key: str, v: Any) -> dict[str, float]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: expected a mapping of site: seconds, got {_shown(v)}")
    out = {}
    for k, s in v.items():
        label = _site_label(key, k)
        out[label] = _threshold(f"{key}.{label}", s)
    return out


def _format(key: str, v: Any) -> str:
    if not isinstance(v, str) or v not in ("text", "json"):
        raise ConfigError(f"{key}: expected 'text' or 'json', got {_shown(v)}")
    return v


def _output(key: str, v: Any) -> str:
    if not isinstance(v, str) or v not in ("stdout", "journal"):
        raise ConfigError(f"{key}: expected 'stdout' or 'journal', got {_shown(v)}")
    return v


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _host(host: str) -> str | None:
    """The normalised host part, or None if it is not one."""
    if not host:
        return "127.0.0.1"
    if not host.isascii() or not host.isprintable():
        return None
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        _, pct, zone = inner.partition("%")
        if pct and not _ZONE.fullmatch(zone):
            return None
        try:
            ip = ipaddress.ip_address(inner)
        except ValueError:
            return None
        return f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else None
    if all(c.isdigit() or c == "." for c in host):  # looks like IPv4: must be one
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(part) for part in host.split(".")):
        return None
    if _inet_aton_accepts(host):  # 0x7f.1, 0x0: the resolver reads them as IPv4 addresses
        return None
    return host


def _inet_aton_accepts(host: str) -> bool:
    """True when libc's inet_aton (which getaddrinfo tries first) takes `host`
    for an IPv4 address in a shorthand form (hex or octal parts, fewer than four)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _addr(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464) or '' for off, got {_shown(v)}")
    if v == "":
        return ""
    host, sep, port = v.rpartition(":")
    if not sep:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464) or '' for off, got {_shown(v)}")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ConfigError(f"{key}: expected HOST:PORT with a port from 1 to 65535, got {_shown(v)}")
    normal = _host(host)
    if normal is None:
        raise ConfigError(
            f"{key}: expected HOST:PORT with HOST an IPv4 address, [IPv6 address] or ASCII host name "
            f"(letters, digits, '-', '.'; at most 253 characters), got {_shown(v)}"
        )
    return f"{normal}:{int(port)}"


def _sites(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of site names, got {_shown(v)}")
    return tuple(_site_label(key, s) for s in v)


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {_shown(v)}")
    return v


def _count(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not MAX_INFLIGHT_MIN <= v <= MAX_INFLIGHT_MAX:
        raise ConfigError(f"{key}: expected an integer from {MAX_INFLIGHT_MIN} to {MAX_INFLIGHT_MAX}, got {_shown(v)}")
    return v


def _int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key}: expected an integer from {lo} to {hi}, got {_shown(v)}")
        return v

    return check


def _prefixes(key: str, v: Any) -> tuple[str, ...]:
    """cgroup path prefixes: each starts with '/', printable, at most PATH_MAX_CHARS."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) > 64:
        raise ConfigError(f"{key}: expected a list of at most 64 cgroup paths, got {_shown(v)}")
    for p in v:
        if not isinstance(p, str) or not p.startswith("/") or len(p) > PATH_MAX_CHARS or not p.isprintable():
            raise ConfigError(f"{key}: expected cgroup paths starting with '/', got {_shown(p)}")
    return tuple(v)


def _path(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v or "\0" in v or len(v) > PATH_MAX_CHARS:
        raise ConfigError(
            f"{key}: expected a path (non-empty, no NUL, at most {PATH_MAX_CHARS} characters), got {_shown(v)}"
        )
    return v


def _socket_path(key: str, v: Any) -> str:
    if v == "":
        return ""
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v or not v.isprintable():
        raise ConfigError(f"{key}: expected an absolute path, or '' for no socket, got {_shown(v)}")
    if len(os.fsencode(v)) > SOCKET_PATH_MAX_BYTES or v.endswith("/"):
        raise ConfigError(f"{key}: expected a file path of at most {SOCKET_PATH_MAX_BYTES} bytes, got {_shown(v)}")
    return v


def _pattern(key: str, v: Any) -> str:
    """A regular expression (Python's re) a cgroup path must match whole; '' for none."""
    if v == "":
        return ""
    if not isinstance(v, str) or len(v) > PATTERN_MAX_CHARS or not v.isprintable():
        raise ConfigError(
            f"{key}: expected a regular expression of at most {PATTERN_MAX_CHARS} printable characters, "
            f"or '' for none, got {_shown(v)}"
        )
    try:
        re.compile(v)
    except re.error as exc:
        raise ConfigError(f"{key}: not a valid regular expression ({exc}): {_shown(v)}") from None
    return v


_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")


def _group(key: str, v: Any) -> str:
    if v == "":
        return ""
    if not isinstance(v, str) or len(v) > GROUP_NAME_MAX_CHARS or not _GROUP_NAME.fullmatch(v):
        raise ConfigError(
            f"{key}: expected a group name (letters, digits, '_', '-', '.'; at most {GROUP_NAME_MAX_CHARS} "
            f"characters) or '' for root only, got {_shown(v)}"
        )
    return v


_KEYS: dict[str, Callable[[str, Any], Any]] = {
    "threshold_s": _threshold,
    "thresholds_s": _thresholds,
    "scan_interval_s": _ranged(SCAN_INTERVAL_MIN_S, SCAN_INTERVAL_MAX_S),
    "format": _format,
    "output": _output,
    "metrics_addr": _addr,
    "disable_sites": _sites,
    "report_interval_s": _ranged(REPORT_INTERVAL_MIN_S, REPORT_INTERVAL_MAX_S),
    "max_tasks_per_block": _int_range(MAX_TASKS_PER_BLOCK_MIN, MAX_TASKS_PER_BLOCK_MAX),
    "cgroups": _prefixes,
    "metrics_cgroups": _prefixes,
    "metrics_cgroup_pattern": _pattern,
    "metrics_cgroup_max": _int_range(1, METRICS_CGROUP_MAX),
    "throttle_window_s": _ranged(1.0, 600.0),
    "throttle_share": _plain_range(0.05, 1.0, "a share of the window"),
    "livelock_passes_per_s": _plain_range(1.0, 1e7, "passes a second"),
    "hot_paths": _bool,
    "bpf_stats": _bool,
    "begin_stacks": _bool,
    "oom_score_adj": _int_range(-1000, 1000),
    "lock_memory": _bool,
    "classify_after_s": _ranged(CLASSIFY_AFTER_MIN_S, CLASSIFY_AFTER_MAX_S),
    "max_inflight": _count,
    "tracefs": _path,
    "socket_path": _socket_path,
    "socket_group": _group,
}


def from_mapping(values: Mapping[str, Any], base: Config | None = None, source: str = "config") -> Config:
    checked = {}
    for key, value in values.items():
        check = _KEYS.get(key) if isinstance(key, str) else None
        if check is None:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{source}: unknown key {_shown(key)} (known keys: {known})")
        try:
            checked[key] = check(key, value)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return dataclasses.replace(base or Config(), **checked)


def _where(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else _shown(text)


def _read_capped(path: Path) -> bytes:
    """The bytes of a regular file of at most CONFIG_MAX_BYTES, without
    blocking on a FIFO or reading a device."""
    where = _where(path)

    def unreadable(why: str) -> ConfigUnreadable:
        return ConfigUnreadable(f"cannot read config file {where}: {why}")

    def too_large() -> ConfigUnreadable:
        return unreadable(f"larger than the {CONFIG_MAX_BYTES // (1 << 20)} MiB limit ({CONFIG_MAX_BYTES} bytes)")

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # refuse before opening a device at all
            raise unreadable("not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise unreadable(exc.strerror or type(exc).__name__) from None
    except ValueError:  # an embedded NUL
        raise unreadable("not a valid path") from None
    try:
        st = os.fstat(fd)  # the file opened, whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise unreadable("not a regular file")
        if st.st_size > CONFIG_MAX_BYTES:
            raise too_large()
        chunks = []
        left = CONFIG_MAX_BYTES + 1  # the file may grow after fstat
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise unreadable(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > CONFIG_MAX_BYTES:
        raise too_large()
    return data


def _line(node_or_event: Any) -> int:
    return int(node_or_event.start_mark.line) + 1


@functools.cache
def _strict_loader() -> type:
    """yaml.SafeLoader without anchors, aliases, merge keys or duplicate keys,
    and with bounded nesting, node count and number literals."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth = 0
            self.nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise ConfigError(f"YAML aliases and anchors are not allowed (line {_line(event)})")
            self.nodes += 1
            if self.nodes > YAML_MAX_NODES:
                raise ConfigError(f"YAML has more than {YAML_MAX_NODES} values (line {_line(event)})")
            nested = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
            if nested:
                self.depth += 1
                if self.depth > YAML_MAX_DEPTH:
                    raise ConfigError(f"YAML nested deeper than {YAML_MAX_DEPTH} levels (line {_line(event)})")
            try:
                return super().compose_node(parent, index)
            finally:
                if nested:
                    self.depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            if isinstance(node, yaml.MappingNode):
                for key_node, _ in node.value:
                    line = _line(key_node)
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        raise ConfigError(f"YAML merge keys (<<) are not allowed (line {line})")
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:
                        raise ConfigError(f"YAML mapping key is not a scalar (line {line})") from None
                    if first is not None:
                        raise ConfigError(f"duplicate key {_shown(key)} at line {line} (first at line {first})")
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    def number(kind: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def construct(loader: Any, node: Any) -> Any:
            if len(node.value) > _NUMBER_MAX_CHARS:
                raise ConfigError(f"YAML number longer than {_NUMBER_MAX_CHARS} characters (line {_line(node)})")
            return kind(loader, node)

        return construct

    StrictLoader.add_constructor("tag:yaml.org,2002:int", number(yaml.SafeLoader.construct_yaml_int))
    StrictLoader.add_constructor("tag:yaml.org,2002:float", number(yaml.SafeLoader.construct_yaml_float))
    return StrictLoader


def _yaml_problem(exc: Any) -> str:
    character, position = getattr(exc, "character", None), getattr(exc, "position", None)
    if isinstance(character, int) and isinstance(position, int):  # yaml.reader.ReaderError
        return f"character U+{character:04X} is not allowed (character offset {position})"
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if problem is None:
        return _one_line(str(exc))
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return _one_line(str(problem)) + where


def load_file(path: Path) -> dict[str, Any]:
    import yaml

    data_bytes = _read_capped(path)
    where = _where(path)
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: not UTF-8 text (byte 0x{data_bytes[exc.start]:02x} at offset {exc.start})"
        ) from None
    loader = None
    try:
        loader = _strict_loader()(text)  # checks every character first
        data = loader.get_single_data()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. a date that does not exist
        raise ConfigError(f"{where}: not valid YAML: a value could not be built: {_one_line(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys at the top level, got {_shown(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: top-level keys must be strings, got {_shown(key)}")
    return data


def load(path: Path | None, overrides: Mapping[str, Any]) -> Config:
    """Defaults, then the file (if any), then command-line overrides."""
    cfg = Config()
    if path is not None:
        cfg = from_mapping(load_file(path), cfg, source=_where(path))
    return from_mapping({k: v for k, v in overrides.items() if v is not None}, cfg, source="command line")
