// SPDX-License-Identifier: GPL-2.0
/* ima family (seed 004): IMA's measurement and appraisal path and its integrity cache
 * (the per-inode "iint"), per cgroup of the task that opened the file, with an inode
 * pointer-reuse indicator.
 *
 * Kernel facts (Debian linux-source-6.1 6.1.192 and linux-source-6.12 6.12.118; the
 * functions were checked in the BTF of linux-image-6.1.0-57-amd64 and 6.12.117+deb12):
 *  - process_measurement(file, cred, secid, buf, size, mask, func): static in
 *    security/integrity/ima/ima_main.c (6.1 and 6.12); every IMA hook (ima_file_check,
 *    ima_bprm_check, ima_file_mmap, ...) goes through it. Its time is one IMA check.
 *    ima_file_check(file, mask), same file, is the fallback (file opens only).
 *  - ima_collect_measurement(iint, file, buf, size, algo, modsig): ima_api.c (6.1, 6.12):
 *    reads and hashes the file; its time is what a measurement costs.
 *  - ima_add_template_entry(entry, violation, op, inode, filename): ima_queue.c (6.1, 6.12):
 *    appends to the measurement list (ascii_runtime_measurements); returns 0 when added.
 *    A return of 0 with violation == 0 is one measurement, exactly one log line.
 *  - ima_appraise_measurement(func, iint, file, filename, xattr_value, xattr_len, modsig):
 *    ima_appraise.c (6.1, 6.12): one appraisal; returns enum integrity_status.
 *  - The cache: 6.1 security/integrity/iint.c integrity_inode_get(inode) finds or allocates
 *    the integrity_iint_cache in an rbtree keyed by the inode pointer, and sets S_IMA in
 *    inode->i_flags when it allocates; integrity_inode_free(inode), called first thing by
 *    security_inode_free() (security/security.c 6.1), frees it when S_IMA is set.
 *    6.9+ (6.12 security/integrity/ima/ima_iint.c): the cache moved into the inode's LSM
 *    blob: ima_inode_get(inode) finds or allocates the ima_iint_cache (also setting S_IMA);
 *    it is freed by ima_inode_free_rcu(inode_security) from an RCU callback that has only
 *    the blob, so the free is seen at security_inode_free(inode) (security/security.c 6.12),
 *    which queues that callback, with S_IMA telling whether the inode has an iint.
 *  - fentry/fexit on process_measurement and ima_appraise_measurement (7 arguments) needs
 *    6.6+: 6.1's x86 trampoline refuses more than 6 (arch/x86/net/bpf_jit_comp.c v6.1
 *    "if (nr_regs > 6) return -ENOTSUPP"; v6.12 takes MAX_BPF_FUNC_ARGS, 12). Measured in the
 *    6.1 guest: the check takes fentry on ima_file_check, the appraisal kprobe.
 *  - S_IMA is (1 << 10) in include/linux/fs.h (6.1 and 6.12); inode->i_ino, i_generation,
 *    i_sb->s_dev and file->f_inode are in this object's vmlinux.h and in both kernels.
 *
 * Inode state here is keyed by the inode pointer, as the kernel's 6.1 cache is; so each
 * entry carries the inode's identity (s_dev, i_ino, i_generation), and a pointer that comes
 * back with another identity is a pointer reuse (seed 004: the namespaced ns_status cache
 * had to compare exactly these). After the kernel freed the iint, reuse is the normal life
 * of a slab object ("after_free"); with the old identity's iint never seen freed, the cache
 * still holds state for an inode that is gone ("live_state": the bug class of the seed, or
 * a free this agent missed). Both are counted; each carries both identities to user space.
 *
 * Every hook is a wrapper that reads facts and calls an __always_inline handler on plain
 * values; SEC("syscall") test programs call the same handlers (test/ima.test.ts). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"

char LICENSE[] SEC("license") = "GPL";

#define S_IMA_FLAG (1U << 10) /* include/linux/fs.h S_IMA, 6.1 and 6.12 */

enum reuse_kind {
	REUSE_AFTER_FREE = 0,
	REUSE_LIVE_STATE = 1,
	REUSE_KINDS = 2,
};
EXPORT_BTF_ENUM(reuse_kind);

