// Maps -> metrics, driven by each family's MapExport declarations and the object's BTF:
// keys and values are decoded by field name, so the C structs are the one source of truth.
import type { Btf, StructLayout } from '../../bpf/btf.js';
import type { CollectContext, Decoder, FamilySpec, FamilyView, FieldExport, MapExport, MapView } from '../model/family.js';
import { RETIRE_INTO_OTHER } from '../model/family.js';
import { isPerObject, type MetricDef } from '../model/metric.js';
import { AGENT_METRICS as M } from '../agent-metrics.js';
import { mergeInto, type Log2Histogram, type Log2Range } from './histogram.js';
import type { MetricStore, Series } from '../export/store.js';
import { OVERFLOW_VALUE } from './budget.js';
import { NO_KUBE_LABELS, type KubeLabels } from '../k8s.js';

export { RETIRE_INTO_OTHER, type CollectContext, type Decoder };

export const UNKNOWN_CGROUP = 'unknown';

/** namespace/pod/container of a decoded cgroup label ('' when none: agent/k8s.ts). */
export function cgroupLabels(ctx: CollectContext, cgPath: string): KubeLabels {
  return ctx.cgroups?.resolver.labelsOf(cgPath) ?? NO_KUBE_LABELS;
}

export const decoders: Record<string, Decoder> = {
  cgroup(raw, ctx) {
    const r = ctx.cgroups?.resolver;
    if (!r) return UNKNOWN_CGROUP;
    const path = r.resolve(raw);
    if (path === undefined) {
      // resolve() counts every undefined answer as unresolved (CgroupResolver.stats), and
      // reading those stats here copied them twice per entry.
      ctx.store.inc(M.cgroupUnresolved);
      return UNKNOWN_CGROUP;
    }
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
    case 8:
      return u64At(buf, off);
    case 4:
      return buf.readUInt32LE(off);
    case 2:
      return buf.readUInt16LE(off);
    case 1:
      return buf.readUInt8(off);
    default:
      throw new Error(`unsupported field size ${size}`);
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

function resolve(fam: FamilyView, e: MapExport, map: MapView): Decoded {
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
  // Own keys only: "constructor" or "toString" must not resolve to Object.prototype's.
  const found = Object.hasOwn(decoders, d) ? decoders[d] : undefined;
  if (!found) throw new Error(`map ${map}: unknown label decoder "${d}" (known: ${Object.keys(decoders).join(', ')})`);
  return found;
}

/** Every label decoder a family names must exist. The agent checks this when it is built,
 * before any BPF is loaded: a misspelt name is one line at start, not a map that never
 * exports (collectMap would only find out at the first scrape, and then at every one). */
export function checkDecoders(spec: FamilySpec): void {
  for (const e of spec.maps) {
    for (const kl of e.labels) {
      if (typeof kl.decoder === 'function') continue;
      try {
        decoderOf(kl.decoder, e.map);
      } catch (err) {
        throw new Error(`family ${spec.name}, label ${kl.label} of ${(err as Error).message}`, { cause: err });
      }
    }
  }
}

/** Field layouts, by the BTF they were resolved against (a live object's, or a replayed
 * trace's) and then by map export: a spec met again with another object's BTF resolves again. */
const layoutCache = new WeakMap<Btf, WeakMap<MapExport, Decoded>>();

function layoutFor(fam: FamilyView, e: MapExport, map: MapView): Decoded {
  let byExport = layoutCache.get(fam.btf);
  if (!byExport) layoutCache.set(fam.btf, (byExport = new WeakMap()));
  let lay = byExport.get(e);
  if (!lay) byExport.set(e, (lay = resolve(fam, e, map)));
  return lay;
}

/**
 * What the last collection made of one map entry, by its raw key: the decoded key labels,
 * a hash of its value bytes (every CPU's copy) and the series each value field went to.
 * Most entries do not change between two scrapes at fleet scale; when an entry's labels
 * decode the same (decoders still run every time: cgroup linger, budget, VM exits) and its
 * bytes hash the same, its series keep their values and are only marked as seen, skipping
 * the series-key strings, the store lookups and the per-CPU folding. Only for series that
 * entry alone fills (MetricStore.keepable); any doubt takes the full path.
 */
interface EntryMemo {
  labels: string[];
  h1: number;
  h2: number;
  series: (Series | undefined)[];
  collection: number;
}
const memos = new WeakMap<MapExport, Map<string, EntryMemo>>();

/** Two 32-bit lanes over the value's bytes on every CPU (FNV-1a-like and a multiply-rotate
 * mix), word by word, then any trailing bytes. */
function hashValue(e: Value, out: { h1: number; h2: number }): void {
  let h1 = 0x811c9dc5;
  let h2 = 0x9e3779b9;
  const bytes = e.stride || e.v.length;
  const wordsPer = bytes >> 2;
  for (let c = 0; c < e.cpus; c++) {
    const off = e.off + c * bytes;
    const base = off >> 2;
    for (let i = base; i < base + wordsPer; i++) {
      const x = e.w[i]!;
      h1 = Math.imul(h1 ^ x, 0x01000193);
      h2 = Math.imul((h2 ^ x) + i, 0x85ebca6b);
      h2 = (h2 << 13) | (h2 >>> 19);
    }
    for (let b = off + wordsPer * 4; b < off + bytes; b++) h1 = Math.imul(h1 ^ e.v[b]!, 0x01000193);
  }
  out.h1 = h1;
  out.h2 = h2;
}

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

/** A metric's series key for an entry's labels. */
function keyOf(t: Target, all: Readonly<Record<string, string>>, entryKey: string): string {
  return t.sameLabels ? entryKey : keyFor(t.metric.labels, all);
}

/**
 * A series first met: undefined for a per-object one that would be born at zero (`nonZero`
 * false): a cgroup or VM gets a series for what happened to it, not one per catalog metric
 * (README "Series lifecycle").
 */
function born(store: MetricStore, t: Target, all: Readonly<Record<string, string>>, k: string, nonZero: boolean): Series | undefined {
  if (t.perObject && !nonZero) return undefined;
  // Every field a series will get, so they stay in the object (no property array each).
  return store.adopt(t.metric, k, { labels: ownLabels(t.metric, all), value: 0, hist: undefined, cache: undefined, epoch: 0, visits: 0 });
}

/** Only the metric's own labels: a map key often carries more (a nested-state key has op and
 * result; its saves counter is per flag), and the exporter prints what a series has. */
function ownLabels(metric: MetricDef, all: Readonly<Record<string, string>>): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const l of metric.labels) labels[l] = all[l] ?? '';
  return labels;
}

