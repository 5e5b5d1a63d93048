// SPDX-License-Identifier: GPL-2.0
/* kvmi family (seed 001): VM introspection (KVMI) events and commands, on kernels built from
 * the KVMI series (v7, Feb 2020 .. v12, Oct 2021; never merged upstream). Nothing here
 * attaches on other kernels: the agent checks BTF and kallsyms first (families/kvmi/family.ts).
 *
 * Events. A vCPU thread sends an event and waits, paused, for the tool's reply inside one
 * call: kvmi_send_vcpu_event() (v10..v12) / kvmi_send_event() (v7..v9), both
 * (struct kvm_vcpu *vcpu, u32 ev_id, void *ev, size_t ev_size, void *rpl, size_t rpl_size,
 * u32/int *action) returning 0 when a valid reply came back (virt/kvm/introspection/
 * kvmi_msg.c). Entry = send, return = reply (or none), on the same thread. The per-event
 * wrappers kvmi_msg_send_vcpu_{pause,hypercall,bp,pf,...} all go through it.
 * The pending send is keyed by the vCPU pointer in an LRU map and carries its start time and
 * thread: a return that finds no matching start (attached mid-wait, entry evicted, pointer
 * reused by another vCPU) records no latency and is counted; a send that finds the previous
 * send of that vCPU still open replaces it and counts it as stale (seed 004's lesson).
 *
 * A send that returns without a reply counts as unreplied: that is what happens to every
 * event still waiting when the tool unhooks (KVMI_EVENT_UNHOOK, kvmi_msg_send_unhook(), then
 * the tool closes the socket and the kernel aborts the waits with reply.error = -EINTR), or
 * when the connection fails. A reply the tool still sends after the unhook notice is a reply.
 *
 * Commands. The tool's commands are answered through kvmi_msg_reply(kvmi, msg, err, rpl,
 * size) (static, both VM and vCPU commands) or its two callers kvmi_msg_vm_reply(kvmi, ...)
 * and kvmi_msg_vcpu_reply(job, ...): msg->id is the command, err the KVM error code
 * (0 or -KVM_E*). Latency, where the dispatch functions allow it: from
 * kvmi_is_command_allowed(kvmi, id) (v10..v12, the receiving thread right after reading a
 * command) or the vCPU job kvmi_job_vcpu_msg (v10..v12) / kvmi_job_vcpu_cmd (v7..v9) to the
 * reply on the same thread.
 *
 * Every attach point is a thin wrapper around one __always_inline handler on plain values;
 * the SEC("syscall") program test_kvmi drives the same handlers (test/kvmi.test.ts). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "hvwatch.h"

char LICENSE[] SEC("license") = "GPL";

/* ---- KVMI kernel types (not in vmlinux.h: no upstream kernel has them) ----
 * Minimal CO-RE flavours: libbpf matches them to the kernel's own types by the name before
 * "___" and relocates each field read against that kernel's BTF. */

/* include/linux/kvmi_host.h (v7..v12): the event the vCPU waits on. The reply handler
 * (handle_event_reply / handle_vcpu_event_reply in kvmi_msg.c) stores the tool's action here
 * before waking the vCPU; kvmi_send_*event() then copies it to *action. Its width is read
 * from the kernel's BTF (int in v7; the wire field is a u8). */
struct kvmi_vcpu_reply___kvmi {
	int error;
	int action;
} __attribute__((preserve_access_index));

/* include/linux/kvmi_host.h: VCPUI(vcpu) = vcpu->kvmi. */
struct kvm_vcpu_introspection___kvmi {
	struct kvmi_vcpu_reply___kvmi reply;
} __attribute__((preserve_access_index));

/* include/linux/kvm_host.h with the series applied: struct kvm_vcpu gains `kvmi`. */
struct kvm_vcpu___kvmi {
	struct kvm_vcpu_introspection___kvmi *kvmi;
} __attribute__((preserve_access_index));

/* include/linux/kvmi_host.h: KVMI(kvm) = kvm->kvmi, and kvmi->kvm back. */
struct kvm_introspection___kvmi {
	struct kvm *kvm;
} __attribute__((preserve_access_index));

