# SPDX-License-Identifier: Apache-2.0
"""MapReader: batch calls of a batch each, entries decoded only when their bytes change."""

from __future__ import annotations

import ctypes
import errno

import pytest

from allocwatch.kernel import mapread
from allocwatch.kernel.mapread import ENOTSUPP, BatchUnsupported, raw_bytes
from tests.unit.fakes import FakeMap, batch_of, reader_over


def test_every_entry_comes_out_across_calls_and_each_is_decoded_once_while_unchanged():
    fake = FakeMap({tid: tid * 10 for tid in range(1, 51)}, per_call=16)
    decoded: list[tuple[int, int]] = []
    r = reader_over(fake, decoded)
    first = r.read()
    assert first == [(t, t * 10) for t in range(1, 51)]
    assert fake.calls == 4  # 16 + 16 + 16 + 2, the last one ENOENT
    again = r.read()
    assert again == first and all(a is b for a, b in zip(again, first, strict=True))  # the same objects
    assert len(decoded) == 50 and r.decoded == 50


def test_a_changed_value_and_a_new_key_are_decoded_and_a_gone_key_is_forgotten():
    fake = FakeMap({1: 10, 2: 20, 3: 30})
    decoded: list[tuple[int, int]] = []
    r = reader_over(fake, decoded)
    r.read()
    fake.entries = {1: 10, 2: 21, 4: 40}
    assert r.read() == [(1, 10), (2, 21), (4, 40)]
    assert decoded[3:] == [(2, 21), (4, 40)]
    fake.entries = {1: 10, 3: 30}
    assert r.read() == [(1, 10), (3, 30)]
    assert decoded[-1] == (3, 30)  # 3 was gone for a read: decoded anew


def test_an_empty_map_reads_empty():
    r = reader_over(FakeMap({}), [])
    assert r.read() == []


@pytest.mark.parametrize("err", [errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP])
def test_a_kernel_without_batch_lookups_is_said_and_the_walk_then_reads(err):
    fake = FakeMap({1: 10}, err=err)
    decoded: list[tuple[int, int]] = []
    r = reader_over(fake, decoded)
    with pytest.raises(BatchUnsupported):
        r.read()
    r.fall_back(lambda: [(raw_bytes(7, 4), (70).to_bytes(8, "little"))])
    assert r.read() == [(7, 70)] and r.read() == [(7, 70)] and decoded == [(7, 70)]


def test_any_other_failure_is_an_error_not_an_empty_map():
    with pytest.raises(OSError, match="EPERM"):
        reader_over(FakeMap({1: 1}, err=errno.EPERM), []).read()


def test_raw_bytes_are_an_objects_own():
    from allocwatch.kernel.wire import TaskAcct

    arr = (TaskAcct * 4)()
    arr[2].pid = 4242
    assert raw_bytes(arr[2], 0) == bytes(memoryview(arr[2])) and len(raw_bytes(arr[2], 0)) == ctypes.sizeof(TaskAcct)
    assert raw_bytes(5, 4) == b"\x05\0\0\0"  # bcc's int keys: not bytes(5)


def test_a_map_that_shrinks_after_a_storm_and_grows_again_still_reads_right():
    big = {tid: tid for tid in range(1, 2001)}
    fake = FakeMap(big, per_call=5000)
    r = reader_over(fake, [], max_entries=4096)
    assert len(r.read()) == 2000
    fake.entries = {1: 1, 2: 2}
    assert r.read() == [(1, 1), (2, 2)]  # 2,000 entries read a batch at a time, then 2
    fake.entries = big
    assert r.read() == sorted(big.items())


LOCKED_READ = """
import ctypes, sys
sys.path[:0] = [{root!r}]
from tests.unit.fakes import FakeMap, reader_over
big = {{tid: tid for tid in range(1, 2001)}}
fake = FakeMap(big, per_call=5000)
r = reader_over(fake, [], max_entries=4096)
assert len(r.read()) == 2000
if ctypes.CDLL(None, use_errno=True).mlockall(1 | 4) != 0:  # MCL_CURRENT | MCL_ONFAULT, as the daemon
    sys.exit(77)
fake.entries = {{1: 1, 2: 2}}
assert r.read() == [(1, 1), (2, 2)]
fake.entries = big
assert r.read() == sorted(big.items())
"""


