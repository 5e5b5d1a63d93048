// SPDX-License-Identifier: GPL-2.0
/* memcg family, tracepoint tiers: writeback pages started/completed, uncharge batches and
 * tasks waiting on writeback, per memory cgroup. Every attach point is a thin wrapper
 * around one __always_inline handler, so SEC("syscall") test programs exercise exactly the
 * logic that the real hooks run (BPF_PROG_TEST_RUN, see test/memcg.test.ts). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"
#include "mm.h"

char LICENSE[] SEC("license") = "GPL";

struct memcg_key {
	u64 cgroup_id; /* kernfs id of the memcg's cgroup: cgroup_id(memcg->css.cgroup) */
};

struct memcg_stats {
	u64 wb_started_pages;
	u64 wb_completed_pages;
	u64 wb_waits;
	u64 uncharged_pages;
	u64 uncharge_batch_slots[HIST_SLOTS]; /* log2(pages per uncharge batch) */
	u64 wb_wait_slots[HIST_SLOTS];        /* log2 ns a task waited for one folio's writeback */
	u64 wb_wait_sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* the agent resizes it from config before load */
	__type(key, struct memcg_key);
	__type(value, struct memcg_stats);
} memcg_stats SEC(".maps");

/* A writeback wait in progress, per thread. */
struct wb_wait {
	u64 start_ns;
	u64 folio;
	u64 cgroup_id;
	u32 slept; /* tracepoint tier: the task switched out asleep while the folio was under writeback */
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH); /* a lost end (task killed mid-wait) ages out */
	__uint(max_entries, 8192);
	__type(key, u32); /* thread id */
	__type(value, struct wb_wait);
} wb_waits SEC(".maps");

DEFINE_ERROR_MAP();

static const struct memcg_stats zero_stats;

static __always_inline struct memcg_stats *stats_for(u64 cgroup_id)
{
	struct memcg_key key = { .cgroup_id = cgroup_id };
	return lookup_or_init(&memcg_stats, &key, &zero_stats, &hv_errors);
}

/* NR_WRITEBACK moves +nr at folio_start_writeback and -nr at folio end (mm/page-writeback.c,
 * v6.18: __folio_start_writeback / __folio_end_writeback -> lruvec_stat_mod_folio).
 * The enum value is a CO-RE relocation: node_stat_item is reordered between kernels. */
static __always_inline void handle_lruvec_state(u64 cgroup_id, int item, int val)
{
	if (item != bpf_core_enum_value(enum node_stat_item, NR_WRITEBACK) || val == 0)
		return;
	struct memcg_stats *s = stats_for(cgroup_id);
	if (!s)
		return;
	if (val > 0)
		s->wb_started_pages += val;
	else
		s->wb_completed_pages += -(s64)val;
}

static __always_inline void handle_uncharge_batch(u64 cgroup_id, u64 pages)
{
	struct memcg_stats *s;
	if (!pages || !(s = stats_for(cgroup_id)))
		return;
	hist_add(s->uncharge_batch_slots, &s->uncharged_pages, pages);
}

/* One PGPGOUT event per uncharge batch with the batch's page count
 * (mm/memcontrol-v1.c, v6.18: memcg1_uncharge_batch -> count_memcg_events(PGPGOUT)). */
static __always_inline void handle_memcg_events(u64 cgroup_id, int item, u64 val)
{
	if (item == bpf_core_enum_value(enum vm_event_item, PGPGOUT))
		handle_uncharge_batch(cgroup_id, val);
}

static __always_inline void handle_wait_writeback(u64 cgroup_id)
{
	struct memcg_stats *s = stats_for(cgroup_id);
	if (s)
		s->wb_waits++;
}

/* Writeback-wait latency. folio_wait_writeback() loops "while under writeback: trace
 * folio_wait_writeback; folio_wait_bit(PG_writeback)" (mm/page-writeback.c, v6.18), so the
 * tracepoint marks a wait's start and nothing marks its return. Two pairings:
 *  - fentry/fexit on folio_wait_writeback: exact, one observation per call;
 *  - tracepoint + sched_switch (hot): the waiter sleeps in folio_wait_bit and runs again when
 *    the bit clears, so its next switch-in after a sleep ends the wait. A wait whose task
 *    switches out voluntarily while the folio is still under writeback slept on it; one
 *    whose folio is already clear at the task's next switch-out returned without sleeping
 *    and counts as a zero-length wait (the histogram's lowest bucket). */
