/* The KVM ioctls the kvm and kvm_irq families watch from the syscall tracepoints, those
 * tracepoints' records, and the one per-thread record both families keep in task storage.
 * Shared so the two objects cannot disagree on a number or a layout. */
#ifndef HVWATCH_KVM_IOCTL_H
#define HVWATCH_KVM_IOCTL_H

/* include/uapi/linux/kvm.h (v6.18): _IO(KVMIO, 1), _IO(KVMIO, 0x80), _IOW(KVMIO, 0x61,
 * struct kvm_irq_level), _IOWR(KVMIO, 0x67, struct kvm_irq_level), _IOW(KVMIO, 0xa5,
 * struct kvm_msi), _IOWR(KVMIO, 0xbe, struct kvm_nested_state), _IOW(KVMIO, 0xbf,
 * struct kvm_nested_state). test/helpers/kvm-irq-guest.c checks the irq ones against the
 * system headers. */
#define KVM_CREATE_VM_IOCTL 0xAE01U
#define KVM_RUN_IOCTL 0xAE80U
#define KVM_IRQ_LINE_IOCTL 0x4008AE61U
#define KVM_IRQ_LINE_STATUS_IOCTL 0xC008AE67U
#define KVM_SIGNAL_MSI_IOCTL 0x4020AEA5U
#define KVM_GET_NESTED_STATE_IOCTL 0xC080AEBEU
#define KVM_SET_NESTED_STATE_IOCTL 0x4080AEBFU

/* Records of syscalls/sys_enter_ioctl and sys_exit_ioctl
 * (/sys/kernel/tracing/events/syscalls/sys_enter_ioctl/format, stable since v4.x). */
struct sys_enter_ioctl_args {
	u64 _common;
	s32 nr;
	u32 _pad;
	u64 fd;
	u64 cmd;
	u64 arg;
};

struct sys_exit_args {
	u64 _common;
	s32 nr;
	u32 _pad;
	s64 ret;
};

/* The ioctl the current thread is inside, from its user registers (bpf_task_pt_regs, v5.15+):
 * a syscall's number stays in orig_ax and its arguments in di, si (x86-64 syscall ABI,
 * arch/x86/entry/entry_64.S); __NR_ioctl is 16 (arch/x86/entry/syscalls/syscall_64.tbl; a
 * 32-bit VMM's ioctl is another number, so it is not matched). So an injection can tell that
 * its thread is inside KVM_RUN without a program on KVM_RUN's entry and exit. Returns the
 * command, 0 when the thread is not in ioctl(). Only where have_task_regs(): a 5.11-5.14
 * kernel has task storage but not this helper, and there the callers do what they did before
 * (a CO-RE constant, so the verifier never sees the call it lacks). */
#define NR_IOCTL_X86_64 16

static __always_inline bool have_task_regs(void)
{
	return bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs);
}

static __always_inline u32 current_ioctl(u64 *fd)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (regs->orig_ax != NR_IOCTL_X86_64)
		return 0;
	*fd = regs->di;
	return (u32)regs->si;
}

/* ---- per-thread state of a vCPU thread ---- */

/* The kvm family's pending halves (also the values of its hash-tier maps). */
struct exit_pending {
	u64 ns; /* 0 once consumed by an entry */
	u32 tgid;
	u32 vcpu_id;
	u32 isa;
	u32 reason;
};

struct user_pending {
	u64 ns;
	u32 tgid;
	u32 reason;
};

struct ioctl_pending {
	u64 ns;
	u64 arg; /* user pointer to struct kvm_nested_state */
	u32 tgid;
	u32 op; /* 0: no nested-state ioctl in flight */
};

/* The kvm_irq family's ioctl context (also the value of its hash-tier irq_ctx), from
 * sys_enter_ioctl to sys_exit_ioctl (then op = CTX_NONE; the entry is rewritten in place). */
struct irq_ctx {
	u64 kvm; /* CTX_VM: the VM fd's struct kvm */
	u64 gen; /* CTX_VM: the VM's generation at ioctl entry; 0 if it had none yet */
	u32 tgid;
	u32 op; /* enum ctx_op (kvm_irq.bpf.c) */
	/* The VM and vCPU behind the thread's KVM_RUN fd, resolved at its first KVM_RUN and
	 * reused while the fd, the tgid and the vCPU-fd generation (irq_fd_gen) match: resolving
	 * walks the fd table. CTX_VCPU reads its VM and vCPU from here. */
	u64 run_kvm; /* 0: nothing cached */
	u64 run_fd_gen;
	u32 run_fd;
	u32 run_vcpu_id;
};

/* One task-storage record per thread for the whole exit path, whichever of the two families
 * runs: an exit to the VMM and its KVM_RUN touch one allocation (two cache lines) instead of
 * one per family. Each family's object declares the map (HV_KVM_THREAD_MAP); the loader
 * gives the second object the first one's map (maps named hv_shared_*, agent/loader.ts), so
 * each family still loads and runs alone. The fields hot on every exit to the VMM come first. */
struct hv_kvm_thread {
	struct user_pending user;   /* kvm: the pending return to userspace */
	struct ioctl_pending ioctl; /* kvm: the nested-state ioctl in flight */
	struct irq_ctx irq;         /* kvm_irq: the ioctl context and the KVM_RUN cache */
	struct exit_pending exit;   /* kvm: the pending VM-exit */
};

#define HV_KVM_THREAD_MAP()                              \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_TASK_STORAGE); \
		__uint(map_flags, BPF_F_NO_PREALLOC);    \
		__type(key, int);                        \
		__type(value, struct hv_kvm_thread);     \
	} hv_shared_kvm_thread SEC(".maps")

#endif
