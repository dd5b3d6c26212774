# SPDX-License-Identifier: Apache-2.0
"""Reading a BPF hash map whole, every scan, at the cost of what changed.

A scan reads every entry of the in-flight maps, and with 10,000 tasks stalled
nearly all of them are the bytes the last scan read. `MapReader` makes
BPF_MAP_LOOKUP_BATCH calls (v5.6, cb4d03ab499d) of BATCH_ENTRIES at a time into
two buffers it keeps from scan to scan, and decodes an entry only when its key
is new or its value's bytes differ from the last read: an unchanged entry gives
back the very object decoded before, so the layers above can keep what they
derived from it by identity.

What the next read compares against is a digest of each value and of each run
of CHUNK values, not a copy of their bytes (10,000 task accounts: 3.4 MB), and
the values are read where the kernel wrote them, a batch at a time: the buffers
hold one batch, not the map. The digest is Python's own hash of bytes,
SipHash-1-3 with a key drawn at start, 64 bits on a 64-bit build (BLAKE2b cut
to 64 bits elsewhere), so a changed entry read as unchanged has odds of about
2**-64 a change.

The batch call itself is given (libbpf's, kernel/libbpf.py), so this module
never loads a library; it reads by a map's own item walk instead after a
refusal (`fall_back`) on kernels without batch operations.
"""

from __future__ import annotations

import array
import ctypes
import errno
import mmap
import sys
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# (fd, in_batch, out_batch, keys, values, count) -> 0, or -1 with errno set
BatchLookup = Callable[..., int]


CHUNK = 64  # entries compared at once when the keys have not moved
BATCH_ENTRIES = 1024  # entries a batch call reads (a multiple of CHUNK)
_INT_KEYS = {4: "I", 8: "Q"}  # key sizes read as native unsigned ints (memoryview formats)
ENOTSUPP = 524  # the kernel's own "operation not supported", which reaches user space here
_NO_DIGESTS: array.array[int] = array.array("q")


def blake2b_64() -> Callable[[bytes], int]:
    """BLAKE2b cut to 64 bits. hashlib is imported only here: it loads OpenSSL's
    libcrypto, some 400 KiB of written pages for the daemon's whole run."""
    import hashlib

    blake2b = hashlib.blake2b
    return lambda data: int.from_bytes(blake2b(data, digest_size=8).digest(), "little", signed=True)


