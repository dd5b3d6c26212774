# SPDX-License-Identifier: Apache-2.0
"""What to do: from the facts of one stall block, one line per kind of stall
present, saying what the evidence points at and what to look at next (pure).

Input is the plain dict of a stall_report (records.to_dict). Each rule fires only
on facts the block itself holds, and its line is split in three: `seen:` (the
facts, as read), `points at:` (what those facts mean, as a reading, not a
finding) and `look at:` (where to look next). A rule whose facts are missing
says nothing: no line is better than a guess dressed as a fact.
Facts of other engineers' fields (gfp_no_fs_io, window.throttle_reasons) are
read with .get(), so an older record without them simply gives no line there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

Task = Mapping[str, Any]
Block = Mapping[str, Any]

# The rules' names, in the order their lines are written.
MEMCG_OOM_OFF = "memcg_oom_disabled"
STUCK_VICTIM = "stuck_victim"
LIVELOCK = "livelock"
WRITEBACK = "writeback"
NO_FS_IO = "gfp_nofs"
DIRTY_THROTTLE = "dirty_throttle"
COMPACTION = "compaction"
OUT_OF_MEMORY = "out_of_memory"
MEMCG_HIGH = "memcg_high"
SHRINKERS = "shrinkers"

GLOBAL_RECLAIM_SITES = frozenset({"alloc_slowpath", "alloc_pages", "direct_reclaim", "too_many_isolated",
                                  "reclaim_throttle", "throttle_vm_writeout", "pfmemalloc_throttle", "oom"})


def sites_of(t: Task) -> set[str]:
    """Every site a task is seen at: its own, its other waits, the one it is in now, its window's."""
    out = {t.get("site"), t.get("waiting_site")}
    out |= {o.get("site") for o in t.get("other_waits") or ()}
    out |= set(((t.get("window") or {}).get("sites") or {}).keys())
    return {s for s in out if s}


def _cg(t: Task) -> str:
    return t.get("cgroup") or "-"


def _who(tasks: Sequence[Task], facts: Facts) -> str:
    """'comm pid=N' of the first, and how many more."""
    t = tasks[0]
    n = facts.count(tasks)
    more = f" and {n - 1} more task(s)" if n > 1 else ""
    return f"{t.get('comm')} pid={t.get('pid')}{more}"


def _line(seen: str, points_at: str, look_at: str) -> str:
    return f"seen: {seen}; points at: {points_at}; look at: {look_at}"


def _memcg_oom_off(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if (m := t.get("memcg")) and m.get("oom_kill_disable")
           and (m.get("under_oom") or m.get("near_limit"))]
    if not hit:
        return None
    m = hit[0]["memcg"]
    groups = {_cg(t) for t in hit}
    where = f"memory cgroup {_cg(hit[0])}" + (f" (and {len(groups) - 1} more)" if len(groups) > 1 else "")
    state = " ".join(s for s, on in (("at its limit", m.get("near_limit")), ("under_oom=1", m.get("under_oom"))) if on)
    return _line(f"{where} {state} with oom_kill_disable=1, {facts.count(hit)} task(s) waiting in it",
                 "a group out of memory whose OOM killer is off: its tasks wait until memory is freed in it",
                 "raise the group's limit (memory.limit_in_bytes) or enable its OOM killer (memory.oom_control), "
                 "or free memory in the group")


def _stuck_victim(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if t.get("kind") == "stuck_victim"]
    if not hit:
        return None
    t = hit[0]
    seen = f"OOM victim {_who(hit, facts)} not exited {t.get('duration_s', 0):.0f}s after it was chosen"
    if t.get("state"):
        seen += f", state={t['state']}"
    frames = t.get("stack") or []
    if frames:
        seen += f", blocked in {frames[0]}"
    if t.get("reaped"):
        seen += ", its memory already reaped"
    group = t.get("waiting_in_cgroup") or {}
    waiting = group.get("count") or 0
    asleep = group.get("blocked") or 0
    if waiting - asleep:
        seen += f", {waiting - asleep} task(s) of its cgroup waiting for memory"
    if asleep:
        seen += f", {asleep} blocked outside memory waits"
    blocked = f"what it is blocked on ({frames[0]})" if frames else "what it is blocked on (/proc/PID/stack)"
    return _line(seen, "the victim cannot exit, so the memory it holds is not given back",
                 blocked + (" and the tasks of its cgroup waiting behind it" if waiting else ""))


