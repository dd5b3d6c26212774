// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* allocwatch: in-kernel bookkeeping of memory-allocation waits.
 *
 * Rules: handlers read only tracepoint fields, scalar probe
 * arguments and helpers; they never dereference a kernel struct, because the
 * headers bcc compiles against may not match the running kernel. Which
 * handlers are compiled is decided from the probe catalog
 * (allocwatch/kernel/probes.py: each option carries its -D flags, AW_TP_*,
 * AW_KPROBES, AW_HAVE_*, AW_BEGIN_STACKS) and passed by
 * allocwatch/kernel/bpfsource.py: the text is never edited. Entry points are
 * thin; the work is in the static helpers.
 *
 * Tunables, set with -D by the loader:
 *   LONG_WAIT_NS     completed waits at least this long are sent to user space
 *   DSTATE_END_NS    D-state sleeps no hint named, at least this long, are sent up
 *                    too: only user space can name and count them
 *   (both are the defaults of the `tunables` array, which user space rewrites
 *   on a reload, so a lower threshold takes effect without a new load)
 *   MAX_WAITS        in-flight (tid, site) entries
 *   MAX_DWAITS       tasks sleeping in TASK_UNINTERRUPTIBLE tracked at once
 *   RINGBUF_PAGES    ring buffer size, in pages (a power of two)
 *   HINT_MAX_AGE_NS  how long a "sleep follows" hint stays valid
 *   NOTE_EVERY_NS    how often a waits entry retakes its task's comm and stack
 */
#include <uapi/linux/ptrace.h>
#include "allocwatch.h"

/* The licence the program declares to the kernel, which lets only a
 * GPL-compatible program call its GPL-only helpers (bpf_get_stackid, and
 * bpf_probe_read_str behind bcc's TP_DATA_LOC_READ_STR). "Dual BSD/GPL" is the
 * string of the kernel's license_is_gpl_compatible() list that matches this
 * file's licence; bcc declares BPF_LICENSE (default "GPL") after this text. */
#define BPF_LICENSE Dual BSD/GPL

#ifndef LONG_WAIT_NS
#define LONG_WAIT_NS 1000000000ULL
#endif
#ifndef DSTATE_END_NS
#define DSTATE_END_NS LONG_WAIT_NS
#endif
#ifndef MAX_WAITS
#define MAX_WAITS 32768
#endif
#ifndef MAX_DWAITS
#define MAX_DWAITS 32768
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 256
#endif
#ifndef MAX_ACCT
#define MAX_ACCT 16384
#endif
#ifndef HINT_MAX_AGE_NS
#define HINT_MAX_AGE_NS 50000000ULL
#endif
#ifndef NOTE_EVERY_NS
#define NOTE_EVERY_NS 1000000000ULL
#endif

/* sched_switch reports TASK_UNINTERRUPTIBLE (with or without TASK_WAKEKILL,
 * i.e. TASK_KILLABLE too) as this value; TASK_IDLE and preemption differ. */
#define AW_REPORT_UNINTERRUPTIBLE 2

BPF_HASH(waits, struct aw_wait_key, struct aw_wait, MAX_WAITS);
BPF_HASH(dwaits, u32, struct aw_wait, MAX_DWAITS);
BPF_HASH(hints, u32, struct aw_hint, MAX_DWAITS);
BPF_ARRAY(wait_hist, u64, AW_NR_SITES * AW_HIST_SLOTS);
BPF_ARRAY(wait_sum_ns, u64, AW_NR_SITES);
BPF_ARRAY(stats, u64, AW_NR_STATS);
/* [0] the long-wait cut-off, [1] the D-state one: written by user space at
 * load and on every reload (0 means "use the compiled default"). [2]: non-zero
 * while a sleep user space seeded is open (the raw sched_switch looks every
 * task switched in up, see aw_rtp_sched_switch). */
BPF_ARRAY(tunables, u64, 3);
#define AW_TUNABLE_SEEDED 2

static __always_inline u64 tunable(u32 idx, u64 fallback)
{
    u64 *v = tunables.lookup(&idx);
    return v && *v ? *v : fallback;
}
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
/* When a SIGKILL was last sent to a task (signal:signal_generate names the
 * target tid; a process-wide kill names its leader, whose tid is the tgid).
 * LRU: entries of tasks that died are pushed out, never cleaned up by hand. */
BPF_TABLE("lru_hash", u32, u64, sigkills, 4096);
/* Per-task accounting (struct aw_task_acct): LRU, so tasks long gone make room. */
BPF_TABLE("lru_hash", u32, struct aw_task_acct, task_acct, MAX_ACCT);
BPF_PERCPU_ARRAY(acct_zero, struct aw_task_acct, 1); /* all zeros: the initial value, off the stack */

static __always_inline struct aw_task_acct *acct_of(u32 tid, u32 pid, const char *comm)
{
    struct aw_task_acct *a = task_acct.lookup(&tid);
    if (a)
        return a;
    u32 zero = 0;
    struct aw_task_acct *z = acct_zero.lookup(&zero);
    if (!z)
        return 0;
    task_acct.update(&tid, z);
    a = task_acct.lookup(&tid);
    if (a) {
        a->pid = pid;
        __builtin_memcpy(a->comm, comm, sizeof(a->comm));
    }
    return a;
}

/* A sleep counted after the fact (throttle sleeps, hinted D sleeps): its time is
 * the task's busy time unless a pair-timed wait around it already counts it. */
static __always_inline void acct_wait(u32 tid, u32 pid, const char *comm, u32 site, u64 duration_ns)
{
    if (site >= AW_NR_SITES)
        return;
    struct aw_task_acct *a = acct_of(tid, pid, comm);
    if (!a)
        return;
    __sync_fetch_and_add(&a->wait_ns[site], duration_ns);
    __sync_fetch_and_add(&a->waits[site], 1);
    if (!a->open)
        __sync_fetch_and_add(&a->busy_ns, duration_ns);
}

/* A pair-timed wait of the task opens: the outermost one starts its busy time. */
static __always_inline void acct_open(u32 tid, struct aw_wait *w)
{
    struct aw_task_acct *a = acct_of(tid, w->pid, w->comm);
    if (!a)
        return;
    if (!a->open)
        a->open_since_ns = w->start_ns;
    a->open += 1;
}

/* ...and closes at end_ns: the outermost one adds the time since it opened. */
static __always_inline void acct_close(struct aw_task_acct *a, u64 end_ns)
{
    if (!a->open)
        return;
    a->open -= 1;
    if (!a->open)
        a->busy_ns += end_ns - a->open_since_ns;
}

