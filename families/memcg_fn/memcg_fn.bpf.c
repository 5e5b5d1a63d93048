// SPDX-License-Identifier: GPL-2.0
/* memcg family, function tiers (seed 002): writeback latency per folio, time inside
 * writeback end and uncharge, and four race indicators kept as in-kernel state machines.
 *
 * Every hook is a thin wrapper that reads the folio's facts (memcg, flags, refcount) and
 * calls one __always_inline handler on plain values; SEC("syscall") test programs call the
 * same handlers with synthetic facts (test/memcg-fn.test.ts), which is how the logic is
 * tested on kernels where fentry/kprobes cannot attach.
 *
 * Per-folio state is keyed by the folio pointer in an LRU map, and each entry carries the
 * writeback start time: a new writeback of a reused pointer replaces the entry, so a stale
 * entry is never taken for the new folio (seed 004's lesson). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"
#include "mm.h"

char LICENSE[] SEC("license") = "GPL";

enum race_kind {
	RACE_UNCHARGE_DURING_WB_END = 0,
	RACE_UNCHARGE_UNDER_WB = 1,
	RACE_MEMCG_CLEARED_UNDER_WB = 2,
	RACE_WB_END_ZERO_REFCOUNT = 3,
	RACE_KINDS = 4,
};
EXPORT_BTF_ENUM(race_kind);

/* A writeback-end marker older than this lost its exit (a missed kretprobe, an aborted
 * trace): it is reaped instead of being taken as "still inside writeback end". */
#define END_MARKER_STALE_NS (1000ULL * 1000 * 1000)

struct folio_state {
	u64 start_ns;     /* writeback start: the entry's identity */
	u64 memcg_id;     /* memcg at writeback start */
	u64 end_enter_ns; /* non-zero while a CPU is inside writeback end */
	u32 end_cpu;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u64); /* folio pointer */
	__type(value, struct folio_state);
} wb_folios SEC(".maps");

struct memcg_key {
	u64 cgroup_id;
};

struct memcg_fn_stats {
	u64 wb_latency_slots[HIST_SLOTS]; /* log2 ns, writeback start -> end of each folio */
	u64 wb_latency_sum_ns;
	u64 wb_end_slots[HIST_SLOTS]; /* log2 ns inside __folio_end_writeback */
	u64 wb_end_sum_ns;
	u64 uncharge_slots[HIST_SLOTS]; /* log2 ns inside one uncharge call */
	u64 uncharge_sum_ns;
	u64 uncharged_folios;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct memcg_key);
	__type(value, struct memcg_fn_stats);
} memcg_fn_stats SEC(".maps");

/* Race indicators by kind: counted here even when the ring buffer is full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RACE_KINDS);
	__type(key, u32);
	__type(value, u64);
} race_counts SEC(".maps");

/* Counters about the state machine itself: index = enum state_counter. */
enum state_counter {
	ST_INSERTS = 0,      /* folio entries created */
	ST_REMOVES = 1,      /* folio entries deleted at writeback end exit */
	ST_REAPED = 2,       /* stale writeback-end markers ignored and cleared */
	ST_UNPAIRED_END = 3, /* writeback end with no recorded start (began before attach, or evicted) */
	ST_MAX = 4,
};
EXPORT_BTF_ENUM(state_counter);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, u32);
	__type(value, u64);
} state_counters SEC(".maps");

/* A call in progress, for the exit hook to read back. Keyed by thread id and CPU: writeback
 * end often runs in interrupt context, where the "thread" is whatever was interrupted (the
 * idle task is pid 0 on every CPU), and an interrupt handler never migrates. */
struct call_enter {
	u64 ns;
	u64 folio;
	u64 memcg_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* call_key() */
	__type(value, struct call_enter);
} wb_end_calls SEC(".maps"); /* kretprobe tier only: fexit has the folio argument */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* call_key() */
	__type(value, struct call_enter);
} uncharge_calls SEC(".maps");

struct memcg_race_event {
	u64 ts_ns;
	u64 folio;
	u64 memcg_id;       /* the folio's memcg at the event (0 if cleared) */
	u64 start_memcg_id; /* the memcg recorded at writeback start (0 if unknown) */
	u64 delta_ns;       /* time since the paired event (start, or the other CPU's end enter) */
	s32 stack_id;       /* kernel stack in `stacks`, or negative */
	u32 kind;           /* enum race_kind */
	u32 pid;
	u32 cpu;
	u32 other_cpu; /* the CPU inside writeback end, for uncharge_during_writeback_end */
	char comm[16];
};
EXPORT_BTF_TYPE(struct memcg_race_event, memcg_race_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 1024);
	__uint(key_size, sizeof(u32));
	__uint(value_size, 127 * sizeof(u64));
} stacks SEC(".maps");

