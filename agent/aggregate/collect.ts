// Maps -> metrics, driven by each family's MapExport declarations and the object's BTF:
// keys and values are decoded by field name, so the C structs are the one source of truth.
import type { Btf, StructLayout } from '../../bpf/btf.js';
import type { LoadedFamily } from '../loader.js';
import type { FieldExport, MapExport } from '../probes/model.js';
import type { MapFd } from '../../bpf/libbpf.js';
import type { MapView } from '../sources/source.js';
import type { MetricDef } from '../catalog.js';
import { isPerObject, M } from '../catalog.js';
import { log2Histogram, mergeInto, type Log2Histogram, type Log2Range } from './histogram.js';
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
/** Final counts of retired entries folded into "_other", per map export (RETIRE_INTO_OTHER). */
const retiredCounts = new WeakMap<MapExport, Map<MetricDef, Map<string, Series>>>();

/** Adds a carried series (a retired entry's final counts) into `s`. */
function addCarried(s: Series, fresh: boolean, c: Series): void {
  if (c.hist) {
    if (fresh || !s.hist) s.hist = { ...c.hist, slots: Float64Array.from(c.hist.slots) };
    else mergeInto(s.hist, c.hist);
    s.value = s.hist.count;
  } else s.value = fresh ? c.value : s.value + c.value;
}

/** What collectMap knows of one metric it fills from a map. */
interface Target {
  metric: MetricDef;
  /** Whether the metric's labels are the map's key labels in order (its key is the entry's). */
  sameLabels: boolean;
  /** A per-object series (cgroup or VM) is born at its first non-zero value. */
  perObject: boolean;
}

function keyFor(labels: readonly string[], all: Readonly<Record<string, string>>): string {
  let k = '';
  for (const l of labels) k += `${all[l] ?? ''}\u0000`;
  return k;
}

/**
 * The series of this label set in the collection under way (MetricStore.visit). Undefined
 * for a per-object series that does not exist yet and would be born at zero: a cgroup or VM
 * gets a series for what happened to it, not one per catalog metric (README "Series
 * lifecycle"). `nonZero` is asked only then.
 */
function seriesFor(store: MetricStore, t: Target, all: Readonly<Record<string, string>>, entryKey: string, nonZero: () => boolean): { s: Series; fresh: boolean } | undefined {
  const k = t.sameLabels ? entryKey : keyFor(t.metric.labels, all);
  return store.visit(t.metric, k, () => {
    if (t.perObject && !nonZero()) return undefined;
    // Only the metric's own labels: a map key often carries more (a nested-state key has op
    // and result; its saves counter is per flag), and the exporter prints what a series has.
    const labels: Record<string, string> = {};
    for (const l of t.metric.labels) labels[l] = all[l] ?? '';
    return { labels, value: 0 };
  });
}

/** A u64 field summed over the CPUs of a per-CPU value (cpus = 1 for other maps). */
function sumCpus(v: Buffer, off: number, cpus: number, stride: number, size: number): number {
  let t = 0;
  for (let c = 0; c < cpus; c++) t += uintAt(v, off + c * stride, size);
  return t;
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
    const c = sumCpus(v, vOff + f.offset + i * 8, cpus, stride, 8);
    if (c === 0) continue;
    h.slots[i]! += c;
    count += c;
    est += c * (i === 0 ? 1 : 1.5 * 2 ** i);
  }
  h.count += count;
  h.sum += (sum ? sumCpus(v, vOff + sum.offset, cpus, stride, sum.size) : est) * range.scale;
  s.hist = h;
  s.value = h.count;
}

/** Whether a histogram field holds any observation, before a series is made for it. */
function anySlot(v: Buffer, vOff: number, cpus: number, stride: number, f: Field): boolean {
  const n = f.nelems ?? 0;
  for (let i = 0; i < n; i++) if (sumCpus(v, vOff + f.offset + i * 8, cpus, stride, 8) !== 0) return true;
  return false;
}

/** Every entry of a map: one batched read into contiguous buffers where the map can
 * (bpf/libbpf.ts readAll; per-CPU values stay per CPU and are summed field by field here),
 * else entry by entry (replayed and recorded maps, already folded). */
