// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* allocwatch: the records shared by the BPF programs and the Python daemon.
 *
 * This header is the one definition of the wire format. allocwatch/kernel/wire.py
 * mirrors it with ctypes, and tests/unit/test_wire.py pins sizes, offsets and
 * the site numbers against this file. Change both together.
 */
#ifndef ALLOCWATCH_H
#define ALLOCWATCH_H

/* Wait sites. The numbers are an ABI between the BPF side and the daemon
 * (allocwatch/core/sites.py); names match the `site` field of reports. */
#define AW_SITE_ALLOC_SLOWPATH          0
#define AW_SITE_ALLOC_PAGES             1
#define AW_SITE_DIRECT_RECLAIM          2
#define AW_SITE_MEMCG_RECLAIM           3
#define AW_SITE_MEMCG_SOFTLIMIT_RECLAIM 4
#define AW_SITE_NODE_RECLAIM            5
#define AW_SITE_TOO_MANY_ISOLATED       6
#define AW_SITE_RECLAIM_THROTTLE        7
#define AW_SITE_CONGESTION_WAIT         8
#define AW_SITE_WAIT_IFF_CONGESTED      9
#define AW_SITE_THROTTLE_VM_WRITEOUT    10
#define AW_SITE_COMPACTION              11
#define AW_SITE_DIRTY_THROTTLE          12
#define AW_SITE_WRITEBACK_WAIT          13
#define AW_SITE_PFMEMALLOC_THROTTLE     14
#define AW_SITE_MEMCG_OOM_WAIT          15
#define AW_SITE_MEMCG_HIGH_THROTTLE     16
#define AW_SITE_OOM                     17
#define AW_SITE_OOM_REAPER              18
#define AW_NR_SITES                     19
/* A sleep in TASK_UNINTERRUPTIBLE seen at sched_switch; user space names the
 * site from a hint (below) or from the task's kernel stack. */
#define AW_SITE_DSTATE                  31
#define AW_SITE_NONE                    0xffffffff

/* Completed-wait histogram: slot k counts waits of [2^k, 2^(k+1)) microseconds
 * (slot 0 also takes waits under 1 us). */
#define AW_HIST_SLOTS 32

/* Event kinds on the ring buffer. */
#define AW_EV_WAIT_END   1 /* a wait that lasted at least LONG_WAIT_NS ended */
#define AW_EV_OOM_KILL   2 /* oom:mark_victim: target_* is the victim */
#define AW_EV_OOM_CONTEXT 3 /* struct aw_oom_context, from the raw oom:mark_victim */

/* How a wait ended (aw_event.how). */
#define AW_END_WOKE   0 /* the end tracepoint fired, or the sleeper was woken */
#define AW_END_KILLED 1 /* as above, after a SIGKILL was sent to it while it waited */
#define AW_END_EXITED 2 /* the task exited with the wait still open */

/* Counters in the `stats` array. */
#define AW_STAT_EVENTS_LOST   0 /* ring buffer full */
#define AW_STAT_WAITS_FULL    1 /* in-flight map full: a wait went untracked */
#define AW_STAT_DWAITS_FULL   2 /* D-state map full */
#define AW_STAT_UNMATCHED_END 3 /* an end with no begin (attached mid-wait) */
#define AW_STAT_OOM_KILLS     4
#define AW_NR_STATS           5

#define AW_GFP_UNKNOWN 0xffffffffffffffffULL
#define AW_COMM_LEN 16
#define AW_GFP_SLOTS 4

struct aw_wait_key {
    __u32 tid;
    __u32 site;
};

/* An in-flight wait (also the value of the D-state map, keyed by tid). */
struct aw_wait {
    __u64 start_ns;   /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at wait start */
    __u64 gfp;        /* gfp_t of the allocation, AW_GFP_UNKNOWN if none */
    __u32 pid;        /* tgid */
    __s32 order;      /* allocation order, -1 if unknown */
    __u32 depth;      /* nested begins of the same site still open */
    __u32 site_hint;  /* D-state only: site named by a tracepoint just before the sleep */
    char comm[AW_COMM_LEN];
    __u64 reclaimed_pages; /* direct/memcg reclaim: LRU pages reclaimed so far in this wait
                            * (mm_vmscan_lru_shrink_inactive nr_reclaimed, summed) */
    __u64 noted_ns;   /* waits map: when comm and the begin stack were last taken */
};

