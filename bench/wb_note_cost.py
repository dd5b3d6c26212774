# SPDX-License-Identifier: Apache-2.0
"""What noting the device of a writeback wait costs.

    .venv/bin/python bench/wb_note_cost.py [--seconds S]   (as root)

aw_folio_wait_writeback runs each time a task is about to wait on a folio's
writeback. Built without the note (the hint alone), with it (AW_HAVE_WB_NOTE:
the bdi's name copied from the record and an lru_hash update by tid), and an
empty program, all three are attached to writeback:folio_wait_writeback at once
with the kernel's run-time stats on, over S seconds of a writer that writes
256 KiB to a file on a loop device and fdatasync()s it, over and over (each
sync waits on the writeback of the pages it started: many waits a second).
They run in the order attached and the first pays for what is cold, so the
run is repeated with the two real builds swapped. The cost per event is each
program's run time over its runs, next to the empty program's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocwatch.kernel import bpfsource, bpfstats, probes
from lab import slowdisk

BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"
FN = b"aw_folio_wait_writeback"
WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
chunk = b"x" * (256 << 10)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    os.pwrite(fd, chunk, (n % 64) * len(chunk))
    os.fdatasync(fd)
    n += 1
print(n)
"""


def note_cost(reverse: bool, seconds: float) -> tuple[dict[str, tuple[int, int]], int]:
    """(run ns, runs) per program, and the writer's syncs."""
    bcc = bpfsource.import_bcc()
    src = str(BPF_DIR / bpfsource.BPF_SOURCE).encode()
    base = [f"-I{BPF_DIR}", "-DAW_TP_FOLIO_WAIT_WRITEBACK"]
    variants = [("hint only", base), ("hint + note", [*base, f"-D{probes.WB_NOTE_DEFINE}"])]
    objs = {name: bcc.BPF(src_file=src, cflags=flags) for name, flags in (variants[::-1] if reverse else variants)}
    objs["empty"] = bcc.BPF(text=b"int aw_folio_wait_writeback(void *ctx) { return 0; }\n")
    fds = {}
    for name, obj in objs.items():
        obj.attach_tracepoint(tp=probes.FOLIO_WAIT_WRITEBACK.encode(), fn_name=FN)
        fds[name] = obj.funcs[FN].fd
    try:
        with slowdisk.SlowDisk(write_bps=1 << 30) as disk:  # a rule too high to hold anything back
            before = {n: bpfstats.prog_stats(fd) for n, fd in fds.items()}
            out = subprocess.run([sys.executable, "-c", WRITER, str(disk.mnt / "f"), str(seconds)],
                                 check=True, capture_output=True, text=True).stdout
            after = {n: bpfstats.prog_stats(fd) for n, fd in fds.items()}
    finally:
        for obj in objs.values():
            obj.cleanup()
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}, int(out.strip() or 0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    stats_fd = bpfstats.enable()
    try:
        for r in range(args.repeats * 2):
            got, syncs = note_cost(bool(r % 2), args.seconds)
            each = "; ".join(f"{name} {v[0] / v[1] if v[1] else 0.0:.1f} ns a run ({v[1]} runs)"
                             for name, v in got.items())
            print(f"folio_wait_writeback, {args.seconds:.0f} s, {syncs} fdatasyncs, in the order attached: {each}",
                  flush=True)
            time.sleep(1)
    finally:
        os.close(stats_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
