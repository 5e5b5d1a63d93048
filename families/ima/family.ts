// ima family (seed 004): IMA's measurement and appraisal path and its integrity cache (the
// per-inode iint), per cgroup of the task that opened the file, and an inode pointer-reuse
// indicator (ima.bpf.c says which kernel functions, in which versions, and why).
// Where the kernel has no IMA, or has it built but not active, the family is off with
// that reason ("not present"), not failed.
import fs from 'node:fs';
import { IMA_METRICS as M } from './metrics.js';
import type { Decoder, EnumDecl, FamilySpec, KernelFacts, ProbeSpec, Services } from '../../agent/model/family.js';
import { enumLabels, labelsOf, type EnumLabels } from '../../agent/aggregate/enums.js';
import type { Config } from '../../agent/config.js';

export const name = 'ima';
export { IMA_METRICS as metrics } from './metrics.js';
const family = name;

/** enum reuse_kind in ima.bpf.c, by enumerator. docs/metrics.md "Race indicators" says how to read them. */
const REUSES = { enum: 'reuse_kind', labels: { REUSE_AFTER_FREE: 'after_free', REUSE_LIVE_STATE: 'live_state' } } as const satisfies EnumDecl;
export const REUSE_KINDS = labelsOf(REUSES);
/** enum ima_counter: the cache's allocations and frees, and hvwatch_ima_state_events_total{kind}. */
const COUNTERS = {
  enum: 'ima_counter',
  labels: { IC_ALLOCS: 'allocs', IC_FREES: 'frees', IC_UNTRACKED_FREES: 'untracked_frees', IC_UNPAIRED: 'unpaired' },
} as const satisfies EnumDecl;

/** fentry (+fexit) on fn, then kprobe (+kretprobe), for each of `fns` in order. */
function timedCandidates(fns: string[], progs: [string, string], kprogs: [string, string]): ProbeSpec['candidates'] {
  return [
    ...fns.map((fn) => ({ attach: 'fentry' as const, target: fn, programs: [...progs] })),
    ...fns.map((fn) => ({ attach: 'kprobe' as const, target: fn, programs: [...kprogs] })),
  ];
}

// Symbols and their kernels: the comment at the top of ima.bpf.c (which also says why
// 6.1 takes fentry on ima_file_check and kprobe for the appraisal: its x86 trampoline takes
// at most 6 arguments, and those two functions have 7). No IMA tracepoint
// exists in 6.1 or 6.12 (no ima events in tracefs, no btf_trace_ima*), so there is no
// tracepoint tier.
const probes: ProbeSpec[] = [
  {
    name: 'ima_check',
    family,
    description: 'Each IMA check of a file (open, exec, mmap, module/firmware read): time inside process_measurement, per cgroup',
    candidates: timedCandidates(['process_measurement', 'ima_file_check'], ['fentry_check', 'fexit_check'], ['kprobe_check', 'kretprobe_check']),
  },
  {
    name: 'ima_measure',
    family,
    description: 'Each file measurement: time reading and hashing it (ima_collect_measurement), per cgroup',
    candidates: timedCandidates(['ima_collect_measurement'], ['fentry_measure', 'fexit_measure'], ['kprobe_measure', 'kretprobe_measure']),
  },
  {
    name: 'ima_appraise',
    family,
    description: 'Each appraisal of a file against its security.ima value (ima_appraise_measurement), timed, per cgroup',
    // Only kernels with CONFIG_IMA_APPRAISE have it: absent, not failed, elsewhere.
    optional: true,
    candidates: timedCandidates(['ima_appraise_measurement'], ['fentry_appraise', 'fexit_appraise'], ['kprobe_appraise', 'kretprobe_appraise']),
  },
  {
    name: 'ima_log_entry',
    family,
    description: 'Entries added to the measurement list (ima_add_template_entry returning 0): measurements and violations, per cgroup',
    candidates: [
      { attach: 'fentry', target: 'ima_add_template_entry', programs: ['fexit_add_entry'] },
      { attach: 'kprobe', target: 'ima_add_template_entry', programs: ['kprobe_add_entry', 'kretprobe_add_entry'] },
    ],
  },
  {
    name: 'ima_cache_get',
    family,
    description:
      'Integrity-cache lookups that may allocate (integrity_inode_get, 6.1; ima_inode_get, 6.9+): allocations, and inode pointers seen again with another identity',
    candidates: timedCandidates(['integrity_inode_get', 'ima_inode_get'], ['fentry_get', 'fexit_get'], ['kprobe_get', 'kretprobe_get']),
  },
  {
    name: 'ima_cache_free',
    family,
    description:
      "Integrity-cache frees with their inode (integrity_inode_free, 6.1; security_inode_free with S_IMA set, 6.9+ where the iint lives in the inode's LSM blob)",
    candidates: [
      { attach: 'fentry', target: 'integrity_inode_free', programs: ['fentry_free'] },
      { attach: 'fentry', target: 'security_inode_free', programs: ['fentry_free'] },
      { attach: 'kprobe', target: 'integrity_inode_free', programs: ['kprobe_free'] },
      { attach: 'kprobe', target: 'security_inode_free', programs: ['kprobe_free'] },
    ],
  },
];