/* After-free reuse is normal slab recycling: at most this many of its events per second
 * cross the ring buffer (all are counted); live-state reuse always crosses. */
#define AFTER_FREE_EVENTS_PER_S 16

struct ima_cg_key {
	u64 cgroup_id;
};

struct ima_stats {
	u64 check_slots[HIST_SLOTS]; /* log2 ns inside process_measurement */
	u64 check_sum_ns;
	u64 measure_slots[HIST_SLOTS]; /* log2 ns inside ima_collect_measurement */
	u64 measure_sum_ns;
	u64 appraise_slots[HIST_SLOTS]; /* log2 ns inside ima_appraise_measurement */
	u64 appraise_sum_ns;
	u64 measurements; /* entries added to the measurement list */
	u64 violations;   /* violation entries added (open-writers / ToMToU) */
	u64 cache_allocs; /* iints allocated for this cgroup's opens */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ima_cg_key);
	__type(value, struct ima_stats);
} ima_stats SEC(".maps");

struct ima_ident {
	u64 ino;
	u32 gen;
	u32 dev;
};

/* What this family knows of one inode pointer: who it was when its iint was allocated,
 * and whether that iint has been freed since (a tombstone kept for the reuse pairing). */
struct ima_inode_state {
	struct ima_ident id;
	u64 alloc_ns;
	u64 freed_ns; /* 0 while the iint is live */
	u64 cgroup_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u64); /* inode pointer */
	__type(value, struct ima_inode_state);
} ima_inodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REUSE_KINDS);
	__type(key, u32);
	__type(value, u64);
} reuse_counts SEC(".maps");

/* Counters about the cache and the family's own state; index = enum ima_counter. */
enum ima_counter {
	IC_ALLOCS = 0,          /* iints allocated (S_IMA was clear, get returned one) */
	IC_FREES = 1,           /* iints freed whose allocation was seen */
	IC_UNTRACKED_FREES = 2, /* iints freed whose allocation was not seen (before attach, or evicted) */
	IC_UNPAIRED = 3,        /* an exit with no recorded entry (kretprobe tiers) */
	IC_MAX = 4,
};
EXPORT_BTF_ENUM(ima_counter);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IC_MAX);
	__type(key, u32);
	__type(value, u64);
} ima_counters SEC(".maps");

/* Calls in progress for the exit hooks (kretprobe tiers, and the S_IMA state at entry of
 * a cache get), keyed by thread: every hooked function runs in task context. */
struct ima_call {
	u64 ns;
	u64 inode;
	u32 had_ima;
	u32 violation;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* (function << 32) | pid */
	__type(value, struct ima_call);
} ima_calls SEC(".maps");

enum call_fn { FN_CHECK = 1, FN_MEASURE = 2, FN_APPRAISE = 3, FN_GET = 4, FN_ADD = 5 };

struct ima_reuse_event {
	u64 ts_ns;
	u64 inode; /* the reused pointer */
	u64 old_ino;
	u64 new_ino;
	u64 since_alloc_ns; /* old identity's iint allocation -> this sight */
	u64 since_free_ns;  /* old identity's iint free -> this sight (0: not freed) */
	u64 old_cgroup_id;  /* cgroup whose open allocated the old iint */
	u64 cgroup_id;      /* cgroup of this open */
	u32 old_gen;
	u32 new_gen;
	u32 old_dev;
	u32 new_dev;
	u32 kind; /* enum reuse_kind */
	u32 pid;
	char comm[16];
};
EXPORT_BTF_TYPE(struct ima_reuse_event, ima_reuse_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* The after-free event budget: [0] the current second, [1] events sent in it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, u32);
	__type(value, u64);
} event_budget SEC(".maps");

DEFINE_ERROR_MAP();

static const struct ima_stats zero_stats;

/* ---- the logic: plain values in, map updates out ---- */

static __always_inline void count(u32 which)
{
	u64 *c = bpf_map_lookup_elem(&ima_counters, &which);
	if (c)
		(*c)++;
}

