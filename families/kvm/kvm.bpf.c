// SPDX-License-Identifier: GPL-2.0
/* kvm family (seed 000): VM-exits by reason with their handling latency, exits to the VMM
 * with the time spent in userspace, port/MMIO/emulation counts, nested VM-exits split into
 * "handled by L0" and "reflected to L1" with L1's handling latency, nested VM-entry
 * failures, and every KVM_GET/SET_NESTED_STATE with its result, latency and flags.
 *
 * A VM is its VMM process: every key carries the tgid, which the agent turns into a `vm`
 * label (agent/vms.ts). Pairings (exit -> entry, reflected exit -> nested VM-entry, return to
 * userspace -> next KVM_RUN) are keyed by thread id: a vCPU runs KVM_RUN on one thread and
 * both halves of each pair happen on it. Each pending half records its tgid (and vCPU id), so
 * a thread id reused by another VM never pairs with a dead VM's half (seed 004's lesson).
 *
 * Every attach point is a thin wrapper around one __always_inline handler on plain values;
 * SEC("syscall") test programs drive the same handlers (test/kvm.test.ts). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"
#include "kvm_ioctl.h"
#include "hook_chain.h"

char LICENSE[] SEC("license") = "GPL";

/* struct kvm_nested_state starts with __u16 flags; arch/x86/include/uapi/asm/kvm.h (v6.18). */
#define KVM_STATE_NESTED_GUEST_MODE 0x1
#define KVM_STATE_NESTED_RUN_PENDING 0x2

enum nstate_op { OP_GET = 1, OP_SET = 2 };
EXPORT_BTF_ENUM(nstate_op);

/* kvm_userspace_exit with errno < 0 reports no exit reason: these stand in for it. */
#define UEXIT_RESTART 0x10000 /* -EINTR: KVM_RUN interrupted by a signal */
#define UEXIT_ERROR 0x10001   /* any other error */

#define MSG_LEN 64

/* ---- aggregates read by the agent ---- */

struct exit_key {
	u32 tgid;
	u32 isa; /* KVM_ISA_VMX 1, KVM_ISA_SVM 2 (arch/x86/kvm/trace.h) */
	u32 reason;
	u32 _pad;
};

/* The sum sits beside the count: an exit and its entry touch the entry's first cache line and
 * one slot's, not a third line at the end (the agent reads fields by their BTF offsets). */
struct exit_stats {
	u64 exits;
	u64 handling_sum_ns;
	u64 handling_slots[HIST_SLOTS]; /* log2 ns from the exit to the vCPU's next entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct exit_key);
	__type(value, struct exit_stats);
} kvm_exits SEC(".maps");

struct vcpu_key {
	u32 tgid;
	u32 vcpu_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct vcpu_key);
	__type(value, u64);
} kvm_vcpu_exits SEC(".maps");

struct uexit_key {
	u32 tgid;
	u32 reason; /* KVM_EXIT_*, or UEXIT_RESTART / UEXIT_ERROR */
};

struct uexit_stats { /* laid out as exit_stats */
	u64 exits;
	u64 user_sum_ns;
	u64 user_slots[HIST_SLOTS]; /* log2 ns from the return to userspace to the next KVM_RUN */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct uexit_key);
	__type(value, struct uexit_stats);
} kvm_uexits SEC(".maps");

struct vm_key {
	u32 tgid;
	u32 _pad;
};

struct vm_stats {
	u64 pio_in;
	u64 pio_out;
	u64 mmio_unsat_read;
	u64 mmio_read;
	u64 mmio_write;
	u64 emulated_ok;
	u64 emulated_failed;
	u64 nested_vmenters;
	u64 nested_intr_exits;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vm_key);
	__type(value, struct vm_stats);
} kvm_vms SEC(".maps");

struct nested_stats {
	u64 l0;                   /* L2 exits L0 handled itself */
	u64 l1;                   /* exits reflected to L1 */
	u64 l1_slots[HIST_SLOTS]; /* log2 ns from the reflection to L1's next nested VM-entry */
	u64 l1_sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct exit_key);
	__type(value, struct nested_stats);
} kvm_nested SEC(".maps");

struct fail_key {
	u32 tgid;
	u32 _pad;
	u64 msg_hash; /* FNV-1a of the message; the text is in vmenter_msgs */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct fail_key);
	__type(value, u64);
} kvm_vmenter_failures SEC(".maps");

struct msg_text {
	char text[MSG_LEN];
};

/* The kernel's consistency-check messages, interned by hash (a bounded read, once each). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 512);
	__type(key, u64);
	__type(value, struct msg_text);
} vmenter_msgs SEC(".maps");

struct nstate_key {
	u32 tgid;
	u32 op;  /* enum nstate_op */
	u32 err; /* errno (positive), 0 on success */
	u32 _pad;
};

