// The kernel's log2 histograms, kept as raw slot counts and turned into the two Prometheus
// shapes only when exposed. The BPF side (bpf/src/hvwatch.h log2_slot) puts value v in slot
// floor(log2(v)), v <= 1 in slot 0, so slot i holds the integers [2^i, 2^(i+1) - 1]; its exact
// inclusive upper bound is 2^(i+1) - 1, scaled into the metric's base unit (ns -> seconds).
//
// - Classic (text, OpenMetrics): a fixed `le` set per metric (catalog `buckets`: every
//   `classicStep`-th power of two in [minSlot, maxSlot], plus maxSlot), identical for every series of the
//   metric so that `sum by (le)` stays right. The bounds are exact slot bounds, so no count
//   is ever attributed to the wrong bucket; only resolution is given up.
// - Native (protobuf, schema 0): bucket k holds (2^(k-1), 2^k]. Slot i goes to the k nearest
//   its upper bound in log space, round(log2((2^(i+1) - 1) * scale)). For unit-scaled values
//   (pages) that is k = i + 1, which holds all of the slot but its lowest value 2^i (on the
//   bucket's lower edge); for ns -> s it is k = i - 29, whose bounds sit 7 % below the
//   slot's (1e-9 = 2^-29.897). Either way a quantile moves by less than one bucket. Every
//   slot is kept (none folds into a first bucket or into +Inf); only populated ones are sent.

export interface Log2Range {
  /** Slots below this fold into the first classic bucket. */
  minSlot: number;
  /** Slots above this count only towards classic +Inf. */
  maxSlot: number;
  /** Multiply raw integer values by this to get the base unit (1e-9 for ns -> s). */
  scale: number;
  /** Classic buckets at every classicStep-th slot bound (1: every slot). */
  classicStep: number;
}

/** One series' histogram: slot counts summed over CPUs, in raw kernel slots. */
export interface Log2Histogram {
  range: Log2Range;
  slots: Float64Array;
  /** In the base unit. */
  sum: number;
  count: number;
}

/** The cumulative view (`hvwatch check`, baselines): bounds and counts at every slot. */
export interface FoldedHistogram {
  /** Upper bounds (le), ascending, without +Inf. */
  bounds: number[];
  /** Cumulative counts per bound, then the +Inf count last (= count). */
  cumulative: number[];
  sum: number;
  count: number;
}

function slotBound(i: number, scale: number): number {
  // toPrecision keeps le labels clean (4095e-9, not 4.095000000000001e-6).
  return Number(((2 ** (i + 1) - 1) * scale).toPrecision(12));
}

/** Every slot's bound in [minSlot, maxSlot]: the full-resolution cumulative view. */
export function log2Bounds(r: Pick<Log2Range, 'minSlot' | 'maxSlot' | 'scale'>): number[] {
  const out: number[] = [];
  for (let i = r.minSlot; i <= r.maxSlot; i++) out.push(slotBound(i, r.scale));
  return out;
}

export interface ClassicLayout {
  /** le values, ascending, without +Inf. */
  bounds: number[];
  /** le strings as written in the exposition. */
  text: string[];
  /** For each bound, the last kernel slot it covers. */
  lastSlot: number[];
}

const classicCache = new WeakMap<Log2Range, ClassicLayout>();

/** The metric's fixed classic `le` set: the bounds of the slots i in [minSlot, maxSlot] with
 * (i + 1) % classicStep === 0, i.e. le = 2^(classicStep k) - 1 raw units (every
 * classicStep-th power of two, the same grid for every metric of a unit), and maxSlot itself
 * so the top of the range stays a finite bucket. Slots below the first bound fold into it. */
export function classicLayout(r: Log2Range): ClassicLayout {
  let c = classicCache.get(r);
  if (c) return c;
  const lastSlot: number[] = [];
  for (let i = r.minSlot; i <= r.maxSlot; i++) if ((i + 1) % r.classicStep === 0) lastSlot.push(i);
  if (lastSlot.at(-1) !== r.maxSlot) lastSlot.push(r.maxSlot);
  const bounds = lastSlot.map((i) => slotBound(i, r.scale));
  c = { bounds, lastSlot, text: bounds.map(formatNumber) };
  classicCache.set(r, c);
  return c;
}