/* The gfp masks the task's waits asked with, counted per mask in a few slots. */
static __always_inline void acct_gfp(struct aw_task_acct *a, u64 gfp)
{
    if (gfp == AW_GFP_UNKNOWN)
        return;
    u32 mask = (u32)gfp;
    u32 least = 0;
#pragma unroll
    for (u32 i = 0; i < AW_GFP_SLOTS; i++) {
        if (a->gfp_waits[i] && a->gfp_mask[i] == mask) {
            a->gfp_waits[i] += 1;
            return;
        }
        if (a->gfp_waits[i] < a->gfp_waits[least & (AW_GFP_SLOTS - 1)])
            least = i;
    }
    least &= AW_GFP_SLOTS - 1;
    a->gfp_mask[least] = mask;
    a->gfp_waits[least] = 1;
}

static __always_inline void stat_inc(u32 idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

static __always_inline void hist_add(u32 site, u64 duration_ns)
{
    u64 us = duration_ns / 1000;
    u32 slot = us ? bpf_log2l(us) : 0;
    if (slot >= AW_HIST_SLOTS)
        slot = AW_HIST_SLOTS - 1;
    u32 idx = site * AW_HIST_SLOTS + slot;
    u64 *v = wait_hist.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
    u64 *sum = wait_sum_ns.lookup(&site);
    if (sum)
        __sync_fetch_and_add(sum, duration_ns);
}

/* AW_END_KILLED when a SIGKILL was sent to the task, or to its process, since
 * the wait began (an entry older than the wait belongs to a reused pid). */
static __always_inline u32 end_how(u32 tid, u32 tgid, u64 start_ns, u32 otherwise)
{
    u64 *t = sigkills.lookup(&tid);
    if (t && *t >= start_ns)
        return AW_END_KILLED;
    t = sigkills.lookup(&tgid);
    if (t && *t >= start_ns)
        return AW_END_KILLED;
    return otherwise;
}

static __always_inline void emit_end_detail(u32 tid, u32 site, struct aw_wait *w, u64 duration_ns, u32 how,
                                            s64 detail)
{
    struct aw_event ev = {};
    ev.kind = AW_EV_WAIT_END;
    ev.how = how;
    ev.end_detail = detail < 0 ? 0xffffffff : (detail > 0xfffffffe ? 0xfffffffe : detail);
    ev.site = site;
    ev.tid = tid;
    ev.pid = w->pid;
    ev.start_ns = w->start_ns;
    ev.duration_ns = duration_ns;
    ev.gfp = w->gfp;
    ev.order = w->order;
    ev.site_hint = w->site_hint;
    __builtin_memcpy(ev.comm, w->comm, sizeof(ev.comm));
    if (events.ringbuf_output(&ev, sizeof(ev), 0))
        stat_inc(AW_STAT_EVENTS_LOST);
}

static __always_inline void emit_end(u32 tid, u32 site, struct aw_wait *w, u64 duration_ns, u32 how)
{
    emit_end_detail(tid, site, w, duration_ns, how, -1);
}

/* The waits map keeps a task's entry for a site from its first wait there to
 * its exit (sched_process_exit deletes it): a wait begins by writing the entry
 * in place and ends by clearing start_ns. A hash insert and delete a wait cost
 * 241-257 ns a pass here against 134-138 ns in place (bench/primitives.py),
 * at 30,000 passes a second in a reclaim livelock. start_ns 0: no wait open.
 * User space gives back idle entries when the map runs half full. */
static __always_inline struct aw_wait *wait_begin_tid(u32 tid, u32 pid, u32 site, u64 gfp, s32 order)
{
    struct aw_wait_key key = {.tid = tid, .site = site};
    struct aw_wait *w = waits.lookup(&key);
    u64 now_ns = bpf_ktime_get_ns();
    if (w) {
        if (w->start_ns) {
            /* Nested entry into the same site (an allocation inside reclaim):
             * the outer wait goes on; count the depth so its end is matched. */
            w->depth += 1;
            return 0;
        }
        w->gfp = gfp;
        w->pid = pid;
        w->order = order;
        w->depth = 0;
        w->reclaimed_pages = 0;
        if (now_ns - w->noted_ns >= NOTE_EVERY_NS) /* a task renamed (exec, prctl) is seen within this */
            bpf_get_current_comm(&w->comm, sizeof(w->comm));
        w->start_ns = now_ns; /* last: a reader that sees it open sees this wait's fields */
        return w;
    }
    struct aw_wait fresh = {};
    fresh.start_ns = now_ns;
    fresh.gfp = gfp;
    fresh.pid = pid;
    fresh.order = order;
    fresh.site_hint = AW_SITE_NONE;
    bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
    if (waits.update(&key, &fresh)) {
        stat_inc(AW_STAT_WAITS_FULL);
        return 0;
    }
    return waits.lookup(&key);
}

#ifdef AW_BEGIN_STACKS
/* The kernel stack of a task entering reclaim, at most once per NOTE_EVERY_NS
 * per task and site (the wait entry's noted_ns says when): a task looping
 * RUNNING in reclaim has no stack in /proc, and bpf_get_stackid costs
 * microseconds, far too much at 30,000 passes a second. */
struct aw_stack_seen {
    __u64 time_ns;
    __s64 stack_id;
};
BPF_STACK_TRACE(stacks, 1024);
BPF_TABLE("lru_hash", u32, struct aw_stack_seen, task_stacks, 16384);

static __always_inline void begin_stack(void *ctx, u32 tid, struct aw_wait *w)
{
    if (!w || w->start_ns - w->noted_ns < NOTE_EVERY_NS)
        return;
    struct aw_stack_seen fresh = {.time_ns = w->start_ns};
    fresh.stack_id = stacks.get_stackid(ctx, 0); /* no REUSE: a saved id never points at another stack */
    task_stacks.update(&tid, &fresh);
}
#else
static __always_inline void begin_stack(void *ctx, u32 tid, struct aw_wait *w) {}
#endif

static __always_inline void note_taken(struct aw_wait *w)
{
    if (w && w->start_ns - w->noted_ns >= NOTE_EVERY_NS)
        w->noted_ns = w->start_ns;
}

/* A pair-timed wait begins; `ctx` given when its stack is wanted. */
static __always_inline int wait_begin_stack(void *ctx, u32 site, u64 gfp, s32 order)
{
    u64 id = bpf_get_current_pid_tgid();
    struct aw_wait *w = wait_begin_tid((u32)id, id >> 32, site, gfp, order);
    if (w && !w->depth) {
        begin_stack(ctx, (u32)id, w);
        note_taken(w);
        acct_open((u32)id, w);
    }
    return 0;
}

static __always_inline int wait_begin(u32 site, u64 gfp, s32 order)
{
    u64 id = bpf_get_current_pid_tgid();
    struct aw_wait *w = wait_begin_tid((u32)id, id >> 32, site, gfp, order);
    if (w && !w->depth) {
        note_taken(w);
        acct_open((u32)id, w);
    }
    return 0;
}

/* detail: pages a reclaim pass freed, a compaction's status, or -1. */
static __always_inline int wait_end_tid(u32 tid, u32 site, s64 detail)
{
    struct aw_wait_key key = {.tid = tid, .site = site};
    struct aw_wait *w = waits.lookup(&key);
    if (!w || !w->start_ns) {
        stat_inc(AW_STAT_UNMATCHED_END);
        return 0;
    }
    if (w->depth) {
        w->depth -= 1;
        return 0;
    }
    u64 now_ns = bpf_ktime_get_ns();
    u64 duration_ns = now_ns - w->start_ns;
    hist_add(site, duration_ns);
    struct aw_task_acct *a = acct_of(tid, w->pid, w->comm);
    if (a && site < AW_NR_SITES) {
        /* only this task writes its own account (and its exit, after): no atomics */
        a->wait_ns[site] += duration_ns;
        a->waits[site] += 1;
        acct_close(a, now_ns);
        acct_gfp(a, w->gfp);
        if (detail >= 0 && (site == AW_SITE_DIRECT_RECLAIM || site == AW_SITE_MEMCG_RECLAIM)) {
            a->reclaim_passes += 1;
            if (detail == 0)
                a->reclaim_zero += 1;
            a->reclaimed_pages += detail;
        }
    }
    /* Send before clearing: user space snapshots the map, then drains the
     * ring, so a wait missing from the snapshot has its end in the ring. */
    if (duration_ns >= tunable(0, LONG_WAIT_NS))
        emit_end_detail(tid, site, w, duration_ns, end_how(tid, w->pid, w->start_ns, AW_END_WOKE), detail);
    w->start_ns = 0;
    return 0;
}

static __always_inline int wait_end(u32 site)
{
    return wait_end_tid((u32)bpf_get_current_pid_tgid(), site, -1);
}

static __always_inline int reclaim_end(u32 site, u64 nr_reclaimed)
{
    return wait_end_tid((u32)bpf_get_current_pid_tgid(), site, (s64)nr_reclaimed);
}

/* A wait reported only after its sleep, with the time slept. */
static __always_inline int wait_done(u32 site, u64 delayed_ns)
{
    hist_add(site, delayed_ns);
    u64 id = bpf_get_current_pid_tgid();
    char comm[AW_COMM_LEN];
    bpf_get_current_comm(&comm, sizeof(comm));
    acct_wait((u32)id, id >> 32, comm, site, delayed_ns);
    return 0;
}

/* A tracepoint that fires just before the task sleeps: remember the site so
 * the D-state sleep that follows is named without reading a stack. */
static __always_inline int hint_sleep(u32 site, u64 gfp, s32 order)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct aw_hint h = {};
    h.time_ns = bpf_ktime_get_ns();
    h.site = site;
    h.gfp = gfp;
    h.order = order;
    hints.update(&tid, &h);
    return 0;
}