static __always_inline struct ima_stats *stats(u64 cgroup_id)
{
	struct ima_cg_key k = { .cgroup_id = cgroup_id };
	return lookup_or_init(&ima_stats, &k, &zero_stats, &hv_errors);
}

static __always_inline bool same_ident(const struct ima_ident *a, const struct ima_ident *b)
{
	return a->ino == b->ino && a->gen == b->gen && a->dev == b->dev;
}

static __always_inline bool after_free_budget(u64 now)
{
	u32 k0 = 0, k1 = 1;
	u64 *sec = bpf_map_lookup_elem(&event_budget, &k0);
	u64 *n = bpf_map_lookup_elem(&event_budget, &k1);
	if (!sec || !n)
		return false;
	u64 s = now / 1000000000ULL;
	if (*sec != s) {
		*sec = s;
		*n = 0;
	}
	if (*n >= AFTER_FREE_EVENTS_PER_S)
		return false;
	__sync_fetch_and_add(n, 1);
	return true;
}

static __always_inline void emit_reuse(u32 kind, u64 inode, const struct ima_inode_state *old, const struct ima_ident *id, u64 now, u64 cgroup_id)
{
	u64 *c = bpf_map_lookup_elem(&reuse_counts, &kind);
	if (c)
		(*c)++;
	if (kind == REUSE_AFTER_FREE && !after_free_budget(now))
		return;
	struct ima_reuse_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_error(&hv_errors, HV_ERR_RINGBUF_FULL);
		return;
	}
	e->ts_ns = now;
	e->inode = inode;
	e->old_ino = old->id.ino;
	e->old_gen = old->id.gen;
	e->old_dev = old->id.dev;
	e->new_ino = id->ino;
	e->new_gen = id->gen;
	e->new_dev = id->dev;
	e->since_alloc_ns = now > old->alloc_ns ? now - old->alloc_ns : 0;
	e->since_free_ns = old->freed_ns && now > old->freed_ns ? now - old->freed_ns : 0;
	e->old_cgroup_id = old->cgroup_id;
	e->cgroup_id = cgroup_id;
	e->kind = kind;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
}

/* A cache get returned `iint` for `inode` (identity `id`); `had_ima`: S_IMA was set at
 * entry, so the kernel found an existing iint rather than allocating one. Returns the
 * reuse kind + 1 when this sight is a pointer reuse, else 0. */
static __always_inline int handle_cache_get(u64 inode, const struct ima_ident *id, u32 had_ima, u64 iint, u64 now, u64 cgroup_id)
{
	if (!iint)
		return 0; /* allocation failed: nothing cached */
	int ret = 0;
	struct ima_inode_state *st = bpf_map_lookup_elem(&ima_inodes, &inode);
	if (st && !same_ident(&st->id, id)) {
		u32 kind = st->freed_ns ? REUSE_AFTER_FREE : REUSE_LIVE_STATE;
		emit_reuse(kind, inode, st, id, now, cgroup_id);
		ret = kind + 1;
		st = 0; /* replaced below */
	}
	if (!had_ima) {
		count(IC_ALLOCS);
		struct ima_stats *s = stats(cgroup_id);
		if (s)
			s->cache_allocs++;
	}
	/* A hit on a tracked live iint of this identity changes nothing. */
	if (st && !st->freed_ns && had_ima)
		return ret;
	/* An iint from before attach: its allocation was not seen, so it is not tracked. */
	if (!st && had_ima && !ret)
		return 0;
	/* New (or a tombstone of the same identity, or an allocation whose free was missed):
	 * the entry starts again from this allocation. */
	struct ima_inode_state fresh = { .id = *id, .alloc_ns = now, .cgroup_id = cgroup_id };
	bpf_map_update_elem(&ima_inodes, &inode, &fresh, BPF_ANY);
	return ret;
}

/* The inode is being freed; `had_ima`: it has an iint, which goes with it. */
static __always_inline void handle_cache_free(u64 inode, u32 had_ima, u64 now)
{
	if (!had_ima)
		return;
	struct ima_inode_state *st = bpf_map_lookup_elem(&ima_inodes, &inode);
	if (st && !st->freed_ns) {
		st->freed_ns = now;
		count(IC_FREES);
	} else {
		count(IC_UNTRACKED_FREES);
	}
}

