# SPDX-License-Identifier: Apache-2.0
"""The configuration file: a bounded read of a regular file, and a strict YAML loader.

A file that cannot be read, is not a regular file or is larger than
CONFIG_MAX_BYTES is ConfigUnreadable (exit 4). The loader refuses anchors and
aliases, merge keys, duplicate keys, nesting deeper than YAML_MAX_DEPTH and
more than YAML_MAX_NODES values, so no file costs more than a bounded amount
of time and memory.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocwatch.config.checks import one_line, shown
from allocwatch.errors import ConfigError, ConfigUnreadable

CONFIG_MAX_BYTES = 1 << 20  # 1 MiB
YAML_MAX_DEPTH = 16  # nested mappings/sequences
YAML_MAX_NODES = 10000  # scalars, mappings and sequences in one file
_NUMBER_MAX_CHARS = 64  # a YAML number literal longer than this is refused before it is built


def shown_path(path: Path) -> str:
    text = str(path)
    return text if text.isprintable() else shown(text)


def _read_capped(path: Path) -> bytes:
    """The bytes of a regular file of at most CONFIG_MAX_BYTES, without
    blocking on a FIFO or reading a device."""
    where = shown_path(path)

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
                        raise ConfigError(f"duplicate key {shown(key)} at line {line} (first at line {first})")
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
        return one_line(str(exc))
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return one_line(str(problem)) + where


def load_file(path: Path) -> dict[str, Any]:
    import yaml

    data_bytes = _read_capped(path)
    where = shown_path(path)
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
        raise ConfigError(f"{where}: not valid YAML: a value could not be built: {one_line(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys at the top level, got {shown(data)}")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: top-level keys must be strings, got {shown(key)}")
    return data
