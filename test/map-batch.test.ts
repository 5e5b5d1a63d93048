// Whole-map reads (MapFd.readAll) on real maps in this kernel: BPF_MAP_LOOKUP_BATCH and the
// get_next_key + lookup walk return the same entries for every map type hvwatch reads, the
// walk is really what runs when forced or when the kernel refuses the batch op, a hash bucket
// bigger than the batch count is retried, and concurrent deletes neither crash nor duplicate.
import test from 'ava';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { BPF_F_ZERO_SEED, createMap, foldPerCpuU64, MAP_TYPE, MapFd, possibleCpus, type MapRead, type OwnedMapFd } from '../bpf/libbpf.js';

const require = createRequire(import.meta.url);
const KEY = 8;

interface Kind {
  name: string;
  type: number;
  percpu: boolean;
  valueSize: number;
  array: boolean;
}

// Per-CPU kinds use a 20-byte value: the kernel pads each CPU's slot to 24 bytes, which the
// raw stride must follow, and the fold must leave the 4 bytes past the last u64 word zero.
const KINDS: Kind[] = [
  { name: 'hash', type: MAP_TYPE.HASH, percpu: false, valueSize: 24, array: false },
  { name: 'percpu_hash', type: MAP_TYPE.PERCPU_HASH, percpu: true, valueSize: 20, array: false },
  { name: 'lru_hash', type: MAP_TYPE.LRU_HASH, percpu: false, valueSize: 24, array: false },
  { name: 'lru_percpu_hash', type: MAP_TYPE.LRU_PERCPU_HASH, percpu: true, valueSize: 20, array: false },
  { name: 'array', type: MAP_TYPE.ARRAY, percpu: false, valueSize: 24, array: true },
  { name: 'percpu_array', type: MAP_TYPE.PERCPU_ARRAY, percpu: true, valueSize: 20, array: true },
];

const slotOf = (valueSize: number): number => Math.ceil(valueSize / 8) * 8;
const rawSizeOf = (k: Kind): number => (k.percpu ? slotOf(k.valueSize) * possibleCpus : k.valueSize);

function keyBuf(k: Kind, id: number): Buffer {
  const b = Buffer.alloc(k.array ? 4 : KEY);
  if (k.array) b.writeUInt32LE(id);
  else b.writeBigUInt64LE(BigInt(id) * 0x9e3779b1n + 7n); // spread ids over the u64 space
  return b;
}

// Word w of CPU c: low half all ones on word 0 so the fold has to carry into the high half.
function cpuWord(id: number, c: number, w: number): bigint {
  return (BigInt(id) << 20n) + (BigInt(c) << 8n) + BigInt(w) + (w === 0 ? 0xffffffffn : 0n);
}

function valueBuf(k: Kind, id: number): Buffer {
  if (!k.percpu) {
    const v = Buffer.alloc(k.valueSize);
    for (let w = 0; w * 8 < k.valueSize; w++) v.writeBigUInt64LE(BigInt(id) * 1_000_003n + BigInt(w), w * 8);
    return v;
  }
  const slot = slotOf(k.valueSize);
  const v = Buffer.alloc(slot * possibleCpus);
  for (let c = 0; c < possibleCpus; c++) {
    for (let w = 0; w < Math.floor(k.valueSize / 8); w++) v.writeBigUInt64LE(cpuWord(id, c, w), c * slot + w * 8);
    v.fill(0xab, c * slot + Math.floor(k.valueSize / 8) * 8, c * slot + k.valueSize); // tail past the u64 words
  }
  return v;
}

function foldedExpected(k: Kind, id: number): Buffer {
  const out = Buffer.alloc(k.valueSize);
  for (let w = 0; w < Math.floor(k.valueSize / 8); w++) {
    let sum = 0n;
    for (let c = 0; c < possibleCpus; c++) sum += cpuWord(id, c, w);
    out.writeBigUInt64LE(BigInt.asUintN(64, sum), w * 8);
  }
  return out;
}

