# SPDX-License-Identifier: Apache-2.0
"""MapReader on real BPF hash maps: a map of thousands of entries read in the
kernel's own bucket order gives every entry once, and a read after changes
decodes only what changed, compared by digest.

The maps are made, filled and changed through libbcc's C calls (ctypes), and
read through libbpf's (kernel/libbpf.py), the daemon's own, so no program needs
to run. Whether an
update keeps the keys in their order (the read in place) or moves them (the
read by key) depends on the map's hash seed: both paths give what is checked
here, and the unit tests take each on purpose."""

from __future__ import annotations

import ctypes
import os
import random

import pytest

from allocwatch.kernel import libbpf
from allocwatch.kernel.mapread import MapReader

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_LRU_HASH = 9
VALUE_BYTES = 344  # a task account's size
MAX_ENTRIES = 32768


@pytest.fixture(scope="module")
def libbcc() -> ctypes.CDLL:
    lib = ctypes.CDLL("libbcc.so.0", use_errno=True)
    lib.bcc_create_map.restype = ctypes.c_int
    lib.bcc_create_map.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                   ctypes.c_int]
    for fn in (lib.bpf_update_elem, lib.bpf_delete_elem):
        fn.restype = ctypes.c_int
    lib.bpf_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong]
    lib.bpf_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
    lib.bpf_lookup_batch.restype = ctypes.c_int
    return lib


def _value(tid: int, gen: int) -> bytes:
    return (tid.to_bytes(4, "little") + gen.to_bytes(4, "little")) * (VALUE_BYTES // 8)


class RealMap:
    def __init__(self, lib: ctypes.CDLL, map_type: int) -> None:
        self.lib = lib
        self.fd = lib.bcc_create_map(map_type, f"aw_t{os.getpid() % 10000}".encode(), 4, VALUE_BYTES,
                                     MAX_ENTRIES, 0)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), f"bcc_create_map: {os.strerror(ctypes.get_errno())}")

    def put(self, tid: int, value: bytes) -> None:
        key = ctypes.c_uint32(tid)
        buf = ctypes.create_string_buffer(value, len(value))
        assert self.lib.bpf_update_elem(self.fd, ctypes.byref(key), buf, 0) == 0, os.strerror(ctypes.get_errno())

    def delete(self, tid: int) -> None:
        key = ctypes.c_uint32(tid)
        assert self.lib.bpf_delete_elem(self.fd, ctypes.byref(key)) == 0, os.strerror(ctypes.get_errno())

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("map_type", [BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH], ids=["hash", "lru_hash"])
def test_a_map_of_thousands_is_read_whole_and_only_changes_decoded(libbcc, map_type):
    m = RealMap(libbcc, map_type)
    try:
        rng = random.Random(7)
        want = {tid: _value(tid, 0) for tid in rng.sample(range(1, 4_000_000), 5000)}
        for tid, v in want.items():
            m.put(tid, v)
        decoded: list[int] = []

        def decode(k: bytes, v: bytes) -> tuple[int, bytes]:
            tid = int.from_bytes(k, "little")
            decoded.append(tid)
            return tid, bytes(v)

        r = MapReader(m.fd, 4, VALUE_BYTES, MAX_ENTRIES, libbpf.lookup_batch, decode)
        first = r.read()
        assert len(first) == len(want) and dict(first) == want  # each entry once, none missed
        assert len(decoded) == len(want)

        again = r.read()
        assert again is first and len(decoded) == len(want)  # nothing changed: nothing decoded

        changed = rng.sample(sorted(want), 3)
        for tid in changed:
            want[tid] = _value(tid, 1)
            m.put(tid, want[tid])
        third = r.read()
        assert dict(third) == want and sorted(decoded[len(want):]) == sorted(changed)

        gone = rng.sample(sorted(set(want) - set(changed)), 10)
        for tid in gone:
            m.delete(tid)
            del want[tid]
        new = [tid for tid in range(4_000_001, 4_000_011)]
        for tid in new:
            want[tid] = _value(tid, 2)
            m.put(tid, want[tid])
        before = len(decoded)
        fourth = r.read()
        assert dict(fourth) == want and len(fourth) == len(want)
        assert sorted(decoded[before:]) == new  # the keys moved: only the new ones decoded
    finally:
        m.close()


def test_an_empty_real_map_reads_empty(libbcc):
    m = RealMap(libbcc, BPF_MAP_TYPE_HASH)
    try:
        r = MapReader(m.fd, 4, VALUE_BYTES, MAX_ENTRIES, libbpf.lookup_batch, lambda k, v: (k, v))
        assert r.read() == [] and r.calls == 1  # ENOENT at once: empty, not an error
    finally:
        m.close()


class Value(ctypes.Structure):
    _fields_ = [("words", ctypes.c_uint32 * (VALUE_BYTES // 4))]


def test_a_map_by_its_fd_alone_is_read_written_and_walked_through_libbpf(libbcc):
    """What the daemon does with the maps a loader process handed over (kernel/libbpf.py)."""
    m = RealMap(libbcc, BPF_MAP_TYPE_HASH)
    try:
        table = libbpf.FdTable(m.fd, ctypes.c_uint32, Value)
        assert table.max_entries == MAX_ENTRIES
        with pytest.raises(KeyError):
            table[table.Key(5)]
        v = Value()
        v.words[0], v.words[-1] = 7, 9
        table[table.Key(5)] = v
        m.put(6, _value(6, 3))
        got = table[table.Key(5)]
        assert (got.words[0], got.words[-1]) == (7, 9)
        walked = {int(k.value): bytes(val) for k, val in table.items()}
        assert walked == {5: bytes(v), 6: _value(6, 3)}
        del table[table.Key(5)]
        with pytest.raises(KeyError):
            del table[table.Key(5)]
        assert [int(k.value) for k, _ in table.items()] == [6]
        with pytest.raises(ValueError, match="the kernel's key and value are 4 and 344 bytes"):
            libbpf.FdTable(m.fd, ctypes.c_uint64, Value)  # a layout that is not the map's is refused
    finally:
        m.close()
