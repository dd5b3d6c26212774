# SPDX-License-Identifier: Apache-2.0
"""Which device a writeback wait waits on, and how that device is doing (pure).

writeback:folio_wait_writeback names the backing device (its bdi: "7:3" for a
block device) just before a task sleeps on a folio's writeback; the BPF side
keeps the last such note per task. A note belongs to:
- the D-state sleep it hinted: same task, the sleep began at most the hint's
  age after the note (an older note is an earlier sleep's, a newer one the
  next's), as the dirty-throttle pause is joined;
- a direct or memcg reclaim wait of the task in flight that was open when the
  note was taken: reclaim that waits on writeback (the memcg writeback stall)
  names that device too.
The device's write rate is measured between reads of its counters seconds
apart, each given with the time it was read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from allocwatch.core.model import InflightWait, WritebackNote
from allocwatch.core.sites import SITE_DSTATE, Site

SECTOR_BYTES = 512  # /sys/block/*/stat counts 512-byte sectors whatever the device's block size
# Reclaim waits that sit in folio_wait_writeback (shrink_folio_list) while they last.
RECLAIM_SITES = (int(Site.DIRECT_RECLAIM), int(Site.MEMCG_RECLAIM))
RATE_MIN_SPAN_NS = 5_000_000_000  # a write rate is taken over at least this
RATE_WINDOW_NS = 10_000_000_000  # and at most about this, ending at the last read
RATE_READ_EVERY_NS = 1_000_000_000  # reads kept: about one a second


def note_belongs(w: InflightWait, note: WritebackNote, hint_max_age_ns: int) -> bool:
    """Whether the task's last writeback note is about this wait in flight."""
    if note.bdi == "":
        return False
    if w.site == SITE_DSTATE:
        return w.site_hint == Site.WRITEBACK_WAIT and 0 <= w.start_ns - note.time_ns <= hint_max_age_ns
    return w.site in RECLAIM_SITES and note.time_ns >= w.start_ns


class NoteJoin:
    """Gives each wait in flight the writeback note that belongs to it. A wait
    and a note both unchanged since the last scan give the very object joined
    then (the map reader hands back unchanged entries as the same objects)."""

    def __init__(self, hint_max_age_ns: int) -> None:
        self.hint_max_age_ns = hint_max_age_ns
        self._last: dict[tuple[int, int], tuple[InflightWait, WritebackNote, InflightWait]] = {}

    def join(self, waits: Sequence[InflightWait], notes: Mapping[int, WritebackNote]) -> list[InflightWait]:
        kept: dict[tuple[int, int], tuple[InflightWait, WritebackNote, InflightWait]] = {}
        out = []
        for w in waits:
            note = notes.get(w.tid)
            if note is None or not note_belongs(w, note, self.hint_max_age_ns):
                out.append(w)
                continue
            key = (w.tid, w.site)
            last = self._last.get(key)
            if last is None or last[0] is not w or last[1] is not note:
                last = (w, note, dataclasses.replace(w, writeback=note))
            kept[key] = last
            out.append(last[2])
        self._last = kept
        return out


@dataclass(frozen=True, slots=True)
class DeviceCounters:
    """One read of a block device's I/O counters (/sys/block/DEV/stat, inflight)."""

    written_sectors: int  # since boot, 512 bytes each
    writes_in_flight: int | None  # write requests issued to the driver and not completed
    reads_in_flight: int | None


@dataclass(frozen=True, slots=True)
class DeviceState:
    """A backing device as a report shows it: its names and how its writes go."""

    bdi: str  # as the kernel's tracepoint named it: "7:3"
    device: str | None  # the block device: "loop3"; None when the bdi is not a block device
    written_bytes_per_s: float | None  # over the last written_over_s seconds of reads
    writes_in_flight: int | None
    reads_in_flight: int | None
    write_limit_bytes_per_s: int | None = None  # a blkio/io throttle rule on the device, where one is read
    written_over_s: float | None = None
    # its partitions ("sda1"): a file system's threads are named after the partition it is on
    partitions: tuple[str, ...] = ()


class WriteRates:
    """Bytes written per second per device, from counters read at given times.

    The rate is taken over the reads of the last RATE_WINDOW_NS, and only once
    they span RATE_MIN_SPAN_NS: a throttled device writes in bursts (blk-throttle
    holds a large bio until its budget covers it all: 4 MiB at once, every 8 s,
    at 512 KiB/s), so a rate over one second swings between nothing and eight
    times the limit."""

    def __init__(self, min_span_ns: int = RATE_MIN_SPAN_NS, window_ns: int = RATE_WINDOW_NS) -> None:
        self.min_span_ns = min_span_ns
        self.window_ns = window_ns
        self._reads: dict[str, list[tuple[int, int]]] = {}  # device -> (read at ns, written sectors), oldest first
        self._rate: dict[str, tuple[float, float]] = {}  # device -> (bytes/s, over seconds)

    def observe(self, device: str, written_sectors: int, now_ns: int) -> tuple[float, float] | None:
        """(bytes/s, over seconds) as of this read, or None until the reads span enough."""
        for d in [d for d, r in self._reads.items() if now_ns - r[-1][0] > self.window_ns]:
            del self._reads[d]  # not read for a window: starts again
            self._rate.pop(d, None)
        reads = self._reads.setdefault(device, [])
        if reads and written_sectors < reads[-1][1]:  # the counters went back: a new device under that name
            reads.clear()
            self._rate.pop(device, None)
        if len(reads) >= 2 and now_ns - reads[-2][0] < RATE_READ_EVERY_NS:
            reads[-1] = (now_ns, written_sectors)  # the last read stands in: about one kept a second
        else:
            reads.append((now_ns, written_sectors))
        while len(reads) > 2 and now_ns - reads[1][0] >= self.window_ns:
            del reads[0]  # the oldest that still leaves a full window
        span_ns = now_ns - reads[0][0]
        if span_ns >= self.min_span_ns:
            self._rate[device] = ((written_sectors - reads[0][1]) * SECTOR_BYTES * 1e9 / span_ns, span_ns / 1e9)
        return self._rate.get(device)

    def rate(self, device: str) -> tuple[float, float] | None:
        return self._rate.get(device)


def state_of(bdi: str, device: str | None, counters: DeviceCounters | None, rate: tuple[float, float] | None,
             limit: int | None, partitions: tuple[str, ...] = ()) -> DeviceState:
    return DeviceState(bdi, device, rate[0] if rate else None, counters.writes_in_flight if counters else None,
                       counters.reads_in_flight if counters else None, limit, rate[1] if rate else None,
                       partitions)

