# SPDX-License-Identifier: Apache-2.0
"""Maps, ring buffer and iterator by their fds, through libbpf (libbpf.so.1).

The daemon reads what the loader process (kernel/loader.py) handed over with
these calls alone: libbpf is a small C library with no compiler in it, where
bcc's module brings LLVM and clang's libraries, some 11 MiB of written pages
for the daemon's whole run. Each table here mirrors the few things the daemon
asks of a bcc table (Key, Leaf, lookup, update, delete, walk), so the code
that reads them is the same whichever process loaded the programs.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

from allocwatch.errors import BccMissing

LIBRARY = "libbpf.so.1"
BPF_ANY = 0


@functools.cache
def lib() -> Any:
    """libbpf, loaded once, its calls declared."""
    try:
        so = ctypes.CDLL(LIBRARY, use_errno=True)
    except OSError as exc:  # Debian's bcc depends on it: a bcc installed whole has it
        raise BccMissing(f"{LIBRARY} cannot be loaded ({exc}): run scripts/setup "
                         "(Debian: apt-get install libbpf1, which python3-bpfcc brings)") from None
    vp, i, u32p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)
    for name, restype, argtypes in (
        ("bpf_map_lookup_elem", i, [i, vp, vp]),
        ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
        ("bpf_map_delete_elem", i, [i, vp]),
        ("bpf_map_get_next_key", i, [i, vp, vp]),
        ("bpf_map_lookup_batch", i, [i, vp, vp, vp, vp, vp, vp]),
        ("bpf_iter_create", i, [i]),
        ("bpf_obj_get_info_by_fd", i, [i, vp, u32p]),
        ("ring_buffer__new", vp, [i, SAMPLE_FN, vp, vp]),
        ("ring_buffer__consume", i, [vp]),
        ("ring_buffer__free", None, [vp]),
    ):
        fn = getattr(so, name)
        fn.restype, fn.argtypes = restype, argtypes
    return so


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def lookup_batch(fd: int, in_batch: Any, out_batch: Any, keys: Any, values: Any, count: Any) -> int:
    """BPF_MAP_LOOKUP_BATCH as kernel/mapread.py calls it: 0, or negative with errno set."""
    return int(lib().bpf_map_lookup_batch(fd, in_batch, out_batch, keys, values, count, None))


def iter_create(link_fd: int) -> int:
    """A new read of a BPF iterator's link: an fd, or a negative errno."""
    return int(lib().bpf_iter_create(link_fd))


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (the kernel fills as much as it is given)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
    if rc:
        raise OSError(-rc, f"BPF_OBJ_GET_INFO_BY_FD on fd {fd}: {os.strerror(-rc)}")
    return info


class FdTable:
    """One map by its fd, with what the daemon asks of a bcc table. Key and Leaf
    are kernel/wire.py's types, refused (ValueError) where the kernel's map has
    other sizes."""

    def __init__(self, fd: int, key_t: Any, leaf_t: Any) -> None:
        info = map_info(fd)
        if info.key_size != ctypes.sizeof(key_t) or info.value_size != ctypes.sizeof(leaf_t):
            raise ValueError(f"map {info.name.decode(errors='replace')}: the kernel's key and value are "
                             f"{info.key_size} and {info.value_size} bytes, wire.py's "
                             f"{ctypes.sizeof(key_t)} and {ctypes.sizeof(leaf_t)}")
        self.map_fd = fd
        self.Key = key_t
        self.Leaf = leaf_t
        self.max_entries = int(info.max_entries)

    def __getitem__(self, key: Any) -> Any:
        leaf = self.Leaf()
        rc = lib().bpf_map_lookup_elem(self.map_fd, ctypes.byref(key), ctypes.byref(leaf))
        if rc == -errno.ENOENT:
            raise KeyError(key)
        if rc:
            raise OSError(-rc, f"BPF_MAP_LOOKUP_ELEM on map fd {self.map_fd}: {os.strerror(-rc)}")
        return leaf

    def __setitem__(self, key: Any, leaf: Any) -> None:
        rc = lib().bpf_map_update_elem(self.map_fd, ctypes.byref(key), ctypes.byref(leaf), BPF_ANY)
        if rc:
            raise OSError(-rc, f"BPF_MAP_UPDATE_ELEM on map fd {self.map_fd}: {os.strerror(-rc)}")

    def __delitem__(self, key: Any) -> None:
        rc = lib().bpf_map_delete_elem(self.map_fd, ctypes.byref(key))
        if rc == -errno.ENOENT:
            raise KeyError(key)
        if rc:
            raise OSError(-rc, f"BPF_MAP_DELETE_ELEM on map fd {self.map_fd}: {os.strerror(-rc)}")

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every entry, one lookup a key (kernels without batch lookups)."""
        key, nxt = self.Key(), self.Key()
        first = True
        while not lib().bpf_map_get_next_key(self.map_fd, None if first else ctypes.byref(key), ctypes.byref(nxt)):
            first = False
            ctypes.memmove(ctypes.byref(key), ctypes.byref(nxt), ctypes.sizeof(key))
            try:
                yield self.Key.from_buffer_copy(key), self[key]
            except KeyError:  # gone between the two calls
                continue

    def walk(self, stack_id: int) -> Iterator[int]:
        """A stack trace map's addresses for `stack_id`, innermost first."""
        for addr in self[self.Key(stack_id)]:
            if not addr:
                break
            yield int(addr)


class RingBuffer:
    """A BPF ring buffer's records, given to `on_record(bytes)` by `consume()`."""

    def __init__(self, fd: int, on_record: Callable[[bytes], None]) -> None:
        def sample(_ctx: Any, data: Any, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        self._cb = SAMPLE_FN(sample)  # kept: libbpf calls it for as long as the ring lives
        self._rb = lib().ring_buffer__new(fd, self._cb, None, None)
        if not self._rb:
            err = ctypes.get_errno()
            raise OSError(err, f"ring_buffer__new on map fd {fd}: {os.strerror(err)}")

    def consume(self) -> None:
        if self._rb:  # closed: nothing (libbpf would dereference the freed ring)
            lib().ring_buffer__consume(self._rb)

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None