static __always_inline struct aw_hint *fresh_hint(u32 tid, u64 now_ns)
{
    struct aw_hint *h = hints.lookup(&tid);
    if (!h)
        return 0;
    if (now_ns - h->time_ns > HINT_MAX_AGE_NS) {
        hints.delete(&tid);
        return 0;
    }
    return h;
}

/* ---- D-state tracking: the mechanism for waits no tracepoint brackets ---- */

/* A D sleep ends: the task is switched in again. A sleep a hint named is
 * counted here; one named from its stack can only be counted in user space,
 * which names it. Long ones are sent up. */
static __always_inline void dwait_end(u32 tid, struct aw_wait *w, u64 now_ns)
{
    u64 duration_ns = now_ns - w->start_ns;
    if (w->site_hint < AW_NR_SITES) {
        hist_add(w->site_hint, duration_ns);
        acct_wait(tid, w->pid, w->comm, w->site_hint, duration_ns);
    }
    if (duration_ns >= tunable(0, LONG_WAIT_NS) ||
        (w->site_hint >= AW_NR_SITES && duration_ns >= tunable(1, DSTATE_END_NS)))
        emit_end(tid, AW_SITE_DSTATE, w, duration_ns, end_how(tid, w->pid, w->start_ns, AW_END_WOKE));
    w->start_ns = 0;
}

/* The task switched in ends the D sleep it was in, if any. Returns the time
 * read then, 0 when there was none (most switches read no clock here). */
static __always_inline u64 dwait_end_switched_in(u32 tid)
{
    struct aw_wait *w = dwaits.lookup(&tid);
    if (!w || !w->start_ns)
        return 0;
    u64 now_ns = bpf_ktime_get_ns();
    dwait_end(tid, w, now_ns);
    return now_ns;
}

/* Like the waits map, dwaits keeps a task's entry from its first D sleep to its
 * exit: a sleep is written in place and its end clears start_ns (a hash insert
 * and delete per D sleep otherwise, at every disk or lock wait of the host). */
static __always_inline void dwait_begin(u32 tid, const char *comm, u64 now_ns, u32 hint, u64 gfp, s32 order,
                                        u32 *counted)
{
    struct aw_wait *d = dwaits.lookup(&tid);
    if (d) {
        d->gfp = gfp;
        d->order = order;
        d->site_hint = hint;
        d->depth = counted != 0; /* D sleeps: 1 when counted in `counted` (the raw sched_switch) */
        if (counted)
            __sync_fetch_and_add(counted, 1);
        d->pid = bpf_get_current_pid_tgid() >> 32;
        __builtin_memcpy(d->comm, comm, sizeof(d->comm));
        d->start_ns = now_ns; /* last: a reader that sees it open sees this sleep's fields */
        return;
    }
    struct aw_wait fresh = {};
    fresh.start_ns = now_ns;
    fresh.gfp = gfp;
    fresh.order = order;
    fresh.site_hint = hint;
    fresh.depth = counted != 0;
    fresh.pid = bpf_get_current_pid_tgid() >> 32;
    __builtin_memcpy(fresh.comm, comm, sizeof(fresh.comm));
    if (dwaits.update(&tid, &fresh))
        stat_inc(AW_STAT_DWAITS_FULL);
    else if (counted)
        __sync_fetch_and_add(counted, 1);
}

/* The task switched out in D begins a sleep, named by the hint a tracepoint
 * left just before it if that is fresh (taken: a hint names one sleep). */
static __always_inline void dwait_begin_switched_out(u32 tid, const char *comm, u64 now_ns, u32 *counted)
{
    u64 gfp = AW_GFP_UNKNOWN;
    s32 order = -1;
    u32 hint = AW_SITE_NONE;
    struct aw_hint *h = fresh_hint(tid, now_ns);
    if (h) {
        hint = h->site;
        gfp = h->gfp;
        order = h->order;
        hints.delete(&tid);
    }
    dwait_begin(tid, comm, now_ns, hint, gfp, order, counted);
}

