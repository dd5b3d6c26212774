# SPDX-License-Identifier: Apache-2.0
"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member
offsets and enum values, so the BPF programs read kernel structs at the running
kernel's offsets, never at the ones of whatever headers bcc compiled against.

Pure parsing of the format (include/uapi/linux/btf.h, Documentation/bpf/btf.rst);
no bcc here. Only what allocwatch needs: named structs and unions with their
members (anonymous members searched through), arrays' element size, enums.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
MAGIC = 0xEB9F

# BTF_KIND_*
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# Bytes that follow struct btf_type: fixed, or per member (vlen of them).
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}


class BtfError(Exception):
    """No usable BTF, or a struct, member or enum it lacks."""


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield: bool


@dataclass(frozen=True, slots=True)
class Type:
    kind: int
    name: str
    size_or_type: int  # size for structs, unions, enums, ints; the type id for pointers, typedefs, ...
    members: tuple[Member, ...] = ()
    enum: tuple[tuple[str, int], ...] = ()
    array: tuple[int, int] = (0, 0)  # (element type id, nelems)
    params: tuple[int, ...] = ()  # a FUNC_PROTO's parameter type ids, in order


class Btf:
    """Parsed BTF. Type ids start at 1 (0 is void)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}; a big-endian blob is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", blob, 8)
        self._strings = blob[hdr_len + str_off: hdr_len + str_off + str_len]
        self.types: list[Type | None] = [None]
        self._parse(blob[hdr_len + type_off: hdr_len + type_off + type_len])
        self._by_name: dict[tuple[int, str], int] = {}
        for i, t in enumerate(self.types):
            if t is not None and t.name:
                self._by_name.setdefault((t.kind, t.name), i)

    @classmethod
    def read(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror}") from None

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode("utf-8", "replace")

    def _parse(self, data: bytes) -> None:
        pos = 0
        while pos + 12 <= len(data):
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            name = self._str(name_off)
            members: tuple[Member, ...] = ()
            enum: tuple[tuple[str, int], ...] = ()
            array = (0, 0)
            params: tuple[int, ...] = ()
            if kind in (STRUCT, UNION):
                ms = []
                for k in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * k)
                    bits = m_off & 0xFFFFFF if kflag else m_off
                    ms.append(Member(self._str(m_name), m_type, bits, bool(kflag and m_off >> 24)))
                members = tuple(ms)
            elif kind == ENUM:
                enum = tuple((self._str(n), v) for n, v in
                             (struct.unpack_from("<Ii", data, pos + 8 * k) for k in range(vlen)))
            elif kind == ENUM64:
                enum = tuple((self._str(n), lo | hi << 32) for n, lo, hi in
                             (struct.unpack_from("<III", data, pos + 12 * k) for k in range(vlen)))
            elif kind == ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", data, pos)
                array = (elem, nelems)
            elif kind == FUNC_PROTO:  # struct btf_param {name_off, type}
                params = tuple(struct.unpack_from("<I", data, pos + 8 * k + 4)[0] for k in range(vlen))
            pos += _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
            self.types.append(Type(kind, name, size_or_type, members, enum, array, params))

    def _type(self, type_id: int) -> Type:
        t = self.types[type_id] if 0 < type_id < len(self.types) else None
        if t is None:
            raise BtfError(f"no BTF type {type_id}")
        return t

    def resolve(self, type_id: int) -> Type:
        """The type with typedefs and qualifiers taken off."""
        t = self._type(type_id)
        while t.kind in _MODIFIERS:
            t = self._type(t.size_or_type)
        return t

    def struct(self, name: str) -> Type:
        for kind in (STRUCT, UNION):
            if (kind, name) in self._by_name:
                return self._type(self._by_name[(kind, name)])
        raise BtfError(f"no struct {name} in BTF")

    def _member(self, t: Type, name: str) -> tuple[int, Member] | None:
        """(bit offset from t's start, member), searching anonymous structs and unions."""
        for m in t.members:
            if m.name == name:
                return m.bit_offset, m
            if not m.name:
                inner = self.resolve(m.type_id)
                if inner.kind in (STRUCT, UNION) and (found := self._member(inner, name)) is not None:
                    return m.bit_offset + found[0], found[1]
        return None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` (a name; anonymous members looked through) in struct_name."""
        found = self._member(self.struct(struct_name), member)
        if found is None:
            raise BtfError(f"no member {member} in struct {struct_name}")
        bits, m = found
        if m.bitfield or bits % 8:
            raise BtfError(f"{struct_name}.{member} is a bit field")
        return bits // 8

    def member_size(self, struct_name: str, member: str) -> int:
        """Size in bytes of a member whose type is an int, enum, pointer or struct."""
        found = self._member(self.struct(struct_name), member)
        if found is None:
            raise BtfError(f"no member {member} in struct {struct_name}")
        t = self.resolve(found[1].type_id)
        if t.kind == PTR:
            return 8
        if t.kind in (INT, ENUM, ENUM64, STRUCT, UNION):
            return t.size_or_type
        raise BtfError(f"{struct_name}.{member}: no size for BTF kind {t.kind}")

    def typedef_params(self, name: str) -> tuple[Type, ...]:
        """The parameters of the function type a typedef of a function pointer
        names (the kernel's btf_trace_<event>: a raw tracepoint's arguments, after
        the void *__data every one of them takes first)."""
        if (TYPEDEF, name) not in self._by_name:
            raise BtfError(f"no typedef {name} in BTF")
        t = self.resolve(self._by_name[(TYPEDEF, name)])
        if t.kind == PTR:
            t = self.resolve(t.size_or_type)
        if t.kind != FUNC_PROTO:
            raise BtfError(f"typedef {name} is not a function pointer")
        return tuple(self.resolve(p) if p else Type(0, "void", 0) for p in t.params)

    def enum_value(self, name: str) -> int:
        """The value of an enumerator, whichever enum declares it."""
        for t in self.types:
            if t is not None and t.kind in (ENUM, ENUM64):
                for n, v in t.enum:
                    if n == name:
                        return v
        raise BtfError(f"no enumerator {name} in BTF")

    def enum_names(self, enum_name: str) -> dict[int, str]:
        """value -> enumerator name of a named enum."""
        for kind in (ENUM, ENUM64):
            if (kind, enum_name) in self._by_name:
                return {v: n for n, v in self._type(self._by_name[(kind, enum_name)]).enum}
        raise BtfError(f"no enum {enum_name} in BTF")