/** One map value as collectMap reads it: `cpus` copies `stride` bytes apart (per-CPU maps
 * in a batched read; 1 elsewhere) starting at byte `off` of `v`, with `w` the same bytes as
 * 32-bit words for the u64 fields (slots, counters), which are 8-byte aligned in the C
 * structs (families/<name>/<name>.bpf.c) and so in the value. */
interface Value {
  v: Buffer;
  w: Uint32Array;
  off: number;
  cpus: number;
  stride: number;
}

/** The buffer's bytes as 32-bit words (copied when the buffer is not 4-byte aligned). */
function words(buf: Buffer): Uint32Array {
  if (buf.byteOffset % 4 === 0) return new Uint32Array(buf.buffer, buf.byteOffset, buf.length >> 2);
  const c = new Uint8Array(buf.length & ~3);
  c.set(buf.subarray(0, c.length));
  return new Uint32Array(c.buffer);
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function allKeepable(store: MetricStore, series: readonly (Series | undefined)[]): boolean {
  for (const x of series) if (x !== undefined && !store.keepable(x)) return false;
  return true;
}

/** A field summed over the CPUs of a value. */
function sumCpus(e: Value, fieldOff: number, size: number): number {
  let t = 0;
  if (size === 8) {
    for (let c = 0, i = (e.off + fieldOff) >> 2; c < e.cpus; c++, i += e.stride >> 2) t += e.w[i]! + e.w[i + 1]! * 4294967296;
  } else {
    for (let c = 0; c < e.cpus; c++) t += uintAt(e.v, e.off + fieldOff + c * e.stride, size);
  }
  return t;
}

/** Per-CPU slots summed straight from the value into the series' own array. */
function fillHistogram(s: Series, fresh: boolean, range: Log2Range, e: Value, f: Field, sum: Field | undefined): void {
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
    const c = sumCpus(e, f.offset + i * 8, 8);
    if (c === 0) continue;
    h.slots[i]! += c;
    count += c;
    est += c * (i === 0 ? 1 : 1.5 * 2 ** i);
  }
  h.count += count;
  h.sum += (sum ? sumCpus(e, sum.offset, sum.size) : est) * range.scale;
  s.hist = h;
  s.value = h.count;
}

