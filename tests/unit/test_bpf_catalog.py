# SPDX-License-Identifier: Apache-2.0
"""The probe catalog, the BPF C and the -D flags agree: every handler an option
names is in bpf/allocwatch.bpf.c under the flag that option asks for, every
entry point there is named by an option (or is always loaded), and every flag
the C tests is one the catalog or a load option can pass, and the reverse.
The C is read as text: no bcc, no root."""

import re
from pathlib import Path

import pytest

from allocwatch.kernel import bpfsource, oomcontext, probes, schedswitch, taskiter
from allocwatch.kernel.bpfsource import LoadOptions
from allocwatch.kernel.kernelinfo import KernelFeatures
from allocwatch.kernel.probes import Mechanism

BPF_C = Path(__file__).resolve().parents[2] / "bpf" / "allocwatch.bpf.c"

# Entry points loaded whatever the plan says, each with the -D flag it is compiled
# under ("" = always compiled): D-state timing and map clean-up on every kernel,
# and the kill notes where the kernel has signal_generate.
ALWAYS_LOADED = {
    probes.SCHED_SWITCH.fn: "",
    probes.SCHED_EXIT.fn: "",
    **{tp.fn: define for tp, define in probes.LOADER_TRACEPOINTS},
    oomcontext.FN: oomcontext.DEFINE,  # the loader's own, joined to oom:mark_victim's kills
    oomcontext.OC_ENTRY_FN: oomcontext.OC_DEFINE,  # and out_of_memory's oom_control, with kprobes
    oomcontext.OC_RETURN_FN: oomcontext.OC_DEFINE,
    schedswitch.FN: schedswitch.DEFINE,  # sched_switch raw, where BTF gives the offsets
    taskiter.FN: taskiter.DEFINE,  # every task's state in one read, where BTF gives the offsets
}
# Macros the C gives a default with #ifndef and the loader never passes: sizes
# and ages fixed at build time.
COMPILED_DEFAULTS = {"MAX_ACCT", "HINT_MAX_AGE_NS", "NOTE_EVERY_NS", "MAX_DIRTY_PAUSES", "AW_SLEEPER_SLOTS",
                     "MAX_WB_NOTES"}


def strip_comments(text: str) -> str:
    """The C with its comments blanked, line numbers kept."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined (macro bodies)."""
    return re.sub(r"\\\n", " ", text).splitlines()


class CSource:
    """What the C text declares: entry points with the macros guarding each,
    and every macro a conditional tests."""

    def __init__(self, text: str) -> None:
        self.entry_points: dict[str, frozenset[str]] = {}
        self.tested: set[str] = set()  # #ifdef, #if defined, #elif defined
        self.defaulted: set[str] = set()  # #ifndef
        lines = logical_lines(strip_comments(text))
        generators = self._generators(lines)
        stack: list[set[str]] = []  # the macros each open conditional requires
        for line in lines:
            directive = re.match(r"\s*#\s*(\w+)\s*(.*)", line)
            if directive:
                self._directive(directive.group(1), directive.group(2), stack)
                continue
            guard = frozenset().union(*stack) if stack else frozenset()
            for name in self._entries(line, generators):
                assert name not in self.entry_points, f"{name} defined twice"
                self.entry_points[name] = guard

    def _directive(self, word: str, rest: str, stack: list[set[str]]) -> None:
        if word == "ifdef":
            self.tested.add(rest.split()[0])
            stack.append({rest.split()[0]})
        elif word == "ifndef":
            self.defaulted.add(rest.split()[0])
            stack.append(set())
        elif word in ("if", "elif"):
            names = set(re.findall(r"defined\s*\(?\s*(\w+)", rest))
            self.tested |= names
            if word == "elif":
                stack.pop()
            stack.append(names if "!" not in rest and "||" not in rest else set())
        elif word == "else":
            stack[-1] = set()
        elif word == "endif":
            stack.pop()

    @staticmethod
    def _generators(lines: list[str]) -> dict[str, list[str]]:
        """Macros that define entry points: name -> the prefixes they paste onto
        their first argument (`int aw_kp_enter_##name(...)`)."""
        out = {}
        for line in lines:
            m = re.match(r"\s*#\s*define\s+(\w+)\((\w+)", line)
            if m:
                prefixes = re.findall(rf"\bint\s+(\w+)##{m.group(2)}\s*\(", line)
                if prefixes:
                    out[m.group(1)] = prefixes
        return out

    @staticmethod
    def _entries(line: str, generators: dict[str, list[str]]) -> list[str]:
        if m := re.match(r"int\s+(\w+)\s*\(", line):  # a top-level, non-static function
            return [m.group(1)]
        if m := re.match(r"TRACEPOINT_PROBE\(\s*(\w+)\s*,\s*(\w+)\s*\)", line):
            return [f"tracepoint__{m.group(1)}__{m.group(2)}"]
        if m := re.match(r"RAW_TRACEPOINT_PROBE\(\s*(\w+)\s*\)", line):
            return [f"raw_tracepoint__{m.group(1)}"]
        if (m := re.match(r"(\w+)\(\s*(\w+)\s*[,)]", line)) and m.group(1) in generators:
            return [prefix + m.group(2) for prefix in generators[m.group(1)]]
        return []