static __always_inline void handle_wait_begin(u32 tid, u64 now, u64 folio, u64 cgroup_id)
{
	struct wb_wait *w = bpf_map_lookup_elem(&wb_waits, &tid);
	if (w && w->folio == folio && !w->slept)
		return; /* the next loop iteration of the same wait */
	struct wb_wait n = { .start_ns = now, .folio = folio, .cgroup_id = cgroup_id };
	if (bpf_map_update_elem(&wb_waits, &tid, &n, BPF_ANY))
		count_error(&hv_errors, HV_ERR_MAP_FULL);
}

static __always_inline void observe_wait(struct wb_wait *w, u64 ns)
{
	struct memcg_stats *s = stats_for(w->cgroup_id);
	if (s)
		hist_add(s->wb_wait_slots, &s->wb_wait_sum_ns, ns);
}

static __always_inline void handle_wait_end(u32 tid, u64 now)
{
	struct wb_wait *w = bpf_map_lookup_elem(&wb_waits, &tid);
	if (!w)
		return;
	if (now > w->start_ns)
		observe_wait(w, now - w->start_ns);
	bpf_map_delete_elem(&wb_waits, &tid);
}

/* sched_switch, outgoing side: `preempt` means still runnable (not waiting yet). */
static __always_inline void handle_wait_switch_out(u32 tid, struct wb_wait *w, bool preempt, bool under_wb)
{
	if (w->slept)
		return;
	if (under_wb) {
		if (!preempt)
			w->slept = 1;
		return;
	}
	observe_wait(w, 0);
	bpf_map_delete_elem(&wb_waits, &tid);
}

/* sched_switch, incoming side: running again after sleeping on the folio ends the wait. */
static __always_inline void handle_wait_switch_in(u32 tid, u64 now)
{
	struct wb_wait *w = bpf_map_lookup_elem(&wb_waits, &tid);
	if (w && w->slept)
		handle_wait_end(tid, now);
}

/* The waiting task's memory cgroup: task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id.
 * This is right on both v1 and v2 (on v2 the css is the nearest ancestor with memory
 * enabled, the same cgroup the memcg tracepoints report). */
static __always_inline u64 task_memcg_id(struct task_struct *task)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	struct css_set *cset = BPF_CORE_READ(task, cgroups);
	struct cgroup_subsys_state *css = 0;
	if (id < 0 || id >= CGROUP_SUBSYS_COUNT)
		return 0;
	bpf_core_read(&css, sizeof(css), &cset->subsys[id]);
	return BPF_CORE_READ(css, cgroup, kn, id);
}

/* Same walk on a trusted BTF pointer (tp_btf): plain loads instead of five
 * bpf_probe_read_kernel calls, which bench/RESULTS.md showed cost ~250 ns per event. */
static __always_inline u64 task_memcg_id_btf(struct task_struct *task)
{
	int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (id < 0 || id >= CGROUP_SUBSYS_COUNT)
		return 0;
	struct cgroup_subsys_state *css = task->cgroups->subsys[id];
	if (!css)
		return 0;
	return css->cgroup->kn->id;
}

/* ---- attach points: tp_btf (no copy, cheapest) then classic tracepoint ---- */

SEC("tp_btf/mod_memcg_lruvec_state")
int BPF_PROG(btf_memcg_lruvec_state, struct mem_cgroup *memcg, int item, int val)
{
	/* Filter before touching memcg: this hook fires several times per page fault. */
	if (item != bpf_core_enum_value(enum node_stat_item, NR_WRITEBACK))
		return 0;
	handle_lruvec_state(memcg_cgroup_id(memcg), item, val);
	return 0;
}

SEC("tracepoint/memcg/mod_memcg_lruvec_state")
int tp_memcg_lruvec_state(struct trace_event_raw_memcg_rstat_stats *ctx)
{
	handle_lruvec_state(ctx->id, ctx->item, ctx->val);
	return 0;
}

SEC("tp_btf/count_memcg_events")
int BPF_PROG(btf_count_memcg_events, struct mem_cgroup *memcg, int item, unsigned long val)
{
	if (item != bpf_core_enum_value(enum vm_event_item, PGPGOUT))
		return 0;
	handle_memcg_events(memcg_cgroup_id(memcg), item, val);
	return 0;
}

SEC("tracepoint/memcg/count_memcg_events")
int tp_count_memcg_events(struct trace_event_raw_memcg_rstat_events *ctx)
{
	handle_memcg_events(ctx->id, ctx->item, ctx->val);
	return 0;
}

SEC("tp_btf/folio_wait_writeback")
int BPF_PROG(btf_folio_wait_writeback, struct folio *folio, struct address_space *mapping)
{
	handle_wait_writeback(task_memcg_id_btf(bpf_get_current_task_btf()));
	return 0;
}

SEC("tracepoint/writeback/folio_wait_writeback")
int tp_folio_wait_writeback(void *ctx)
{
	handle_wait_writeback(task_memcg_id((struct task_struct *)bpf_get_current_task()));
	return 0;
}

