// SPDX-License-Identifier: GPL-2.0
/* kvm_irq family (seed 003): interrupt injections per VM and path, the time from a local
 * APIC's acceptance of an interrupt to its injection into the vCPU, irqchip/device teardown
 * steps, and injections that reach a VM after its teardown began.
 *
 * Which VM an injection belongs to. None of the six tracepoints carries the VM (their
 * arguments are GSIs, MSI words, vectors: include/trace/events/kvm.h and
 * arch/x86/kvm/trace.h, v6.18), so each injection is placed by its context:
 *   1. inside KVM_RUN (vCPU context: IPIs, the LAPIC timer, kvm_inj_virq): the vCPU fd's
 *      struct kvm_vcpu (file->private_data), hence its struct kvm and vCPU id. On the
 *      task-storage tier it is found when an injection needs it: the thread's registers say
 *      it is in ioctl(fd, KVM_RUN) (current_ioctl, kvm_ioctl.h), and the fd's resolution is
 *      cached in the thread record, so KVM_RUN's entry and exit cost this family a few
 *      compares. On the hash tier, and on kernels without bpf_task_pt_regs (before 5.15),
 *      it is read at
 *      sys_enter_ioctl, and a vCPU thread already inside KVM_RUN when the probe attached is
 *      known from its next KVM_RUN on;
 *   2. inside KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS or KVM_SIGNAL_MSI on a VM fd (seed 003's
 *      path): the struct kvm behind that fd, read at sys_enter_ioctl;
 *   3. otherwise no VM is known: kernel threads (irqfd work in a kworker, the PIT thread,
 *      vhost before v6.4) count under tgid 0 (vm="unknown"); other tasks (vhost workers
 *      since v6.4 are threads of the VMM) under their tgid.
 * Limit: an injection from hardirq context (an irqfd MSI of a VFIO device without posted
 * interrupts) runs on whatever task was interrupted and is counted as that task's. Telling
 * interrupt context apart needs the per-CPU preempt count, a typed ksym that the verifier
 * resolves through kallsyms, which lacks data symbols without CONFIG_KALLSYMS_ALL (as on
 * the CI hosts), so this object does not depend on it.
 * The `vm` label is the VMM's tgid as in the kvm family; a struct kvm pointer from a VM fd
 * is only a key, never dereferenced.
 *
 * Teardown state is keyed by the struct kvm pointer (LRU) and carries a generation: a new
 * one is drawn at KVM_CREATE_VM (sys_exit_ioctl; the new fd's private_data), at the first
 * teardown step of a VM not seen before, and when a pointer whose VM was destroyed more
 * than STALE_NS ago shows up again. A new VM at a freed address therefore never inherits
 * the old VM's "teardown began" (a reused identifier never inherits its predecessor's state). A thread's
 * KVM_IRQ_LINE context records the generation it saw; an injection whose context no longer
 * matches the VM's current generation is not counted (stale), and an entry whose VM was
 * destroyed more than STALE_NS ago is reaped when next looked up. Both are counted.
 *
 * Teardown hooks are functions: kvm_device_release() (a device fd's last close: for an
 * irqchip device such as the PPC MPIC of seed 003, the irqchip goes away while the VM
 * lives), kvm_free_irq_routing() and kvm_destroy_devices(), both called only from
 * kvm_destroy_vm() (virt/kvm/kvm_main.c, virt/kvm/irqchip.c, v6.18). They need fentry or
 * kprobes; everything is also driven through SEC("syscall") test programs.
 *
 * Every attach point is a thin wrapper around one __always_inline handler on plain values. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"
#include "kvm_ioctl.h"
#include "hook_chain.h"

char LICENSE[] SEC("license") = "GPL";

#define PF_KTHREAD 0x00200000 /* include/linux/sched.h */

/* A VM destroyed longer ago than this is gone: its pointer now names another VM. */
#define STALE_NS 1000000000ULL

enum irq_path { P_SET_IRQ = 0, P_MSI = 1, P_IOAPIC = 2, P_PIC = 3, P_APIC_ACCEPT = 4, P_INJ_VIRQ = 5, P_MAX = 6 };
enum td_kind { TD_DEVICE_RELEASE = 0, TD_DESTROY_DEVICES = 1, TD_FREE_IRQ_ROUTING = 2, TD_MAX = 3 };
EXPORT_BTF_ENUM(irq_path);
EXPORT_BTF_ENUM(td_kind);

