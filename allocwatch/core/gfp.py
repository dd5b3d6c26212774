# SPDX-License-Identifier: Apache-2.0
"""GFP masks in the running kernel's own words.

A tracepoint that carries a gfp mask prints it with the kernel's show_gfp_flags
table, and its tracefs `print fmt` spells that table out:

    __print_flags(REC->gfp_flags, "|", {expr, "NAME"}, ..., { 0, ((void *)0) })

`expr` is the preprocessed C of the flag: hex literals with casts (up to 6.9),
shifts by enum names such as ___GFP_IO_BIT (6.10 to the fix in 6.14 and its
backports; the caller resolves those names, e.g. from BTF) or shifts by
numbers (since). parse_flag_table turns the text into (value, name) pairs with
a small evaluator that accepts integer arithmetic only; decode prints a mask
the way the kernel's trace_print_flags_seq does.

Pure: text in, values out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping

MASK64 = (1 << 64) - 1
NONE_WORD = "none"  # what the print fmt shows for a zero mask

FlagTable = list[tuple[int, str]]

_CAST_RE = re.compile(
    r"\(\s*(?:__force\s+)?"
    r"(?:gfp_t|(?:unsigned|signed)(?:\s+(?:long\s+long|long|int|short|char))?|long\s+long|long|int)"
    r"\s*\)"
)
# A C integer literal with its optional u/l suffixes; \b keeps digits inside identifiers alone.
_INT_RE = re.compile(r"\b(?:(0[xX][0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))([uUlL]{0,3})\b")
_IDENT_RE = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_MAX_EXPR = 4096  # characters; the longest real entry is well under 1000


class _Refused(ValueError):
    """The expression is not plain integer arithmetic."""


def _flags_start(print_fmt: str, field: str) -> int | None:
    """Offset just past `__print_flags(REC->field, "delim",`, or None."""
    m = re.search(
        r"__print_flags\(\s*REC->" + re.escape(field) + r'\s*,\s*"(?:[^"\\]|\\.)*"\s*,',
        print_fmt,
    )
    return m.end() if m else None


def _entries(print_fmt: str, field: str) -> list[tuple[str, str]] | None:
    """The raw (expr, name) pairs of the table, up to its terminator or the closing parenthesis.

    None when the fmt has no __print_flags for `field`.
    """
    pos = _flags_start(print_fmt, field)
    if pos is None:
        return None
    text = print_fmt
    out: list[tuple[str, str]] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch.isspace() or ch == ",":
            pos += 1
            continue
        if ch != "{":
            break  # ")" closes __print_flags; anything else is not a table
        body, pos = _braced(text, pos)
        if body is None:
            break
        split = _last_top_level_comma(body)
        if split is None:
            break
        expr, name = body[:split].strip(), body[split + 1 :].strip()
        m = _STRING_RE.fullmatch(name)
        if not m:
            break  # { 0, NULL } / { 0, ((void *)0) }: the terminator
        out.append((expr, m.group(1)))
    return out


def _braced(text: str, start: int) -> tuple[str | None, int]:
    """The text inside the braces opening at `start` and the offset after them."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            m = _STRING_RE.match(text, i)
            if not m:
                return None, n
            i = m.end()
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None, n


def _last_top_level_comma(body: str) -> int | None:
    depth = 0
    last = None
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            m = _STRING_RE.match(body, i)
            if not m:
                return None
            i = m.end()
            continue
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            last = i
        i += 1
    return last


def _int_literal(m: re.Match[str]) -> str:
    hexa, octal, dec = m.group(1), m.group(2), m.group(3)
    if hexa is not None:
        return str(int(hexa, 16))
    if octal is not None:
        return str(int(octal, 8))
    return str(int(dec))


def _normalise(expr: str) -> str:
    """C to Python: casts dropped, literals made decimal (suffixes gone, C octal honoured)."""
    return _INT_RE.sub(_int_literal, _CAST_RE.sub("", expr))


def _substitute(expr: str, symbols: Mapping[str, int]) -> str:
    if not symbols:
        return expr

    def repl(m: re.Match[str]) -> str:
        value = symbols.get(m.group(0))
        return m.group(0) if value is None else str(int(value) & MASK64)

    return _IDENT_RE.sub(repl, expr)


