# SPDX-License-Identifier: Apache-2.0
"""Renderings of report records (pure): text and JSON lines, both made from
the one dict of each record (core/records.py `to_dict`).

Text a task controls is already escaped in that dict (printable ASCII,
`\\\\` and `\\xNN`). In text, a value holding a space, `"` or `=`, or any
escape, is put in double quotes with `\\"` for a quote, so a line always
splits into the same `key=value` fields.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from allocwatch.core.records import TASK_OWN_KEYS, Record, TaskRow, iso_time, limit_line, plain, to_dict

# Frames shown in text: the innermost (where it waits) and the outermost (the
# file system and the syscall); JSON carries every frame.
STACK_INNER_FRAMES = 8
STACK_OUTER_FRAMES = 4


def text_value(escaped: str) -> str:
    """An escaped value as one `key=value` field: bare when it is plain, else quoted."""
    if escaped and not any(c in escaped for c in ' "=\\'):
        return escaped
    return '"' + escaped.replace('"', '\\"') + '"'


# -- text ---------------------------------------------------------------------------


def stack_text(frames: Sequence[str]) -> str:
    """Innermost and outermost frames, with the count of those left out."""
    if len(frames) <= STACK_INNER_FRAMES + STACK_OUTER_FRAMES + 1:
        return " <- ".join(frames)
    inner = frames[:STACK_INNER_FRAMES]
    outer = frames[-STACK_OUTER_FRAMES:]
    left_out = len(frames) - len(inner) - len(outer)
    return " <- ".join([*inner, f"... {left_out} more ...", *outer])


def _evidence(t: Mapping[str, Any]) -> str:
    """What makes a throttled, livelock or stuck-victim task one."""
    w = t.get("window") or {}
    if t["kind"] == "throttled":
        return f"share={w.get('share', 0) * 100:.0f}% of the window waited"
    if t["kind"] == "livelock":
        return (f"reclaim={w.get('reclaim_passes_per_s', 0):.0f} passes/s "
                f"reclaimed={w.get('reclaimed_pages', 0)} pages in the window")
    reaped = t.get("reaped")
    reaper = "" if reaped is None else f", the OOM reaper has {'' if reaped else 'not '}run on it"
    return "not exited since chosen by the OOM killer" + reaper


def _waiter_text(c: Mapping[str, Any]) -> str:
    now = f" {c['site']} {c['waited_s']:.1f}s" if c["site"] else ""
    if c.get("blocked_in"):
        now += f" blocked in {text_value(c['blocked_in'])} (D)"
    return f"comm={text_value(c['comm'])} pid={c['pid']} tid={c['tid']}{now} share={c['share'] * 100:.0f}%"


def _cgroup_waiting_lines(t: Mapping[str, Any]) -> list[str]:
    """A stuck victim: who in its cgroup is still waiting for memory."""
    w = t.get("waiting_in_cgroup")
    if w is None:
        return []
    if not w["count"]:
        return ["    still waiting in its cgroup: none"]
    shown = ", ".join(_waiter_text(c) for c in w["tasks"])
    more = w["count"] - len(w["tasks"])
    blocked = f" ({w['blocked']} of them blocked outside memory waits)" if w.get("blocked") else ""
    return [f"    still waiting in its cgroup: {w['count']} task(s){blocked}: {shown}"
            + (f", {more} more" if more > 0 else "")]


def site_detail_text(t: Mapping[str, Any]) -> str:
    """What the kernel says of the wait in flight: pages reclaimed so far, or the
    dirty-throttle pause and the dirty pages against the setpoint and limit behind it."""
    if t.get("reclaimed_so_far_pages") is not None:
        return f"reclaimed_so_far={t['reclaimed_so_far_pages']}pages"
    p = t.get("dirty_pause")
    if not p:
        return ""
    return (f"pause={p['pause_ms']}ms period={p['period_ms']}ms think={p['think_ms']}ms "
            f"dirty={p['dirty_pages']}pages setpoint={p['setpoint_pages']}pages limit={p['limit_pages']}pages "
            f"dirtied={p['dirtied_pages']}pages")


def writeback_line(t: Mapping[str, Any]) -> list[str]:
    """The device a writeback wait (or reclaim in one) waits on and how its writes go:
    'waiting on writeback of loop3 (7:3) ino=12: written 1.0MiB/s over 10s, 3 write(s) in
    flight, write limit 1.0MiB/s'; what was not read is left out."""
    wb = t.get("writeback")
    if not wb:
        return []
    name = f"{text_value(wb['device'])} ({text_value(wb['bdi'])})" if wb.get("device") else text_value(wb["bdi"])
    said = []
    if wb.get("written_bytes_per_s") is not None:
        over = f" over {wb['written_over_s']:.0f}s" if wb.get("written_over_s") is not None else ""
        said.append(f"written {size_text(wb['written_bytes_per_s'])}/s{over}")
    if wb.get("writes_in_flight") is not None:
        said.append(f"{wb['writes_in_flight']} write(s) in flight")
    if wb.get("write_limit_bytes_per_s") is not None:
        said.append(f"write limit {size_text(wb['write_limit_bytes_per_s'])}/s")
    return [f"    waiting on writeback of {name} ino={wb['ino']}" + (": " + ", ".join(said) if said else "")]