/* A short-lived note that a tracepoint fired just before the task sleeps
 * (folio_wait_writeback, balance_dirty_pages, try_to_compact_pages). */
struct aw_hint {
    __u64 time_ns;
    __u64 gfp;
    __u32 site;
    __s32 order;
};

/* What writeback:balance_dirty_pages said as it chose a sleep (pause > 0), by
 * tid. User space joins it to the D-state sleep it hinted: same tid, the sleep
 * began at most HINT_MAX_AGE_NS after time_ns. `dirty` is the throttling
 * domain's (global, or the memcg's with cgroup writeback); `limit` is the
 * global domain's smoothed dirty limit, as the tracepoint assigns it. */
struct aw_dirty_pause {
    __u64 time_ns;
    __u64 dirty;         /* pages dirty or under writeback */
    __u64 setpoint;      /* pages: the level the throttle steers dirty to */
    __u64 limit;         /* pages */
    __s64 pause_ms;      /* the sleep chosen: period_ms less think_ms, bounded */
    __u64 period_ms;     /* what the pages it dirtied take at its rate limit */
    __s64 think_ms;      /* since its last pause */
    __u64 paused_ms;     /* slept already in this balance_dirty_pages() call */
    __u32 dirtied;       /* pages the task dirtied since its last pause */
    __u32 dirtied_pause; /* pages it may dirty between two pauses */
};

/* What writeback:folio_wait_writeback said as the task began to wait on a
 * folio's writeback, by tid: the backing device (its bdi's name, "7:3" for a
 * block device) and the inode. User space joins it to the D-state sleep it
 * hinted (same tid, the sleep began at most HINT_MAX_AGE_NS after time_ns) and
 * to a direct or memcg reclaim wait of the task open since before time_ns. */
#define AW_BDI_NAME_LEN 32
struct aw_wb_note {
    __u64 time_ns;
    __u64 ino;
    char bdi[AW_BDI_NAME_LEN];
};

struct aw_event {
    __u64 start_ns;
    __u64 duration_ns;
    __u64 gfp;
    __u32 kind;
    __u32 site;
    __u32 tid;
    __u32 pid;
    __s32 order;
    __u32 target_pid; /* AW_EV_OOM_KILL: the victim */
    __u32 site_hint;  /* AW_SITE_DSTATE ends: the hint taken at sleep, or AW_SITE_NONE */
    __u32 how;        /* AW_EV_WAIT_END: AW_END_* */
    char comm[AW_COMM_LEN];
    char target_comm[AW_COMM_LEN];
    /* AW_EV_OOM_KILL, when target_flags has AW_VICTIM_RSS: the victim's memory
     * and standing, from oom:mark_victim (fields added in v6.9). */
    __u64 target_anon_rss_kb;
    __u64 target_file_rss_kb;
    __u64 target_shmem_rss_kb;
    __u32 target_uid;
    __s32 target_oom_score_adj;
    __u32 target_flags;
    __u32 end_detail; /* AW_EV_WAIT_END: pages a direct/memcg reclaim pass freed, or a
                       * compaction's status (enum compact_result), or ~0 */
};

#define AW_VICTIM_RSS 1

/* The memory cgroups of an OOM kill, read as the victim is marked (raw
 * oom:mark_victim, the victim's task_struct) at offsets user space took from
 * the running kernel's BTF. Sent right after the AW_EV_OOM_KILL of the same
 * kill; user space joins them on (victim_pid, invoker_tid). Cgroup ids are the
 * kernfs node ids of the memory hierarchy's directories (their inode numbers). */
