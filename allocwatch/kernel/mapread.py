"""Reading a BPF hash map whole, every scan, at the cost of what changed.

A scan reads every entry of the in-flight maps, and with 10,000 tasks stalled
nearly all of them are the bytes the last scan read. `MapReader` makes one
BPF_MAP_LOOKUP_BATCH call (v5.6, cb4d03ab499d) into two buffers it keeps from
scan to scan, copies out only the bytes the entries fill, and decodes an entry
only when its key is new or its value's bytes differ from the last read: an
unchanged entry gives back the very object decoded before, so the layers above
can keep what they derived from it by identity.

The batch call itself is given (bcc's libbcc `bpf_lookup_batch`), so this
module never imports bcc; it reads by a map's own item walk instead
after a refusal (`fall_back`) on kernels without batch operations.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# (fd, in_batch, out_batch, keys, values, count) -> 0, or -1 with errno set
BatchLookup = Callable[..., int]


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
        self._keys = ctypes.create_string_buffer(key_size * max_entries)
        self._values = ctypes.create_string_buffer(value_size * max_entries)
        self._last: dict[bytes, tuple[bytes, T]] = {}
        self._walk: Callable[[], Iterable[tuple[bytes, bytes]]] | None = None
        self.decoded = 0  # entries decoded since start (new or changed), for tests and benchmarks

    def raw(self) -> tuple[bytes, bytes, int]:
        """The map's keys and values, packed, and how many entries there are."""
        in_token = ctypes.c_uint32(0)
        out_token = ctypes.c_uint32(0)
        count = ctypes.c_uint32(0)
        total = 0
        while total < self._max:
            count.value = self._max - total
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
        return (ctypes.string_at(self._keys, self._ks * total), ctypes.string_at(self._values, self._vs * total),
                total)

    def read(self) -> list[T]:
        """Every entry, decoded: by one batch call, or by the walk on a kernel without it."""
        if self._walk is None:
            keys, values, n = self.raw()
            ks, vs = self._ks, self._vs
            return self.decode_all((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(n))
        return self.decode_all(self._walk())

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
