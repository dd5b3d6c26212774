# SPDX-License-Identifier: Apache-2.0
"""gfp masks decoded with the kernel's own table: the print-fmt parser and evaluator (core.gfp),
the BTF enum reader and the tracefs reader (kernel.gfpnames)."""

from __future__ import annotations

import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from allocwatch.core import gfp
from allocwatch.core.gfp import (
    MASK64,
    decode,
    describe,
    evaluate,
    parse_flag_table,
    skipped_names,
    unresolved_names,
)
from allocwatch.kernel.gfpnames import BTFError, btf_enum_values, read_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
KERNELS = FIXTURES / "kernels"
EVENT = "vmscan/mm_vmscan_memcg_reclaim_begin"
FMT_6_1 = KERNELS / "6.1" / "events" / EVENT / "format"
FMT_6_18 = KERNELS / "6.18" / "events" / EVENT / "format"
FMT_6_11 = FIXTURES / "gfp" / "6.11-mm_vmscan_memcg_reclaim_begin.format"
REAL_BTF = Path("/sys/kernel/btf/vmlinux")

# The 6.18 enum of include/linux/gfp_types.h (no KASAN_HW_TAGS, no LOCKDEP), as in tests/fixtures/gfp/README.md.
BITS_6_18 = {
    f"___GFP_{name}_BIT": bit
    for bit, name in enumerate(
        "DMA HIGHMEM DMA32 MOVABLE RECLAIMABLE HIGH IO FS ZERO UNUSED DIRECT_RECLAIM KSWAPD_RECLAIM WRITE NOWARN "
        "RETRY_MAYFAIL NOFAIL NORETRY MEMALLOC COMP NOMEMALLOC HARDWALL THISNODE ACCOUNT ZEROTAGS NO_OBJ_EXT".split()
    )
}

GFP_HIGHUSER_MOVABLE = 0x100CCA
GFP_KERNEL = 0xCC0
GFP_NOFS = 0xC40


def _table(path: Path, symbols: dict[str, int] | None = None) -> list[tuple[int, str]]:
    return parse_flag_table(path.read_text(), "gfp_flags", symbols or {})


def _names(table: list[tuple[int, str]]) -> dict[str, int]:
    return {name: value for value, name in table}


@pytest.fixture(scope="module")
def tables() -> dict[str, list[tuple[int, str]]]:
    return {
        "6.1": _table(FMT_6_1),
        "6.18": _table(FMT_6_18),
        "6.11": _table(FMT_6_11, BITS_6_18),
    }


# --- the three eras -------------------------------------------------------------------------------------------


def test_each_era_parses_to_a_full_table(tables):
    assert len(tables["6.1"]) == 36  # the capture has no { 0, NULL } terminator: the table ends at ")"
    assert len(tables["6.18"]) == 38  # ends with { 0, ((void *)0) }
    assert tables["6.1"][0] == (0x1C24CA, "GFP_TRANSHUGE")
    assert tables["6.18"][-1] == (1 << 24, "__GFP_NO_OBJ_EXT")
    assert tables["6.1"][-1] == (0x800000, "__GFP_ZEROTAGS")


def test_unresolved_era_with_the_enum_equals_the_resolved_capture(tables):
    assert tables["6.11"] == tables["6.18"]


def test_eras_agree_on_the_names_they_share(tables):
    old, new, mid = (_names(tables[k]) for k in ("6.1", "6.18", "6.11"))
    shared = old.keys() & new.keys() & mid.keys()
    assert {"GFP_KERNEL", "GFP_NOFS", "GFP_HIGHUSER_MOVABLE", "__GFP_IO", "__GFP_DIRECT_RECLAIM"} <= shared
    # The kernel itself changed these two between 6.1 and 6.18: __GFP_ATOMIC (0x200) went away in 6.3,
    # and GFP_NOWAIT gained __GFP_NOWARN.
    changed = {"GFP_ATOMIC": (0xA20, 0x820), "GFP_NOWAIT": (0x800, 0x2800)}
    for name in sorted(shared):
        assert new[name] == mid[name], name
        if name in changed:
            assert (old[name], new[name]) == changed[name], name
        else:
            assert old[name] == new[name], name


@pytest.mark.parametrize("era", ["6.1", "6.18", "6.11"])
def test_common_masks_decode_to_their_names(tables, era):
    table = tables[era]
    assert decode(GFP_HIGHUSER_MOVABLE, table) == "GFP_HIGHUSER_MOVABLE"
    assert decode(GFP_KERNEL, table) == "GFP_KERNEL"
    nofs = _names(table)["GFP_NOFS"]
    assert nofs == GFP_NOFS
    assert decode(nofs, table) == "GFP_NOFS"
    assert decode(GFP_KERNEL | _names(table)["__GFP_NOWARN"], table) == "GFP_KERNEL|__GFP_NOWARN"


