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
The device's write rate is measured between two reads of its counters, each
given with the time it was read.
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
RATE_MIN_INTERVAL_NS = 1_000_000_000  # a rate over less than this is mostly the reads' own jitter
RATE_FORGET_NS = 60_000_000_000  # a device not read for this long starts again


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
    written_bytes_per_s: float | None  # between two reads, at least RATE_MIN_INTERVAL_NS apart
    writes_in_flight: int | None
    reads_in_flight: int | None
    write_limit_bytes_per_s: int | None = None  # a blkio/io throttle rule on the device, where one is read


class WriteRates:
    """Bytes written per second per device, from counters read at given times."""

    def __init__(self, min_interval_ns: int = RATE_MIN_INTERVAL_NS, forget_ns: int = RATE_FORGET_NS) -> None:
        self.min_interval_ns = min_interval_ns
        self.forget_ns = forget_ns
        self._base: dict[str, tuple[int, int]] = {}  # device -> (read at ns, written sectors)
        self._rate: dict[str, tuple[int, float]] = {}  # device -> (measured at ns, bytes/s)

    def observe(self, device: str, written_sectors: int, now_ns: int) -> float | None:
        """The device's rate as of this read: over the last interval of at least
        min_interval_ns that ended at or before now; None until there is one."""
        for d in [d for d, (t, _) in self._base.items() if now_ns - t > self.forget_ns]:
            del self._base[d]
            self._rate.pop(d, None)
        base = self._base.get(device)
        if base is None or written_sectors < base[1]:  # first read, or the counters went back (a new device)
            self._base[device] = (now_ns, written_sectors)
            self._rate.pop(device, None)
            return None
        elapsed_ns = now_ns - base[0]
        if elapsed_ns >= self.min_interval_ns:
            rate = (written_sectors - base[1]) * SECTOR_BYTES * 1e9 / elapsed_ns
            self._rate[device] = (now_ns, rate)
            self._base[device] = (now_ns, written_sectors)
        kept = self._rate.get(device)
        return kept[1] if kept is not None else None

    def rate(self, device: str) -> float | None:
        kept = self._rate.get(device)
        return kept[1] if kept is not None else None


def state_of(bdi: str, device: str | None, counters: DeviceCounters | None, rate: float | None,
             limit: int | None) -> DeviceState:
    return DeviceState(bdi, device, rate, counters.writes_in_flight if counters else None,
                       counters.reads_in_flight if counters else None, limit)