/* Every context switch: the task coming in ends its D sleep, the task going out
 * in TASK_UNINTERRUPTIBLE (the idle task aside) begins one. The comm is copied
 * out of the record here: the verifier refuses a read of the record through a
 * pointer into it, which is what a helper would be handed. */
int aw_sched_switch(struct tracepoint__sched__sched_switch *args)
{
    u64 now_ns = dwait_end_switched_in(args->next_pid);
    if (args->prev_state != AW_REPORT_UNINTERRUPTIBLE || args->prev_pid == 0)
        return 0;
    char comm[AW_COMM_LEN] __attribute__((aligned(8)));
    __builtin_memcpy(comm, args->prev_comm, sizeof(comm));
    dwait_begin_switched_out(args->prev_pid, comm, now_ns ? now_ns : bpf_ktime_get_ns(), 0);
    return 0;
}

#ifdef AW_RTP_SCHED_SWITCH
/* The same on the raw tracepoint, which fills in no record: the loader attaches
 * it instead where BTF gives the offsets (allocwatch/kernel/schedswitch.py).
 * Raw args: (bool preempt, struct task_struct *prev, struct task_struct *next,
 * unsigned int prev_state) since fa2c3254d7cf (v5.18); before it, no prev_state,
 * and prev->__state (2f064a59a11f, v5.14; `long state` before, whose low half is
 * read) at AW_SWITCH_OFF_STATE. prev is current here: its pid and comm come
 * from helpers. The raw state is what the classic tracepoint folds into 2
 * (__trace_sched_switch_state): not preempted, TASK_UNINTERRUPTIBLE the highest
 * TASK_REPORT bit, not TASK_IDLE. The bits: TASK_REPORT 0x7f since
 * 8ef9925b02c2 (v4.14), TASK_NOLOAD 0x400 since 80ed87c8a9ca (v4.2), with
 * TASK_WAKEKILL and the freezer bits left out as the tracepoint leaves them. */
#define AW_TASK_UNINTERRUPTIBLE 0x2
#define AW_TASK_REPORT 0x7f
#define AW_TASK_NOLOAD 0x400

/* Reading next->pid is a helper call (bpf_probe_read_kernel), which cost as
 * much as the rest of the handler on a switch that ends no sleep. So the tasks
 * asleep in D are counted by their task_struct's address, in a few slots: a
 * switch-in whose slot counts none (nearly all) leaves after one array read.
 * A sleep is counted at its switch-out (prev's address) and uncounted at its
 * end (next's: the same task); aw_wait.depth says it was counted. Sleeps user
 * space seeded are in no slot: while one is open (tunables[AW_TUNABLE_SEEDED])
 * every switch-in is looked up. A count left behind (a counted sleep deleted
 * while open) sends its slot's switch-ins the long way for good: user space
 * leaves open sleeps to end here (BpfSource.let_go_dwait) but when the map is
 * crowded or an entry is stale. */
#ifndef AW_SLEEPER_SLOTS
#define AW_SLEEPER_SLOTS 16384
#endif
BPF_ARRAY(sleepers, u32, AW_SLEEPER_SLOTS);

static __always_inline u32 *sleeper_slot(u64 task)
{
    u32 slot = (task >> 6) & (AW_SLEEPER_SLOTS - 1); /* task_structs are cache-line aligned */
    return sleepers.lookup(&slot);
}

static __always_inline u64 dwait_end_switched_in_raw(void *next)
{
    u32 *n = sleeper_slot((u64)next);
    if (!n || (!*n && !tunable(AW_TUNABLE_SEEDED, 0)))
        return 0;
    u32 tid = 0;
    bpf_probe_read_kernel(&tid, sizeof(tid), next + AW_SWITCH_OFF_PID);
    struct aw_wait *w = dwaits.lookup(&tid);
    if (!w || !w->start_ns)
        return 0;
    if (w->depth && *n)
        __sync_fetch_and_add(n, -1);
    u64 now_ns = bpf_ktime_get_ns();
    dwait_end(tid, w, now_ns);
    return now_ns;
}

int aw_rtp_sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
    u64 now_ns = dwait_end_switched_in_raw((void *)ctx->args[2]);
#ifdef AW_RTP_SCHED_SWITCH_PREV_STATE
    u32 state = (u32)ctx->args[3];
#else
    u32 state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), (void *)ctx->args[1] + AW_SWITCH_OFF_STATE);
#endif
    if ((state & (AW_TASK_REPORT | AW_TASK_NOLOAD)) != AW_TASK_UNINTERRUPTIBLE || ctx->args[0])
        return 0;
    u32 prev_tid = (u32)bpf_get_current_pid_tgid();
    if (prev_tid == 0)
        return 0;
    char comm[AW_COMM_LEN] __attribute__((aligned(8)));
    bpf_get_current_comm(&comm, sizeof(comm));
    dwait_begin_switched_out(prev_tid, comm, now_ns ? now_ns : bpf_ktime_get_ns(), sleeper_slot(ctx->args[1]));
    return 0;
}
#endif

/* A wait still open when its task exits ended with the task: count it, and
 * send it up if it was long, so user space says "exited" (or "killed"). */
static __always_inline void end_at_exit(u32 tid, u32 tgid, u32 site, struct aw_wait *w, u64 now_ns)
{
    u64 duration_ns = now_ns - w->start_ns;
    if (site < AW_NR_SITES)
        hist_add(site, duration_ns);
    else if (w->site_hint < AW_NR_SITES)
        hist_add(w->site_hint, duration_ns);
    if (duration_ns >= tunable(0, LONG_WAIT_NS))
        emit_end(tid, site, w, duration_ns, end_how(tid, tgid, w->start_ns, AW_END_EXITED));
}

int aw_sched_process_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u32 tid = args->pid;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 now_ns = bpf_ktime_get_ns();
    struct aw_wait_key key = {.tid = tid};
#pragma unroll
    for (u32 site = 0; site < AW_NR_SITES; site++) {
        key.site = site;
        struct aw_wait *w = waits.lookup(&key);
        if (w) {
            if (w->start_ns) /* an entry with no wait open is only deleted */
                end_at_exit(tid, tgid, site, w, now_ns);
            waits.delete(&key);
        }
    }
    struct aw_wait *d = dwaits.lookup(&tid);
    if (d) {
        if (d->start_ns)
            end_at_exit(tid, tgid, AW_SITE_DSTATE, d, now_ns);
        dwaits.delete(&tid);
    }
    hints.delete(&tid);
    task_acct.delete(&tid); /* user space sees it gone: its throttled or livelock episode ends */
