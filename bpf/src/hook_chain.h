/* One attached program per hook, however many families watch it (agent/hook-chain.ts).
 *
 * A program declared with HV_CHAINED_PROG may share its hook with other families' programs.
 * The loader attaches the first such program of a hook; every further one (another family,
 * another object) goes into the previous program's one-slot `hv_next_<prog>` prog array, and
 * each program ends with a tail call to that slot: the hook runs one attached program and a
 * chain of direct jumps. The key is a constant, so the JIT patches the tail call into a
 * direct jump (kernel/bpf/verifier.c record_func_key / bpf_tail_call_direct_fixup,
 * arch/x86/net/bpf_jit_comp.c): a few ns against one more program on the tracepoint's
 * array (bench/test-run-cost.ts measures both). An empty slot makes the tail call fall
 * through. Families stay separate objects with their own maps, loaded and failing on their
 * own; the chain only decides who runs after whom.
 *
 * Tail-called programs are not accounted separately by kernel.bpf_stats_enabled: the run
 * time of a hook is the attached program's. */
#ifndef HVWATCH_HOOK_CHAIN_H
#define HVWATCH_HOOK_CHAIN_H

#define HV_CHAINED_PROG(sec, prog, ctx_type, ctx)              \
	struct {                                               \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);         \
		__uint(max_entries, 1);                        \
		__type(key, u32);                              \
		__type(value, u32);                            \
	} hv_next_##prog SEC(".maps");                         \
	static __always_inline void prog##_body(ctx_type ctx); \
	SEC(sec)                                               \
	int prog(ctx_type ctx)                                 \
	{                                                      \
		prog##_body(ctx);                              \
		bpf_tail_call(ctx, &hv_next_##prog, 0);        \
		return 0;                                      \
	}                                                      \
	static __always_inline void prog##_body(ctx_type ctx)

#endif
