// memcg family: writeback and uncharge per memory cgroup (seed 002). Tracepoint tiers work
// on this kernel; the function-level tiers (fentry/kprobe on __folio_end_writeback, the
// uncharge functions) are in the memcg_fn family and carry the race indicators (memcg.bpf.c).
import { MEMCG_METRICS as M } from './metrics.js';
import { isPerObject, type MetricDef } from '../../agent/model/metric.js';
import { findMemoryHierarchy, memoryHierarchyId } from '../../agent/cgroups.js';
import type { CollectContext, FamilySpec, FamilyView, MapView, ProbeSpec, Services } from '../../agent/model/family.js';
import { seriesKey, type Series } from '../../agent/export/store.js';
import type { StructLayout } from '../../bpf/btf.js';
import type { Config } from '../../agent/config.js';
import { log } from '../../agent/log.js';

export const name = 'memcg';
export { MEMCG_METRICS as metrics } from './metrics.js';
const family = name;

/* Hot-hook cost, measured by `npm run bench` (bench/RESULTS.md, 6.18): mod_memcg_lruvec_state
 * fires 4.0x and count_memcg_events 2.0x per page fault; both together cost +16.9 % on a
 * page-fault loop, nearly all of it the dispatch of any program there (empty: +19.5 %). */
const HOT_LRUVEC = 'memcg:mod_memcg_lruvec_state fires ~4x per page fault; with memcg_uncharge +17% on a page-fault loop (bench/RESULTS.md)';
const HOT_EVENTS = 'memcg:count_memcg_events fires ~2x per page fault; with memcg_writeback +17% on a page-fault loop (bench/RESULTS.md)';

const HOT_SWITCH = 'sched_switch fires on every context switch; opt in for wait latency where fexit/kretprobe cannot attach';

// Function tiers first where they exist: they fire once per batch or wait, not per page.
const probes: ProbeSpec[] = [
  {
    name: 'memcg_writeback',
    family,
    hot: HOT_LRUVEC,
    description: 'Writeback pages started/completed and in flight per memcg (NR_WRITEBACK deltas)',
    candidates: [
      { attach: 'tp_btf', target: 'mod_memcg_lruvec_state', programs: ['btf_memcg_lruvec_state'] },
      { attach: 'tracepoint', target: 'memcg/mod_memcg_lruvec_state', programs: ['tp_memcg_lruvec_state'] },
    ],
  },
  {
    name: 'memcg_uncharge',
    family,
    description: 'Uncharge batches and pages per batch per memcg (uncharge_batch; PGPGOUT on cgroup v1)',
    candidates: [
      { attach: 'fentry', target: 'uncharge_batch', programs: ['fentry_uncharge_batch'] },
      { attach: 'kprobe', target: 'uncharge_batch', programs: ['kprobe_uncharge_batch'] },
      { attach: 'tp_btf', target: 'count_memcg_events', programs: ['btf_count_memcg_events'], hot: HOT_EVENTS },
      { attach: 'tracepoint', target: 'memcg/count_memcg_events', programs: ['tp_count_memcg_events'], hot: HOT_EVENTS },
    ],
  },
  {
    name: 'memcg_writeback_wait',
    family,
    description: 'Tasks waiting on folio writeback and how long, per memcg of the waiting task',
    candidates: [
      { attach: 'fentry', target: 'folio_wait_writeback', programs: ['fentry_wait_writeback', 'fexit_wait_writeback'] },
      { attach: 'kprobe', target: 'folio_wait_writeback', programs: ['kprobe_wait_writeback', 'kretprobe_wait_writeback'] },
      {
        attach: 'tp_btf',
        target: 'folio_wait_writeback',
        hot: HOT_SWITCH,
        programs: ['btf_wait_writeback_begin', 'btf_wait_sched_switch'],
        targets: { btf_wait_sched_switch: 'sched_switch' },
      },
      // Counts only: no latency without a pairing.
      { attach: 'tp_btf', target: 'folio_wait_writeback', programs: ['btf_folio_wait_writeback'] },
      { attach: 'tracepoint', target: 'writeback/folio_wait_writeback', programs: ['tp_folio_wait_writeback'] },
    ],
  },
  {
    name: 'cgroup_lifecycle',
    family,
    description: 'Memory cgroups made and removed (path at mkdir, time of rmdir): names cgroups that are gone before a scrape',
    candidates: [
      { attach: 'tp_btf', target: 'cgroup_mkdir', programs: ['btf_cgroup_mkdir', 'btf_cgroup_rmdir'], targets: { btf_cgroup_rmdir: 'cgroup_rmdir' } },
      {
        attach: 'tracepoint',
        target: 'cgroup/cgroup_mkdir',
        programs: ['tp_cgroup_mkdir', 'tp_cgroup_rmdir'],
        targets: { tp_cgroup_rmdir: 'cgroup/cgroup_rmdir' },
      },
    ],
  },
];

