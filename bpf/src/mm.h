/* Facts about folios and memory cgroups read from the kernel, shared by the memcg objects.
 * Every read goes through CO-RE (BPF_CORE_READ: bpf_probe_read_kernel), so these are safe
 * on a pointer that was saved earlier and may since have been freed. */
#ifndef HVWATCH_MM_H
#define HVWATCH_MM_H

static __always_inline u64 memcg_cgroup_id(struct mem_cgroup *memcg)
{
	return BPF_CORE_READ(memcg, css.cgroup, kn, id);
}

/* The kernel before v5.11 kept page->mem_cgroup instead of memcg_data. */
struct page___pre511 {
	struct mem_cgroup *mem_cgroup;
};

/* page->memcg_data -> memcg, as page_memcg()/folio_memcg() do (include/linux/memcontrol.h,
 * v6.18): the low bits are flags (__NR_MEMCG_DATA_FLAGS - 1); OBJEXTS (OBJCGS before v6.10)
 * marks a slab page with no memcg; KMEM points to an obj_cgroup whose memcg we follow.
 * folio and page share these fields at the same offsets (FOLIO_MATCH in mm_types.h). */
static __always_inline u64 page_memcg_id(struct page *page)
{
	struct mem_cgroup *memcg = 0;
	if (bpf_core_field_exists(page->memcg_data)) {
		unsigned long data = BPF_CORE_READ(page, memcg_data);
		unsigned long mask = 3;
		unsigned long slab = 1;
		if (bpf_core_enum_value_exists(enum page_memcg_data_flags, __NR_MEMCG_DATA_FLAGS))
			mask = bpf_core_enum_value(enum page_memcg_data_flags, __NR_MEMCG_DATA_FLAGS) - 1;
		if (bpf_core_enum_value_exists(enum page_memcg_data_flags, MEMCG_DATA_OBJEXTS))
			slab = bpf_core_enum_value(enum page_memcg_data_flags, MEMCG_DATA_OBJEXTS);
		if (!data || (data & slab))
			return 0;
		if (data & bpf_core_enum_value(enum page_memcg_data_flags, MEMCG_DATA_KMEM)) {
			struct obj_cgroup *objcg = (void *)(data & ~mask);
			memcg = BPF_CORE_READ(objcg, memcg);
		} else {
			memcg = (void *)(data & ~mask);
		}
	} else {
		memcg = BPF_CORE_READ((struct page___pre511 *)page, mem_cgroup);
	}
	return memcg ? memcg_cgroup_id(memcg) : 0;
}

/* page->flags became memdesc_flags_t, a struct around the same unsigned long, in v6.18
 * (include/linux/mm_types.h); before it is a plain unsigned long. CO-RE refuses to relocate
 * one as the other, so each generation gets its own read and the dead one is dropped. */
struct page___flags_ulong {
	unsigned long flags;
} __attribute__((preserve_access_index));

static __always_inline u64 page_flags(struct page *page)
{
	if (bpf_core_type_exists(memdesc_flags_t))
		return BPF_CORE_READ(page, flags.f);
	return BPF_CORE_READ((struct page___flags_ulong *)page, flags);
}

static __always_inline s32 page_refcount(struct page *page)
{
	return BPF_CORE_READ(page, _refcount.counter);
}

static __always_inline u64 writeback_flag(void)
{
	return 1ULL << bpf_core_enum_value(enum pageflags, PG_writeback);
}
#endif
