// Maps -> metrics, driven by each family's MapExport declarations and the object's BTF:
// keys and values are decoded by field name, so the C structs are the one source of truth.
import type { Btf, StructLayout } from '../../bpf/btf.js';
import type { LoadedFamily } from '../loader.js';
import type { FieldExport, MapExport } from '../probes/model.js';
import type { MapFd } from '../../bpf/libbpf.js';
import type { MetricDef } from '../catalog.js';
import { M } from '../catalog.js';
import type { Log2Range } from './histogram.js';
import type { MetricStore, Series } from '../export/store.js';
import type { LabelBudget } from './budget.js';
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
    if (ctx.gc && !r.isAlive(raw)) {
      // The cgroup was removed: drop its map entry and series, free its budget slot.
      ctx.budget.release('cgroup', path);
      return null;
    }
    return ctx.budget.admit('cgroup', path);
  },
  number(raw) {
    return raw.toString();
  },
};

// A u64 as a double without BigInt (counts and sums stay below 2^53 in practice; above it
// they lose precision, never magnitude).
function u64At(buf: Buffer, off: number): number {
  return buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * 4294967296;
}

function uintAt(buf: Buffer, off: number, size: number): number {
  switch (size) {
    case 8: return u64At(buf, off);
    case 4: return buf.readUInt32LE(off);
    case 2: return buf.readUInt16LE(off);
    case 1: return buf.readUInt8(off);
    default: throw new Error(`unsupported field size ${size}`);
  }
}

function u64(buf: Buffer, off: number, size: number): bigint {
  return size === 8 ? buf.readBigUInt64LE(off) : BigInt(uintAt(buf, off, size));
}

type Field = StructLayout['fields'][number];

// Field layouts resolved once per map export, not per entry at every scrape.
interface Decoded {
  keyFields: readonly Field[];
  labels: { label: string; field: Field; decode: Decoder }[];
  values: { fx: FieldExport; field: Field; sum?: Field; range?: Log2Range }[];
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
      decode: decoderOf(kl.decoder, e.map),
    })),
    values: e.fields.map((fx) => {
      const range = fx.metric.type === 'histogram' ? fx.metric.buckets : undefined;
      if (fx.metric.type === 'histogram' && !range) throw new Error(`histogram ${fx.metric.name} has no catalog buckets`);
      return { fx, field: fieldOf(value, fx.field, map.valueSize), sum: fx.sumField ? fieldOf(value, fx.sumField, map.valueSize) : undefined, range };
    }),
  };
}

function decoderOf(d: string | Decoder, map: string): Decoder {
  if (typeof d === 'function') return d;
  const found = decoders[d];
  if (!found) throw new Error(`map ${map}: unknown label decoder "${d}" (known: ${Object.keys(decoders).join(', ')})`);
  return found;
}

const layoutCache = new WeakMap<MapExport, Decoded>();

/** One metric's series being rebuilt from a map: previous objects are reused by key. */
interface Rebuild {
  metric: MetricDef;
  previous: ReadonlyMap<string, Series>;
  next: Map<string, Series>;
  commit(): void;
}

function seriesFor(r: Rebuild, all: Readonly<Record<string, string>>): { s: Series; fresh: boolean } {
  let k = '';
  for (const l of r.metric.labels) k += `${all[l] ?? ''}\u0000`;
  const seen = r.next.get(k);
  if (seen) return { s: seen, fresh: false }; // two raw keys folded into one label set ("_other", "unknown")
  let s = r.previous.get(k);
  if (!s) {
    // Only the metric's own labels: a map key often carries more (a nested-state key has op
    // and result; its saves counter is per flag), and the exporter prints what a series has.
    const labels: Record<string, string> = {};
    for (const l of r.metric.labels) labels[l] = all[l] ?? '';
    s = { labels, value: 0 };
  }
  r.next.set(k, s);
  return { s, fresh: true };
}

