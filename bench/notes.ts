// Why a program costs what it does, and what would bring it down: analysis of the
// measured results (bench/RESULTS.md), kept next to the harness so each run prints it.
// Keyed by program name; shown for programs that miss a target. Facts about the programs
// come from families/*/*.bpf.c.

const ON_FLOOR =
  'returns after one compare on almost every event (the item is not NR_WRITEBACK / PGPGOUT), ' +
  "so it and bpftrace both sit on the hook's floor: no program can cost half of a peer that itself costs about the floor. " +
  'Compare the "above floor" column instead.';

const IOCTL_EXIT =
  'runs on every ioctl on the host and looks up the thread in a hash of pending nested-state ioctls; ' +
  "bpftrace's equivalent does the same lookup, hence about 1x. Fix: skip the lookup unless the thread has one pending " +
  '(a per-task flag in task-local storage, set only by the two nested-state commands).';

const CGROUP_CHANGE =
  "reads the cgroup's hierarchy id and kernfs id through BTF, checks the configured hierarchy (one array lookup), and on " +
  'mkdir inserts a 272-byte first-sight record (hash update, then lookup) and copies the path into it with ' +
  'bpf_probe_read_kernel_str; on rmdir it finds the record and stamps it. It runs a few times per container start or ' +
  "stop, so each run is cold (this hook's own empty-program floor is 2-3x the busy hooks' for the same reason). Its share " +
  "is what counts: about 3 µs per mkdir+rmdir pair against ~1.4 ms for the pair in section 2's churn (~0.2 %), and " +
  'the first-sight bench measures 1,000 pairs a round with and without it.';