/* The vCPU command job: struct kvmi_vcpu_cmd_job (v7..v9, kvmi_msg.c) and
 * struct kvmi_vcpu_msg_job (v10..v12, kvmi_int.h) are both { msg; vcpu; } with msg pointing
 * at the received message, which starts with the wire header struct kvmi_msg_hdr
 * { __u16 id; __u16 size; __u32 seq; } (include/uapi/linux/kvmi.h, a fixed wire format).
 * Two names for one layout, so the job's first pointer and the header's first u16 are read
 * at their fixed offsets. */
#define JOB_MSG_OFFSET 0
#define MSG_HDR_ID_OFFSET 0

/* ---- aggregates read by the agent ---- */

struct ev_key {
	u32 tgid;
	u32 event; /* event id as sent; the agent names it per KVMI ABI (families/kvmi/ids.ts) */
};

struct ev_stats {
	u64 sent;
	u64 unreplied;               /* returned without a reply (unhook, connection closed) */
	u64 reply_slots[HIST_SLOTS]; /* log2 ns from send to reply: the vCPU's paused time */
	u64 reply_sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct ev_key);
	__type(value, struct ev_stats);
} kvmi_events SEC(".maps");

struct reply_key {
	u32 tgid;
	u32 event;
	u32 action; /* KVMI_EVENT_ACTION_* (0 continue, 1 retry, 2 crash) or ACTION_UNREADABLE */
	u32 _pad;
};

#define ACTION_UNREADABLE 0xffffffffU

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct reply_key);
	__type(value, u64);
} kvmi_replies SEC(".maps");

struct vm_key {
	u32 tgid;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vm_key);
	__type(value, u64);
} kvmi_unhooks SEC(".maps");

struct cmd_key {
	u32 tgid;
	u32 command; /* msg->id */
	s32 result;  /* 0 or -KVM_E* as passed to the reply */
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct cmd_key);
	__type(value, u64);
} kvmi_commands SEC(".maps");

/* Latency per command, whatever its result: its own key, since the histogram is labelled
 * by VM and command only. */
struct cmd_time_key {
	u32 tgid;
	u32 command;
};

struct cmd_time {
	u64 slots[HIST_SLOTS]; /* log2 ns from dispatch to reply, when the dispatch was seen */
	u64 sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 10240);
	__type(key, struct cmd_time_key);
	__type(value, struct cmd_time);
} kvmi_command_time SEC(".maps");

/* Pairings that could not be made: index = enum unpaired. */
enum unpaired {
	UNPAIRED_EVENT_STALE = 0,    /* a vCPU's open send replaced by its next send */
	UNPAIRED_EVENT_NO_START = 1, /* a return with no matching send */
	UNPAIRED_COMMAND = 2,        /* a reply whose thread's dispatch was for another command */
	UNPAIRED_MAX = 4,
};
EXPORT_BTF_ENUM(unpaired);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNPAIRED_MAX);
	__type(key, u32);
	__type(value, u64);
} kvmi_unpaired SEC(".maps");

DEFINE_ERROR_MAP();
DEFINE_VM_SEEN_MAP();

/* ---- pending halves ---- */

struct ev_pending {
	u64 start_ns; /* 0 once the return consumed it */
	u32 tid;      /* the vCPU thread that sent it: only its own return pairs */
	u32 tgid;
	u32 event;
	u32 _pad;
};

/* keyed by the vCPU pointer */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct ev_pending);
} ev_pending SEC(".maps");

/* thread -> the vCPU it sent from, for returns that carry no arguments (kretprobe) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u64);
} ev_thread SEC(".maps");

#define CMD_ANY 0xffffffffU

struct cmd_pending {
	u64 ns; /* 0 once a reply consumed it */
	u32 id; /* command id, or CMD_ANY when the dispatch hook does not see it */
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct cmd_pending);
} cmd_pending SEC(".maps");

static const struct ev_stats zero_ev;
static const struct cmd_time zero_cmd_time;
static const u64 zero_u64;

static __always_inline void count_unpaired(u32 which)
{
	count_error(&kvmi_unpaired, which);
}

/* ---- the logic: plain values in, map updates out ---- */

