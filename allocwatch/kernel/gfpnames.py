# SPDX-License-Identifier: Apache-2.0
"""The running kernel's gfp flag table, from tracefs, with enum bit names resolved from BTF.

Kernels 6.10 to 6.13 (before "mm: enumerate all gfp flags" was followed by the
fix that lets tracefs print the numbers) show the table's bits as
`1UL << (___GFP_IO_BIT)`; the values of those enum members are read from the
kernel's BTF (/sys/kernel/btf/vmlinux). Nothing is cached here: read once,
keep the table.
"""

from __future__ import annotations

import struct
from pathlib import Path

from allocwatch.core.gfp import FlagTable, parse_flag_table, parse_symbolic, unresolved_names

BTF_MAGIC = 0xEB9F
BTF_MAX_BYTES = 64 << 20  # vmlinux BTF is ~5 MB; anything far bigger is not what we think it is
_HEADER = 24  # u16 magic, u8 version, u8 flags, u32 hdr_len, u32 type_off, type_len, str_off, str_len

KIND_INT = 1
KIND_ENUM = 6
KIND_ENUM64 = 19
# Bytes that follow each kind's 12-byte common header: (fixed, per vlen member).
_TRAILER = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64
}


class BTFError(ValueError):
    """The file is not BTF this reader can walk."""


def btf_enum_values(path: Path, names: set[str]) -> dict[str, int]:
    """Values of the enum members called `names` in a BTF file (those found; the first of each name).

    Raises OSError when the file cannot be read and BTFError when it is not BTF.
    """
    wanted = {n.encode() for n in names}
    if not wanted:
        return {}
    with path.open("rb") as f:
        head = f.read(_HEADER)
        if len(head) < _HEADER:
            raise BTFError("short header")
        if head[:2] == b"\x9f\xeb":
            end = "<"
        elif head[:2] == b"\xeb\x9f":
            end = ">"
        else:
            raise BTFError(f"bad magic {head[:2].hex()}")
        _magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack(end + "HBBIIIII", head)
        if hdr_len < _HEADER:
            raise BTFError(f"header length {hdr_len}")
        total = hdr_len + max(type_off + type_len, str_off + str_len)
        if total > BTF_MAX_BYTES:
            raise BTFError(f"{total} bytes is more than {BTF_MAX_BYTES}")
        f.seek(hdr_len)
        data = f.read(total - hdr_len)
    if len(data) < max(type_off + type_len, str_off + str_len):
        raise BTFError("truncated")
    types = memoryview(data)[type_off : type_off + type_len]
    strings = bytes(data[str_off : str_off + str_len])
    return _walk(types, strings, wanted, end)


def _name(strings: bytes, off: int) -> bytes:
    if off >= len(strings):
        raise BTFError(f"name offset {off} outside the strings")
    stop = strings.find(b"\0", off)
    return strings[off:] if stop < 0 else strings[off:stop]


def _walk(types: memoryview, strings: bytes, wanted: set[bytes], end: str) -> dict[str, int]:
    common = struct.Struct(end + "III")
    enum_member = struct.Struct(end + "Ii")
    enum64_member = struct.Struct(end + "III")
    found: dict[str, int] = {}
    pos = 0
    size = len(types)
    while pos + common.size <= size and len(found) < len(wanted):
        _name_off, info, _size_or_type = common.unpack_from(types, pos)
        pos += common.size
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        signed = bool(info >> 31)  # kind_flag: for enums, the values are signed
        trailer = _TRAILER.get(kind)
        if trailer is None:
            raise BTFError(f"unknown kind {kind} at type offset {pos - common.size}")
        fixed, each = trailer
        length = fixed + each * vlen
        if pos + length > size:
            raise BTFError("type runs past the type section")
        if kind == KIND_ENUM:
            for i in range(vlen):
                off, val = enum_member.unpack_from(types, pos + i * enum_member.size)
                name = _name(strings, off)
                if name in wanted and name.decode() not in found:
                    found[name.decode()] = val if signed else val & 0xFFFFFFFF
        elif kind == KIND_ENUM64:
            for i in range(vlen):
                off, lo, hi = enum64_member.unpack_from(types, pos + i * enum64_member.size)
                name = _name(strings, off)
                if name in wanted and name.decode() not in found:
                    val = (hi << 32) | lo
                    if signed and val >> 63:
                        val -= 1 << 64
                    found[name.decode()] = val
        pos += length
    return found


def read_table(
    tracefs: Path,
    event: str = "vmscan/mm_vmscan_memcg_reclaim_begin",
    field: str = "gfp_flags",
    btf: Path = Path("/sys/kernel/btf/vmlinux"),
) -> FlagTable:
    """The (value, name) gfp table of `event`'s print fmt under tracefs, "category/event".

    [] when the format file cannot be read or has no __print_flags for `field`
    (show the mask in hex then). Entries whose enum names BTF cannot give are
    left out.
    """
    try:
        text = (tracefs / "events" / event / "format").read_text()
    except (OSError, UnicodeDecodeError):
        return []
    symbols: dict[str, int] = {}
    needed = unresolved_names(text, field)
    if needed:
        try:
            symbols = btf_enum_values(btf, needed)
        except (OSError, ValueError):
            symbols = {}
    return parse_flag_table(text, field, symbols)


def read_symbolic(tracefs: Path, event: str, field: str) -> dict[int, str]:
    """`parse_symbolic` of an event's format file; {} when it cannot be read."""
    try:
        text = (tracefs / "events" / event / "format").read_text(errors="replace")
    except OSError:
        return {}
    return parse_symbolic(text, field)


def read_throttle_reasons(tracefs: Path, btf: Path = Path("/sys/kernel/btf/vmlinux")) -> dict[int, str]:
    """mm_vmscan_throttled's reason bits by the kernel's names (VMSCAN_THROTTLE_*):
    the print fmt names them by enum, so the numbers come from BTF. {} when unknown."""
    try:
        text = (tracefs / "events" / "vmscan" / "mm_vmscan_throttled" / "format").read_text(errors="replace")
    except OSError:
        return {}
    wanted = unresolved_names(text, "reason")
    try:
        symbols = btf_enum_values(btf, wanted) if wanted else {}
    except (OSError, BTFError):
        symbols = {}
    out = {}
    for value, name in parse_flag_table(text, "reason", symbols):
        if value and value & (value - 1) == 0:  # one bit each
            out[value.bit_length() - 1] = name
    return out
