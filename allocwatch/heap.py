"""Giving the C heap's free pages back to the kernel, locked or not.

A storm of waits makes and drops objects by the thousand; the C allocator keeps
the pages they freed, and `malloc_trim(0)` hands back every whole free page.
With the daemon's pages locked (`lock_memory`: mlockall, MCL_ONFAULT) it cannot:
madvise(MADV_DONTNEED) refuses locked pages. 10,000 stalled tasks at once left
13 MiB of such pages, free and resident (bench/memory.py). So the heap is
unlocked for the trim and locked again at once (on fault, as mlockall left it):
what it held free is then given back, and what it holds in use stays resident.

`HeapTrimmer.after_scan` trims when RssAnon has grown by `grow_kib` since the
last trim (the first scan trims too: what starting up left). A trim of a 60 MB
locked heap takes about 7 ms here, and RssAnon seldom grows by 8 MiB. The
decision is pure; the calls into libc are injected.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

GROW_KIB = 8 * 1024  # RssAnon growth that asks for a trim
# mlock2(2)'s flag, include/uapi/asm-generic/mman-common.h: since v4.4 (b0f205c2a308, "mm: mlock:
# add mlock flags to enable VM_LOCKONFAULT usage", the commit of MCL_ONFAULT in preflight.py too)
MLOCK_ONFAULT = 1


def heap_range(maps: Path = Path("/proc/self/maps")) -> tuple[int, int] | None:
    """(start, end) of the [heap] mappings (one or several, by lock state)."""
    spans = []
    try:
        for line in maps.read_text().splitlines():
            if line.endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                spans.append((start, end))
    except (OSError, ValueError):
        return None
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def rss_anon_kib(status: Path = Path("/proc/self/status")) -> int | None:
    try:
        for line in status.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Libc:
    """The three calls, from the C library (None where it has none)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.malloc_trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
        self.munlock: Callable[[int, int], int] | None = None
        self.mlock2: Callable[[int, int, int], int] | None = None
        for name in ("munlock", "mlock2"):
            fn = getattr(libc, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + ([ctypes.c_int] if name == "mlock2" else [])
                setattr(self, name, fn)


class HeapTrimmer:
    def __init__(self, locked: bool, libc: Libc | None = None, grow_kib: int = GROW_KIB,
                 rss: Callable[[], int | None] = rss_anon_kib,
                 heap: Callable[[], tuple[int, int] | None] = heap_range) -> None:
        self.locked = locked  # lock_memory took: the heap's pages are locked on fault
        self._libc = libc or Libc()
        self._grow_kib = grow_kib
        self._rss = rss
        self._heap = heap
        self._after_last_kib: int | None = None  # RssAnon after the last trim
        self.trims = 0
        self.given_back_kib = 0  # RssAnon before a trim less after it, summed
        self.relock_failed = False  # mlock2 refused once: the heap stays unlocked from then on

    def due(self, rss_kib: int | None) -> bool:
        if rss_kib is None:
            return False
        return self._after_last_kib is None or rss_kib - self._after_last_kib >= self._grow_kib

    def after_scan(self) -> None:
        before = self._rss()
        if not self.due(before):
            return
        self.trim()
        after = self._rss()
        self._after_last_kib = after
        if before is not None and after is not None:
            self.given_back_kib += max(0, before - after)

    def trim(self) -> None:
        libc = self._libc
        if libc.malloc_trim is None:
            return
        span = self._heap() if self.locked and not self.relock_failed else None
        if span is not None and libc.munlock is not None and libc.mlock2 is not None:
            start, end = span
            libc.munlock(start, end - start)
            try:
                libc.malloc_trim(0)
            finally:
                span = self._heap() or span  # the trim may have moved the heap's end
                if libc.mlock2(span[0], span[1] - span[0], MLOCK_ONFAULT) != 0:
                    self.relock_failed = True
        else:
            libc.malloc_trim(0)
        self.trims += 1