struct nstate_stats {
	u64 ops;
	u64 slots[HIST_SLOTS]; /* log2 ns inside the ioctl */
	u64 sum_ns;
	u64 saves_guest_mode;  /* successful GETs whose flags had GUEST_MODE */
	u64 saves_run_pending; /* ... and RUN_PENDING */
	u64 flags_unreadable;  /* successful GETs whose user buffer could not be read back */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct nstate_key);
	__type(value, struct nstate_stats);
} kvm_nstate SEC(".maps");

/* Pairings that could not be made: index = enum unpaired. */
enum unpaired { UNPAIRED_EXIT_ENTRY = 0, UNPAIRED_NESTED_L1 = 1, UNPAIRED_USERSPACE = 2, UNPAIRED_MAX = 4 };
EXPORT_BTF_ENUM(unpaired);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNPAIRED_MAX);
	__type(key, u32);
	__type(value, u64);
} unpaired SEC(".maps");

/* Written by the agent: [0] = count exits per vCPU (config kvm.vcpuLabel). An array lookup
 * with a constant key is inlined by the verifier, so the check is nearly free. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u32);
} kvm_cfg SEC(".maps");

DEFINE_ERROR_MAP();
DEFINE_VM_SEEN_MAP();

/* ---- pending halves of pairs, per thread (LRU: a dead thread's entry ages out; the
 * values are struct exit_pending, user_pending, ioctl_pending of kvm_ioctl.h) ---- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct exit_pending);
} exit_pending SEC(".maps");

enum nested_state { NESTED_L2_EXIT = 1, NESTED_IN_L1 = 2 };

struct nested_pending {
	u64 ns;
	u32 tgid;
	u32 isa;
	u32 reason;
	u32 state; /* enum nested_state */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct nested_pending);
} nested_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct user_pending);
} user_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct ioctl_pending);
} ioctl_pending SEC(".maps");

/* The same per-thread halves in task-local storage (kernel 5.11+, kernel/bpf/bpf_task_storage.c):
 * found from the task pointer without hashing a key, freed with the thread, never evicted
 * by another thread's insert. One record per thread shared with kvm_irq (struct
 * hv_kvm_thread, kvm_ioctl.h); this family uses its exit, user and ioctl parts. The hash
 * maps above are the fallback tier for kernels without it; the loader keeps the family on
 * one tier (Candidate.state) since the halves of a pair are written and read by different
 * probes. */
HV_KVM_THREAD_MAP();