def gfp_part(t: Mapping[str, Any]) -> str:
    """gfp=MASK(NAMES) order=N, as a stall and a finding both show it."""
    return (f"gfp={t['gfp'] or '-'}{'(' + t['gfp_flags'] + ')' if t.get('gfp_flags') else ''} "
            f"order={'-' if t['order'] is None else t['order']}")


def no_fs_io_line(t: Mapping[str, Any]) -> list[str]:
    """The masks that may not start file system or block I/O to reclaim: named, since they say why reclaim cannot
    write back what it finds dirty."""
    masks = t.get("gfp_no_fs_io") or []
    return [f"    asked without __GFP_FS or __GFP_IO: {', '.join(masks)}"] if masks else []


SHRINKERS_SHOWN = 5


def shrinkers_lines(shrinkers: Sequence[Mapping[str, Any]]) -> list[str]:
    """The shrinkers a finding's reclaim called in the window, most asked first:
    'super_cache_scan calls=412 asked=52000 freed=0 objects=250000 (no fs/io)'."""
    if not shrinkers:
        return []
    shown = []
    for s in shrinkers[:SHRINKERS_SHOWN]:
        shown.append(f"{text_value(s['shrinker'])} calls={s['calls']} asked={s['asked']} freed={s['freed']} "
                     f"objects={s['objects']}" + (" (no fs/io)" if s.get("no_fs_io") else ""))
    more = len(shrinkers) - len(shown)
    return ["    shrinkers in the window: " + ", ".join(shown) + (f", {more} more" if more > 0 else "")]


def behind_lines(t: Mapping[str, Any]) -> list[str]:
    """The kernel threads in memory waits that a writeback wait is behind, and
    those of its device waiting on that device's writeback beside it."""
    rows = t.get("behind") or []
    lines = ["    behind it, in memory waits: " + _threads(rows)] if rows else []
    side = t.get("beside") or []
    if side:
        lines.append("    beside it, waiting on the same device's writeback: " + _threads(side))
    return lines


def _threads(rows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"{text_value(b['name'])} pid={b['pid']} {b['site']} {b['waited_s']:.1f}s" for b in rows)


