// memcg family, function tiers (seed 002): fentry then kprobe on the writeback and
// uncharge functions, across kernel generations, with four in-kernel race indicators
// (memcg_fn.bpf.c). On kernels that refuse fentry and lack kprobes (our CI hosts)
// the logic is exercised through BPF_PROG_TEST_RUN; in VMs it attaches for real.
import { MEMCG_FN_METRICS as M } from './metrics.js';
import type { Decoder, EnumDecl, FamilySpec, ProbeSpec, Services } from '../../agent/model/family.js';
import { enumLabels, labelsOf, type EnumLabels } from '../../agent/aggregate/enums.js';
import type { Config } from '../../agent/config.js';
import type { Condition } from '../../agent/model/alert.js';

export const name = 'memcg_fn';
export { MEMCG_FN_METRICS as metrics } from './metrics.js';
const family = name;

/** enum race_kind in memcg_fn.bpf.c, by enumerator. How to read each: docs/metrics.md "Race indicators". */
const RACES = {
  enum: 'race_kind',
  labels: {
    RACE_UNCHARGE_DURING_WB_END: 'uncharge_during_writeback_end',
    RACE_UNCHARGE_UNDER_WB: 'uncharge_under_writeback',
    RACE_MEMCG_CLEARED_UNDER_WB: 'memcg_cleared_under_writeback',
    RACE_WB_END_ZERO_REFCOUNT: 'writeback_end_zero_refcount',
  },
} as const satisfies EnumDecl;
export const RACE_KINDS = labelsOf(RACES);

// Symbols by kernel generation (mm/page-writeback.c, mm/memcontrol.c):
//   __folio_start_writeback / __folio_end_writeback: v5.17+ (folio conversion, 5.16/5.17);
//   __test_set_page_writeback / test_clear_page_writeback: before;
//   __mem_cgroup_uncharge(folio): v5.17+ (page before); __mem_cgroup_uncharge_folios: v6.9+;
//   __mem_cgroup_uncharge_list: v5.15-v6.8 (timed, labelled by the list's first folio);
//   uncharge_folio: static, used only where BTF/kallsyms list it (often inlined).
const probes: ProbeSpec[] = [
  {
    name: 'memcg_writeback_start_fn',
    family,
    description: 'Writeback start per folio: opens the latency and race state for the folio',
    candidates: [
      { attach: 'fentry', target: '__folio_start_writeback', programs: ['fentry_wb_start'] },
      { attach: 'fentry', target: '__test_set_page_writeback', programs: ['fentry_wb_start'] },
      { attach: 'kprobe', target: '__folio_start_writeback', programs: ['kprobe_wb_start'] },
      { attach: 'kprobe', target: '__test_set_page_writeback', programs: ['kprobe_wb_start'] },
    ],
  },
  {
    name: 'memcg_writeback_end_fn',
    family,
    description: 'Writeback end per folio: latency since start, time inside, memcg-cleared and zero-refcount races',
    candidates: [
      { attach: 'fentry', target: '__folio_end_writeback', programs: ['fentry_wb_end', 'fexit_wb_end'] },
      { attach: 'fentry', target: 'test_clear_page_writeback', programs: ['fentry_wb_end', 'fexit_wb_end'] },
      { attach: 'kprobe', target: '__folio_end_writeback', programs: ['kprobe_wb_end', 'kretprobe_wb_end'] },
      { attach: 'kprobe', target: 'test_clear_page_writeback', programs: ['kprobe_wb_end', 'kretprobe_wb_end'] },
    ],
  },
  {
    name: 'memcg_uncharge_folio_fn',
    family,
    description: 'Each folio uncharged: uncharge-during-writeback-end and uncharge-under-writeback races',
    candidates: [
      { attach: 'fentry', target: 'uncharge_folio', programs: ['fentry_uncharge_folio'] },
      { attach: 'kprobe', target: 'uncharge_folio', programs: ['kprobe_uncharge_folio'] },
    ],
  },
  {
    name: 'memcg_uncharge_fn',
    family,
    description: 'Time inside each uncharge call, single folio and batch',
    candidates: [
      {
        attach: 'fentry',
        target: '__mem_cgroup_uncharge',
        programs: ['fentry_uncharge', 'fexit_uncharge', 'fentry_uncharge_folios', 'fexit_uncharge_folios'],
        targets: { fentry_uncharge_folios: '__mem_cgroup_uncharge_folios', fexit_uncharge_folios: '__mem_cgroup_uncharge_folios' },
      },
      {
        attach: 'fentry',
        target: '__mem_cgroup_uncharge',
        programs: ['fentry_uncharge', 'fexit_uncharge', 'fentry_uncharge_list', 'fexit_uncharge_list'],
        targets: { fentry_uncharge_list: '__mem_cgroup_uncharge_list', fexit_uncharge_list: '__mem_cgroup_uncharge_list' },
      },
      { attach: 'fentry', target: '__mem_cgroup_uncharge', programs: ['fentry_uncharge', 'fexit_uncharge'] },
      { attach: 'kprobe', target: '__mem_cgroup_uncharge', programs: ['kprobe_uncharge', 'kretprobe_uncharge'] },
    ],
  },
];