export const MISS_NOTES: Record<string, string> = {
  btf_cgroup_mkdir: CGROUP_CHANGE,
  btf_cgroup_rmdir: CGROUP_CHANGE,
  tp_cgroup_mkdir: `${CGROUP_CHANGE} The classic tracepoint hands the path inside its record (__data_loc).`,
  tp_cgroup_rmdir: `${CGROUP_CHANGE} The classic tracepoint hands the path inside its record (__data_loc).`,
  btf_memcg_lruvec_state: ON_FLOOR,
  tp_memcg_lruvec_state: ON_FLOOR,
  btf_count_memcg_events: ON_FLOOR,
  tp_count_memcg_events: ON_FLOOR,
  tp_sys_enter_ioctl:
    "fires on every ioctl on the host; on KVM_RUN it looks up the thread's pending userspace exit and " +
    'adds the time spent in userspace to the per-VM, per-reason log2 histogram (two hash operations). Fix: keep the pending ' +
    'half in task-local storage (bpf_task_storage_get) instead of a hash keyed by thread id.',
  tp_sys_exit_ioctl: IOCTL_EXIT,
  tp_irq_sys_exit_ioctl:
    "the kvm_irq family's own program on the same hook: " +
    IOCTL_EXIT +
    " Sharing one ioctl program between the kvm and kvm_irq families would also halve the hook's dispatch.",
  tp_irq_sys_enter_ioctl:
    '(kvm_irq family) on every KVM_RUN resolves the vCPU fd to its struct kvm (fd table -> file -> ' +
    "private_data through probe reads, then vcpu->kvm and vcpu_id) and rewrites the thread's irq_ctx LRU entry, so every exit " +
    "to the VMM pays it; the kvm family's tp_sys_enter_ioctl runs on the same hook. Fix: resolve a thread's VM once and reuse it " +
    'while the fd and tgid match (task-local storage), and share one ioctl program with the kvm family.',
  tp_sys_enter_ioctl_ts:
    "on KVM_RUN (every exit to the VMM): the thread's record (one bpf_task_storage_get), a clock read and the per-VM, " +
    "per-reason userspace-time histogram (one hash lookup); kvm_irq's program runs after it by tail call and returns on the " +
    'command (it finds the VM when an injection needs it). Any other ioctl returns after the command compares. Fix: a ' +
    'pointer-free per-VM slot index carried in the thread record, so the histogram is an array access.',
  tp_sys_exit_ioctl_ts:
    "each family's program looks up the thread's record and returns after one load unless it has an ioctl in flight " +
    '(kvm: a nested-state one; kvm_irq: a VM-fd one or KVM_CREATE_VM; never KVM_RUN), with a tail call between them. ' +
    "bpftrace's equivalent is one hash lookup and no tail call, so both sit near the floor.",
  btf_kvm_userspace_exit_ts:
    "the thread's record (bpf_task_storage_get), a clock read and a lookup-or-insert of the per-VM, per-reason counter; " +
    'the pending half is written in place in the record. Fix: as tp_sys_enter_ioctl_ts (a per-VM slot index in the record).',
  tp_kvm_userspace_exit_ts: "as btf_kvm_userspace_exit_ts, plus the classic tracepoint's record copy.",
  btf_kvm_userspace_exit:
    "a lookup-or-insert of the per-VM, per-reason counter plus an update of the thread's pending " +
    'half (two hash operations per exit). Fix: task-local storage for the pending half.',
  tp_kvm_userspace_exit: "as btf_kvm_userspace_exit, plus the classic tracepoint's record copy.",
  btf_kvm_pio:
    "one lookup-or-insert of the per-VM counters per exit; bpftrace's count() is one per-CPU hash update, " +
    'the same kind of work, so the ratio sits near 0.5 (above the floor hvwatch spends about a third of bpftrace).',
  tp_kvm_pio: 'as btf_kvm_pio on the classic tracepoint.',
  btf_kvm_emulate_insn: 'as btf_kvm_pio (it fires about three times per port write here).',
  tp_kvm_emulate_insn: "as btf_kvm_emulate_insn, plus the classic tracepoint's record copy of a larger event.",
  btf_folio_wait_writeback:
    "walks task -> css_set -> css -> cgroup -> kernfs_node for the waiter's memcg and adds one to its per-CPU stats " +
    'entry. Its average here is set by the first event of each new cgroup (the churn workload makes a cgroup per ' +
    "iteration): that event allocates the cgroup's per-CPU stats entry, since from 6.1 these maps allocate on first use " +
    'instead of preallocating max_entries x value x CPUs (agent/loader.ts). An A/B on one object (--only kernel --quick, ' +
    '2026-12-03) measured 2,400 ns with first-use allocation and 371 ns preallocated; the classic-tracepoint row, whose ' +
    "config attaches memcg_writeback first so the entry already exists, shows the walk's own price. A cost once per " +
    'cgroup, not per wait.',
  tp_folio_wait_writeback: 'the same walk through bpf_probe_read_kernel (no BTF pointers on the classic tracepoint).',
  btf_wait_writeback_begin: '(hot tier) the memcg walk plus a wb_waits hash update per wait start.',
  btf_wait_sched_switch:
    '(hot tier) runs on every context switch on the host and looks up both the outgoing and the ' +
    'incoming thread in wb_waits; bpftrace\'s equivalent looks up only the incoming one. Fix: a per-task "waiting" flag ' +
    'in task-local storage checked before any hash lookup.',
  bench_race_cycle:
    'the per-folio LRU-hash insert and delete, the state lookups and a per-memcg stats lookup on most ' +
    'events (nine map operations per four events). On a live fentry hook the floor is the trampoline, not the test-run ' +
    'loop, so this ratio overstates it.',
  bench_exit_entry:
    "a lookup-or-insert of the per-VM, per-reason counter and the thread's pending half on exit, two " + 'lookups and a histogram update on entry.',
  bench_ima_cycle:
    "each of the six events looks up its cgroup's stats entry, and the two cache gets and the free also look up " +
    "and update the inode pointer's identity (or its tombstone) in an LRU hash: the reuse indicator's price.",
};