static __always_inline struct hv_kvm_thread *task_state(bool create)
{
	struct hv_kvm_thread *t = bpf_task_storage_get(&hv_shared_kvm_thread, bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	if (!t && create)
		count_error(&hv_errors, HV_ERR_MAP_FULL);
	return t;
}

static const struct exit_stats zero_exit;
static const struct uexit_stats zero_uexit;
static const struct vm_stats zero_vm;
static const struct nested_stats zero_nested;
static const struct nstate_stats zero_nstate;
static const u64 zero_u64;

/* Set a thread's pending half. After a vCPU thread's first event its entry exists, and
 * writing it in place costs a lookup; an LRU insert (taking an LRU lock, maybe evicting)
 * costs several times that (bench/RESULTS.md). */
static __always_inline void set_pending(void *map, u32 tid, const void *val, u32 size)
{
	void *cur = bpf_map_lookup_elem(map, &tid);
	if (cur) {
		__builtin_memcpy(cur, val, size);
		return;
	}
	if (bpf_map_update_elem(map, &tid, val, BPF_ANY))
		count_error(&hv_errors, HV_ERR_MAP_FULL);
}

static __always_inline void count_unpaired(u32 which)
{
	count_error(&unpaired, which);
}

static __always_inline struct vm_stats *vm_stats(u32 tgid)
{
	struct vm_key k = { .tgid = tgid };
	return lookup_or_init_vm_seen(&kvm_vms, &k, &zero_vm, k.tgid);
}

/* ---- the logic: plain values in, map updates out ---- */

/* Counts the exit (and per vCPU where configured). */
static __always_inline void count_exit(u32 tgid, u32 vcpu_id, u32 isa, u32 reason)
{
	struct exit_key k = { .tgid = tgid, .isa = isa, .reason = reason };
	struct exit_stats *s = lookup_or_init_vm_seen(&kvm_exits, &k, &zero_exit, k.tgid);
	if (s)
		s->exits++;
	u32 zero = 0;
	u32 *per_vcpu = bpf_map_lookup_elem(&kvm_cfg, &zero);
	if (per_vcpu && *per_vcpu) {
		struct vcpu_key vk = { .tgid = tgid, .vcpu_id = vcpu_id };
		u64 *c = lookup_or_init_vm_seen(&kvm_vcpu_exits, &vk, &zero_u64, vk.tgid);
		if (c)
			(*c)++;
	}
}

static __always_inline void handle_exit(u32 tid, u32 tgid, u64 now, u32 vcpu_id, u32 isa, u32 reason)
{
	count_exit(tgid, vcpu_id, isa, reason);
	struct exit_pending p = { .ns = now, .tgid = tgid, .vcpu_id = vcpu_id, .isa = isa, .reason = reason };
	set_pending(&exit_pending, tid, &p, sizeof(p));
}

/* The vCPU enters again: its handling time since the pending exit (either tier) ends. */
static __always_inline void close_exit(struct exit_pending *p, u32 tgid, u64 now, u32 vcpu_id)
{
	if (!p || !p->ns)
		return; /* the first entry of a vCPU, or one after an unobserved exit */
	if (p->tgid != tgid || p->vcpu_id != vcpu_id || now < p->ns) {
		count_unpaired(UNPAIRED_EXIT_ENTRY);
	} else {
		struct exit_key k = { .tgid = tgid, .isa = p->isa, .reason = p->reason };
		struct exit_stats *s = bpf_map_lookup_elem(&kvm_exits, &k);
		if (s)
			hist_add(s->handling_slots, &s->handling_sum_ns, now - p->ns);
	}
	p->ns = 0; /* consumed: cheaper than a delete, and the next exit overwrites it */
}

static __always_inline void handle_entry(u32 tid, u32 tgid, u64 now, u32 vcpu_id)
{
	close_exit(bpf_map_lookup_elem(&exit_pending, &tid), tgid, now, vcpu_id);
}

/* Counts the return to userspace; the reason its pending half carries. */
static __always_inline u32 count_userspace_exit(u32 tgid, u32 reason, s32 err)
{
	if (err < 0)
		reason = err == -4 /* EINTR */ ? UEXIT_RESTART : UEXIT_ERROR;
	struct uexit_key k = { .tgid = tgid, .reason = reason };
	struct uexit_stats *s = lookup_or_init_vm_seen(&kvm_uexits, &k, &zero_uexit, k.tgid);
	if (s)
		s->exits++;
	return reason;
}

static __always_inline void handle_userspace_exit(u32 tid, u32 tgid, u64 now, u32 reason, s32 err)
{
	struct user_pending p = { .ns = now, .tgid = tgid, .reason = count_userspace_exit(tgid, reason, err) };
	set_pending(&user_pending, tid, &p, sizeof(p));
}

/* KVM_RUN again: the VMM's time in userspace since the last return ends. p: this thread's
 * pending return (from either tier), or NULL. */
static __always_inline void close_userspace(struct user_pending *p, u32 tgid, u64 now)
{
	if (!p || !p->ns)
		return;
	if (p->tgid != tgid || now < p->ns) {
		count_unpaired(UNPAIRED_USERSPACE);
	} else {
		struct uexit_key k = { .tgid = tgid, .reason = p->reason };
		struct uexit_stats *s = bpf_map_lookup_elem(&kvm_uexits, &k);
		if (s)
			hist_add(s->user_slots, &s->user_sum_ns, now - p->ns);
	}
	p->ns = 0;
}

static __always_inline void handle_kvm_run(u32 tid, u32 tgid, u64 now)
{
	close_userspace(bpf_map_lookup_elem(&user_pending, &tid), tgid, now);
}

static __always_inline void handle_pio(u32 tgid, u32 rw)
{
	struct vm_stats *s = vm_stats(tgid);
	if (!s)
		return;
	if (rw)
		s->pio_out++;
	else
		s->pio_in++;
}

/* KVM_TRACE_MMIO_READ_UNSATISFIED 0, READ 1, WRITE 2 (include/trace/events/kvm.h, v6.18). */
static __always_inline void handle_mmio(u32 tgid, u32 type)
{
	struct vm_stats *s = vm_stats(tgid);
	if (!s)
		return;
	if (type == 0)
		s->mmio_unsat_read++;
	else if (type == 1)
		s->mmio_read++;
	else
		s->mmio_write++;
}

static __always_inline void handle_emulate(u32 tgid, u32 failed)
{
	struct vm_stats *s = vm_stats(tgid);
	if (!s)
		return;
	if (failed)
		s->emulated_failed++;
	else
		s->emulated_ok++;
}

static __always_inline void count_nested(u32 tgid, u32 isa, u32 reason, bool l1)
{
	struct exit_key k = { .tgid = tgid, .isa = isa, .reason = reason };
	struct nested_stats *s = lookup_or_init_vm_seen(&kvm_nested, &k, &zero_nested, k.tgid);
	if (!s)
		return;
	if (l1)
		s->l1++;
	else
		s->l0++;
}

/* An L2 exit is reflected to L1 (kvm_nested_vmexit_inject) or handled by L0. L0 handling
 * leaves no mark, so an L2 exit still pending when the vCPU's next nested event arrives was
 * L0's: it is counted then (one exit per vCPU may wait until that next event). */
static __always_inline void settle_l2_exit(struct nested_pending *p)
{
	if (p->state == NESTED_L2_EXIT)
		count_nested(p->tgid, p->isa, p->reason, false);
}

static __always_inline void handle_nested_vmexit(u32 tid, u32 tgid, u64 now, u32 isa, u32 reason)
{
	struct nested_pending n = { .ns = now, .tgid = tgid, .isa = isa, .reason = reason, .state = NESTED_L2_EXIT };
	struct nested_pending *p = bpf_map_lookup_elem(&nested_pending, &tid);
	if (p) {
		settle_l2_exit(p);
		*p = n;
	} else if (bpf_map_update_elem(&nested_pending, &tid, &n, BPF_ANY)) {
		count_error(&hv_errors, HV_ERR_MAP_FULL);
	}
}

static __always_inline void handle_nested_inject(u32 tid, u32 tgid, u64 now, u32 isa, u32 reason)
{
	/* The pending L2 exit, if any, is the one being reflected: it is not L0's. */
	count_nested(tgid, isa, reason, true);
	struct nested_pending n = { .ns = now, .tgid = tgid, .isa = isa, .reason = reason, .state = NESTED_IN_L1 };
	set_pending(&nested_pending, tid, &n, sizeof(n));
}

static __always_inline void handle_nested_vmenter(u32 tid, u32 tgid, u64 now)
{
	struct vm_stats *s = vm_stats(tgid);
	if (s)
		s->nested_vmenters++;
	struct nested_pending *p = bpf_map_lookup_elem(&nested_pending, &tid);
	if (!p)
		return;
	if (p->state == NESTED_IN_L1) {
		if (p->tgid != tgid || now < p->ns) {
			count_unpaired(UNPAIRED_NESTED_L1);
		} else {
			struct exit_key k = { .tgid = tgid, .isa = p->isa, .reason = p->reason };
			struct nested_stats *n = bpf_map_lookup_elem(&kvm_nested, &k);
			if (n)
				hist_add(n->l1_slots, &n->l1_sum_ns, now - p->ns);
		}
	} else {
		settle_l2_exit(p);
	}
	p->state = 0; /* consumed; the entry is reused by the vCPU's next nested exit */
}

static __always_inline void handle_nested_intr(u32 tgid)
{
	struct vm_stats *s = vm_stats(tgid);
	if (s)
		s->nested_intr_exits++;
}

static __always_inline void handle_vmenter_failed(u32 tgid, u64 hash)
{
	struct fail_key k = { .tgid = tgid, .msg_hash = hash };
	u64 *c = lookup_or_init_vm_seen(&kvm_vmenter_failures, &k, &zero_u64, k.tgid);
	if (c)
		(*c)++;
}

static __always_inline u32 nstate_op(u32 cmd)
{
	return cmd == KVM_GET_NESTED_STATE_IOCTL ? OP_GET : cmd == KVM_SET_NESTED_STATE_IOCTL ? OP_SET : 0;
}

static __always_inline void handle_ioctl_enter(u32 tid, u32 tgid, u64 now, u32 cmd, u64 arg)
{
	if (cmd == KVM_RUN_IOCTL) {
		handle_kvm_run(tid, tgid, now);
		return;
	}
	u32 op = nstate_op(cmd);
	if (!op)
		return;
	struct ioctl_pending p = { .ns = now, .arg = arg, .tgid = tgid, .op = op };
	if (bpf_map_update_elem(&ioctl_pending, &tid, &p, BPF_ANY))
		count_error(&hv_errors, HV_ERR_MAP_FULL);
}

/* flags_read: 1 if `flags` was read from the user buffer after a successful GET. */
static __always_inline void handle_nstate_done(struct ioctl_pending *p, u64 now, s64 ret, u16 flags, bool flags_read)
{
	struct nstate_key k = { .tgid = p->tgid, .op = p->op, .err = ret < 0 ? (u32)-ret : 0 };
	struct nstate_stats *s = lookup_or_init_vm_seen(&kvm_nstate, &k, &zero_nstate, k.tgid);
	if (!s)
		return;
	s->ops++;
	if (now >= p->ns)
		hist_add(s->slots, &s->sum_ns, now - p->ns);
	if (p->op != OP_GET || ret < 0)
		return;
	if (!flags_read) {
		s->flags_unreadable++;
		return;
	}
	if (flags & KVM_STATE_NESTED_GUEST_MODE)
		s->saves_guest_mode++;
	if (flags & KVM_STATE_NESTED_RUN_PENDING)
		s->saves_run_pending++;
}

/* ---- the task-storage tier of the per-thread halves ---- */

static __always_inline void handle_exit_ts(struct hv_kvm_thread *t, u32 tgid, u64 now, u32 vcpu_id, u32 isa, u32 reason)
{
	count_exit(tgid, vcpu_id, isa, reason);
	if (!t)
		return;
	t->exit.ns = now;
	t->exit.tgid = tgid;
	t->exit.vcpu_id = vcpu_id;
	t->exit.isa = isa;
	t->exit.reason = reason;
}

static __always_inline void handle_userspace_exit_ts(struct hv_kvm_thread *t, u32 tgid, u64 now, u32 reason, s32 err)
{
	reason = count_userspace_exit(tgid, reason, err);
	if (!t)
		return;
	t->user.ns = now;
	t->user.tgid = tgid;
	t->user.reason = reason;
}

static __always_inline void handle_ioctl_enter_ts(struct hv_kvm_thread *t, u32 tgid, u64 now, u32 cmd, u64 arg)
{
	if (!t)
		return;
	if (cmd == KVM_RUN_IOCTL) {
		close_userspace(&t->user, tgid, now);
		return;
	}
	u32 op = nstate_op(cmd);
	if (!op)
		return;
	t->ioctl.ns = now;
	t->ioctl.arg = arg;
	t->ioctl.tgid = tgid;
	t->ioctl.op = op;
}

/* FNV-1a over a NUL-terminated message of at most MSG_LEN bytes. */
static __always_inline u64 msg_hash(const char *m)
{
	u64 h = 14695981039346656037ULL;
	for (int i = 0; i < MSG_LEN; i++) {
		if (!m[i])
			break;
		h = (h ^ (u8)m[i]) * 1099511628211ULL;
	}
	return h;
}

static __always_inline void on_vmenter_failed(u32 tgid, const void *msg_ptr)
{
	struct msg_text t = {};
	if (bpf_probe_read_kernel_str(t.text, sizeof(t.text), msg_ptr) <= 0)
		__builtin_memcpy(t.text, "unreadable", 11);
	u64 h = msg_hash(t.text);
	bpf_map_update_elem(&vmenter_msgs, &h, &t, BPF_NOEXIST);
	handle_vmenter_failed(tgid, h);
}

/* ---- attach points ---- */

/* Thread id and tgid from one helper call: these programs run on every exit. */
#define CUR_IDS(id) (u32)(id), (u32)((id) >> 32)

/* kvm_exit: tp_btf only where the raw arguments carry the reason, (exit_reason, vcpu, isa)
 * in v5.10-v5.15. Since v5.16 they are (vcpu, isa) and the reason is computed inside the
 * tracepoint by a static call (arch/x86/kvm/trace.h, kvm_x86_call(get_exit_info)), so the
 * classic tracepoint's record is the only place it exists; the loader picks the variant by
 * the parameter names in btf_trace_kvm_exit. */
SEC("tp_btf/kvm_exit")
int BPF_PROG(btf_kvm_exit_legacy, unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)
{
	if (!vcpu) /* the verifier types tracepoint pointers as maybe-NULL (6.12) */
		return 0;
	handle_exit(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), vcpu->vcpu_id, isa, exit_reason);
	return 0;
}