# Python's hash of bytes where it is 64 bits wide (SipHash-1-3 on 64-bit builds),
# else BLAKE2b cut to 64 bits: a 32-bit hash would miss a change in 4 billion
_digest: Callable[[bytes], int] = hash if sys.hash_info.width >= 64 else blake2b_64()


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
        self._cap = 0  # entries the buffers hold: BATCH_ENTRIES, more only for a bucket bigger than that
        self._grow(min(max_entries, BATCH_ENTRIES))
        self._last: dict[bytes, tuple[bytes, T]] = {}
        # the last read: its keys, the digests of its batches' runs of CHUNK values (by the
        # batch's first place and length), each value's digest, its objects
        self._pos: tuple[bytes, dict[tuple[int, int], list[int]], array.array[int], list[T]] | None = None
        self._walk: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None
        self.decoded = 0  # entries decoded since start (new or changed), for tests and benchmarks
        self.calls = 0  # batch calls since start

    def _grow(self, entries: int) -> None:
        """Buffers for `entries` at a call. Anonymous mappings: a page costs memory
        only once the kernel has written entries into it. They hold one batch, not
        the map: 10,000 task accounts read whole took 3.4 MiB of RssAnon for the
        daemon's whole run, to be digested and dropped."""
        self._cap = max(1, entries)
        self._kmap = mmap.mmap(-1, self._ks * self._cap)
        self._vmap = mmap.mmap(-1, self._vs * self._cap)
        self._keys = (ctypes.c_char * len(self._kmap)).from_buffer(self._kmap)
        self._values = (ctypes.c_char * len(self._vmap)).from_buffer(self._vmap)

    def _batches(self) -> Iterable[tuple[int, int]]:
        """The map a batch call at a time: (its first entry's place in the read,
        how many), each batch's keys and values in the buffers until the next."""
        in_token = ctypes.c_uint32(0)
        out_token = ctypes.c_uint32(0)
        count = ctypes.c_uint32(0)
        total = 0
        # Each call asks for a whole batch: a kernel that returns less than the room
        # it was given has ended a bucket there, and one that has no room for the
        # next bucket says ENOSPC with nothing. Asking only for what is left of
        # max_entries, a bucket grown by entries added during the read (an LRU map
        # full and turning over) would be read as one bigger than a batch. Twice
        # max_entries at most: entries added during a read are read too.
        while total < 2 * self._max:
            count.value = self._cap
            self.calls += 1
            rc = self._batch(self._fd, ctypes.byref(in_token) if total else None, ctypes.byref(out_token),
                             self._keys, self._values, ctypes.byref(count))
            err = ctypes.get_errno() if rc else 0
            if err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP) and total == 0:
                raise BatchUnsupported(f"map fd {self._fd}: {errno.errorcode.get(err, str(err))}")
            if err == errno.ENOSPC and count.value == 0:
                if self._cap >= self._max:  # no bucket is bigger than the map: a race, read next scan
                    break
                self._grow(min(self._cap * 2, self._max))  # a bucket bigger than a batch: the same call, wider
                continue
            if err not in (0, errno.ENOENT, errno.ENOSPC):
                # ENOENT: the whole map was read. Otherwise count may be what was
                # passed in (an old kernel leaves it).
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on map fd {self._fd}: {errno.errorcode.get(err, err)}")
            if count.value:
                yield total, count.value
            total += count.value
            if rc == 0 and count.value:  # the batch filled before the map ended: go on after out_token
                in_token.value = out_token.value
                continue
            break

    def read(self) -> list[T]:
        """Every entry, decoded: by batch calls, or by the walk on a kernel without them."""
        if self._walk is not None:
            return self.decode_all(self._walk())
        ks, vs = self._ks, self._vs
        if ks not in _INT_KEYS:
            return self.decode_all(
                (self._kmap[i * ks:(i + 1) * ks], self._vmap[i * vs:(i + 1) * vs])
                for _, n in self._batches() for i in range(n))
        # A key of 4 or 8 bytes is looked up as the int it packs (no slice, a cheap
        # hash), and gives the entry's place in the last read; a value is compared
        # with the one there by digest: no bytes are kept per entry. Where a batch
        # holds the very keys the last read had at its places (entries written in
        # place move nothing in a hash map), its values are compared a run of CHUNK
        # at a time (10,000 stalled: a few changed entries a scan, so about 160
        # compares, not 10,000 lookups); where the keys moved, one at a time.
        fmt = _INT_KEYS[ks]
        old_keys, old_runs, old, objs = self._pos or (b"", {}, _NO_DIGESTS, [])
        last: dict[int, int] | None = None  # key -> place in the last read, made once the keys moved
        keys = bytearray()
        runs: dict[tuple[int, int], list[int]] = {}
        digests: array.array[int] = array.array("q")  # 8 bytes a digest, not an int object
        out: list[T] = []
        changed = False
        step = CHUNK * vs
        for first, n in self._batches():
            kb = ctypes.string_at(self._keys, ks * n)
            keys += kb
            values = self._vmap
            size = n * vs  # the buffer holds older bytes past the entries read now
            batch_runs = runs[first, n] = [_digest(values[off:min(off + step, size)]) for off in range(0, size, step)]
            in_place = old_keys[first * ks:(first + n) * ks] == kb
            was = old_runs.get((first, n)) if in_place else None
            ids: list[int] | None = None
            for r, now_run in enumerate(batch_runs):
                lo, hi = r * CHUNK, min((r + 1) * CHUNK, n)
                if was is not None and was[r] == now_run:
                    out.extend(objs[first + lo:first + hi])
                    digests.extend(old[first + lo:first + hi])
                    continue
                if not in_place and ids is None:
                    ids = memoryview(kb).cast(fmt).tolist()  # type: ignore[call-overload]
                    if last is None:
                        last = dict(zip(memoryview(old_keys).cast(fmt).tolist(), range(len(objs)), strict=True))  # type: ignore[call-overload]
                for i in range(lo, hi):
                    v = values[i * vs:(i + 1) * vs]
                    d = _digest(v)
                    digests.append(d)
                    if in_place:  # where it was in the last read: the same place, or its key's
                        j: int | None = first + i
                    else:
                        j = last.get(ids[i]) if last is not None and ids else None
                    if j is not None and d == old[j]:
                        out.append(objs[j])
                        continue
                    out.append(self._decode(kb[i * ks:(i + 1) * ks], v))
                    self.decoded += 1
                    changed = True
        if not changed and self._pos is not None and keys == old_keys:
            self._pos = (old_keys, runs, old, objs)
            return objs  # nothing changed: the very list of the last read
        self._pos = (bytes(keys), runs, digests, out)
        return out

    def keys_of(self, obj: object) -> list[bytes]:
        """The keys of the last read's entries decoded as `obj` itself (one marker
        object for entries of a kind, such as a task's entry with no wait open)."""
        if self._walk is not None or self._pos is None:
            return [k for k, (_, o) in self._last.items() if o is obj]
        keys, _, _, objs = self._pos
        ks = self._ks
        return [keys[i * ks:(i + 1) * ks] for i, o in enumerate(objs) if o is obj]

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