export interface ImaDetection {
  /** IMA's functions are in this kernel (BTF or kallsyms). */
  built: boolean;
  /** IMA is initialized: /sys/kernel/security/ima exists. undefined: securityfs is not mounted, so unknown. */
  active: boolean | undefined;
  /** Why the family is off; undefined when it runs. */
  reason?: string;
}

/** The IMA functions whose presence means "built" (ima_main.c, every IMA kernel; exported). */
const IMA_CORE = ['ima_file_check', 'ima_bprm_check'] as const;

/**
 * Built or not, from names alone (the kernel BTFs' strings and kallsyms' function symbols,
 * as kvmi does); active or not, from securityfs: IMA creates /sys/kernel/security/ima when
 * it initializes (ima_fs_init, security/integrity/ima/ima_fs.c, 6.1 and 6.12), and on 6.9+
 * /sys/kernel/security/lsm lists it among the active LSMs (measured: the 6.12 guest lists
 * "ima,evm" there; the 6.1 guest lists no ima although IMA runs, as it is no LSM before 6.9).
 * With securityfs not mounted, activity cannot be told: the family is then attached (a hook
 * of an inactive IMA never fires, which costs nothing) and the log says so.
 */
export function detectIma(
  kernel: Pick<KernelFacts, 'btfNamesWithPrefix' | 'kallsymsWithPrefix' | 'atLeast'>,
  root = '/sys/kernel/security',
  names?: { btf: Set<string>; kallsyms: Set<string> },
  lsmIma = kernel.atLeast(6, 9),
): ImaDetection {
  const btf = names?.btf ?? kernel.btfNamesWithPrefix('ima_');
  const ksyms = names?.kallsyms ?? kernel.kallsymsWithPrefix('ima_');
  const built = IMA_CORE.some((f) => btf.has(f) || ksyms.has(f));
  if (!built) {
    return {
      built,
      active: false,
      reason: `IMA is not built into this kernel (CONFIG_IMA off): no ${IMA_CORE.join(' or ')} in its BTF or /proc/kallsyms`,
    };
  }
  const exists = (p: string): boolean => {
    try {
      fs.accessSync(p);
      return true;
    } catch {
      return false;
    }
  };
  if (exists(`${root}/ima`)) return { built, active: true };
  let lsm: string | undefined;
  try {
    lsm = fs.readFileSync(`${root}/lsm`, 'utf8').trim();
  } catch {
    /* not mounted, or before 4.15 */
  }
  if (lsm !== undefined) {
    // IMA is an LSM of its own from 6.9 (security/integrity/ima/ima_main.c DEFINE_LSM(ima),
    // LSM_ORDER_LAST: appended whatever lsm= says, security/security.c v6.12 ordered_lsm_init);
    // before, it is called from the security hooks directly and never listed in the lsm file.
    // Either way the usual cause of "built but off" is ima_init() failing at boot (the kernel
    // log says why), which leaves no securityfs directory.
    const why = lsmIma && !lsm.split(',').includes('ima') ? `not among the active LSMs (/sys/kernel/security/lsm: ${lsm}), so` : 'securityfs is mounted but';
    return { built, active: false, reason: `IMA is built into this kernel but off: ${why} it never initialized (no ${root}/ima)` };
  }
  // Not mounted (nothing in the directory), or an old kernel without the lsm file.
  return { built, active: undefined };
}