static __always_inline void handle_check(u64 enter_ns, u64 now, u64 cgroup_id)
{
	struct ima_stats *s = now > enter_ns ? stats(cgroup_id) : 0;
	if (s)
		hist_add(s->check_slots, &s->check_sum_ns, now - enter_ns);
}

static __always_inline void handle_measure(u64 enter_ns, u64 now, u64 cgroup_id)
{
	struct ima_stats *s = now > enter_ns ? stats(cgroup_id) : 0;
	if (s)
		hist_add(s->measure_slots, &s->measure_sum_ns, now - enter_ns);
}

static __always_inline void handle_appraise(u64 enter_ns, u64 now, u64 cgroup_id)
{
	struct ima_stats *s = now > enter_ns ? stats(cgroup_id) : 0;
	if (s)
		hist_add(s->appraise_slots, &s->appraise_sum_ns, now - enter_ns);
}

static __always_inline void handle_add_entry(u32 violation, s64 ret, u64 cgroup_id)
{
	if (ret != 0)
		return; /* not added (a duplicate template digest, no memory) */
	struct ima_stats *s = stats(cgroup_id);
	if (!s)
		return;
	if (violation)
		s->violations++;
	else
		s->measurements++;
}

/* ---- facts read from the kernel (attach wrappers only) ---- */

static __always_inline void read_ident(struct inode *inode, struct ima_ident *id)
{
	id->ino = BPF_CORE_READ(inode, i_ino);
	id->gen = BPF_CORE_READ(inode, i_generation);
	id->dev = BPF_CORE_READ(inode, i_sb, s_dev);
}

static __always_inline u32 has_ima(struct inode *inode)
{
	return (BPF_CORE_READ(inode, i_flags) & S_IMA_FLAG) ? 1 : 0;
}

static __always_inline u64 call_key(u32 fn)
{
	return ((u64)fn << 32) | (u32)bpf_get_current_pid_tgid();
}

static __always_inline void call_enter(u32 fn, u64 inode, u32 had_ima, u32 violation)
{
	struct ima_call c = { .ns = bpf_ktime_get_ns(), .inode = inode, .had_ima = had_ima, .violation = violation };
	u64 k = call_key(fn);
	bpf_map_update_elem(&ima_calls, &k, &c, BPF_ANY);
}

/* The entry's record, removed; false (counted) when there was none. */
static __always_inline bool call_exit(u32 fn, struct ima_call *out)
{
	u64 k = call_key(fn);
	struct ima_call *c = bpf_map_lookup_elem(&ima_calls, &k);
	if (!c) {
		count(IC_UNPAIRED);
		return false;
	}
	*out = *c;
	bpf_map_delete_elem(&ima_calls, &k);
	return true;
}

static __always_inline void timed_exit(u32 fn)
{
	struct ima_call c;
	if (!call_exit(fn, &c))
		return;
	u64 now = bpf_ktime_get_ns(), cg = bpf_get_current_cgroup_id();
	if (fn == FN_CHECK)
		handle_check(c.ns, now, cg);
	else if (fn == FN_MEASURE)
		handle_measure(c.ns, now, cg);
	else if (fn == FN_APPRAISE)
		handle_appraise(c.ns, now, cg);
}

static __always_inline void get_exit(struct inode *inode, u32 had_ima, u64 iint)
{
	struct ima_ident id = {};
	read_ident(inode, &id);
	handle_cache_get((u64)inode, &id, had_ima, iint, bpf_ktime_get_ns(), bpf_get_current_cgroup_id());
}

static __always_inline void get_exit_from_call(u64 iint)
{
	struct ima_call c;
	if (call_exit(FN_GET, &c))
		get_exit((struct inode *)c.inode, c.had_ima, iint);
}

/* ---- attach points ---- */

/* One IMA check: process_measurement (ima_main.c, static, 6.1 and 6.12), else ima_file_check. */
SEC("fentry/process_measurement")
int BPF_PROG(fentry_check)
{
	call_enter(FN_CHECK, 0, 0, 0);
	return 0;
}

