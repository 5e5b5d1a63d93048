// Synthetic traces for check/replay/fuzz tests: the memcg_fn family's real BTF and map
// layout (from bpf/build/memcg_fn.bpf.o), with writeback-latency histograms we choose.
import { join } from 'node:path';
import { Btf } from '../../bpf/btf.js';
import { BpfObject } from '../../bpf/libbpf.js';
import { deflateRawSync } from 'node:zlib';
import { BPF_BUILD_DIR } from '../../agent/loader.js';
import type { TraceHeader, TraceMapMeta } from '../../agent/record/format.js';
import { TraceWriter } from '../../agent/record/writer.js';

interface FamilyInfo {
  btfRaw: Buffer;
  btf: Btf;
  metas: TraceMapMeta[];
}

let cached: FamilyInfo | undefined;

export function memcgFnFamily(): FamilyInfo {
  if (cached) return cached;
  const obj = BpfObject.open(join(BPF_BUILD_DIR, 'memcg_fn.bpf.o'));
  try {
    const btfRaw = obj.rawBtf();
    const metas: TraceMapMeta[] = obj
      .maps()
      .filter((m) => !m.name.includes('.'))
      .map((m) => ({
        name: m.name,
        keySize: m.keySize,
        valueSize: m.valueSize,
        maxEntries: m.maxEntries,
        percpu: false,
        keyType: m.btfKeyTypeId,
        valueType: m.btfValueTypeId,
        content: m.keySize === 0 || m.name === 'wb_folios' ? 'count' : 'full',
      }));
    cached = { btfRaw, btf: Btf.parse(btfRaw), metas };
    return cached;
  } finally {
    obj.close();
  }
}

export const SYNTH_CGROUP_ID = 4242n;

/** One memcg_fn_stats entry for SYNTH_CGROUP_ID with these writeback-latency slot counts. */
function statsEntry(f: FamilyInfo, slots: Record<number, number>): [Buffer, Buffer] {
  const kl = f.btf.structLayout('memcg_key')!;
  const vl = f.btf.structLayout('memcg_fn_stats')!;
  const meta = f.metas.find((m) => m.name === 'memcg_fn_stats')!;
  const k = Buffer.alloc(meta.keySize);
  k.writeBigUInt64LE(SYNTH_CGROUP_ID, kl.fields.find((x) => x.name === 'cgroup_id')!.offset);
  const v = Buffer.alloc(meta.valueSize);
  const at = vl.fields.find((x) => x.name === 'wb_latency_slots')!.offset;
  let sum = 0n;
  for (const [slot, n] of Object.entries(slots)) {
    v.writeBigUInt64LE(BigInt(n), at + Number(slot) * 8);
    sum += BigInt(n) * (3n << BigInt(Number(slot) - 1)); // ~1.5 * 2^slot ns each
  }
  v.writeBigUInt64LE(sum, vl.fields.find((x) => x.name === 'wb_latency_sum_ns')!.offset);
  return [k, v];
}

export function synthHeader(f = memcgFnFamily()): TraceHeader {
  return {
    format: 'hvwatch-trace',
    agent: 'test',
    kernel: '6.1.0-synthetic',
    libbpf: 'v1.1',
    hostname: 'synthetic-host',
    started: '2024-01-01T00:00:00.000Z',
    intervalMs: 1000,
    maxBytes: null,
    cardinality: { cgroups: 2000, vms: 256 },
    cgroupVersion: 2,
    probes: [
      {
        name: 'memcg_writeback_end_fn',
        family: 'memcg_fn',
        description: 'writeback end',
        enabled: true,
        candidates: [{ attach: 'fentry', target: '__folio_end_writeback', ok: true }],
        chosen: { attach: 'fentry', target: '__folio_end_writeback' },
      },
    ],
    families: [{ name: 'memcg_fn', object: 'memcg_fn.bpf.o', btf: deflateRawSync(f.btfRaw).toString('base64'), maps: f.metas, programs: [] }],
  };
}

/**
 * A trace of `snapshots` snapshots whose writeback-latency histogram for the cgroup
 * `cgPath` grows to `slots` (slot i: latencies in [2^i, 2^(i+1)) ns). Shifting every slot
 * up by one doubles every latency.
 */
export function writeSynthTrace(file: string, slots: Record<number, number>, opts: { cgPath?: string; snapshots?: number; compress?: boolean } = {}): void {
  const f = memcgFnFamily();
  const w = new TraceWriter(file, synthHeader(f), { compress: opts.compress ?? true });
  w.writeIdent({ cg: [[SYNTH_CGROUP_ID.toString(), opts.cgPath ?? '/synthetic']], alive: [[SYNTH_CGROUP_ID.toString(), true]] });
  const n = opts.snapshots ?? 2;
  const stats = f.metas.findIndex((m) => m.name === 'memcg_fn_stats');
  for (let i = 1; i <= n; i++) {
    const part = Object.fromEntries(Object.entries(slots).map(([s, c]) => [s, Math.round((c * i) / n)]));
    w.writeSnapshot(
      { now: 1_700_000_000_000 + i * 1000, gc: i === 1, cause: 'interval', bpfStats: false, progs: [] },
      f.metas.map((m, mi) => ({
        family: 0,
        map: mi,
        entries: mi === stats ? [statsEntry(f, part)] : m.content === 'count' ? null : [],
        count: mi === stats ? 1 : 0,
      })),
    );
  }
  w.close('stop');
}