def evaluate(expr: str) -> int:
    """The unsigned 64-bit value of a C integer expression made of literals, | & << >> + - ~ and parentheses.

    Raises ValueError for anything else (names, calls, attributes, strings ...).
    """
    if len(expr) > _MAX_EXPR:
        raise _Refused("expression too long")
    try:
        tree = ast.parse(_normalise(expr).strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _Refused(f"does not parse: {e}") from None
    try:
        return _eval(tree.body)
    except RecursionError:
        raise _Refused("nested too deep") from None


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise _Refused(f"not an integer: {node.value!r}")
        return node.value & MASK64
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
        return ~_eval(node.operand) & MASK64
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        op = node.op
        if isinstance(op, ast.BitOr):
            return left | right
        if isinstance(op, ast.BitAnd):
            return left & right
        if isinstance(op, ast.Add):
            return (left + right) & MASK64
        if isinstance(op, ast.Sub):
            return (left - right) & MASK64
        if isinstance(op, ast.LShift):
            return 0 if right >= 64 else (left << right) & MASK64
        if isinstance(op, ast.RShift):
            return 0 if right >= 64 else left >> right
    raise _Refused(f"not allowed: {type(node).__name__}")


def parse_flag_table(print_fmt: str, field: str = "gfp_flags", symbols: Mapping[str, int] = {}) -> FlagTable:
    """The (value, name) table of `__print_flags(REC->field, ...)` in a print fmt, in the kernel's order.

    Identifiers in `symbols` are replaced by their values first. An entry whose
    expression still does not evaluate (an unresolved enum name, say) is left
    out; unresolved_names lists what would be needed. [] when there is no table.
    """
    entries = _entries(print_fmt, field) or []
    table: FlagTable = []
    for expr, name in entries:
        try:
            value = evaluate(_substitute(_CAST_RE.sub("", expr), symbols))
        except ValueError:
            continue
        table.append((value, name))
    return table


def unresolved_names(print_fmt: str, field: str = "gfp_flags") -> set[str]:
    """Identifiers (such as ___GFP_IO_BIT) left in the table's expressions once casts are dropped."""
    names: set[str] = set()
    for expr, _name in _entries(print_fmt, field) or []:
        names.update(_IDENT_RE.findall(_normalise(expr)))
    return names


def skipped_names(print_fmt: str, field: str = "gfp_flags", symbols: Mapping[str, int] = {}) -> list[str]:
    """Names of the table entries parse_flag_table leaves out with these symbols."""
    kept = {name for _value, name in parse_flag_table(print_fmt, field, symbols)}
    return [name for _expr, name in _entries(print_fmt, field) or [] if name not in kept]


def decode(mask: int, table: Iterable[tuple[int, str]]) -> str:
    """The mask as the kernel's trace prints it: names in table order, each taking its bits, then any rest in hex."""
    rest = mask & MASK64
    if rest == 0:
        return NONE_WORD
    parts: list[str] = []
    for value, name in table:
        if not rest:
            break
        if value and rest & value == value:
            parts.append(name)
            rest &= ~value
    if rest:
        parts.append(f"0x{rest:x}")
    return "|".join(parts)


def describe(mask: int | None, table: Iterable[tuple[int, str]]) -> str | None:
    """decode, with None (no mask known) kept as None."""
    return None if mask is None else decode(mask, table)


def lacks_fs_or_io(mask: int | None, table: Iterable[tuple[int, str]]) -> bool:
    """Whether an allocation with this mask may not start file system (__GFP_FS)
    or block I/O (__GFP_IO) to reclaim: GFP_NOFS, GFP_NOIO. The bits come from
    the running kernel's table; a table without them says nothing."""
    if mask is None:
        return False
    bits = {name: value for value, name in table if name in ("__GFP_FS", "__GFP_IO")}
    return any(mask & value != value for value in bits.values())


_SYMBOL_RE = re.compile(r'\{\s*(-?\d+)\s*,\s*"([^"]*)"\s*\}')


def parse_symbolic(print_fmt: str, field: str) -> dict[int, str]:
    """The numbered names of `__print_symbolic(REC->field, {1, "skipped"}, ...)`,
    as the running kernel prints them (enum compact_result, for one); {} when absent."""
    start = print_fmt.find(f"__print_symbolic(REC->{field},")
    if start < 0:
        return {}
    end = print_fmt.find(")", start)
    return {int(n): name for n, name in _SYMBOL_RE.findall(print_fmt[start : end if end > 0 else None])}
