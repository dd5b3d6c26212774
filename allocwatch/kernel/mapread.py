# SPDX-License-Identifier: Apache-2.0
"""Reading a BPF hash map whole, every scan, at the cost of what changed.

A scan reads every entry of the in-flight maps, and with 10,000 tasks stalled
nearly all of them are the bytes the last scan read. `MapReader` reads them by
BPF_MAP_LOOKUP_BATCH calls (v5.6, cb4d03ab499d) of at most BATCH_ENTRIES entries
into two small buffers it keeps from scan to scan, copies out the bytes the
entries fill, and decodes an entry only when its key is new or its value's
bytes differ from the last read: an
unchanged entry gives back the very object decoded before, so the layers above
can keep what they derived from it by identity.

The batch call itself is given (bcc's libbcc `bpf_lookup_batch`), so this
module never imports bcc; it reads by a map's own item walk instead
after a refusal (`fall_back`) on kernels without batch operations.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# (fd, in_batch, out_batch, keys, values, count) -> 0, or -1 with errno set
BatchLookup = Callable[..., int]


CHUNK = 64  # entries compared at once when the keys have not moved
BATCH_ENTRIES = 1024  # entries a batch call fills at most (a bucket bigger than that: more)
_INT_KEYS = {4: "I", 8: "Q"}  # key sizes read as native unsigned ints (memoryview formats)
ENOTSUPP = 524  # the kernel's own "operation not supported", which reaches user space here


class BatchUnsupported(Exception):
    """The kernel has no batch lookup for this map (before v5.6, or not a hash)."""


class MapReader(Generic[T]):
    """One hash map's entries, decoded; `decode(key_bytes, value_bytes)` runs
    only for entries that are new or changed since the last `read`."""

    def __init__(self, fd: int, key_size: int, value_size: int, max_entries: int,
                 batch: BatchLookup, decode: Callable[[bytes, bytes], T]) -> None:
        self._fd = fd
        self._ks = key_size
        self._vs = value_size
        self._max = max_entries
        self._batch = batch
        self._decode = decode
        self._room = 0  # entries a batch call may fill (_buffers)
        self._buffers(min(max_entries, BATCH_ENTRIES))
        self._last: dict[bytes, tuple[bytes, T]] = {}
        self._index: dict[int, int] = {}  # int keys: the entry's place in the last read (_pos)
        self._pos: tuple[bytes, bytes, list[T]] | None = None  # the last read: keys, values, objects
        self._walk: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None
        self.decoded = 0  # entries decoded since start (new or changed), for tests and benchmarks
        self.calls = 0  # batch calls since start

    def _buffers(self, room: int) -> None:
        """Buffers for `room` entries a call. Anonymous mappings, not ctypes
        buffers: a page costs memory only once the kernel has written into it."""
        self._room = max(room, 1)
        self._kmap = mmap.mmap(-1, self._ks * self._room)
        self._vmap = mmap.mmap(-1, self._vs * self._room)
        self._keys = (ctypes.c_char * len(self._kmap)).from_buffer(self._kmap)
        self._values = (ctypes.c_char * len(self._vmap)).from_buffer(self._vmap)

    def raw(self) -> tuple[bytes, bytes, int]:
        """The map's keys and values, packed, and how many entries there are.

        A call fills at most BATCH_ENTRIES entries and its bytes are copied out
        before the next: the copy is what the next read compares against, so a
        buffer the size of the map would hold its bytes twice (10,000 task
        accounts: 3.4 MB more)."""
        in_token = ctypes.c_uint32(0)
        out_token = ctypes.c_uint32(0)
        count = ctypes.c_uint32(0)
        ks, vs = self._ks, self._vs
        keys: list[bytes] = []
        values: list[bytes] = []
        total = 0
        while total < self._max:
            count.value = min(self._room, self._max - total)
            self.calls += 1
            rc = self._batch(self._fd, ctypes.byref(in_token) if total else None, ctypes.byref(out_token),
                             self._keys, self._values, ctypes.byref(count))
            err = ctypes.get_errno() if rc else 0
            if err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP) and total == 0:
                raise BatchUnsupported(f"map fd {self._fd}: {errno.errorcode.get(err, str(err))}")
            if err == errno.ENOSPC and count.value == 0 and self._room < self._max:
                # one bucket holds more entries than a call's room: a bigger
                # buffer, and the same bucket again
                self._buffers(min(self._room * 2, self._max))
                continue
            if err not in (0, errno.ENOENT, errno.ENOSPC):
                # ENOENT: the whole map was read; ENOSPC: a bucket bigger than the
                # room left (the buffer already holds the whole map: a race).
                # Otherwise count may be what was passed in (an old kernel leaves it).
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on map fd {self._fd}: {errno.errorcode.get(err, err)}")
            n = count.value
            if n:
                keys.append(self._kmap[:ks * n])
                values.append(self._vmap[:vs * n])
            total += n
            if rc == 0 and n:  # the buffer filled before the map ended: go on after out_token
                in_token.value = out_token.value
                continue
            break
        if len(keys) == 1:
            return keys[0], values[0], total
        return b"".join(keys), b"".join(values), total

    def read(self) -> list[T]:
        """Every entry, decoded: by batch calls, or by the walk on a kernel without it."""
        if self._walk is not None:
            return self.decode_all(self._walk())
        keys, values, n = self.raw()
        ks, vs = self._ks, self._vs
        if ks not in _INT_KEYS:
            return self.decode_all((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(n))
        if self._pos is not None and self._pos[0] == keys:
            return self._read_in_place(keys, values, n)
        # A key of 4 or 8 bytes is looked up as the int it packs (no slice, a cheap
        # hash), and gives the entry's place in the last read, whose buffers are
        # kept: no bytes are kept per entry.
        ids: list[int] = memoryview(keys).cast(_INT_KEYS[ks]).tolist()  # type: ignore[call-overload]
        last = self._index
        old, objs = (self._pos[1], self._pos[2]) if self._pos is not None else (b"", [])
        now: dict[int, int] = {}
        out = []
        for i in range(n):
            ident = ids[i]
            j = last.get(ident)
            at = i * vs
            if j is not None and values[at:at + vs] == old[j * vs:(j + 1) * vs]:
                obj = objs[j]
            else:
                obj = self._decode(keys[i * ks:(i + 1) * ks], values[at:at + vs])
                self.decoded += 1
            now[ident] = i
            out.append(obj)
        self._index = now
        self._pos = (keys, values, out)
        return out

    def _read_in_place(self, keys: bytes, values: bytes, n: int) -> list[T]:
        """The same keys in the same order as the last read: entries written in
        place move nothing in a hash map, so the values are compared by position,
        a run of CHUNK entries at a time (10,000 stalled: a few changed entries a
        scan, so about 160 compares, not 10,000 lookups)."""
        assert self._pos is not None
        _, old, objs = self._pos
        if values == old:
            return objs
        ks, vs = self._ks, self._vs
        step = CHUNK * vs
        out: list[T] = []
        for off in range(0, n * vs, step):
            end = min(off + step, n * vs)
            if values[off:end] == old[off:end]:
                out.extend(objs[off // vs:end // vs])
                continue
            for j in range(off, end, vs):
                v = values[j:j + vs]
                i = j // vs
                if v == old[j:j + vs]:
                    out.append(objs[i])
                    continue
                obj = self._decode(keys[i * ks:(i + 1) * ks], v)
                self.decoded += 1
                out.append(obj)  # same keys, same places: the index stays right
        self._pos = (keys, values, out)
        return out

    def fall_back(self, walk: Callable[[], Iterable[tuple[bytes, bytes]]]) -> None:
        """Read by `walk()` from now on (the kernel refused the batch call)."""
        self._walk = walk

    def decode_all(self, entries: Iterable[tuple[bytes, bytes]]) -> list[T]:
        """Decode `entries` (key bytes, value bytes), reusing the last read's objects."""
        last = self._last
        now: dict[bytes, tuple[bytes, T]] = {}
        out = []
        for k, v in entries:
            prev = last.get(k)
            if prev is not None and prev[0] == v:
                obj = prev[1]
            else:
                obj = self._decode(k, v)
                self.decoded += 1
            now[k] = (v, obj)
            out.append(obj)
        self._last = now
        return out


def raw_bytes(obj: Any, size: int) -> bytes:
    """A ctypes object's own bytes (not bytes(): bcc gives an int-keyed map's keys
    back as Python ints, and bytes(n) is n zero bytes)."""
    if isinstance(obj, int):
        return obj.to_bytes(size, "little")
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))
