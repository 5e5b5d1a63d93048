/* The KVM ioctls the kvm and kvm_irq families watch from the syscall tracepoints, and
 * those tracepoints' records. Shared so the two objects cannot disagree on a number. */
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

#endif