/** Cumulative counts at the classic bounds (then +Inf), into `out` (reused by the writer). */
export function classicCumulative(h: Log2Histogram, out: number[]): number[] {
  const { lastSlot } = classicLayout(h.range);
  let acc = 0;
  let slot = 0;
  for (let b = 0; b < lastSlot.length; b++) {
    const last = lastSlot[b]!;
    for (; slot <= last && slot < h.slots.length; slot++) acc += h.slots[slot]!;
    out[b] = acc;
  }
  out[lastSlot.length] = h.count;
  out.length = lastSlot.length + 1;
  return out;
}

/** Native schema-0 index of kernel slot i. */
export function nativeIndex(i: number, scale: number): number {
  return Math.round(Math.log2((2 ** (i + 1) - 1) * scale));
}

export interface NativeBuckets {
  /** BucketSpan offset/length pairs (first offset absolute, then gaps). */
  spans: { offset: number; length: number }[];
  /** Count deltas, bucket by bucket (io.prometheus.client Histogram.positive_delta). */
  deltas: number[];
}

/** Populated native buckets of a histogram, in spans with delta-encoded counts. */
export function nativeBuckets(h: Log2Histogram): NativeBuckets {
  const spans: NativeBuckets['spans'] = [];
  const deltas: number[] = [];
  let prevIndex = 0;
  let prevCount = 0;
  let span: { offset: number; length: number } | undefined;
  // Several slots can share an index only for scales far from 1; accumulate per index.
  let curIndex = Number.NaN;
  let curCount = 0;
  const flush = (): void => {
    if (Number.isNaN(curIndex) || curCount === 0) return;
    if (span && curIndex === prevIndex + 1) span.length++;
    else {
      span = { offset: spans.length === 0 ? curIndex : curIndex - prevIndex - 1, length: 1 };
      spans.push(span);
    }
    deltas.push(curCount - prevCount);
    prevCount = curCount;
    prevIndex = curIndex;
  };
  for (let i = 0; i < h.slots.length; i++) {
    const c = h.slots[i]!;
    if (c === 0) continue;
    const k = nativeIndex(i, h.range.scale);
    if (k !== curIndex) {
      flush();
      curIndex = k;
      curCount = 0;
    }
    curCount += c;
  }
  flush();
  return { spans, deltas };
}

/** A histogram from slot counts (summed across CPUs). rawSum: the exact sum in raw units
 * when the BPF side keeps one, else it is estimated from slot midpoints. */
export function log2Histogram(slots: ArrayLike<number>, range: Log2Range, rawSum?: number): Log2Histogram {
  const s = Float64Array.from(slots);
  let count = 0;
  let est = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    count += c;
    if (c) est += c * (i === 0 ? 1 : 1.5 * 2 ** i);
  }
  return { range, slots: s, count, sum: (rawSum ?? est) * range.scale };
}

/** The full-resolution cumulative view of a histogram (every slot bound in range). */
export function folded(h: Log2Histogram): FoldedHistogram {
  const bounds = log2Bounds(h.range);
  const cumulative = new Array<number>(bounds.length + 1).fill(0);
  const { minSlot, maxSlot } = h.range;
  for (let i = 0; i < h.slots.length; i++) {
    if (i > maxSlot) break;
    cumulative[Math.max(i, minSlot) - minSlot]! += h.slots[i]!;
  }
  for (let b = 1; b < bounds.length; b++) cumulative[b]! += cumulative[b - 1]!;
  cumulative[bounds.length] = h.count;
  return { bounds, cumulative, count: h.count, sum: h.sum };
}

/** Add b into a (same metric, so same range): labels folded into "_other". */
export function mergeInto(a: Log2Histogram, b: Log2Histogram): void {
  if (a.slots.length < b.slots.length) {
    const grown = new Float64Array(b.slots.length);
    grown.set(a.slots);
    a.slots = grown;
  }
  for (let i = 0; i < b.slots.length; i++) a.slots[i]! += b.slots[i]!;
  a.sum += b.sum;
  a.count += b.count;
}

/** Merge folded histograms with identical bounds. */
export function mergeFolded(a: FoldedHistogram, b: FoldedHistogram): FoldedHistogram {
  return {
    bounds: a.bounds,
    cumulative: a.cumulative.map((v, i) => v + (b.cumulative[i] ?? 0)),
    sum: a.sum + b.sum,
    count: a.count + b.count,
  };
}

/** A sample value as Prometheus text writes it (Go's strconv 'g'-like, shortest round trip). */
export function formatNumber(v: number): string {
  if (Number.isFinite(v)) return String(v);
  return v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN';
}
