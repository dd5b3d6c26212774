# SPDX-License-Identifier: Apache-2.0
"""The screen's state and keys without a terminal: what each key does, and colour rules."""

from __future__ import annotations

import threading

from allocwatch.top.feed import Feed
from allocwatch.top.screen import Screen, use_colour
from tests.unit.fakes import top_doc, top_task


class _NoTerminal:
    """The few curses window calls a prompt makes, answering with a typed line."""

    def __init__(self, typed: bytes) -> None:
        self.typed = typed

    def getmaxyx(self):
        return 24, 80

    def move(self, *a):
        pass

    def clrtoeol(self):
        pass

    def addnstr(self, *a):
        pass

    def timeout(self, ms):
        pass

    def getstr(self, *a):
        return self.typed


def _screen() -> Screen:
    feed = Feed()
    feed.put(top_doc([top_task(1, 9.0, cgroup="/a"), top_task(2, 3.0, cgroup="/b", site="compaction")], time_s=0.0))
    return Screen(feed, 1.0, threading.Event(), clock_s=lambda: 1.0)


def test_keys_change_the_view(monkeypatch):
    import curses

    monkeypatch.setattr(curses, "echo", lambda: None)
    monkeypatch.setattr(curses, "noecho", lambda: None)
    sc = _screen()
    assert sc._key(None, ord("s")) and sc.state.sort == "share"
    for _ in range(4):
        sc._key(None, ord("s"))
    assert sc.state.sort == "wait"  # cycled round
    sc._key(None, ord("g"))
    sc._key(None, ord("p"))
    assert not sc.state.grouped and sc.state.paused
    assert sc._key(_NoTerminal(b"compaction"), ord("f")) and sc.state.text == "compaction"
    lines = [t for t, _ in sc._lines(80, 24)]
    assert any(t.lstrip().startswith("2 ") for t in lines) and not any(t.lstrip().startswith("1 ") for t in lines)
    sc._key(_NoTerminal(b""), ord("f"))
    sc._key(None, curses.KEY_DOWN)
    assert sc.state.selected == ("task", 2)
    sc._key(None, 10)  # Enter
    assert sc.state.mode == "detail" and "pid=2" in sc._lines(80, 24)[0][0]
    sc._key(None, 27)  # Esc
    assert sc.state.mode == "table"
    sc._key(None, ord("?"))
    assert sc.state.mode == "help" and sc._lines(80, 24)[0][0].startswith("allocwatch top:")
    assert sc._key(None, ord("q")) is False


def test_no_colour_with_no_color_or_a_dumb_terminal():
    assert use_colour({"TERM": "xterm-256color"})
    assert not use_colour({"TERM": "xterm-256color", "NO_COLOR": ""})
    assert not use_colour({"TERM": "dumb"}) and not use_colour({})
