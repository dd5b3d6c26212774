# SPDX-License-Identifier: Apache-2.0
"""Reports to the systemd journal, as structured entries, never blocking the scan loop.

Each record becomes one entry whose MESSAGE is its text (without the time: the
journal has its own), with a MESSAGE_ID per record type and a PRIORITY by
severity. A stall block becomes one entry for its head (the machine's memory
picture) and one entry per task in it, each with the task's fields, so that
`journalctl ALLOCWATCH_SITE=memcg_oom_wait` or `journalctl ALLOCWATCH_PID=1234`
finds it; ALLOCWATCH_JSON holds the task's whole record for scripts.

The sender is injected (systemd-python's `journal.send` on a real host, a list
in the tests). Sending happens on the output's own thread (`QueuedOutput`): a
journald that is slow or gone costs dropped blocks, counted, never a late scan.
A send that fails is not fatal (journald restarts; the watchdog must not): it
is counted and said once on stderr, through `on_error`.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from allocwatch.errors import AllocwatchError, OutputFailed
from allocwatch.outputs import report
from allocwatch.outputs.sinks import DEFAULT_MAX_BLOCKS, Block, QueuedOutput

Fields = dict[str, str]
Sender = Callable[[Fields], None]

# One id per kind of entry, fixed for ever: `journalctl MESSAGE_ID=...` and the
# catalog tools key on them.
MESSAGE_IDS = {
    "stall_report": "950f8eb78c1f4309ae699a34752cab9f",
    "stall_task": "6fde62086bbd47bb869eaefb45fac0d7",
    "recovered": "a8338524379f491cbc62899d8dbff853",
    "oom_kill": "87bae8919c5f4e1683a0a09e7ee8761b",
    "limits_reached": "8958cc3a625441f58ead3cfc60ddfa13",
    "summary": "e0993626e0664dad9868ab370a023140",
    "blocks_dropped": "6613080f57504c49ac1774abedfb3fac",
}

# syslog(3) levels: an OOM kill is an error, as the kernel logs it; a task stuck
# in memory is a warning; its recovery a notice; the rest information.
PRIORITY_ERR, PRIORITY_WARNING, PRIORITY_NOTICE, PRIORITY_INFO = 3, 4, 5, 6
PRIORITIES = {
    "stall_report": PRIORITY_WARNING,
    "stall_task": PRIORITY_WARNING,
    "recovered": PRIORITY_NOTICE,
    "oom_kill": PRIORITY_ERR,
    "limits_reached": PRIORITY_WARNING,
    "summary": PRIORITY_INFO,
    "blocks_dropped": PRIORITY_WARNING,
}

HEAD = "allocwatch:"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")  # where journald listens for native entries
IDENTIFIER = "allocwatch"

# Task fields sent as ALLOCWATCH_<NAME>, when present.
_TASK_FIELDS = ("site", "kind", "pid", "tid", "comm", "level", "cgroup", "state", "gfp", "gfp_flags", "order", "uid")
_POD_FIELDS = ("namespace", "name", "uid", "qos", "container_id", "runtime")


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _entry(kind: str, message: str, fields: Mapping[str, Any]) -> Fields:
    out = {
        "MESSAGE": message.rstrip("\n"),
        "MESSAGE_ID": MESSAGE_IDS[kind],
        "PRIORITY": str(PRIORITIES[kind]),
        "SYSLOG_IDENTIFIER": IDENTIFIER,
        "ALLOCWATCH_TYPE": kind,
    }
    out.update({f"ALLOCWATCH_{k.upper()}": _value(v) for k, v in fields.items() if v is not None and v != ""})
    return out


def task_entry(t: Mapping[str, Any], seq: int, made: dict[int, str] | None = None,
               strs: dict[str, str] | None = None) -> Fields:
    """One task of a stall block, with its own fields (`made`, `strs`: report.task_json's
    encodings of what the block's tasks share, the same for every task of the block)."""
    fields: dict[str, Any] = {k: t.get(k) for k in _TASK_FIELDS}
    fields["duration_s"] = t["duration_s"]
    fields["report_seq"] = seq
    fields["gfp_no_fs_io"] = ",".join(t.get("gfp_no_fs_io") or []) or None  # GFP_NOFS, GFP_NOIO: named
    # the shrinkers a finding's reclaim called in its window, most asked first, space-separated
    fields["shrinkers"] = " ".join(s["shrinker"] for s in (t.get("window") or {}).get("shrinkers") or []) or None
    wb = t.get("writeback") or {}
    fields["writeback_bdi"] = wb.get("bdi")  # the device a writeback wait waits on: "7:3"
    fields["writeback_device"] = wb.get("device")  # and its block device: "loop3"
    # the kernel threads in memory waits that writeback waits for, longest first, space-separated
    fields["behind"] = " ".join(b["name"] for b in t.get("behind") or ()) or None
    pod = t.get("pod") or {}
    for k in _POD_FIELDS:  # ALLOCWATCH_POD_NAMESPACE ... : a task's Kubernetes pod, when it is in one
        fields[f"pod_{k}"] = pod.get(k)
    frames = t.get("stack") or t.get("recent_stack") or []
    fields["stack"] = "\n".join(frames) if frames else None
    fields["json"] = report.task_json(t, made, strs)  # as the JSON output writes it
    lines = report.task_lines(t)
    return _entry("stall_task", HEAD + " stalled:" + "\n".join(lines).removeprefix(" "), fields)


def entries(d: Mapping[str, Any]) -> Iterator[Fields]:
    """The journal entries of one record (a dict from records.to_dict)."""
    kind = d["type"]
    if kind == "stall_report":
        head = report.stall_head_lines(HEAD, d) + report.more_lines(d) + report.advice_lines(d)
        advice = "\n".join(f"{a['kind']}: {a['text']}" for a in d.get("advice") or ()) or None
        yield _entry(kind, "\n".join(head), {"seq": d["seq"], "stalled": d["stalled"], "due": d.get("due"),
                                            "advice": advice})
        made: dict[int, str] = {}
        strs: dict[str, str] = {}
        for t in d["tasks"]:
            yield task_entry(t, d["seq"], made, strs)
        return
    text = report.record_text(d, HEAD)
    if kind in ("recovered", "oom_kill"):
        keys = ("site", "kind", "pid", "tid", "comm", "duration_s", "ended") if kind == "recovered" else (
            "victim_pid", "victim_comm", "invoker_pid", "invoker_comm", "victim_cgroup", "constraint", "count")
        yield _entry(kind, text, {"seq": d["seq"], **{k: d.get(k) for k in keys}})
        return
    yield _entry(kind if kind in MESSAGE_IDS else "summary", text, {"seq": d.get("seq")})


def drop_entry(dropped: int) -> Fields:
    return _entry("blocks_dropped", f"{HEAD} {dropped} report block(s) dropped: the journal is slower than the reports",
                  {"dropped": dropped})


def systemd_sender() -> Sender:
    """systemd-python's sender (Debian's python3-systemd). ImportError when it is missing."""
    from systemd import journal  # type: ignore[attr-defined]

    def send(fields: Fields) -> None:
        f = dict(fields)
        journal.send(f.pop("MESSAGE"), **f)

    return send


class JournalSink(QueuedOutput):
    name = "journal"

    def __init__(
        self,
        send: Sender,
        on_error: Callable[[str], None] = lambda line: None,
        on_fatal: Callable[[AllocwatchError], None] = lambda err: None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
    ) -> None:
        self._send = send
        self._on_error = on_error
        self.failed_entries = 0
        super().__init__(max_blocks, on_fatal)

    def _emit(self, block: Block, dropped_before: int) -> None:
        if dropped_before:
            self._try(drop_entry(dropped_before))
        for d in block:
            for e in entries(d):
                self._try(e)

    def _try(self, fields: Fields) -> None:
        try:
            self._send(fields)
        except OSError as exc:
            self.failed_entries += 1
            if self.failed_entries == 1:
                self._on_error(f"cannot send to the journal ({exc.strerror or exc}); entries that fail are counted")


def open_sink(
    on_error: Callable[[str], None],
    on_fatal: Callable[[AllocwatchError], None] = lambda err: None,
    socket: Path = JOURNAL_SOCKET,
    sender: Callable[[], Sender] = systemd_sender,
) -> JournalSink:
    """The journal output, checked at start: journald listening, systemd-python there."""
    try:
        listening = stat.S_ISSOCK(socket.stat().st_mode)
    except OSError:
        listening = False
    if not listening:
        raise OutputFailed(f"output journal: no journald socket at {socket}: is systemd-journald running?")
    try:
        send = sender()
    except ImportError:
        raise OutputFailed(
            "output journal: needs systemd-python (Debian's python3-systemd; scripts/setup installs it)"
        ) from None
    return JournalSink(send, on_error=on_error, on_fatal=on_fatal)
