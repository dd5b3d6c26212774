# SPDX-License-Identifier: Apache-2.0
"""Kernel addresses named from a kallsyms text, kept as an array and compressed blocks."""

from __future__ import annotations

import random
from pathlib import Path

from allocwatch.kernel import ksyms
from allocwatch.kernel.ksyms import UNKNOWN, KernelSymbols, SymbolTable

KALLSYMS = b"""\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t do_one_thing
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffff81004000 t xfs_reclaim_inodes_nr\t[xfs]
0000000000000000 t hidden_by_kptr_restrict
"""


def test_an_address_is_named_after_the_text_symbol_at_or_below_it():
    t = SymbolTable(KALLSYMS.splitlines(keepends=True))
    assert len(t) == 5  # T, T, t, W, t: neither the absolute nor the data symbol nor a hidden one
    assert t.name(0xFFFFFFFF81000000) in ("_stext", "startup_64")
    assert t.name(0xFFFFFFFF81001234) == "do_one_thing"
    assert t.name(0xFFFFFFFF81002800) == "do_one_thing"  # data symbols are never a function
    assert t.name(0xFFFFFFFF81003000) == "weak_fn"
    assert t.name(0xFFFFFFFF81004010) == "xfs_reclaim_inodes_nr"  # the module's name is not part of it
    assert t.name(0xFFFFFFFF80FFFFFF) == UNKNOWN


def test_thousands_of_symbols_in_any_order_name_as_a_sorted_search_does():
    rng = random.Random(3)
    addrs = sorted(rng.sample(range(0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 16), 3000))
    rows = [(a, f"fn_{i}") for i, a in enumerate(addrs)]
    shuffled = rows[:]
    rng.shuffle(shuffled)  # the kernel lists core text sorted; modules need not be
    for lines in ([f"{a:016x} t {n}\n".encode() for a, n in rows], [f"{a:016x} T {n}\n".encode() for a, n in shuffled]):
        t = SymbolTable(lines)
        for _ in range(500):
            probe = rng.randrange(addrs[0], addrs[-1] + 4096)
            below = max(i for i, a in enumerate(addrs) if a <= probe)
            assert t.name(probe) == f"fn_{below}"
        assert t.name(addrs[1000]) == "fn_1000" and t.name(addrs[1000] - 1) == "fn_999"


def test_only_a_few_blocks_are_kept_open(monkeypatch):
    monkeypatch.setattr(ksyms, "BLOCKS_KEPT", 2)
    lines = [f"{0xFFFFFFFF81000000 + i * 16:016x} t f{i}\n".encode() for i in range(10 * ksyms.NAMES_PER_BLOCK)]
    t = SymbolTable(lines)
    for i in range(0, 10 * ksyms.NAMES_PER_BLOCK, 97):
        assert t.name(0xFFFFFFFF81000000 + i * 16 + 3) == f"f{i}"
        assert len(t._open) <= 2


def test_the_file_is_read_once_at_the_first_name_and_a_failed_read_names_nothing(tmp_path: Path):
    path = tmp_path / "kallsyms"
    path.write_bytes(KALLSYMS)
    k = KernelSymbols(path)
    assert k.name(0xFFFFFFFF81001001) == "do_one_thing"
    path.write_bytes(b"ffffffff81001000 t renamed\n")
    assert k.name(0xFFFFFFFF81001001) == "do_one_thing" and k.why_not is None  # the table read first
    gone = KernelSymbols(tmp_path / "absent")
    assert gone.name(0xFFFFFFFF81001001) == UNKNOWN and gone.why_not is not None and "absent" in gone.why_not


def test_lines_that_are_not_kallsyms_and_hidden_addresses_name_nothing(tmp_path: Path):
    t = SymbolTable([b"garbage t here\n", b"\n", b"ffffffff81000000 t real\n"])
    assert len(t) == 1 and t.name(0xFFFFFFFF81000010) == "real"
    hidden = tmp_path / "kallsyms"
    hidden.write_bytes(b"0000000000000000 T _stext\n0000000000000000 t do_one_thing\n")
    k = KernelSymbols(hidden)
    assert k.name(0xFFFFFFFF81000010) == UNKNOWN and k.why_not is not None and "kptr_restrict" in k.why_not


def test_how_says_where_names_come_from_or_why_addresses_stay(tmp_path: Path):
    path = tmp_path / "kallsyms"
    path.write_bytes(KALLSYMS)
    k = KernelSymbols(path)
    assert k.how() == f"named from {path} ({len(SymbolTable(KALLSYMS.splitlines(True))):,} text symbols)"
    assert k.name(0xFFFFFFFF81001001) == "do_one_thing"  # the table read by how() is the one kept
    hidden = tmp_path / "hidden"
    hidden.write_bytes(b"0000000000000000 T _stext\n")
    said = KernelSymbols(hidden).how()
    assert said.startswith("left as addresses: ") and "CAP_SYSLOG" in said
    assert KernelSymbols(tmp_path / "absent").how().startswith("left as addresses: ")