/* ---- aggregates read by the agent: one entry per VMM tgid (0: no VM known) ---- */

struct irq_vm_key {
	u32 tgid;
	u32 _pad;
};

/* The per-path fields are indexed by enum irq_path / enum td_kind: keep the order. */
struct irq_vm_stats {
	u64 inj_set_irq;
	u64 inj_msi;
	u64 inj_ioapic;
	u64 inj_pic;
	u64 inj_apic_accept;
	u64 inj_inj_virq;
	u64 after_set_irq;
	u64 after_msi;
	u64 after_ioapic;
	u64 after_pic;
	u64 after_apic_accept;
	u64 after_inj_virq;
	u64 td_device_release;
	u64 td_destroy_devices;
	u64 td_free_irq_routing;
	u64 delivery_slots[HIST_SLOTS]; /* log2 ns from LAPIC acceptance to kvm_inj_virq */
	u64 delivery_sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct irq_vm_key);
	__type(value, struct irq_vm_stats);
} irq_vms SEC(".maps");

/* Things not counted as asked, so they are counted here: index = enum irq_counter. */
enum irq_counter {
	C_REAPED = 0,        /* VM state entries dropped: destroyed VM seen again, or replaced at KVM_CREATE_VM */
	C_STALE_CONTEXT = 1, /* injections whose ioctl context named an older generation */
	C_UNPAIRED = 2,      /* kvm_inj_virq (hard, first try) with no acceptance recorded for its vCPU and vector */
	C_NO_VM = 3,         /* injections with no VM known (kernel thread or interrupt context) */
	C_MAX = 4,
};
EXPORT_BTF_ENUM(irq_counter);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, u32);
	__type(value, u64);
} irq_counters SEC(".maps");

DEFINE_ERROR_MAP();
DEFINE_VM_SEEN_MAP();

/* ---- state ---- */

/* Per struct kvm pointer. */
struct irq_vm_state {
	u64 gen;
	u64 created_ns;   /* KVM_CREATE_VM seen; 0 when first seen later */
	u64 teardown_ns;  /* first teardown step; 0 while none began */
	u64 destroyed_ns; /* kvm_destroy_vm() reached (free_irq_routing / destroy_devices) */
	u32 tgid;         /* the VMM that created it (or that first showed it) */
	u32 kinds;        /* teardown kinds seen, 1 << enum td_kind */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, struct irq_vm_state);
} irq_vm_state SEC(".maps");

/* The generation counter ([0]). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} irq_gen SEC(".maps");

enum ctx_op { CTX_NONE = 0, CTX_VM = 1, CTX_VCPU = 2, CTX_CREATE_VM = 3 };

/* Per thread, from sys_enter_ioctl to sys_exit_ioctl: struct irq_ctx (kvm_ioctl.h). A vCPU
 * thread's entry is rewritten in place at every KVM_RUN, cheaper than an LRU insert. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u32);
	__type(value, struct irq_ctx);
} irq_ctx SEC(".maps");

/* The same per-thread context in task-local storage (5.11+): no key hashed, freed with the
 * thread; the irq part of the record shared with the kvm family (struct hv_kvm_thread).
 * irq_ctx is the fallback tier; every probe of the family takes the same one
 * (Candidate.state in agent/model/family.ts). */
HV_KVM_THREAD_MAP();

/* [0]: bumped at every KVM_CREATE_VCPU. A vCPU fd comes only from KVM_CREATE_VCPU, so an fd
 * number closed and reused for another vCPU (another VM) bumps it in between, and a cached
 * resolution from before is not trusted. Not covered: a vCPU fd dup2()ed or received over a
 * unix socket onto a number a thread already ran on. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} irq_fd_gen SEC(".maps");

/* An accepted interrupt waiting for its injection: per VM, vCPU and vector. The LAPIC keeps
 * one IRR bit per vector, so a second acceptance before the injection is the same pending
 * interrupt and keeps the first time. */
struct deliv_key {
	u64 kvm;
	u32 vcpu_id; /* kvm_apic_accept_irq's "apicid" is vcpu->vcpu_id (arch/x86/kvm/lapic.c) */
	u32 vector;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct deliv_key);
	__type(value, u64);
} irq_deliv SEC(".maps");

static const struct irq_vm_stats zero_stats;

static __always_inline void count(u32 which)
{
	count_error(&irq_counters, which);
}