static __always_inline void handle_event_send(u64 vcpu, u32 tid, u32 tgid, u64 now, u32 event)
{
	struct ev_key k = { .tgid = tgid, .event = event };
	struct ev_stats *s = lookup_or_init_vm_seen(&kvmi_events, &k, &zero_ev, k.tgid);
	if (s)
		s->sent++;
	struct ev_pending n = { .start_ns = now, .tid = tid, .tgid = tgid, .event = event };
	struct ev_pending *p = bpf_map_lookup_elem(&ev_pending, &vcpu);
	if (p) {
		if (p->start_ns)
			count_unpaired(UNPAIRED_EVENT_STALE);
		*p = n;
	} else if (bpf_map_update_elem(&ev_pending, &vcpu, &n, BPF_ANY)) {
		count_error(&hv_errors, HV_ERR_MAP_FULL);
	}
	if (bpf_map_update_elem(&ev_thread, &tid, &vcpu, BPF_ANY))
		count_error(&hv_errors, HV_ERR_MAP_FULL);
}

/* err: the send's return value, 0 when a valid reply came back. */
static __always_inline void handle_event_done(u64 vcpu, u32 tid, u64 now, s64 err, u32 action)
{
	struct ev_pending *p = bpf_map_lookup_elem(&ev_pending, &vcpu);
	if (!p || !p->start_ns || p->tid != tid || now < p->start_ns) {
		count_unpaired(UNPAIRED_EVENT_NO_START);
		return;
	}
	struct ev_key k = { .tgid = p->tgid, .event = p->event };
	struct ev_stats *s = lookup_or_init_vm_seen(&kvmi_events, &k, &zero_ev, k.tgid);
	if (s) {
		if (err == 0)
			hist_add(s->reply_slots, &s->reply_sum_ns, now - p->start_ns);
		else
			s->unreplied++;
	}
	if (err == 0) {
		struct reply_key rk = { .tgid = p->tgid, .event = p->event, .action = action };
		u64 *c = lookup_or_init_vm_seen(&kvmi_replies, &rk, &zero_u64, rk.tgid);
		if (c)
			(*c)++;
	}
	p->start_ns = 0;
}

/* A return without arguments (kretprobe): the thread's last send names the vCPU. */
static __always_inline u64 event_vcpu_of(u32 tid)
{
	u64 *v = bpf_map_lookup_elem(&ev_thread, &tid);
	return v ? *v : 0;
}

static __always_inline void handle_unhook(u32 tgid)
{
	struct vm_key k = { .tgid = tgid };
	u64 *c = lookup_or_init_vm_seen(&kvmi_unhooks, &k, &zero_u64, k.tgid);
	if (c)
		(*c)++;
}

static __always_inline void handle_cmd_start(u32 tid, u64 now, u32 id)
{
	struct cmd_pending n = { .ns = now, .id = id };
	struct cmd_pending *p = bpf_map_lookup_elem(&cmd_pending, &tid);
	if (p)
		*p = n; /* a vCPU command's receipt on the receiving thread is replied elsewhere: overwrite */
	else if (bpf_map_update_elem(&cmd_pending, &tid, &n, BPF_ANY))
		count_error(&hv_errors, HV_ERR_MAP_FULL);
}

static __always_inline void handle_cmd_reply(u32 tid, u32 tgid, u64 now, u32 id, s32 err)
{
	struct cmd_key k = { .tgid = tgid, .command = id, .result = err };
	u64 *c = lookup_or_init_vm_seen(&kvmi_commands, &k, &zero_u64, k.tgid);
	if (c)
		(*c)++;
	struct cmd_pending *p = bpf_map_lookup_elem(&cmd_pending, &tid);
	if (!p || !p->ns)
		return; /* no dispatch hook attached, or nothing dispatched on this thread */
	if ((p->id == id || p->id == CMD_ANY) && now >= p->ns) {
		struct cmd_time_key tk = { .tgid = tgid, .command = id };
		struct cmd_time *t = lookup_or_init_vm_seen(&kvmi_command_time, &tk, &zero_cmd_time, tk.tgid);
		if (t)
			hist_add(t->slots, &t->sum_ns, now - p->ns);
	} else {
		count_unpaired(UNPAIRED_COMMAND);
	}
	p->ns = 0;
}

/* ---- reading the kernel's KVMI state (attach points only) ---- */

#define CUR_IDS(id) (u32)(id), (u32)((id) >> 32)

static __always_inline u32 reply_action(void *vcpu)
{
	struct kvm_vcpu___kvmi *v = vcpu;
	struct kvm_vcpu_introspection___kvmi *vi = BPF_CORE_READ(v, kvmi);
	u32 action = 0;
	if (!vi)
		return ACTION_UNREADABLE;
	if (bpf_core_read(&action, bpf_core_field_size(vi->reply.action), &vi->reply.action))
		return ACTION_UNREADABLE;
	return action;
}

