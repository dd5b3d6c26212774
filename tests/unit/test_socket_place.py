# SPDX-License-Identifier: Apache-2.0
"""Where the daemon's socket may be: no directory on the way another user owns or
may write (a sticky one only on the way), a stale socket removed only when it is
the daemon's own, and at exit the path removed only while it names the socket
bound (issue 27, item 2). Root, to give files to `nobody`."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from allocwatch.errors import ConfigError, SocketUnavailable
from allocwatch.outputs.socket import SocketServer, check_socket_path

NOBODY = 65534
pytestmark = pytest.mark.kernel  # root: chown to nobody (decided before the test; in CI it must run)


def _dir(path, mode: int, uid: int = 0):
    path.mkdir()
    os.chown(path, uid, -1)
    path.chmod(mode)  # whatever the umask; sticky too
    return path


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o1730])
def test_a_socket_in_a_directory_others_may_write_is_a_bad_configuration(tmp_path, mode):
    shared = _dir(tmp_path / "shared", mode)
    with pytest.raises(ConfigError) as exc:
        SocketServer(str(shared / "a.sock"))
    assert exc.value.exit_code == 3 and "\n" not in str(exc.value)
    assert f"{shared} may be written by other users" in str(exc.value)
    assert ("sticky is not enough" in str(exc.value)) == bool(mode & stat.S_ISVTX)
    with pytest.raises(ConfigError):
        check_socket_path(str(shared / "a.sock"))  # what `run` says before anything is made
    assert not (shared / "a.sock").exists()


def test_below_a_sticky_directory_the_daemon_makes_its_own(tmp_path):
    sticky = _dir(tmp_path / "tmp", 0o1777)
    check_socket_path(str(sticky / "aw" / "a.sock"))
    srv = SocketServer(str(sticky / "aw" / "a.sock"))
    try:
        st = os.lstat(sticky / "aw")
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    finally:
        srv.close()
    assert not (sticky / "aw").exists()


def test_a_directory_another_user_took_first_or_owns_on_the_way_is_refused(tmp_path):
    sticky = _dir(tmp_path / "tmp", 0o1777)
    taken = _dir(sticky / "aw", 0o700, NOBODY)  # made by another user before the daemon
    with pytest.raises(ConfigError, match=f"{taken} is uid {NOBODY}'s"):
        SocketServer(str(taken / "a.sock"))
    theirs = _dir(tmp_path / "home", 0o755, NOBODY)
    below = _dir(theirs / "run", 0o700)  # root's, but inside a directory nobody may rename things in
    with pytest.raises(ConfigError, match=f"{theirs} belongs to uid {NOBODY}"):
        SocketServer(str(below / "a.sock"))
    open_dir = _dir(tmp_path / "open", 0o777)  # not sticky: anyone may rename root's directory away
    inner = _dir(open_dir / "run", 0o700)
    with pytest.raises(ConfigError, match=f"{open_dir} may be written by other users"):
        SocketServer(str(inner / "a.sock"))


def test_symlinks_are_followed_as_the_kernel_does_and_checked_on_the_way(tmp_path):
    real = _dir(tmp_path / "real", 0o755)
    (tmp_path / "link").symlink_to(real)  # root's link in root's directory, as /var/run -> /run
    srv = SocketServer(str(tmp_path / "link" / "aw" / "a.sock"))
    try:
        assert stat.S_IMODE(os.lstat(real / "aw").st_mode) == 0o700 and (real / "aw" / "a.sock").exists()
    finally:
        srv.close()
    assert not (real / "aw").exists()
    sticky = _dir(tmp_path / "tmp", 0o1777)
    (sticky / "their-link").symlink_to(real)
    os.lchown(sticky / "their-link", NOBODY, NOBODY)  # another user's link: they may point it elsewhere
    with pytest.raises(ConfigError, match=f"their-link is uid {NOBODY}'s"):
        SocketServer(str(sticky / "their-link" / "a.sock"))


def test_another_users_stale_socket_is_left_alone(tmp_path):
    d = _dir(tmp_path / "run", 0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d / "a.sock"))
    stale.close()  # bound, never listening: connect is refused, as after a crash
    os.lchown(d / "a.sock", NOBODY, NOBODY)
    with pytest.raises(SocketUnavailable, match=f"is uid {NOBODY}'s socket, not this user's: not removed"):
        SocketServer(str(d / "a.sock"))
    assert os.lstat(d / "a.sock").st_uid == NOBODY
    os.lchown(d / "a.sock", os.geteuid(), -1)  # the daemon's own: replaced
    SocketServer(str(d / "a.sock")).close()


def test_at_exit_only_the_socket_bound_is_removed(tmp_path):
    d = tmp_path / "run"
    srv = SocketServer(str(d / "a.sock"))
    os.unlink(d / "a.sock")
    (d / "a.sock").write_text("a successor's file")  # another inode at the same path
    srv.close()
    assert (d / "a.sock").read_text() == "a successor's file" and d.exists()
    (d / "a.sock").unlink()
    srv = SocketServer(str(d / "a.sock"))
    srv.close()
    assert not (d / "a.sock").exists()


def test_the_socket_is_bound_with_its_mode_and_its_group_set_without_following_a_link(tmp_path):
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    srv = SocketServer(str(tmp_path / "run" / "a.sock"), group=group)
    try:
        st = os.lstat(tmp_path / "run" / "a.sock")
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
    finally:
        srv.close()
