# SPDX-License-Identifier: Apache-2.0
"""What this kernel offers: tracepoints (with their fields), functions, kprobes.

Read-only and injectable: every reader takes the root it reads from, so tests
describe another kernel with a directory of captured files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from allocwatch.core.classify import base_symbol
from allocwatch.kernel import procfs

_FIELD_RE = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(\d+);\s*size:(\d+);")
# Split-off pieces of a function (GCC's .cold and .part): not an entry point.
_FRAGMENT_RE = re.compile(r"\.(cold|part)\b")


@dataclass(frozen=True)
class KernelFeatures:
    """The facts the probe catalog is evaluated against."""

    release: str
    # "category:event" -> names of its own fields (common_* left out)
    tracepoints: dict[str, frozenset[str]] = field(default_factory=dict)
    # kernel text symbols, with compiler suffixes (.constprop.0 ...) kept
    functions: frozenset[str] = frozenset()
    kprobes: bool = False
    kprobes_why_not: str = ""
    proc_stack: bool = False
    # Why this /proc names other tids than the kernel's (procfs.foreign_pid_view);
    # "" when it names the same ones. Sites that find their task in /proc cannot attach.
    foreign_pids: str = ""
    # Of `functions`, those ftrace can trace (available_filter_functions); None
    # when the kernel does not list them. A kprobe event on a function outside
    # this list is refused with EINVAL since 45408c4f9250 ("tracing: kprobes:
    # Prohibit probing on notrace function", v5.0), unless the kernel has
    # CONFIG_KPROBE_EVENTS_ON_NOTRACE: Debian's 6.1 and 6.12 refuse the
    # allocator slow path's .constprop clone that way.
    traceable: frozenset[str] | None = None

    @property
    def version(self) -> tuple[int, int] | None:
        """(major, minor) from the release string, None if it does not parse."""
        m = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else None

    def has_tracepoint(self, name: str, fields: Iterable[str] = ()) -> bool:
        have = self.tracepoints.get(name)
        return have is not None and all(f in have for f in fields)

    def find_function(self, name: str) -> str | None:
        """The symbol to probe for `name`: itself, or a compiler clone of it,
        of those a kprobe may be put on."""
        candidates = [name] if name in self.functions else []
        candidates += sorted(
            f for f in self.functions if base_symbol(f) == name and f != name and not _FRAGMENT_RE.search(f)
        )
        if self.traceable is not None:
            candidates = [f for f in candidates if f in self.traceable]
        return candidates[0] if candidates else None

    def untraceable(self, name: str) -> list[str]:
        """Symbols for `name` that exist but that a kprobe may not be put on (notrace)."""
        if self.traceable is None:
            return []
        return sorted(f for f in self.functions if (f == name or base_symbol(f) == name) and f not in self.traceable)


def parse_format_fields(text: str) -> frozenset[str]:
    """Field names from a tracefs `format` file, without the common_* fields."""
    names = set()
    for line in procfs.lines(text):
        m = _FIELD_RE.match(line)
        if not m:
            continue
        decl = m.group("decl").strip()
        name = decl.split()[-1].split("[", 1)[0]
        if not name.startswith("common_"):
            names.add(name)
    return frozenset(names)


def read_tracepoints(tracefs: Path, wanted: Iterable[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in sorted(set(wanted)):
        category, event = name.split(":", 1)
        fmt = tracefs / "events" / category / event / "format"
        try:
            found[name] = parse_format_fields(fmt.read_text())
        except OSError:
            continue
    return found


def read_functions(kallsyms: Path, wanted: Iterable[str]) -> frozenset[str]:
    """Text symbols in `kallsyms` whose base name is one of `wanted`."""
    bases = set(wanted)
    found = set()
    try:
        with kallsyms.open(newline="\n", errors="surrogateescape") as f:  # "\n" only: see procfs.lines
            for line in f:
                parts = line.split()
                if len(parts) < 3 or parts[1] not in ("t", "T"):
                    continue
                if parts[2] in bases or base_symbol(parts[2]) in bases:
                    found.add(parts[2])
    except OSError:
        return frozenset()
    return frozenset(found)


def read_traceable(tracefs: Path, functions: frozenset[str]) -> frozenset[str] | None:
    """Which of `functions` ftrace lists in available_filter_functions
    ("name" or "name [module]" per line); None when there is no such file."""
    try:
        with (tracefs / "available_filter_functions").open(newline="\n", errors="surrogateescape") as f:
            return frozenset(name for line in f if (name := line.split(" ", 1)[0].strip()) in functions)
    except OSError:
        return None


def kprobe_support(tracefs: Path, sysfs: Path) -> tuple[bool, str]:
    """Whether kprobes can be created: the perf kprobe PMU (4.17+) or kprobe_events."""
    if (sysfs / "bus/event_source/devices/kprobe").exists():
        return True, ""
    if (tracefs / "kprobe_events").exists():
        return True, ""
    return False, "this kernel has no kprobes (CONFIG_KPROBES off: no kprobe PMU, no kprobe_events)"


def proc_stack_readable(procfs: Path) -> bool:
    try:
        (procfs / "self/stack").read_text()
        return True
    except OSError:
        return False


def read_features(
    tracefs: Path,
    wanted_tracepoints: Iterable[str],
    wanted_functions: Iterable[str],
    kallsyms: Path = Path("/proc/kallsyms"),
    sysfs: Path = Path("/sys"),
    procfs: Path = Path("/proc"),
    release: str | None = None,
    assume_proc_stack: bool | None = None,
    foreign_pids: str = "",
) -> KernelFeatures:
    """Features of the kernel behind these roots; for a captured kernel pass
    `sysfs` inside the capture and `assume_proc_stack` (this host's /proc says
    nothing about another kernel)."""
    kprobes, why_not = kprobe_support(tracefs, sysfs)
    functions = read_functions(kallsyms, wanted_functions)
    return KernelFeatures(
        release=release or os.uname().release,
        tracepoints=read_tracepoints(tracefs, wanted_tracepoints),
        functions=functions,
        traceable=read_traceable(tracefs, functions) if kprobes else None,
        kprobes=kprobes,
        kprobes_why_not=why_not,
        proc_stack=proc_stack_readable(procfs) if assume_proc_stack is None else assume_proc_stack,
        foreign_pids=foreign_pids,
    )