SEC("tracepoint/kvm/kvm_exit")
int tp_kvm_exit(struct trace_event_raw_kvm_exit *ctx)
{
	handle_exit(
	        CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, vcpu_id), BPF_CORE_READ(ctx, isa), BPF_CORE_READ(ctx, exit_reason));
	return 0;
}

SEC("tp_btf/kvm_exit")
int BPF_PROG(btf_kvm_exit_legacy_ts, unsigned int exit_reason, struct kvm_vcpu *vcpu, u32 isa)
{
	if (!vcpu)
		return 0;
	handle_exit_ts(task_state(true), (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), vcpu->vcpu_id, isa, exit_reason);
	return 0;
}

SEC("tracepoint/kvm/kvm_exit")
int tp_kvm_exit_ts(struct trace_event_raw_kvm_exit *ctx)
{
	handle_exit_ts(task_state(true), (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, vcpu_id), BPF_CORE_READ(ctx, isa),
	        BPF_CORE_READ(ctx, exit_reason));
	return 0;
}

/* kvm_entry(vcpu[, force_immediate_exit]) (v6.9+, and 6.1.149): the first argument is the
 * vCPU in every generation, so one tp_btf program fits all. */
SEC("tp_btf/kvm_entry")
int BPF_PROG(btf_kvm_entry, struct kvm_vcpu *vcpu)
{
	if (!vcpu) /* trusted_ptr_or_null on 6.12: an unchecked read is refused */
		return 0;
	handle_entry(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), vcpu->vcpu_id);
	return 0;
}

