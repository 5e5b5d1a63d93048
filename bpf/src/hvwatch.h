/* Shared by every hvwatch BPF object. Kept tiny: per-event work must stay O(1). */
#ifndef HVWATCH_H
#define HVWATCH_H

/* log2 histogram slots: slot i counts values v with floor(log2(v)) == i (v <= 1 -> slot 0).
 * 40 slots reach 2^40 ns (~18 min), beyond anything we time. The agent folds slots into
 * cumulative Prometheus buckets (agent/aggregate/histogram.ts). */
#define HIST_SLOTS 40

static __always_inline u32 log2_slot(u64 v)
{
	u32 r = 0;
	/* Branch-free-ish binary search: 6 compares, no loop, verifier-friendly. */
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8)  { v >>= 8;  r += 8; }
	if (v >> 4)  { v >>= 4;  r += 4; }
	if (v >> 2)  { v >>= 2;  r += 2; }
	if (v >> 1)  { r += 1; }
	return r < HIST_SLOTS ? r : HIST_SLOTS - 1;
}

/* One observation into a log2 histogram and its exact sum. The bound check is for the
 * verifier: log2_slot already clamps. */
static __always_inline void hist_add(u64 *slots, u64 *sum, u64 v)
{
	u32 slot = log2_slot(v);
	if (slot < HIST_SLOTS)
		slots[slot]++;
	*sum += v;
}

/* Counters of things the BPF side could not do (map full, ring buffer full). The agent
 * exports them, so nothing is lost silently. Index = enum hv_error. */
enum hv_error {
	HV_ERR_MAP_FULL = 0,
	HV_ERR_RINGBUF_FULL = 1,
	HV_ERR_MAX = 4,
};

#define DEFINE_ERROR_MAP()                                   \
	struct {                                             \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);     \
		__uint(max_entries, HV_ERR_MAX);             \
		__type(key, u32);                            \
		__type(value, u64);                          \
	} hv_errors SEC(".maps")

static __always_inline void count_error(void *map, u32 kind)
{
	u64 *c = bpf_map_lookup_elem(map, &kind);
	if (c)
		(*c)++;
}

/* Lookup-or-insert for per-CPU hash maps. BPF_NOEXIST keeps concurrent inserters from
 * clobbering each other; a full map is counted, never silently ignored. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero, void *errors)
{
	void *v = bpf_map_lookup_elem(map, key);
	if (v)
		return v;
	if (bpf_map_update_elem(map, key, zero, BPF_NOEXIST) && !bpf_map_lookup_elem(map, key)) {
		count_error(errors, HV_ERR_MAP_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(map, key);
}

/* Event structs reach user space as raw bytes; the agent decodes them by the layout in the
 * object's BTF. clang emits BTF only for types something references, so each event struct
 * gets a pointer in .bss through this macro. */
#define EXPORT_BTF_TYPE(type, name) type *__btf_export_##name __attribute__((unused))

#endif
