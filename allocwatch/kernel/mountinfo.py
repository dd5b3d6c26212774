# SPDX-License-Identifier: Apache-2.0
"""/proc/PID/mountinfo, parsed once for everyone (proc(5), "mountinfo").

A line is `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS`.
The kernel writes space, tab, newline and backslash in ROOT and POINT as
`\\ooo` (octal, show_mountinfo() -> seq_path_root() with the escape set " \\t\\n\\\\");
every other byte is as the path has it, so the file is decoded with
surrogateescape, as Python decodes file names, and so is an escaped byte.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from allocwatch.kernel import procfs

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    root: str  # the part of the file system mounted here ("/" for all of it)
    point: str
    fstype: str
    source: str
    superopts: tuple[str, ...]


def unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""

    def byte(m: re.Match[str]) -> str:
        n = int(m.group(1), 8)
        return chr(n) if n < 0x80 else chr(0xDC00 + n)  # as surrogateescape would decode it

    return _OCTAL.sub(byte, field)


def parse_line(line: str) -> Mount | None:
    """One line, or None when it is not a mountinfo line."""
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
        fstype, source, superopts = fields[sep + 1], fields[sep + 2], fields[sep + 3]
    except (ValueError, IndexError):
        return None
    return Mount(unescape(fields[3]), unescape(fields[4]), fstype, source, tuple(superopts.split(",")))


def parse(lines: Iterable[str]) -> list[Mount]:
    return [m for line in lines if (m := parse_line(line)) is not None]


def read(path: Path = MOUNTINFO) -> list[Mount]:
    """The mounts `path` lists, in its order (a later mount on the same point is on top)."""
    return parse(procfs.read_lines(path))


def fstype_at(point: str, mounts: Iterable[Mount]) -> str | None:
    """The file system type mounted exactly at `point` (the top of a stack of
    mounts), or None when `point` is not a mount point."""
    found = None
    for m in mounts:
        if m.point == point:
            found = m.fstype  # later lines are mounted on top of earlier ones
    return found