// The memory.stat gauges carry the map series' labels, so they share their store keys.
const sameLabels = (a: MetricDef, b: MetricDef): boolean => a.labels.length === b.labels.length && a.labels.every((l, i) => l === b.labels[i]);
const STAT_KEYS_SHARED = [M.memcgWbWaits, M.memcgStatDirty, M.memcgStatWriteback].every((d) => sameLabels(d, M.memcgWbStarted));

// ---- cgroup first sight: memcg.bpf.c cgroup_seen -> the shared CgroupResolver ----
class CgroupFirstSight {
  private readonly seenLayouts = new WeakMap<FamilyView, StructLayout | null>();
  /** Removed cgroups whose linger ended with no stats entry left to retire them: forgotten at
   * the next collection, once every family has decoded with them. */
  private pendingRetire: bigint[] = [];

  learn(ctx: CollectContext, fam: FamilyView): void {
    const { seenLayouts } = this;
    const r = ctx.cgroups?.resolver;
    const map = fam.maps.get('cgroup_seen');
    if (!r || !map) return;
    for (const id of this.pendingRetire) if (r.life(id, ctx.now, false) === 'expired') r.retire(id);
    this.pendingRetire = [];
    let lay = seenLayouts.get(fam);
    if (lay === undefined) seenLayouts.set(fam, (lay = fam.btf.structLayout('cgroup_seen') ?? null));
    if (!lay) return;
    const off = (name: string): number => lay.fields.find((f) => f.name === name)!.offset;
    const [oRemoved, oLen, oTrunc, oPath] = [off('removed_ns'), off('path_len'), off('truncated'), off('path')];
    // One batched read, decoded in place (a Buffer pair per record, at every scrape, was a
    // fifth of what a collection allocated at 2,000 cgroups); the path string only when the
    // resolver does not know the cgroup from a walk.
    const all = readWhole(map);
    const vlen = map.valueSize;
    for (let i = 0; i < all.count; i++) {
      const ko = i * all.keySize;
      const vo = i * all.valueStride;
      const v = all.values;
      const id = all.keys.readBigUInt64LE(ko);
      const removed = v.readUInt32LE(vo + oRemoved) !== 0 || v.readUInt32LE(vo + oRemoved + 4) !== 0;
      if (removed && r.life(id, ctx.now, false) === 'expired') {
        map.delete(all.keys.subarray(ko, ko + all.keySize)); // its linger is over (the decoders retire its stats entries)
        this.pendingRetire.push(id);
        continue;
      }
      let path: string | undefined;
      if (!r.walked(id)) {
        const len = Math.min(v.readUInt32LE(vo + oLen), vlen - oPath);
        path = len > 0 && v.readUInt32LE(vo + oTrunc) === 0 ? v.toString('utf8', vo + oPath, vo + oPath + len) : undefined;
      }
      r.learn(id, path, removed, ctx.now);
    }
  }
}