/* Pages per uncharge batch at function level: uncharge_batch() is static in mm/memcontrol.c
 * (v5.x-v6.18) and used only where BTF/kallsyms list it. It runs once per batch on v1 and
 * v2 alike, so unlike PGPGOUT (v1 only) it is not a hot hook. struct uncharge_gather counted
 * pages in nr_pages before v5.16 and in nr_memory since. */
struct uncharge_gather___old {
	unsigned long nr_pages;
} __attribute__((preserve_access_index));

static __always_inline void on_uncharge_batch(const struct uncharge_gather *ug)
{
	u64 pages = bpf_core_field_exists(ug->nr_memory) ? BPF_CORE_READ(ug, nr_memory) : BPF_CORE_READ((struct uncharge_gather___old *)ug, nr_pages);
	handle_uncharge_batch(memcg_cgroup_id(BPF_CORE_READ(ug, memcg)), pages);
}

SEC("fentry/uncharge_batch")
int BPF_PROG(fentry_uncharge_batch, const struct uncharge_gather *ug)
{
	on_uncharge_batch(ug);
	return 0;
}

SEC("kprobe/uncharge_batch")
int BPF_KPROBE(kprobe_uncharge_batch, const struct uncharge_gather *ug)
{
	on_uncharge_batch(ug);
	return 0;
}

/* A wait starts: counted, and timed by whichever end the tier has (fexit, kretprobe,
 * sched_switch). */
static __always_inline void on_wait_begin(u64 cgroup_id, u64 folio)
{
	handle_wait_writeback(cgroup_id);
	handle_wait_begin((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), folio, cgroup_id);
}

/* Writeback waits with their latency, exact: folio_wait_writeback(folio) in
 * mm/page-writeback.c (v5.16+; wait_on_page_writeback before). */
SEC("fentry/folio_wait_writeback")
int BPF_PROG(fentry_wait_writeback, struct folio *folio)
{
	on_wait_begin(task_memcg_id_btf(bpf_get_current_task_btf()), (u64)folio);
	return 0;
}