static __always_inline struct irq_vm_stats *stats_of(u32 tgid)
{
	struct irq_vm_key k = { .tgid = tgid };
	return lookup_or_init_vm_seen(&irq_vms, &k, &zero_stats, k.tgid);
}

static __always_inline u64 next_gen(void)
{
	u32 zero = 0;
	u64 *g = bpf_map_lookup_elem(&irq_gen, &zero);
	return g ? __sync_fetch_and_add(g, 1) + 1 : 0;
}

static __always_inline struct irq_vm_state *new_state(u64 kvm, u32 tgid, u64 created_ns)
{
	struct irq_vm_state s = { .gen = next_gen(), .created_ns = created_ns, .tgid = tgid };
	if (bpf_map_update_elem(&irq_vm_state, &kvm, &s, BPF_ANY)) {
		count_error(&hv_errors, HV_ERR_MAP_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&irq_vm_state, &kvm);
}

/* The state of the VM now at this pointer, or NULL. An entry whose VM was destroyed more
 * than STALE_NS ago describes a dead VM: it is reaped, never trusted. */
static __always_inline struct irq_vm_state *live_state(u64 kvm, u64 now)
{
	struct irq_vm_state *s = bpf_map_lookup_elem(&irq_vm_state, &kvm);
	if (s && s->destroyed_ns && now > s->destroyed_ns + STALE_NS) {
		bpf_map_delete_elem(&irq_vm_state, &kvm);
		count(C_REAPED);
		return 0;
	}
	return s;
}

/* ---- the logic: plain values in, map updates out ---- */

/* kvm: the injection's VM (0: unknown); ctx_gen: the generation its ioctl context saw (0:
 * none, or the context came from the running vCPU). arg0/arg1: vCPU id and vector for
 * kvm_apic_accept_irq and kvm_inj_virq; flags: kvm_inj_virq's soft (1) and reinjected (2). */
static __always_inline void handle_inject(u32 tgid, u64 now, u32 path, u64 kvm, u64 ctx_gen, u32 arg0, u32 arg1, u32 flags)
{
	struct irq_vm_stats *st = stats_of(tgid);
	if (path >= P_MAX)
		return;
	if (st)
		(&st->inj_set_irq)[path]++;
	if (!kvm) {
		if (!tgid)
			count(C_NO_VM);
		return;
	}
	struct irq_vm_state *s = live_state(kvm, now);
	if (s) {
		if (ctx_gen && s->gen != ctx_gen)
			count(C_STALE_CONTEXT);
		else if (s->teardown_ns && now >= s->teardown_ns && st)
			(&st->after_set_irq)[path]++;
	}
	if (path == P_APIC_ACCEPT) {
		struct deliv_key k = { .kvm = kvm, .vcpu_id = arg0, .vector = arg1 & 0xff };
		bpf_map_update_elem(&irq_deliv, &k, &now, BPF_NOEXIST);
	} else if (path == P_INJ_VIRQ && !flags) {
		/* Soft interrupts (INTn) never went through the LAPIC; a reinjection's pending
		 * half was taken by the first attempt. */
		struct deliv_key k = { .kvm = kvm, .vcpu_id = arg0, .vector = arg1 & 0xff };
		u64 *t0 = bpf_map_lookup_elem(&irq_deliv, &k);
		if (!t0) {
			count(C_UNPAIRED);
			return;
		}
		if (now >= *t0 && st)
			hist_add(st->delivery_slots, &st->delivery_sum_ns, now - *t0);
		bpf_map_delete_elem(&irq_deliv, &k);
	}
}

/* A teardown step on this VM. tgid: the current task's, used only for a VM not seen before
 * (teardown may run in a kworker; the VM's own VMM is in its state otherwise). */
static __always_inline void handle_teardown(u32 tgid, u64 now, u64 kvm, u32 kind)
{
	if (!kvm || kind >= TD_MAX)
		return;
	struct irq_vm_state *s = live_state(kvm, now);
	if (!s)
		s = new_state(kvm, tgid, 0);
	if (!s)
		return;
	if (!s->teardown_ns)
		s->teardown_ns = now;
	s->kinds |= 1U << kind;
	if (kind != TD_DEVICE_RELEASE && !s->destroyed_ns)
		s->destroyed_ns = now;
	struct irq_vm_stats *st = stats_of(s->tgid);
	if (st)
		(&st->td_device_release)[kind]++;
}

/* KVM_CREATE_VM returned a fd for this struct kvm: a new VM, whatever was there before. */
static __always_inline void handle_vm_created(u32 tgid, u64 now, u64 kvm)
{
	if (!kvm)
		return;
	if (bpf_map_lookup_elem(&irq_vm_state, &kvm))
		count(C_REAPED);
	new_state(kvm, tgid, now);
}

/* The thread's context slot: task storage (ts) or the irq_ctx hash entry; created when asked. */
static __always_inline struct irq_ctx *ctx_slot(bool ts, u32 tid, bool create)
{
	if (ts) {
		struct hv_kvm_thread *t =
		        bpf_task_storage_get(&hv_shared_kvm_thread, bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
		if (!t && create)
			count_error(&hv_errors, HV_ERR_MAP_FULL);
		return t ? &t->irq : 0;
	}
	struct irq_ctx *c = bpf_map_lookup_elem(&irq_ctx, &tid);
	if (c || !create)
		return c;
	static const struct irq_ctx zero_ctx;
	if (bpf_map_update_elem(&irq_ctx, &tid, &zero_ctx, BPF_ANY)) {
		count_error(&hv_errors, HV_ERR_MAP_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&irq_ctx, &tid);
}

static __always_inline u64 vcpu_fd_gen(void)
{
	u32 zero = 0;
	u64 *g = bpf_map_lookup_elem(&irq_fd_gen, &zero);
	return g ? *g : 0;
}

static __always_inline void bump_vcpu_fd_gen(void)
{
	u32 zero = 0;
	u64 *g = bpf_map_lookup_elem(&irq_fd_gen, &zero);
	if (g)
		__sync_fetch_and_add(g, 1);
}

/* Whether cur holds this thread's resolution of KVM_RUN's fd. */
static __always_inline bool run_cached(const struct irq_ctx *cur, u32 tgid, u32 fd, u64 fd_gen)
{
	return cur->run_kvm && cur->run_fd == fd && cur->tgid == tgid && cur->run_fd_gen == fd_gen;
}

static __always_inline u64 run_cache(struct irq_ctx *cur, u32 fd, u64 fd_gen, u64 kvm, u32 vcpu_id)
{
	cur->run_kvm = kvm;
	cur->run_vcpu_id = vcpu_id;
	cur->run_fd = fd;
	cur->run_fd_gen = fd_gen;
	return kvm;
}

/* Inside KVM_RUN of the cached vCPU: two stores, no map operation and no clock. Its VM
 * carries no generation: while a vCPU fd is in KVM_RUN it holds a reference on its struct
 * kvm (kvm_vm_ioctl_create_vcpu's kvm_get_kvm, dropped in kvm_vcpu_release;
 * virt/kvm/kvm_main.c, v6.18), so that pointer cannot name another VM until the ioctl ends. */
static __always_inline void enter_vcpu(struct irq_ctx *cur, u32 tgid)
{
	cur->op = CTX_VCPU;
	cur->tgid = tgid;
}

/* kvm: the struct kvm behind the ioctl's fd (for KVM_RUN: the vCPU's), vcpu_id for KVM_RUN.
 * cur: the thread's context slot (kept: its KVM_RUN cache fields). */
static __always_inline void handle_ioctl_enter(struct irq_ctx *cur, u32 tgid, u64 now, u32 cmd, u64 kvm, u32 vcpu_id)
{
	if (!cur)
		return;
	if (cmd == KVM_CREATE_VM_IOCTL) {
		cur->op = CTX_CREATE_VM;
		cur->tgid = tgid;
		cur->kvm = 0;
		cur->gen = 0;
		return;
	}
	if (!kvm)
		return;
	if (cmd == KVM_RUN_IOCTL) {
		/* Not through the fd table (the test programs): a cache entry no fd matches. */
		run_cache(cur, (u32)-1, vcpu_fd_gen(), kvm, vcpu_id);
		enter_vcpu(cur, tgid);
		return;
	}
	struct irq_vm_state *s = live_state(kvm, now);
	cur->op = CTX_VM;
	cur->tgid = tgid;
	cur->kvm = kvm;
	cur->gen = s ? s->gen : 0;
}

static __always_inline void handle_ioctl_exit(struct irq_ctx *c, u64 now, s64 ret, u64 new_kvm)
{
	if (!c || c->op == CTX_NONE)
		return;
	if (c->op == CTX_CREATE_VM && ret >= 0)
		handle_vm_created(c->tgid, now, new_kvm);
	c->op = CTX_NONE;
}

struct who {
	u64 kvm; /* the VM, 0 if unknown */
	u64 gen; /* the generation the ioctl context saw */
	u32 vcpu_id;
	bool has_vcpu;
};

/* The VM of this thread's current ioctl (VM-fd injection or KVM_RUN). */
static __always_inline void ctx_vm(const struct irq_ctx *c, u32 tgid, struct who *w)
{
	if (!c || (c->op != CTX_VM && c->op != CTX_VCPU) || c->tgid != tgid)
		return;
	if (c->op == CTX_VCPU) {
		w->kvm = c->run_kvm;
		w->vcpu_id = c->run_vcpu_id;
		w->has_vcpu = true;
	} else {
		w->kvm = c->kvm;
		w->gen = c->gen;
	}
}

/* ---- kernel context: who is injecting ---- */

static __always_inline void vcpu_now(struct irq_ctx *c, u32 tgid, struct who *w);

static __always_inline void on_inject(bool ts, u32 path, u32 arg0, u32 arg1, u32 flags)
{
	u64 id = bpf_get_current_pid_tgid();
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	u32 tgid = (u32)(id >> 32);
	struct who w = {};
	if (BPF_CORE_READ(t, flags) & PF_KTHREAD) {
		tgid = 0;
	} else {
		struct irq_ctx *c = ctx_slot(ts, (u32)id, false);
		ctx_vm(c, tgid, &w);
		if (ts && !w.kvm && have_task_regs())
			vcpu_now(c, tgid, &w);
	}
	/* kvm_inj_virq runs on the vCPU: its id comes from KVM_RUN, not from the arguments. */
	if (path == P_INJ_VIRQ) {
		arg1 = arg0;
		arg0 = w.vcpu_id;
		if (!w.has_vcpu)
			flags |= 4; /* no vCPU known: no pairing */
	}
	handle_inject(tgid, bpf_ktime_get_ns(), path, w.kvm, w.gen, arg0, arg1, flags);
}

/* The private_data of the current task's file at this fd (a struct kvm * for a VM fd). */
static __always_inline u64 fd_private(u64 fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **arr = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]) || !f)
		return 0;
	return (u64)BPF_CORE_READ(f, private_data);
}

