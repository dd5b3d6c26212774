# SPDX-License-Identifier: Apache-2.0
"""The check of each kind of configuration value: the value, or a ConfigError
whose one line names the key and what it accepts.

No message ever quotes an untrusted value whole: `shown` cuts it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

from allocwatch.core.sites import Site
from allocwatch.errors import ConfigError

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

PATH_MAX_CHARS = 4096
PATTERN_MAX_CHARS = 1000
SHOWN_MAX_CHARS = 60
SOCKET_PATH_MAX_BYTES = 107
GROUP_NAME_MAX_CHARS = 32


def shown(v: Any) -> str:
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


def one_line(text: str, limit: int = 200) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(key: str, v: Any, lo: float, hi: float, what: str) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok and isinstance(v, float) and not math.isfinite(v):
        ok = False
    if not ok or not lo <= v <= hi:
        raise ConfigError(f"{key}: expected {what} from {lo:g} to {hi:g}, got {shown(v)}")
    return float(v)


def plain_range(lo: float, hi: float, what: str) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        return number(key, v, lo, hi, what)

    return check


def ranged(lo: float, hi: float) -> Callable[[str, Any], float]:
    def check(key: str, v: Any) -> float:
        return number(key, v, lo, hi, "a positive number of seconds")

    return check


threshold = ranged(THRESHOLD_MIN_S, THRESHOLD_MAX_S)


def site_label(key: str, v: Any) -> str:
    if isinstance(v, str):
        try:
            return Site.from_label(v).label
        except ValueError:
            pass
    names = ", ".join(s.label for s in Site)
    raise ConfigError(f"{key}: unknown wait site {shown(v)} (known: {names})")


def per_site_thresholds(key: str, v: Any) -> dict[str, float]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: expected a mapping of site: seconds, got {shown(v)}")
    out = {}
    for k, s in v.items():
        label = site_label(key, k)
        out[label] = threshold(f"{key}.{label}", s)
    return out


def report_format(key: str, v: Any) -> str:
    if not isinstance(v, str) or v not in ("text", "json"):
        raise ConfigError(f"{key}: expected 'text' or 'json', got {shown(v)}")
    return v


def output_kind(key: str, v: Any) -> str:
    if not isinstance(v, str) or v not in ("stdout", "journal"):
        raise ConfigError(f"{key}: expected 'stdout' or 'journal', got {shown(v)}")
    return v


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def normal_host(host: str) -> str | None:
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


def listen_addr(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464) or '' for off, got {shown(v)}")
    if v == "":
        return ""
    host, sep, port = v.rpartition(":")
    if not sep:
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464) or '' for off, got {shown(v)}")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise ConfigError(f"{key}: expected HOST:PORT with a port from 1 to 65535, got {shown(v)}")
    normal = normal_host(host)
    if normal is None:
        raise ConfigError(
            f"{key}: expected HOST:PORT with HOST an IPv4 address, [IPv6 address] or ASCII host name "
            f"(letters, digits, '-', '.'; at most 253 characters), got {shown(v)}"
        )
    return f"{normal}:{int(port)}"


def site_labels(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list of site names, got {shown(v)}")
    return tuple(site_label(key, s) for s in v)


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {shown(v)}")
    return v


def inflight_count(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not MAX_INFLIGHT_MIN <= v <= MAX_INFLIGHT_MAX:
        raise ConfigError(f"{key}: expected an integer from {MAX_INFLIGHT_MIN} to {MAX_INFLIGHT_MAX}, got {shown(v)}")
    return v


def int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key}: expected an integer from {lo} to {hi}, got {shown(v)}")
        return v

    return check


def cgroup_prefixes(key: str, v: Any) -> tuple[str, ...]:
    """cgroup path prefixes: each starts with '/', printable, at most PATH_MAX_CHARS."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or len(v) > 64:
        raise ConfigError(f"{key}: expected a list of at most 64 cgroup paths, got {shown(v)}")
    for p in v:
        if not isinstance(p, str) or not p.startswith("/") or len(p) > PATH_MAX_CHARS or not p.isprintable():
            raise ConfigError(f"{key}: expected cgroup paths starting with '/', got {shown(p)}")
    return tuple(v)


def path(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v or "\0" in v or len(v) > PATH_MAX_CHARS:
        raise ConfigError(
            f"{key}: expected a path (non-empty, no NUL, at most {PATH_MAX_CHARS} characters), got {shown(v)}"
        )
    return v


def socket_path(key: str, v: Any) -> str:
    if v == "":
        return ""
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v or not v.isprintable():
        raise ConfigError(f"{key}: expected an absolute path, or '' for no socket, got {shown(v)}")
    if len(os.fsencode(v)) > SOCKET_PATH_MAX_BYTES or v.endswith("/"):
        raise ConfigError(f"{key}: expected a file path of at most {SOCKET_PATH_MAX_BYTES} bytes, got {shown(v)}")
    return v


def dir_or_off(key: str, v: Any) -> str:
    """An absolute directory path, or '' for none."""
    if v == "":
        return ""
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v or not v.isprintable() or len(v) > PATH_MAX_CHARS:
        raise ConfigError(f"{key}: expected an absolute directory path, or '' for none, got {shown(v)}")
    return v


def cgroup_pattern(key: str, v: Any) -> str:
    """A regular expression (Python's re) a cgroup path must match whole; '' for none."""
    if v == "":
        return ""
    if not isinstance(v, str) or len(v) > PATTERN_MAX_CHARS or not v.isprintable():
        raise ConfigError(
            f"{key}: expected a regular expression of at most {PATTERN_MAX_CHARS} printable characters, "
            f"or '' for none, got {shown(v)}"
        )
    try:
        re.compile(v)
    except re.error as exc:
        raise ConfigError(f"{key}: not a valid regular expression ({exc}): {shown(v)}") from None
    return v


_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")


def _account_name(key: str, v: Any, what: str, empty: str) -> str:
    if v == "":
        return ""
    if not isinstance(v, str) or len(v) > GROUP_NAME_MAX_CHARS or not _GROUP_NAME.fullmatch(v):
        raise ConfigError(
            f"{key}: expected a {what} name (letters, digits, '_', '-', '.'; at most {GROUP_NAME_MAX_CHARS} "
            f"characters) or '' for {empty}, got {shown(v)}"
        )
    return v


def group_name(key: str, v: Any) -> str:
    return _account_name(key, v, "group", "root only")


def user_name(key: str, v: Any) -> str:
    """A user name (top resolves it when it connects), or '' for none."""
    return _account_name(key, v, "user", "none")