export function create(_config: Config, services: Services): FamilySpec {
  // Reuse kinds by the object's enum, resolved by prepare before the maps are decoded.
  let reuses: EnumLabels | undefined;
  const reuseKind: Decoder = (raw) => reuses?.label(raw, `kind_${raw}`) ?? `kind_${raw}`;
  return {
    name: family,
    object: 'ima.bpf.o',
    probes,
    presentMetric: M.imaPresent,
    present: () => detectIma(services.kernel).reason,
    sizes: { ima_stats: 'perObject', ima_inodes: 'perFolio' },
    maps: [
      {
        map: 'ima_stats',
        labels: [{ label: 'cgroup', field: 'cgroup_id', decoder: 'cgroup' }],
        fields: [
          { field: 'check_slots', metric: M.imaCheckDuration, sumField: 'check_sum_ns' },
          { field: 'measure_slots', metric: M.imaMeasurementDuration, sumField: 'measure_sum_ns' },
          { field: 'appraise_slots', metric: M.imaAppraisalDuration, sumField: 'appraise_sum_ns' },
          { field: 'measurements', metric: M.imaMeasurements },
          { field: 'violations', metric: M.imaViolations },
          { field: 'cache_allocs', metric: M.imaCacheAllocations },
        ],
      },
      { map: 'reuse_counts', labels: [{ label: 'kind', field: 'key', decoder: reuseKind }], fields: [{ field: 'value', metric: M.imaInodeReuse }] },
    ],
    watchMaps: ['ima_inodes'],
    enums: [REUSES, COUNTERS],
    prepare(_ctx, fam) {
      reuses = enumLabels(fam.btf, REUSES);
    },
    benchEventsPerRun: { bench_ima_cycle: 6 }, // check, get (alloc), hash, log entry, get (hit), free
    collect(_ctx, store, fam) {
      const c = fam.maps.get('ima_counters');
      if (!c) return;
      const IC = enumLabels(fam.btf, COUNTERS);
      const allocs = c.counter(IC.valueOf('allocs'));
      const frees = c.counter(IC.valueOf('frees'));
      store.set(M.imaCacheFrees, {}, frees + c.counter(IC.valueOf('untracked_frees')));
      store.set(M.imaCacheEntries, {}, Math.max(0, allocs - frees));
      store.set(M.imaStateEvents, { kind: 'untracked_free' }, c.counter(IC.valueOf('untracked_frees')));
      store.set(M.imaStateEvents, { kind: 'unpaired' }, c.counter(IC.valueOf('unpaired')));
    },
    events: {
      map: 'events',
      struct: 'ima_reuse_event',
      onEvents(events, ctx) {
        const time = new Date().toISOString(); // one clock read per batch (families/memcg_fn/family.ts)
        const kinds = enumLabels(ctx.family.btf, REUSES);
        for (const e of events) {
          const kind = kinds.label(Number(e.kind), `kind_${e.kind}`);
          ctx.logRace(
            {
              kind,
              time,
              inode: `0x${BigInt(e.inode ?? 0).toString(16)}`,
              old: { dev: devName(Number(e.old_dev)), ino: Number(e.old_ino), generation: Number(e.old_gen) },
              new: { dev: devName(Number(e.new_dev)), ino: Number(e.new_ino), generation: Number(e.new_gen) },
              since_alloc_ns: Number(e.since_alloc_ns),
              since_free_ns: Number(e.since_free_ns),
              old_cgroup: e.old_cgroup_id ? ctx.resolveCgroup(Number(e.old_cgroup_id)) : null,
              cgroup: e.cgroup_id ? ctx.resolveCgroup(Number(e.cgroup_id)) : null,
              pid: e.pid,
              comm: e.comm,
              // After-free reuse is a slab object's normal second life: recorded, logged at info.
            },
            kind === 'after_free' ? 'info' : 'warn',
          );
        }
      },
    },
  };
}

/** A kernel dev_t (major << 20 | minor, include/linux/kdev_t.h) as "major:minor", as stat(1) and /proc show it. */
export function devName(dev: number): string {
  return `${Math.floor(dev / 2 ** 20)}:${dev % 2 ** 20}`;
}
