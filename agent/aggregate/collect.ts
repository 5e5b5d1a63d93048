// Maps -> metrics, driven by each family's MapExport declarations and the object's BTF:
// keys and values are decoded by field name, so the C structs are the one source of truth.
import type { Btf, StructLayout } from '../../bpf/btf.js';
import type { LoadedFamily } from '../loader.js';
import type { FieldExport, MapExport } from '../probes/model.js';
import type { MapFd } from '../../bpf/libbpf.js';
import type { MetricDef } from '../catalog.js';
import { M } from '../catalog.js';
import { foldLog2, mergeFolded } from './histogram.js';
import type { MetricStore, Series } from '../export/store.js';
import { OVERFLOW_VALUE, type LabelBudget } from './budget.js';
import type { CgroupResolver, MemoryHierarchy } from '../cgroups.js';
import { NO_KUBE_LABELS, type KubeLabels } from '../k8s.js';

export interface CollectContext {
  store: MetricStore;
  budget: LabelBudget;
  cgroups?: { resolver: CgroupResolver; hierarchy: MemoryHierarchy };
  now: number;
  /** Check whether labelled objects still exist (throttled: it costs a stat per cgroup). */
  gc: boolean;
}

/** A decoded key label, or null when the object behind the key is gone (drop the entry).
 * `field` reads another field of the same key (an exit reason's name depends on its ISA). */
export type Decoder = (raw: bigint, ctx: CollectContext, field: (name: string) => bigint) => string | null;

export const UNKNOWN_CGROUP = 'unknown';

/** What a decoder returns for an object past its linger whose counts were folded into
 * "_other": the entry is deleted like for null, but its final counts stay in the "_other"
 * series, which outlives any one object and so must never go backwards. */
export const RETIRE_INTO_OTHER = '\u0000retire:_other';

/** namespace/pod/container of a decoded cgroup label ('' when none: agent/k8s.ts). */
export function cgroupLabels(ctx: CollectContext, cgPath: string): KubeLabels {
  return ctx.cgroups?.resolver.labelsOf(cgPath) ?? NO_KUBE_LABELS;
}

export const decoders: Record<string, Decoder> = {
  cgroup(raw, ctx) {
    const r = ctx.cgroups?.resolver;
    if (!r) return UNKNOWN_CGROUP;
    const before = r.stats.unresolved;
    const path = r.resolve(raw);
    if (r.stats.unresolved > before) ctx.store.inc(M.cgroupUnresolved);
    if (path === undefined) return UNKNOWN_CGROUP;
    // A removed cgroup keeps its entry and series through its linger (cgroups.removedSeconds),
    // so a scrape sees its final counts; then they go and its budget slot is freed.
    if (r.life(raw, ctx.now, ctx.gc) === 'expired') {
      const label = ctx.budget.admit('cgroup', path);
      ctx.budget.release('cgroup', path);
      r.retire(raw);
      return label === OVERFLOW_VALUE ? RETIRE_INTO_OTHER : null;
    }
    return ctx.budget.admit('cgroup', path);
  },
  number(raw) {
    return raw.toString();
  },
};

function u64(buf: Buffer, off: number, size: number): bigint {
  switch (size) {
    case 8: return buf.readBigUInt64LE(off);
    case 4: return BigInt(buf.readUInt32LE(off));
    case 2: return BigInt(buf.readUInt16LE(off));
    case 1: return BigInt(buf.readUInt8(off));
    default: throw new Error(`unsupported field size ${size}`);
  }
}

type Field = StructLayout['fields'][number];

// Field layouts resolved once per map export, not per entry at every scrape.
interface Decoded {
  keyFields: readonly Field[];
  labels: { label: string; field: Field; decode: Decoder }[];
  values: { fx: FieldExport; field: Field; sum?: Field }[];
}

function fieldOf(layout: StructLayout, name: string, bytes: number): Field {
  const f = layout.fields.find((x) => x.name === name);
  if (!f) throw new Error(`struct ${layout.name} has no field ${name}`);
  if (f.offset + f.size > bytes) throw new Error(`struct ${layout.name}.${name} beyond the map's ${bytes}-byte entries`);
  return f;
}

// A named struct is decoded field by field; a plain integer (an array map's u32 index, a
// u64 counter) is one field called "key" or "value".
function layoutOf(btf: Btf, id: number, scalarName: string, map: string): StructLayout {
  const t = btf.resolve(id);
  if ((t.kind === 'struct' || t.kind === 'union') && t.name) {
    const l = btf.structLayout(t.name);
    if (l) return l;
  }
  if (t.kind === 'int') {
    const size = btf.sizeOf(id);
    return { name: t.name, size, fields: [{ name: scalarName, offset: 0, size, kind: 'int', signed: !!t.intInfo?.signed, typeName: t.name }] };
  }
  throw new Error(`map ${map}: ${scalarName} type is neither a named struct nor an integer in the object's BTF`);
}