DEFINE_ERROR_MAP();

static const struct memcg_fn_stats zero_fn_stats;

/* ---- facts read from the kernel (attach wrappers only) ---- */

/* ---- the logic: plain values in, map updates and race hits out ---- */

struct race_hit {
	u32 kind;
	u32 other_cpu;
	u64 start_memcg_id;
	u64 delta_ns;
};

struct hits {
	u32 n;
	struct race_hit h[2];
};

static __always_inline void count_state(u32 which)
{
	u64 *c = bpf_map_lookup_elem(&state_counters, &which);
	if (c)
		(*c)++;
}

static __always_inline struct memcg_fn_stats *fn_stats(u64 memcg_id)
{
	struct memcg_key k = { .cgroup_id = memcg_id };
	return lookup_or_init(&memcg_fn_stats, &k, &zero_fn_stats, &hv_errors);
}

static __always_inline void add_hit(struct hits *hits, u32 kind, u32 other_cpu, u64 start_memcg, u64 delta)
{
	u32 i = hits->n;
	if (i >= 2)
		return;
	hits->h[i].kind = kind;
	hits->h[i].other_cpu = other_cpu;
	hits->h[i].start_memcg_id = start_memcg;
	hits->h[i].delta_ns = delta;
	hits->n = i + 1;
}

static __always_inline void handle_wb_start(u64 folio, u64 now, u64 memcg_id)
{
	struct folio_state st = { .start_ns = now, .memcg_id = memcg_id };
	/* BPF_ANY: a new writeback of this pointer replaces whatever was there. */
	if (bpf_map_update_elem(&wb_folios, &folio, &st, BPF_ANY) == 0)
		count_state(ST_INSERTS);
}

static __always_inline void handle_wb_end_enter(u64 folio, u64 now, u32 cpu, u64 memcg_id, s32 refcount, struct hits *hits)
{
	struct folio_state *st = bpf_map_lookup_elem(&wb_folios, &folio);
	u64 start_memcg = st ? st->memcg_id : 0;
	u64 since = st && st->start_ns && now > st->start_ns ? now - st->start_ns : 0;

	if (refcount <= 0)
		add_hit(hits, RACE_WB_END_ZERO_REFCOUNT, cpu, start_memcg, since);
	if (start_memcg && !memcg_id)
		add_hit(hits, RACE_MEMCG_CLEARED_UNDER_WB, cpu, start_memcg, since);

	if (st) {
		if (since) {
			struct memcg_fn_stats *s = fn_stats(start_memcg ? start_memcg : memcg_id);
			if (s)
				hist_add(s->wb_latency_slots, &s->wb_latency_sum_ns, since);
		}
		st->end_enter_ns = now;
		st->end_cpu = cpu;
	} else {
		struct folio_state fresh = { .memcg_id = memcg_id, .end_enter_ns = now, .end_cpu = cpu };
		count_state(ST_UNPAIRED_END);
		if (bpf_map_update_elem(&wb_folios, &folio, &fresh, BPF_ANY) == 0)
			count_state(ST_INSERTS);
	}
}

/* The folio's own entry says when its writeback end began, so the exit needs only the
 * folio: fexit has it as an argument, kretprobe gets it from the entry's call record. */
static __always_inline void handle_wb_end_exit(u64 folio, u64 now)
{
	struct folio_state *st = bpf_map_lookup_elem(&wb_folios, &folio);
	if (!st)
		return;
	if (st->end_enter_ns && now > st->end_enter_ns) {
		struct memcg_fn_stats *s = st->memcg_id ? fn_stats(st->memcg_id) : 0;
		if (s)
			hist_add(s->wb_end_slots, &s->wb_end_sum_ns, now - st->end_enter_ns);
	}
	if (bpf_map_delete_elem(&wb_folios, &folio) == 0)
		count_state(ST_REMOVES);
}