function make(k: Kind, maxEntries: number, flags = 0): OwnedMapFd {
  return createMap({ type: k.type, name: `t_${k.name}`.slice(0, 15), keySize: k.array ? 4 : KEY, valueSize: k.valueSize, maxEntries, flags });
}

/** A second handle on the same kernel map: its own read mode and buffers. */
function sameMap(m: MapFd): MapFd {
  return new MapFd(m.fd, m.keySize, m.valueSize, m.percpu, m.maxEntries, `${m.name}_2`, m.type);
}

/** key hex -> value hex; fails the test on a duplicate key. */
function asMap(r: MapRead): Map<string, string> {
  const out = new Map<string, string>();
  for (let i = 0; i < r.count; i++) {
    const key = r.keys.subarray(i * r.keySize, (i + 1) * r.keySize).toString('hex');
    if (out.has(key)) throw new Error(`key ${key} returned twice`);
    out.set(key, r.values.subarray(i * r.valueStride, (i + 1) * r.valueStride).toString('hex'));
  }
  return out;
}

/** Order-free comparison form: ava compares Maps entry by entry in insertion order. */
const sorted = (m: Map<string, string>): [string, string][] => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));

const N = 6000;
const CHUNK = 1000;

for (const k of KINDS) {
  test(`${k.name}: batch read and forced walk return exactly the ${N} entries written, batch over several ${CHUNK}-entry calls, walk at 2 calls per entry`, (t) => {
    // LRU maps get room to spare: their per-CPU free lists can evict before max_entries.
    const m = make(k, k.array ? N : k.name.startsWith('lru') ? 4 * N : 2 * N);
    t.teardown(() => m.close());
    const want = new Map<string, string>();
    for (let id = 0; id < N; id++) {
      const key = keyBuf(k, id);
      const value = valueBuf(k, id);
      m.update(key, value);
      want.set(key.toString('hex'), value.toString('hex'));
    }

    m.batchChunk = CHUNK;
    m.readAll(); // the first read sizes the buffers; the count is then measured in steady state
    const batch = m.readAll();
    t.is(batch.mode, 'batch');
    t.is(m.readMode, 'batch');
    t.is(batch.valueStride, rawSizeOf(k));
    const got = asMap(batch);
    t.is(got.size, N);
    t.deepEqual(sorted(got), sorted(want));
    const calls = m.readStats.lastCalls;
    t.true(calls >= N / CHUNK && calls <= N / CHUNK + 2, `batch read took ${calls} calls`);

    const w = sameMap(m);
    w.forceReadMode('walk');
    const walk = w.readAll();
    t.is(walk.mode, 'walk');
    t.is(w.readStats.walkReason, 'forced');
    // N get_next_key + N lookups + the get_next_key that ends the walk: the walk really ran.
    t.is(w.readStats.lastCalls, 2 * N + 1);
    t.deepEqual(sorted(asMap(walk)), sorted(got));
  });
}

for (const k of KINDS.filter((x) => x.percpu)) {
  test(`${k.name}: folded whole read sums each u64 word across CPUs with carry, zeroes the tail and matches lookup() and entries()`, (t) => {
    const n = 300;
    const m = make(k, k.array ? n : n * 4);
    t.teardown(() => m.close());
    for (let id = 0; id < n; id++) m.update(keyBuf(k, id), valueBuf(k, id));
    const r = m.readAll({ fold: true });
    t.is(r.count, n);
    t.is(r.valueStride, k.valueSize);
    const want = new Map<string, string>();
    for (let id = 0; id < n; id++) want.set(keyBuf(k, id).toString('hex'), foldedExpected(k, id).toString('hex'));
    t.deepEqual(sorted(asMap(r)), sorted(want));
    const viaLookup = new Map<string, string>();
    for (let id = 0; id < n; id++) viaLookup.set(keyBuf(k, id).toString('hex'), m.lookup(keyBuf(k, id))!.toString('hex'));
    t.deepEqual(sorted(viaLookup), sorted(want));
    const viaEntries = new Map([...m.entries()].map(([kk, v]) => [kk.toString('hex'), v.toString('hex')]));
    t.deepEqual(sorted(viaEntries), sorted(want));
  });
}