function resolve(fam: LoadedFamily, e: MapExport, map: MapFd): Decoded {
  const ids = fam.typeIds.get(e.map);
  if (!ids) throw new Error(`family ${fam.spec.name} has no map ${e.map}`);
  const key = layoutOf(fam.btf, ids.key, 'key', e.map);
  const value = layoutOf(fam.btf, ids.value, 'value', e.map);
  return {
    keyFields: key.fields,
    labels: e.labels.map((kl) => ({
      label: kl.label,
      field: fieldOf(key, kl.field, map.keySize),
      decode: typeof kl.decoder === 'function' ? kl.decoder : decoders[kl.decoder] ?? decoders.number!,
    })),
    values: e.fields.map((fx) => ({
      fx,
      field: fieldOf(value, fx.field, map.valueSize),
      sum: 'log2' in fx && fx.sumField ? fieldOf(value, fx.sumField, map.valueSize) : undefined,
    })),
  };
}

const layoutCache = new WeakMap<MapExport, Decoded>();
/** Final counts of retired entries folded into "_other", per map export (RETIRE_INTO_OTHER). */
const retiredCounts = new WeakMap<MapExport, Map<MetricDef, Map<string, Series>>>();

function fold(target: Map<MetricDef, Map<string, Series>>, metric: MetricDef, keyLabels: Record<string, string>, value: number, hist?: Series['hist'], extra?: Readonly<Record<string, string>>): void {
  // Only the metric's own labels: a map key often carries more (a nested-state key has op
  // and result; its saves counter is per flag), and the exporter prints what a series has.
  const all = extra ? { ...keyLabels, ...extra } : keyLabels;
  const labels: Record<string, string> = {};
  for (const l of metric.labels) labels[l] = all[l]!;
  let fam2 = target.get(metric);
  if (!fam2) target.set(metric, (fam2 = new Map()));
  const k = metric.labels.map((l) => labels[l]).join('\u0000');
  const prev = fam2.get(k);
  if (!prev) fam2.set(k, { labels, value, hist });
  else {
    prev.value += value; // two raw keys folded into one label set ("_other", "unknown")
    if (prev.hist && hist) prev.hist = mergeFolded(prev.hist, hist);
  }
}

export function collectMap(fam: LoadedFamily, e: MapExport, ctx: CollectContext): void {
  const map = fam.maps.get(e.map);
  if (!map) return;
  let lay = layoutCache.get(e);
  if (!lay) layoutCache.set(e, (lay = resolve(fam, e, map)));
  const out = new Map<MetricDef, Map<string, Series>>();
  const retired = retiredCounts.get(e);
  for (const [metric, series] of retired ?? []) out.set(metric, new Map([...series].map(([k, x]) => [k, { ...x }])));
  let carry: Map<MetricDef, Map<string, Series>> | undefined;
  const add = (metric: MetricDef, keyLabels: Record<string, string>, value: number, hist?: Series['hist'], extra?: Readonly<Record<string, string>>): void => {
    fold(out, metric, keyLabels, value, hist, extra);
    if (carry && metric.type !== 'gauge') fold(carry, metric, keyLabels, value, hist, extra);
  };

  let entries = 0;
  for (const [k, v] of map.entries()) {
    entries++;
    const labels: Record<string, string> = {};
    let gone = false;
    let retire = false;
    const field = (name: string): bigint => {
      const f = lay.keyFields.find((x) => x.name === name);
      if (!f) throw new Error(`map ${e.map}: key has no field ${name}`);
      return u64(k, f.offset, f.size);
    };
    for (const l of lay.labels) {
      const decoded = l.decode(u64(k, l.field.offset, l.field.size), ctx, field);
      if (decoded === null) { gone = true; break; }
      if (decoded === RETIRE_INTO_OTHER) retire = true;
      labels[l.label] = decoded === RETIRE_INTO_OTHER ? OVERFLOW_VALUE : decoded;
    }
    if (gone) {
      map.delete(k);
      continue;
    }
    if (retire) {
      // Counted one last time into this collection and, from now on, from the carry.
      carry = retiredCounts.get(e);
      if (!carry) retiredCounts.set(e, (carry = new Map()));
    }
    // The one place a cgroup label grows its Kubernetes labels (catalog CG), for every family.
    if (labels.cgroup !== undefined) Object.assign(labels, cgroupLabels(ctx, labels.cgroup));
    const scalars: Record<string, number> = {};
    for (const { fx, field: f, sum } of lay.values) {
      if ('log2' in fx) {
        const n = f.nelems ?? 0;
        const slots = new Array<number>(n);
        for (let i = 0; i < n; i++) slots[i] = Number(v.readBigUInt64LE(f.offset + i * 8));
        const h = foldLog2(slots, fx.log2, sum ? Number(u64(v, sum.offset, sum.size)) : undefined);
        add(fx.metric, labels, h.count, h, fx.labels);
      } else {
        const val = Number(u64(v, f.offset, f.size));
        scalars[fx.field] = val;
        add(fx.metric, labels, val, undefined, fx.labels);
      }
    }
    for (const d of e.derived ?? []) add(d.metric, labels, d.compute(scalars));
    if (retire) {
      carry = undefined;
      map.delete(k);
    }
  }
  for (const metric of new Set(e.fields.map((fx) => fx.metric))) ctx.store.replace(metric, out.get(metric)?.values() ?? []);
  for (const d of e.derived ?? []) ctx.store.replace(d.metric, out.get(d.metric)?.values() ?? []);
  ctx.store.set(M.mapEntries, { family: fam.spec.name, map: e.map }, entries);
  ctx.store.set(M.mapCapacity, { family: fam.spec.name, map: e.map }, map.maxEntries);
}