/** Raised in process too (agent/alerting), and the rule of the same name (families/memcg/alerts.ts). */
export const RACE: Condition = {
  name: 'HvwatchMemcgRaceIndicator',
  severity: 'critical',
  metric: M.memcgRaceEvents,
  kind: 'increase',
  summary: (l) => `memcg race indicator ${l.kind} on ${l.instance}`,
  description: (l) =>
    `hvwatch counted the memcg writeback/uncharge race indicator ${l.kind} on ${l.instance}. ` +
    'This is the race class that ends in a NULL memcg dereference in writeback end. ' +
    'The events, with both cgroups, pid, comm, CPU and kernel stack, are at GET /api/races on the node.',
};

/** The conditions the agent evaluates in process for this family. */
export const conditions: readonly Condition[] = [RACE];

/** state_counters indices: enum state_counter. */
const STATE = {
  enum: 'state_counter',
  labels: { ST_INSERTS: 'inserts', ST_REMOVES: 'removes', ST_REAPED: 'reaped', ST_UNPAIRED_END: 'unpaired' },
} as const satisfies EnumDecl;

export function create(_config: Config, _services: Services): FamilySpec {
  // Race kinds by the object's enum, resolved by prepare before the maps are decoded.
  let races: EnumLabels | undefined;
  const raceKind: Decoder = (raw) => races?.label(raw, `kind_${raw}`) ?? `kind_${raw}`;
  return {
    name: family,
    object: 'memcg_fn.bpf.o',
    probes,
    sizes: { memcg_fn_stats: 'perObject', wb_folios: 'perFolio' },
    maps: [
      {
        map: 'memcg_fn_stats',
        labels: [{ label: 'cgroup', field: 'cgroup_id', decoder: 'cgroup' }],
        fields: [
          { field: 'wb_latency_slots', metric: M.memcgWbLatency, sumField: 'wb_latency_sum_ns' },
          { field: 'wb_end_slots', metric: M.memcgWbEndDuration, sumField: 'wb_end_sum_ns' },
          { field: 'uncharge_slots', metric: M.memcgUnchargeDuration, sumField: 'uncharge_sum_ns' },
          { field: 'uncharged_folios', metric: M.memcgUnchargedFolios },
        ],
      },
      { map: 'race_counts', labels: [{ label: 'kind', field: 'key', decoder: raceKind }], fields: [{ field: 'value', metric: M.memcgRaceEvents }] },
    ],
    watchMaps: ['wb_folios'],
    enums: [RACES, STATE],
    prepare(_ctx, fam) {
      races = enumLabels(fam.btf, RACES);
    },
    collect(_ctx, store, fam) {
      const st = fam.maps.get('state_counters');
      const folios = fam.maps.get('wb_folios');
      if (!st || !folios) return;
      const ST = enumLabels(fam.btf, STATE);
      const inserts = st.counter(ST.valueOf('inserts'));
      const removes = st.counter(ST.valueOf('removes'));
      // The LRU map evicts silently: what was inserted, not removed and is not there, was evicted.
      store.set(M.memcgRaceStateEvictions, {}, Math.max(0, inserts - removes - folios.count()));
      store.set(M.memcgRaceStateReaped, {}, st.counter(ST.valueOf('reaped')));
      store.set(M.memcgWbUnpairedEnds, {}, st.counter(ST.valueOf('unpaired')));
    },
    events: {
      map: 'events',
      struct: 'memcg_race_event',
      onEvents(events, ctx) {
        // One clock read per batch: formatting a Date per event cost more than decoding it.
        const time = new Date().toISOString();
        const kinds = enumLabels(ctx.family.btf, RACES);
        for (const e of events) {
          const record = {
            kind: kinds.label(Number(e.kind), `kind_${e.kind}`),
            time,
            cgroup: e.memcg_id ? ctx.resolveCgroup(Number(e.memcg_id)) : null,
            start_cgroup: e.start_memcg_id ? ctx.resolveCgroup(Number(e.start_memcg_id)) : null,
            since_paired_ns: Number(e.delta_ns),
            folio: `0x${BigInt(e.folio ?? 0).toString(16)}`,
            pid: e.pid,
            comm: e.comm,
            cpu: e.cpu,
            other_cpu: e.other_cpu,
            stack: Number(e.stack_id) >= 0 ? ctx.stack(Number(e.stack_id)) : [],
          };
          ctx.logRace(record);
        }
      },
    },
  };
}
