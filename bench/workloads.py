# SPDX-License-Identifier: Apache-2.0
"""The workloads: the reclaim storm, the page-fault loop, and many threads of
one process held in the memcg OOM wait at once (cgroup v1)."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.reclaim_progress_cost import storm
from lab import memcg

__all__ = ["Stalled", "pagefault_loop", "stalled_threads", "storm", "threads_binary"]

PAGEFAULT_SOURCE = """\
import mmap, sys, time
chunk, rounds = int(sys.argv[1]) << 20, int(sys.argv[2])
def one():
    m = mmap.mmap(-1, chunk, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    for off in range(0, chunk, 4096):
        m[off] = 1
    m.close()
one()  # untimed: first-touch costs of the interpreter and the mapping
t0 = time.perf_counter()
for _ in range(rounds):
    one()
print(time.perf_counter() - t0)
"""


def pagefault_loop(chunk_mib: int = 256, rounds: int = 8) -> float:
    """Seconds for `rounds` x (mmap `chunk_mib` MiB, touch every 4 KiB page, munmap), in a fresh process."""
    out = subprocess.run([sys.executable, "-I", "-S", "-c", PAGEFAULT_SOURCE, str(chunk_mib), str(rounds)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    return float(out.strip())


# Threads wait in read(0) (no memory needed to wake them: the harness writes the
# bytes, and the pipe's pages are charged to the writer), touch their own pages,
# and wait on a second pipe until released. In C: a Python thread that faults while holding the GIL (a new arena,
# its own text evicted by the group's reclaim) would leave every other thread
# waiting for the GIL in S instead of for memory. The file pages mapped at start
# are locked (mlockall MCL_CURRENT) so that reclaim cannot take them either.
THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
static long stride;
static int hold_fd;
static void *work(void *addr) {
    char c;
    if (read(0, &c, 1) != 1) return NULL;
    for (long off = 0; off < stride; off += 4096) ((volatile char *)addr)[off] = 1;
    read(hold_fd, &c, 1);  /* hold on until released: an exiting thread frees room for the next */
    return NULL;
}
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    stride = atol(argv[2]) * 4096;
    hold_fd = atoi(argv[3]);
    if (mlockall(MCL_CURRENT) != 0) { perror("mlockall"); return 1; }
    char *mem = mmap(NULL, n * stride, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(mem, n * stride, MADV_NOHUGEPAGE);
    pthread_t *ts = calloc(n, sizeof(*ts));
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 << 10);
    for (long i = 0; i < n; i++)
        if (pthread_create(&ts[i], &attr, work, mem + i * stride) != 0) { perror("pthread_create"); return 1; }
    write(1, "ready\n", 6);
    for (long i = 0; i < n; i++) pthread_join(ts[i], NULL);
    write(1, "done\n", 5);
    return 0;
}
"""


@contextlib.contextmanager
def threads_binary() -> Iterator[Path]:
    """THREADS_C built with the system's cc into a temporary directory (removed after)."""
    with tempfile.TemporaryDirectory(prefix="aw-bench-threads-") as d:
        src, exe = Path(d) / "stall.c", Path(d) / "stall"
        src.write_text(THREADS_C)
        subprocess.run(["cc", "-O1", "-pthread", "-o", str(exe), str(src)], check=True)
        yield exe


class Stalled:
    """`n` threads of one process in `group`, held in the memcg OOM wait until `release()`."""

    def __init__(self, group: memcg.MemCgroup, exe: Path, n: int, pages: int = 4, headroom_kib: int = 1024) -> None:
        self.group, self.n = group, n
        group.set_limit_bytes(None)
        group.set_oom_kill_disable(False)
        hold_r, self._hold_w = os.pipe()
        try:
            try:
                self.proc = group.spawn([str(exe), str(n), str(pages), str(hold_r)], pass_fds=(hold_r,),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
            finally:
                os.close(hold_r)
            assert self.proc.stdout is not None and self.proc.stdin is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            line = self.proc.stdout.readline() if ready else b""
            if line != b"ready\n":
                raise RuntimeError(f"thread holder not ready: {line!r}, status {self.proc.poll()}")
            group.set_limit_bytes(group.usage_bytes() + headroom_kib * 1024)
            group.set_oom_kill_disable(True)
            self.go_time = time.time()
            self.proc.stdin.write(b"g" * n)
        except BaseException:
            os.close(self._hold_w)  # the group's close() kills the holder
            self._hold_w = -1
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self, timeout_s: float = 120.0) -> bool:
        """Lift the limit; True once every thread has finished its pages."""
        memcg.release(self.group)
        assert self.proc.stdout is not None
        if self._hold_w >= 0:
            os.write(self._hold_w, b"g" * self.n)
            os.close(self._hold_w)
            self._hold_w = -1
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        return bool(ready) and self.proc.stdout.readline() == b"done\n"


@contextlib.contextmanager
def stalled_threads(exe: Path, n: int, prefix: str = "aw-bench-scale") -> Iterator[Stalled]:
    with memcg.MemCgroup(prefix) as group:
        s = Stalled(group, exe, n)
        try:
            yield s
        finally:
            s.release()