/** Whether a histogram field holds any observation: any non-zero word on any CPU. */
function anySlot(e: Value, f: Field): boolean {
  const words2 = (f.nelems ?? 0) * 2;
  for (let c = 0; c < e.cpus; c++) {
    const base = (e.off + c * e.stride + f.offset) >> 2;
    for (let i = 0; i < words2; i++) if (e.w[base + i] !== 0) return true;
  }
  return false;
}

/** Every entry of a map as one contiguous read: `count` keys of `keySize` bytes in `keys`,
 * the values as `val` with `off` stepping by `valueStride`. Live maps come in one batched read
 * (bpf/libbpf.ts readAll; per-CPU values stay per CPU and are summed field by field here);
 * replayed and recorded maps, already folded, are copied together. No object per entry: at
 * 2,000 cgroups x 200 VMs a collection meets ~10,000 entries. */
function readEntries(map: MapView): { count: number; keys: Buffer; keySize: number; valueStride: number; val: Value } {
  if (map.readAll) {
    const r = map.readAll();
    const stride = map.percpu ? Math.ceil(map.valueSize / 8) * 8 : r.valueStride;
    const cpus = map.percpu ? r.valueStride / stride : 1;
    return { count: r.count, keys: r.keys, keySize: r.keySize, valueStride: r.valueStride, val: { v: r.values, w: words(r.values), off: 0, cpus, stride } };
  }
  const es = [...map.entries()];
  const values = Buffer.concat(es.map(([, v]) => v));
  return {
    count: es.length,
    keys: Buffer.concat(es.map(([k]) => k)),
    keySize: map.keySize,
    valueStride: map.valueSize,
    val: { v: values, w: words(values), off: 0, cpus: 1, stride: map.valueSize },
  };
}