def _livelock(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if t.get("kind") == "livelock"]
    if not hit:
        return None
    w = hit[0].get("window") or {}
    seen = (f"{_who(hit, facts)} running reclaim {w.get('reclaim_passes_per_s', 0):.0f} passes/s, "
            f"{w.get('reclaimed_pages', 0)} pages reclaimed in the window")
    ctx = block.get("context") or {}
    mem = ctx.get("meminfo_bytes") or {}
    reasons = ["reclaim frees nothing"]
    look = "what holds the memory reclaim cannot free (unreclaimable, or anonymous"
    if mem.get("SwapTotal") == 0 or ("SwapTotal" not in mem and mem.get("SwapFree") == 0):
        seen += ", no swap"
        reasons.append("no swap for anonymous memory")
        look += " with no swap to go to)"
    else:
        look += ")"
    victims = ctx.get("victims") or []
    if victims:
        v = victims[0]
        seen += f", OOM victim pid={v['pid']} not gone for {v.get('for_s', 0):.0f}s"
        reasons.append("an OOM victim that does not exit")
        look += f" and why OOM victim pid={v['pid']} does not exit (its state and stack)"
    return _line(seen, ", ".join(reasons), look)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}MiB"


def _memcg_high(block: Block, facts: Facts) -> str | None:
    def over_high(t: Task) -> bool:
        m = t.get("memcg") or {}
        return ("memcg_high_throttle" in facts.sites(t) and m.get("high_bytes") is not None
                and m.get("usage_bytes") is not None and m["usage_bytes"] > m["high_bytes"])
    hit = [t for t in block["tasks"] if over_high(t)]
    if not hit:
        return None
    t, m = hit[0], hit[0]["memcg"]
    seen = (f"{_who(hit, facts)} throttled at memory.high in mem_cgroup_handle_over_high, cgroup={_cg(t)} "
            f"usage={_mib(m['usage_bytes'])} over high={_mib(m['high_bytes'])}")
    if (m.get("events") or {}).get("high") is not None:
        seen += f", memory.events high={m['events']['high']}"
    share = (t.get("window") or {}).get("share")
    if share is not None:
        seen += f", {share * 100:.0f}% of the window"
    return _line(seen, "a group over its memory.high: the kernel makes its tasks reclaim and then sleep "
                 "(up to 2 s a time) until it is back under, by design",
                 "the group's memory.high against what it needs (raise it, or find what fills the group: "
                 "memory.stat)")


def _writeback(block: Block, facts: Facts) -> str | None:
    def on_writeback(t: Task) -> bool:
        reasons = (t.get("window") or {}).get("throttle_reasons") or {}
        return ("writeback_wait" in facts.sites(t) or "folio_wait_writeback" in (t.get("stack") or ())
                or any("WRITEBACK" in str(r) for r in reasons))
    hit = [t for t in block["tasks"] if on_writeback(t)]
    if not hit:
        return None
    t = hit[0]
    if "writeback_wait" in facts.sites(t):
        how = "waiting on page writeback (writeback_wait)"
    elif "folio_wait_writeback" in (t.get("stack") or ()):
        how = "waiting on page writeback (folio_wait_writeback in its stack)"
    else:
        how = "throttled by reclaim for writeback (VMSCAN_THROTTLE_WRITEBACK)"
    seen = f"{_who(hit, facts)} {how} in {t.get('site')}, cgroup={_cg(t)}"
    on_device = next((x for x in hit if x.get("writeback")), None)  # its device and its journal: one task's
    wb = on_device["writeback"] if on_device is not None else None
    look = "the device behind this file system (its speed, any I/O throttling on it)"
    if wb:
        device = _device(wb)
        seen += f", on writeback of {device}"
        said = []
        if wb.get("written_bytes_per_s") is not None:
            said.append(f"written {_mib(wb['written_bytes_per_s'])}/s")
        if wb.get("write_limit_bytes_per_s") is not None:
            said.append(f"write limit {_mib(wb['write_limit_bytes_per_s'])}/s")
        look = (f"{device}, the device behind this file system: its speed and I/O throttling"
                + (f" ({', '.join(said)})" if said else ""))
    journal = next((b for b in (on_device or {}).get("beside") or () if str(b["name"]).startswith("jbd2/")), None)
    if journal is not None:  # its commit waits on the same writes: every writer will wait on the journal
        seen += f", with the journal thread {journal['name']} pid={journal['pid']} waiting on the same writeback"
    stuck = next((x for x in hit if x.get("behind")), None)
    if stuck is not None:  # the writeback itself waits for memory: the memcg writeback deadlock
        b = stuck["behind"][0]
        more = f" and {len(stuck['behind']) - 1} more" if len(stuck["behind"]) > 1 else ""
        return _line(f"{seen}; behind {stuck.get('comm')} pid={stuck.get('pid')}: {b['name']} pid={b['pid']} "
                     f"in {b['site']} for {b['waited_s']:.1f}s{more}",
                     "writeback that needs memory to complete: the threads that finish it wait for memory "
                     "themselves (a reclaim that waits on writeback, behind writeback that waits on reclaim)",
                     "what those threads allocate and in which memory cgroup (their stacks), and whether the "
                     "waiting reclaim could do without waiting on writeback (GFP_NOFS/GFP_NOIO in the I/O path)")
    return _line(seen, "writeback that does not keep up: the pages reclaim needs are still being written", look)


