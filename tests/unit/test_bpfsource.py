# SPDX-License-Identifier: Apache-2.0
"""Attaching, with a stand-in for bcc: fail-over to the next option, and no
half-attached pair left behind. (The real thing runs in tests/kernel.)"""

import os

import pytest

from allocwatch.core.sites import Site
from allocwatch.kernel import bpfsource, probes, schedswitch
from allocwatch.kernel.bpfsource import BpfSource, LoadOptions
from allocwatch.kernel.probes import Mechanism
from tests.unit.fakes import captured


class FakeBPF:
    KPROBE = 2
    fail: set[str] = set()

    def __init__(self, src_file, cflags):
        self.cflags = cflags
        self.attached: list[tuple[str, str]] = []

    def __getitem__(self, name):
        return self

    Key = Leaf = int  # as a bcc table; tunables written at load land in `written`

    def __setitem__(self, key, value):
        self.written = {**getattr(self, "written", {}), key: value}

    def open_ring_buffer(self, cb):
        pass

    def _attach(self, kind, name):
        if name in self.fail or f"{kind}:{name}" in self.fail:
            raise Exception(f"cannot attach {kind} {name}, Invalid argument")
        self.attached.append((kind, name))

    def attach_tracepoint(self, tp, fn_name):
        self._attach("tp", tp.decode())

    def detach_tracepoint(self, tp):
        self.attached.remove(("tp", tp.decode()))

    def attach_raw_tracepoint(self, tp, fn_name):
        self._attach("raw", tp.decode())

    def detach_raw_tracepoint(self, tp):
        self.attached.remove(("raw", tp.decode()))

    def attach_kprobe(self, event, fn_name):
        self._attach("kprobe", event.decode())

    def attach_kretprobe(self, event, fn_name):
        self._attach("kretprobe", event.decode())

    def detach_kprobe(self, event):
        self.attached.remove(("kprobe", event.decode()))

    def detach_kretprobe(self, event):
        self.attached.remove(("kretprobe", event.decode()))

    def cleanup(self):
        pass


class FakeBcc:
    BPF = FakeBPF


@pytest.fixture
def source(monkeypatch):
    monkeypatch.setattr(bpfsource, "import_bcc", lambda: FakeBcc)
    monkeypatch.setattr(bpfsource, "check_headers", lambda release: None)

    def make(kernel, fail=(), switch_defines=()):
        FakeBPF.fail = set(fail)
        f = captured(kernel)
        src = BpfSource(probes.plan(f), f, LoadOptions(long_wait_ns=10**9, switch_defines=tuple(switch_defines)))
        src.load()
        return src

    return make


def by_site(src):
    return {st.plan.site: st for st in src.status}


def test_kprobe_that_will_not_attach_falls_over_to_dstate(source):
    """A kprobe the kernel refuses at attach time (as 6.1 refused a notrace clone
    before the capture listed available_filter_functions) falls over, whole."""
    src = source("6.1", fail={"mem_cgroup_oom_synchronize"})
    st = by_site(src)[Site.MEMCG_OOM_WAIT]
    assert st.attached and st.plan.chosen.mechanism is Mechanism.DSTATE_STACK
    assert "attach failed: cannot attach kretprobe" in st.plan.skipped[-1][1]  # the return probe goes first
    assert ("tp", "sched:sched_switch") in src._bpf.attached
    assert ("kprobe", "mem_cgroup_oom_synchronize") not in src._bpf.attached
    assert Site.MEMCG_OOM_WAIT in {e.site for e in probes.stack_classified_sites(src.effective_plans)}


def test_kretprobe_failure_leaves_no_lone_entry_probe(source):
    src = source("6.1", fail={"kretprobe:mem_cgroup_oom_synchronize"})
    st = by_site(src)[Site.MEMCG_OOM_WAIT]
    assert st.plan.chosen.mechanism is Mechanism.DSTATE_STACK
    assert not any(name == "mem_cgroup_oom_synchronize" for _, name in src._bpf.attached)


def test_ends_are_attached_before_their_begins(source):
    """A begin seen before its end is attached opens a wait that never ends (the
    daemon's own false stall on 6.12): the return probe, the end tracepoint first."""
    src = source("6.1")
    order = src._bpf.attached
    assert order.index(("kretprobe", "mem_cgroup_oom_synchronize")) < order.index(
        ("kprobe", "mem_cgroup_oom_synchronize"))
    src = source("6.18")
    order = src._bpf.attached
    assert order.index(("tp", "vmscan:mm_vmscan_memcg_reclaim_end")) < order.index(
        ("tp", "vmscan:mm_vmscan_memcg_reclaim_begin"))


