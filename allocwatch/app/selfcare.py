# SPDX-License-Identifier: Apache-2.0
"""Keeping the watchdog alive under the pressure it watches: its pages locked in
memory, its oom_score_adj lowered, and the C heap's free pages given back,
locked or not.

A storm of waits makes and drops objects by the thousand; the C allocator keeps
the pages they freed, and `malloc_trim(0)` hands back every whole free page.
With the daemon's pages locked (`lock_memory`: mlockall, MCL_ONFAULT) it cannot:
madvise(MADV_DONTNEED) refuses locked pages. 10,000 stalled tasks at once left
13 MiB of such pages, free and resident (bench/memory.py). So the heap is
unlocked for the trim and locked again at once (on fault, as mlockall left it):
what it held free is then given back, and what it holds in use stays resident.
For those milliseconds the heap's pages could be reclaimed like any other's (and
faulted back in when touched); a relock that fails is said once and tried again.

That works for the main arena only, the [heap] that brk grows: glibc gives each
new thread an arena of its own (up to 8 a core), mappings of up to 64 MiB outside
[heap], and there, under the lock, what its threads free is never given back.
malloc_trim(0) walks every arena, but its madvise of their free pages is refused
on locked pages; and when the top of a thread's heap is freed, glibc shrinks the
heap with the same madvise, refused as well, and counts those pages gone while
they stay resident and locked, where no later trim, unlocked or not, looks again
(glibc 2.36: a thread that frees 40,000 chunks of 1 KiB under mlockall keeps all
42 MB). 16 clients of top's socket once left 63 MB so in the socket thread's arena. So `one_arena` (mallopt M_ARENA_MAX
1, before any thread starts) keeps every thread's allocations in [heap]: a freed
top is given back by brk even while locked, and the trim unlocks the rest.

`HeapTrimmer.after_scan` trims when RssAnon has grown by `grow_kib` since the
last trim (the first scan trims too: what starting up left). A trim of a 60 MB
locked heap takes about 7 ms here, and RssAnon seldom grows by 8 MiB. The
decision is pure; the calls into libc are injected.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from allocwatch.app import preflight
from allocwatch.kernel import procfs

GROW_KIB = 8 * 1024  # RssAnon growth that asks for a trim
RECHECK_SCANS = 60  # and how often RssAnon that stays high asks for one
# mlock2(2)'s flag, include/uapi/asm-generic/mman-common.h: since v4.4 (b0f205c2a308, "mm: mlock:
# add mlock flags to enable VM_LOCKONFAULT usage", the commit of MCL_ONFAULT below too)
MLOCK_ONFAULT = 1


def heap_range(maps: Path = Path("/proc/self/maps")) -> tuple[int, int] | None:
    """(start, end) of the [heap] mappings (one or several, by lock state)."""
    spans = []
    try:
        for line in procfs.read_lines(maps):
            if line.endswith("[heap]"):
                start, end = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                spans.append((start, end))
    except (OSError, ValueError):
        return None
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def rss_kib(status: Path = Path("/proc/self/status")) -> dict[str, int]:
    """RssAnon and RssFile of this process, in KiB (what is readable of them)."""
    out = {}
    try:
        for line in procfs.read_lines(status):
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def rss_anon_kib(status: Path = Path("/proc/self/status")) -> int | None:
    return rss_kib(status).get("RssAnon")


class Libc:
    """The four calls, from the C library (None where it has none)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.malloc_trim: Callable[[int], int] | None = None
        self.munlock: Callable[[int, int], int] | None = None
        self.mlock2: Callable[[int, int, int], int] | None = None
        self.mallopt: Callable[[int, int], int] | None = None
        for name, argtypes in (("malloc_trim", [ctypes.c_size_t]),
                               ("munlock", [ctypes.c_void_p, ctypes.c_size_t]),
                               ("mlock2", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]),
                               ("mallopt", [ctypes.c_int, ctypes.c_int])):
            fn = getattr(libc, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = argtypes, ctypes.c_int
                setattr(self, name, fn)


# mallopt(3)'s parameter, glibc's malloc/malloc.h (since glibc 2.10)
M_ARENA_MAX = -8


def one_arena(libc: Libc | None = None) -> bool:
    """Every thread allocates from the main arena, the [heap] a trim can give back
    while the pages are locked (see above). Only before the first thread allocates:
    glibc fixes its arena limit when a thread first needs an arena, and a thread keeps
    the arena it has. True when the C library took it (glibc's mallopt returns 1);
    False without one (another C library: it has no arenas of this kind to keep)."""
    mallopt = (libc or Libc()).mallopt
    return mallopt is not None and mallopt(M_ARENA_MAX, 1) == 1


class HeapTrimmer:
    def __init__(self, locked: bool, libc: Libc | None = None, grow_kib: int = GROW_KIB,
                 rss: Callable[[], int | None] = rss_anon_kib,
                 heap: Callable[[], tuple[int, int] | None] = heap_range,
                 on_error: Callable[[str], None] = lambda line: None, recheck_scans: int = RECHECK_SCANS) -> None:
        self.locked = locked  # lock_memory took: the heap's pages are locked on fault
        self._libc = libc or Libc()
        self._grow_kib = grow_kib
        self._rss = rss
        self._heap = heap
        self._on_error = on_error  # one line, said when the heap cannot be locked again
        self._recheck_scans = recheck_scans
        self._after_last_kib: int | None = None  # RssAnon after the last trim
        self._low_kib: int | None = None  # the lowest RssAnon after a trim
        self._scans_since = 0
        self.trims = 0
        self.given_back_kib = 0  # RssAnon before a trim less after it, summed
        self.relock_failed = False  # the last relock was refused: tried again at the next trim

    def due(self, rss_kib: int | None) -> bool:
        """The first scan; RssAnon grown by grow_kib since the last trim; or, every
        recheck_scans, RssAnon grow_kib over the lowest after a trim: a storm that
        ended leaves its freed pages while RssAnon stays flat."""
        if rss_kib is None:
            return False
        if self._after_last_kib is None or rss_kib - self._after_last_kib >= self._grow_kib:
            return True
        return (self._scans_since >= self._recheck_scans and self._low_kib is not None
                and rss_kib - self._low_kib >= self._grow_kib)

    def after_scan(self) -> None:
        self._scans_since += 1
        before = self._rss()
        if not self.due(before):
            return
        self.trim()
        after = self._rss()
        self._after_last_kib = after
        self._scans_since = 0
        if after is not None:
            self._low_kib = after if self._low_kib is None else min(self._low_kib, after)
        if before is not None and after is not None:
            self.given_back_kib += max(0, before - after)

    def trim(self) -> None:
        libc = self._libc
        if libc.malloc_trim is None:
            return
        span = self._heap() if self.locked else None
        if span is not None and libc.munlock is not None and libc.mlock2 is not None:
            start, end = span
            libc.munlock(start, end - start)  # refused: nothing unlocked, the trim gives back less
            try:
                libc.malloc_trim(0)
            finally:
                span = self._heap() or span  # the trim may have moved the heap's end
                ok = libc.mlock2(span[0], span[1] - span[0], MLOCK_ONFAULT) == 0
                if not ok and not self.relock_failed:
                    err = ctypes.get_errno()
                    self._on_error(f"could not lock its heap again after giving pages back "
                                   f"({os.strerror(err) if err else 'refused'}): under pressure those pages may "
                                   "be reclaimed; it tries again at the next trim")
                self.relock_failed = not ok
        else:
            libc.malloc_trim(0)
        self.trims += 1


# -- surviving the pressure it watches ---------------------------------------------


COLLECT_SCANS = 30  # scans between two runs of the cyclic garbage collector


class Collector:
    """Python's cyclic garbage collector, run between scans rather than inside
    them. Left to itself it runs when allocations outnumber frees by 700, and a
    full pass whenever the objects that survived grow by a quarter: a block of
    10,000 tasks makes some 50,000 dicts and lists, so nearly every block paid a
    full pass over every object the daemon holds (a sixth of the block's time,
    more at 20,000: the pass grows with what is held). Reference counting frees
    all but cycles, which the daemon seldom makes; `start` freezes what loading
    left (never scanned again) and turns the automatic passes off, and
    `after_scan` collects everything every `every_scans` scans. The module is
    injected (tests give a fake)."""

    def __init__(self, every_scans: int = COLLECT_SCANS, collector: Any = gc) -> None:
        self._every = every_scans
        self._gc = collector
        self._scans = 0
        self.passes = 0
        self.freed = 0  # objects in cycles the passes found

    def start(self) -> None:
        self._gc.freeze()
        self._gc.disable()

    def after_scan(self) -> None:
        self._scans += 1
        if self._scans >= self._every:
            self._scans = 0
            self.passes += 1
            self.freed += self._gc.collect()

    def stop(self) -> None:
        """Automatic passes again (the summary and shutdown make what they make)."""
        self._gc.enable()

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lower_oom_score(adj: int, path: Path = Path("/proc/self/oom_score_adj")) -> str | None:
    """Ask the OOM killer to spare the watchdog; None when done, else why not (one line).
    Lowering it needs CAP_SYS_RESOURCE; a unit's OOMScoreAdjust= does it without."""
    try:
        if int(path.read_text()) <= adj:
            return None
        path.write_text(f"{adj}\n")
        return None
    except OSError as exc:
        return (f"could not set its own oom_score_adj to {adj} ({exc.strerror}; lowering it needs "
                "CAP_SYS_RESOURCE): the OOM killer ranks it like any task of its size")
    except ValueError:
        return None


# mlockall(2) flags, include/uapi/asm-generic/mman-common.h. MCL_ONFAULT since
# v4.4 (b0f205c2a308, "mm: mlock: add mlock flags to enable VM_LOCKONFAULT usage").
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


CAP_IPC_LOCK = 14


def lock_memory(
    mlockall: Callable[[int], int] | None = None,
    effective: int | None = None,
    memlock_limit: int | None = None,
) -> str | None:
    """Keep the scan loop's pages in RAM: each page is locked when it is first
    touched (MCL_ONFAULT), so what is not resident now is never pulled in.
    None when done, else why not.

    Only with CAP_IPC_LOCK or no RLIMIT_MEMLOCK: under a finite limit,
    MCL_FUTURE would make every later allocation past it fail."""
    effective = preflight.effective_caps() if effective is None else effective
    memlock_limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] if memlock_limit is None else memlock_limit
    if not effective >> CAP_IPC_LOCK & 1 and memlock_limit != resource.RLIM_INFINITY:
        return ("did not lock its pages in memory (that needs CAP_IPC_LOCK, or RLIMIT_MEMLOCK unlimited: "
                "LimitMEMLOCK=infinity): under pressure its own pages may be reclaimed")
    if mlockall is None:
        libc = ctypes.CDLL(None, use_errno=True)
        mlockall = libc.mlockall
    if mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0:
        return None
    err = ctypes.get_errno()
    return (f"could not lock its pages in memory ({os.strerror(err)}; it needs CAP_IPC_LOCK or a "
            "large enough RLIMIT_MEMLOCK): under pressure its own pages may be reclaimed")