def test_reads_under_mlockall_after_a_storm_go_on():
    """The daemon locks its memory once loaded (lock_memory): reads of a map that
    shrank after a storm and grew again still read right with every page locked."""
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", LOCKED_READ.format(root=root)],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 77:
        pytest.skip("mlockall refused here (RLIMIT_MEMLOCK without CAP_IPC_LOCK)")
    assert proc.returncode == 0, proc.stderr


def test_entries_written_in_place_are_compared_by_position_and_only_the_changed_decoded():
    fake = FakeMap({tid: tid for tid in range(1, 201)}, per_call=1000)  # four runs of 64 and some
    decoded: list[tuple[int, int]] = []
    r = reader_over(fake, decoded, max_entries=256)
    first = r.read()
    assert r.read() is first  # nothing changed: the same list
    fake.entries[130] = 1300
    again = r.read()
    assert again[129] == (130, 1300) and decoded[-1] == (130, 1300) and len(decoded) == 201
    assert all(a is b for i, (a, b) in enumerate(zip(again, first, strict=True)) if i != 129)
    fake.entries[201] = 201  # a new key: the keys moved, the lookup by key decodes only it
    third = r.read()
    assert len(decoded) == 202 and third[129] is again[129] and third[-1] == (201, 201)


def test_what_a_read_keeps_is_its_objects_and_digests_not_the_values_bytes():
    import tracemalloc

    class Wide(FakeMap):  # values of 344 bytes, as task accounts are: the fake's value, then a pattern
        def __call__(self, fd, in_batch, out_batch, keys, values, count):
            rc = super().__call__(fd, in_batch, out_batch, keys, ctypes.c_void_p(self.scratch), count)
            n = ctypes.cast(count, ctypes.POINTER(ctypes.c_uint32))[0]
            for i in range(n):
                ctypes.memset(values + i * 344, i % 251, 344)
                ctypes.memmove(values + i * 344, self.scratch + i * 8, 8)
            return rc

    fake = Wide({tid: tid for tid in range(1, 10_001)}, per_call=100_000)
    scratch = ctypes.create_string_buffer(8 * 32768)
    fake.scratch = ctypes.addressof(scratch)
    proto = ctypes.CFUNCTYPE(ctypes.c_int, *([ctypes.c_void_p] * 6), use_errno=True)
    one = object()
    r = mapread.MapReader(3, 4, 344, 32768, proto(fake), lambda k, v: one)
    tracemalloc.start()
    try:
        r.read()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 400_000  # keys 40 KB, digests 80 KB, the list 80 KB; the values are 3.4 MB
    fake.entries[77] = 7  # and a change is still seen
    assert r.decoded == 10_000 and len(r.read()) == 10_000 and r.decoded == 10_001


def test_the_keys_of_entries_decoded_as_one_marker_are_the_readers_to_give():
    idle = object()
    fake = FakeMap({tid: (0 if tid % 3 else tid) for tid in range(1, 301)}, per_call=1000)
    r = mapread.MapReader(3, 4, 8, 512, batch_of(fake), lambda k, v: idle if not int.from_bytes(v, "little")
                          else int.from_bytes(k, "little"))
    r.read()
    want = [t for t in range(1, 301) if t % 3]
    assert [int.from_bytes(k, "little") for k in r.keys_of(idle)] == want
    fake.entries[4] = 4  # no longer idle, written in place
    r.read()
    assert 4 not in [int.from_bytes(k, "little") for k in r.keys_of(idle)]
    r.fall_back(lambda: [(raw_bytes(7, 4), bytes(8)), (raw_bytes(9, 4), raw_bytes(9, 8))])
    r.read()
    assert r.keys_of(idle) == [raw_bytes(7, 4)]  # the walk's entries too


def test_a_decode_that_fails_leaves_the_last_read_as_it_was():
    fake = FakeMap({tid: tid for tid in range(1, 201)}, per_call=1000)
    refuse: set[int] = set()
    decoded: list[tuple[int, int]] = []

    def decode(k: bytes, v: bytes) -> tuple[int, int]:
        pair = (int.from_bytes(k, "little"), int.from_bytes(v, "little"))
        if pair[0] in refuse:
            raise ValueError("bad entry")
        decoded.append(pair)
        return pair

    r = mapread.MapReader(3, 4, 8, 256, batch_of(fake), decode)
    r.read()
    fake.entries[3], fake.entries[9] = 30, 90  # written in place, in one run
    refuse.add(9)
    with pytest.raises(ValueError):
        r.read()
    refuse.clear()
    again = r.read()
    assert again[2] == (3, 30) and again[8] == (9, 90)  # both seen as changed, not the first taken as read


