# SPDX-License-Identifier: Apache-2.0
"""The curses screen of `allocwatch top`: paints top/view.py's lines, reads keys.

Thin on purpose: what to show is top/model.py and top/view.py (pure, tested without a
terminal); this maps styles to colours (none with NO_COLOR, or a terminal
without colours), keeps the selection on the same task across refreshes, and
always gives the terminal back (curses.wrapper restores it on any exit). Each
line goes through top/safetext.py on its way to the terminal.
"""

from __future__ import annotations

import curses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from allocwatch.top import view
from allocwatch.top.feed import Feed
from allocwatch.top.model import SORTS, Row, visible_rows
from allocwatch.top.safetext import terminal_text

_ENTER = (curses.KEY_ENTER, 10, 13)
_ESC = 27
_TICK_MS = 100  # how often keys and the stop flag are looked at


@dataclass
class ViewState:
    sort: str = SORTS[0]
    text: str = ""  # the filter
    grouped: bool = True
    paused: bool = False
    mode: str = "table"  # table, detail, help
    selected: tuple[Any, ...] | None = None  # Row.key

    def status(self) -> str:
        return (f"sort:{self.sort} filter:{self.text or '-'} {'grouped' if self.grouped else 'ungrouped'}"
                + (" PAUSED" if self.paused else "") + "  s f g p Enter ? q")


def use_colour(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return "NO_COLOR" not in env and env.get("TERM", "dumb") != "dumb"


class Screen:
    def __init__(self, feed: Feed, interval_s: float, stop: threading.Event,
                 clock_s: Callable[[], float] = time.time) -> None:
        self.feed = feed
        self.interval_s = interval_s
        self.stop = stop
        self.clock_s = clock_s
        self.state = ViewState()
        self._frozen: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
        self._styles: dict[str, int] = {}

    def run(self) -> None:
        curses.wrapper(self._main)

    # -- painting ------------------------------------------------------------------

    def _init_styles(self) -> None:
        plain = {"title": curses.A_BOLD, "stalled": curses.A_BOLD, "warn": curses.A_UNDERLINE,
                 "selected": curses.A_REVERSE, "dim": curses.A_DIM, "ok": curses.A_NORMAL, "": curses.A_NORMAL}
        if use_colour() and curses.has_colors():
            curses.start_color()
            curses.use_default_colors()
            curses.init_pair(1, curses.COLOR_RED, -1)
            curses.init_pair(2, curses.COLOR_YELLOW, -1)
            plain["stalled"] = curses.color_pair(1) | curses.A_BOLD
            plain["warn"] = curses.color_pair(2)
        self._styles = plain

    def _frames(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if not self.state.paused or self._frozen[1] is None:
            self._frozen = self.feed.frames()
        return self._frozen

    def _rows(self, doc: dict[str, Any]) -> list[Row]:
        return visible_rows(doc, self.state.sort, self.state.text, self.state.grouped)

    def _selected_index(self, rows: list[Row]) -> int | None:
        if not rows:
            return None
        keys = [r.key for r in rows]
        if self.state.selected not in keys:
            self.state.selected = keys[0]
        return keys.index(self.state.selected)

    def _lines(self, width: int, height: int) -> list[tuple[str, str]]:
        prev, doc = self._frames()
        status = self.state.status() + (f"  [{self.feed.closed}]" if self.feed.closed else "")
        if doc is None:
            return [(f"allocwatch top  {self.feed.source}: waiting for the first snapshot...", "title"),
                    ("", ""), (status[:width], "dim")]
        rows = self._rows(doc)
        index = self._selected_index(rows)
        if self.state.mode == "help":
            return view.help_lines(width)
        if self.state.mode == "detail" and index is not None:
            return view.detail_lines(rows[index], width)
        self.state.mode = "table"
        age = max(0.0, self.clock_s() - doc["time_s"])
        return view.frame_lines(doc, prev, rows, self.feed.source, age, width, height, index, status)

    def _paint(self, scr: Any) -> None:
        height, width = scr.getmaxyx()
        scr.erase()
        for y, (text, style) in enumerate(self._lines(width, height)[:height]):
            try:  # whatever the daemon sent, no control character reaches the terminal
                scr.addnstr(y, 0, terminal_text(text), max(0, width - 1), self._styles.get(style, curses.A_NORMAL))
            except curses.error:  # a terminal shrunk under us: the next paint fits again
                pass
        scr.refresh()

    # -- keys ------------------------------------------------------------------------

    def _move(self, step: int) -> None:
        _, doc = self._frames()
        rows = self._rows(doc) if doc else []
        index = self._selected_index(rows)
        if index is not None:
            self.state.selected = rows[max(0, min(len(rows) - 1, index + step))].key

    def _prompt(self, scr: Any, question: str) -> str:
        height, width = scr.getmaxyx()
        scr.move(height - 1, 0)
        scr.clrtoeol()
        scr.addnstr(height - 1, 0, question, max(0, width - 1))
        curses.echo()
        scr.timeout(-1)
        try:
            raw = scr.getstr(height - 1, min(len(question), width - 1), 200)
        finally:
            curses.noecho()
            scr.timeout(_TICK_MS)
        return raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else ""

    def _key(self, scr: Any, ch: int) -> bool:
        """False to quit."""
        st = self.state
        if ch == ord("q"):
            return False
        if st.mode != "table" and ch in (*_ENTER, _ESC, ord("?")):
            st.mode = "table"
        elif ch == ord("?"):
            st.mode = "help"
        elif ch in _ENTER:
            st.mode = "detail"
        elif ch == ord("s"):
            st.sort = SORTS[(SORTS.index(st.sort) + 1) % len(SORTS)]
        elif ch == ord("g"):
            st.grouped = not st.grouped
        elif ch == ord("p"):
            st.paused = not st.paused
        elif ch == ord("f"):
            st.text = self._prompt(scr, "filter (site or cgroup; empty clears): ")
        elif ch in (curses.KEY_DOWN, ord("j")):
            self._move(1)
        elif ch in (curses.KEY_UP, ord("k")):
            self._move(-1)
        elif ch == curses.KEY_NPAGE:
            self._move(10)
        elif ch == curses.KEY_PPAGE:
            self._move(-10)
        return True

    def _main(self, scr: Any) -> None:
        curses.curs_set(0)
        self._init_styles()
        scr.timeout(_TICK_MS)
        scr.keypad(True)
        last_paint, seen = 0.0, -1
        while not self.stop.is_set():
            now = time.monotonic()
            first = seen <= 0 < self.feed.count  # the first snapshot shows at once; then once an interval
            if first or now - last_paint >= self.interval_s:
                seen = self.feed.count
                self._paint(scr)
                last_paint = now
            ch = scr.getch()
            if ch == -1:
                continue
            if not self._key(scr, ch):
                return
            self._paint(scr)
            last_paint = time.monotonic()