SEC("tracepoint/kvm/kvm_entry")
int tp_kvm_entry(struct trace_event_raw_kvm_entry *ctx)
{
	handle_entry(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, vcpu_id));
	return 0;
}

/* Task storage is looked up without F_CREATE at an entry: a thread with no exit seen has
 * nothing to close. */
SEC("tp_btf/kvm_entry")
int BPF_PROG(btf_kvm_entry_ts, struct kvm_vcpu *vcpu)
{
	if (!vcpu)
		return 0;
	struct hv_kvm_thread *t = task_state(false);
	if (t)
		close_exit(&t->exit, (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), vcpu->vcpu_id);
	return 0;
}

SEC("tracepoint/kvm/kvm_entry")
int tp_kvm_entry_ts(struct trace_event_raw_kvm_entry *ctx)
{
	struct hv_kvm_thread *t = task_state(false);
	if (t)
		close_exit(&t->exit, (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, vcpu_id));
	return 0;
}

SEC("tp_btf/kvm_userspace_exit")
int BPF_PROG(btf_kvm_userspace_exit, u32 reason, int errno)
{
	handle_userspace_exit(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), reason, errno);
	return 0;
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int tp_kvm_userspace_exit(struct trace_event_raw_kvm_userspace_exit *ctx)
{
	handle_userspace_exit(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), ctx->reason, ctx->errno);
	return 0;
}

