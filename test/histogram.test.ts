// Folding the kernel's per-CPU log2 slots into cumulative Prometheus buckets.
import test from 'ava';
import { foldLog2, log2Bounds, mergeFolded } from '../agent/aggregate/histogram.js';
import { foldPerCpuU64 } from '../bpf/libbpf.js';

test('bounds are the exact inclusive upper ends of each log2 slot, scaled', (t) => {
  t.deepEqual(log2Bounds({ minSlot: 0, maxSlot: 4, scale: 1 }), [1, 3, 7, 15, 31]);
  t.deepEqual(log2Bounds({ minSlot: 10, maxSlot: 11, scale: 1e-9 }), [2047e-9, 4095e-9]);
});

test('per-CPU log2 slots fold into cumulative buckets with +Inf, sum and count', (t) => {
  // Two CPUs, four slots each, laid out as the kernel returns a per-CPU u64[4] value.
  const cpu0 = [1, 0, 2, 0];
  const cpu1 = [0, 3, 1, 4];
  const raw = Buffer.alloc(2 * 32);
  [cpu0, cpu1].forEach((slots, c) => slots.forEach((v, i) => raw.writeBigUInt64LE(BigInt(v), c * 32 + i * 8)));
  const folded = foldPerCpuU64(raw, 32, 2);
  const slots = [0, 1, 2, 3].map((i) => Number(folded.readBigUInt64LE(i * 8)));
  t.deepEqual(slots, [1, 3, 3, 4]);
  const h = foldLog2(slots, { minSlot: 0, maxSlot: 3, scale: 1 }, 123);
  t.deepEqual(h.bounds, [1, 3, 7, 15]);
  t.deepEqual(h.cumulative, [1, 4, 7, 11, 11]);
  t.is(h.count, 11);
  t.is(h.sum, 123);
  t.false(h.sumEstimated);
});

test('slots below minSlot fold into the first bucket; slots above maxSlot count only in +Inf', (t) => {
  const slots = [5, 1, 0, 2, 7];
  const h = foldLog2(slots, { minSlot: 1, maxSlot: 3, scale: 1 });
  t.deepEqual(h.bounds, [3, 7, 15]);
  t.deepEqual(h.cumulative, [6, 6, 8, 15]);
  t.true(h.sumEstimated);
  // Estimated sum uses slot midpoints: 5*1 + 1*3 + 2*12 + 7*24.
  t.is(h.sum, 5 + 3 + 24 + 168);
});

test('cumulative counts never decrease and the last one equals count', (t) => {
  for (let trial = 0; trial < 200; trial++) {
    const slots = Array.from({ length: 40 }, () => (Math.random() < 0.3 ? Math.floor(Math.random() * 1000) : 0));
    const h = foldLog2(slots, { minSlot: 3, maxSlot: 30, scale: 1e-9 });
    for (let i = 1; i < h.cumulative.length; i++) t.true(h.cumulative[i]! >= h.cumulative[i - 1]!);
    t.is(h.cumulative.at(-1), slots.reduce((a, b) => a + b, 0));
  }
});

test('merging folded histograms adds buckets, sums and counts', (t) => {
  const r = { minSlot: 0, maxSlot: 2, scale: 1 };
  const m = mergeFolded(foldLog2([1, 1, 0], r, 4), foldLog2([0, 2, 1], r, 10));
  t.deepEqual(m.cumulative, [1, 4, 5, 5]);
  t.is(m.sum, 14);
  t.is(m.count, 5);
});