static __always_inline void handle_uncharge_folio(u64 folio, u64 now, u32 cpu, u64 memcg_id, u64 flags, struct hits *hits)
{
	/* uncharge_folio returns at once for a folio without a memcg (mm/memcontrol.c v6.18):
	 * nothing is uncharged, so there is nothing to count or to race with. */
	if (!memcg_id)
		return;
	struct folio_state *st = bpf_map_lookup_elem(&wb_folios, &folio);
	if (st && st->end_enter_ns) {
		if (now > st->end_enter_ns && now - st->end_enter_ns > END_MARKER_STALE_NS) {
			st->end_enter_ns = 0;
			count_state(ST_REAPED);
		} else if (st->end_cpu != cpu) {
			add_hit(hits, RACE_UNCHARGE_DURING_WB_END, st->end_cpu, st->memcg_id, now > st->end_enter_ns ? now - st->end_enter_ns : 0);
		}
	}
	if (flags & writeback_flag())
		add_hit(hits, RACE_UNCHARGE_UNDER_WB, cpu, st ? st->memcg_id : 0, st && now > st->start_ns && st->start_ns ? now - st->start_ns : 0);
	struct memcg_fn_stats *s = fn_stats(memcg_id);
	if (s)
		s->uncharged_folios++;
}

static __always_inline void handle_uncharge_exit(u64 enter_ns, u64 now, u64 memcg_id)
{
	if (!memcg_id || now <= enter_ns)
		return;
	struct memcg_fn_stats *s = fn_stats(memcg_id);
	if (s)
		hist_add(s->uncharge_slots, &s->uncharge_sum_ns, now - enter_ns);
}

/* Race hits become counts by kind (authoritative, never dropped) and ring-buffer events
 * (for the log; a full buffer is counted in hv_errors). */
static __always_inline void emit_hits(struct hits *hits, u64 folio, u64 now, u32 cpu, u64 memcg_id, s32 stack_id)
{
	for (u32 i = 0; i < 2; i++) {
		if (i >= hits->n)
			break;
		struct race_hit *h = &hits->h[i];
		u32 kind = h->kind;
		u64 *c = bpf_map_lookup_elem(&race_counts, &kind);
		if (c)
			(*c)++;
		struct memcg_race_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count_error(&hv_errors, HV_ERR_RINGBUF_FULL);
			continue;
		}
		e->ts_ns = now;
		e->folio = folio;
		e->memcg_id = memcg_id;
		e->start_memcg_id = h->start_memcg_id;
		e->delta_ns = h->delta_ns;
		e->stack_id = stack_id;
		e->kind = h->kind;
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->cpu = cpu;
		e->other_cpu = h->other_cpu;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		bpf_ringbuf_submit(e, 0);
	}
}

/* ---- attach wrappers ---- */

static __always_inline u64 call_key(void)
{
	return (u64)(u32)bpf_get_current_pid_tgid() | ((u64)bpf_get_smp_processor_id() << 32);
}

static __always_inline void on_wb_start(struct page *page)
{
	handle_wb_start((u64)page, bpf_ktime_get_ns(), page_memcg_id(page));
}

static __always_inline void on_wb_end_enter(void *ctx, struct page *page)
{
	struct hits hits = {};
	u64 now = bpf_ktime_get_ns();
	u32 cpu = bpf_get_smp_processor_id();
	u64 memcg_id = page_memcg_id(page);
	handle_wb_end_enter((u64)page, now, cpu, memcg_id, page_refcount(page), &hits);
	if (hits.n)
		emit_hits(&hits, (u64)page, now, cpu, memcg_id, bpf_get_stackid(ctx, &stacks, 0));
}

static __always_inline void remember_wb_end(struct page *page)
{
	struct call_enter c = { .folio = (u64)page };
	u64 k = call_key();
	bpf_map_update_elem(&wb_end_calls, &k, &c, BPF_ANY);
}

static __always_inline void on_wb_end_kretprobe(void)
{
	u64 k = call_key();
	struct call_enter *c = bpf_map_lookup_elem(&wb_end_calls, &k);
	if (!c)
		return;
	handle_wb_end_exit(c->folio, bpf_ktime_get_ns());
	bpf_map_delete_elem(&wb_end_calls, &k);
}