function* mapEntries(map: MapView): Generator<{ k: Buffer; v: Buffer; vOff: number; cpus: number; stride: number }> {
  if (map.readAll) {
    const r = map.readAll();
    const stride = map.percpu ? Math.ceil(map.valueSize / 8) * 8 : r.valueStride;
    const cpus = map.percpu ? r.valueStride / stride : 1;
    const e = { k: r.keys, v: r.values, vOff: 0, cpus, stride };
    for (let i = 0; i < r.count; i++) {
      e.k = r.keys.subarray(i * r.keySize, (i + 1) * r.keySize);
      e.vOff = i * r.valueStride;
      yield e;
    }
    return;
  }
  for (const [k, v] of map.entries()) yield { k, v, vOff: 0, cpus: 1, stride: 0 };
}

export function collectMap(fam: LoadedFamily, e: MapExport, ctx: CollectContext): void {
  const map = fam.maps.get(e.map);
  if (!map) return;
  let lay = layoutCache.get(e);
  if (!lay) layoutCache.set(e, (lay = resolve(fam, e, map)));
  const mapLabels = lay.labels.map((l) => l.label);
  const targets = new Map<MetricDef, Target>();
  const targetOf = (metric: MetricDef, fixed: boolean): Target => {
    let t = targets.get(metric);
    if (!t) {
      const sameLabels = !fixed && metric.labels.length === mapLabels.length && metric.labels.every((l, i) => l === mapLabels[i]);
      targets.set(metric, (t = { metric, sameLabels, perObject: isPerObject(metric) }));
    }
    return t;
  };
  const values = lay.values.map((x) => ({ ...x, t: targetOf(x.fx.metric, !!x.fx.labels) }));
  const store = ctx.store;
  const keyFields = lay.keyFields;
  let curKey: Buffer = Buffer.alloc(0);
  const field = (name: string): bigint => {
    const f = keyFields.find((x) => x.name === name);
    if (!f) throw new Error(`map ${e.map}: key has no field ${name}`);
    return u64(curKey, f.offset, f.size);
  };
  // Final counts of entries retired into "_other" in earlier collections come first, so
  // `_other` never goes backwards when those entries leave the map.
  const retired = retiredCounts.get(e);
  for (const [metric, carried] of retired ?? []) {
    for (const [k, c] of carried) {
      const got = store.visit(metric, k, () => ({ labels: { ...c.labels }, value: 0 }))!;
      addCarried(got.s, got.fresh, c);
    }
  }
  let carry: Map<MetricDef, Map<string, Series>> | undefined;
  const carryInto = (t: Target, all: Readonly<Record<string, string>>, entryKey: string, value: number, hist?: Log2Histogram): void => {
    if (!carry || t.metric.type === 'gauge') return;
    let fam2 = carry.get(t.metric);
    if (!fam2) carry.set(t.metric, (fam2 = new Map()));
    const k = t.sameLabels ? entryKey : keyFor(t.metric.labels, all);
    const labels: Record<string, string> = {};
    for (const l of t.metric.labels) labels[l] = all[l] ?? '';
    addCarried(fam2.get(k) ?? fam2.set(k, { labels, value: 0 }).get(k)!, false, { labels, value, hist });
  };

  let entries = 0;
  for (const { k, v, vOff, cpus, stride } of mapEntries(map)) {
    entries++;
    curKey = k;
    const labels: Record<string, string> = {};
    let gone = false;
    let retire = false;
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
    const entryKey = keyFor(mapLabels, labels);
    for (const { fx, field: f, sum, range, t } of values) {
      const all = fx.labels ? { ...labels, ...fx.labels } : labels;
      if (range) {
        const got = seriesFor(store, t, all, entryKey, () => anySlot(v, vOff, cpus, stride, f));
        if (got) fillHistogram(got.s, got.fresh, range, v, vOff, cpus, stride, f, sum);
        if (carry) {
          const h = log2Histogram([], range);
          const tmp: Series = { labels: {}, value: 0, hist: h };
          fillHistogram(tmp, true, range, v, vOff, cpus, stride, f, sum);
          carryInto(t, all, entryKey, tmp.value, tmp.hist);
        }
        continue;
      }
      const val = sumCpus(v, vOff + f.offset, cpus, stride, f.size);
      const got = seriesFor(store, t, all, entryKey, () => val !== 0);
      if (got) got.s.value = got.fresh ? val : got.s.value + val;
      carryInto(t, all, entryKey, val);
    }
    if (retire) {
      carry = undefined;
      map.delete(k);
    }
  }
  for (const t of targets.values()) store.collected(t.metric);
  ctx.store.set(M.mapEntries, { family: fam.spec.name, map: e.map }, entries);
  ctx.store.set(M.mapCapacity, { family: fam.spec.name, map: e.map }, map.maxEntries);
}