test('readAll buffers are reused across reads and grown when the map grows; entries()/keys()/count() leave them alone', (t) => {
  const k = KINDS[0]!;
  const m = make(k, 4096);
  t.teardown(() => m.close());
  for (let id = 0; id < 100; id++) m.update(keyBuf(k, id), valueBuf(k, id));
  m.readAll(); // sized from a first guess; the second read fits the buffers to the map
  const a = m.readAll();
  const b = m.readAll();
  t.is(a.keys.buffer, b.keys.buffer, 'same storage for the same size');
  t.is(a.values.buffer, b.values.buffer);
  const before = asMap(b);
  t.is(m.count(), 100);
  t.is(m.keys().length, 100);
  t.is([...m.entries()].length, 100);
  t.deepEqual(sorted(asMap(b)), sorted(before), 'legacy reads use their own buffers');
  for (let id = 100; id < 3000; id++) m.update(keyBuf(k, id), valueBuf(k, id));
  const c = m.readAll();
  t.is(c.count, 3000);
  t.is(asMap(c).size, 3000);
});

// jhash2() from include/linux/jhash.h, which htab_map_hash() uses for keys whose size is a
// multiple of 4 (kernel/bpf/hashtab.c); with BPF_F_ZERO_SEED the seed is 0, so the bucket of
// a key is jhash2(key words, n, 0) & (n_buckets - 1), n_buckets = roundup_pow_of_two(max_entries).
function jhash2(words: number[]): number {
  const rol = (x: number, s: number): number => ((x << s) | (x >>> (32 - s))) >>> 0;
  let a = (0xdeadbeef + (words.length << 2)) >>> 0;
  let b = a;
  let c = a;
  let i = 0;
  let len = words.length;
  while (len > 3) {
    a = (a + words[i]!) >>> 0;
    b = (b + words[i + 1]!) >>> 0;
    c = (c + words[i + 2]!) >>> 0;
    a = (a - c) >>> 0;
    a ^= rol(c, 4);
    c = (c + b) >>> 0;
    b = (b - a) >>> 0;
    b ^= rol(a, 6);
    a = (a + c) >>> 0;
    c = (c - b) >>> 0;
    c ^= rol(b, 8);
    b = (b + a) >>> 0;
    a = (a - c) >>> 0;
    a ^= rol(c, 16);
    c = (c + b) >>> 0;
    b = (b - a) >>> 0;
    b ^= rol(a, 19);
    a = (a + c) >>> 0;
    c = (c - b) >>> 0;
    c ^= rol(b, 4);
    b = (b + a) >>> 0;
    len -= 3;
    i += 3;
  }
  if (len === 0) return c;
  if (len >= 3) c = (c + words[i + 2]!) >>> 0;
  if (len >= 2) b = (b + words[i + 1]!) >>> 0;
  a = (a + words[i]!) >>> 0;
  c ^= b;
  c = (c - rol(b, 14)) >>> 0;
  a ^= c;
  a = (a - rol(c, 11)) >>> 0;
  b ^= a;
  b = (b - rol(a, 25)) >>> 0;
  c ^= b;
  c = (c - rol(b, 16)) >>> 0;
  a ^= c;
  a = (a - rol(c, 4)) >>> 0;
  b ^= a;
  b = (b - rol(a, 14)) >>> 0;
  c ^= b;
  c = (c - rol(b, 24)) >>> 0;
  return c >>> 0;
}

const bucketOf = (key: Buffer, buckets: number): number => jhash2([key.readUInt32LE(0), key.readUInt32LE(4)]) & (buckets - 1);