def test_the_wide_digest_is_blake2b_and_loading_the_reader_loads_no_openssl():
    """Where Python's hash is narrower than 64 bits the digest is BLAKE2b cut to 64;
    hashlib (and with it OpenSSL's libcrypto, 400 KiB of written pages in the
    daemon) is loaded only there."""
    import hashlib
    import subprocess
    import sys

    digest = mapread.blake2b_64()
    assert digest(b"abc") == int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "little", signed=True)
    assert digest(b"abc") != digest(b"abd") and -(1 << 63) <= digest(b"") < 1 << 63
    code = "import sys, allocwatch.kernel.mapread; print(sorted({'hashlib', '_hashlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_map_bigger_than_a_batch_is_read_a_batch_at_a_time_into_buffers_of_one_batch():
    """10,000 task accounts read whole were 3.4 MiB of buffer for the daemon's whole
    run: the buffers now hold one batch, each digested before the next call."""
    n = 3 * mapread.BATCH_ENTRIES + 100
    fake = FakeMap({tid: tid for tid in range(1, n + 1)}, per_call=100_000)
    decoded: list[tuple[int, int]] = []
    r = reader_over(fake, decoded, max_entries=32768)
    first = r.read()
    assert first == [(t, t) for t in range(1, n + 1)] and len(decoded) == n
    assert fake.calls == 4 and len(r._vmap) == mapread.BATCH_ENTRIES * 8
    assert r.read() is first and len(decoded) == n  # nothing changed: the same list, nothing decoded
    fake.entries[2000] = 7  # written in place, in the second batch
    again = r.read()
    assert again[1999] == (2000, 7) and decoded[n:] == [(2000, 7)]
    assert all(a is b for i, (a, b) in enumerate(zip(again, first, strict=True)) if i != 1999)
    del fake.entries[5]  # every key after it moves down one place, across every batch
    third = r.read()
    assert len(third) == n - 1 and len(decoded) == n + 1  # looked up by key: none decoded again
    assert third[1998] is again[1999]


def test_a_bucket_bigger_than_a_batch_widens_the_buffers_and_is_read_whole():
    class Buckets(FakeMap):
        """The kernel hands out whole buckets: ENOSPC with nothing when one does not fit."""

        def __call__(self, fd, in_batch, out_batch, keys, values, count):
            room = ctypes.cast(count, ctypes.POINTER(ctypes.c_uint32))
            if room[0] < 1500:
                room[0] = 0
                ctypes.set_errno(errno.ENOSPC)
                self.calls += 1
                return -1
            return super().__call__(fd, in_batch, out_batch, keys, values, count)

    fake = Buckets({tid: tid for tid in range(1, 2001)}, per_call=100_000)
    r = reader_over(fake, [], max_entries=4096)
    assert r.read() == [(t, t) for t in range(1, 2001)]
    assert len(r._vmap) == 2 * mapread.BATCH_ENTRIES * 8  # widened once, to the first size that held it


def test_every_call_asks_for_a_whole_batch_and_a_bucket_that_never_fits_ends_the_read():
    """Asking only for what was left of max_entries, a full LRU map turning over
    during the read looked like a bucket bigger than a batch: the buffers grew
    to the whole map for good, and the read stopped short."""
    asked: list[int] = []

    class Asks(FakeMap):
        def __call__(self, fd, in_batch, out_batch, keys, values, count):
            asked.append(ctypes.cast(count, ctypes.POINTER(ctypes.c_uint32))[0])
            return super().__call__(fd, in_batch, out_batch, keys, values, count)

    fake = Asks({tid: tid for tid in range(1, 2501)}, per_call=1000)
    r = reader_over(fake, [], max_entries=2500)
    assert len(r.read()) == 2500 and asked == [1024, 1024, 1024]  # 1000 + 1000 + 500, the last ENOENT

    class Never(FakeMap):
        def __call__(self, fd, in_batch, out_batch, keys, values, count):
            ctypes.cast(count, ctypes.POINTER(ctypes.c_uint32))[0] = 0
            ctypes.set_errno(errno.ENOSPC)
            return -1

    r = reader_over(Never({1: 1}), [], max_entries=3000)
    assert r.read() == [] and len(r._vmap) == 3000 * 8  # widened up to the map, then given up till the next read
