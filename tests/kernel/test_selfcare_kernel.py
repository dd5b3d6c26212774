# SPDX-License-Identifier: Apache-2.0
"""The heap trim under lock_memory's mlockall, in a process of its own: the
free pages of a locked heap are given back, and the heap stays locked; with one
malloc arena, so is what another thread frees."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import ctypes, json, re
    from allocwatch.app.selfcare import HeapTrimmer, rss_anon_kib

    def heap_flags():
        flags, in_heap = [], False
        for line in open("/proc/self/smaps"):
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("VmFlags:"):
                flags.append(line.split()[1:])
        return flags

    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mlockall(1 | 2 | 4) == 0, ctypes.get_errno()  # as lock_memory: current, future, on fault
    keep, drop = [], []
    for i in range(80_000):  # 1 KiB chunks from malloc (past pymalloc's 512 bytes); every 16th kept,
        (keep if i % 16 == 0 else drop).append(bytearray(1024))  # so the holes hold whole pages
    del drop
    full = rss_anon_kib()
    libc.malloc_trim(0)
    plain = rss_anon_kib()  # what a trim alone gives back under the lock
    HeapTrimmer(locked=True).trim()
    after = rss_anon_kib()
    print(json.dumps({"full": full, "plain": plain, "after": after, "flags": heap_flags(), "kept": len(keep)}))
""")


def test_a_locked_heap_gives_back_its_free_pages_and_stays_locked():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    r = json.loads(out.stdout)
    freed_mib = 75_000 * 1024 / 2**20  # 75,000 chunks of 1 KiB freed, and malloc's headers
    assert r["full"] - r["plain"] < freed_mib / 4, r  # locked: malloc_trim alone can drop almost none
    assert r["plain"] - r["after"] > freed_mib / 2, r  # unlocked for the trim: given back
    assert r["flags"] and all("lo" in f for f in r["flags"]), r  # every heap mapping locked again


THREAD_CHILD = textwrap.dedent("""
    import ctypes, json, sys, threading
    from allocwatch.app import selfcare
    from allocwatch.app.selfcare import HeapTrimmer, rss_anon_kib

    one = sys.argv[1] == "one-arena"
    took = selfcare.one_arena() if one else False  # as `allocwatch run` does first
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mlockall(1 | 2 | 4) == 0, ctypes.get_errno()  # as lock_memory: current, future, on fault
    kept = []

    def churn(keep_every):
        chunks = [bytearray(1024) for _ in range(40_000)]  # 1 KiB each: malloc, in this thread
        kept.extend(chunks[::keep_every] if keep_every else [])
        del chunks

    start = rss_anon_kib()
    figures = {"took": took, "start": start}
    for name, keep_every in (("all_freed", 0), ("holes", 16)):  # the top of the heap freed; then holes
        t = threading.Thread(target=churn, args=(keep_every,))
        t.start()
        t.join()
        figures[name] = rss_anon_kib()
        HeapTrimmer(locked=True).trim()
        figures[name + "_trimmed"] = rss_anon_kib()
    print(json.dumps(figures))
""")


def test_what_a_thread_frees_under_the_lock_is_given_back():
    """A thread's allocations, with the pages locked as `run` locks them: in an arena of
    the thread's own they stay, trim or not (glibc 2.36 kept 42 MB of 42); with one
    arena a freed top goes back at once, and holes at the next trim."""
    out = subprocess.run([sys.executable, "-c", THREAD_CHILD, "one-arena"], capture_output=True, text=True,
                         timeout=60, check=True)
    r = json.loads(out.stdout)
    freed_kib = 40_000  # chunks of 1 KiB
    assert r["took"], r
    assert r["all_freed_trimmed"] - r["start"] < freed_kib / 8, r  # back near where it started
    assert r["holes"] - r["holes_trimmed"] > freed_kib / 2, r  # the holes' whole pages, by the trim