def _finding_lines(t: Mapping[str, Any]) -> list[str]:
    parts = [
        f"  comm={text_value(t['comm'])} pid={t['pid']} tid={t['tid']} kind={t['kind']} site={t['site']}",
        f"for={t['duration_s']:.1f}s {_evidence(t)}",
        gfp_part(t),
        f"cgroup={text_value(t['cgroup']) if t['cgroup'] else '-'} state={t['state'] or '-'} level={t['level']}",
    ]
    if detail := site_detail_text(t):
        parts.append(f"now={t.get('waiting_site') or '-'} {detail}")
    if t["new"]:
        parts.append("(new)")
    lines = [" ".join(parts)]
    lines += writeback_line(t)
    sites = (t.get("window") or {}).get("sites") or {}
    if sites:
        ranked = sorted(sites.items(), key=lambda kv: -kv[1]["total_s"])
        shown = ", ".join(f"{s} {v['count']} wait(s) {v['total_s']:.1f}s" for s, v in ranked)
        lines.append(f"    in the window: {shown}")
    reasons = (t.get("window") or {}).get("throttle_reasons") or {}
    if reasons:
        lines.append("    throttled by: " + " ".join(f"{k}={v}" for k, v in reasons.items()))
    masks = (t.get("window") or {}).get("gfp_waits") or {}
    if len(masks) > 1:
        lines.append("    gfp masks in the window: " + " ".join(f"{k}={v}" for k, v in masks.items()))
    lines += shrinkers_lines((t.get("window") or {}).get("shrinkers") or [])
    lines += behind_lines(t)
    lines += no_fs_io_line(t)
    lines += _cgroup_waiting_lines(t)
    if t.get("memcg"):
        lines.append(memcg_line(t["memcg"]))
    lines += pod_line(t.get("pod"))
    lines += _stack_lines(t)
    return lines


def _stack_lines(t: Mapping[str, Any]) -> list[str]:
    """The stack from /proc; when it has none (a running task), the one BPF took as it entered reclaim."""
    if t["stack"]:
        return ["    stack: " + stack_text(t["stack"])]
    if t.get("recent_stack"):
        return ["    stack entering reclaim: " + stack_text(t["recent_stack"])]
    return []


def _task_lines(t: Mapping[str, Any]) -> list[str]:
    if t.get("kind", "stall") != "stall":
        return _finding_lines(t)
    parts = [
        f"  comm={text_value(t['comm'])} pid={t['pid']} tid={t['tid']} site={t['site']}",
        f"waited{'=' if t['start_known'] else '>='}{t['duration_s']:.1f}s"
        + (f" (this wait {t['wait_s']:.1f}s)" if t.get("wait_s") is not None and t["wait_s"] < t["duration_s"] - 0.05
           else ""),
        gfp_part(t),
        f"cgroup={text_value(t['cgroup']) if t['cgroup'] else '-'} state={t['state'] or '-'} level={t['level']}",
    ]
    if detail := site_detail_text(t):
        parts.insert(3, detail)
    if t["new"]:
        parts.append("(new)")
    if not t["start_known"]:
        parts.append("(asleep before allocwatch started)")
    if t.get("dying"):
        parts.append("(SIGKILL pending)")
    lines = [" ".join(parts)]
    lines += writeback_line(t)
    if t.get("memcg"):
        lines.append(memcg_line(t["memcg"]))
    lines += pod_line(t.get("pod"))
    if t.get("cmdline") or t.get("uid") is not None:
        lines.append(f"    uid={'-' if t.get('uid') is None else t['uid']} cmdline={text_value(t['cmdline'] or '-')}")
    for other in t["other_waits"]:
        lines.append(f"    also waiting: site={other['site']} for {other['duration_s']:.1f}s")
    lines += behind_lines(t)
    lines += no_fs_io_line(t)
    lines += _stack_lines(t)
    return lines


GROUP_TIDS_SHOWN = 16