/* The VMM behind a struct kvm: kvm->userspace_pid, the pid of the thread that created the VM
 * (virt/kvm/kvm_main.c, kvm_dev_ioctl_create_vm). VM commands are answered on KVMI's
 * receiving kernel thread, whose own tgid is not the VM's. */
static __always_inline u32 kvm_tgid(struct kvm *kvm)
{
	u32 pid = 0;
	if (kvm && bpf_core_field_exists(kvm->userspace_pid))
		pid = BPF_CORE_READ(kvm, userspace_pid);
	return pid ? pid : (u32)(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline u32 kvmi_tgid(void *kvmi)
{
	struct kvm_introspection___kvmi *k = kvmi;
	return kvm_tgid(kvmi ? BPF_CORE_READ(k, kvm) : 0);
}

static __always_inline u32 msg_id(const void *msg)
{
	u16 id = 0;
	bpf_probe_read_kernel(&id, sizeof(id), msg + MSG_HDR_ID_OFFSET);
	return id;
}

static __always_inline u32 job_cmd_id(const void *job)
{
	const void *msg = 0;
	if (bpf_probe_read_kernel(&msg, sizeof(msg), job + JOB_MSG_OFFSET) || !msg)
		return CMD_ANY;
	return msg_id(msg);
}

static __always_inline void on_send(void *vcpu, u32 ev_id)
{
	u64 id = bpf_get_current_pid_tgid();
	handle_event_send((u64)vcpu, CUR_IDS(id), bpf_ktime_get_ns(), ev_id);
}

static __always_inline void on_send_return(void *vcpu, s64 ret)
{
	u32 action = ret == 0 ? reply_action(vcpu) : 0;
	handle_event_done((u64)vcpu, (u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), ret, action);
}

/* ---- attach points ---- */

/* Events: fentry/fexit need the trampoline to take a 7-argument function (x86 only since
 * v6.5); on older KVMI kernels these fail to load and the kprobe tier is used. The same
 * programs serve kvmi_send_event (v7..v9), retargeted by the loader. */
SEC("fentry/kvmi_send_vcpu_event")
int BPF_PROG(fentry_kvmi_send, struct kvm_vcpu *vcpu, u32 ev_id)
{
	on_send(vcpu, ev_id);
	return 0;
}

SEC("fexit/kvmi_send_vcpu_event")
int BPF_PROG(fexit_kvmi_send, struct kvm_vcpu *vcpu, u32 ev_id, void *ev, size_t ev_size, void *rpl, size_t rpl_size, u32 *action, int ret)
{
	on_send_return(vcpu, ret);
	return 0;
}

SEC("kprobe/kvmi_send_vcpu_event")
int BPF_KPROBE(kprobe_kvmi_send, void *vcpu, u32 ev_id)
{
	on_send(vcpu, ev_id);
	return 0;
}

SEC("kretprobe/kvmi_send_vcpu_event")
int BPF_KRETPROBE(kretprobe_kvmi_send, int ret)
{
	u64 vcpu = event_vcpu_of((u32)bpf_get_current_pid_tgid());
	if (!vcpu) {
		count_unpaired(UNPAIRED_EVENT_NO_START);
		return 0;
	}
	on_send_return((void *)vcpu, ret);
	return 0;
}

/* Unhook: kvmi_msg_send_unhook(struct kvm_introspection *kvmi), sent on the ioctl thread of
 * KVM_INTROSPECTION_PREUNHOOK (kvmi.c, kvmi_ioctl_preunhook), v7..v12. */
SEC("fentry/kvmi_msg_send_unhook")
int BPF_PROG(fentry_kvmi_unhook, void *kvmi)
{
	handle_unhook(kvmi_tgid(kvmi));
	return 0;
}

SEC("kprobe/kvmi_msg_send_unhook")
int BPF_KPROBE(kprobe_kvmi_unhook, void *kvmi)
{
	handle_unhook(kvmi_tgid(kvmi));
	return 0;
}

/* Command replies: (kvmi, msg, err, rpl, rpl_size) for kvmi_msg_reply and kvmi_msg_vm_reply,
 * (job, msg, err, ...) for kvmi_msg_vcpu_reply, which runs on the vCPU thread. */
static __always_inline void on_reply(u32 tgid, const void *msg, int err)
{
	handle_cmd_reply((u32)bpf_get_current_pid_tgid(), tgid, bpf_ktime_get_ns(), msg_id(msg), err);
}

SEC("fentry/kvmi_msg_reply")
int BPF_PROG(fentry_kvmi_reply, void *kvmi, const void *msg, int err)
{
	on_reply(kvmi_tgid(kvmi), msg, err);
	return 0;
}

SEC("fentry/kvmi_msg_vcpu_reply")
int BPF_PROG(fentry_kvmi_vcpu_reply, const void *job, const void *msg, int err)
{
	on_reply((u32)(bpf_get_current_pid_tgid() >> 32), msg, err);
	return 0;
}

SEC("kprobe/kvmi_msg_reply")
int BPF_KPROBE(kprobe_kvmi_reply, void *kvmi, const void *msg, int err)
{
	on_reply(kvmi_tgid(kvmi), msg, err);
	return 0;
}

SEC("kprobe/kvmi_msg_vcpu_reply")
int BPF_KPROBE(kprobe_kvmi_vcpu_reply, const void *job, const void *msg, int err)
{
	on_reply((u32)(bpf_get_current_pid_tgid() >> 32), msg, err);
	return 0;
}

/* Command dispatch (latency starts). */
SEC("fentry/kvmi_is_command_allowed")
int BPF_PROG(fentry_kvmi_cmd_received, void *kvmi, u16 id)
{
	handle_cmd_start((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), id);
	return 0;
}

SEC("fentry/kvmi_job_vcpu_msg")
int BPF_PROG(fentry_kvmi_cmd_job, struct kvm_vcpu *vcpu, void *job)
{
	handle_cmd_start((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), job_cmd_id(job));
	return 0;
}

SEC("kprobe/kvmi_is_command_allowed")
int BPF_KPROBE(kprobe_kvmi_cmd_received, void *kvmi, u16 id)
{
	handle_cmd_start((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), id);
	return 0;
}

SEC("kprobe/kvmi_job_vcpu_msg")
int BPF_KPROBE(kprobe_kvmi_cmd_job, void *vcpu, void *job)
{
	handle_cmd_start((u32)bpf_get_current_pid_tgid(), bpf_ktime_get_ns(), job_cmd_id(job));
	return 0;
}

/* ---- BPF_PROG_TEST_RUN entry point: the same handlers, synthetic arguments ---- */

enum kvmi_test_op {
	T_EVENT_SEND = 0,        /* vcpu, tid, tgid, now, id = event */
	T_EVENT_DONE = 1,        /* vcpu, tid, now, ret, action (fexit: the vCPU is an argument) */
	T_EVENT_DONE_THREAD = 2, /* tid, now, ret, action (kretprobe: the vCPU from the thread) */
	T_UNHOOK = 3,            /* tgid */
	T_CMD_START = 4,         /* tid, now, id (CMD_ANY: a job whose id was unreadable) */
	T_CMD_REPLY = 5,         /* tid, tgid, now, id, ret = KVM error code */
};

struct kvmi_test_args {
	u32 op;
	u32 tid;
	u32 tgid;
	u32 id;
	u64 now;
	u64 vcpu;
	s64 ret;
	u32 action;
	u32 _pad;
};

SEC("syscall")
int test_kvmi(struct kvmi_test_args *ctx)
{
	struct kvmi_test_args a = *ctx;
	switch (a.op) {
	case T_EVENT_SEND: handle_event_send(a.vcpu, a.tid, a.tgid, a.now, a.id); break;
	case T_EVENT_DONE: handle_event_done(a.vcpu, a.tid, a.now, a.ret, a.action); break;
	case T_EVENT_DONE_THREAD: {
		u64 vcpu = event_vcpu_of(a.tid);
		if (!vcpu) {
			count_unpaired(UNPAIRED_EVENT_NO_START);
			return 1;
		}
		handle_event_done(vcpu, a.tid, a.now, a.ret, a.action);
		break;
	}
	case T_UNHOOK: handle_unhook(a.tgid); break;
	case T_CMD_START: handle_cmd_start(a.tid, a.now, a.id); break;
	case T_CMD_REPLY: handle_cmd_reply(a.tid, a.tgid, a.now, a.id, (s32)a.ret); break;
	default: return -1;
	}
	return 0;
}