struct aw_oom_context {
    __u64 time_ns;
    __u64 victim_cgroup_id;  /* 0: not read */
    __u64 gfp;               /* oc->gfp_mask, AW_GFP_UNKNOWN without oc */
    __u32 kind;              /* AW_EV_OOM_CONTEXT, at the offset of aw_event.kind */
    __u32 victim_pid;        /* task->pid of the victim, the pid of oom:mark_victim */
    __u32 invoker_tid;
    __s32 order;             /* oc->order, -1 without oc */
    __s32 constraint;        /* oc->constraint (enum oom_constraint), -1 without oc */
    __u32 flags;             /* AW_OOMCTX_* */
    __s64 stack_id;          /* the invoker's kernel stack (oom_stacks), or < 0 */
    __u64 invoker_cgroup_id; /* the memory cgroup of current, 0: not read */
    __u64 domain_cgroup_id;  /* the cgroup of oc->memcg (0: global OOM, or without oc) */
};

#define AW_OOMCTX_OC 1     /* gfp, order, constraint, domain_cgroup_id came from oc */
#define AW_OOMCTX_STACK 2  /* the invoker's stack was read */
#define AW_OOMCTX_MEMCG 4  /* mem_cgroup_out_of_memory() is on it: a memcg OOM */

/* Per task, cumulative since the programs were loaded: completed waits per
 * site, and reclaim passes with their progress. User space takes deltas over
 * a sliding window (the crawl, the throttled task, the livelock). */
struct aw_task_acct {
    __u64 wait_ns[AW_NR_SITES];
    __u32 waits[AW_NR_SITES];
    __u32 pid;
    __u64 reclaim_passes;  /* direct and memcg reclaim ends */
    __u64 reclaim_zero;    /* of them, with nr_reclaimed == 0 */
    __u64 reclaimed_pages;
    __u32 throttle_reasons[4]; /* mm_vmscan_throttled sleeps by reason bit (enum vmscan_throttle_state) */
    char comm[AW_COMM_LEN];
    __u64 busy_ns;        /* wall time in memory waits, nested ones counted once (ended waits only) */
    __u64 open_since_ns;  /* when the outermost pair-timed wait open now began */
    __u32 open;           /* pair-timed waits open now (one per site) */
    __u32 gfp_mask[AW_GFP_SLOTS];  /* the masks of its ended pair-timed waits... */
    __u32 gfp_waits[AW_GFP_SLOTS]; /* ...and how many of each (the least counted slot is reused) */
}; /* target_*_rss_kb, target_uid, target_oom_score_adj are set */

/* Per task, cumulative since the programs were loaded: the shrinkers its
 * direct and memcg reclaim waits called (vmscan:mm_shrink_slab_start/_end), a
 * few slots by shrink function (the least called one reused for a new one).
 * User space takes deltas over the window of a throttled or livelock task. */
#define AW_SHRINK_SLOTS 8
struct aw_shrink_acct {
    __u64 fn[AW_SHRINK_SLOTS];      /* the shrinker's scan function (a kernel address), 0: free slot */
    __u64 asked[AW_SHRINK_SLOTS];   /* objects it was asked to scan (total_scan at start), summed */
    __u64 freed[AW_SHRINK_SLOTS];   /* objects it freed (the end's return value when > 0), summed */
    __u64 objects[AW_SHRINK_SLOTS]; /* freeable objects it counted at its last call (cache_items) */
    __u32 calls[AW_SHRINK_SLOTS];
    __u32 gfp[AW_SHRINK_SLOTS];     /* the gfp mask of its last call */
};

/* One task as the task iterator sees it (bpf_iter__task): the raw fields
 * /proc's stat letter and its flags and signal fields come from. */
struct aw_task_now {
    __u32 tid;        /* task->pid */
    __u32 state;      /* task->__state (the low half of `long state` before v5.14) */
    __u32 exit_state; /* EXIT_ZOMBIE, EXIT_DEAD or 0 */
    __u32 flags;      /* task->flags (PF_EXITING) */
    __u32 signal_lo;  /* the low 32 bits of its own pending set (SIGKILL: bit 8) */
};

#endif /* ALLOCWATCH_H */