@pytest.mark.parametrize("era", ["6.1", "6.18", "6.11"])
def test_leftover_bits_are_hex_and_zero_is_none(tables, era):
    table = tables[era]
    assert decode(GFP_KERNEL | 1 << 40, table) == "GFP_KERNEL|0x10000000000"
    assert decode(1 << 63, table) == "0x8000000000000000"
    assert decode(0, table) == "none"
    assert decode(1 << 64, table) == "none"  # a 64-bit mask: higher bits are not the kernel's


def test_decode_walks_the_table_in_order_like_the_kernel():
    table = [(0x3, "AB"), (0x1, "A"), (0x4, "C"), (0, "ZERO")]
    assert decode(0x3, table) == "AB"  # the first match takes both bits
    assert decode(0x1, table) == "A"
    assert decode(0x5, table) == "A|C"
    assert decode(0xD, table) == "A|C|0x8"
    assert decode(0x8, []) == "0x8"  # no table: hex only
    assert decode(0x24, [(0x4, "C")]) == "C|0x20"


def test_describe_keeps_none():
    assert describe(None, [(1, "A")]) is None
    assert describe(1, [(1, "A")]) == "A"
    assert describe(0, []) == "none"


def test_unresolved_entries_are_skipped_not_fatal():
    text = FMT_6_11.read_text()
    assert parse_flag_table(text) == []  # every entry names a bit
    assert unresolved_names(text) == set(BITS_6_18) - {"___GFP_UNUSED_BIT"}
    assert len(skipped_names(text)) == 38
    # half of the symbols: exactly the entries that need only those are kept
    partial = {k: v for k, v in BITS_6_18.items() if k in ("___GFP_IO_BIT", "___GFP_FS_BIT")}
    assert parse_flag_table(text, symbols=partial) == [(0x40, "__GFP_IO"), (0x80, "__GFP_FS")]
    assert skipped_names(text, symbols=BITS_6_18) == []
    assert unresolved_names(FMT_6_18.read_text()) == set()


# --- synthetic print fmts -------------------------------------------------------------------------------------


def _fmt(entries: str, field: str = "gfp_flags") -> str:
    return f'print fmt: "gfp={field}=%s", (REC->{field}) ? __print_flags(REC->{field}, "|", {entries} ) : "none"'


def test_old_null_terminator_and_other_casts():
    text = _fmt(
        '{(__force gfp_t)0x40u, "__GFP_IO"}, {(( gfp_t)0x80U), "__GFP_FS"}, {(unsigned long)010, "OCTAL"}, '
        '{1ULL << 3, "ULL"}, {0x10L, "L"}, { 0, NULL }, {0x100u, "AFTER_TERMINATOR"}'
    )
    assert parse_flag_table(text) == [(0x40, "__GFP_IO"), (0x80, "__GFP_FS"), (8, "OCTAL"), (8, "ULL"), (16, "L")]


def test_other_field_and_missing_table():
    text = _fmt('{0x40u, "__GFP_IO"}', field="gfp_mask")
    assert parse_flag_table(text, "gfp_mask") == [(0x40, "__GFP_IO")]
    assert parse_flag_table(text) == []  # no gfp_flags table in it
    assert parse_flag_table('print fmt: "order=%d", REC->order') == []
    assert unresolved_names('print fmt: "order=%d", REC->order') == set()


def test_names_with_commas_and_braces_in_them():
    text = _fmt('{0x1u, "A,{B}"}, {0x2u, "C"}, { 0, ((void *)0) }')
    assert parse_flag_table(text) == [(1, "A,{B}"), (2, "C")]


def test_compaction_gfp_mask_tables_match_the_vmscan_ones(tables):
    for era in ("6.1", "6.18"):
        path = KERNELS / era / "events" / "compaction" / "mm_compaction_try_to_compact_pages" / "format"
        assert parse_flag_table(path.read_text(), "gfp_mask") == tables[era]


# --- the evaluator --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "os",
        "___GFP_IO_BIT",
        "(1).bit_length()",
        "'a'",
        "1.5",
        "True",
        "2 ** 8",
        "3 * 4",
        "[1]",
        "lambda: 1",
        "",
        "1 <<",
        "1 << -1",
        "(" * 500 + "1" + ")" * 500,
        "1|" * 3000 + "1",
    ],
)
def test_evaluator_refuses_anything_but_integer_arithmetic(expr):
    with pytest.raises(ValueError):
        evaluate(expr)


