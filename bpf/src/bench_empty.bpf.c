// SPDX-License-Identifier: GPL-2.0
/* Empty programs on the memcg and KVM hooks: the floor that bench/kernel-cost.ts compares each
 * hvwatch program against (same hook, attached at the same time, same run-time accounting).
 * Not loaded by the agent. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/mod_memcg_lruvec_state")
int BPF_PROG(empty_btf_lruvec_state)
{
	return 0;
}

SEC("tracepoint/memcg/mod_memcg_lruvec_state")
int empty_tp_lruvec_state(void *ctx)
{
	return 0;
}

SEC("tp_btf/count_memcg_events")
int BPF_PROG(empty_btf_memcg_events)
{
	return 0;
}

SEC("tracepoint/memcg/count_memcg_events")
int empty_tp_memcg_events(void *ctx)
{
	return 0;
}

SEC("tp_btf/folio_wait_writeback")
int BPF_PROG(empty_btf_wait_writeback)
{
	return 0;
}

SEC("tracepoint/writeback/folio_wait_writeback")
int empty_tp_wait_writeback(void *ctx)
{
	return 0;
}

/* The KVM hooks that fire on our hosts (a /dev/kvm guest doing port I/O): bench/kvm.ts. */
SEC("tp_btf/kvm_pio")
int BPF_PROG(empty_btf_kvm_pio)
{
	return 0;
}

SEC("tp_btf/kvm_userspace_exit")
int BPF_PROG(empty_btf_kvm_userspace_exit)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_ioctl")
int empty_tp_sys_enter_ioctl(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ioctl")
int empty_tp_sys_exit_ioctl(void *ctx)
{
	return 0;
}