def _device(wb: Mapping[str, Any]) -> str:
    """'loop3 (7:3)', or the bdi alone when no block device has it."""
    return f"{wb['device']} ({wb['bdi']})" if wb.get("device") else str(wb.get("bdi"))


def _no_fs_io(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if t.get("gfp_no_fs_io")]
    if not hit:
        return None
    t = hit[0]
    wb = next((x["writeback"] for x in hit if x.get("writeback")), None)
    return _line(f"{_who(hit, facts)} ({t.get('kind', 'stall')} in {t.get('site')}) "
                 "asked without __GFP_FS or __GFP_IO: " + ", ".join(t["gfp_no_fs_io"]),
                 "reclaim for a file system's own allocations, which may not write back dirty pages itself",
                 "file system writeback under memory pressure: dirty and writeback pages in its group "
                 + (f"and {_device(wb)}, the device behind this file system" if wb
                    else "and the device behind this file system"))


def _shrinkers(block: Block, facts: Facts) -> str | None:
    """A task's reclaim called shrinkers that were asked to scan and freed nothing:
    the one asked the most, of the block's tasks."""
    found = []  # (task, its shrinkers that freed nothing, most asked first)
    for t in block["tasks"]:
        idle = [s for s in (t.get("window") or {}).get("shrinkers") or () if s.get("asked") and not s.get("freed")]
        if idle:
            found.append((t, idle))
    for t, idle in sorted(found, key=lambda f: -f[1][0]["asked"])[:1]:
        s = idle[0]
        seen = (f"{t.get('comm')} pid={t.get('pid')} ({t.get('kind')}) called {s['shrinker']} {s['calls']} time(s) "
                f"in the window, asked to scan {s['asked']} of {s['objects']} objects, freed 0")
        if len(idle) > 1:
            seen += f" (and {len(idle) - 1} more shrinker(s) that freed nothing)"
        no_fs = [x for x in idle if x.get("no_fs_io")]
        if no_fs:
            seen += f", called with {no_fs[0].get('gfp_flags') or no_fs[0].get('gfp')}"
        ctx = block.get("context") or {}
        largest = ctx.get("slab_caches") or []
        if largest:
            seen += f"; largest slab cache {largest[0]['name']} {_mib(largest[0]['bytes'])}"
        points = ("slab caches reclaim cannot shrink: a file system's shrinkers do nothing for an allocation "
                  "that may not enter the file system" if no_fs
                  else "slab objects still in use, which their shrinkers cannot free")
        return _line(seen, points, "what fills those caches in this group (files, inodes, lookups of missing "
                     "names), and the allocations asking without __GFP_FS")
    return None


