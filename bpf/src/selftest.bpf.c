// SPDX-License-Identifier: GPL-2.0
/* Programs that exist only to test the TypeScript binding (test/libbpf.test.ts) against
 * the real kernel: ring-buffer delivery and drops, per-CPU folding, a program the
 * verifier must reject. The agent never loads this object. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "hvwatch.h"

char LICENSE[] SEC("license") = "GPL";

struct selftest_event {
	u64 seq;
	u32 cpu;
	u32 magic;
	char tag[8];
};

EXPORT_BTF_TYPE(struct selftest_event, selftest_event);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096 * 4); /* small on purpose: the drop test overflows it */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, u32);
	__type(value, u64);
} counters SEC(".maps");

DEFINE_ERROR_MAP();

struct emit_args {
	u64 count;
	u64 first_seq;
};

static long emit_one(u64 i, struct emit_args *a)
{
	struct selftest_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_error(&hv_errors, HV_ERR_RINGBUF_FULL);
		return 0;
	}
	e->seq = a->first_seq + i;
	e->cpu = bpf_get_smp_processor_id();
	e->magic = 0x68767774; /* "hvwt" */
	__builtin_memcpy(e->tag, "selftes", 8);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("syscall")
int selftest_emit(struct emit_args *ctx)
{
	struct emit_args a = *ctx; /* bpf_loop's callback context must live on the stack */
	bpf_loop(a.count, emit_one, &a, 0);
	return 0;
}

SEC("syscall")
int selftest_count(void *ctx)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&counters, &k);
	if (v)
		(*v)++;
	return 7;
}

/* Must fail verification: reads past the end of a map value. Autoload is off in tests
 * except the one that checks the verifier log reaches the caller. */
SEC("syscall")
int selftest_bad(void *ctx)
{
	u32 k = 0;
	u64 *v = bpf_map_lookup_elem(&counters, &k);
	if (!v)
		return 0;
	return *(v + 64);
}
