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

char LICENSE[] SEC("license") = "GPL";

struct memcg_key {
	u64 cgroup_id; /* kernfs id of the memcg's cgroup: cgroup_id(memcg->css.cgroup) */
};

struct memcg_stats {
	u64 wb_started_pages;
	u64 wb_completed_pages;
	u64 wb_waits;
	u64 uncharge_batches;
	u64 uncharged_pages;
	u64 uncharge_batch_slots[HIST_SLOTS]; /* log2(pages per uncharge batch) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); /* the agent resizes it from config before load */
	__type(key, struct memcg_key);
	__type(value, struct memcg_stats);
} memcg_stats SEC(".maps");

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

/* One PGPGOUT event per uncharge batch with the batch's page count
 * (mm/memcontrol-v1.c, v6.18: memcg1_uncharge_batch -> count_memcg_events(PGPGOUT)). */
static __always_inline void handle_memcg_events(u64 cgroup_id, int item, u64 val)
{
	if (item != bpf_core_enum_value(enum vm_event_item, PGPGOUT) || val == 0)
		return;
	struct memcg_stats *s = stats_for(cgroup_id);
	if (!s)
		return;
	s->uncharge_batches++;
	hist_add(s->uncharge_batch_slots, &s->uncharged_pages, val);
}

static __always_inline void handle_wait_writeback(u64 cgroup_id)
{
	struct memcg_stats *s = stats_for(cgroup_id);
	if (s)
		s->wb_waits++;
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

static __always_inline u64 memcg_cgroup_id(struct mem_cgroup *memcg)
{
	return BPF_CORE_READ(memcg, css.cgroup, kn, id);
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

/* ---- BPF_PROG_TEST_RUN entry points: same handlers, synthetic arguments ---- */

struct memcg_test_args {
	u32 op; /* 0 lruvec_state, 1 memcg_events, 2 wait_writeback */
	s32 item;
	s64 val;
	u64 cgroup_id;
};

SEC("syscall")
int test_memcg_handler(struct memcg_test_args *a)
{
	switch (a->op) {
	case 0: handle_lruvec_state(a->cgroup_id, a->item, a->val); break;
	case 1: handle_memcg_events(a->cgroup_id, a->item, a->val); break;
	case 2: handle_wait_writeback(a->cgroup_id); break;
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
