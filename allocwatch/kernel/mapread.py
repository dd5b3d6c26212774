# SPDX-License-Identifier: Apache-2.0
"""Reading a BPF hash map whole, every scan, at the cost of what changed.

A scan reads every entry of the in-flight maps, and with 10,000 tasks stalled
nearly all of them are the bytes the last scan read. `MapReader` makes one
BPF_MAP_LOOKUP_BATCH call (v5.6, cb4d03ab499d) into two buffers it keeps from
scan to scan, and decodes an entry only when its key is new or its value's
bytes differ from the last read: an unchanged entry gives back the very object
decoded before, so the layers above can keep what they derived from it by
identity.

What the next read compares against is a digest of each value and of each run
of CHUNK values, not a copy of their bytes (10,000 task accounts: 3.4 MB), and
the values are read where the kernel wrote them. The digest is Python's own
hash of bytes, SipHash-1-3 with a key drawn at start, 64 bits on a 64-bit build
(BLAKE2b cut to 64 bits elsewhere), so a changed entry read as unchanged has
odds of about 2**-64 a change.

The batch call itself is given (bcc's libbcc `bpf_lookup_batch`), so this
module never imports bcc; it reads by a map's own item walk instead
after a refusal (`fall_back`) on kernels without batch operations.
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
        # Anonymous mappings, not ctypes buffers: a page costs memory only once the
        # kernel has written entries into it (32,768 waits of 64 bytes: 2 MiB
        # zero-filled at start otherwise, for a map that is empty when all is well).
        self._kmap = mmap.mmap(-1, max(key_size * max_entries, 1))
        self._vmap = mmap.mmap(-1, max(value_size * max_entries, 1))
        self._keys = (ctypes.c_char * len(self._kmap)).from_buffer(self._kmap)
        self._values = (ctypes.c_char * len(self._vmap)).from_buffer(self._vmap)
        self._high = 0  # the most entries a read has held since the buffers were last given back
        self._can_give_back = True  # False once madvise refused (locked memory)
        self._last: dict[bytes, tuple[bytes, T]] = {}
        # the last read: its keys, the digest of each run of CHUNK values and of each value, its objects
        self._pos: tuple[bytes, list[int], array.array[int], list[T]] | None = None
        self._walk: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None
        self.decoded = 0  # entries decoded since start (new or changed), for tests and benchmarks
        self.calls = 0  # batch calls since start

    def raw(self) -> tuple[bytes, mmap.mmap, int]:
        """The map's keys, packed; the buffer its values are packed in (read it
        before the next read: it is not copied); how many entries there are."""
        in_token = ctypes.c_uint32(0)
        out_token = ctypes.c_uint32(0)
        count = ctypes.c_uint32(0)
        total = 0
        while total < self._max:
            count.value = self._max - total
            self.calls += 1
            rc = self._batch(self._fd, ctypes.byref(in_token) if total else None, ctypes.byref(out_token),
                             ctypes.byref(self._keys, self._ks * total), ctypes.byref(self._values, self._vs * total),
                             ctypes.byref(count))
            err = ctypes.get_errno() if rc else 0
            if err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP) and total == 0:
                raise BatchUnsupported(f"map fd {self._fd}: {errno.errorcode.get(err, str(err))}")
            if err not in (0, errno.ENOENT, errno.ENOSPC):
                # ENOENT: the whole map was read; ENOSPC: a bucket bigger than the
                # room left, which a buffer of max_entries rules out but for races.
                # Otherwise count may be what was passed in (an old kernel leaves it).
                raise OSError(err, f"BPF_MAP_LOOKUP_BATCH on map fd {self._fd}: {errno.errorcode.get(err, err)}")
            total += count.value
            if rc == 0 and count.value:  # the buffer filled before the map ended: go on after out_token
                in_token.value = out_token.value
                continue
            break
        self._give_back(total)
        return ctypes.string_at(self._keys, self._ks * total), self._vmap, total

    def _give_back(self, n: int) -> None:
        """After a read of n entries, hand the pages past them back to the kernel
        once the map has shrunk to a quarter of its high mark (a storm that ended)."""
        if n >= self._high:
            self._high = n
            return
        if n * 4 > self._high:
            return
        for buf, size in ((self._kmap, self._ks), (self._vmap, self._vs)):
            start = -(-n * size // mmap.PAGESIZE) * mmap.PAGESIZE
            if start < len(buf) and self._can_give_back:
                try:
                    buf.madvise(mmap.MADV_DONTNEED, start, len(buf) - start)
                except OSError:
                    # EINVAL: the pages are locked (the daemon's mlockall after load
                    # covers these buffers), and locked pages cannot be given back.
                    self._can_give_back = False
        self._high = n

    def read(self) -> list[T]:
        """Every entry, decoded: by one batch call, or by the walk on a kernel without it."""
        if self._walk is not None:
            return self.decode_all(self._walk())
        keys, values, n = self.raw()
        ks, vs = self._ks, self._vs
        if ks not in _INT_KEYS:
            return self.decode_all((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(n))
        step = CHUNK * vs
        size = n * vs  # the buffer holds older bytes past the entries read now
        runs = [_digest(values[off:min(off + step, size)]) for off in range(0, size, step)]
        if self._pos is not None and self._pos[0] == keys:
            return self._read_in_place(keys, values, n, runs)
        # A key of 4 or 8 bytes is looked up as the int it packs (no slice, a cheap
        # hash), and gives the entry's place in the last read; a value is compared
        # with the one there by digest: no bytes are kept per entry. The places
        # are made only now that the keys moved (kept, some 90 bytes an entry).
        fmt = _INT_KEYS[ks]
        ids: list[int] = memoryview(keys).cast(fmt).tolist()  # type: ignore[call-overload]
        last: dict[int, int] = {}
        old: array.array[int] = _NO_DIGESTS
        objs: list[T] = []
        if self._pos is not None:
            old_keys, _, old, objs = self._pos
            last = dict(zip(memoryview(old_keys).cast(fmt).tolist(), range(len(objs)), strict=True))  # type: ignore[call-overload]
        digests = [_digest(values[at:at + vs]) for at in range(0, n * vs, vs)]
        out = []
        for i, ident in enumerate(ids):
            j = last.get(ident)
            if j is not None and digests[i] == old[j]:
                out.append(objs[j])
                continue
            out.append(self._decode(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]))
            self.decoded += 1
        self._pos = (keys, runs, array.array("q", digests), out)  # 8 bytes a digest, not an int object
        return out

    def _read_in_place(self, keys: bytes, values: mmap.mmap, n: int, runs: list[int]) -> list[T]:
        """The same keys in the same order as the last read: entries written in
        place move nothing in a hash map, so the values are compared by position,
        a run of CHUNK entries at a time (10,000 stalled: a few changed entries a
        scan, so about 160 compares, not 10,000 lookups)."""
        assert self._pos is not None
        _, old_runs, old_digests, objs = self._pos
        if runs == old_runs:
            return objs
        digests = array.array("q", old_digests)  # a decode that raises leaves the last read whole
        ks, vs = self._ks, self._vs
        out: list[T] = []
        for r, (now_run, old_run) in enumerate(zip(runs, old_runs, strict=True)):
            first, end = r * CHUNK, min((r + 1) * CHUNK, n)
            if now_run == old_run:
                out.extend(objs[first:end])
                continue
            for i in range(first, end):
                v = values[i * vs:(i + 1) * vs]
                d = _digest(v)
                if d == digests[i]:
                    out.append(objs[i])
                    continue
                digests[i] = d
                obj = self._decode(keys[i * ks:(i + 1) * ks], v)
                self.decoded += 1
                out.append(obj)  # same keys, same places
        self._pos = (keys, runs, digests, out)
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