def group_tasks(tasks: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Tasks that share a site, cgroup and comm: one story, longest first."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for i, t in enumerate(tasks):  # already longest first
        # a task with something of its own to say keeps a line of its own
        alone = t.get("dying") or not t["start_known"] or t["other_waits"]
        key = ("alone", i) if alone else (t.get("kind", "stall"), t["site"], t["cgroup"], t["comm"], t["gfp"])
        groups.setdefault(key, []).append(t)
    return list(groups.values())


def _group_lines(g: Sequence[Mapping[str, Any]]) -> list[str]:
    first = g[0]
    tids = ",".join(str(t["tid"]) for t in g[:GROUP_TIDS_SHOWN])
    if len(g) > GROUP_TIDS_SHOWN:
        tids += f",+{len(g) - GROUP_TIDS_SHOWN}"
    new = sum(1 for t in g if t["new"])
    line = (
        f"  comm={text_value(first['comm'])} tasks={len(g)} site={first['site']} "
        f"waited={g[-1]['duration_s']:.1f}s..{first['duration_s']:.1f}s "
        + (f"gfp={first['gfp']}{'(' + first['gfp_flags'] + ')' if first.get('gfp_flags') else ''} "
           if first["gfp"] else "")
        + f"cgroup={text_value(first['cgroup']) if first['cgroup'] else '-'} tids={tids}"
        + (f" ({new} new)" if new else "")
    )
    lines = [line]
    if first.get("memcg"):
        lines.append(memcg_line(first["memcg"]))
    lines += pod_line(first.get("pod"))
    if first.get("cmdline") or first.get("uid") is not None:
        uid = "-" if first.get("uid") is None else first["uid"]
        lines.append(f"    uid={uid} cmdline={text_value(first['cmdline'] or '-')} (longest)")
    if first["stack"]:
        lines.append("    stack (longest): " + stack_text(first["stack"]))
    return lines


VMSTAT_SHOWN = ("allocstall", "pgscan_direct", "pgsteal_direct", "pgscan_kswapd", "compact_stall", "oom_kill",
                "workingset_refault")
MEMINFO_SHOWN = ("MemAvailable", "MemFree", "Cached", "Dirty", "Writeback", "AnonPages", "Shmem", "SUnreclaim",
                 "SwapFree")


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n}B"


def _context_lines(c: Mapping[str, Any]) -> list[str]:
    victims = " ".join(f"{v['pid']}({text_value(v['comm']) if v['comm'] else '?'},{v['for_s']:.0f}s)"
                       for v in c["victims"])
    lines = [
        f"  MemAlloc-Info: stalling={c['stalling']} dying={c['dying']} exiting={c['exiting']} "
        f"victim={len(c['victims'])} oom_count={c['oom_kills']}" + (f" victims: {victims}" if victims else "")
    ]
    mem = " ".join(f"{k}={size_text(c['meminfo_bytes'][k])}" for k in MEMINFO_SHOWN if k in c["meminfo_bytes"])
    psi = c["psi"]
    if psi:
        full = "-" if psi["full_avg10_pct"] is None else f"{psi['full_avg10_pct']:.2f}%"
        mem += f"; psi memory avg10 some={psi['some_avg10_pct']:.2f}% full={full}"
        if "some_since_last_s" in psi:
            full_s = psi.get("full_since_last_s", 0.0)
            mem += f" (+{psi['some_since_last_s']:.3f}s some, +{full_s:.3f}s full since the last block)"
    lines.append(f"  memory: {mem}")
    if c["vmstat_delta"]:
        lines.append("  since the last block: " + " ".join(
            f"{k}=+{c['vmstat_delta'][k]}" for k in VMSTAT_SHOWN if k in c["vmstat_delta"]))
    low = [z for z in c["zones"] if z["under_watermark"]]
    for z in low:
        lines.append(
            f"  zone node{z['node']}/{z['zone']}: free={z['free_pages']} pages, under its {z['under_watermark']} "
            f"watermark (min={z['min_pages']} low={z['low_pages']} high={z['high_pages']})"
        )
    if c["zones"] and not low:
        lines.append(f"  zones: all {len(c['zones'])} above their watermarks")
    slab = c.get("slab_caches") or []
    if slab:
        meminfo = c["meminfo_bytes"]
        largest = ", ".join(f"{text_value(s['name'])} {size_text(s['bytes'])} ({s['objects']} objects)" for s in slab)
        lines.append(f"  slab: reclaimable={size_text(meminfo.get('SReclaimable'))} "
                     f"unreclaimable={size_text(meminfo.get('SUnreclaim'))}; largest: {largest}")
    for k in c["kswapd"]:
        held = f" for>={k['state_for_s']:.0f}s" if k.get("state_for_s") is not None else ""
        if k.get("not_run_for_s") is not None:
            held += f" not run for>={k['not_run_for_s']:.0f}s"
        lines.append(f"  kswapd{k['node']} pid={k['pid']} state={k['state']}{held}")
        if k["stack"]:
            lines.append("    stack: " + stack_text(k["stack"]))
    return lines