SEC("fexit/folio_wait_writeback")
int BPF_PROG(fexit_wait_writeback)
{
	handle_wait_end((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
	return 0;
}

SEC("kprobe/folio_wait_writeback")
int BPF_KPROBE(kprobe_wait_writeback, void *folio)
{
	on_wait_begin(task_memcg_id((struct task_struct *)bpf_get_current_task()), (u64)folio);
	return 0;
}

SEC("kretprobe/folio_wait_writeback")
int BPF_KRETPROBE(kretprobe_wait_writeback)
{
	handle_wait_end((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns());
	return 0;
}

/* The tracepoint tier with latency: the wait's start, and sched_switch for its end. */
SEC("tp_btf/folio_wait_writeback")
int BPF_PROG(btf_wait_writeback_begin, struct folio *folio, struct address_space *mapping)
{
	on_wait_begin(task_memcg_id_btf(bpf_get_current_task_btf()), (u64)folio);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(btf_wait_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	u32 ptid = prev->pid;
	struct wb_wait *w = bpf_map_lookup_elem(&wb_waits, &ptid);
	if (w)
		handle_wait_switch_out(ptid, w, preempt, page_flags((struct page *)w->folio) & writeback_flag());
	handle_wait_switch_in(next->pid, bpf_ktime_get_ns());
	return 0;
}

/* ---- BPF_PROG_TEST_RUN entry points: same handlers, synthetic arguments ---- */

struct memcg_test_args {
	u32 op; /* 0 lruvec_state, 1 memcg_events, 2 wait_writeback, 3 uncharge_batch,
		 * 4 wait begin, 5 wait end, 6 switch out, 7 switch in */
	s32 item;
	s64 val;
	u64 cgroup_id;
	u32 tid;
	u32 preempt;
	u64 now;
	u64 folio;
	u32 under_wb;
	u32 _pad;
};

/* ---- cgroup first sight (bpf/src/hvwatch.h "First sight", docs/metrics.md "Series lifecycle") ----
 * cgroup:cgroup_mkdir / cgroup:cgroup_rmdir fire once per cgroup directory made or removed
 * (kernel/cgroup/cgroup.c cgroup_mkdir / cgroup_destroy_locked, TRACE_CGROUP_PATH; record
 * layout in include/trace/events/cgroup.h, v6.18: root = hierarchy id, id = kernfs id,
 * path relative to the hierarchy's root). The path of a memory cgroup made and removed
 * between two scrapes is kept here, so its counts are named after it is gone, and the
 * removal is seen without a cgroupfs walk. Rare events: a few per container start/stop. */
#define CGROUP_PATH_BYTES 256

struct cgroup_seen {
	u64 created_ns; /* bpf_ktime_get_ns() at mkdir; 0 when the cgroup predates the probe */
	u64 removed_ns; /* at rmdir; 0 while it exists */
	u32 path_len;   /* bytes of path; 0: could not be read */
	u32 truncated;  /* the path filled the buffer (the agent then prefers a cgroupfs walk) */
	char path[CGROUP_PATH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); /* the agent deletes entries after their linger; full: counted, then cgroupfs walks */
	__type(key, u64);          /* cgroup id, as memcg_stats */
	__type(value, struct cgroup_seen);
} cgroup_seen SEC(".maps");

/* [0]: hierarchy id of the memory controller's hierarchy + 1 (0 for cgroup v2, as in
 * /proc/PID/cgroup); 0 = not configured, record nothing. Set by the agent at setup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} cgroup_seen_cfg SEC(".maps");

static const struct cgroup_seen zero_cgroup_seen;

/* path: a kernel pointer (the tracepoint's argument, or the classic record's string). */
static __always_inline void handle_cgroup_change(int root, u64 id, const char *path, int removed, u64 now)
{
	u32 zero = 0;
	u32 *want = bpf_map_lookup_elem(&cgroup_seen_cfg, &zero);
	if (!want || *want != (u32)root + 1)
		return;
	struct cgroup_seen *v = bpf_map_lookup_elem(&cgroup_seen, &id);
	if (!v) {
		if (bpf_map_update_elem(&cgroup_seen, &id, &zero_cgroup_seen, BPF_NOEXIST) && !bpf_map_lookup_elem(&cgroup_seen, &id)) {
			count_error(&hv_errors, HV_ERR_MAP_FULL);
			return;
		}
		v = bpf_map_lookup_elem(&cgroup_seen, &id);
		if (!v)
			return;
		long n = bpf_probe_read_kernel_str(v->path, sizeof(v->path), path);
		if (n > 1) {
			v->path_len = n - 1;
			v->truncated = n >= CGROUP_PATH_BYTES;
		}
		if (!removed)
			v->created_ns = now;
	}
	if (removed)
		v->removed_ns = now;
}

static __always_inline void btf_cgroup_change(struct cgroup *cgrp, const char *path, int removed)
{
	handle_cgroup_change(BPF_CORE_READ(cgrp, root, hierarchy_id), BPF_CORE_READ(cgrp, kn, id), path, removed, bpf_ktime_get_ns());
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(btf_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	btf_cgroup_change(cgrp, path, 0);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(btf_cgroup_rmdir, struct cgroup *cgrp, const char *path)
{
	btf_cgroup_change(cgrp, path, 1);
	return 0;
}

/* __data_loc: low 16 bits the offset of the string in the record, high 16 its length. */
static __always_inline void tp_cgroup_change(struct trace_event_raw_cgroup *ctx, int removed)
{
	u32 loc = ctx->__data_loc_path;
	handle_cgroup_change(ctx->root, ctx->id, (const char *)ctx + (loc & 0xffff), removed, bpf_ktime_get_ns());
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int tp_cgroup_mkdir(struct trace_event_raw_cgroup *ctx)
{
	tp_cgroup_change(ctx, 0);
	return 0;
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int tp_cgroup_rmdir(struct trace_event_raw_cgroup *ctx)
{
	tp_cgroup_change(ctx, 1);
	return 0;
}

SEC("syscall")
int test_memcg_handler(struct memcg_test_args *a)
{
	switch (a->op) {
	case 0: handle_lruvec_state(a->cgroup_id, a->item, a->val); break;
	case 1: handle_memcg_events(a->cgroup_id, a->item, a->val); break;
	case 2: handle_wait_writeback(a->cgroup_id); break;
	case 3: handle_uncharge_batch(a->cgroup_id, a->val); break;
	case 4: handle_wait_begin(a->tid, a->now, a->folio, a->cgroup_id); break;
	case 5: handle_wait_end(a->tid, a->now); break;
	case 6: {
		u32 tid = a->tid;
		struct wb_wait *w = bpf_map_lookup_elem(&wb_waits, &tid);
		if (!w)
			return 1;
		handle_wait_switch_out(tid, w, a->preempt, a->under_wb);
		break;
	}
	case 7: handle_wait_switch_in(a->tid, a->now); break;
	default: return -1;
	}
	return 0;
}

/* Lets tests learn the enum values the kernel uses without hard-coding them. */
SEC("syscall")
int test_memcg_enums(u64 *out)
{
	out[0] = bpf_core_enum_value(enum node_stat_item, NR_WRITEBACK);
	out[1] = bpf_core_enum_value(enum vm_event_item, PGPGOUT);
	return 0;
}