for (const k of [KINDS[0]!, KINDS[1]!]) {
  test(`${k.name} with 40 keys in one bucket and a batch count of 8: ENOSPC grows the count, every entry comes back once, in bucket order`, (t) => {
    const buckets = 64;
    const m = make(k, buckets, BPF_F_ZERO_SEED);
    t.teardown(() => m.close());
    const heavy: Buffer[] = [];
    const light: Buffer[] = [];
    for (let id = 0; heavy.length < 40 || light.length < 16; id++) {
      const key = keyBuf(k, id);
      const b = bucketOf(key, buckets);
      if (b === 9 && heavy.length < 40) heavy.push(key);
      else if (b !== 9 && light.length < 16) light.push(key);
    }
    const want = new Map<string, string>();
    for (const [i, key] of [...light, ...heavy].entries()) {
      m.update(key, valueBuf(k, i));
      want.set(key.toString('hex'), valueBuf(k, i).toString('hex'));
    }
    m.batchChunk = 8;
    const r = m.readAll();
    t.is(r.mode, 'batch');
    t.deepEqual(sorted(asMap(r)), sorted(want));
    t.true(m.readStats.bucketRetries >= 1, 'the 40-entry bucket did not fit a count of 8');
    // Batch reads walk buckets in index order: the order proves the keys landed where the
    // zero-seed jhash2 put them, i.e. the heavy bucket really is one bucket.
    const order = Array.from({ length: r.count }, (_, i) => bucketOf(r.keys.subarray(i * KEY, (i + 1) * KEY), buckets));
    t.deepEqual(
      order,
      [...order].sort((x, y) => x - y),
    );
    t.is(order.filter((b) => b === 9).length, 40);

    const w = sameMap(m);
    w.forceReadMode('walk');
    t.deepEqual(sorted(asMap(w.readAll())), sorted(want));
  });
}

test('a stack-trace map, which has no batch op in this kernel (ENOTSUPP), is walked: decided on the first read and never tried again', (t) => {
  const m = createMap({ type: MAP_TYPE.STACK_TRACE, name: 't_stacks', keySize: 4, valueSize: 8 * 16, maxEntries: 64 });
  t.teardown(() => m.close());
  t.is(m.readMode, undefined);
  const r = m.readAll();
  t.is(r.mode, 'walk');
  t.is(r.count, 0);
  t.regex(m.readStats.walkReason ?? '', /BPF_MAP_LOOKUP_BATCH: .*\(errno 524\)/);
  t.is(m.readStats.lastCalls, 2, 'the refused batch call, then get_next_key');
  m.readAll();
  t.is(m.readStats.lastCalls, 1, 'second read: get_next_key only, no batch attempt');
  t.is(m.count(), 0);
});

