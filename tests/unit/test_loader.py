# SPDX-License-Identifier: Apache-2.0
"""The loader process's handover (kernel/loader.py): what the child sends is
what the daemon gets, fds included, and a load that fails in the child fails
in the daemon with the child's own error and words. (The load itself, with
real programs, is the kernel tests'.)"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from allocwatch.errors import BpfUnavailable, KernelHeadersMissing
from allocwatch.kernel import loader, probes
from allocwatch.kernel.bpfsource import LoadOptions
from tests.unit.fakes import captured


def _spawned_true() -> loader._Child:
    return loader._Child(os.posix_spawn("/bin/true", ["true"], {}))


def test_every_fd_is_handed_over_in_order_past_one_message_s_worth():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sent = [os.open(os.devnull, os.O_RDONLY) for _ in range(loader.FDS_A_MESSAGE + 7)]
    handover = loader.Handover(maps=("waits", "events"), programs=("aw_a",), attachments=len(sent) - 3,
                               state={"sched_switch_how": "raw tracepoint"})
    got: list[int] = []
    try:
        child = threading.Thread(target=loader.send_handover, args=(theirs, handover, sent))
        child.start()
        back, got = loader._receive(mine, _spawned_true())
        child.join()
        assert back.fd_messages == 2 and back.maps == ("waits", "events") and back.attachments == len(sent) - 3
        assert back.state == {"sched_switch_how": "raw tracepoint"}
        assert len(got) == len(sent) and not set(got) & set(sent)  # this process's own copies
        assert [os.fstat(a).st_ino for a in got] == [os.fstat(b).st_ino for b in sent]
    finally:
        for fd in sent + got:
            os.close(fd)
        mine.close()
        theirs.close()


def test_the_child_s_error_is_raised_in_the_daemon_with_its_words():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, theirs:
        loader.send_error(theirs, KernelHeadersMissing("no kernel headers at /x"))
        with pytest.raises(KernelHeadersMissing, match="no kernel headers at /x"):
            loader._receive(mine, _spawned_true())


def test_a_child_that_ends_without_a_word_is_a_load_that_failed():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    with mine, pytest.raises(BpfUnavailable, match=r"ended \(exit code 0\) without handing the programs over"):
        loader._receive(mine, _spawned_true())


def test_a_real_loader_process_runs_this_package_and_says_why_it_could_not_load():
    """A whole round trip, spawn included: the child runs this very package (isolated,
    whatever the environment says), and a kernel without headers is said as in-process."""
    features = captured("6.18")  # no /lib/modules/6.18/build on any machine
    request = (probes.plan(features), features, LoadOptions(long_wait_ns=10**9), False)
    with pytest.raises(KernelHeadersMissing, match="no kernel headers at /lib/modules/6.18/build"):
        loader.load_in_child(request)


def test_the_child_command_is_isolated_and_names_this_package():
    argv = loader.child_command(7)
    assert argv[1:3] == ["-I", "-B"] and "loader_main(7)" in argv[-1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(loader.__file__))))
    assert repr(root) in argv[-1]


def test_a_child_that_will_not_send_is_killed_once_and_never_signalled_after_it_is_reaped():
    child = loader._Child(os.posix_spawn("/bin/sleep", ["sleep", "30"], {}))
    child.kill()
    assert child.code is None and child._reaped
    child.kill()  # its pid may be another process's by now: nothing is sent
    assert child.reap() is None
    done = _spawned_true()
    assert done.reap() == 0 and done.reap() == 0