/* ---- attach points: injection tracepoints ---- */

/* Raw arguments, v6.18: kvm_set_irq(gsi, level, irq_source_id) (include/trace/events/kvm.h,
 * unchanged since v2.6.30); kvm_msi_set_irq(address, data), kvm_ioapic_set_irq(e, pin,
 * coalesced) (moved from include/trace/events/kvm.h to arch/x86/kvm/trace.h in v6.17, same
 * arguments); kvm_pic_set_irq(chip, pin, elcr, imr, coalesced), kvm_apic_accept_irq(apicid,
 * dm, tm, vec) (arch/x86/kvm/trace.h; tm was __u8 before v5.1, commit 7a223e06b1a4, and older
 * kernels had a fifth `coalesced`: apicid and vec keep their places), kvm_inj_virq(vector, soft, reinjected) (since v5.19; (irq) before).
 * Only kvm_apic_accept_irq's and kvm_inj_virq's arguments are read. */
/* The four whose arguments are not read: one count from either tier. */
/* Each in two tiers of the thread context: the hash map, and task storage (_ts). */
#define INJECT_PROGRAMS(tp, path)                \
	SEC("tp_btf/" #tp)                       \
	int BPF_PROG(btf_##tp)                   \
	{                                        \
		on_inject(false, path, 0, 0, 0); \
		return 0;                        \
	}                                        \
	SEC("tracepoint/kvm/" #tp)               \
	int tp_##tp(void *ctx)                   \
	{                                        \
		on_inject(false, path, 0, 0, 0); \
		return 0;                        \
	}                                        \
	SEC("tp_btf/" #tp)                       \
	int BPF_PROG(btf_##tp##_ts)              \
	{                                        \
		on_inject(true, path, 0, 0, 0);  \
		return 0;                        \
	}                                        \
	SEC("tracepoint/kvm/" #tp)               \
	int tp_##tp##_ts(void *ctx)              \
	{                                        \
		on_inject(true, path, 0, 0, 0);  \
		return 0;                        \
	}

INJECT_PROGRAMS(kvm_set_irq, P_SET_IRQ)
INJECT_PROGRAMS(kvm_msi_set_irq, P_MSI)
INJECT_PROGRAMS(kvm_ioapic_set_irq, P_IOAPIC)
INJECT_PROGRAMS(kvm_pic_set_irq, P_PIC)

#define APIC_ACCEPT_PROGRAMS(suffix, ts)                                                              \
	SEC("tp_btf/kvm_apic_accept_irq")                                                             \
	int BPF_PROG(btf_kvm_apic_accept_irq##suffix, __u32 apicid, __u16 dm, __u16 tm, __u8 vec)     \
	{                                                                                             \
		on_inject(ts, P_APIC_ACCEPT, apicid, vec, 0);                                         \
		return 0;                                                                             \
	}                                                                                             \
	SEC("tracepoint/kvm/kvm_apic_accept_irq")                                                     \
	int tp_kvm_apic_accept_irq##suffix(struct trace_event_raw_kvm_apic_accept_irq *ctx)           \
	{                                                                                             \
		on_inject(ts, P_APIC_ACCEPT, BPF_CORE_READ(ctx, apicid), BPF_CORE_READ(ctx, vec), 0); \
		return 0;                                                                             \
	}

APIC_ACCEPT_PROGRAMS(, false)
APIC_ACCEPT_PROGRAMS(_ts, true)

/* The record before v5.19 had only `irq` (the vector). */
struct trace_event_raw_kvm_inj_virq___old {
	unsigned int irq;
} __attribute__((preserve_access_index));

static __always_inline void tp_inj_virq(bool ts, struct trace_event_raw_kvm_inj_virq *ctx)
{
	u32 vector, flags = 0;
	if (bpf_core_field_exists(ctx->vector)) {
		vector = BPF_CORE_READ(ctx, vector);
		flags = (BPF_CORE_READ(ctx, soft) ? 1 : 0) | (BPF_CORE_READ(ctx, reinjected) ? 2 : 0);
	} else {
		vector = BPF_CORE_READ((struct trace_event_raw_kvm_inj_virq___old *)ctx, irq);
	}
	on_inject(ts, P_INJ_VIRQ, vector, 0, flags);
}

#define INJ_VIRQ_PROGRAMS(suffix, ts)                                                           \
	SEC("tp_btf/kvm_inj_virq")                                                              \
	int BPF_PROG(btf_kvm_inj_virq##suffix, unsigned int vector, bool soft, bool reinjected) \
	{                                                                                       \
		on_inject(ts, P_INJ_VIRQ, vector, 0, (soft ? 1 : 0) | (reinjected ? 2 : 0));    \
		return 0;                                                                       \
	}                                                                                       \
	SEC("tracepoint/kvm/kvm_inj_virq")                                                      \
	int tp_kvm_inj_virq##suffix(struct trace_event_raw_kvm_inj_virq *ctx)                   \
	{                                                                                       \
		tp_inj_virq(ts, ctx);                                                           \
		return 0;                                                                       \
	}

INJ_VIRQ_PROGRAMS(, false)
INJ_VIRQ_PROGRAMS(_ts, true)

/* ---- attach points: the VM behind a VM-fd ioctl, and VM creation ---- */

/* include/uapi/linux/kvm.h (v6.18): _IO(KVMIO, 0x41). */
#define KVM_CREATE_VCPU_IOCTL 0xAE41U

/* The VM and vCPU behind KVM_RUN's fd: from the thread's cache, else from the fd table (and
 * cached). A vCPU fd's private_data is its struct kvm_vcpu (virt/kvm/kvm_main.c, v6.18). */
static __always_inline u64 run_vm(struct irq_ctx *cur, u32 tgid, u64 fd)
{
	u64 fd_gen = vcpu_fd_gen();
	if (run_cached(cur, tgid, fd, fd_gen))
		return cur->run_kvm;
	struct kvm_vcpu *v = (struct kvm_vcpu *)fd_private(fd);
	if (!v)
		return 0;
	return run_cache(cur, fd, fd_gen, (u64)BPF_CORE_READ(v, kvm), BPF_CORE_READ(v, vcpu_id));
}

/* Task-storage tier: the VM and vCPU of the KVM_RUN this thread is inside, if it is; c: the
 * thread's context, NULL when it has none yet (then created, to cache the resolution). */
static __always_inline void vcpu_now(struct irq_ctx *c, u32 tgid, struct who *w)
{
	u64 fd;
	if (current_ioctl(&fd) != KVM_RUN_IOCTL)
		return;
	if (!c)
		c = ctx_slot(true, 0, true);
	if (!c)
		return;
	u64 kvm = run_vm(c, tgid, fd);
	if (!kvm)
		return;
	c->tgid = tgid;
	w->kvm = kvm;
	w->vcpu_id = c->run_vcpu_id;
	w->has_vcpu = true;
}

/* The command is filtered first, so any other ioctl costs a few compares. On the
 * task-storage tier KVM_RUN is one of them: vcpu_now finds its VM when an injection needs it. */
static __always_inline void irq_sys_enter(bool ts, struct sys_enter_ioctl_args *ctx)
{
	u32 cmd = ctx->cmd;
	if (cmd != KVM_RUN_IOCTL && cmd != KVM_IRQ_LINE_IOCTL && cmd != KVM_IRQ_LINE_STATUS_IOCTL && cmd != KVM_SIGNAL_MSI_IOCTL &&
	        cmd != KVM_CREATE_VM_IOCTL && cmd != KVM_CREATE_VCPU_IOCTL)
		return;
	if (cmd == KVM_CREATE_VCPU_IOCTL) {
		bump_vcpu_fd_gen();
		return;
	}
	if (ts && cmd == KVM_RUN_IOCTL && have_task_regs())
		return;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = (u32)(id >> 32);
	struct irq_ctx *cur = ctx_slot(ts, (u32)id, true);
	if (!cur)
		return;
	if (cmd == KVM_RUN_IOCTL) {
		if (run_vm(cur, tgid, ctx->fd))
			enter_vcpu(cur, tgid);
		return;
	}
	u64 kvm = cmd == KVM_CREATE_VM_IOCTL ? 0 : fd_private(ctx->fd);
	handle_ioctl_enter(cur, tgid, bpf_ktime_get_ns(), cmd, kvm, 0);
}

/* Every ioctl of the host ends here: a thread with no context open (on the task-storage
 * tier, KVM_RUN too) leaves after the slot lookup and one load (cheaper than reading the
 * command back from the registers, kvm.bpf.c's tp_sys_exit_ioctl_ts says by how much). */
static __always_inline void irq_sys_exit(bool ts, struct sys_exit_args *ctx)
{
	struct irq_ctx *c = ctx_slot(ts, (u32)bpf_get_current_pid_tgid(), false);
	if (!c || c->op == CTX_NONE)
		return;
	if (c->op != CTX_CREATE_VM) {
		c->op = CTX_NONE; /* KVM_RUN and the VM-fd ioctls: nothing to finish, no clock */
		return;
	}
	handle_ioctl_exit(c, bpf_ktime_get_ns(), ctx->ret, ctx->ret >= 0 ? fd_private(ctx->ret) : 0);
}

/* The kvm family watches these hooks too: the programs are chained (hook_chain.h). */
HV_CHAINED_PROG("tracepoint/syscalls/sys_enter_ioctl", tp_irq_sys_enter_ioctl_ts, struct sys_enter_ioctl_args *, ctx)
{
	irq_sys_enter(true, ctx);
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_exit_ioctl", tp_irq_sys_exit_ioctl_ts, struct sys_exit_args *, ctx)
{
	irq_sys_exit(true, ctx);
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_enter_ioctl", tp_irq_sys_enter_ioctl, struct sys_enter_ioctl_args *, ctx)
{
	irq_sys_enter(false, ctx);
}

HV_CHAINED_PROG("tracepoint/syscalls/sys_exit_ioctl", tp_irq_sys_exit_ioctl, struct sys_exit_args *, ctx)
{
	irq_sys_exit(false, ctx);
}

/* ---- attach points: teardown (fentry, else kprobe) ---- */

static __always_inline u32 cur_tgid(void)
{
	return (u32)(bpf_get_current_pid_tgid() >> 32);
}

/* kvm_device_release(struct inode *, struct file *): filp->private_data is the struct
 * kvm_device, whose ->kvm is the VM (virt/kvm/kvm_main.c, v6.18). */
SEC("fentry/kvm_device_release")
int BPF_PROG(fentry_kvm_device_release, struct inode *inode, struct file *filp)
{
	struct kvm_device *dev = BPF_CORE_READ(filp, private_data);
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)BPF_CORE_READ(dev, kvm), TD_DEVICE_RELEASE);
	return 0;
}

SEC("kprobe/kvm_device_release")
int BPF_KPROBE(kprobe_kvm_device_release, struct inode *inode, struct file *filp)
{
	struct kvm_device *dev = BPF_CORE_READ(filp, private_data);
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)BPF_CORE_READ(dev, kvm), TD_DEVICE_RELEASE);
	return 0;
}

SEC("fentry/kvm_destroy_devices")
int BPF_PROG(fentry_kvm_destroy_devices, struct kvm *kvm)
{
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)kvm, TD_DESTROY_DEVICES);
	return 0;
}

SEC("kprobe/kvm_destroy_devices")
int BPF_KPROBE(kprobe_kvm_destroy_devices, struct kvm *kvm)
{
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)kvm, TD_DESTROY_DEVICES);
	return 0;
}

SEC("fentry/kvm_free_irq_routing")
int BPF_PROG(fentry_kvm_free_irq_routing, struct kvm *kvm)
{
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)kvm, TD_FREE_IRQ_ROUTING);
	return 0;
}

