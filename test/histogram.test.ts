// The kernel's per-CPU log2 slots as Prometheus histograms: the cumulative view, the fixed
// classic `le` set, and native schema-0 buckets.
import test from 'ava';
import {
  classicCumulative,
  classicLayout,
  folded,
  log2Bounds,
  log2Histogram,
  mergeFolded,
  mergeInto,
  nativeBuckets,
  nativeIndex,
  type Log2Range,
} from '../agent/aggregate/histogram.js';
import { ALL_METRICS, M } from '../agent/catalog.js';
import { foldPerCpuU64 } from '../bpf/libbpf.js';

const R = (minSlot: number, maxSlot: number, scale = 1, classicStep = 1): Log2Range => ({ minSlot, maxSlot, scale, classicStep });

test('bounds are the exact inclusive upper ends of each log2 slot, scaled', (t) => {
  t.deepEqual(log2Bounds(R(0, 4)), [1, 3, 7, 15, 31]);
  t.deepEqual(log2Bounds(R(10, 11, 1e-9)), [2047e-9, 4095e-9]);
});

test('per-CPU log2 slots fold into cumulative buckets with +Inf, sum and count', (t) => {
  // Two CPUs, four slots each, laid out as the kernel returns a per-CPU u64[4] value.
  const cpu0 = [1, 0, 2, 0];
  const cpu1 = [0, 3, 1, 4];
  const raw = Buffer.alloc(2 * 32);
  [cpu0, cpu1].forEach((slots, c) => slots.forEach((v, i) => raw.writeBigUInt64LE(BigInt(v), c * 32 + i * 8)));
  const perCpu = foldPerCpuU64(raw, 32, 2);
  const slots = [0, 1, 2, 3].map((i) => Number(perCpu.readBigUInt64LE(i * 8)));
  t.deepEqual(slots, [1, 3, 3, 4]);
  const h = folded(log2Histogram(slots, R(0, 3), 123));
  t.deepEqual(h.bounds, [1, 3, 7, 15]);
  t.deepEqual(h.cumulative, [1, 4, 7, 11, 11]);
  t.is(h.count, 11);
  t.is(h.sum, 123);
});

test('slots below minSlot fold into the first bucket; slots above maxSlot count only in +Inf', (t) => {
  const h = log2Histogram([5, 1, 0, 2, 7], R(1, 3));
  const f = folded(h);
  t.deepEqual(f.bounds, [3, 7, 15]);
  t.deepEqual(f.cumulative, [6, 6, 8, 15]);
  // Without a kernel-side sum it is estimated from slot midpoints: 5*1 + 1*3 + 2*12 + 7*24.
  t.is(h.sum, 5 + 3 + 24 + 168);
});

test('the classic le set is every step-th power of two plus maxSlot, the same for every series of a metric', (t) => {
  const r = R(8, 34, 1e-9, 2);
  const lay = classicLayout(r);
  t.deepEqual(lay.lastSlot, [9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 34]);
  t.is(lay.bounds[0], 1023e-9);
  t.is(lay.text.at(-1), String(Number(((2 ** 35 - 1) * 1e-9).toPrecision(12))));
  t.is(classicLayout(r), lay, 'computed once per range');
  // Slots 0..9 land in le=1023ns, 10..11 in le=4095ns; slot 40 only in +Inf.
  const slots = new Array(41).fill(0);
  slots[3] = 2;
  slots[8] = 1;
  slots[9] = 4;
  slots[11] = 1;
  slots[40] = 5;
  const cum = classicCumulative(log2Histogram(slots, r), []);
  t.deepEqual(cum.slice(0, 3), [7, 8, 8]);
  t.is(cum.at(-2), 8);
  t.is(cum.at(-1), 13);
  // Every catalogued histogram has buckets, and its classic bounds strictly increase.
  for (const d of ALL_METRICS.filter((m) => m.type === 'histogram')) {
    t.truthy(d.buckets, d.name);
    const b = classicLayout(d.buckets!).bounds;
    t.true(
      b.every((v, i) => i === 0 || v > b[i - 1]!),
      d.name,
    );
    t.true(b.length <= 8, `${d.name}: ${b.length} classic buckets`);
  }
  // The catalog's grid: every 4th power of two of nanoseconds, the same le values for every
  // seconds histogram, plus the top of each range.
  t.deepEqual(classicLayout(M.memcgWbWaitTime.buckets!).text, [
    '0.000004095',
    '0.000065535',
    '0.001048575',
    '0.016777215',
    '0.268435455',
    '4.294967295',
    '34.359738367',
  ]);
  t.deepEqual(classicLayout(M.memcgUnchargeBatchPages.buckets!).text, ['15', '255', '4095', '8191']);
});

test('native schema 0: slot i maps to bucket i+1 for unit values and i-29 for nanoseconds exported in seconds', (t) => {
  t.is(nativeIndex(0, 1), 0); // v <= 1 -> (0.5, 1]
  for (let i = 1; i < 40; i++) t.is(nativeIndex(i, 1), i + 1);
  for (let i = 6; i < 40; i++) {
    const k = nativeIndex(i, 1e-9);
    t.is(k, i - 29);
    // The bucket's upper bound is within 8 % of the slot's (2^(i+1) ns).
    const ratio = 2 ** k / (2 ** (i + 1) * 1e-9);
    t.true(ratio > 0.92 && ratio <= 1, `slot ${i}: ratio ${ratio}`);
  }
});

test('native buckets: only populated ones, in spans with delta-encoded counts', (t) => {
  const nb = nativeBuckets(log2Histogram([0, 0, 3, 1, 0, 0, 2], R(0, 6)));
  t.deepEqual(nb.spans, [
    { offset: 3, length: 2 },
    { offset: 2, length: 1 },
  ]);
  t.deepEqual(nb.deltas, [3, -2, 1]);
  t.deepEqual(nativeBuckets(log2Histogram([], R(0, 6))), { spans: [], deltas: [] });
  // Counts recovered from the deltas equal the slots, in order.
  const slots = Array.from({ length: 36 }, (_, i) => (i % 3 === 0 ? i * 7 : 0));
  const n = nativeBuckets(log2Histogram(slots, R(8, 34, 1e-9)));
  let acc = 0;
  const counts = n.deltas.map((d) => (acc += d));
  t.deepEqual(
    counts,
    slots.filter((c) => c > 0),
  );
  t.is(
    n.spans.reduce((a, s) => a + s.length, 0),
    counts.length,
  );
  t.is(n.spans[0]!.offset, nativeIndex(3, 1e-9));
});

test('merging histograms adds slots, sums and counts', (t) => {
  const a = log2Histogram([1, 1, 0], R(0, 2), 4);
  mergeInto(a, log2Histogram([0, 2, 1, 1], R(0, 2), 10));
  t.deepEqual([...a.slots], [1, 3, 1, 1]);
  t.is(a.sum, 14);
  t.is(a.count, 6);
  const m = mergeFolded(folded(log2Histogram([1, 1, 0], R(0, 2), 4)), folded(log2Histogram([0, 2, 1], R(0, 2), 10)));
  t.deepEqual(m.cumulative, [1, 4, 5, 5]);
});