def test_refused_entries_are_skipped_in_a_table():
    text = _fmt('{__import__(\'os\').system(\'true\'), "EVIL"}, {0x2u, "OK"}, {os, "NAME"}')
    assert parse_flag_table(text) == [(2, "OK")]


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("((((1UL))) << (10))", 0x400),
        ("(0x400u|0x800u) & ~(0x400u)", 0x800),
        ("~0", MASK64),
        ("0 - 1", MASK64),
        ("0xffffffffffffffffULL + 2", 1),
        ("1 << 63", 1 << 63),
        ("1 << 64", 0),
        ("1 << 100000000000", 0),  # huge shifts are masked, not computed
        ("0x10 >> 100000000000", 0),
        ("0x1ffffffffffffffff", MASK64),
        ("(( gfp_t)0)", 0),
    ],
)
def test_evaluator_is_unsigned_64_bit(expr, value):
    assert evaluate(expr) == value


# --- BTF ------------------------------------------------------------------------------------------------------


def _btf(enums: dict[str, int], end: str = "<", enum64: dict[str, int] | None = None) -> bytes:
    """A BTF blob: an INT, a STRUCT with one member, an anonymous ENUM of `enums`, optionally an ENUM64."""
    strings = bytearray(b"\0")

    def name(s: str) -> int:
        off = len(strings)
        strings.extend(s.encode() + b"\0")
        return off

    types = bytearray()
    types += struct.pack(end + "IIII", name("int"), 1 << 24, 4, (1 << 24) | 32)  # INT, signed, 32 bits
    types += struct.pack(end + "III", name("pair"), (4 << 24) | 1, 4)  # STRUCT with one member
    types += struct.pack(end + "III", name("a"), 1, 0)
    types += struct.pack(end + "III", 0, (6 << 24) | len(enums), 4)  # ENUM, unsigned
    for member, val in enums.items():
        types += struct.pack(end + "Ii", name(member), val)
    if enum64:
        types += struct.pack(end + "III", name("big"), (1 << 31) | (19 << 24) | len(enum64), 8)  # ENUM64, signed
        for member, val in enum64.items():
            raw = val & MASK64
            types += struct.pack(end + "III", name(member), raw & 0xFFFFFFFF, raw >> 32)
    header = struct.pack(end + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


@pytest.mark.parametrize("end", ["<", ">"])
def test_btf_reader_on_a_synthetic_blob(tmp_path, end):
    path = tmp_path / "vmlinux"
    path.write_bytes(_btf({"___GFP_IO_BIT": 6, "___GFP_FS_BIT": 7}, end, enum64={"BIG": 1 << 40, "NEG": -2}))
    assert btf_enum_values(path, {"___GFP_IO_BIT", "___GFP_FS_BIT"}) == {"___GFP_IO_BIT": 6, "___GFP_FS_BIT": 7}
    assert btf_enum_values(path, {"___GFP_FS_BIT", "MISSING"}) == {"___GFP_FS_BIT": 7}
    assert btf_enum_values(path, {"BIG", "NEG"}) == {"BIG": 1 << 40, "NEG": -2}
    assert btf_enum_values(path, {"int", "pair", "a"}) == {}  # only enum members count
    assert btf_enum_values(path, set()) == {}


def test_btf_reader_refuses_what_is_not_btf(tmp_path):
    blob = _btf({"___GFP_IO_BIT": 6})
    bad = tmp_path / "bad"
    for data in (b"", b"\x00" * 24, b"\x9f\xeb" + blob[2:10], blob[:-5]):
        bad.write_bytes(data)
        with pytest.raises(BTFError):
            btf_enum_values(bad, {"___GFP_IO_BIT"})
    unknown_kind = bytearray(blob)
    struct.pack_into("<I", unknown_kind, 24 + 4, 31 << 24)  # the INT's info made kind 31
    bad.write_bytes(bytes(unknown_kind))
    with pytest.raises(BTFError):
        btf_enum_values(bad, {"___GFP_IO_BIT"})
    with pytest.raises(OSError):
        btf_enum_values(tmp_path / "absent", {"___GFP_IO_BIT"})


def _release() -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_btf_reader_on_this_machine_when_it_has_btf():
    # No skip: the synthetic blob above is always tested; this adds the real file when there is one.
    if not (REAL_BTF.is_file() and os.access(REAL_BTF, os.R_OK)):
        return
    found = btf_enum_values(REAL_BTF, set(BITS_6_18))
    release = _release()
    if release is not None and release >= (6, 10):  # the bits are enums since 6.10
        assert all(isinstance(v, int) and 0 <= v <= 63 for v in found.values()), found
        assert "___GFP_DIRECT_RECLAIM_BIT" in found
    if release == (6, 18):
        assert found["___GFP_DIRECT_RECLAIM_BIT"] == 10
        assert found == BITS_6_18 | {k: v for k, v in found.items() if k not in BITS_6_18}


# --- read_table -----------------------------------------------------------------------------------------------


def _tracefs(tmp_path: Path, fmt: Path, event: str = EVENT) -> Path:
    root = tmp_path / "tracing"
    (root / "events" / event).mkdir(parents=True)
    shutil.copy(fmt, root / "events" / event / "format")
    return root


def test_read_table_resolves_enum_names_from_btf(tmp_path, tables):
    tracefs = _tracefs(tmp_path, FMT_6_11)
    btf = tmp_path / "vmlinux"
    btf.write_bytes(_btf(BITS_6_18))
    table = read_table(tracefs, btf=btf)
    assert table == tables["6.18"]
    assert decode(GFP_HIGHUSER_MOVABLE, table) == "GFP_HIGHUSER_MOVABLE"


def test_read_table_without_btf_keeps_what_needs_no_names(tmp_path):
    tracefs = _tracefs(tmp_path, FMT_6_11)
    assert read_table(tracefs, btf=tmp_path / "absent") == []
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not btf at all")
    assert read_table(tracefs, btf=garbage) == []


def test_read_table_on_captured_kernels(tables):
    absent = Path("/nonexistent-btf")  # resolved eras never open BTF
    assert read_table(KERNELS / "6.1", btf=absent) == tables["6.1"]
    assert read_table(KERNELS / "6.18", btf=absent) == tables["6.18"]
    compaction = "compaction/mm_compaction_try_to_compact_pages"
    assert read_table(KERNELS / "6.18", compaction, "gfp_mask", btf=absent) == tables["6.18"]


def test_read_table_missing_file_or_no_flags(tmp_path):
    assert read_table(tmp_path) == []
    assert read_table(KERNELS / "6.18", "oom/mark_victim") == []  # no __print_flags of gfp_flags there


def test_read_table_with_this_machines_btf(tmp_path, tables):
    if not (REAL_BTF.is_file() and os.access(REAL_BTF, os.R_OK)) or _release() != (6, 18):
        return
    assert read_table(_tracefs(tmp_path, FMT_6_11)) == tables["6.18"]


def test_compaction_status_names_come_from_the_print_fmt():
    from allocwatch.core.gfp import parse_symbolic
    from allocwatch.kernel.gfpnames import read_symbolic

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"
    for release in ("6.1", "6.18"):
        names = read_symbolic(fixtures / release, "compaction/mm_compaction_end", "status")
        assert names[1] == "skipped" and names[8] == "success" and names[7] == "contended", names
    assert parse_symbolic('x, __print_symbolic(REC->status, {0, "a"}, {-1, "b"})', "status") == {0: "a", -1: "b"}
    assert parse_symbolic("no table here", "status") == {}


def test_throttle_reason_bits_are_named_from_the_print_fmt_and_btf():
    from allocwatch.kernel.gfpnames import read_throttle_reasons

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"
    btf = Path("/sys/kernel/btf/vmlinux")
    names = read_throttle_reasons(fixtures / "6.18", btf)
    if btf.exists():  # the enum's numbers come from BTF; without it the names cannot be placed
        assert names == {0: "VMSCAN_THROTTLE_WRITEBACK", 1: "VMSCAN_THROTTLE_ISOLATED",
                         2: "VMSCAN_THROTTLE_NOPROGRESS", 3: "VMSCAN_THROTTLE_CONGESTED"}
    assert read_throttle_reasons(fixtures / "no-such-kernel", btf) == {}


def test_a_mask_that_may_not_start_fs_or_io_is_told_from_the_kernels_own_bits():
    table = [(0xCC0, "GFP_KERNEL"), (0xC40, "GFP_NOFS"), (0xC00, "GFP_NOIO"), (0x40, "__GFP_IO"), (0x80, "__GFP_FS")]
    assert gfp.lacks_fs_or_io(0xC40, table) and gfp.lacks_fs_or_io(0xC00, table)
    assert not gfp.lacks_fs_or_io(0xCC0, table) and not gfp.lacks_fs_or_io(None, table)
    assert not gfp.lacks_fs_or_io(0xC40, [(0xCC0, "GFP_KERNEL")])  # a table without the bits says nothing