/** A map's entries as one contiguous read: batched on a live map, else (recorded, replayed
 * maps) its entries copied together. */
function readWhole(map: MapView): { count: number; keys: Buffer; values: Buffer; keySize: number; valueStride: number } {
  if (map.readAll && !map.percpu) return map.readAll();
  const es = [...map.entries()];
  return {
    count: es.length,
    keys: Buffer.concat(es.map(([k]) => k)),
    values: Buffer.concat(es.map(([, v]) => v)),
    keySize: map.keySize,
    valueStride: map.valueSize,
  };
}

export function create(_config: Config, _services: Services): FamilySpec {
  const firstSight = new CgroupFirstSight();
  return {
    name: family,
    object: 'memcg.bpf.o',
    probes,
    sizes: { memcg_stats: 'perObject' },
    watchMaps: ['cgroup_seen'],
    setup(fam) {
      const h = findMemoryHierarchy();
      const id = h && memoryHierarchyId(h);
      if (id === undefined) {
        log('warn', 'memory hierarchy id not found in /proc/self/cgroup: cgroups are named by cgroupfs walks only', {});
        return;
      }
      const k = Buffer.alloc(4);
      const v = Buffer.alloc(4);
      v.writeUInt32LE(id + 1);
      fam.maps.get('cgroup_seen_cfg')!.update(k, v);
    },
    prepare: (ctx, fam) => firstSight.learn(ctx, fam),
    maps: [
      {
        map: 'memcg_stats',
        labels: [{ label: 'cgroup', field: 'cgroup_id', decoder: 'cgroup' }],
        fields: [
          { field: 'wb_started_pages', metric: M.memcgWbStarted },
          { field: 'wb_completed_pages', metric: M.memcgWbCompleted },
          { field: 'wb_waits', metric: M.memcgWbWaits },
          { field: 'uncharge_batch_slots', metric: M.memcgUnchargeBatchPages, sumField: 'uncharged_pages' },
          { field: 'wb_wait_slots', metric: M.memcgWbWaitTime, sumField: 'wb_wait_sum_ns' },
        ],
      },
    ],
    // memory.stat of the cgroups the BPF side has seen (bounded by the cgroup budget). Reading
    // it costs ~28 us a cgroup (the kernel formats ~40 counters): 56 ms at 2,000 cgroups, so a
    // scrape reads only cgroups it has never asked for; the others come from the background
    // refresher (agent/sources/refresh.ts), each re-read about every 10 s (docs/metrics.md).
    collect(ctx, store) {
      const cg = ctx.cgroups;
      if (!cg) return;
      const stats = cg.memoryStats;
      // In place, keyed like the map series (no per-scrape Series objects or key strings).
      const put = (def: MetricDef, k: string, labels: Series['labels'], v: number): void => {
        const x = store.visit(def, k);
        if (x) x.value = v;
        else if (v !== 0 || !isPerObject(def)) store.adopt(def, k, { labels, value: v });
      };
      const each = (s: Series, key: string): void => {
        const path = s.labels.cgroup!;
        if (!path.startsWith('/')) return; // skip "unknown" and "_other"
        const st = stats.get(path);
        if (!st) return; // removed since: its series go with the map entry
        // Same labels as the map series (cgroup plus its Kubernetes labels: catalog CG).
        const k = STAT_KEYS_SHARED ? key : seriesKey(M.memcgStatDirty, s.labels);
        put(M.memcgStatDirty, k, s.labels, st.dirtyBytes);
        put(M.memcgStatWriteback, k, s.labels, st.writebackBytes);
      };
      store.forEachKeyed(M.memcgWbStarted, each);
      store.forEachKeyed(M.memcgWbWaits, each);
      stats.endCollection();
      store.collected(M.memcgStatDirty);
      store.collected(M.memcgStatWriteback);
    },
  };
}
