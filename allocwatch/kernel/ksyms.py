# SPDX-License-Identifier: Apache-2.0
"""Kernel text addresses to function names, from /proc/kallsyms, kept small.

A stack taken in BPF and a shrinker's scan function are kernel addresses. bcc's
own symbolizer loads the whole of /proc/kallsyms into the C heap at its first
call and keeps it for the rest of the run: 13 MiB of RssAnon here (121,000 text
symbols), so the first report that named a shrinker or showed a stack taken at
reclaim entry grew the daemon by half its idle size.

`KernelSymbols` reads the file once, at the first name asked for, and keeps the
text symbols' addresses in one array (8 bytes each) and their names packed in
compressed blocks of NAMES_PER_BLOCK (some 0.6 MB here); a name is a block's
decompression away, and the last few blocks read are kept whole. 1.5 MB in all,
made in about 0.2 s. Like bcc's, the table is the one read first: a module
loaded later is named after the symbol below it.
"""

from __future__ import annotations

import array
import bisect
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

NAMES_PER_BLOCK = 256
BLOCKS_KEPT = 8  # decompressed blocks kept (a stack's frames fall in a few)
TEXT_TYPES = (b"t", b"T", b"w", b"W")  # code, and weak code (kallsyms' type letters)
UNKNOWN = "[unknown]"  # below every symbol, or no table (bcc's word for it)


class SymbolTable:
    """Sorted text symbols: addresses in an array, names in compressed blocks."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        addrs = array.array("Q")
        names = bytearray()
        ends = array.array("I")  # where each name ends in `names` (no object a symbol)
        for line in lines:
            parts = line.split(None, 3)
            if len(parts) < 3 or parts[1] not in TEXT_TYPES:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:  # not a kallsyms line
                continue
            if not addr:  # hidden (kptr_restrict): no address says anything
                continue
            addrs.append(addr)
            names += parts[2]
            ends.append(len(names))
        n = len(addrs)
        order: Sequence[int] = range(n)
        if any(addrs[i] < addrs[i - 1] for i in range(1, n)):
            order = sorted(range(n), key=addrs.__getitem__)
            addrs = array.array("Q", (addrs[i] for i in order))

        def name(i: int) -> bytes:
            return bytes(names[ends[i - 1] if i else 0:ends[i]])

        self._addrs = addrs
        self._blocks = [zlib.compress(b"\n".join(name(i) for i in order[b:b + NAMES_PER_BLOCK]))
                        for b in range(0, n, NAMES_PER_BLOCK)]
        self._open: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._addrs)

    def name(self, addr: int) -> str:
        """The function `addr` is in: the nearest symbol at or below it."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return UNKNOWN
        b = i // NAMES_PER_BLOCK
        names = self._open.get(b)
        if names is None:
            if len(self._open) >= BLOCKS_KEPT:
                self._open.clear()
            names = self._open[b] = zlib.decompress(self._blocks[b]).split(b"\n")
        return names[i % NAMES_PER_BLOCK].decode(errors="replace")


class KernelSymbols:
    """Names of kernel addresses; /proc/kallsyms is read at the first one asked for."""

    def __init__(self, path: Path = Path("/proc/kallsyms")) -> None:
        self._path = path
        self._table: SymbolTable | None = None
        self.why_not: str | None = None  # the read failed: every address is UNKNOWN

    def name(self, addr: int) -> str:
        return self._loaded().name(addr)

    def how(self) -> str:
        """How addresses are named, reading the table now if no name was asked
        for yet (`allocwatch probes`): its size, or "left as addresses: why"."""
        table = self._loaded()
        if self.why_not:
            return f"left as addresses: {self.why_not}"
        return f"named from {self._path} ({len(table):,} text symbols)"

    def _loaded(self) -> SymbolTable:
        table = self._table
        if table is None:
            table = self._table = self._read()
        return table

    def _read(self) -> SymbolTable:
        try:
            with open(self._path, "rb") as f:
                table = SymbolTable(f)
        except OSError as exc:
            self.why_not = f"{self._path}: {exc.strerror or exc}"
            return SymbolTable(())
        if not len(table):
            self.why_not = (f"{self._path}: no text symbol with an address (the kernel hides them without "
                            "CAP_SYSLOG, or with kptr_restrict=2)")
        return table