export function collectMap(fam: FamilyView, e: MapExport, ctx: CollectContext): void {
  const map = fam.maps.get(e.map);
  if (!map) return;
  const lay = layoutFor(fam, e, map);
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
  let curKeys: Buffer = Buffer.alloc(0);
  let curOff = 0;
  const field = (name: string): bigint => {
    const f = keyFields.find((x) => x.name === name);
    if (!f) throw new Error(`map ${e.map}: key has no field ${name}`);
    return u64(curKeys, curOff + f.offset, f.size);
  };

  // Final counts of entries retired into "_other" in earlier collections come first, so
  // `_other` never goes backwards when those entries leave the map.
  const retired = retiredCounts.get(e);
  for (const [metric, carried] of retired ?? []) {
    for (const [k, c] of carried) {
      const s2 = store.visit(metric, k) ?? store.adopt(metric, k, { labels: { ...c.labels }, value: 0 });
      addCarried(s2, store.fresh, c);
    }
  }
  let carry: Map<MetricDef, Map<string, Series>> | undefined;
  const carryInto = (t: Target, all: Readonly<Record<string, string>>, entryKey: string, value: number, hist?: Log2Histogram): void => {
    if (!carry || t.metric.type === 'gauge') return;
    let fam2 = carry.get(t.metric);
    if (!fam2) carry.set(t.metric, (fam2 = new Map()));
    const k = keyOf(t, all, entryKey);
    const labels = ownLabels(t.metric, all);
    addCarried(fam2.get(k) ?? fam2.set(k, { labels, value: 0 }).get(k)!, false, { labels, value, hist });
  };

  let memo = memos.get(e);
  if (!memo) memos.set(e, (memo = new Map()));
  const collection = store.collection;
  const hash = { h1: 0, h2: 0 };
  // Every label decodes on the way to the memo check (an entry whose labels do not is gone).
  const decodedNow = new Array<string>(lay.labels.length).fill('');
  let entries = 0;
  const all = readEntries(map);
  const { keys, keySize: ks, val } = all;
  curKeys = keys;
  for (let i = 0; i < all.count; i++) {
    entries++;
    const koff = i * ks;
    val.off = i * all.valueStride;
    curOff = koff;
    let gone = false;
    let retire = false;
    for (let li = 0; li < lay.labels.length; li++) {
      const l = lay.labels[li]!;
      const decoded = l.decode(u64(keys, koff + l.field.offset, l.field.size), ctx, field);
      if (decoded === null) {
        gone = true;
        break;
      }
      if (decoded === RETIRE_INTO_OTHER) retire = true;
      decodedNow[li] = decoded;
    }
    const rawKey = keys.toString('latin1', koff, koff + ks);
    if (gone) {
      map.delete(keys.subarray(koff, koff + ks));
      memo.delete(rawKey);
      continue;
    }
    hashValue(val, hash);
    const m = memo.get(rawKey);
    if (
      !retire &&
      !carry &&
      m &&
      m.collection === collection - 1 &&
      m.h1 === hash.h1 &&
      m.h2 === hash.h2 &&
      sameStrings(m.labels, decodedNow) &&
      allKeepable(store, m.series)
    ) {
      for (let si = 0; si < m.series.length; si++) if (m.series[si]) store.keep(m.series[si]!);
      m.collection = collection;
      continue;
    }
    // Only past the unchanged-entry shortcut: the labels object is the slow path's.
    const labels: Record<string, string> = {};
    for (let i = 0; i < decodedNow.length; i++) labels[lay.labels[i]!.label] = decodedNow[i] === RETIRE_INTO_OTHER ? OVERFLOW_VALUE : decodedNow[i]!;
    if (retire) {
      // Counted one last time into this collection and, from now on, from the carry.
      carry = retiredCounts.get(e);
      if (!carry) retiredCounts.set(e, (carry = new Map()));
    }
    // The one place a cgroup label grows its Kubernetes labels (catalog CG), for every family.
    if (labels.cgroup !== undefined) Object.assign(labels, cgroupLabels(ctx, labels.cgroup));
    const entryKey = keyFor(mapLabels, labels);
    const memoSeries = new Array<Series | undefined>(values.length);
    let vi = 0;
    for (const { fx, field: f, sum, range, t } of values) {
      const all = fx.labels ? { ...labels, ...fx.labels } : labels;
      if (range) {
        const k2 = keyOf(t, all, entryKey);
        const s2 = store.visit(t.metric, k2) ?? born(store, t, all, k2, anySlot(val, f));
        memoSeries[vi++] = s2;
        if (s2) fillHistogram(s2, store.fresh, range, val, f, sum);
        if (carry) {
          const tmp: Series = { labels: {}, value: 0 };
          fillHistogram(tmp, true, range, val, f, sum);
          carryInto(t, all, entryKey, tmp.value, tmp.hist);
        }
        continue;
      }
      const n = sumCpus(val, f.offset, f.size);
      const k2 = keyOf(t, all, entryKey);
      const s2 = store.visit(t.metric, k2) ?? born(store, t, all, k2, n !== 0);
      memoSeries[vi++] = s2;
      if (s2) s2.value = store.fresh ? n : s2.value + n;
      carryInto(t, all, entryKey, n);
    }
    if (retire) {
      carry = undefined;
      map.delete(keys.subarray(koff, koff + ks));
      memo.delete(rawKey);
    } else memo.set(rawKey, { labels: decodedNow.slice(), h1: hash.h1, h2: hash.h2, series: memoSeries, collection });
  }
  memo.forEach((x, rk) => {
    if (x.collection !== collection) memo!.delete(rk); // entries gone from the map
  });
  for (const t of targets.values()) store.collected(t.metric);
  ctx.store.set(M.mapEntries, { family: fam.spec.name, map: e.map }, entries);
  ctx.store.set(M.mapCapacity, { family: fam.spec.name, map: e.map }, map.maxEntries);
}
