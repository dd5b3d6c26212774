# SPDX-License-Identifier: Apache-2.0
"""What top writes to a terminal: printable ASCII only, whatever the daemon sent.

The daemon escapes what a task controls (core/records.py), so its strings are
printable ASCII already; top does not rely on it. Every other character (C0
controls, DEL, C1 controls, anything beyond ASCII) is shown as `\\xNN`,
`\\uNNNN` or `\\UNNNNNNNN`, so no byte a socket sent can move the cursor, set
the title, clear the screen or change colours. A backslash is left as it is:
the daemon's own escapes read the same as in a report.
"""

from __future__ import annotations


def _char(ch: str) -> str:
    if " " <= ch <= "~":
        return ch
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def terminal_text(value: object) -> str:
    """`value` as text that holds no control character: printable ASCII stays, the rest is escaped."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text  # nearly always: no copy
    return "".join(map(_char, text))


def optional_text(value: object) -> str | None:
    return None if value is None else terminal_text(value)