def pod_line(p: Mapping[str, Any] | None) -> list[str]:
    """The Kubernetes pod a task's cgroup is in: namespace and name when the pods log dir names it."""
    if not p:
        return []
    parts = [f"{k}={text_value(p[k])}" for k in ("namespace", "name") if p.get(k)]
    parts += [f"uid={p['uid']}", f"qos={p['qos']}"]
    if p.get("container_id"):
        parts.append(f"container={p['container_id']}")
    if p.get("runtime"):
        parts.append(f"runtime={p['runtime']}")
    return ["    pod: " + " ".join(parts)]


def memcg_line(m: Mapping[str, Any]) -> str:
    parts = [f"    memcg v{m['version']}: usage={size_text(m['usage_bytes'])}"]
    if m["limit_bytes"] is not None:
        parts.append(f"limit={size_text(m['limit_bytes'])}" + (" (at its limit)" if m["near_limit"] else ""))
    if m["high_bytes"] is not None:
        parts.append(f"high={size_text(m['high_bytes'])}")
    if m["oom_kill_disable"] is not None:
        parts.append(f"oom_kill_disable={int(m['oom_kill_disable'])} under_oom={int(bool(m['under_oom']))}")
    if m["failcnt"] is not None:
        parts.append(f"failcnt={m['failcnt']}")
    ev = m["events"]
    if ev:
        parts.append("events " + " ".join(f"{k}={ev[k]}" for k in ("high", "max", "oom", "oom_kill") if k in ev))
    return " ".join(parts)


def stall_head_lines(head: str, d: Mapping[str, Any]) -> list[str]:
    """A stall block's first line and what the rest of the machine looks like."""
    tasks = d["tasks"]
    new = sum(1 for t in tasks if t["new"])
    longest = max((t["duration_s"] for t in tasks), default=0.0)
    lines = [
        f"{head} stall report #{d['seq']}: {d.get('due', len(tasks))} task(s) due ({new} new), "
        f"{d['stalled']} wait(s) over threshold, longest {longest:.1f}s"
        + (f"; {d['held_back']} task report(s) held back by the rate limit" if d.get("held_back") else "")
    ]
    if d.get("context"):
        lines += _context_lines(d["context"])
    return lines


def task_lines(t: Mapping[str, Any]) -> list[str]:
    """One task of a stall block on its own (no grouping): its line and what follows it."""
    return _task_lines(t)


def more_lines(d: Mapping[str, Any]) -> list[str]:
    """The tasks past a block's limit, counted."""
    return [
        f"  and {m['tasks']} more task(s) site={m['site']} "
        f"cgroup={text_value(m['cgroup']) if m['cgroup'] else '-'} longest={m['longest_s']:.1f}s"
        for m in d.get("more", ())
    ]


def advice_lines(d: Mapping[str, Any]) -> list[str]:
    """The block's last lines: per kind of stall, what its facts point at and where to look next."""
    return [f"  what to do ({a['kind']}): {a['text']}" for a in d.get("advice") or ()]


def _stall_text(head: str, d: Mapping[str, Any]) -> str:
    return "".join(_stall_pieces(head, d))


def _stall_pieces(head: str, d: Mapping[str, Any]) -> Iterator[str]:
    """A stall block's text, a group of tasks at a time: 10,000 tasks of as many
    programs are 10,000 groups, and the block whole a string of megabytes."""
    def text(lines: list[str]) -> str:
        return "".join(line + "\n" for line in lines)

    yield text(stall_head_lines(head, d))
    for g in group_tasks(d["tasks"]):
        if len(g) > 1 and g[0].get("kind", "stall") == "stall":
            yield text(_group_lines(g))
        else:
            for t in g:
                yield text(_task_lines(t))
    yield text(more_lines(d) + advice_lines(d))


