# SPDX-License-Identifier: Apache-2.0
"""Whatever a daemon sends, top writes no control character to the terminal, and
reads nothing from a socket served by a user it does not trust (issue 27, item 2)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from allocwatch.errors import SocketRefused, UntrustedSocket
from allocwatch.outputs.socket import SocketServer
from allocwatch.top import command as topcmd
from allocwatch.top.feed import Feed, SocketFeed, trusted_uids
from allocwatch.top.safetext import terminal_text
from allocwatch.top.screen import Screen
from tests.unit.fakes import top_doc, top_task

# An OSC title, BEL, a clear screen, colours, C1 CSI and DEL, and a bidi override.
EVIL = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\x9b1m\x7f\u202e"


def _forged_doc(scan: int) -> dict:
    task = top_task(
        7, 12.0, level=1, comm="c" + EVIL, cgroup="/box" + EVIL, site="memcg_oom_wait" + EVIL, state="D" + EVIL,
        gfp="GFP" + EVIL, kind="stall" + EVIL, stack=["frame" + EVIL], recent_stack=["r" + EVIL],
        cmdline="cmd" + EVIL, uid=0, detail=True, gfp_flags="F" + EVIL,
    )
    doc = top_doc([task], scan=scan, time_s=100.0 + scan,
                  sites={"site" + EVIL: {"waiting": 1, "stalled": 1, "longest_s": 12.0, "stalled_seconds": 1.0 * scan,
                                         "completed": {"count": scan, "sum_s": 1.0, "buckets": [["inf", scan]]}}})
    doc["context"]["kswapd"][0]["state"] = "S" + EVIL
    doc["scan"] = f"{scan}{EVIL}"
    return doc


def _feed() -> Feed:
    feed = Feed()
    feed.source = "daemon /x" + EVIL
    feed.put(_forged_doc(1))
    feed.put(_forged_doc(2))
    return feed


def _terminal_safe(text: str) -> bool:
    return all(" " <= ch <= "~" or ch == "\n" for ch in text)


def test_terminal_text_escapes_every_control_character_and_keeps_backslashes():
    assert terminal_text("plain /a-b_c:1") == "plain /a-b_c:1"
    assert terminal_text("a\x1b[2J\x07\x7f\x9b\u202e\U0001f600\\x41") == \
        "a\\x1b[2J\\x07\\x7f\\x9b\\u202e\\U0001f600\\x41"
    assert terminal_text(12.5) == "12.5"
    assert all(_terminal_safe(terminal_text(chr(c))) for c in [*range(0x3000), 0xD800, 0xDCFF, 0xFEFF, 0x10FFFF])


@pytest.mark.parametrize("width", [80, 200])
def test_once_prints_no_control_character_of_a_forged_snapshot(capsys, width):
    topcmd._print_once(_feed(), False, width)
    out = capsys.readouterr().out
    assert "memcg_oom_wait" in out and "\\x1b]0;pwned\\x07" in out  # the forged text is there, escaped
    assert _terminal_safe(out), [c for c in out if not _terminal_safe(c)]
    assert all(len(line) <= width for line in out.splitlines())


def test_json_prints_no_control_character_of_a_forged_snapshot(capsys):
    topcmd._print_once(_feed(), True, 80)
    out = capsys.readouterr().out
    assert _terminal_safe(out) and json.loads(out)["inflight"][0]["comm"] == "c" + EVIL  # the same data, escaped


class _Recorder:
    """The curses window calls _paint makes, keeping what would reach the terminal."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def getmaxyx(self):
        return 24, 100

    def erase(self):
        self.texts.clear()

    def addnstr(self, y, x, text, n, attr=0):
        self.texts.append(text[:n])

    def refresh(self):
        pass


def test_the_screen_paints_no_control_character_in_the_table_the_detail_or_before_a_snapshot():
    sc = Screen(_feed(), 1.0, threading.Event(), clock_s=lambda: 103.0)
    win = _Recorder()
    for mode in ("table", "detail"):
        sc.state.mode = mode
        sc._paint(win)
        painted = "\n".join(win.texts)
        assert "\\x1b" in painted and _terminal_safe(painted), (mode, painted)
    assert any("frame\\x1b]0;pwned" in t for t in win.texts)  # the detail shows the stack, escaped
    empty = Feed()
    empty.source = "daemon /x" + EVIL
    Screen(empty, 1.0, threading.Event())._paint(win)
    assert _terminal_safe("\n".join(win.texts))


def test_a_forged_row_keeps_the_columns_in_place():
    from allocwatch.top import view
    from allocwatch.top.model import visible_rows

    doc = _forged_doc(2)
    (row,) = visible_rows(doc)
    line = view.task_line(row, 100)
    plain = view.task_line(visible_rows(top_doc([top_task(7, 12.0, level=1)]))[0], 100)
    assert len(line) <= 100 and _terminal_safe(line)
    for column in ("memcg_oom_wait", "12.0s", "stall"):
        assert line.index(column) == plain.index(column), (line, plain)


# -- who answers ------------------------------------------------------------------


def test_a_socket_served_by_a_user_top_does_not_trust_is_refused_before_it_is_read(tmp_path):
    path = str(tmp_path / "run" / "a.sock")
    srv = SocketServer(path)
    srv.set_hello({"type": "hello", "version": "x" + EVIL})
    try:
        with pytest.raises(UntrustedSocket) as exc:
            SocketFeed(path, trusted=frozenset({4242}))  # this process (the server) is not uid 4242
        msg = str(exc.value)
        assert exc.value.exit_code == 19 and "\n" not in msg and "uid " in msg and _terminal_safe(msg)
        feed = SocketFeed(path, trusted=trusted_uids())  # root and this user: read
        assert feed.hello["version"] == "x" + EVIL
        feed.close()
    finally:
        srv.close()
    assert trusted_uids(4242) >= {0, 4242}


def test_a_refusal_line_is_escaped(tmp_path):
    path = str(tmp_path / "r.sock")
    lsn = socket.socket(socket.AF_UNIX)
    lsn.bind(path)
    lsn.listen(1)

    def answer() -> None:
        conn, _ = lsn.accept()
        conn.sendall(json.dumps({"type": "refused", "error": "no" + EVIL}).encode() + b"\n")
        time.sleep(0.2)
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(SocketRefused) as exc:
            SocketFeed(path)
        assert "no\\x1b]0;pwned" in str(exc.value) and _terminal_safe(str(exc.value))
    finally:
        t.join(5)
        lsn.close()


def test_daemon_user_is_a_user_name_and_top_trusts_its_uid(tmp_path):
    import pwd

    from allocwatch import config
    from allocwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="daemon_user: expected a user name"):
        config.from_mapping({"daemon_user": "a b"})
    with pytest.raises(ConfigError, match="daemon_user: no user named") as exc:
        topcmd._feed(config.from_mapping({"daemon_user": "no-such-user-aw"}), str(tmp_path / "none.sock"))
    assert exc.value.exit_code == 3
    nobody = pwd.getpwnam("nobody").pw_uid
    assert topcmd._daemon_uid(config.from_mapping({"daemon_user": "nobody"})) == nobody
    assert topcmd._daemon_uid(config.Config()) is None
