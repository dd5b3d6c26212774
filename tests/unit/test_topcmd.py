# SPDX-License-Identifier: Apache-2.0
"""`allocwatch top` without a terminal or a kernel: no daemon and no privileges,
a dumb terminal, and --json from a feed."""

from __future__ import annotations

import threading

import pytest

from allocwatch import config
from allocwatch.app import preflight
from allocwatch.errors import NotPrivileged
from allocwatch.top import command as topcmd
from allocwatch.top.feed import Feed
from tests.unit.fakes import top_doc, top_task


def test_no_daemon_and_no_privileges_says_both_in_one_line(tmp_path, monkeypatch):
    def refuse() -> None:
        raise NotPrivileged("allocwatch runs as uid 65534 without CAP_BPF")

    monkeypatch.setattr(preflight, "require_capabilities", refuse)
    with pytest.raises(NotPrivileged) as exc:
        topcmd._feed(config.Config(), str(tmp_path / "none.sock"))
    msg = str(exc.value)
    assert "no daemon answers on" in msg and "would start a session of its own, but" in msg and "\n" not in msg
    assert exc.value.exit_code == 5


def test_a_dumb_terminal_gets_text_frames(capsys):
    feed = Feed()
    feed.source = "own session (no daemon on -)"
    feed.put(top_doc([top_task(7, 12.0, level=1)], time_s=0.0))
    stop = threading.Event()
    t = threading.Thread(target=topcmd._plain_loop, args=(feed, 0.05, stop))
    t.start()
    stop.wait(0.2)
    stop.set()
    t.join(5)
    out = capsys.readouterr().out
    assert out.count("allocwatch top  own session") >= 2 and "memcg_oom_wait" in out and "\x1b" not in out


def test_json_prints_the_latest_snapshot(capsys):
    feed = Feed()
    feed.put(top_doc([], scan=1))
    feed.put(top_doc([top_task(7, 12.0, level=1)], scan=2))
    topcmd._print_once(feed, True, 80)
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["scan"] == 2 and doc["inflight"][0]["tid"] == 7


def test_no_snapshot_in_time_is_its_own_exit(monkeypatch):
    from allocwatch.errors import NoSnapshot

    monkeypatch.setattr(topcmd, "FIRST_SNAPSHOT_TIMEOUT_S", 0.3)
    feed = Feed()
    feed.source = "daemon /x.sock"
    with pytest.raises(NoSnapshot) as exc:
        topcmd._wait_settled(feed, threading.Event())
    assert exc.value.exit_code == 16 and "no snapshot from daemon /x.sock" in str(exc.value)
    stop = threading.Event()
    stop.set()
    topcmd._wait_settled(feed, stop)  # a signal while it waits: no error, it just ends