def catalog_handlers() -> dict[str, set[str]]:
    """Every entry point a catalog option names, with the -D flag(s) its option
    compiles it under."""
    out: dict[str, set[str]] = {}
    for entry in probes.CATALOG:
        for opt in entry.options:
            if opt.mechanism is Mechanism.KPROBE_PAIR:
                for stem in ("aw_kp_enter_", "aw_kp_return_"):
                    out.setdefault(stem + opt.kprobe_fn, set()).add(opt.define)
            for tp in opt.tracepoints:
                out.setdefault(tp.fn, set()).add(opt.define)
            for tp, define in opt.optional:
                out.setdefault(tp.fn, set()).add(define)
            if opt.mechanism.needs_sched_switch:
                out.setdefault(probes.SCHED_SWITCH.fn, set()).add("")
    return out


@pytest.fixture(scope="module")
def c_source() -> CSource:
    return CSource(BPF_C.read_text())


def test_the_parser_sees_the_entry_points_it_should(c_source):
    """A guard against a parser that sees nothing and so passes everything."""
    eps = c_source.entry_points
    assert eps["aw_sched_switch"] == frozenset()
    assert eps["aw_memcg_reclaim_begin"] == {"AW_TP_MEMCG_RECLAIM"}
    assert eps["aw_kp_enter_alloc_pages"] == {"AW_KPROBES"}
    assert eps["aw_kp_return_oom"] == {"AW_KPROBES"}
    assert {"AW_TP_MARK_VICTIM", "AW_HAVE_MARK_VICTIM_RSS", "AW_BEGIN_STACKS"} <= c_source.tested
    assert "LONG_WAIT_NS" in c_source.defaulted
    parsed = CSource("#define P(n) int pre_##n(void *c) { return 0; }\n#ifdef X\nP(a)\n#endif\n"
                     "TRACEPOINT_PROBE(sched, sched_switch) { return 0; }\n#if defined(Y)\n"
                     "RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }\n#endif\n")
    assert parsed.entry_points == {"pre_a": {"X"}, "tracepoint__sched__sched_switch": frozenset(),
                                   "raw_tracepoint__sched_switch": {"Y"}}


def test_every_handler_an_option_names_is_in_the_c_under_its_flag(c_source):
    named = catalog_handlers()
    for fn, define in ALWAYS_LOADED.items():
        named.setdefault(fn, set()).add(define)
    for fn, defines in sorted(named.items()):
        assert fn in c_source.entry_points, f"{fn} is named by the catalog but not defined in {BPF_C.name}"
        assert len(defines) == 1, f"{fn} is asked for under several flags: {defines}"
        want = {d for d in defines if d}
        assert c_source.entry_points[fn] == want, f"{fn} is compiled under {set(c_source.entry_points[fn])}, " \
                                                  f"the catalog passes {want}"


def test_every_entry_point_in_the_c_is_named_by_an_option(c_source):
    named = set(catalog_handlers()) | set(ALWAYS_LOADED)
    unnamed = sorted(set(c_source.entry_points) - named)
    assert not unnamed, f"entry points no catalog option names (compiled, never chosen): {unnamed}"


def test_every_flag_the_c_tests_is_one_the_loader_can_pass(c_source):
    can_pass = probes.every_define() | {oomcontext.DEFINE, oomcontext.OC_DEFINE,
                                        schedswitch.DEFINE, schedswitch.PREV_STATE_DEFINE, taskiter.DEFINE}
    assert not c_source.tested - can_pass, f"tested in the C, never passed: {sorted(c_source.tested - can_pass)}"
    tunables = set(re.findall(r"^-D(\w+)=", "\n".join(bpfsource.cflags_for([], empty_kernel(), LOAD)), re.M))
    defaults = c_source.defaulted - {"ALLOCWATCH_H"}  # allocwatch.h's include guard, if ever inlined
    assert defaults == tunables | COMPILED_DEFAULTS


def test_every_flag_the_catalog_can_pass_is_tested_by_the_c(c_source):
    unused = sorted(probes.every_define() - c_source.tested)
    assert not unused, f"flags the catalog passes that the C never tests: {unused}"


LOAD = LoadOptions(long_wait_ns=10**9)


