// SPDX-License-Identifier: GPL-2.0
/* Event source for the ring-buffer benchmark (bench/ringbuf.ts), compiled at bench time.
 * Its `events` and `hv_errors` maps are a running agent's own (bpf_map__reuse_fd), so the
 * records go through the agent's real reader and decoder, and a full ring buffer is counted
 * where the agent counts it (hv_errors[HV_ERR_RINGBUF_FULL]). Each record is a template
 * written by user space (a family's event struct, laid out from its BTF) with a sequence
 * number at `seq_off`. Driven by BPF_PROG_TEST_RUN: `count` records per call. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "hvwatch.h"

char LICENSE[] SEC("license") = "GPL";

#define TMPL_MAX 256

struct tmpl {
	u8 data[TMPL_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* resized to the agent's map before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct tmpl);
} tmpl SEC(".maps");

DEFINE_ERROR_MAP();

struct emit_args {
	u64 count;
	u64 first_seq;
	u32 size;    /* record size, <= TMPL_MAX */
	u32 seq_off; /* where the u64 sequence number goes, <= TMPL_MAX - 8 */
	u64 sent;    /* out: records the ring buffer accepted */
	u64 dropped; /* out: records it refused (also counted in hv_errors) */
};

static long emit_one(u64 i, struct emit_args *a)
{
	u32 k = 0;
	struct tmpl *t = bpf_map_lookup_elem(&tmpl, &k);
	if (!t)
		return 1;
	u32 off = a->seq_off;
	if (off > TMPL_MAX - 8)
		return 1;
	*(u64 *)(t->data + off) = a->first_seq + i;
	u32 size = a->size;
	if (size == 0 || size > TMPL_MAX)
		return 1;
	if (bpf_ringbuf_output(&events, t->data, size, 0)) {
		count_error(&hv_errors, HV_ERR_RINGBUF_FULL);
		a->dropped++;
	} else {
		a->sent++;
	}
	return 0;
}

SEC("syscall")
int emit(struct emit_args *ctx)
{
	struct emit_args a = *ctx; /* bpf_loop's callback context must live on the stack */
	a.sent = 0;
	a.dropped = 0;
	bpf_loop(a.count, emit_one, &a, 0);
	ctx->sent = a.sent;
	ctx->dropped = a.dropped;
	return 0;
}