def _head(d: Mapping[str, Any]) -> str:
    """A record's first words in the text output (the journal has its own time)."""
    return f"{d['time']} allocwatch:"


def _text(d: Mapping[str, Any]) -> str:
    return record_text(d, _head(d))


def record_text(d: Mapping[str, Any], head: str) -> str:
    """A record as text, its first line starting with `head` (the journal has its own time)."""
    kind = d["type"]
    if kind == "stall_report":
        return _stall_text(head, d)
    if kind == "recovered":
        how = "" if d["exact"] else " or less (end not seen)"
        if not d["start_known"]:
            how += " or more (asleep before allocwatch started)"
        ep_kind = d.get("kind", "stall")
        woke = d["ended"] in ("woke", "unseen")  # it went on by itself, not killed, not gone
        verb = "recovered" if woke else f"wait ended ({d['ended']})"
        waited = "waited"
        if ep_kind == "stuck_victim":
            verb, waited = "stuck victim gone", "lasted"
        elif ep_kind != "stall":
            verb, waited = (f"{ep_kind} over" if woke else f"{ep_kind} ended ({d['ended']})"), "lasted"
        return (
            f"{head} {verb} #{d['seq']}: comm={text_value(d['comm'])} pid={d['pid']} tid={d['tid']} "
            f"site={d['site']} {waited} {d['duration_s']:.1f}s{how}, reported {d['reports']} time(s)"
            + (f", the pass freed {d['reclaimed_pages']} page(s)" if d.get("reclaimed_pages") is not None else "")
            + (f", compaction {d['compaction_status']}" if d.get("compaction_status") else "")
            + "\n"
        )
    if kind == "oom_kill":
        return oom_kill_text(d, head)
    if kind == "limits_reached":
        return "".join(f"{head} limit #{d['seq']}: {limit_line(k, n, d['totals'][k])}\n" for k, n in d["grown"].items())
    lines = [f"{head} summary #{d['seq']}: {d['oom_kills']} oom kill(s); completed waits per site:"]
    for site, s in sorted(d["waits_completed"].items()):
        if not s["count"]:
            continue
        lines.append(f"  {site}: {s['count']} wait(s), {s['total_s']:.3f}s in all")
    lines.append("  counters: " + " ".join(f"{k}={v}" for k, v in d["stats"].items()))
    still = d.get("open_episodes") or []
    if still:
        more = d.get("open_episodes_count", len(still)) - len(still)
        lines.append(f"  still open at exit: {len(still) + more} episode(s)"
                     + (f", {more} not listed" if more > 0 else ""))
        lines += [f"    {text_value(e['comm'])} pid={e['pid']} tid={e['tid']} {e['kind']} at {e['site']} "
                  f"for {e['duration_s']:.1f}s, reported {e['reports']} time(s)"
                  + (" (nothing held it at the last scan: its end was not yet confirmed)" if e["quiet"] else "")
                  for e in still]
    return "\n".join(lines) + "\n"


def render_text(rec: Record) -> str:
    return _text(to_dict(rec))


# -- JSON -------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=plain)  # one for every record


def _json(d: Mapping[str, Any]) -> str:
    return _ENCODER.encode(d) + "\n"


def render_json(rec: Record) -> str:
    return _json(to_dict(rec))


def render(records: Sequence[Record], fmt: str) -> str:
    return render_dicts([to_dict(r) for r in records], fmt)