#ifdef AW_BEGIN_STACKS
    task_stacks.delete(&tid); /* a reused tid must not show this task's stack */
#endif
    return 0;
}

#ifdef AW_TP_SIGNAL_GENERATE
#define AW_SIGKILL 9
int aw_signal_generate(struct tracepoint__signal__signal_generate *args)
{
    if (args->sig != AW_SIGKILL)
        return 0;
    u32 target = args->pid;
    u64 now_ns = bpf_ktime_get_ns();
    sigkills.update(&target, &now_ns);
    return 0;
}
#endif

/* ---- tracepoint pairs ---- */

#ifdef AW_TP_DIRECT_RECLAIM
int aw_direct_reclaim_begin(struct tracepoint__vmscan__mm_vmscan_direct_reclaim_begin *args)
{
    return wait_begin_stack(args, AW_SITE_DIRECT_RECLAIM, args->gfp_flags, args->order);
}
int aw_direct_reclaim_end(struct tracepoint__vmscan__mm_vmscan_direct_reclaim_end *args)
{
    return reclaim_end(AW_SITE_DIRECT_RECLAIM, args->nr_reclaimed);
}
#endif

#ifdef AW_TP_MEMCG_RECLAIM
int aw_memcg_reclaim_begin(struct tracepoint__vmscan__mm_vmscan_memcg_reclaim_begin *args)
{
    return wait_begin_stack(args, AW_SITE_MEMCG_RECLAIM, args->gfp_flags, args->order);
}
int aw_memcg_reclaim_end(struct tracepoint__vmscan__mm_vmscan_memcg_reclaim_end *args)
{
    return reclaim_end(AW_SITE_MEMCG_RECLAIM, args->nr_reclaimed);
}
#endif

#ifdef AW_TP_LRU_SHRINK_INACTIVE
/* Pages reclaimed so far by a direct or memcg reclaim wait in flight: every
 * shrink_inactive_list() pass ends with this summary, in the reclaiming task's
 * context; nr_reclaimed has been a field of it on every kernel checked (v4.4
 * to v5.15 from their symbols, v6.1 headers, v6.18 tracefs). A pass that freed
 * nothing leaves before any lookup; kswapd and tasks with no reclaim wait open
 * leave after two. Both waits of a task in one nested in the other gain the
 * pages: they were freed while each waited. Slab pages freed by shrinkers are
 * counted only at the end (reclaim_end's nr_reclaimed). */
static __always_inline void add_reclaimed(u32 tid, u32 site, u64 pages)
{
    struct aw_wait_key key = {.tid = tid, .site = site};
    struct aw_wait *w = waits.lookup(&key);
    if (w && w->start_ns)
        w->reclaimed_pages += pages; /* only this task writes its own waits */
}

int aw_lru_shrink_inactive(struct tracepoint__vmscan__mm_vmscan_lru_shrink_inactive *args)
{
    u64 pages = args->nr_reclaimed;
    if (!pages)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    add_reclaimed(tid, AW_SITE_MEMCG_RECLAIM, pages);
    add_reclaimed(tid, AW_SITE_DIRECT_RECLAIM, pages);
    return 0;
}
#endif

#ifdef AW_TP_SHRINK_SLAB
/* The shrinkers a task calls in its direct or memcg reclaim, per shrink
 * function (vmscan:mm_shrink_slab_start/_end, fields as used here in every
 * kernel from v4.4 to v6.18). These fire for every shrinker with objects in
 * every reclaim pass, kswapd's included. A task gets its entry only from a call
 * made while one of its pair-timed waits is open, so kswapd and drop_caches
 * leave after two lookups and never fill the map; once it has one, a call costs
 * one lookup (3.9x the empty program in a reclaim storm, as with two: BENCHMARKS.md). */
BPF_TABLE("lru_hash", u32, struct aw_shrink_acct, shrink_acct, 4096); /* 1.4 MiB */
BPF_PERCPU_ARRAY(shrink_zero, struct aw_shrink_acct, 1);

static __always_inline int in_reclaim_wait(u32 tid)
{
    struct aw_task_acct *a = task_acct.lookup(&tid);
    return a && a->open;
}

/* The slot of `fn`, or (take) a free or the least called one given to it. */
static __always_inline int shrink_slot(struct aw_shrink_acct *s, u64 fn, int take)
{
    u32 least = 0;
#pragma unroll
    for (u32 i = 0; i < AW_SHRINK_SLOTS; i++) {
        if (s->fn[i] == fn)
            return i;
        if (s->calls[i] < s->calls[least & (AW_SHRINK_SLOTS - 1)])
            least = i;
    }
    if (!take)
        return -1;
    least &= AW_SHRINK_SLOTS - 1;
    s->fn[least] = fn;
    s->asked[least] = 0;
    s->freed[least] = 0;
    s->calls[least] = 0;
    return least;
}

int aw_shrink_slab_start(struct tracepoint__vmscan__mm_shrink_slab_start *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct aw_shrink_acct *s = shrink_acct.lookup(&tid);
    if (!s) {
        if (!in_reclaim_wait(tid))
            return 0;
        u32 zero = 0;
        struct aw_shrink_acct *z = shrink_zero.lookup(&zero);
        if (!z)
            return 0;
        shrink_acct.update(&tid, z);
        s = shrink_acct.lookup(&tid);
        if (!s)
            return 0;
    }
    int i = shrink_slot(s, (u64)args->shrink, 1) & (AW_SHRINK_SLOTS - 1);
    s->calls[i] += 1; /* only this task writes its own entry */
    s->asked[i] += args->total_scan;
    s->objects[i] = args->cache_items;
    s->gfp[i] = (u32)args->gfp_flags;
    return 0;
}

int aw_shrink_slab_end(struct tracepoint__vmscan__mm_shrink_slab_end *args)
{
    if (args->retval <= 0)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct aw_shrink_acct *s = shrink_acct.lookup(&tid);
    if (!s)
        return 0;
    int i = shrink_slot(s, (u64)args->shrink, 0);
    if (i < 0)
        return 0;
    s->freed[i & (AW_SHRINK_SLOTS - 1)] += args->retval;
    return 0;
}
#endif

#ifdef AW_TP_MEMCG_SOFTLIMIT_RECLAIM
int aw_memcg_softlimit_reclaim_begin(
    struct tracepoint__vmscan__mm_vmscan_memcg_softlimit_reclaim_begin *args)
{
    return wait_begin(AW_SITE_MEMCG_SOFTLIMIT_RECLAIM, args->gfp_flags, args->order);
}
int aw_memcg_softlimit_reclaim_end(
    struct tracepoint__vmscan__mm_vmscan_memcg_softlimit_reclaim_end *args)
{
    return wait_end(AW_SITE_MEMCG_SOFTLIMIT_RECLAIM);
}
#endif