SEC("fexit/process_measurement")
int BPF_PROG(fexit_check)
{
	timed_exit(FN_CHECK);
	return 0;
}

SEC("kprobe/process_measurement")
int BPF_KPROBE(kprobe_check)
{
	call_enter(FN_CHECK, 0, 0, 0);
	return 0;
}

SEC("kretprobe/process_measurement")
int BPF_KRETPROBE(kretprobe_check)
{
	timed_exit(FN_CHECK);
	return 0;
}

/* One measurement's hashing: ima_collect_measurement (ima_api.c, 6.1 and 6.12). */
SEC("fentry/ima_collect_measurement")
int BPF_PROG(fentry_measure)
{
	call_enter(FN_MEASURE, 0, 0, 0);
	return 0;
}

SEC("fexit/ima_collect_measurement")
int BPF_PROG(fexit_measure)
{
	timed_exit(FN_MEASURE);
	return 0;
}

SEC("kprobe/ima_collect_measurement")
int BPF_KPROBE(kprobe_measure)
{
	call_enter(FN_MEASURE, 0, 0, 0);
	return 0;
}

SEC("kretprobe/ima_collect_measurement")
int BPF_KRETPROBE(kretprobe_measure)
{
	timed_exit(FN_MEASURE);
	return 0;
}

/* One appraisal: ima_appraise_measurement (ima_appraise.c, 6.1 and 6.12; CONFIG_IMA_APPRAISE). */
SEC("fentry/ima_appraise_measurement")
int BPF_PROG(fentry_appraise)
{
	call_enter(FN_APPRAISE, 0, 0, 0);
	return 0;
}

SEC("fexit/ima_appraise_measurement")
int BPF_PROG(fexit_appraise)
{
	timed_exit(FN_APPRAISE);
	return 0;
}

SEC("kprobe/ima_appraise_measurement")
int BPF_KPROBE(kprobe_appraise)
{
	call_enter(FN_APPRAISE, 0, 0, 0);
	return 0;
}

SEC("kretprobe/ima_appraise_measurement")
int BPF_KRETPROBE(kretprobe_appraise)
{
	timed_exit(FN_APPRAISE);
	return 0;
}

/* One measurement-list entry: ima_add_template_entry(entry, violation, op, inode, filename)
 * (ima_queue.c, 6.1 and 6.12): fexit sees the arguments and the return value. */
SEC("fexit/ima_add_template_entry")
int BPF_PROG(fexit_add_entry, void *entry, int violation, const char *op, struct inode *inode, const unsigned char *filename, int ret)
{
	handle_add_entry(violation, ret, bpf_get_current_cgroup_id());
	return 0;
}

SEC("kprobe/ima_add_template_entry")
int BPF_KPROBE(kprobe_add_entry, void *entry, int violation)
{
	call_enter(FN_ADD, 0, 0, violation ? 1 : 0);
	return 0;
}

SEC("kretprobe/ima_add_template_entry")
int BPF_KRETPROBE(kretprobe_add_entry, int ret)
{
	struct ima_call c;
	if (call_exit(FN_ADD, &c))
		handle_add_entry(c.violation, ret, bpf_get_current_cgroup_id());
	return 0;
}

/* The cache get: integrity_inode_get (6.1 iint.c) or ima_inode_get (6.9+, 6.12 ima_iint.c),
 * both (struct inode *) -> iint pointer. S_IMA at entry says whether one existed. */
static __always_inline void get_enter(struct inode *inode)
{
	call_enter(FN_GET, (u64)inode, has_ima(inode), 0);
}

SEC("fentry/integrity_inode_get")
int BPF_PROG(fentry_get, struct inode *inode)
{
	get_enter(inode);
	return 0;
}

SEC("fexit/integrity_inode_get")
int BPF_PROG(fexit_get, struct inode *inode, void *ret)
{
	get_exit_from_call((u64)ret);
	return 0;
}

SEC("kprobe/integrity_inode_get")
int BPF_KPROBE(kprobe_get, struct inode *inode)
{
	get_enter(inode);
	return 0;
}