/** Per-CPU slots summed straight from the value buffer into the series' own array. */
function fillHistogram(s: Series, fresh: boolean, range: Log2Range, v: Buffer, vOff: number, cpus: number, stride: number, f: Field, sum: Field | undefined): void {
  const n = f.nelems ?? 0;
  let h = s.hist;
  if (!h || h.slots.length !== n) h = { range, slots: new Float64Array(n), sum: 0, count: 0 };
  if (fresh) {
    h.slots.fill(0);
    h.sum = 0;
    h.count = 0;
  }
  let count = 0;
  let est = 0;
  for (let i = 0; i < n; i++) {
    let c = 0;
    for (let cpu = 0; cpu < cpus; cpu++) c += u64At(v, vOff + cpu * stride + f.offset + i * 8);
    if (c === 0) continue;
    h.slots[i]! += c;
    count += c;
    est += c * (i === 0 ? 1 : 1.5 * 2 ** i);
  }
  let raw = 0;
  if (sum) for (let cpu = 0; cpu < cpus; cpu++) raw += uintAt(v, vOff + cpu * stride + sum.offset, sum.size);
  h.count += count;
  h.sum += (sum ? raw : est) * range.scale;
  s.hist = h;
  s.value = h.count;
}

export function collectMap(fam: LoadedFamily, e: MapExport, ctx: CollectContext): void {
  const map = fam.maps.get(e.map);
  if (!map) return;
  let lay = layoutCache.get(e);
  if (!lay) layoutCache.set(e, (lay = resolve(fam, e, map)));
  const rebuilds = new Map<MetricDef, Rebuild>();
  const rebuildOf = (metric: MetricDef): Rebuild => {
    let r = rebuilds.get(metric);
    if (!r) rebuilds.set(metric, (r = { metric, ...ctx.store.rebuild(metric) }));
    return r;
  };
  const values = lay.values.map((x) => ({ ...x, r: rebuildOf(x.fx.metric) }));
  const derived = (e.derived ?? []).map((d) => ({ d, r: rebuildOf(d.metric) }));
  const keyFields = lay.keyFields;
  let curKey: Buffer = Buffer.alloc(0);
  const field = (name: string): bigint => {
    const f = keyFields.find((x) => x.name === name);
    if (!f) throw new Error(`map ${e.map}: key has no field ${name}`);
    return u64(curKey, f.offset, f.size);
  };

  let entries = 0;
  const scalars: Record<string, number> = {};
  for (const [k, v] of map.entries()) {
    entries++;
    curKey = k;
    const labels: Record<string, string> = {};
    let gone = false;
    for (const l of lay.labels) {
      const decoded = l.decode(u64(k, l.field.offset, l.field.size), ctx, field);
      if (decoded === null) { gone = true; break; }
      labels[l.label] = decoded;
    }
    if (gone) {
      map.delete(k);
      continue;
    }
    // The one place a cgroup label grows its Kubernetes labels (catalog CG), for every family.
    if (labels.cgroup !== undefined) Object.assign(labels, cgroupLabels(ctx, labels.cgroup));
    for (const { fx, field: f, sum, range, r } of values) {
      const all = fx.labels ? { ...labels, ...fx.labels } : labels;
      const { s, fresh } = seriesFor(r, all);
      if (range) fillHistogram(s, fresh, range, v, 0, 1, 0, f, sum);
      else {
        const val = uintAt(v, f.offset, f.size);
        scalars[fx.field] = val;
        s.value = fresh ? val : s.value + val;
      }
    }
    for (const { d, r } of derived) {
      const { s, fresh } = seriesFor(r, labels);
      const val = d.compute(scalars);
      s.value = fresh ? val : s.value + val;
    }
  }
  for (const r of rebuilds.values()) r.commit();
  ctx.store.set(M.mapEntries, { family: fam.spec.name, map: e.map }, entries);
  ctx.store.set(M.mapCapacity, { family: fam.spec.name, map: e.map }, map.maxEntries);
}
