# SPDX-License-Identifier: Apache-2.0
"""app/selfcare.py's heap-trim policy, with the C library calls faked."""

from __future__ import annotations

from pathlib import Path

from allocwatch.app import selfcare
from allocwatch.app.selfcare import HeapTrimmer, heap_range, rss_anon_kib


class FakeLibc:
    def __init__(self, relock_rc: int = 0) -> None:
        self.calls: list[tuple] = []
        self.relock_rc = relock_rc
        self.malloc_trim = lambda pad: self.calls.append(("malloc_trim", pad)) or 1
        self.munlock = lambda start, n: self.calls.append(("munlock", start, n)) or 0
        self.mlock2 = lambda start, n, flags: self.calls.append(("mlock2", start, n, flags)) or self.relock_rc


def trimmer(rss: list[int], locked: bool = True, libc: FakeLibc | None = None) -> tuple[HeapTrimmer, FakeLibc]:
    fake = libc or FakeLibc()
    t = HeapTrimmer(locked, fake, grow_kib=8 * 1024, rss=lambda: rss[0], heap=lambda: (0x1000, 0x9000))
    return t, fake


def test_the_first_scan_trims_then_only_a_growth_of_8_mib_does():
    rss = [40_000]
    t, libc = trimmer(rss)
    t.after_scan()
    assert t.trims == 1
    rss[0] = 40_000 + 8 * 1024 - 1
    t.after_scan()
    assert t.trims == 1  # not grown enough
    rss[0] = 40_000 + 8 * 1024
    t.after_scan()
    assert t.trims == 2


def test_a_locked_heap_is_unlocked_for_the_trim_and_locked_again_on_fault():
    t, libc = trimmer([1])
    t.trim()
    assert libc.calls == [("munlock", 0x1000, 0x8000), ("malloc_trim", 0), ("mlock2", 0x1000, 0x8000, 1)]


def test_an_unlocked_heap_is_only_trimmed():
    t, libc = trimmer([1], locked=False)
    t.trim()
    assert libc.calls == [("malloc_trim", 0)]


def test_a_refused_relock_is_said_once_and_tried_again_at_each_trim():
    said: list[str] = []
    libc = FakeLibc(relock_rc=-1)
    t = HeapTrimmer(True, libc, rss=lambda: 1, heap=lambda: (0x1000, 0x9000), on_error=said.append)
    t.trim()
    t.trim()
    assert t.relock_failed and len(said) == 1 and "could not lock its heap again" in said[0]
    assert [c[0] for c in libc.calls].count("mlock2") == 2  # tried again
    libc.relock_rc = 0
    t.trim()
    assert not t.relock_failed
    libc.relock_rc = -1
    t.trim()
    assert len(said) == 2  # a new failure after a success is said again


def test_rss_that_stays_high_after_a_storm_asks_for_a_trim_every_recheck():
    rss = [30_000]
    libc = FakeLibc()
    t = HeapTrimmer(True, libc, grow_kib=8 * 1024, rss=lambda: rss[0], heap=lambda: (0x1000, 0x9000),
                    recheck_scans=3)
    t.after_scan()  # the first: trims; the lowest after a trim is 30,000
    rss[0] = 45_000
    t.after_scan()  # grown by 15,000: trims; that trim gave nothing back (the storm still holds it)
    assert t.trims == 2
    for _ in range(2):
        t.after_scan()  # flat: not yet
    assert t.trims == 2
    t.after_scan()  # three scans on, still 15,000 over the lowest: once more (the storm has ended)
    assert t.trims == 3
    rss[0] = 31_000
    for _ in range(6):
        t.after_scan()  # near the lowest: no more
    assert t.trims == 3


def test_what_it_gave_back_is_summed():
    rss = [50_000]
    t, libc = trimmer(rss)
    libc.malloc_trim = lambda pad: rss.__setitem__(0, 30_000) or 1
    t.after_scan()
    assert t.given_back_kib == 20_000


def test_readers_of_this_process():
    assert rss_anon_kib() and rss_anon_kib() > 0
    start, end = heap_range() or (0, 0)
    assert end > start > 0  # CPython's own allocations have made a heap
    assert heap_range(Path("/nonexistent")) is None and rss_anon_kib(Path("/nonexistent")) is None


def test_one_arena_asks_glibc_for_a_single_arena():
    calls = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    class NoMallopt:
        mallopt = None

    assert selfcare.one_arena(FakeLibc()) is True  # type: ignore[arg-type]
    assert calls == [(-8, 1)]  # M_ARENA_MAX in glibc's malloc.h
    assert selfcare.one_arena(NoMallopt()) is False  # type: ignore[arg-type]


def test_the_collector_runs_between_scans_only_every_so_many():
    from allocwatch.app.selfcare import Collector

    class FakeGc:
        def __init__(self):
            self.calls = []

        def freeze(self):
            self.calls.append("freeze")

        def disable(self):
            self.calls.append("disable")

        def enable(self):
            self.calls.append("enable")

        def collect(self):
            self.calls.append("collect")
            return 3

    fake = FakeGc()
    with Collector(every_scans=4, collector=fake) as c:
        assert fake.calls == ["freeze", "disable"]
        for _ in range(9):
            c.after_scan()
        assert fake.calls.count("collect") == 2 and c.passes == 2 and c.freed == 6
    assert fake.calls[-1] == "enable"