SEC("tp_btf/kvm_userspace_exit")
int BPF_PROG(btf_kvm_userspace_exit_ts, u32 reason, int errno)
{
	handle_userspace_exit_ts(task_state(true), (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), reason, errno);
	return 0;
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int tp_kvm_userspace_exit_ts(struct trace_event_raw_kvm_userspace_exit *ctx)
{
	handle_userspace_exit_ts(task_state(true), (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), ctx->reason, ctx->errno);
	return 0;
}

SEC("tp_btf/kvm_pio")
int BPF_PROG(btf_kvm_pio, unsigned int rw)
{
	handle_pio((u32)(bpf_get_current_pid_tgid() >> 32), rw);
	return 0;
}

SEC("tracepoint/kvm/kvm_pio")
int tp_kvm_pio(struct trace_event_raw_kvm_pio *ctx)
{
	handle_pio((u32)(bpf_get_current_pid_tgid() >> 32), ctx->rw);
	return 0;
}

SEC("tp_btf/kvm_mmio")
int BPF_PROG(btf_kvm_mmio, int type)
{
	handle_mmio((u32)(bpf_get_current_pid_tgid() >> 32), type);
	return 0;
}

SEC("tracepoint/kvm/kvm_mmio")
int tp_kvm_mmio(struct trace_event_raw_kvm_mmio *ctx)
{
	handle_mmio((u32)(bpf_get_current_pid_tgid() >> 32), ctx->type);
	return 0;
}

SEC("tp_btf/kvm_emulate_insn")
int BPF_PROG(btf_kvm_emulate_insn, struct kvm_vcpu *vcpu, __u8 failed)
{
	handle_emulate((u32)(bpf_get_current_pid_tgid() >> 32), failed);
	return 0;
}

SEC("tracepoint/kvm/kvm_emulate_insn")
int tp_kvm_emulate_insn(struct trace_event_raw_kvm_emulate_insn *ctx)
{
	handle_emulate((u32)(bpf_get_current_pid_tgid() >> 32), BPF_CORE_READ(ctx, failed));
	return 0;
}

/* Nested: the classic records, for the same reason as kvm_exit (kvm_nested_vmexit's raw
 * arguments are (vcpu, isa) since v5.16). The five programs attach together, since the
 * L0/L1 split needs all of them. */
SEC("tracepoint/kvm/kvm_nested_vmexit")
int tp_kvm_nested_vmexit(struct trace_event_raw_kvm_nested_vmexit *ctx)
{
	handle_nested_vmexit(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, isa), BPF_CORE_READ(ctx, exit_reason));
	return 0;
}

SEC("tracepoint/kvm/kvm_nested_vmexit_inject")
int tp_kvm_nested_vmexit_inject(struct trace_event_raw_kvm_nested_vmexit_inject *ctx)
{
	handle_nested_inject(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), BPF_CORE_READ(ctx, isa), BPF_CORE_READ(ctx, exit_code));
	return 0;
}

SEC("tracepoint/kvm/kvm_nested_vmenter")
int tp_kvm_nested_vmenter(void *ctx)
{
	handle_nested_vmenter(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns());
	return 0;
}

SEC("tracepoint/kvm/kvm_nested_intr_vmexit")
int tp_kvm_nested_intr_vmexit(void *ctx)
{
	handle_nested_intr((u32)(bpf_get_current_pid_tgid() >> 32));
	return 0;
}