SEC("kprobe/kvm_free_irq_routing")
int BPF_KPROBE(kprobe_kvm_free_irq_routing, struct kvm *kvm)
{
	handle_teardown(cur_tgid(), bpf_ktime_get_ns(), (u64)kvm, TD_FREE_IRQ_ROUTING);
	return 0;
}

/* ---- BPF_PROG_TEST_RUN entry points: the same handlers, synthetic arguments ---- */

enum irq_test_op {
	T_INJECT = 0,      /* path, tid, tgid, now, arg0, arg1, flags; kvm/gen/vcpu from the thread's ioctl context */
	T_TEARDOWN = 1,    /* kind (in path), tgid, now, kvm */
	T_IOCTL_ENTER = 2, /* tid, tgid, now, cmd (in arg0), kvm, vCPU id (in arg1) */
	T_IOCTL_EXIT = 3,  /* tid, now, ret (in arg0, signed), kvm of the new fd */
	T_RUN_VM = 4,      /* KVM_RUN on fd `path` whose fd table holds (kvm, vCPU arg1): 1 if the cache answered */
	T_CREATE_VCPU = 5, /* a KVM_CREATE_VCPU somewhere */
};

struct irq_test_args {
	u32 op;
	u32 path;
	u32 tid;
	u32 tgid;
	u64 now;
	u64 kvm;
	u32 arg0;
	u32 arg1;
	u32 flags;
	u32 ts; /* 1: the task-storage tier (the calling thread's slot; tid unused), 0: the hash tier */
};