SEC("kretprobe/integrity_inode_get")
int BPF_KRETPROBE(kretprobe_get, void *ret)
{
	get_exit_from_call((u64)ret);
	return 0;
}

/* The cache free: integrity_inode_free(inode) (6.1 iint.c), else security_inode_free(inode)
 * (security/security.c: calls integrity_inode_free in 6.1; queues ima_inode_free_rcu in 6.12). */
SEC("fentry/integrity_inode_free")
int BPF_PROG(fentry_free, struct inode *inode)
{
	handle_cache_free((u64)inode, has_ima(inode), bpf_ktime_get_ns());
	return 0;
}

SEC("kprobe/integrity_inode_free")
int BPF_KPROBE(kprobe_free, struct inode *inode)
{
	handle_cache_free((u64)inode, has_ima(inode), bpf_ktime_get_ns());
	return 0;
}

/* ---- BPF_PROG_TEST_RUN entry points: the same handlers on synthetic facts ---- */

enum test_op {
	OP_GET = 0,      /* handle_cache_get(inode, ident, had_ima, iint) */
	OP_FREE = 1,     /* handle_cache_free(inode, had_ima) */
	OP_CHECK = 2,    /* handle_check(enter_ns, now) */
	OP_MEASURE = 3,  /* handle_measure(enter_ns, now) */
	OP_APPRAISE = 4, /* handle_appraise(enter_ns, now) */
	OP_ADD = 5,      /* handle_add_entry(violation, ret) */
};

struct ima_test_args {
	u32 op;
	u32 had_ima;
	u64 inode;
	u64 ino;
	u32 gen;
	u32 dev;
	u64 iint;
	u64 now;
	u64 enter_ns;
	u64 cgroup_id;
	s64 ret;
	u32 violation;
	u32 _pad;
};

SEC("syscall")
int test_ima(struct ima_test_args *ctx)
{
	struct ima_test_args a = *ctx;
	struct ima_ident id = { .ino = a.ino, .gen = a.gen, .dev = a.dev };
	switch (a.op) {
	case OP_GET: return handle_cache_get(a.inode, &id, a.had_ima, a.iint, a.now, a.cgroup_id);
	case OP_FREE: handle_cache_free(a.inode, a.had_ima, a.now); return 0;
	case OP_CHECK: handle_check(a.enter_ns, a.now, a.cgroup_id); return 0;
	case OP_MEASURE: handle_measure(a.enter_ns, a.now, a.cgroup_id); return 0;
	case OP_APPRAISE: handle_appraise(a.enter_ns, a.now, a.cgroup_id); return 0;
	case OP_ADD: handle_add_entry(a.violation, a.ret, a.cgroup_id); return 0;
	default: return -1;
	}
}

/* ---- cost through BPF_PROG_TEST_RUN with repeat (bench/test-run-cost.ts) ----
 * One run = one measured file's life in the cache: a check (entry+exit), a cache get that
 * allocates, the hashing (entry+exit), the log entry, a later cache get that finds it, and
 * the inode's free: 6 hook events (the entry/exit pairs count as one each, as the handlers
 * run once per pair). Inode pointers rotate over 4096 so the LRU map stays warm, and each
 * round over them gives the inodes a new generation: the first get of a pointer in a round
 * is an after-free reuse (counted; its events stay within the per-second budget). */
u64 bench_iter;

SEC("tc")
int bench_ima_cycle(struct __sk_buff *skb)
{
	u64 i = bench_iter++;
	u64 inode = 0xffff888100000000ULL + (i & 4095) * 1024;
	u64 now = 1000000 + i * 1000;
	struct ima_ident id = { .ino = 1000 + (i & 4095), .gen = (u32)(i >> 12), .dev = 8 };
	handle_check(now, now + 100, 1);
	handle_cache_get(inode, &id, 0, inode + 512, now + 10, 1);
	handle_measure(now + 20, now + 80, 1);
	handle_add_entry(0, 0, 1);
	handle_cache_get(inode, &id, 1, inode + 512, now + 200, 1);
	handle_cache_free(inode, 1, now + 300);
	return 0;
}

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return 0;
}