#ifdef AW_TP_NODE_RECLAIM
int aw_node_reclaim_begin(struct tracepoint__vmscan__mm_vmscan_node_reclaim_begin *args)
{
    return wait_begin(AW_SITE_NODE_RECLAIM, args->gfp_flags, args->order);
}
int aw_node_reclaim_end(struct tracepoint__vmscan__mm_vmscan_node_reclaim_end *args)
{
    return wait_end(AW_SITE_NODE_RECLAIM);
}
#endif

#ifdef AW_TP_COMPACTION
int aw_compaction_begin(struct tracepoint__compaction__mm_compaction_begin *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct aw_hint *h = fresh_hint(tid, bpf_ktime_get_ns());
    if (h && h->site == AW_SITE_COMPACTION)
        return wait_begin(AW_SITE_COMPACTION, h->gfp, h->order);
    return wait_begin(AW_SITE_COMPACTION, AW_GFP_UNKNOWN, -1);
}
int aw_compaction_end(struct tracepoint__compaction__mm_compaction_end *args)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct aw_hint *h = hints.lookup(&tid);
    /* Compaction is over: a later sleep is not a compaction wait. */
    if (h && h->site == AW_SITE_COMPACTION)
        hints.delete(&tid);
    return wait_end_tid(tid, AW_SITE_COMPACTION, args->status);
}
#endif

#ifdef AW_TP_TRY_TO_COMPACT_PAGES
int aw_try_to_compact_pages(struct tracepoint__compaction__mm_compaction_try_to_compact_pages *args)
{
    return hint_sleep(AW_SITE_COMPACTION, args->gfp_mask, args->order);
}
#endif

/* The OOM reaper works on a victim from its own thread: the wait is keyed by
 * the victim (tid and pid are the victim's; comm is the reaper's own). */
#ifdef AW_TP_OOM_REAPER
int aw_start_task_reaping(struct tracepoint__oom__start_task_reaping *args)
{
    wait_begin_tid(args->pid, args->pid, AW_SITE_OOM_REAPER, AW_GFP_UNKNOWN, -1);
    return 0;
}
int aw_finish_task_reaping(struct tracepoint__oom__finish_task_reaping *args)
{
    return wait_end_tid(args->pid, AW_SITE_OOM_REAPER, -1);
}
#endif

/* ---- waits reported after the sleep ---- */

#ifdef AW_TP_VMSCAN_THROTTLED
/* Since 8cd7c588decf (v5.16); the record holds 1U << enum vmscan_throttle_state,
 * and VMSCAN_THROTTLE_ISOLATED (1) is the too_many_isolated() wait since
 * d818fca1cac3 (v5.16). */
#define AW_THROTTLE_ISOLATED_BIT (1U << 1)
int aw_vmscan_throttled(struct tracepoint__vmscan__mm_vmscan_throttled *args)
{
    u32 site = (args->reason & AW_THROTTLE_ISOLATED_BIT) ? AW_SITE_TOO_MANY_ISOLATED
                                                        : AW_SITE_RECLAIM_THROTTLE;
    wait_done(site, (u64)args->usec_delayed * 1000);
    u64 id = bpf_get_current_pid_tgid();
    char comm[AW_COMM_LEN];
    bpf_get_current_comm(&comm, sizeof(comm));
    struct aw_task_acct *a = acct_of((u32)id, id >> 32, comm);
    if (!a)
        return 0;
    u32 reason = args->reason;
#pragma unroll
    for (int bit = 0; bit < 4; bit++)
        if (reason & (1U << bit))
            __sync_fetch_and_add(&a->throttle_reasons[bit], 1);
    return 0;
}
#endif

#ifdef AW_TP_CONGESTION_WAIT
int aw_congestion_wait(struct tracepoint__writeback__writeback_congestion_wait *args)
{
    return wait_done(AW_SITE_CONGESTION_WAIT, (u64)args->usec_delayed * 1000);
}
#endif

#ifdef AW_TP_WAIT_IFF_CONGESTED
int aw_wait_iff_congested(struct tracepoint__writeback__writeback_wait_iff_congested *args)
{
    return wait_done(AW_SITE_WAIT_IFF_CONGESTED, (u64)args->usec_delayed * 1000);
}
#endif

/* ---- tracepoints just before a sleep ---- */

#ifdef AW_TP_BALANCE_DIRTY_PAGES
#ifdef AW_HAVE_DIRTY_PAUSE
/* The pause chosen and what chose it, for a report of the sleep in flight.
 * Only fields every supported kernel has: bdi_setpoint/bdi_dirty became
 * wb_setpoint/wb_dirty in f1ab2831e2a4 (v6.15), so they are left out. One
 * note per sleep chosen, and a sleep lasts up to max_pause (200 ms). */
#ifndef MAX_DIRTY_PAUSES
#define MAX_DIRTY_PAUSES 4096
#endif
BPF_TABLE("lru_hash", u32, struct aw_dirty_pause, dirty_pauses, MAX_DIRTY_PAUSES);

static __always_inline void note_dirty_pause(struct aw_dirty_pause *p)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    p->time_ns = bpf_ktime_get_ns();
    dirty_pauses.update(&tid, p);
}
#endif

int aw_balance_dirty_pages(struct tracepoint__writeback__balance_dirty_pages *args)
{
    /* pause <= 0: no sleep follows. Otherwise the sleep is TASK_KILLABLE:
     * the D-state tracking times it, named by this hint. */
    if (args->pause <= 0)
        return 0;
#ifdef AW_HAVE_DIRTY_PAUSE
    /* read here: bcc defines the args struct only for the entry point */
    struct aw_dirty_pause p = {
        .dirty = args->dirty,
        .setpoint = args->setpoint,
        .limit = args->limit,
        .pause_ms = args->pause,
        .period_ms = args->period,
        .think_ms = args->think,
        .paused_ms = args->paused,
        .dirtied = args->dirtied,
        .dirtied_pause = args->dirtied_pause,
    };
    note_dirty_pause(&p);
#endif
    return hint_sleep(AW_SITE_DIRTY_THROTTLE, AW_GFP_UNKNOWN, -1);
}
#endif

#ifdef AW_HAVE_WB_NOTE
/* Which device a writeback wait waits on: one note per folio_wait_bit() sleep
 * to come. name is a fixed char[32] in the record (not __data_loc). */
#ifndef MAX_WB_NOTES
#define MAX_WB_NOTES 4096
#endif
BPF_TABLE("lru_hash", u32, struct aw_wb_note, wb_notes, MAX_WB_NOTES);