def render_dicts(dicts: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """A block of records, already turned into dicts, as one piece of text."""
    return "".join(render_pieces(dicts, fmt))


# A JSON record with this many tasks or more is written a task at a time.
STREAM_TASKS = 256
_TASKS_HERE = "\x00allocwatch: the tasks go here"  # no comm or path holds a NUL


def render_pieces(dicts: Sequence[Mapping[str, Any]], fmt: str) -> Iterator[str]:
    """render_dicts' text, in pieces. In JSON a record's tasks are encoded one at a
    time: a block of 10,000 listed tasks was one string of 9.5 MB, its bytes
    another, and the encoder's list of its pieces on the way, and the memory
    they took stayed with the daemon after. In text a stall block goes a group
    of tasks at a time."""
    for d in dicts:
        if fmt != "json":
            if d.get("type") == "stall_report":
                yield from _stall_pieces(_head(d), d)
            else:
                yield _text(d)
            continue
        tasks = d.get("tasks")
        if not isinstance(tasks, list) or len(tasks) < STREAM_TASKS:
            yield _json(d)
            continue
        around = _ENCODER.encode({**d, "tasks": _TASKS_HERE}).split(_ENCODER.encode(_TASKS_HERE))
        if len(around) != 2:  # the mark said twice: a value held it after all
            yield _json(d)
            continue
        made: dict[int, str] = {}
        strs: dict[str, str] = {}
        yield around[0] + "[" + task_json(tasks[0], made, strs)
        for t in tasks[1:]:
            yield "," + task_json(t, made, strs)
        yield "]" + around[1] + "\n"


def task_json(t: Mapping[str, Any], made: dict[int, str] | None = None, strs: dict[str, str] | None = None) -> str:
    """A task of a block as JSON. A TaskRow's shared fields are encoded once a block
    (`made`, by the id of the dict they are in, which the block holds meanwhile):
    10,000 tasks with one stack and one memcg differ only in their own fields,
    which `_own_json` writes (`strs`: the block's strings, each encoded once).
    Give the same two dicts for every task of one block, and only of that block."""
    encode = _ENCODER.encode
    made = {} if made is None else made
    strs = {} if strs is None else strs
    if not isinstance(t, TaskRow):
        return encode(t)
    own, *shared = t.parts()
    mine = _own_json(own, strs) if FAST_OWN_JSON else None
    inner = [mine if mine is not None else encode(dict(zip(TASK_OWN_KEYS, own, strict=True)))[1:-1]]
    for part in shared:
        text = made.get(id(part))
        if text is None:
            text = made[id(part)] = encode(part)[1:-1]
        if text:
            inner.append(text)
    return "{" + ",".join(inner) + "}"


# The keys _own_json writes, in its order: where a row's are others, the encoder writes them.
FAST_OWN_JSON = TASK_OWN_KEYS == ("kind", "tid", "pid", "comm", "site", "duration_s", "wait_s", "start_known",
                                  "level", "new", "gfp", "gfp_flags", "order", "other_waits")
_JSON_BOOL = {True: "true", False: "false"}


def _own_json(own: tuple[Any, ...], strs: dict[str, str]) -> str | None:
    """A row's own fields as the encoder writes them, without braces, in a third
    of its time (10,000 tasks a block); None where a value is not of the type
    expected, for the encoder to write."""
    kind, tid, pid, comm, site, dur, wait, known, level, new, gfp, gfp_flags, order, other = own
    if not (type(tid) is int and type(pid) is int and type(level) is int and type(known) is bool
            and type(new) is bool and type(dur) is float and type(wait) is float
            and math.isfinite(dur) and math.isfinite(wait) and (order is None or type(order) is int)
            and type(other) in (list, tuple)
            and all(x is None or type(x) is str for x in (kind, comm, site, gfp, gfp_flags))):
        return None

    def text(s: str | None) -> str:
        if s is None:
            return "null"
        said = strs.get(s)
        if said is None:
            said = strs[s] = _ENCODER.encode(s)
        return said

    return (f'"kind":{text(kind)},"tid":{tid},"pid":{pid},"comm":{text(comm)},"site":{text(site)},'
            f'"duration_s":{dur!r},"wait_s":{wait!r},"start_known":{_JSON_BOOL[known]},"level":{level},'
            f'"new":{_JSON_BOOL[new]},"gfp":{text(gfp)},"gfp_flags":{text(gfp_flags)},'
            f'"order":{"null" if order is None else order},'
            f'"other_waits":{_ENCODER.encode(other) if other else "[]"}')  # a list or a tuple: [] when empty


def render_drop_notice(dropped: int, time_s: float, fmt: str) -> str:
    """Written by the output thread before the first block that gets out after a drop."""
    d = {"type": "blocks_dropped", "time": iso_time(time_s), "dropped": dropped}
    if fmt == "json":
        return _json(d)
    return f"{d['time']} allocwatch: {dropped} report block(s) dropped: the output is slower than the reports\n"


def _constraint_text(d: Mapping[str, Any]) -> str:
    if not d.get("constraint"):
        return ""
    said = d["constraint"] if d["constraint"] != "mixed" else ", ".join(
        f"{c} x{n}" for c, n in d["constraints"].items())
    return f" constraint={said}" + ("(inferred)" if d.get("constraint_source") == "inferred" else "")


def oom_kill_text(d: Mapping[str, Any], head: str) -> str:
    """One kill: its line. A storm's kills in one cgroup in one scan: one line."""
    victim = text_value(d["victim_comm"]) if d["victim_comm"] else "?"
    mem = ""
    if d.get("victim_anon_rss_kb") is not None:
        mem = (
            f" uid={d['victim_uid']} anon-rss={d['victim_anon_rss_kb']}kB file-rss={d['victim_file_rss_kb']}kB "
            f"shmem-rss={d['victim_shmem_rss_kb']}kB oom_score_adj={d['victim_oom_score_adj']}"
        )
    constraint = _constraint_text(d)
    if d.get("oom_cgroup"):
        constraint += f" oom_cgroup={text_value(d['oom_cgroup'])}"
    if d.get("gfp_flags"):
        constraint += f" gfp={text_value(d['gfp_flags'])} order={d['order']}"
    constraint += _memory_at_kill_text(d.get("memory_at_kill"))
    if d.get("count", 1) == 1:
        vcg = f" cgroup={text_value(d['victim_cgroup'])}" if d.get("victim_cgroup") else ""
        icg = f" cgroup={text_value(d['invoker_cgroup'])}" if d.get("invoker_cgroup") else ""
        return (
            f"{head} oom kill #{d['seq']}: victim pid={d['victim_pid']} comm={victim}{mem}{vcg}, "
            f"invoked by comm={text_value(d['invoker_comm'])} pid={d['invoker_pid']} tid={d['invoker_tid']}"
            f"{icg}{constraint}\n"
        )
    pids = " ".join(str(v["pid"]) for v in (d.get("victims") or [])[:8]) + (" ..." if d["count"] > 8 else "")
    where = f"cgroup={text_value(d['cgroup'])}" if d.get("cgroup") else "an unknown cgroup"
    largest = f"pid={d['victim_pid']} comm={victim}{mem}"
    constraint = "," + constraint if constraint else ""
    return (
        f"{head} oom kills #{d['seq']}: {d['count']} in {where} in the last {d['interval_s']:.1f}s{constraint}; "
        f"victims: {_comm_counts(d['victim_comms'], d['count'])} (pids {pids}); "
        f"largest {largest}; invoked by {_comm_counts(d['invoker_comms'], d['count'])}\n"
    )


def _memory_at_kill_text(m: Mapping[str, Any] | None) -> str:
    """The machine at the kill: free above min in every zone or not, and what was reclaimable."""
    if not m:
        return ""
    out = ""
    if m.get("free_above_min") is True:
        out += " free>min in every zone"
    elif m.get("free_above_min") is False:
        out += f" free<=min in {','.join(m.get('zones_at_or_under_min') or ['a zone'])}"
    if m.get("reclaimable_bytes") is not None:
        out += f" reclaimable={size_text(m['reclaimable_bytes'])}"
    return out


def _comm_counts(comms: Mapping[str, int], count: int) -> str:
    said = ", ".join(f"{text_value(c)} x{n}" for c, n in comms.items())
    rest = count - sum(comms.values())
    return said + (f", {rest} others" if rest > 0 else "")
