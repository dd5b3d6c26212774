# SPDX-License-Identifier: Apache-2.0
"""Kernel addresses named from the running kernel's /proc/kallsyms: a function's
own address and the bytes inside it name it, for a sample of every text symbol."""

from __future__ import annotations

import random
from collections import defaultdict

from allocwatch.kernel.ksyms import TEXT_TYPES, KernelSymbols


def test_text_symbols_of_the_running_kernel_are_named_at_and_inside_themselves():
    at: dict[int, set[str]] = defaultdict(set)
    with open("/proc/kallsyms", "rb") as f:
        for line in f:
            parts = line.split(None, 3)
            # BPF programs' symbols come and go as programs load: not sampled
            if parts[1] in TEXT_TYPES and int(parts[0], 16) and b"[bpf]" not in line:
                at[int(parts[0], 16)].add(parts[2].decode(errors="replace"))
    assert len(at) > 10_000, "kallsyms shows no addresses: is kptr_restrict hiding them from root?"
    starts = sorted(at)
    k = KernelSymbols()
    rng = random.Random(11)
    for i in rng.sample(range(len(starts) - 1), 300):
        addr, following = starts[i], starts[i + 1]
        assert k.name(addr) in at[addr]
        inside = rng.randrange(addr, following)  # a return address is somewhere in its function
        assert k.name(inside) in at[addr], (hex(addr), hex(inside), k.name(inside))
    assert k.why_not is None
    # what a reclaim stack holds (a compiler may have renamed one: at least one of them is there)
    wanted = ("try_to_free_mem_cgroup_pages", "shrink_slab", "do_try_to_free_pages")
    found = [a for a, names in at.items() if names & set(wanted)]
    assert found, f"none of {wanted} in kallsyms"
    for addr in found:
        assert k.name(addr + 1) in at[addr]