static __always_inline void note_wb_wait(struct aw_wb_note *n)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    n->time_ns = bpf_ktime_get_ns();
    wb_notes.update(&tid, n);
}
#endif

#ifdef AW_TP_FOLIO_WAIT_WRITEBACK
int aw_folio_wait_writeback(struct tracepoint__writeback__folio_wait_writeback *args)
{
#ifdef AW_HAVE_WB_NOTE
    /* read here: bcc defines the args struct only for the entry point */
    struct aw_wb_note n = {.ino = args->ino};
    __builtin_memcpy(n.bdi, args->name, sizeof(n.bdi));
    note_wb_wait(&n);
#endif
    return hint_sleep(AW_SITE_WRITEBACK_WAIT, AW_GFP_UNKNOWN, -1);
}
#endif

#ifdef AW_TP_WAIT_ON_PAGE_WRITEBACK
int aw_wait_on_page_writeback(struct tracepoint__writeback__wait_on_page_writeback *args)
{
#ifdef AW_HAVE_WB_NOTE
    /* read here: bcc defines the args struct only for the entry point */
    struct aw_wb_note n = {.ino = args->ino};
    __builtin_memcpy(n.bdi, args->name, sizeof(n.bdi));
    note_wb_wait(&n);
#endif
    return hint_sleep(AW_SITE_WRITEBACK_WAIT, AW_GFP_UNKNOWN, -1);
}
#endif

/* ---- point events ---- */

#ifdef AW_TP_MARK_VICTIM
int aw_mark_victim(struct tracepoint__oom__mark_victim *args)
{
    struct aw_event ev = {};
    u64 id = bpf_get_current_pid_tgid();
    ev.kind = AW_EV_OOM_KILL;
    ev.site = AW_SITE_OOM;
    ev.tid = (u32)id;
    ev.pid = id >> 32;
    ev.start_ns = bpf_ktime_get_ns();
    ev.gfp = AW_GFP_UNKNOWN;
    ev.order = -1;
    ev.target_pid = args->pid;
    ev.site_hint = AW_SITE_NONE;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
#ifdef AW_HAVE_MARK_VICTIM_COMM
    /* comm was added to mark_victim by "mm: update mark_victim tracepoints
     * fields" (v6.9, backported to some stable kernels). */
    TP_DATA_LOC_READ_STR(ev.target_comm, comm, sizeof(ev.target_comm));
#endif
#ifdef AW_HAVE_MARK_VICTIM_RSS
    /* Same commit: the victim's RSS in kB, uid and oom_score_adj. */
    ev.target_anon_rss_kb = args->anon_rss;
    ev.target_file_rss_kb = args->file_rss;
    ev.target_shmem_rss_kb = args->shmem_rss;
    ev.target_uid = args->uid;
    ev.target_oom_score_adj = args->oom_score_adj;
    ev.target_flags = AW_VICTIM_RSS;
#endif
    stat_inc(AW_STAT_OOM_KILLS);
    if (events.ringbuf_output(&ev, sizeof(ev), 0))
        stat_inc(AW_STAT_EVENTS_LOST);
    return 0;
}
#endif

#ifdef AW_OOM_OC
/* out_of_memory(struct oom_control *oc) by invoker tid, while it runs (a kprobe
 * pair: no tracepoint carries oc). oc is on the invoker's stack; mark_victim
 * runs inside out_of_memory, so it is read there while it lives. */
BPF_HASH(oom_oc, u32, u64, 1024);

int aw_kp_oom_oc(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 oc = PT_REGS_PARM1(ctx);
    oom_oc.update(&tid, &oc);
    return 0;
}

int aw_kr_oom_oc(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    oom_oc.delete(&tid);
    return 0;
}
#endif

#ifdef AW_OOM_CONTEXT
/* Every offset below comes from the running kernel's BTF
 * (allocwatch/kernel/oomcontext.py), never from headers; an id is 0 when any
 * link cannot be read. */

/* A memory cgroup's id from its css: css->cgroup->kn->id. */
static __always_inline u64 css_memcg_id(void *css)
{
    void *p = 0;
    u64 id = 0;
    if (bpf_probe_read_kernel(&p, sizeof(p), css + AW_OFF_CSS_CGROUP) || !p)
        return 0;
    if (bpf_probe_read_kernel(&p, sizeof(p), p + AW_OFF_CGROUP_KN) || !p)
        return 0;
    bpf_probe_read_kernel(&id, sizeof(id), p + AW_OFF_KN_ID);
    return id;
}

/* The memory cgroup of a task, as the kernel sees it now:
 * task->cgroups->subsys[memory_cgrp_id], then as above. */
static __always_inline u64 task_memcg_id(void *task)
{
    void *p = 0;
    if (bpf_probe_read_kernel(&p, sizeof(p), task + AW_OFF_TASK_CGROUPS) || !p)
        return 0;
    if (bpf_probe_read_kernel(&p, sizeof(p), p + AW_OFF_CSS_SET_MEMCG) || !p)
        return 0;
    return css_memcg_id(p);
}

#ifdef AW_OOM_OC
/* What the kernel's own oom-kill line says: gfp_mask, order, constraint, and
 * the memory cgroup out of memory (oc->memcg; none for the machine's OOM). */
static __always_inline void read_oc(struct aw_oom_context *ev)
{
    u64 *ocp = oom_oc.lookup(&ev->invoker_tid);
    if (!ocp)
        return;
    void *oc = (void *)*ocp;
    u32 gfp = 0;
    s32 order = -1, constraint = -1;
    void *memcg = 0;
    if (bpf_probe_read_kernel(&gfp, sizeof(gfp), oc + AW_OFF_OC_GFP) ||
        bpf_probe_read_kernel(&order, sizeof(order), oc + AW_OFF_OC_ORDER) ||
        bpf_probe_read_kernel(&constraint, sizeof(constraint), oc + AW_OFF_OC_CONSTRAINT))
        return;
    ev->gfp = gfp;
    ev->order = order;
    ev->constraint = constraint;
    ev->flags |= AW_OOMCTX_OC;
    if (!bpf_probe_read_kernel(&memcg, sizeof(memcg), oc + AW_OFF_OC_MEMCG) && memcg)
        ev->domain_cgroup_id = css_memcg_id(memcg + AW_OFF_MEMCG_CSS);
}
#endif

/* Frames of the invoker's stack looked at: the kill is marked about five calls
 * below mem_cgroup_out_of_memory(). */
#define AW_OOM_STACK_FRAMES 16

/* Raw oom:mark_victim: TP_PROTO(struct task_struct *task, uid_t uid), run in
 * the invoker's context. A memcg OOM is told by mem_cgroup_out_of_memory() on
 * the invoker's stack ([AW_MEMCG_OOM_START, AW_MEMCG_OOM_END) from kallsyms):
 * no tracepoint carries oom_control, and kprobes may be off. */