def empty_kernel() -> KernelFeatures:
    return KernelFeatures("6.18", {}, frozenset(), kprobes=False)


def full_kernel() -> KernelFeatures:
    """A kernel with every tracepoint, field and function the catalog names."""
    fields = {f for tp in _every_tracepoint() for f in tp.fields}
    fields |= {f for e in probes.CATALOG for o in e.options for fd in o.field_defines for f in fd.fields}
    tps = {name: frozenset(fields) for name in probes.all_tracepoint_names()}
    return KernelFeatures("6.18", tps, frozenset(probes.all_function_names()), kprobes=True, proc_stack=True)


def _every_tracepoint() -> list[probes.Tracepoint]:
    tps = [probes.SCHED_SWITCH, probes.SCHED_EXIT, *(tp for tp, _ in probes.LOADER_TRACEPOINTS)]
    for e in probes.CATALOG:
        for o in e.options:
            tps += [*o.tracepoints, *(tp for tp, _ in o.optional)]
    return tps


def test_the_loader_passes_the_catalogs_flags_and_only_those():
    """bpfsource joins: its -D flags are the tunables and compile_defines(), nothing else."""
    for features in (empty_kernel(), full_kernel()):
        for begin_stacks in (True, False):
            plans = probes.plan(features, hot_paths=True)
            opts = LoadOptions(long_wait_ns=10**9, begin_stacks=begin_stacks)
            flags = [f[2:] for f in bpfsource.cflags_for(plans, features, opts) if f.startswith("-D") and "=" not in f]
            assert flags == probes.compile_defines(plans, features, begin_stacks)


def test_a_kernel_with_everything_compiles_every_flag_but_the_fallbacks_it_never_reaches():
    """On a kernel with every tracepoint and function, the plans (first choices and
    their fall-backs) ask for every flag the catalog has."""
    features = full_kernel()
    got = set(probes.compile_defines(probes.plan(features, hot_paths=True), features, begin_stacks=True))
    assert got == probes.every_define()
    assert probes.KPROBES_DEFINE in probes.compile_defines([], empty_kernel(), False, every_kprobe=True)


# The strings the kernel takes as GPL-compatible (license_is_gpl_compatible() in
# include/linux/license.h): only such a program may call GPL-only helpers.
KERNEL_GPL_COMPATIBLE = {"GPL", "GPL v2", "GPL and additional rights", "Dual BSD/GPL", "Dual MIT/GPL", "Dual MPL/GPL"}


def test_the_program_declares_a_gpl_compatible_licence_matching_its_spdx_line():
    text = BPF_C.read_text()
    assert text.splitlines()[0] == "// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause"
    declared = re.findall(r"^#define BPF_LICENSE (.+)$", strip_comments(text), re.M)
    assert declared == ["Dual BSD/GPL"]  # bcc quotes the macro's tokens: the string "Dual BSD/GPL"
    assert declared[0] in KERNEL_GPL_COMPATIBLE


COMMON_FLAGS = {"AW_BEGIN_STACKS", "AW_HAVE_DIRTY_PAUSE", "AW_HAVE_MARK_VICTIM_COMM", "AW_HAVE_MARK_VICTIM_RSS",
                "AW_HAVE_WB_NOTE",
                "AW_TP_BALANCE_DIRTY_PAGES", "AW_TP_COMPACTION", "AW_TP_DIRECT_RECLAIM", "AW_TP_FOLIO_WAIT_WRITEBACK",
                "AW_TP_LRU_SHRINK_INACTIVE", "AW_TP_MARK_VICTIM", "AW_TP_MEMCG_RECLAIM",
                "AW_TP_MEMCG_SOFTLIMIT_RECLAIM", "AW_TP_NODE_RECLAIM", "AW_TP_OOM_REAPER", "AW_TP_SHRINK_SLAB",
                "AW_TP_TRY_TO_COMPACT_PAGES",
                "AW_TP_VMSCAN_THROTTLED"}


@pytest.mark.parametrize(("kernel", "extra"), [("6.18", set()), ("6.1", {"AW_KPROBES", "AW_TP_SIGNAL_GENERATE"})])
def test_the_flags_a_captured_kernel_is_compiled_with(kernel, extra):
    """Pinned for the captured kernels, so that a change in what a real kernel compiles is seen:
    6.1 has kprobes (its kprobe pairs) and signal_generate's fields; the captured 6.18 neither."""
    from tests.unit.fakes import captured

    features = captured(kernel)
    flags = bpfsource.cflags_for(probes.plan(features), features, LoadOptions(long_wait_ns=10**9))
    assert {f[2:] for f in flags if f.startswith("-D") and "=" not in f} == COMMON_FLAGS | extra
    assert "-DLONG_WAIT_NS=1000000000ULL" in flags
