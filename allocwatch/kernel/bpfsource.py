# SPDX-License-Identifier: Apache-2.0
"""The one module that imports bcc: build, attach, read, drain, detach.

It compiles bpf/allocwatch.bpf.c with the -D flags the probe plan asks for,
attaches each site on its own (a site that fails lowers coverage, it never
stops the daemon), and hands decoded records to the rest of the daemon.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from allocwatch.core.host import TaskFlags
from allocwatch.core.model import ShrinkCount
from allocwatch.core.sites import GFP_UNKNOWN, HIST_SLOTS, NR_SITES, SITE_DSTATE, SITE_NONE, STAT_NAMES, Site
from allocwatch.core.wbdevice import RECLAIM_SITES, NoteJoin
from allocwatch.errors import BccMissing, BpfUnavailable, KernelHeadersMissing
from allocwatch.kernel import bpfstats, ksyms, libbpf, loader, oomcontext, schedswitch, taskiter, wire
from allocwatch.kernel.coverage import SiteStatus
from allocwatch.kernel.kernelinfo import KernelFeatures
from allocwatch.kernel.mapread import BatchUnsupported, MapReader, raw_bytes
from allocwatch.kernel.probes import (
    BALANCE_DIRTY_PAGES,
    BEGIN_STACKS_DEFINE,
    DIRTY_PAUSE_DEFINE,
    RECLAIM_PROGRESS,
    SCHED_EXIT,
    SCHED_SWITCH,
    SHRINK_SLAB_START,
    SIGNAL_GENERATE,
    WB_NOTE_DEFINE,
    Mechanism,
    SitePlan,
    Tracepoint,
    compile_defines,
    tracepoints_to_attach,
    uses_dstate,
)

BPF_SOURCE = "allocwatch.bpf.c"
T = TypeVar("T")
ITER_READ_BYTES = 1 << 15  # a read of the task iterator gives at most its seq_file's 32 KiB (bpf_seq_read)
RECENT_STACK_MAX_AGE_NS = 5_000_000_000  # a stack taken entering reclaim, shown for this long
# Every map this module reads or writes after load: opened before bcc's module
# is destroyed (a table opened later would need it).
TABLES_READ = ("waits", "dwaits", "dirty_pauses", "wb_notes", "task_acct", "shrink_acct", "task_stacks", "stacks",
               "stats", "tunables", "wait_hist", "wait_sum_ns", "sigkills")


RAW_SWITCH = "raw tracepoint"  # sched_switch_how when the raw program is attached


@dataclass(frozen=True)
class LoadOptions:
    long_wait_ns: int
    dstate_end_ns: int | None = None  # default: long_wait_ns
    begin_stacks: bool = True  # a task's stack when it enters reclaim, at most once a second
    max_waits: int = 32768
    max_dwaits: int = 32768
    ringbuf_pages: int | None = None  # default: ringbuf_pages_for(max_dwaits)
    # Keep bcc's module (its LLVM context and JIT) after attaching: to load more
    # programs afterwards (a kernel test), or in the loader process, which exits
    # right after and hands over the maps' fds the module holds.
    keep_compiler: bool = False
    # Compile and attach in a child process that hands the fds over and exits
    # (kernel/loader.py): bcc's libraries never map into this one. The daemon's way.
    loader_process: bool = False
    # Where bpf/ is for this load: "" is bpf_dir(). The daemon gives its loader
    # process its own, so both compile what the daemon's package holds.
    src_dir: str = ""
    # oomcontext.defines for the running kernel: an OOM kill's memory cgroups
    # and constraint read in the kernel (empty: read from /proc afterwards)
    oom_defines: tuple[str, ...] = ()
    oom_constraints: tuple[tuple[int, str], ...] = ()  # enum oom_constraint value -> word (with oc)
    # schedswitch.defines for the running kernel: the D-state tracking on the raw
    # sched_switch tracepoint (empty: on the classic one)
    switch_defines: tuple[str, ...] = ()
    # taskiter.defines for the running kernel: every task's state in one read
    # (empty: a block reads each task's stat file)
    iter_defines: tuple[str, ...] = ()
    iter_why_not: str = ""  # without iter_defines: why (taskiter.running_kernel_defines)


MARK_VICTIM_DEFINE = "AW_TP_MARK_VICTIM"
SEEDED_TUNABLE = 2  # tunables[2]: a seeded D sleep is open (AW_TUNABLE_SEEDED)


def bpf_dir() -> Path:
    """Where bpf/*.c and bpf/*.h are: the package's data (allocwatch/bpf, as
    installed: pyproject.toml's package-dir), or the checkout's bpf/. By path,
    not importlib.resources, which the daemon would load for this alone (0.7 MiB)."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "bpf"
    if (installed / BPF_SOURCE).is_file():
        return installed
    return package.parent / "bpf"


def source_dir(opts: LoadOptions) -> Path:
    return Path(opts.src_dir) if opts.src_dir else bpf_dir()


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError as exc:
        raise BccMissing(
            f"bcc's Python module cannot be imported ({exc}): run scripts/setup "
            "(Debian: apt-get install python3-bpfcc; use the .venv it makes)"
        ) from None
    return bcc


def check_headers(release: str) -> None:
    build = Path("/lib/modules") / release / "build"
    if not (build / "include").is_dir() and not (build / "Makefile").exists():
        raise KernelHeadersMissing(
            f"no kernel headers at {build}: install linux-headers-{release}, "
            "or run scripts/setup, which links the nearest Debian headers"
        )


# What clang says of the kernel's own headers when it compiles them for the BPF
# target, harmless and not ours to fix: x86's __noendbr (nocf_check, an
# attribute the BPF target ignores; v5.18+) and the percpu accessors' repeated
# __seg_gs qualifiers (v6.10+). Seen compiling against Debian's 6.12 headers.
QUIET_CFLAGS = ("-Wno-ignored-attributes", "-Wno-duplicate-decl-specifier")
SAID_TAIL_CHARS = 2000


@contextlib.contextmanager
def compiler_output() -> Iterator[list[str]]:
    """What bcc and clang write on fd 2 while inside, kept from the user's
    stderr; the list holds it (its last SAID_TAIL_CHARS) once the block ends."""
    import tempfile  # the loader process's alone: the daemon never compiles

    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield said
            finally:
                os.dup2(saved, 2)
                tmp.seek(0, os.SEEK_END)
                tmp.seek(max(0, tmp.tell() - SAID_TAIL_CHARS))
                said.append(tmp.read().decode("utf-8", "replace"))
    finally:
        os.close(saved)


def said_tail(said: list[str]) -> str:
    text = " ".join(line.strip() for line in "".join(said).splitlines() if line.strip())
    return f"; the compiler said: ...{text[-SAID_TAIL_CHARS // 2:]}" if text else ""


PAGE_BYTES = 4096


def ringbuf_pages_for(events: int) -> int:
    """Ring buffer pages (a power of two) for `events` records at once: a map's
    worth of sleeps may end together (10,000 tasks killed at once lost 3,146 of
    their ends in the 1 MiB ring this replaced). Each record is wire.Event."""
    need = max(1, -(-events * ctypes.sizeof(wire.Event) // PAGE_BYTES))
    return 1 << (need - 1).bit_length()


def cflags_for(
    plans: list[SitePlan], features: KernelFeatures, opts: LoadOptions, every_kprobe: bool = False
) -> list[str]:
    """The load's tunables, then the catalog's -D flags for these plans (probes.compile_defines)."""
    flags = [
        *QUIET_CFLAGS,
        f"-I{source_dir(opts)}",
        f"-DLONG_WAIT_NS={opts.long_wait_ns}ULL",
        f"-DDSTATE_END_NS={min(opts.dstate_end_ns or opts.long_wait_ns, opts.long_wait_ns)}ULL",
        f"-DMAX_WAITS={opts.max_waits}",
        f"-DMAX_DWAITS={opts.max_dwaits}",
        f"-DRINGBUF_PAGES={opts.ringbuf_pages or ringbuf_pages_for(opts.max_dwaits)}",
    ]
    catalog = compile_defines(plans, features, opts.begin_stacks, every_kprobe)
    oom = list(opts.oom_defines) if MARK_VICTIM_DEFINE in catalog else []  # it joins oom:mark_victim's kills
    switch = list(opts.switch_defines) if uses_dstate(plans) else []  # only where sched_switch is attached
    return flags + [f"-D{d}" for d in catalog + oom + switch + list(opts.iter_defines)]


class BpfSource:
    """Loaded BPF programs and their maps. Use as a context manager."""

    def __init__(self, plans: list[SitePlan], features: KernelFeatures, opts: LoadOptions) -> None:
        self.plans = plans
        self.features = features
        self.opts = opts
        self._bcc: Any = None  # bcc's module, imported by an in-process load only
        self._bpf: Any = None  # bcc's BPF object, in-process only
        # The maps by name (bytes): bcc's tables in-process, libbpf.FdTable ones when handed over
        self._tables: Any = None
        self._consume: Callable[[], None] = lambda: None  # the ring buffer's records into _pending
        self._iter_create: Callable[[int], int] = libbpf.iter_create  # bcc's own where it made the link
        self._ring: libbpf.RingBuffer | None = None
        self._handed: list[int] = []  # every fd handed over: closed at close()
        self._handed_links: list[int] = []  # of them, the attachments (closed first, side by side)
        self._handed_progs: dict[str, int] = {}
        self._dirty_pauses = False  # the balance_dirty_pages handler notes each pause
        self._wb_notes = False  # the writeback wait handlers note the device
        self._wb_join = NoteJoin(wire.HINT_MAX_AGE_NS)
        self._begin_stacks = False  # the reclaim begin handlers take stacks (the maps exist)
        self._pending: list[bytes] = []
        self._attached_tps: set[str] = set()
        self.status: list[SiteStatus] = []
        self.load_seconds = 0.0
        self.kill_tracking = False
        self._stats_fd: int | None = None
        # The maps read whole every scan, each entry decoded only when its bytes
        # change: a task stalled for minutes is the same entry every scan.
        self._readers: dict[str, MapReader[Any]] = {}
        self._ksyms = ksyms.KernelSymbols()  # kernel addresses named (kernel/ksyms.py), not by bcc
        self._dup_fds: list[int] = []  # map fds kept past the module (_free_compiler)
        self.idle_given_back = 0  # map entries with no wait open deleted (_give_back_idle)
        self._dwait_entries = 0  # in the D-state map at the last read, open or not
        # open sleeps the raw sched_switch had counted in their slot, deleted from user space:
        # each leaves its slot's count one too high for good (see let_go_dwait)
        self.counts_left = 0
        # How an OOM kill's cgroups are read in the kernel (raw oom:mark_victim), or "off: why not"
        self.oom_context_how = ""
        self._oom_contexts: dict[tuple[int, int], wire.OomContext] = {}
        # per tid: (account, shrinker counts, the two joined), reused while both are unchanged
        self._with_shrinks: dict[int, tuple[wire.Acct, tuple[ShrinkCount, ...], wire.Acct]] = {}
        # the last reads of task_acct and shrink_acct, and the accounts made of them
        self._accts_of: tuple[list[wire.Acct] | None, list[Any] | None, dict[int, wire.Acct]] = (None, None, {})
        self._raw_switch = False  # aw_rtp_sched_switch was compiled: sched_switch is tried raw first
        # How sched_switch is attached: "raw tracepoint", "classic tracepoint (why not raw)", or "" (not)
        self.sched_switch_how = ""
        # Sleeps seed_dwait wrote and the kernel has not ended yet (tid -> start_ns): while
        # there are any, the raw sched_switch looks up every task switched in.
        self._seeded: dict[int, int] = {}
        self._iter_link: int | None = None  # the task iterator's link (taskiter.py), read by task_states
        # How a block reads tasks' states: "task iterator", or "/proc (why not the iterator)"
        self.task_states_how = ""

    # -- load and attach --------------------------------------------------

    def load(self, kprobes: bool = False) -> list[SiteStatus]:
        """Compile, load and attach: in a loader process with opts.loader_process,
        else here. `kprobes`: compile every kprobe pair, chosen or not, for
        load_kprobe_programs (a test); the plans' own are compiled anyway."""
        t0 = time.monotonic()
        if self.opts.loader_process and not self.opts.keep_compiler:
            # the child keeps bcc's module until it exits: no time spent freeing it
            libbpf.lib()  # what the reads need, before a compile of seconds in the child
            child_opts = dataclasses.replace(self.opts, loader_process=False, keep_compiler=True,
                                             src_dir=str(source_dir(self.opts)))
            handover, fds = loader.load_in_child((self.plans, self.features, child_opts, kprobes))
            self._adopt(handover, fds)
            self.load_seconds = time.monotonic() - t0
            return self.status
        self._bcc = import_bcc()
        check_headers(self.features.release)
        flags = cflags_for(self.plans, self.features, self.opts, every_kprobe=kprobes)
        src = str(source_dir(self.opts) / BPF_SOURCE).encode()
        self._dirty_pauses = f"-D{DIRTY_PAUSE_DEFINE}" in flags
        self._wb_notes = f"-D{WB_NOTE_DEFINE}" in flags
        self._begin_stacks = f"-D{BEGIN_STACKS_DEFINE}" in flags
        self._raw_switch = f"-D{schedswitch.DEFINE}" in flags
        self.sched_switch_how = ""
        failed: Exception | None = None
        with compiler_output() as said:
            try:
                self._bpf = self._bcc.BPF(src_file=src, cflags=flags)
            except Exception as exc:  # bcc raises bare Exception for everything
                failed = exc
        if failed is not None:
            raise BpfUnavailable(f"the BPF programs did not compile or load: {failed}{said_tail(said)}") from None
        self._bpf[b"events"].open_ring_buffer(self._on_event)
        self._tables = self._bpf
        self._consume = lambda: self._bpf.ring_buffer_consume()
        self._readers = {}  # readers hold this load's map fds
        try:  # without it, maps would keep the waits of tasks that exited
            self._attach_tp(SCHED_EXIT)
        except Exception as exc:
            raise BpfUnavailable(f"cannot attach {SCHED_EXIT.name}: {exc}") from None
        self.kill_tracking = False
        if features_have(self.features, SIGNAL_GENERATE):
            try:  # optional: without it, a killed task's wait reads "woke"
                self.kill_tracking = self._attach_tp(SIGNAL_GENERATE)
            except Exception:
                pass
        self.set_tunables(self.opts.long_wait_ns, self.opts.dstate_end_ns or self.opts.long_wait_ns)
        with compiler_output():  # bcc prints its own line for an attach that fails; the status says why
            # before oom:mark_victim's own program, so that a kill's context comes first in the ring
            self.oom_context_how = self._attach_oom_context(flags)
            self.status = [self._attach_site(p) for p in self.plans]
            self.task_states_how = self._attach_task_iter(flags)
        if not self.opts.keep_compiler:
            self._free_compiler()
        self.load_seconds = time.monotonic() - t0
        return self.status

    def _free_compiler(self) -> None:
        """Destroy bcc's module once all is attached. bcc keeps its LLVM context,
        the JIT engine and the native code of its table printers for as long as
        the module lives (most of a 40 MB idle RssAnon, measured on 6.18), and
        nothing after load needs them. The module owns the maps' fds, so every
        table this source reads is opened first and its fd duplicated; programs
        stay attached through their perf events and links, which hold them."""
        module = getattr(self._bpf, "module", None)
        if not module:
            return
        for name in TABLES_READ:
            try:
                table = self._bpf[name.encode()]  # made now, while the module can describe it
            except KeyError:  # a map this build leaves out (its -D flag is off)
                continue
            table.map_fd = os.dup(table.map_fd)
            self._dup_fds.append(table.map_fd)
        self._bcc.libbcc.lib.bpf_module_destroy(module)
        self._bpf.module = None

    # -- the loader process's handover (kernel/loader.py) -----------------

    # What a load decides besides the fds, handed over as it is
    HANDED_STATE = ("status", "kill_tracking", "oom_context_how", "sched_switch_how", "task_states_how",
                    "_attached_tps", "_raw_switch", "_dirty_pauses", "_wb_notes", "_begin_stacks")

    def handover(self) -> tuple[loader.Handover, list[int]]:
        """In the loader process, after load: the maps this source reads, the
        programs (their run-time stats), the attachments and the task
        iterator's link, with their fds in that order."""
        maps = {}
        for name in (*TABLES_READ, "events"):
            try:
                maps[name] = self._bpf[name.encode()].map_fd
            except KeyError:  # a map this build leaves out (its -D flag is off)
                continue
        progs = self._program_fds()
        links = [*self._bpf.tracepoint_fds.values(), *self._bpf.raw_tracepoint_fds.values()]
        links += [fd for by_fn in self._bpf.kprobe_fds.values() for fd in by_fn.values()]
        iter_link = [self._iter_link] if self._iter_link is not None else []
        handover = loader.Handover(maps=tuple(maps), programs=tuple(progs), attachments=len(links),
                                   iter_link=bool(iter_link),
                                   state={k: getattr(self, k) for k in self.HANDED_STATE})
        return handover, [*maps.values(), *progs.values(), *links, *iter_link]

    def _adopt(self, handover: loader.Handover, fds: list[int]) -> None:
        """In the daemon: take over what the loader process made. The maps are
        read by wire.py's layouts, each checked against the kernel's sizes."""
        self._handed = list(fds)
        want = len(handover.maps) + len(handover.programs) + handover.attachments + handover.iter_link
        if len(fds) != want:
            self.close()
            raise BpfUnavailable(f"the loader process handed over {len(fds)} fds for {want}")
        it = iter(fds)
        maps = {name: next(it) for name in handover.maps}
        self._handed_progs = {name: next(it) for name in handover.programs}
        self._handed_links = [next(it) for _ in range(handover.attachments)]
        self._iter_link = next(it) if handover.iter_link else None
        for k, v in handover.state.items():
            setattr(self, k, v)
        try:
            self._tables = {name.encode(): libbpf.FdTable(fd, *wire.MAP_LAYOUTS[name])
                            for name, fd in maps.items() if name != "events"}
            self._ring = libbpf.RingBuffer(maps["events"], self._on_record)
        except (OSError, ValueError, KeyError) as exc:
            self.close()
            raise BpfUnavailable(f"cannot read the maps the loader process handed over: {exc}") from None
        self._consume = self._ring.consume
        self._readers = {}

    def _program_fds(self) -> dict[str, int]:
        """Each loaded program's fd by name: bcc's in-process, else those handed over."""
        if self._bpf is not None:
            return {(n.decode() if isinstance(n, bytes) else str(n)): fn.fd for n, fn in self._bpf.funcs.items()}
        return dict(self._handed_progs)

    def load_kprobe_programs(self) -> list[str]:
        """Load (verifier only, no attach) every kprobe program: for tests."""
        names = []
        for p in self.plans:
            for opt in p.entry.options:
                if opt.mechanism is Mechanism.KPROBE_PAIR:
                    for stem in ("aw_kp_enter_", "aw_kp_return_"):
                        self._bpf.load_func((stem + opt.kprobe_fn).encode(), self._bcc.BPF.KPROBE)
                        names.append(stem + opt.kprobe_fn)
        return names

    def _attach_oom_context(self, flags: list[str]) -> str:
        """Attach the raw oom:mark_victim program if it was compiled; how it reads a
        kill (`allocwatch probes` says it), or "off: " and why not."""
        if f"-D{oomcontext.DEFINE}" not in flags:
            return "off: not compiled (no oom:mark_victim, or no BTF offsets)"
        try:
            self._bpf.attach_raw_tracepoint(tp=oomcontext.RAW_TP.encode(), fn_name=oomcontext.FN.encode())
        except Exception as exc:  # bcc raises bare Exception
            return f"off: raw tracepoint {oomcontext.RAW_TP}: {exc}"
        how = "raw tracepoint"
        if f"-D{oomcontext.OC_DEFINE}" in flags:
            fn = oomcontext.OC_FUNCTION.encode()
            try:  # without it, the constraint still comes from the invoker's stack
                self._bpf.attach_kretprobe(event=fn, fn_name=oomcontext.OC_RETURN_FN.encode())
                self._bpf.attach_kprobe(event=fn, fn_name=oomcontext.OC_ENTRY_FN.encode())
                return f"{how}, with {oomcontext.OC_FUNCTION}'s oom_control (kprobe pair)"
            except Exception:
                _quietly(self._bpf.detach_kretprobe, fn)
        return f"{how}; the constraint from the invoker's stack ({oomcontext.OC_FUNCTION} takes no kprobe pair here)"

    def _attach_task_iter(self, flags: list[str]) -> str:
        """Load the task iterator and make its link, if it was compiled: how a
        block reads tasks' states (`allocwatch probes` says it)."""
        if f"-D{taskiter.DEFINE}" not in flags:
            return f"/proc (no task iterator: {self.opts.iter_why_not or 'not compiled'})"
        lib = self._bcc.libbcc.lib
        try:  # bcc has the C calls, not Python ones: declared here
            lib.bcc_iter_attach.restype = ctypes.c_int
            lib.bcc_iter_attach.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
            lib.bcc_iter_create.restype = ctypes.c_int
            lib.bcc_iter_create.argtypes = [ctypes.c_int]
            fn = self._bpf.load_func(taskiter.FN.encode(), self._bcc.BPF.TRACING)
            link = lib.bcc_iter_attach(fn.fd, None, 0)
        except Exception as exc:  # bcc raises bare Exception; an old bcc lacks the calls
            said = str(exc).splitlines()
            return f"/proc (the task iterator did not load: {said[0] if said else type(exc).__name__})"
        if link < 0:
            return f"/proc (the task iterator did not attach: {os.strerror(-link)})"
        self._iter_link = link
        self._iter_create = lib.bcc_iter_create
        return "task iterator"

    def task_states(self) -> dict[int, tuple[str, TaskFlags]] | None:
        """Every task's state letter and flags, by tid, in one read of the task
        iterator; a task it cannot say exactly is not in it. None without the
        iterator, or when this read fails: then each task's stat is read."""
        data = self.read_task_iter()
        return taskiter.decode(data) if data is not None else None

    def read_task_iter(self) -> bytes | None:
        """The task iterator's records (wire.TaskNow), one a task of this pid
        namespace; None without the iterator or when the read fails."""
        if self._iter_link is None:
            return None
        fd = self._iter_create(self._iter_link)
        if fd < 0:
            return None
        chunks = []
        try:
            while chunk := os.read(fd, ITER_READ_BYTES):
                chunks.append(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"".join(chunks)

    def _attach_tp(self, tp: Tracepoint) -> bool:
        """Attach once per tracepoint; True if this call attached it."""
        if tp.name in self._attached_tps:
            return False
        if tp == SCHED_SWITCH:
            self._attach_sched_switch()
        else:
            self._bpf.attach_tracepoint(tp=tp.name.encode(), fn_name=tp.fn.encode())
        self._attached_tps.add(tp.name)
        return True

    def _attach_sched_switch(self) -> None:
        """The raw tracepoint where its program was compiled (BTF gave the
        offsets), the classic one where not or where the raw one fails to attach."""
        why = "no BTF offsets for the raw tracepoint"
        if self._raw_switch:
            try:
                self._bpf.attach_raw_tracepoint(tp=schedswitch.RAW_TP.encode(), fn_name=schedswitch.FN.encode())
                self.sched_switch_how = RAW_SWITCH
                return
            except Exception as exc:  # bcc raises bare Exception
                said = str(exc).splitlines()
                why = f"raw tracepoint {schedswitch.RAW_TP}: {said[0] if said else type(exc).__name__}"
        self._bpf.attach_tracepoint(tp=SCHED_SWITCH.name.encode(), fn_name=SCHED_SWITCH.fn.encode())
        self.sched_switch_how = f"classic tracepoint ({why})"

    def _detach_tp(self, tp: Tracepoint) -> None:
        if tp == SCHED_SWITCH and self.sched_switch_how == RAW_SWITCH:
            self._bpf.detach_raw_tracepoint(tp=schedswitch.RAW_TP.encode())
        else:
            self._bpf.detach_tracepoint(tp=tp.name.encode())
        if tp == SCHED_SWITCH:
            self.sched_switch_how = ""
        self._attached_tps.discard(tp.name)

    def _attach_site(self, plan: SitePlan) -> SiteStatus:
        """Attach the chosen option; if that fails, the next one that this
        kernel supports. The status carries the plan as it ended up."""
        in_kernel = plan.entry.in_kernel(self.features.version)
        while plan.chosen is not None:
            try:
                return SiteStatus(plan, True, self._attach_option(plan), in_kernel=in_kernel)
            except Exception as exc:  # bcc raises bare Exception on attach failure
                plan = plan.failed_over(f"attach failed: {str(exc).splitlines()[0]}")
        return SiteStatus(plan, False, "", in_kernel=in_kernel)

    def _attach_option(self, plan: SitePlan) -> str:
        opt = plan.chosen
        assert opt is not None
        if opt.mechanism is Mechanism.KPROBE_PAIR:
            return self._attach_kprobe_pair(plan, opt.kprobe_fn)
        tps = tracepoints_to_attach(opt, self.features)
        new = []
        try:
            # Ends before begins: a begin seen before its end was attached would
            # open a wait that never ends (a false stall, seen on 6.12).
            for tp in reversed(tps):
                if self._attach_tp(tp):
                    new.append(tp)
        except Exception:
            # A begin without its end would open waits that never end.
            for tp in new:
                self._detach_tp(tp)
            raise
        return " + ".join(tp.name for tp in tps)

    def _attach_kprobe_pair(self, plan: SitePlan, fn: str) -> str:
        """The return probe first: a kretprobe is armed at each entry after it is
        registered, so every entry the entry probe sees then has its return. The
        other way round, a task entering between the two opened a wait that never
        ended: the daemon's own false stall at memcg_high_throttle on 6.12. A task
        already inside when the return probe came returns unmatched (counted)."""
        sym = (plan.kprobe_target(self.features) or "").encode()
        self._bpf.attach_kretprobe(event=sym, fn_name=f"aw_kp_return_{fn}".encode())
        try:
            self._bpf.attach_kprobe(event=sym, fn_name=f"aw_kp_enter_{fn}".encode())
        except Exception:
            # A return without its entry is harmless, but the site is not watched.
            self._bpf.detach_kretprobe(event=sym)
            raise
        return sym.decode()

    @property
    def effective_plans(self) -> list[SitePlan]:
        """The plans as attached (after any fail-over), for the daemon."""
        return [st.plan for st in self.status]

    # -- read -------------------------------------------------------------

    def _on_event(self, _ctx: Any, data: Any, size: int) -> None:
        self._pending.append(ctypes.string_at(data, size))

    def _on_record(self, record: bytes) -> None:
        self._pending.append(record)  # not a bound append: drain() swaps the list

    def _reader(self, name: str, decode: Callable[[Any, Any], T]) -> MapReader[T]:
        """The map's reader, made at its first read: `decode(key, value)` gets ctypes objects."""
        reader = self._readers.get(name)
        if reader is None:
            table = self._tables[name.encode()]
            key_t, leaf_t = table.Key, table.Leaf
            ks, vs = ctypes.sizeof(key_t), ctypes.sizeof(leaf_t)
            reader = MapReader(table.map_fd, ks, vs, table.max_entries, libbpf.lookup_batch,
                               lambda k, v: decode(key_t.from_buffer_copy(k), leaf_t.from_buffer_copy(v)))
            self._readers[name] = reader
        return reader

    def _read_map(self, name: str, decode: Callable[[Any, Any], T]) -> list[T]:
        reader = self._reader(name, decode)
        try:
            return reader.read()
        except BatchUnsupported:  # before v5.6: the map's own walk, one syscall an entry
            table = self._tables[name.encode()]
            ks = ctypes.sizeof(table.Key)
            reader.fall_back(lambda: ((raw_bytes(k, ks), raw_bytes(v, 0)) for k, v in table.items()))
            return reader.read()

    def inflight(self) -> list[wire.InflightWait]:
        """All waits in flight now: pair-timed ones, then D-state sleeps (a
        dirty-throttle sleep with the pause balance_dirty_pages chose for it)."""
        progress = RECLAIM_PROGRESS.name in self._attached_tps
        # start_ns 0: the task's entry, no wait open: one marker for them all (their
        # keys are the reader's: 10,000 threads that once waited keep an entry each)
        entries = self._read_map("waits", lambda k, v: wire.decode_inflight(k, v, progress) if v.start_ns
                                 else _IDLE)
        out: list[wire.InflightWait] = [w for w in entries if w is not _IDLE]
        if len(entries) - len(out) > self.opts.max_waits // 2:
            key = self._tables[b"waits"].Key
            self._give_back_idle("waits", [key.from_buffer_copy(k) for k in self._readers["waits"].keys_of(_IDLE)])
        # A row is the sleep; with its value for a dirty-throttle sleep, whose pause
        # note may change its decoding; the tid alone for an entry with no sleep open.
        every = self._read_map("dwaits", lambda k, v: _dwait_row(_int(k), v))
        self._dwait_entries = len(every)
        sleeps = [e for e in every if not isinstance(e, int)]
        if self._seeded:
            self._forget_seeded_ended({w.tid: w.start_ns for w in map(_sleep_of, sleeps)})
        if len(every) - len(sleeps) > self.opts.max_dwaits // 2:
            key = self._tables[b"dwaits"].Key
            self._give_back_idle("dwaits", [key(e) for e in every if isinstance(e, int)])
        if any(isinstance(e, _DirtySleep) for e in sleeps):
            pauses = self._dirty_pause_values()  # a pause note changes the decoding
            out += [(wire.decode_dwait(e.wait.tid, e.value, SITE_DSTATE, pauses[e.wait.tid])
                     if e.wait.tid in pauses else e.wait) if isinstance(e, _DirtySleep) else e
                    for e in sleeps]
        else:
            out += cast(list[wire.InflightWait], sleeps)
        return self._with_writeback(out)

    def _with_writeback(self, waits: list[wire.InflightWait]) -> list[wire.InflightWait]:
        """Writeback sleeps and reclaim waits with the device the task last waited on
        (core/wbdevice.py joins them); the notes are read only when one may use them."""
        if not self._wb_notes or not any(
                w.site_hint == Site.WRITEBACK_WAIT if w.site == SITE_DSTATE else w.site in RECLAIM_SITES
                for w in waits):
            return waits
        notes = dict(self._read_map("wb_notes", lambda k, v: (_int(k), wire.decode_wb_note(v))))
        return self._wb_join.join(waits, notes)

    def _give_back_idle(self, name: str, keys: list[Any]) -> None:
        """Delete entries with no wait open once they fill half the map: each task
        keeps its entry for a site (and one for D sleeps) from its first wait there
        to its exit, and a host with many threads that once waited would fill the
        map. A wait that begins in one just as it goes is lost (its end reads
        unmatched)."""
        table = self._tables[name.encode()]
        for key in keys:
            try:
                del table[key]
            except KeyError:
                pass
        self.idle_given_back += len(keys)

    def _dirty_pause_values(self) -> dict[int, wire.DirtyPauseValue]:
        if not self._dirty_pauses or BALANCE_DIRTY_PAGES not in self._attached_tps:
            return {}
        return dict(self._read_map("dirty_pauses", lambda k, v: (_int(k), v)))

    def task_accounts(self) -> dict[int, wire.Acct]:
        """Per task: cumulative completed waits per site and reclaim passes, and
        the shrinkers its reclaim waits called."""
        read = self._read_map("task_acct", lambda k, v: wire.decode_acct(_int(k), v))
        shrink_rows = (self._read_map("shrink_acct", lambda k, v: (_int(k), wire.decode_shrinks(v)))
                       if SHRINK_SLAB_START.name in self._attached_tps else None)
        # the very lists of the last reads (nothing changed: kernel/mapread.py) give the very dict
        # (10,000 stuck tasks: a dict of 10,000 made again every scan otherwise)
        if self._accts_of[0] is read and self._accts_of[1] is shrink_rows:
            return self._accts_of[2]
        accts = {a.tid: a for a in read}
        joined = {}
        for tid, counts in shrink_rows or ():
            a = accts.get(tid)
            if a is None:
                continue
            last = self._with_shrinks.get(tid)
            # both reads unchanged give the very object joined last time (kernel/mapread.py)
            if last is None or last[0] is not a or last[1] is not counts:
                last = (a, counts, dataclasses.replace(a, shrinkers=counts))
            joined[tid] = last
            accts[tid] = last[2]
        self._with_shrinks = joined
        self._accts_of = (read, shrink_rows, accts)
        return accts

    def kernel_names_how(self) -> str:
        """How a finding's shrinkers and a stack taken at reclaim entry are named
        (kernel/ksyms.py `KernelSymbols.how`); reads /proc/kallsyms if not yet read."""
        return self._ksyms.how()

    def ksym(self, addr: int) -> str:
        """The kernel function at `addr`, without its offset ("super_cache_scan")."""
        if self._tables is None:
            return f"{addr:#x}"
        return self._ksyms.name(addr)

    def recent_stack(self, tid: int) -> list[str] | None:
        """The task's kernel stack when it last entered reclaim (at most a second
        stale when it keeps entering), symbolized; None when none was taken."""
        if self._tables is None or not self._begin_stacks:
            return None
        try:
            table = self._tables[b"task_stacks"]
            seen = table[table.Key(tid)]
            if seen.stack_id < 0 or time.monotonic_ns() - seen.time_ns > RECENT_STACK_MAX_AGE_NS:
                return None  # none taken, or too old to say anything about this wait
            addrs = list(self._tables[b"stacks"].walk(seen.stack_id))
        except Exception:  # a missing entry: bcc raises KeyError, or a bare Exception
            return None
        return [self._ksyms.name(a) for a in addrs]

    def sigkill_ns(self, tid: int) -> int | None:
        """When a SIGKILL was last sent to this task (a process-wide one: to its
        leader's tid), from signal:signal_generate; None when none is remembered."""
        if self._tables is None:
            return None
        try:
            table = self._tables[b"sigkills"]
            return int(table[table.Key(tid)].value)
        except Exception:  # a missing entry: bcc raises KeyError, or a bare Exception
            return None

    def seed_dwait(self, tid: int, pid: int, comm: str, start_ns: int) -> None:
        """Track a task that was already asleep in D before the programs were
        attached (it will not switch out again until it wakes)."""
        value = wire.WaitValue(
            start_ns=start_ns,
            gfp=GFP_UNKNOWN,
            pid=pid,
            order=-1,
            depth=0,
            site_hint=SITE_NONE,
            comm=wire.encode_comm(comm),
        )
        self._set_seeded(True)  # first: the sleep must not end unseen
        self._seeded[tid] = start_ns
        table = self._tables[b"dwaits"]
        table[table.Key(tid)] = value

    def drop_dwait(self, tid: int, start_ns: int) -> None:
        """Undo `seed_dwait`, or give back a sleep's entry, unless the kernel has
        since recorded a new sleep."""
        table = self._tables[b"dwaits"]
        try:
            value = table[table.Key(tid)]
            if value.start_ns == start_ns:
                del table[table.Key(tid)]
                if value.depth and self.sched_switch_how == RAW_SWITCH:
                    self.counts_left += 1
        except KeyError:
            pass
        if self._seeded.get(tid) == start_ns:
            del self._seeded[tid]
            if not self._seeded:
                self._set_seeded(False)

    def let_go_dwait(self, tid: int, start_ns: int) -> bool:
        """A sleep named "not a memory wait": given back (True) while the D-state map
        is at least half full, or where nothing counts sleepers (the classic
        sched_switch); else left for the kernel to close when the task wakes (False).
        The raw sched_switch counts a sleep in its task's slot until it ends, and
        only the kernel can uncount it: deleting it open leaves that slot's count
        one too high for good, and every switch-in of the slot then takes the long
        way (reading the pid, a hash lookup). A parked task keeps its entry while
        it sleeps, as it keeps a closed one between sleeps; crowding brings back
        the deletion, so parked tasks cannot fill the map (counts_left says what
        that cost)."""
        if self.sched_switch_how == RAW_SWITCH and self._dwait_entries < self.opts.max_dwaits // 2:
            return False
        self.drop_dwait(tid, start_ns)
        return True

    def _forget_seeded_ended(self, open_now: dict[int, int]) -> None:
        """Seeded sleeps no longer open as seeded (`open_now`: tid -> start_ns of the
        sleeps open) are forgotten; with none left, the raw sched_switch goes back to
        looking up only the tasks its own slots count."""
        self._seeded = {tid: ns for tid, ns in self._seeded.items() if open_now.get(tid) == ns}
        if not self._seeded:
            self._set_seeded(False)

    def _set_seeded(self, on: bool) -> None:
        if self._raw_switch:
            table = self._tables[b"tunables"]
            table[table.Key(SEEDED_TUNABLE)] = table.Leaf(1 if on else 0)

    def drain(self) -> list[wire.WaitEnd | wire.OomKill]:
        """Ended waits and OOM kills since the last drain, each kill with its
        memory cgroups when the OOM-context program runs."""
        self._consume()
        raw, self._pending = self._pending, []
        words = dict(self.opts.oom_constraints)
        events = [ev for r in raw if (ev := wire.decode_event(r) or wire.decode_oom_context(r, words)) is not None]
        held, self._oom_contexts = self._oom_contexts, {}
        out = wire.join_oom_contexts(events, held)
        self._oom_contexts = {k: v for k, v in held.items() if v in events}  # a drain's leftovers, kept once
        return out

    def set_tunables(self, long_wait_ns: int, dstate_end_ns: int) -> None:
        """The cut-offs the handlers read (a reload lowers them without a new load)."""
        table = self._tables[b"tunables"]
        table[table.Key(0)] = table.Leaf(long_wait_ns)
        table[table.Key(1)] = table.Leaf(min(dstate_end_ns, long_wait_ns))

    def enable_program_stats(self) -> None:
        """Count run time per program for as long as this source lives
        (BPF_ENABLE_STATS: the kernel switches it off when the fd closes)."""
        if self._stats_fd is None:
            self._stats_fd = bpfstats.enable()

    def program_stats(self) -> dict[str, tuple[int, int]]:
        """Per loaded program: (run_time_ns, run_cnt); empty while the kernel counts nothing."""
        if self._tables is None or (self._stats_fd is None and not bpfstats.sysctl_on()):
            return {}
        out = {}
        for name, fd in self._program_fds().items():
            try:
                out[name] = bpfstats.prog_stats(fd)
            except OSError:
                continue
        return out

    def stats(self) -> dict[str, int]:
        table = self._tables[b"stats"]
        return {name: int(table[table.Key(i)].value) for i, name in enumerate(STAT_NAMES)}

    def histograms(self) -> dict[Site, tuple[list[int], int]]:
        """Completed pair-timed and after-sleep waits: per site, slot counts and sum."""
        counts = [0] * (NR_SITES * HIST_SLOTS)
        # one batch call each (bcc's walk of an array is a syscall per slot: 608 a scan)
        for idx, n in self._read_map("wait_hist", lambda k, v: (_int(k), _int(v))):
            if idx < len(counts):
                counts[idx] = n
        sums = dict(self._read_map("wait_sum_ns", lambda k, v: (_int(k), _int(v))))
        out = {}
        for site in Site:
            slots = counts[site * HIST_SLOTS : (site + 1) * HIST_SLOTS]
            total_ns = sums.get(int(site), 0)
            if any(slots):
                out[site] = (slots, total_ns)
        return out

    # -- stop -------------------------------------------------------------

    @property
    def map_readers(self) -> dict[str, MapReader[Any]]:
        """The readers of the maps read so far, by map name (bench/memory.py counts what they hold)."""
        return dict(self._readers)

    def close(self) -> None:
        """Detach everything, then free the maps. Each tracepoint detach waits
        for the kernel (about 75 ms each here, 1.5 s for 20 in a row), so they
        run side by side: a stop takes under a second, as SIGTERM promises."""
        if self._handed:
            self._close_handed()
        if self._bpf is not None:
            jobs = [(self._bpf.detach_tracepoint, tp) for tp in list(self._bpf.tracepoint_fds)]
            jobs += [(self._bpf.detach_kprobe_event, ev) for ev in list(getattr(self._bpf, "kprobe_fds", {}))]
            _side_by_side(jobs)
            self._bpf.cleanup()  # whatever is left, and the maps
            self._bpf = None
            for fd in self._dup_fds:
                os.close(fd)
            self._dup_fds = []
            if self._iter_link is not None:
                os.close(self._iter_link)
        self._iter_link = None
        self._tables = None
        self._consume = lambda: None
        self._readers = {}
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None

    def _close_handed(self) -> None:
        """Close what the loader process handed over: the attachments first and
        side by side (each detach waits for the kernel), then maps and programs
        (the task iterator's link among them)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        _side_by_side([(os.close, fd) for fd in self._handed_links])
        links = set(self._handed_links)
        for fd in self._handed:
            if fd not in links:
                _quietly(os.close, fd)
        self._handed, self._handed_links, self._handed_progs = [], [], {}
        self._iter_link = None

    def __enter__(self) -> BpfSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loader_main(fd: int) -> None:
    """The loader process (kernel/loader.py): load as the daemon asks on socket
    `fd`, hand over what was made, and leave without bcc's clean-up."""
    import signal
    import socket

    # Ignored (loader.STOP_SIGNALS): the daemon spawned this process with them
    # blocked, so one sent before this line is dropped here, not fatal.
    for sig in loader.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, loader.STOP_SIGNALS)
    sock = socket.socket(fileno=fd)
    try:
        plans, features, opts, kprobes = loader.read_request(sock)
        source = BpfSource(plans, features, opts)
        try:
            source.load(kprobes)
            handover, fds = source.handover()
        except (BccMissing, BpfUnavailable, KernelHeadersMissing) as exc:
            loader.send_error(sock, exc)
            loader.leave(0)
        loader.send_handover(sock, handover, fds)
    except BaseException as exc:  # said on stderr; the daemon reads the socket's end as a failure
        print(f"allocwatch loader: {type(exc).__name__}: {exc}", file=sys.stderr)
        loader.leave(1)
    loader.leave(0)


def _side_by_side(jobs: list[tuple[Any, Any]]) -> None:
    """fn(arg) for each job, each in a thread of its own, waited for (10 s each at most)."""
    threads = [threading.Thread(target=_quietly, args=job, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)


def _quietly(fn: Any, arg: Any) -> None:
    try:
        fn(arg)
    except Exception:  # cleanup() retries what is left
        pass


def features_have(features: KernelFeatures, tp: Tracepoint) -> bool:
    return features.has_tracepoint(tp.name, tp.fields)


_IDLE: Any = object()  # the waits map's entry of a task with no wait open there (inflight)


@dataclass(frozen=True, slots=True)
class _DirtySleep:
    """A dirty-throttle sleep read from the D-state map, with its value: the
    pause note balance_dirty_pages left may change how it decodes."""

    value: wire.WaitValue
    wait: wire.InflightWait


def _dwait_row(tid: int, v: wire.WaitValue) -> wire.InflightWait | _DirtySleep | int:
    """The sleep (no tuple a row: 10,000 sleeps held 10,000 of 64 bytes); a
    dirty-throttle one with its value; the tid alone for the task's entry with
    no sleep open."""
    if not v.start_ns:
        return tid
    w = wire.decode_dwait(tid, v, SITE_DSTATE)
    return _DirtySleep(v, w) if v.site_hint == Site.DIRTY_THROTTLE else w


def _sleep_of(row: wire.InflightWait | _DirtySleep) -> wire.InflightWait:
    return row.wait if isinstance(row, _DirtySleep) else row


def _int(v: Any) -> int:
    """bcc gives ctypes scalars from per-key reads and plain ints from batches."""
    return int(getattr(v, "value", v))