int aw_rtp_mark_victim(struct bpf_raw_tracepoint_args *ctx)
{
    struct aw_oom_context ev = {};
    u64 ips[AW_OOM_STACK_FRAMES] = {};
    void *victim = (void *)ctx->args[0];
    u32 pid = 0;
    bpf_probe_read_kernel(&pid, sizeof(pid), victim + AW_OFF_TASK_PID);
    ev.kind = AW_EV_OOM_CONTEXT;
    ev.time_ns = bpf_ktime_get_ns();
    ev.victim_pid = pid;
    ev.invoker_tid = (u32)bpf_get_current_pid_tgid();
    ev.gfp = AW_GFP_UNKNOWN;
    ev.order = -1;
    ev.constraint = -1;
    ev.stack_id = -1;
    ev.victim_cgroup_id = task_memcg_id(victim);
    ev.invoker_cgroup_id = task_memcg_id((void *)bpf_get_current_task());
#ifdef AW_OOM_OC
    read_oc(&ev);
#endif
    long got = bpf_get_stack(ctx, ips, sizeof(ips), 0);
    if (got > 0) {
        ev.flags |= AW_OOMCTX_STACK;
#pragma unroll
        for (int i = 0; i < AW_OOM_STACK_FRAMES; i++) {
            if (i * 8 < got && ips[i] >= AW_MEMCG_OOM_START && ips[i] < AW_MEMCG_OOM_END)
                ev.flags |= AW_OOMCTX_MEMCG;
        }
    }
    if (events.ringbuf_output(&ev, sizeof(ev), 0))
        stat_inc(AW_STAT_EVENTS_LOST);
    return 0;
}
#endif

/* ---- every task's state at once, for a block that lists many ---- */

#ifdef AW_TASK_ITER
/* A task iterator (eaaacd23910f, v5.8): run when user space reads its fd, once
 * a task of the reader's pid namespace, writing one aw_task_now a task. A block
 * of 10,000 listed tasks read 10,000 /proc stat files for the same facts
 * (allocwatch/kernel/taskiter.py decodes these, and leaves to /proc what it
 * cannot say exactly). Fields are read at the offsets BTF gives (-D
 * AW_ITER_OFF_*), never at the headers'; the state's low 32 bits, where every
 * state bit is, come first on a little-endian machine (`__state` since
 * 2f064a59a11f, v5.14; `long state` before). The context's two pointers are
 * the iterator's (meta, task), as the kernel's bpf_iter__task declares them. */
struct aw_iter_meta {
    void *seq;
    u64 session_id;
    u64 seq_num;
};

struct aw_iter_task {
    struct aw_iter_meta *meta;
    void *task;
};

int bpf_iter__task(struct aw_iter_task *ctx)
{
    char *t = ctx->task;
    if (!t)
        return 0;
    struct aw_task_now now = {};
    /* a field not read leaves no record: user space reads that task's stat */
    if (bpf_probe_read_kernel(&now.tid, sizeof(now.tid), t + AW_ITER_OFF_PID) ||
        bpf_probe_read_kernel(&now.state, sizeof(now.state), t + AW_ITER_OFF_STATE) ||
        bpf_probe_read_kernel(&now.exit_state, sizeof(now.exit_state), t + AW_ITER_OFF_EXIT_STATE) ||
        bpf_probe_read_kernel(&now.flags, sizeof(now.flags), t + AW_ITER_OFF_FLAGS) ||
        bpf_probe_read_kernel(&now.signal_lo, sizeof(now.signal_lo), t + AW_ITER_OFF_SIGNAL))
        return 0;
    bpf_seq_write(ctx->meta->seq, &now, sizeof(now));
    return 0;
}
#endif

/* ---- kprobe pairs, for kernels with CONFIG_KPROBES ---- */

#ifdef AW_KPROBES
#define AW_KPROBE_PAIR(name, site)                                      \
    int aw_kp_enter_##name(struct pt_regs *ctx)                         \
    {                                                                   \
        return wait_begin(site, AW_GFP_UNKNOWN, -1);                    \
    }                                                                   \
    int aw_kp_return_##name(struct pt_regs *ctx) { return wait_end(site); }

/* The allocator entry points take (gfp_t gfp, unsigned int order, ...) in
 * every version from __alloc_pages_nodemask to __alloc_frozen_pages_noprof. */
#define AW_KPROBE_PAIR_GFP(name, site)                                  \
    int aw_kp_enter_##name(struct pt_regs *ctx)                         \
    {                                                                   \
        return wait_begin(site, PT_REGS_PARM1(ctx), (s32)PT_REGS_PARM2(ctx)); \
    }                                                                   \
    int aw_kp_return_##name(struct pt_regs *ctx) { return wait_end(site); }

AW_KPROBE_PAIR(alloc_slowpath, AW_SITE_ALLOC_SLOWPATH)
AW_KPROBE_PAIR_GFP(alloc_pages, AW_SITE_ALLOC_PAGES)
AW_KPROBE_PAIR(direct_reclaim, AW_SITE_DIRECT_RECLAIM)
AW_KPROBE_PAIR(memcg_reclaim, AW_SITE_MEMCG_RECLAIM)
AW_KPROBE_PAIR(memcg_softlimit_reclaim, AW_SITE_MEMCG_SOFTLIMIT_RECLAIM)
AW_KPROBE_PAIR(node_reclaim, AW_SITE_NODE_RECLAIM)
AW_KPROBE_PAIR(reclaim_throttle, AW_SITE_RECLAIM_THROTTLE)
AW_KPROBE_PAIR(congestion_wait, AW_SITE_CONGESTION_WAIT)
AW_KPROBE_PAIR(wait_iff_congested, AW_SITE_WAIT_IFF_CONGESTED)
AW_KPROBE_PAIR(throttle_vm_writeout, AW_SITE_THROTTLE_VM_WRITEOUT)
AW_KPROBE_PAIR(compaction, AW_SITE_COMPACTION)
AW_KPROBE_PAIR(dirty_throttle, AW_SITE_DIRTY_THROTTLE)
AW_KPROBE_PAIR(writeback_wait, AW_SITE_WRITEBACK_WAIT)
AW_KPROBE_PAIR(pfmemalloc_throttle, AW_SITE_PFMEMALLOC_THROTTLE)
AW_KPROBE_PAIR(memcg_oom_wait, AW_SITE_MEMCG_OOM_WAIT)
AW_KPROBE_PAIR(memcg_high_throttle, AW_SITE_MEMCG_HIGH_THROTTLE)
AW_KPROBE_PAIR(oom, AW_SITE_OOM)
#endif