def _dirty_throttle(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if "dirty_throttle" in facts.sites(t)]
    if not hit:
        return None
    seen = f"{_who(hit, facts)} sleeping in balance_dirty_pages (dirty_throttle)"
    p = next((t["dirty_pause"] for t in hit if t.get("dirty_pause")), None)
    if p and p.get("dirty_pages") is not None and p.get("limit_pages") is not None:
        seen += f", dirty={p['dirty_pages']} pages against limit={p['limit_pages']} pages"
    share = (hit[0].get("window") or {}).get("share")
    if share is not None:
        seen += f", {share * 100:.0f}% of the window"
    return _line(seen, "writers dirty pages faster than they are written back",
                 "the dirty limits (vm.dirty_bytes, vm.dirty_ratio) against the speed of the device "
                 "behind this file system")


def _compaction(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if "compaction" in facts.sites(t)]
    if not hit:
        return None
    t = hit[0]
    order = t.get("order")
    seen = f"{_who(hit, facts)} in compaction" + (f", order={order}" if order is not None else "")
    points = "memory fragmentation" + (": no free block of that order" if order else "")
    return _line(seen, points, "fragmentation (/proc/buddyinfo, /proc/pagetypeinfo) and who asks for "
                 "high-order allocations (its stack)")


def _out_of_memory(block: Block, facts: Facts) -> str | None:
    hit = [t for t in block["tasks"] if facts.sites(t) & GLOBAL_RECLAIM_SITES]
    zones = [z for z in (block.get("context") or {}).get("zones") or () if z.get("under_watermark") == "min"]
    if not hit or not zones:
        return None
    z = zones[0]
    more = f" (and {len(zones) - 1} more zone(s))" if len(zones) > 1 else ""
    return _line(f"{_who(hit, facts)} in global reclaim ({hit[0].get('site')}), "
                 f"zone node{z.get('node')}/{z.get('zone')} free={z.get('free_pages')} pages "
                 f"under its min watermark {z.get('min_pages')}{more}",
                 "the machine is out of memory",
                 "what uses the memory (largest processes, page cache, slab) and the OOM killer's choices")


RULES: tuple[tuple[str, Callable[[Block, Facts], str | None]], ...] = (
    (MEMCG_OOM_OFF, _memcg_oom_off),
    (STUCK_VICTIM, _stuck_victim),
    (LIVELOCK, _livelock),
    (SHRINKERS, _shrinkers),
    (MEMCG_HIGH, _memcg_high),
    (WRITEBACK, _writeback),
    (NO_FS_IO, _no_fs_io),
    (DIRTY_THROTTLE, _dirty_throttle),
    (COMPACTION, _compaction),
    (OUT_OF_MEMORY, _out_of_memory),
)


class Facts:
    """The tasks of a block the rules read: one of each kind of facts, the first
    in the block's order, and how many tasks each stands for. 10,000 threads of
    one program stuck in one place have one set of facts between them: the
    rules read it once, not ten times 10,000 tasks."""

    def __init__(self, tasks: Iterable[Task]) -> None:
        firsts: dict[Hashable, Task] = {}
        self._many: dict[int, int] = {}  # by the first's id: how many tasks it stands for
        for t in tasks:
            key = getattr(t, "facts_key", None)  # a record that knows which tasks share its facts
            if key is None:
                key = ("task", id(t))  # any other: its own
            first = firsts.get(key)
            if first is None:
                firsts[key] = t
                self._many[id(t)] = 1
            else:
                self._many[id(first)] += 1
        self.tasks = list(firsts.values())
        self._sites: dict[int, set[str]] = {}

    def count(self, tasks: Iterable[Task]) -> int:
        """The tasks these firsts stand for."""
        return sum(self._many[id(t)] for t in tasks)

    def sites(self, t: Task) -> set[str]:
        got = self._sites.get(id(t))
        if got is None:
            got = self._sites[id(t)] = sites_of(t)
        return got


def advise(block: Block) -> list[dict[str, str]]:
    """One {"kind", "text"} per rule whose facts the block holds, in RULES order."""
    facts = Facts(block["tasks"])
    firsts = {**block, "tasks": facts.tasks}
    out = []
    for kind, rule in RULES:
        text = rule(firsts, facts)
        if text:
            out.append({"kind": kind, "text": text})
    return out