static __always_inline void on_uncharge_folio(void *ctx, struct page *page)
{
	struct hits hits = {};
	u64 now = bpf_ktime_get_ns();
	u32 cpu = bpf_get_smp_processor_id();
	u64 memcg_id = page_memcg_id(page);
	handle_uncharge_folio((u64)page, now, cpu, memcg_id, page_flags(page), &hits);
	if (hits.n)
		emit_hits(&hits, (u64)page, now, cpu, memcg_id, bpf_get_stackid(ctx, &stacks, 0));
}

static __always_inline void on_uncharge_enter(struct page *first)
{
	struct call_enter c = { .ns = bpf_ktime_get_ns(), .memcg_id = first ? page_memcg_id(first) : 0 };
	u64 k = call_key();
	bpf_map_update_elem(&uncharge_calls, &k, &c, BPF_ANY);
}

static __always_inline void on_uncharge_exit(void)
{
	u64 k = call_key();
	struct call_enter *c = bpf_map_lookup_elem(&uncharge_calls, &k);
	if (!c)
		return;
	handle_uncharge_exit(c->ns, bpf_ktime_get_ns(), c->memcg_id);
	bpf_map_delete_elem(&uncharge_calls, &k);
}

static __always_inline struct page *batch_first(struct folio_batch *fb)
{
	struct folio *f = 0;
	if (BPF_CORE_READ(fb, nr))
		f = BPF_CORE_READ(fb, folios[0]);
	return (struct page *)f;
}

/* writeback start: __folio_start_writeback (v5.17+, mm/page-writeback.c) or
 * __test_set_page_writeback (older). */
SEC("fentry/__folio_start_writeback")
int BPF_PROG(fentry_wb_start, struct folio *folio)
{
	on_wb_start((struct page *)folio);
	return 0;
}

SEC("kprobe/__folio_start_writeback")
int BPF_KPROBE(kprobe_wb_start, void *folio)
{
	on_wb_start(folio);
	return 0;
}

/* writeback end: __folio_end_writeback (v5.17+) or test_clear_page_writeback (older). */
SEC("fentry/__folio_end_writeback")
int BPF_PROG(fentry_wb_end, struct folio *folio)
{
	on_wb_end_enter(ctx, (struct page *)folio);
	return 0;
}

SEC("fexit/__folio_end_writeback")
int BPF_PROG(fexit_wb_end, struct folio *folio)
{
	handle_wb_end_exit((u64)folio, bpf_ktime_get_ns());
	return 0;
}

SEC("kprobe/__folio_end_writeback")
int BPF_KPROBE(kprobe_wb_end, void *folio)
{
	on_wb_end_enter(ctx, folio);
	remember_wb_end(folio);
	return 0;
}

SEC("kretprobe/__folio_end_writeback")
int BPF_KRETPROBE(kretprobe_wb_end)
{
	on_wb_end_kretprobe();
	return 0;
}

/* uncharge, per folio: uncharge_folio(folio, ug) is static in mm/memcontrol.c (v5.x-6.18)
 * and often inlined; the loader uses it only where BTF/kallsyms list it. */
SEC("fentry/uncharge_folio")
int BPF_PROG(fentry_uncharge_folio, struct folio *folio)
{
	on_uncharge_folio(ctx, (struct page *)folio);
	return 0;
}

SEC("kprobe/uncharge_folio")
int BPF_KPROBE(kprobe_uncharge_folio, void *folio)
{
	on_uncharge_folio(ctx, folio);
	return 0;
}

/* uncharge calls, timed: __mem_cgroup_uncharge(folio) for one folio, and
 * __mem_cgroup_uncharge_folios(folio_batch) (v6.9+) for batches. */
SEC("fentry/__mem_cgroup_uncharge")
int BPF_PROG(fentry_uncharge, struct folio *folio)
{
	on_uncharge_enter((struct page *)folio);
	return 0;
}

SEC("fexit/__mem_cgroup_uncharge")
int BPF_PROG(fexit_uncharge)
{
	on_uncharge_exit();
	return 0;
}

SEC("fentry/__mem_cgroup_uncharge_folios")
int BPF_PROG(fentry_uncharge_folios, struct folio_batch *fb)
{
	on_uncharge_enter(batch_first(fb));
	return 0;
}

SEC("fexit/__mem_cgroup_uncharge_folios")
int BPF_PROG(fexit_uncharge_folios)
{
	on_uncharge_exit();
	return 0;
}

/* __mem_cgroup_uncharge_list(struct list_head *page_list) (v5.15-v6.8): the batch is a list
 * linked through folio->lru (page->lru before v5.16; same offset, FOLIO_MATCH). */