SEC("syscall")
int test_kvm_irq(struct irq_test_args *ctx)
{
	struct irq_test_args a = *ctx;
	bool ts = a.ts;
	switch (a.op) {
	case T_INJECT: {
		/* As on_inject does, minus the task lookup: tgid 0 is a kernel thread. */
		struct who w = {};
		u32 arg0 = a.arg0, arg1 = a.arg1, flags = a.flags;
		if (a.tgid)
			ctx_vm(ctx_slot(ts, a.tid, false), a.tgid, &w);
		if (a.path == P_INJ_VIRQ) {
			arg1 = arg0;
			arg0 = w.vcpu_id;
			if (!w.has_vcpu)
				flags |= 4;
		}
		handle_inject(a.tgid, a.now, a.path, w.kvm, w.gen, arg0, arg1, flags);
		break;
	}
	case T_TEARDOWN: handle_teardown(a.tgid, a.now, a.kvm, a.path); break;
	case T_IOCTL_ENTER: handle_ioctl_enter(ctx_slot(ts, a.tid, true), a.tgid, a.now, a.arg0, a.kvm, a.arg1); break;
	case T_IOCTL_EXIT: {
		struct irq_ctx *c = ctx_slot(ts, a.tid, false);
		if (!c || c->op == CTX_NONE)
			return 1;
		handle_ioctl_exit(c, a.now, (s32)a.arg0, a.kvm);
		break;
	}
	case T_RUN_VM: {
		/* irq_sys_enter's KVM_RUN path with a synthetic fd table. */
		struct irq_ctx *cur = ctx_slot(ts, a.tid, true);
		if (!cur)
			return -1;
		u64 fd_gen = vcpu_fd_gen();
		bool hit = run_cached(cur, a.tgid, a.path, fd_gen);
		if (!hit)
			run_cache(cur, a.path, fd_gen, a.kvm, a.arg1);
		enter_vcpu(cur, a.tgid);
		return hit;
	}
	case T_CREATE_VCPU: bump_vcpu_fd_gen(); break;
	default: return -1;
	}
	return 0;
}
