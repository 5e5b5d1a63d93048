/* Shared by every hvwatch BPF object. Kept tiny: per-event work must stay O(1). */
#ifndef HVWATCH_H
#define HVWATCH_H

#include <bpf/bpf_core_read.h>

/* log2 histogram slots: slot i counts values v with floor(log2(v)) == i (v <= 1 -> slot 0).
 * 40 slots reach 2^40 ns (~18 min), beyond anything we time. The agent folds slots into
 * cumulative Prometheus buckets (agent/aggregate/histogram.ts). */
#define HIST_SLOTS 40

static __always_inline u32 log2_slot(u64 v)
{
	u32 r = 0;
	/* Branch-free-ish binary search: 6 compares, no loop, verifier-friendly. */
	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1) {
		r += 1;
	}
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

#define DEFINE_ERROR_MAP()                               \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, HV_ERR_MAX);         \
		__type(key, u32);                        \
		__type(value, u64);                      \
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

/* ---- First sight: an object is named while it still exists (docs/metrics.md "Series lifecycle") ----
 *
 * A VM (its VMM tgid) or a cgroup that starts and ends between two scrapes would otherwise
 * be named by the agent only at scrape time, from /proc or cgroupfs, where it no longer is.
 * So the BPF side writes what names it into a small hash map the first time it sees it:
 * the agent reads these maps before decoding the stats maps, and deletes an entry when
 * the object's series end (after their linger). The work is per new object (one lookup on
 * the insert path of a stats map, which is itself per new key), never per event. A full
 * map is counted in hv_errors (HV_ERR_MAP_FULL) and the agent falls back to /proc. */

/* The VMM's command line: the first bytes of its argv (NUL-separated, as /proc/PID/cmdline).
 * 256 bytes hold QEMU's -name, Firecracker's --id and cloud-hypervisor's --api-socket on
 * every command line we parse (agent/vms.ts); a longer one is flagged truncated. */
#define VM_CMDLINE_BYTES 256

struct hv_vm_seen {
	u64 start_boottime_ns; /* group leader's task_struct.start_boottime: /proc/PID/stat field 22 in ns (pid-reuse proof) */
	u64 seen_ns;           /* bpf_ktime_get_ns() at first sight */
	u32 cmdline_len;       /* bytes of cmdline read; 0: could not be read (the agent asks /proc) */
	u32 truncated;         /* the command line was longer than VM_CMDLINE_BYTES */
	char cmdline[VM_CMDLINE_BYTES];
};

#define DEFINE_VM_SEEN_MAP()                      \
	struct {                                  \
		__uint(type, BPF_MAP_TYPE_HASH);  \
		__uint(max_entries, 2048);        \
		__type(key, u32); /* tgid */      \
		__type(value, struct hv_vm_seen); \
	} hv_vm_seen SEC(".maps");                \
	static const struct hv_vm_seen hv_vm_seen_zero

/* Records tgid's identity the first time it is seen. Only from the VMM's own context:
 * current->mm is then the VMM's memory, so its argv is read with bpf_probe_read_user
 * (mm->arg_start..arg_end, what /proc/PID/cmdline shows; fs/proc/base.c get_mm_cmdline,
 * v6.18). Events attributed to a VM from another context (a kthread, an irqfd worker)
 * leave the first sight to the VMM's next event. */
static __always_inline void vm_first_sight(void *seen, const void *zero, void *errors, u32 tgid)
{
	if (!tgid || bpf_map_lookup_elem(seen, &tgid))
		return;
	if ((u32)(bpf_get_current_pid_tgid() >> 32) != tgid)
		return;
	if (bpf_map_update_elem(seen, &tgid, zero, BPF_NOEXIST)) {
		if (!bpf_map_lookup_elem(seen, &tgid))
			count_error(errors, HV_ERR_MAP_FULL);
		return; /* another CPU is filling it */
	}
	struct hv_vm_seen *v = bpf_map_lookup_elem(seen, &tgid);
	if (!v)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	v->seen_ns = bpf_ktime_get_ns();
	v->start_boottime_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	u64 start = BPF_CORE_READ(task, mm, arg_start);
	u64 end = BPF_CORE_READ(task, mm, arg_end);
	u64 len = end > start ? end - start : 0;
	if (len > VM_CMDLINE_BYTES) {
		len = VM_CMDLINE_BYTES;
		v->truncated = 1;
	}
	/* A page of argv not resident cannot be faulted in here: cmdline_len stays 0. */
	u32 n = len;
	if (n > VM_CMDLINE_BYTES)
		n = VM_CMDLINE_BYTES;
	if (n && !bpf_probe_read_user(v->cmdline, n, (const void *)start))
		v->cmdline_len = n;
}

/* lookup_or_init for a stats map keyed by VMM tgid: a new key may be a new VM. */
static __always_inline void *lookup_or_init_vm(void *map, const void *key, const void *zero, void *errors, void *seen, const void *seen_zero, u32 tgid)
{
	void *v = bpf_map_lookup_elem(map, key);
	if (v)
		return v;
	vm_first_sight(seen, seen_zero, errors, tgid);
	return lookup_or_init(map, key, zero, errors);
}
#define lookup_or_init_vm_seen(map, key, zero, tgid) lookup_or_init_vm(map, key, zero, &hv_errors, &hv_vm_seen, &hv_vm_seen_zero, tgid)

/* Event structs reach user space as raw bytes; the agent decodes them by the layout in the
 * object's BTF. clang emits BTF only for types something references, so each event struct
 * gets a pointer in .bss through this macro. */
#define EXPORT_BTF_TYPE(type, name) type *__btf_export_##name __attribute__((unused))

/* Enums whose values label series or index counters: the agent reads each enumerator's value
 * from the object's BTF by name (FamilySpec.enums, agent/model/family.ts) instead of copying
 * the values by position, and a family whose enum or enumerator is missing fails to load.
 * The pointer that makes clang emit the enum's BTF lives in a section libbpf neither maps nor
 * loads, so no instance gains a .bss map for it. */
#define EXPORT_BTF_ENUM(name) enum name *__btf_enum_##name __attribute__((unused, section(".hv.btf")))

#endif