def test_entry_failure_leaves_no_lone_return_probe(source):
    src = source("6.1", fail={"kprobe:mem_cgroup_oom_synchronize"})
    assert not any(name == "mem_cgroup_oom_synchronize" for _, name in src._bpf.attached)


def test_pair_with_one_half_failing_is_detached_whole(source):
    src = source("6.18", fail={"vmscan:mm_vmscan_memcg_reclaim_end"})
    st = by_site(src)[Site.MEMCG_RECLAIM]
    assert not st.attached  # no kprobes on 6.18: nothing to fall over to
    assert ("tp", "vmscan:mm_vmscan_memcg_reclaim_begin") not in src._bpf.attached
    assert "attach failed" in st.plan.skipped[-1][1]


def test_fallback_handlers_are_compiled(source):
    src = source("6.1")
    flags = set(src._bpf.cflags)
    assert "-DAW_KPROBES" in flags
    assert "-DAW_TP_BALANCE_DIRTY_PAGES" in flags and "-DAW_TP_MARK_VICTIM" in flags


def test_compiler_output_is_kept_off_stderr_and_given_back(capfd):
    from allocwatch.kernel.bpfsource import SAID_TAIL_CHARS, compiler_output, said_tail

    with compiler_output() as said:
        os.write(2, b"In file included from <built-in>:4:\nwarning: 'nocf_check' attribute ignored\n")
    assert capfd.readouterr().err == ""
    assert "nocf_check" in said[0] and "nocf_check" in said_tail(said)
    with compiler_output() as said:
        os.write(2, b"x" * (3 * SAID_TAIL_CHARS))
    assert len(said[0]) == SAID_TAIL_CHARS
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"  # fd 2 is given back
    assert said_tail([""]) == ""


def test_site_detail_handlers_are_compiled_where_the_kernel_has_their_fields(source):
    src = source("6.18")
    flags = set(src._bpf.cflags)
    assert {"-DAW_TP_LRU_SHRINK_INACTIVE", "-DAW_HAVE_DIRTY_PAUSE"} <= flags
    assert ("tp", probes.RECLAIM_PROGRESS.name) in src._bpf.attached
    old = source("6.1")  # Debian's 6.1 has both, with the same fields
    assert {"-DAW_TP_LRU_SHRINK_INACTIVE", "-DAW_HAVE_DIRTY_PAUSE"} <= set(old._bpf.cflags)
    assert ("tp", probes.RECLAIM_PROGRESS.name) in old._bpf.attached