/* msg is a __string: the record holds (length << 16 | offset) of the copy in the record. */
SEC("tracepoint/kvm/kvm_nested_vmenter_failed")
int tp_kvm_nested_vmenter_failed(struct trace_event_raw_kvm_nested_vmenter_failed *ctx)
{
	u32 loc = BPF_CORE_READ(ctx, __data_loc_msg);
	on_vmenter_failed((u32)(bpf_get_current_pid_tgid() >> 32), (void *)ctx + (loc & 0xffff));
	return 0;
}

/* KVM_RUN and the nested-state ioctls, from the ioctl syscall tracepoints (kvm_ioctl.h):
 * the command is filtered first, so any other ioctl costs one compare. Other families watch
 * these hooks too: the programs are chained (hook_chain.h). */
static __always_inline bool kvm_ioctl_cmd(u32 cmd)
{
	return cmd == KVM_RUN_IOCTL || cmd == KVM_GET_NESTED_STATE_IOCTL || cmd == KVM_SET_NESTED_STATE_IOCTL;
}

/* After a successful GET, the saved flags are read back from the caller's buffer. */
static __always_inline void finish_nstate(struct ioctl_pending *p, s64 ret)
{
	u16 flags = 0;
	bool ok = false;
	if (p->op == OP_GET && ret >= 0)
		ok = bpf_probe_read_user(&flags, sizeof(flags), (void *)p->arg) == 0;
	handle_nstate_done(p, bpf_ktime_get_ns(), ret, flags, ok);
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_enter_ioctl", tp_sys_enter_ioctl_ts, struct sys_enter_ioctl_args *, ctx)
{
	u32 cmd = ctx->cmd;
	if (!kvm_ioctl_cmd(cmd))
		return;
	/* KVM_RUN only closes a pending return: a thread without a record has none. */
	handle_ioctl_enter_ts(task_state(cmd != KVM_RUN_IOCTL), (u32)(bpf_get_current_pid_tgid() >> 32), bpf_ktime_get_ns(), cmd, ctx->arg);
}

/* Every ioctl of the host ends here: a thread with no nested-state ioctl in flight (nearly
 * all) leaves after the record lookup and one load. Filtering on the command still in the
 * caller's registers (current_ioctl) instead measured slower: 64 against 51 ns for the hook
 * with kvm_irq's program, against a 34 ns floor (bench kernel part, interleaved runs). */
HV_CHAINED_PROG("tracepoint/syscalls/sys_exit_ioctl", tp_sys_exit_ioctl_ts, struct sys_exit_args *, ctx)
{
	struct hv_kvm_thread *t = task_state(false);
	if (!t || !t->ioctl.op)
		return;
	finish_nstate(&t->ioctl, ctx->ret);
	t->ioctl.op = 0;
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_enter_ioctl", tp_sys_enter_ioctl, struct sys_enter_ioctl_args *, ctx)
{
	u32 cmd = ctx->cmd;
	if (!kvm_ioctl_cmd(cmd))
		return;
	handle_ioctl_enter(CUR_IDS(bpf_get_current_pid_tgid()), bpf_ktime_get_ns(), cmd, ctx->arg);
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_exit_ioctl", tp_sys_exit_ioctl, struct sys_exit_args *, ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct ioctl_pending *p = bpf_map_lookup_elem(&ioctl_pending, &tid);
	if (!p)
		return;
	finish_nstate(p, ctx->ret);
	bpf_map_delete_elem(&ioctl_pending, &tid);
}

/* ---- BPF_PROG_TEST_RUN entry points: the same handlers, synthetic arguments ---- */

enum kvm_test_op {
	T_EXIT = 0,
	T_ENTRY = 1,
	T_USERSPACE_EXIT = 2,
	T_IOCTL_ENTER = 3,
	T_IOCTL_EXIT = 4,
	T_PIO = 5,
	T_MMIO = 6,
	T_EMULATE = 7,
	T_NESTED_VMEXIT = 8,
	T_NESTED_INJECT = 9,
	T_NESTED_VMENTER = 10,
	T_NESTED_INTR = 11,
	T_VMENTER_FAILED = 12, /* msg in `msg` */
	T_FIRST_SIGHT = 13,    /* `reason` times: forget the caller's tgid, then see it first (bench/first-sight.ts) */
	/* The task-storage tier: the calling thread's slot (tid unused). */
	T_TS_USERSPACE_EXIT = 14,
	T_TS_IOCTL_ENTER = 15,
	T_TS_IOCTL_EXIT = 16,
	T_TS_EXIT = 17,
	T_TS_ENTRY = 18,
};

struct kvm_test_args {
	u32 op;
	u32 tid;
	u32 tgid;
	u32 vcpu_id;
	u64 now;
	u32 isa;
	u32 reason; /* exit reason, userspace reason, rw, mmio type, failed, or ioctl cmd */
	s64 ret;    /* errno for userspace exits, return value for ioctl exits */
	u64 arg;    /* ioctl arg; for T_IOCTL_EXIT: flags read back, or (u64)-1 if unreadable */
	char msg[MSG_LEN];
};

SEC("syscall")
int test_kvm(struct kvm_test_args *ctx)
{
	struct kvm_test_args a = *ctx;
	switch (a.op) {
	case T_EXIT: handle_exit(a.tid, a.tgid, a.now, a.vcpu_id, a.isa, a.reason); break;
	case T_ENTRY: handle_entry(a.tid, a.tgid, a.now, a.vcpu_id); break;
	case T_USERSPACE_EXIT: handle_userspace_exit(a.tid, a.tgid, a.now, a.reason, a.ret); break;
	case T_IOCTL_ENTER: handle_ioctl_enter(a.tid, a.tgid, a.now, a.reason, a.arg); break;
	case T_IOCTL_EXIT: {
		u32 tid = a.tid;
		struct ioctl_pending *p = bpf_map_lookup_elem(&ioctl_pending, &tid);
		if (!p)
			return 1;
		handle_nstate_done(p, a.now, a.ret, (u16)a.arg, a.arg != (u64)-1);
		bpf_map_delete_elem(&ioctl_pending, &tid);
		break;
	}
	case T_PIO: handle_pio(a.tgid, a.reason); break;
	case T_MMIO: handle_mmio(a.tgid, a.reason); break;
	case T_EMULATE: handle_emulate(a.tgid, a.reason); break;
	case T_NESTED_VMEXIT: handle_nested_vmexit(a.tid, a.tgid, a.now, a.isa, a.reason); break;
	case T_NESTED_INJECT: handle_nested_inject(a.tid, a.tgid, a.now, a.isa, a.reason); break;
	case T_NESTED_VMENTER: handle_nested_vmenter(a.tid, a.tgid, a.now); break;
	case T_NESTED_INTR: handle_nested_intr(a.tgid); break;
	case T_VMENTER_FAILED: on_vmenter_failed(a.tgid, ctx->msg); break;
	case T_FIRST_SIGHT: {
		u32 me = bpf_get_current_pid_tgid() >> 32;
		for (u32 i = 0; i < 256 && i < a.reason; i++) {
			bpf_map_delete_elem(&hv_vm_seen, &me);
			vm_first_sight(&hv_vm_seen, &hv_vm_seen_zero, &hv_errors, me);
		}
		break;
	}
	case T_TS_EXIT: handle_exit_ts(task_state(true), a.tgid, a.now, a.vcpu_id, a.isa, a.reason); break;
	case T_TS_ENTRY: {
		struct hv_kvm_thread *t = task_state(false);
		if (t)
			close_exit(&t->exit, a.tgid, a.now, a.vcpu_id);
		break;
	}
	case T_TS_USERSPACE_EXIT: handle_userspace_exit_ts(task_state(true), a.tgid, a.now, a.reason, a.ret); break;
	case T_TS_IOCTL_ENTER:
		if (!kvm_ioctl_cmd(a.reason))
			break;
		handle_ioctl_enter_ts(task_state(true), a.tgid, a.now, a.reason, a.arg);
		break;
	case T_TS_IOCTL_EXIT: {
		struct hv_kvm_thread *t = task_state(false);
		if (!t || !t->ioctl.op)
			return 1;
		handle_nstate_done(&t->ioctl, a.now, a.ret, (u16)a.arg, a.arg != (u64)-1);
		t->ioctl.op = 0;
		break;
	}
	default: return -1;
	}
	return 0;
}

/* ---- cost of the exit/entry pair through BPF_PROG_TEST_RUN with repeat (bench/) ---- */
u64 bench_iter;

SEC("tc")
int bench_exit_entry(struct __sk_buff *skb)
{
	u64 i = bench_iter++;
	u32 tid = 1000 + (i & 63);
	handle_exit(tid, 999, i * 1000, tid & 3, 2, 0x7b);
	handle_entry(tid, 999, i * 1000 + 500, tid & 3);
	return 0;
}

/* The same pair on the task-storage tier (the bench thread's own slot, as a vCPU thread's). */
SEC("tc")
int bench_exit_entry_ts(struct __sk_buff *skb)
{
	u64 i = bench_iter++;
	handle_exit_ts(task_state(true), 999, i * 1000, 1, 2, 0x7b);
	struct hv_kvm_thread *t = task_state(false);
	if (t)
		close_exit(&t->exit, 999, i * 1000 + 500, 1);
	return 0;
}

SEC("tc")
int bench_empty(struct __sk_buff *skb)
{
	return 0;
}
