# SPDX-License-Identifier: Apache-2.0
"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member
offsets and enum values, so the BPF programs read kernel structs at the running
kernel's offsets, never at the ones of whatever headers bcc compiled against.

Pure parsing of the format (include/uapi/linux/btf.h, Documentation/bpf/btf.rst);
no bcc here. Only what allocwatch needs: named structs and unions with their
members (anonymous members searched through), arrays' element size, enums.
"""

from __future__ import annotations

import array
import mmap
import os
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
    """BTF, indexed: type ids start at 1 (0 is void).

    The kernel's BTF holds some 130,000 types; a Type object each cost the
    daemon 24 MiB of RssAnon for good (the heap they fragmented), for a dozen
    offsets. So one pass keeps each type's place and name offset in two arrays,
    and a Type is made only when asked for."""

    def __init__(self, blob: bytes | mmap.mmap) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}; a big-endian blob is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<4I", blob, 8)
        if hdr_len + max(type_off + type_len, str_off + str_len) > len(blob):
            raise BtfError("BTF blob truncated")
        self._blob = blob
        self._str_start, self._str_end = hdr_len + str_off, hdr_len + str_off + str_len
        self._places = array.array("I", [0])  # type id -> its struct btf_type's place in the blob
        self._names = array.array("I", [0])  # type id -> its name's offset in the strings
        self._made: dict[int, Type] = {}
        self._index(hdr_len + type_off, hdr_len + type_off + type_len)

    @classmethod
    def read(cls, path: Path = VMLINUX) -> Btf:
        """The file, read into an anonymous mapping: a sysfs file's size is known
        up front, and unmapping it gives its 5 MiB back whatever the heap does."""
        try:
            with path.open("rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                buf = mmap.mmap(-1, max(size, 1))
                got = 0
                while got < size and (n := f.readinto(memoryview(buf)[got:])):
                    got += n
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror}") from None
        return cls(buf if got == size else buf[:got])

    def _str(self, off: int) -> str:
        at = self._str_start + off
        end = self._blob.find(b"\0", at, self._str_end)
        if off < 0 or at >= self._str_end or end < 0:
            raise BtfError(f"BTF string offset {off} outside the strings")
        return self._blob[at:end].decode("utf-8", "replace")

    def _index(self, pos: int, end: int) -> None:
        blob, places, names = self._blob, self._places, self._names
        fixed, per_member = _FIXED.get, _PER_MEMBER.get
        unpack = struct.Struct("<II").unpack_from
        while pos + 12 <= end:
            name_off, info = unpack(blob, pos)
            kind = (info >> 24) & 0x1F
            places.append(pos)
            names.append(name_off)
            pos += 12 + fixed(kind, 0) + per_member(kind, 0) * (info & 0xFFFF)

    def _named(self, kind: int, name: str) -> int | None:
        """The first type id of `kind` called `name`, or None."""
        want = name.encode()
        offs = set()
        at = self._blob.find(b"\0" + want + b"\0", self._str_start, self._str_end)
        while at >= 0:  # strings are deduplicated, but a second copy would do no harm
            offs.add(at + 1 - self._str_start)
            at = self._blob.find(b"\0" + want + b"\0", at + 1, self._str_end)
        found = []
        for off in offs:
            i = 0
            while True:
                try:
                    i = self._names.index(off, i + 1)
                except ValueError:
                    break
                if self._kind(i) == kind:
                    found.append(i)
                    break
        return min(found, default=None)

    def _kind(self, type_id: int) -> int:
        return (struct.unpack_from("<I", self._blob, self._places[type_id] + 4)[0] >> 24) & 0x1F

    def _make(self, type_id: int) -> Type:
        blob = self._blob
        at = self._places[type_id]
        name_off, info, size_or_type = struct.unpack_from("<III", blob, at)
        pos = at + 12
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        name = self._str(name_off)
        members: tuple[Member, ...] = ()
        enum: tuple[tuple[str, int], ...] = ()
        arr = (0, 0)
        params: tuple[int, ...] = ()
        if kind in (STRUCT, UNION):
            ms = []
            for k in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", blob, pos + 12 * k)
                bits = m_off & 0xFFFFFF if kflag else m_off
                ms.append(Member(self._str(m_name), m_type, bits, bool(kflag and m_off >> 24)))
            members = tuple(ms)
        elif kind == ENUM:
            enum = tuple((self._str(n), v) for n, v in
                         (struct.unpack_from("<Ii", blob, pos + 8 * k) for k in range(vlen)))
        elif kind == ENUM64:
            enum = tuple((self._str(n), lo | hi << 32) for n, lo, hi in
                         (struct.unpack_from("<III", blob, pos + 12 * k) for k in range(vlen)))
        elif kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", blob, pos)
            arr = (elem, nelems)
        elif kind == FUNC_PROTO:  # struct btf_param {name_off, type}
            params = tuple(struct.unpack_from("<I", blob, pos + 8 * k + 4)[0] for k in range(vlen))
        return Type(kind, name, size_or_type, members, enum, arr, params)

    def _type(self, type_id: int) -> Type:
        if not 0 < type_id < len(self._places):
            raise BtfError(f"no BTF type {type_id}")
        t = self._made.get(type_id)
        if t is None:
            t = self._made[type_id] = self._make(type_id)
        return t

    def resolve(self, type_id: int) -> Type:
        """The type with typedefs and qualifiers taken off."""
        t = self._type(type_id)
        while t.kind in _MODIFIERS:
            t = self._type(t.size_or_type)
        return t

    def struct(self, name: str) -> Type:
        for kind in (STRUCT, UNION):
            if (found := self._named(kind, name)) is not None:
                return self._type(found)
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
        found = self._named(TYPEDEF, name)
        if found is None:
            raise BtfError(f"no typedef {name} in BTF")
        t = self.resolve(found)
        if t.kind == PTR:
            t = self.resolve(t.size_or_type)
        if t.kind != FUNC_PROTO:
            raise BtfError(f"typedef {name} is not a function pointer")
        return tuple(self.resolve(p) if p else Type(0, "void", 0) for p in t.params)

    def enum_value(self, name: str) -> int:
        """The value of an enumerator, whichever enum declares it."""
        for i in range(1, len(self._places)):
            if self._kind(i) in (ENUM, ENUM64):  # made, not kept: thousands of enums
                for n, v in (self._made.get(i) or self._make(i)).enum:
                    if n == name:
                        return v
        raise BtfError(f"no enumerator {name} in BTF")

    def enum_names(self, enum_name: str) -> dict[int, str]:
        """value -> enumerator name of a named enum."""
        for kind in (ENUM, ENUM64):
            if (found := self._named(kind, enum_name)) is not None:
                return {v: n for n, v in self._type(found).enum}
        raise BtfError(f"no enum {enum_name} in BTF")
