# SPDX-License-Identifier: Apache-2.0
"""A /proc that does not name the kernel's tids (issue 26, item 7): a PID
namespace of its own, or a /proc mounted from another one. Fake procfs trees:
the links /proc/self and /proc/self/ns/pid are all the check reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from allocwatch import config, errors
from allocwatch.app import preflight
from allocwatch.config import schema
from allocwatch.core.sites import Site
from allocwatch.kernel import coverage, probes, procfs
from tests.unit.fakes import captured

HOST_NS = f"pid:[{0xEFFFFFFC}]"


def _proc(tmp_path: Path, self_pid: str | None, ns: str | None) -> Path:
    proc = tmp_path / "proc"
    (proc / "1234" / "ns").mkdir(parents=True)
    if self_pid is not None:
        (proc / "self").symlink_to(self_pid)
        (proc / self_pid / "ns").mkdir(parents=True, exist_ok=True)
    if ns is not None and self_pid is not None:
        (proc / self_pid / "ns" / "pid").symlink_to(ns)
    return proc


def test_the_hosts_namespace_and_a_proc_that_names_this_process(tmp_path):
    assert procfs.foreign_pid_view(_proc(tmp_path, "1234", HOST_NS), 1234) == ""
    assert preflight.pid_view(False, _proc(tmp_path / "b", "1234", HOST_NS), 1234) == ""


def test_a_pid_namespace_of_its_own(tmp_path):
    # what nspawn gives: its own /proc names it right, but the namespace is not the host's
    why = procfs.foreign_pid_view(_proc(tmp_path, "1234", "pid:[4026532301]"), 1234)
    assert why == "runs in a PID namespace of its own (pid:[4026532301]), not the host's"


def test_a_proc_mounted_from_another_namespace(tmp_path):
    why = procfs.foreign_pid_view(_proc(tmp_path, "77", HOST_NS), 1234)
    assert "mounted from another PID namespace" in why and "77" in why and "1234" in why


def test_a_proc_where_this_process_is_not_at_all(tmp_path):
    assert "self/ns/pid" in procfs.foreign_pid_view(_proc(tmp_path, None, None), 1234)


def test_refused_with_an_exit_code_of_its_own_unless_the_configuration_says_run(tmp_path):
    proc = _proc(tmp_path, "1234", "pid:[4026532301]")
    with pytest.raises(errors.ForeignPidNamespace) as err:
        preflight.pid_view(False, proc, 1234)
    assert err.value.exit_code == 17
    line = str(err.value)
    assert "\n" not in line and "foreign_pid_namespace: true" in line and "PID namespace of its own" in line
    assert len({c.exit_code for c in vars(errors).values()
                if isinstance(c, type) and issubclass(c, errors.AllocwatchError) and c.exit_code == 17}) == 1
    assert preflight.pid_view(True, proc, 1234).startswith("runs in a PID namespace of its own")


def test_sites_found_by_stack_are_not_attached_with_the_reason():
    why = "runs in a PID namespace of its own (pid:[4026532301]), not the host's"
    host = probes.plan(captured("6.18"))
    blind = probes.plan(dataclasses.replace(captured("6.18"), foreign_pids=why))
    by_site = {p.site: p for p in blind}
    oom_wait = by_site[Site.MEMCG_OOM_WAIT]
    assert {p.site: p for p in host}[Site.MEMCG_OOM_WAIT].chosen is not None  # seen on the host
    assert oom_wait.chosen is None
    st = coverage.SiteStatus(oom_wait, attached=False, target="")
    assert st.state is coverage.State.MISSING and why in coverage.why_not(st)
    assert coverage.snapshot_coverage([st])[0].attached is False
    # only the sites that find their task by stack in /proc are lost
    lost = {p.site for p in host if p.chosen} - {p.site for p in blind if p.chosen}
    dstate = {p.site for p in host if p.chosen and p.chosen.mechanism is probes.Mechanism.DSTATE_STACK}
    assert lost == dstate and Site.MEMCG_OOM_WAIT in lost


def test_the_start_up_line_names_the_lost_sites_once():
    assert preflight.pid_namespace_note("", ["memcg_oom_wait"]) is None
    line = preflight.pid_namespace_note("runs in a PID namespace of its own (pid:[1]), not the host's",
                                        ["memcg_oom_wait"])
    assert line is not None and "\n" not in line and "not attached: memcg_oom_wait" in line


def test_the_configuration_key_is_a_boolean_a_reload_cannot_change(tmp_path):
    assert config.load(None, {}).foreign_pid_namespace is False
    path = tmp_path / "c.yaml"
    path.write_text("foreign_pid_namespace: true\n")
    assert config.load(path, {}).foreign_pid_namespace is True
    path.write_text("foreign_pid_namespace: 'yes'\n")
    with pytest.raises(errors.ConfigError, match="foreign_pid_namespace"):
        config.load(path, {})
    assert schema.KEYS["foreign_pid_namespace"].restart


