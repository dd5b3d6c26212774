# SPDX-License-Identifier: Apache-2.0
"""A BTF blob made by hand, laid out as include/uapi/linux/btf.h says: the
kernels the BTF readers' tests need (tests/unit/test_btf.py, test_taskiter.py)."""

from __future__ import annotations

import struct

from allocwatch.kernel.btf import ENUM, STRUCT


class Blob:
    def __init__(self) -> None:
        self.strings = b"\0"
        self.types = b""
        self.next_id = 1

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, size_or_type: int, extra: bytes = b"", vlen: int = 0) -> int:
        self.types += struct.pack("<III", self.s(name), kind << 24 | vlen, size_or_type) + extra
        self.next_id += 1
        return self.next_id - 1

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], kind: int = STRUCT) -> int:
        extra = b"".join(struct.pack("<III", self.s(n), t, off * 8) for n, t, off in members)
        return self.add(kind, name, size, extra, len(members))

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(n), v) for n, v in values)
        return self.add(ENUM, name, 4, extra, len(values))

    def bytes(self) -> bytes:
        hdr = struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings))
        return hdr + self.types + self.strings
