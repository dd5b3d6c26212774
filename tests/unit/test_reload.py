# SPDX-License-Identifier: Apache-2.0
"""`allocwatch reload` (top/reload.py) against a daemon's socket served from
this process: the kernel names this process as the peer (SO_PEERCRED), so the
SIGHUP comes here, where a handler plays the daemon's reload (issue 27, item 5)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from allocwatch import cli
from allocwatch.errors import ConfigError, NoSnapshot
from allocwatch.top import reload as reloadcmd


class FakeDaemon:
    """hello, then a snapshot every 50 ms with the reload count; SIGHUP does a reload
    that is good or refused as `refuse` says (or, with `deaf`, nothing)."""

    def __init__(self, path: str, refuse: bool = False, deaf: bool = False) -> None:
        self.seq, self.refuse, self.deaf = 3, refuse, deaf  # 3 reloads before this client came
        self.hups = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._old = signal.signal(signal.SIGHUP, self._hup)
        self._thread.start()

    def _hup(self, *_: object) -> None:
        self.hups += 1
        if not self.deaf:
            self.seq += 1

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            conn.sendall(json.dumps({"type": "hello", "protocol": 1}).encode() + b"\n")
            while not self._stop.wait(0.05):
                said = ("reload refused: threshold_s: not a number; the running configuration stays" if self.refuse
                        else "reloaded /etc/x.yaml: threshold 2s, scan every 1s, format text")
                doc = {"type": "snapshot", "scan": 1, "reload": {"seq": self.seq, "ok": not self.refuse, "said": said}}
                try:
                    conn.sendall(json.dumps(doc).encode() + b"\n")
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(5)
        signal.signal(signal.SIGHUP, self._old)


@pytest.fixture
def daemon(tmp_path) -> Iterator[Any]:
    made: list[FakeDaemon] = []

    def make(**kw: bool) -> tuple[FakeDaemon, str]:
        path = str(tmp_path / "allocwatch.sock")
        made.append(FakeDaemon(path, **kw))
        return made[-1], path

    yield make
    for d in made:
        d.close()


def test_a_good_reload_prints_the_daemons_line_and_exits_0(daemon, capsys):
    d, path = daemon()
    assert cli.main(["reload", "--socket", path, "--pid", str(os.getpid()), "--timeout", "10"]) == 0
    out = capsys.readouterr().out
    assert out == "reloaded /etc/x.yaml: threshold 2s, scan every 1s, format text\n" and d.hups == 1


def test_a_refused_configuration_is_exit_3_with_the_daemons_reason(daemon, capsys):
    d, path = daemon(refuse=True)
    assert cli.main(["reload", "--socket", path, "--timeout", "10"]) == ConfigError.exit_code == 3
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "reload refused: threshold_s: not a number" in err and d.hups == 1


def test_the_socket_of_another_process_than_pid_is_not_signalled(daemon, capsys):
    d, path = daemon()
    assert cli.main(["reload", "--socket", path, "--pid", str(os.getpid() + 1), "--timeout", "10"]) == 16
    assert f"is pid {os.getpid()}, not {os.getpid() + 1}" in capsys.readouterr().err and d.hups == 0


def test_no_answer_in_time_is_exit_16(daemon, capsys):
    d, path = daemon(deaf=True)
    assert cli.main(["reload", "--socket", path, "--timeout", "0.5"]) == NoSnapshot.exit_code == 16
    assert "did not say within 0.5s that it reloaded" in capsys.readouterr().err and d.hups == 1


def test_no_daemon_or_no_socket_is_exit_16_in_one_line(tmp_path, capsys):
    assert cli.main(["reload", "--socket", str(tmp_path / "none.sock")]) == 16
    assert cli.main(["reload", "--socket", ""]) == 16
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "no daemon answers" in err[0] and "socket_path is ''" in err[1]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "3601"])
def test_a_timeout_out_of_range_is_a_usage_error(timeout):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reload", "--timeout", timeout])
    assert exc.value.code == 2


def test_the_reload_count_of_a_snapshot_without_one_is_0():
    for doc in (None, {"reload": None}, {"reload": {"seq": "x"}}):
        assert reloadcmd.reload_count(doc) == 0


def test_the_daemon_counts_each_reload_and_says_how_it_went_in_its_snapshot(tmp_path):
    """The daemon side: SIGHUP's reload, done between two scans, is told in every
    snapshot from the next one on (count, ok, the line it said)."""
    import types

    from allocwatch import config
    from allocwatch.app import service
    from allocwatch.core.snapshot import ReloadOutcome
    from allocwatch.core.snapview import snapshot_dict
    from allocwatch.outputs.notify import SystemdNotifier

    conf = tmp_path / "allocwatch.yaml"
    conf.write_text("threshold_s: 2\n")
    taken: list[object] = []
    daemon = types.SimpleNamespace(cfg=config.load(None, {}), last_reload=None, reload=taken.append)
    source = types.SimpleNamespace(set_tunables=lambda *a: None)
    asked = threading.Event()
    step = service._reloader(conf, {}, daemon, source, ["text"], SystemdNotifier({}), asked)
    step()
    assert daemon.last_reload is None  # nothing asked
    asked.set()
    step()
    assert daemon.last_reload.seq == 1 and daemon.last_reload.ok and "threshold 2s" in daemon.last_reload.said
    conf.write_text("threshold_s: .nan\n")
    asked.set()
    step()
    assert (daemon.last_reload.seq, daemon.last_reload.ok) == (2, False) and len(taken) == 1
    assert daemon.last_reload.said.startswith("reload refused: ") and "threshold_s" in daemon.last_reload.said
    from allocwatch.core.snapshot import EMPTY_HISTOGRAM, Snapshot

    snap = Snapshot(3, 0.0, 0, 0.0, (), {}, (), {}, {}, {}, {}, EMPTY_HISTOGRAM,
                    reload=ReloadOutcome(2, False, "reload refused: x"))
    doc = snapshot_dict(snap)
    assert doc["reload"] == {"seq": 2, "ok": False, "said": "reload refused: x"}


def test_with_pid_the_socket_is_the_one_it_listens_on_and_the_file_is_not_read(daemon, tmp_path, capsys):
    """systemd's ExecReload= gives --pid $MAINPID only: a configuration file that is
    broken is the daemon's to refuse, not this command's (it would exit 3 without asking)."""
    d, path = daemon(refuse=True)
    broken = tmp_path / "broken.yaml"
    broken.write_text("threshold_s: .nan\n")
    assert reloadcmd.socket_of(os.getpid()) == path
    assert cli.main(["reload", "--config", str(broken), "--pid", str(os.getpid()), "--timeout", "10"]) == 3
    assert "reload refused: threshold_s" in capsys.readouterr().err and d.hups == 1


def test_a_pid_that_listens_on_no_socket_is_exit_16(tmp_path, capsys):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert cli.main(["reload", "--pid", str(child.pid)]) == 16
    finally:
        child.kill()
        child.wait()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"pid {child.pid} listens on 0 socket(s)" in err


def test_a_signal_while_the_main_thread_holds_the_stop_events_lock_still_stops_it():
    """The scan loop waits on `stop` between scans; a SIGTERM landing while the main thread
    held that event's lock (inside Event.wait) once made a handler that set the event wait
    for the lock forever: no exit within 15 s of SIGTERM. The handler now takes no lock."""
    code = (
        "import os, signal, threading, sys\n"
        "from allocwatch.app import service\n"
        "stop, hup = threading.Event(), threading.Event()\n"
        "service._handle_signals(stop, hup)  # signals.relay\n"
        "with stop._cond:\n"  # as inside stop.wait(): the handler runs here, in this thread
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    sum(range(1000))\n"
        "sys.exit(0 if stop.wait(5) and hup.wait(5) else 1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
