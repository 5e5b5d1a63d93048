// Whole-map read cost per entry on a real per-CPU hash map: BPF_MAP_LOOKUP_BATCH vs the
// get_next_key + lookup walk (MapFd.readAll both ways), and the pre-batch entries() the
// scrape used before (walk, one Buffer per key and value, BigInt per-CPU fold).
// `node dist/bench/map-read.js [--json] [--trials N]`; mapReadBench() for bench/run.ts.
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Btf } from '../bpf/btf.js';
import { BpfObject, createMap, MAP_TYPE, MapFd, possibleCpus } from '../bpf/libbpf.js';
import { BPF_BUILD, median, progress } from './common.js';

const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
const lib = koffi.load('libbpf.so.1');
const nextKey = lib.func('int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next)');
const lookupElem = lib.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)');

export interface MapReadRow {
  valueSize: number;
  entries: number;
  /** Median ns per entry of one whole-map read. */
  batchNs: number;
  batchFoldNs: number;
  walkNs: number;
  legacyNs: number;
  /** bpf() calls per read. */
  batchCalls: number;
  walkCalls: number;
}

export interface MapReadResult {
  cpus: number;
  trials: number;
  keySize: number;
  rows: MapReadRow[];
}

const KEY = 8; // struct memcg_key: the cgroup id

/** The real per-cgroup value, from the built object's BTF; undefined when not built. */
function memcgStatsSize(): number | undefined {
  try {
    const o = BpfObject.open(path.join(BPF_BUILD, 'memcg.bpf.o'));
    try {
      return Btf.parse(o.rawBtf()).structLayout('memcg_stats')?.size;
    } finally {
      o.close();
    }
  } catch {
    return undefined;
  }
}

// The pre-batch MapFd.entries(), kept here as the baseline: a key walk with a Buffer per key,
// then a lookup per key into a fresh Buffer and a BigInt fold per u64 word.
function legacyEntries(m: MapFd): number {
  const slot = Math.ceil(m.valueSize / 8) * 8;
  const raw = slot * possibleCpus;
  const keys: Buffer[] = [];
  let prev: Buffer | null = null;
  for (;;) {
    const next = Buffer.alloc(m.keySize);
    if (nextKey(m.fd, prev, next) < 0) break;
    keys.push(next);
    prev = next;
  }
  let n = 0;
  for (const k of keys) {
    const v = Buffer.alloc(raw);
    if (lookupElem(m.fd, k, v) < 0) continue;
    const out = Buffer.alloc(m.valueSize);
    for (let w = 0; w < Math.floor(m.valueSize / 8); w++) {
      let sum = 0n;
      for (let c = 0; c < possibleCpus; c++) sum += v.readBigUInt64LE(c * slot + w * 8);
      out.writeBigUInt64LE(BigInt.asUintN(64, sum), w * 8);
    }
    n++;
  }
  return n;
}

function timeNsPerEntry(trials: number, entries: number, read: () => number): number {
  read(); // warm: buffers sized, code compiled
  const per: number[] = [];
  for (let i = 0; i < trials; i++) {
    const t0 = process.hrtime.bigint();
    const n = read();
    const dt = Number(process.hrtime.bigint() - t0);
    if (n !== entries) throw new Error(`read returned ${n} entries, expected ${entries}`);
    per.push(dt / n);
  }
  return median(per);
}

function measure(valueSize: number, entries: number, trials: number): MapReadRow {
  const m = createMap({ type: MAP_TYPE.PERCPU_HASH, name: 'bench_read', keySize: KEY, valueSize, maxEntries: entries * 2 });
  try {
    const slot = Math.ceil(valueSize / 8) * 8;
    const value = Buffer.alloc(slot * possibleCpus);
    const key = Buffer.alloc(KEY);
    for (let i = 0; i < entries; i++) {
      key.writeBigUInt64LE((BigInt(i) * 0x9e3779b97f4a7c15n) & 0xffffffffffffn);
      for (let o = 0; o + 8 <= value.length; o += 8) value.writeBigUInt64LE(BigInt(i + o), o);
      m.update(key, value);
    }
    // A second handle on the same kernel map: the forced walk gets its own mode and buffers.
    const walk = new MapFd(m.fd, m.keySize, m.valueSize, m.percpu, m.maxEntries, `${m.name}_walk`, m.type);
    walk.forceReadMode('walk');
    const batchNs = timeNsPerEntry(trials, entries, () => m.readAll().count);
    const batchCalls = m.readStats.lastCalls;
    const batchFoldNs = timeNsPerEntry(trials, entries, () => m.readAll({ fold: true }).count);
    const walkNs = timeNsPerEntry(trials, entries, () => walk.readAll().count);
    const walkCalls = walk.readStats.lastCalls;
    const legacyNs = timeNsPerEntry(trials, entries, () => legacyEntries(m));
    return { valueSize, entries, batchNs, batchFoldNs, walkNs, legacyNs, batchCalls, walkCalls };
  } finally {
    m.close();
  }
}

export async function mapReadBench(opts: { trials?: number; sizes?: number[]; valueSizes?: number[] } = {}): Promise<MapReadResult> {
  const trials = opts.trials ?? 7;
  const memcg = memcgStatsSize();
  const valueSizes = opts.valueSizes ?? [248, ...(memcg && memcg !== 248 ? [memcg] : [])];
  const sizes = opts.sizes ?? [2000, 20000];
  const rows: MapReadRow[] = [];
  for (const vs of valueSizes) {
    for (const n of sizes) {
      progress(`map read: per-CPU hash, ${n} entries of ${vs} B x ${possibleCpus} CPUs`);
      rows.push(measure(vs, n, trials));
      await new Promise((r) => setImmediate(r));
    }
  }
  return { cpus: possibleCpus, trials, keySize: KEY, rows };
}

export function mapReadMarkdown(r: MapReadResult): string {
  const f = (x: number): string => Math.round(x).toLocaleString('en-US');
  const lines = [
    `Per-CPU hash, ${r.keySize}-byte key, ${r.cpus} possible CPUs; median of ${r.trials} whole-map reads, ns per entry.`,
    '',
    '| value | entries | batch | batch + fold | walk | pre-batch entries() | walk / batch | calls batch / walk |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const x of r.rows) {
    lines.push(
      `| ${x.valueSize} B | ${f(x.entries)} | ${f(x.batchNs)} | ${f(x.batchFoldNs)} | ${f(x.walkNs)} | ${f(x.legacyNs)} | ${(x.walkNs / x.batchNs).toFixed(1)}x | ${x.batchCalls} / ${f(x.walkCalls)} |`,
    );
  }
  return lines.join('\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const ti = args.indexOf('--trials');
  const r = await mapReadBench({ trials: ti >= 0 ? Number(args[ti + 1]) : undefined });
  process.stdout.write(args.includes('--json') ? `${JSON.stringify(r, null, 2)}\n` : `${mapReadMarkdown(r)}\n`);
}
