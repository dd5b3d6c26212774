# SPDX-License-Identifier: Apache-2.0
"""What the pieces of a begin/end handler cost, side by side on the same hook.

Each variant below is a pair of programs (one on memcg reclaim begin, one on its
end) in a BPF object of its own, all attached at once, so every variant sees the
same events; bpf_stats gives each program's run time per run. The workload is
the livelock recipe (tens of thousands of reclaim passes a second).

    .venv/bin/python bench/primitives.py          # as root; about 40 s

The variants go from nothing to allocwatch's own handlers, so the table says
which part of a handler's cost is the dispatch, which the hash map's insert and
delete, which the shared counters, and which the rest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocwatch.kernel import bpfsource, bpfstats
from lab import recipes

BEGIN = "vmscan:mm_vmscan_memcg_reclaim_begin"
END = "vmscan:mm_vmscan_memcg_reclaim_end"

PRELUDE = """
struct wkey { u32 tid; u32 site; };
struct wval { u64 start_ns; u64 gfp; u32 pid; s32 order; u32 depth; u32 hint; char comm[16]; u64 pages; };
"""

VARIANTS: dict[str, tuple[str, str, str]] = {
    # name: (maps and helpers, begin body, end body)
    "empty": ("", "return 0;", "return 0;"),
    "pid_tgid + ktime": ("", "u64 id = bpf_get_current_pid_tgid(); u64 t = bpf_ktime_get_ns(); return (id ^ t) & 0;",
                         "u64 id = bpf_get_current_pid_tgid(); u64 t = bpf_ktime_get_ns(); return (id ^ t) & 0;"),
    "comm": ("", "char c[16]; bpf_get_current_comm(&c, sizeof(c)); return c[0] & 0;", "return 0;"),
    "hash lookup (miss)": (
        "BPF_HASH(m, struct wkey, struct wval, 32768);",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1}; return m.lookup(&k) ? 1 : 0;",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1}; return m.lookup(&k) ? 1 : 0;",
    ),
    "hash insert / delete": (
        "BPF_HASH(m, struct wkey, struct wval, 32768);",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1};"
        " if (m.lookup(&k)) return 0; struct wval v = {}; v.start_ns = bpf_ktime_get_ns(); m.update(&k, &v); return 0;",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1};"
        " struct wval *v = m.lookup(&k); if (!v) return 0; u64 d = bpf_ktime_get_ns() - v->start_ns;"
        " m.delete(&k); return d & 0;",
    ),
    "hash in place": (
        "BPF_HASH(m, struct wkey, struct wval, 32768);",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1}; struct wval *v = m.lookup(&k);"
        " if (v) { v->start_ns = bpf_ktime_get_ns(); return 0; }"
        " struct wval n = {}; n.start_ns = bpf_ktime_get_ns(); m.update(&k, &n); return 0;",
        "struct wkey k = {.tid = (u32)bpf_get_current_pid_tgid(), .site = 1};"
        " struct wval *v = m.lookup(&k); if (!v || !v->start_ns) return 0;"
        " u64 d = bpf_ktime_get_ns() - v->start_ns; v->start_ns = 0; return d & 0;",
    ),
    "lru lookup": (
        "BPF_TABLE(\"lru_hash\", u32, u64, m, 16384);",
        "u32 t = (u32)bpf_get_current_pid_tgid(); u64 *v = m.lookup(&t);"
        " if (!v) { u64 z = 0; m.update(&t, &z); } return 0;",
        "return 0;",
    ),
    "shared atomics (2)": (
        "BPF_ARRAY(h, u64, 64);",
        "return 0;",
        "u32 i = 3; u64 *v = h.lookup(&i); if (v) __sync_fetch_and_add(v, 1);"
        " i = 40; v = h.lookup(&i); if (v) __sync_fetch_and_add(v, 100); return 0;",
    ),
    "per-cpu adds (2)": (
        "BPF_PERCPU_ARRAY(h, u64, 64);",
        "return 0;",
        "u32 i = 3; u64 *v = h.lookup(&i); if (v) *v += 1; i = 40; v = h.lookup(&i); if (v) *v += 100; return 0;",
    ),
}


def source(maps: str, begin: str, end: str) -> str:
    return (f"{PRELUDE}\n{maps}\nint on_begin(void *ctx) {{ {begin} }}\n"
            f"int on_end(void *ctx) {{ {end} }}\n")


def measure(victims: int = 6) -> dict[str, dict[str, tuple[float, int]]]:
    bcc = bpfsource.import_bcc()
    fd = bpfstats.enable()
    objs = {}
    try:
        for name, (maps, b, e) in VARIANTS.items():
            obj = bcc.BPF(text=source(maps, b, e).encode())
            obj.attach_tracepoint(tp=BEGIN.encode(), fn_name=b"on_begin")
            obj.attach_tracepoint(tp=END.encode(), fn_name=b"on_end")
            objs[name] = obj

        def stats() -> dict[str, dict[str, tuple[int, int]]]:
            hooks = (("begin", b"on_begin"), ("end", b"on_end"))
            return {n: {h: bpfstats.prog_stats(o.funcs[fn].fd) for h, fn in hooks} for n, o in objs.items()}

        s0 = stats()
        recipes.reclaim_livelock(victims, prefix="aw-bench-prim")
        s1 = stats()
    finally:
        for obj in objs.values():
            obj.cleanup()
        os.close(fd)
    out: dict[str, dict[str, tuple[float, int]]] = {}
    for n in VARIANTS:
        out[n] = {}
        for h in ("begin", "end"):
            dt, dn = (s1[n][h][0] - s0[n][h][0]), (s1[n][h][1] - s0[n][h][1])
            out[n][h] = (dt / dn if dn else float("nan"), dn)
    return out


def main() -> None:
    res = measure()
    print(f"{'variant':24} {'begin ns':>9} {'end ns':>9} {'runs':>9}")
    for n, r in res.items():
        print(f"{n:24} {r['begin'][0]:9.0f} {r['end'][0]:9.0f} {r['begin'][1]:9,}")


if __name__ == "__main__":
    main()