// A worker thread deletes half the keys and puts them back, over and over, while this thread
// reads the whole map. Every read must list each key at most once with its own value, and
// always include the keys nobody touches.
async function churnReads(
  t: import('ava').ExecutionContext,
  k: Kind,
  mode: 'batch' | 'walk',
  reads: number,
): Promise<{ partial: number; stats: MapFd['readStats'] }> {
  const stable = 1500;
  const churned = 1500;
  const m = make(k, 4 * (stable + churned));
  t.teardown(() => m.close());
  const want = new Map<string, string>();
  const churnKeys: Buffer[] = [];
  const churnValues: Buffer[] = [];
  for (let id = 0; id < stable + churned; id++) {
    const key = keyBuf(k, id);
    const value = valueBuf(k, id);
    m.update(key, value);
    want.set(key.toString('hex'), value.toString('hex'));
    if (id >= stable) {
      churnKeys.push(key);
      churnValues.push(value);
    }
  }
  const stop = new Int32Array(new SharedArrayBuffer(8));
  const worker = new Worker(
    `
    const { workerData, parentPort } = require('node:worker_threads');
    const koffi = require(workerData.koffi);
    const lib = koffi.load('libbpf.so.1');
    const update = lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)');
    const del = lib.func('int bpf_map_delete_elem(int fd, const void *key)');
    const stop = new Int32Array(workerData.stop);
    const keys = workerData.keys.map((k) => Buffer.from(k));
    const values = workerData.values.map((v) => Buffer.from(v));
    let rounds = 0;
    while (Atomics.load(stop, 0) === 0) {
      for (const k of keys) del(workerData.fd, k);
      for (let i = 0; i < keys.length; i++) update(workerData.fd, keys[i], values[i], 0);
      if (++rounds === 1) parentPort.postMessage('running');
    }
    parentPort.postMessage(rounds);
  `,
    { eval: true, workerData: { koffi: require.resolve('koffi'), fd: m.fd, stop: stop.buffer, keys: churnKeys, values: churnValues } },
  );
  const done = new Promise<number>((resolve, reject) => {
    worker.on('message', (msg) => {
      if (typeof msg === 'number') resolve(msg);
    });
    worker.on('error', reject);
  });
  await new Promise<void>((resolve) => worker.once('message', () => resolve()));
  const stableHex = [...want.keys()].slice(0, stable);
  let partial = 0;
  const r = sameMap(m);
  if (mode === 'walk') r.forceReadMode('walk');
  try {
    for (let i = 0; i < reads; i++) {
      const got = asMap(r.readAll()); // throws on a duplicate key
      for (const [key, value] of got) if (want.get(key) !== value) throw new Error(`read ${i}: key ${key} has a foreign value`);
      for (const key of stableHex) if (!got.has(key)) throw new Error(`read ${i}: untouched key ${key} missing`);
      if (got.size < want.size) partial++;
    }
  } finally {
    Atomics.store(stop, 0, 1);
  }
  const rounds = await done;
  await worker.terminate();
  t.true(rounds > 1, `the worker churned ${rounds} rounds`);
  return { partial, stats: r.readStats };
}

for (const k of [KINDS[0]!, KINDS[1]!, KINDS[2]!]) {
  test(`${k.name}: batch reads while another thread deletes and re-adds half the keys list each key once with its own value and never lose untouched keys`, async (t) => {
    const { partial, stats } = await churnReads(t, k, 'batch', 100);
    t.is(stats.mode, 'batch');
    t.true(partial > 0, 'some reads saw the deletions: the churn really overlapped the reads');
  });
}

test('hash, forced walk: reads while another thread deletes and re-adds half the keys skip the keys get_next_key repeats after a restart, never list one twice', async (t) => {
  const { partial, stats } = await churnReads(t, KINDS[0]!, 'walk', 30);
  t.is(stats.mode, 'walk');
  t.true(partial > 0, 'some reads saw the deletions');
  t.true(stats.duplicatesSkipped + stats.vanished > 0, `restarts or vanished keys were met: ${JSON.stringify(stats)}`);
  t.log(`walk under churn: ${stats.duplicatesSkipped} repeated keys skipped, ${stats.vanished} vanished, ${stats.truncated} truncated reads`);
});

test('foldPerCpuU64 (lookup) and the whole-read fold agree with a BigInt sum on values near 2^64', (t) => {
  const cpus = 5;
  const raw = Buffer.alloc(16 * cpus);
  for (let c = 0; c < cpus; c++) {
    raw.writeBigUInt64LE(2n ** 64n - 1n - BigInt(c), c * 16);
    raw.writeBigUInt64LE(0xffffffffn * BigInt(c + 1), c * 16 + 8);
  }
  const f = foldPerCpuU64(raw, 16, cpus);
  let s0 = 0n;
  let s1 = 0n;
  for (let c = 0; c < cpus; c++) {
    s0 += 2n ** 64n - 1n - BigInt(c);
    s1 += 0xffffffffn * BigInt(c + 1);
  }
  t.is(f.readBigUInt64LE(0), BigInt.asUintN(64, s0));
  t.is(f.readBigUInt64LE(8), BigInt.asUintN(64, s1));
});