static __always_inline struct page *list_first(struct list_head *head)
{
	struct list_head *first = BPF_CORE_READ(head, next);
	if (!first || first == head)
		return 0;
	return (struct page *)((void *)first - bpf_core_field_offset(struct page, lru));
}

SEC("fentry/__mem_cgroup_uncharge_list")
int BPF_PROG(fentry_uncharge_list, struct list_head *page_list)
{
	on_uncharge_enter(list_first(page_list));
	return 0;
}

SEC("fexit/__mem_cgroup_uncharge_list")
int BPF_PROG(fexit_uncharge_list)
{
	on_uncharge_exit();
	return 0;
}

SEC("kprobe/__mem_cgroup_uncharge")
int BPF_KPROBE(kprobe_uncharge, void *folio)
{
	on_uncharge_enter(folio);
	return 0;
}

SEC("kretprobe/__mem_cgroup_uncharge")
int BPF_KRETPROBE(kretprobe_uncharge)
{
	on_uncharge_exit();
	return 0;
}

/* ---- BPF_PROG_TEST_RUN entry points: the same handlers on synthetic facts ---- */

enum test_op {
	OP_WB_START = 0,
	OP_WB_END_ENTER = 1,
	OP_WB_END_EXIT = 2,
	OP_UNCHARGE_FOLIO = 3,
	OP_UNCHARGE_EXIT = 4,
	OP_FILL = 5, /* start writeback on `count` distinct folios from `folio` up */
};

struct memcg_fn_test_args {
	u32 op;
	u32 cpu;
	u64 folio;
	u64 now;
	u64 memcg_id;
	u64 flags;
	s64 refcount;
	u64 enter_ns;
	u64 count;
};

static long fill_one(u64 i, struct memcg_fn_test_args *a)
{
	handle_wb_start(a->folio + i * 64, a->now + i, a->memcg_id);
	return 0;
}

SEC("syscall")
int test_memcg_fn(struct memcg_fn_test_args *ctx)
{
	struct memcg_fn_test_args a = *ctx;
	struct hits hits = {};
	switch (a.op) {
	case OP_WB_START: handle_wb_start(a.folio, a.now, a.memcg_id); break;
	case OP_WB_END_ENTER: handle_wb_end_enter(a.folio, a.now, a.cpu, a.memcg_id, a.refcount, &hits); break;
	case OP_WB_END_EXIT: handle_wb_end_exit(a.folio, a.now); break;
	case OP_UNCHARGE_FOLIO: handle_uncharge_folio(a.folio, a.now, a.cpu, a.memcg_id, a.flags, &hits); break;
	case OP_UNCHARGE_EXIT: handle_uncharge_exit(a.enter_ns, a.now, a.memcg_id); break;
	case OP_FILL: bpf_loop(a.count, fill_one, &a, 0); break;
	default: return -1;
	}
	if (hits.n)
		emit_hits(&hits, a.folio, a.now, a.cpu, a.memcg_id, -1);
	return hits.n;
}

/* The enum values tests need, as this kernel numbers them. */
SEC("syscall")
int test_memcg_fn_enums(u64 *out)
{
	out[0] = writeback_flag();
	return 0;
}

/* ---- cost of the state machines, through BPF_PROG_TEST_RUN with repeat (bench/) ----
 * fentry/kprobe cannot attach on our CI hosts and syscall programs take no `repeat`, so
 * the handlers run inside SEC("tc") programs, whose test run repeats in the kernel and
 * reports the mean time per run; an empty SEC("tc") program on the same path is the floor.
 * One run = one folio's whole clean life: writeback start, end enter, end exit, uncharge
 * (four hook events); folios rotate over 4096 pointers so the LRU map stays warm. */
u64 bench_iter;

SEC("tc")
int bench_race_cycle(struct __sk_buff *skb)
{
	struct hits hits = {};
	u64 i = bench_iter++;
	u64 folio = 0xffff888000000000ULL + (i & 4095) * 64;
	u64 now = 1000000 + i * 1000;
	handle_wb_start(folio, now, 1);
	handle_wb_end_enter(folio, now + 100, 0, 1, 1, &hits);
	handle_wb_end_exit(folio, now + 200);
	handle_uncharge_folio(folio, now + 300, 0, 1, 0, &hits);
	return hits.n;
}

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return 0;
}