def test_the_ring_holds_a_map_worth_of_ends():
    import ctypes

    from allocwatch.kernel.bpfsource import PAGE_BYTES, ringbuf_pages_for
    from allocwatch.kernel.wire import Event

    for n in (1, 1000, 32768, 100_000):
        pages = ringbuf_pages_for(n)
        assert pages & (pages - 1) == 0 and pages * PAGE_BYTES >= n * ctypes.sizeof(Event)
        assert pages == 1 or (pages // 2) * PAGE_BYTES < n * ctypes.sizeof(Event)  # no bigger than needed


RAW_SWITCH = (schedswitch.DEFINE, "AW_SWITCH_OFF_PID=1264", schedswitch.PREV_STATE_DEFINE)


def test_sched_switch_is_raw_where_btf_gave_the_offsets(source):
    src = source("6.18", switch_defines=RAW_SWITCH)
    assert ("raw", "sched_switch") in src._bpf.attached
    assert ("tp", "sched:sched_switch") not in src._bpf.attached
    assert src.sched_switch_how == "raw tracepoint"
    assert {f"-D{d}" for d in RAW_SWITCH} <= set(src._bpf.cflags)


def test_sched_switch_is_classic_without_btf_offsets(source):
    src = source("6.18")
    assert ("tp", "sched:sched_switch") in src._bpf.attached
    assert not any(kind == "raw" for kind, _ in src._bpf.attached)
    assert src.sched_switch_how == "classic tracepoint (no BTF offsets for the raw tracepoint)"
    assert not any(f.startswith(f"-D{schedswitch.DEFINE}") for f in src._bpf.cflags)


def test_sched_switch_falls_back_to_classic_when_the_raw_one_will_not_attach(source):
    src = source("6.1", fail={"raw:sched_switch"}, switch_defines=RAW_SWITCH)
    assert ("tp", "sched:sched_switch") in src._bpf.attached
    assert src.sched_switch_how.startswith("classic tracepoint (raw tracepoint sched_switch: cannot attach raw")
    st = by_site(src)[Site.MEMCG_OOM_WAIT]
    assert st.attached  # the D-state sites are watched all the same


def test_no_raw_sched_switch_is_compiled_where_nothing_uses_it(source, monkeypatch):
    f = captured("6.18")
    plans = [p for p in probes.plan(f) if not (p.chosen and p.chosen.mechanism.needs_sched_switch)]
    flags = bpfsource.cflags_for(plans, f, LoadOptions(long_wait_ns=10**9, switch_defines=RAW_SWITCH))
    assert not any(schedswitch.DEFINE in flag for flag in flags)


def test_task_accounts_are_the_same_dict_while_neither_map_changed(source):
    """10,000 stuck tasks: their accounts' map reads the same scan after scan
    (kernel/mapread.py gives back the very list), and the dict by tid is not
    made again; a read that changed, of either map, makes a new one."""
    from allocwatch.core.model import Acct, ShrinkCount

    src = source("6.18")
    assert bpfsource.SHRINK_SLAB_START.name in src._attached_tps
    accts = [Acct(7, 7, "a", (0,), (0,), 1, 0, 0), Acct(8, 8, "b", (0,), (0,), 2, 0, 0)]
    shrinks = [(8, (ShrinkCount(fn=0xFF, calls=1, asked=10, freed=0, objects=5, gfp=0xCC0),))]
    reads = {"task_acct": accts, "shrink_acct": shrinks}
    src._read_map = lambda name, decode: reads[name]
    first = src.task_accounts()
    assert sorted(first) == [7, 8] and first[8].shrinkers == shrinks[0][1] and first[7].shrinkers == ()
    assert src.task_accounts() is first
    reads["shrink_acct"] = list(shrinks)  # an equal list, but another read: made again
    again = src.task_accounts()
    assert again is not first and again == first and again[8] is first[8]  # the joined account is kept
    reads["task_acct"] = accts[:1]
    assert sorted(src.task_accounts()) == [7]


ITER = ("AW_TASK_ITER", "AW_ITER_OFF_PID=1264")


class FakeLib:
    """libbcc's iterator calls: attach gives a link, create a pipe holding the records."""

    def __init__(self, attach_rc: int | None = None, records: bytes = b"") -> None:
        def create(link: int) -> int:
            r, w = os.pipe()
            os.write(w, records)
            os.close(w)
            return r

        # functions, not methods: the source sets their restype and argtypes as on ctypes' own
        self.bcc_iter_attach = lambda prog_fd, info, size: os.open(os.devnull, os.O_RDONLY) if attach_rc is None \
            else attach_rc  # the link: an fd of its own, which the source closes
        self.bcc_iter_create = create


@pytest.fixture
def iter_source(monkeypatch):
    """A source loaded with the iterator compiled in, libbcc's calls faked."""
    monkeypatch.setattr(bpfsource, "check_headers", lambda release: None)

    def make(lib, load_fails=False, defines=ITER, why_not=""):
        class Fn:
            fd = 3

        class Bpf(FakeBPF):
            TRACING = 26
            tracepoint_fds: dict[str, int] = {}  # as bcc's, for close()

            def load_func(self, name, kind):
                if load_fails:
                    raise Exception("Failed to load BPF program bpf_iter__task: Permission denied")
                return Fn

        class Bcc:
            BPF = Bpf

            class libbcc:  # bcc's own name
                pass

        Bcc.libbcc.lib = lib
        monkeypatch.setattr(bpfsource, "import_bcc", lambda: Bcc)
        FakeBPF.fail = set()
        f = captured("6.18")
        src = BpfSource(probes.plan(f), f, LoadOptions(long_wait_ns=10**9, iter_defines=defines,
                                                       iter_why_not=why_not))
        src.load()
        return src

    return make


def test_task_states_come_from_the_iterator_where_it_loaded(iter_source):
    import struct

    src = iter_source(FakeLib(records=struct.pack("<5I", 42, 0x102, 0, 0, 0) + struct.pack("<5I", 43, 0x4, 0, 0, 0)))
    assert src.task_states_how == "task iterator"
    states = src.task_states()
    assert states is not None and states[42][0] == "D" and 43 not in states  # stopped: left to /proc
    src.close()


@pytest.mark.parametrize(("kw", "how"), [
    ({"defines": (), "why_not": "no BPF iterators on this kernel (v5.8+)"},
     "/proc (no task iterator: no BPF iterators on this kernel (v5.8+))"),
    ({"load_fails": True}, "/proc (the task iterator did not load: Failed to load BPF program bpf_iter__task: "
                           "Permission denied)"),
    ({"lib": FakeLib(attach_rc=-22)}, "/proc (the task iterator did not attach: Invalid argument)"),
])
def test_without_the_iterator_states_are_read_from_proc_and_it_says_why(iter_source, kw, how):
    src = iter_source(kw.pop("lib", FakeLib()), **kw)
    assert src.task_states_how == how
    assert src.task_states() is None
