// In-kernel cost per event of each hvwatch memcg program, against an empty program on the
// same hook attached at the same time (bpf/src/bench_empty.bpf.c) and against a bpftrace
// one-liner keeping the same aggregate. Cost = delta run_time_ns / delta run_cnt from
// bpf_prog_info while BPF_ENABLE_STATS is on.
import * as path from 'node:path';
import * as fs from 'node:fs';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { BpfObject, enableRunTimeStats, progStats, type BpfLink, type BpfProgram, type ProgStats } from '../bpf/libbpf.js';
import { Btf } from '../bpf/btf.js';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { memcgFamily } from '../agent/probes/memcg.js';
import { BPF_BUILD, progress, runLoad, describeLoad, type Load, type Scratch } from './common.js';

export type Tier = 'tp_btf' | 'tracepoint';
export const TIERS: readonly Tier[] = ['tp_btf', 'tracepoint'];

interface Hook {
  /** Tracepoint name (tp_btf target). */
  tp: string;
  /** category/name (tracepoint target). */
  tpPath: string;
  probe: string;
  hvwatch: Record<Tier, string>;
  empty: Record<Tier, string>;
  /** bpftrace names a tracepoint program after the probe, cut to 15 characters. */
  bpftraceName: string;
  loads: Load['kind'][];
}

const HOOKS: readonly Hook[] = [
  {
    tp: 'mod_memcg_lruvec_state', tpPath: 'memcg/mod_memcg_lruvec_state', probe: 'memcg_writeback',
    hvwatch: { tp_btf: 'btf_memcg_lruvec_state', tracepoint: 'tp_memcg_lruvec_state' },
    empty: { tp_btf: 'empty_btf_lruvec_state', tracepoint: 'empty_tp_lruvec_state' },
    bpftraceName: 'mod_memcg_lruve', loads: ['fault', 'fsync'],
  },
  {
    tp: 'count_memcg_events', tpPath: 'memcg/count_memcg_events', probe: 'memcg_uncharge',
    hvwatch: { tp_btf: 'btf_count_memcg_events', tracepoint: 'tp_count_memcg_events' },
    empty: { tp_btf: 'empty_btf_memcg_events', tracepoint: 'empty_tp_memcg_events' },
    bpftraceName: 'count_memcg_eve', loads: ['fault', 'fsync'],
  },
  {
    tp: 'folio_wait_writeback', tpPath: 'writeback/folio_wait_writeback', probe: 'memcg_writeback_wait',
    hvwatch: { tp_btf: 'btf_folio_wait_writeback', tracepoint: 'tp_folio_wait_writeback' },
    empty: { tp_btf: 'empty_btf_wait_writeback', tracepoint: 'empty_tp_wait_writeback' },
    bpftraceName: 'folio_wait_writ', loads: ['fsync'],
  },
];

export interface CostRow {
  hook: string;
  tier: Tier;
  load: Load['kind'];
  /** hvwatch program runs (events) in the measured intervals. */
  events: number;
  /** Events per page touched or written by the driver. */
  eventsPerPage: number;
  hvwatchNs: number;
  emptyNs: number;
  ratioEmpty: number;
  /** undefined when bpftrace is not available. */
  bpftraceNs?: number;
  ratioBpftrace?: number;
  /** ns above the empty floor: hvwatch over this row's empty program; bpftrace over the
   * empty classic-tracepoint program (bpftrace attaches there) for the same hook and load. */
  hvwatchAboveFloorNs: number;
  bpftraceAboveFloorNs?: number;
  /** Runs of the empty (and bpftrace) program differ from hvwatch's by more than 1 %. */
  runCountMismatch?: string;
}

const MIN_EVENTS = 1000;

export interface KernelCostResult {
  rows: CostRow[];
  loads: Record<Load['kind'], string>;
  bpftrace: { available: boolean; version?: string; why?: string; scripts: Record<string, string> };
  notes: string[];
}

// ---- bpftrace, driven as a separate process; its programs are found with bpftool ----

interface BpftoolProg { id: number; type: string; name?: string }

function bpftoolProgs(): BpftoolProg[] {
  const r = spawnSync('bpftool', ['prog', 'show', '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`bpftool prog show failed: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as BpftoolProg[];
}

// bpftrace's programs are read through an fd of our own (bpf_prog_get_fd_by_id), exactly
// like hvwatch's: spawning bpftool between snapshots would fire the hooks being measured.
const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
const progFdById = koffi.load('libbpf.so.1').func('int bpf_prog_get_fd_by_id(uint32_t id)');

function openProg(id: number): number {
  const fd = progFdById(id) as number;
  if (fd < 0) throw new Error(`bpf_prog_get_fd_by_id(${id}) failed (${fd})`);
  return fd;
}

function bpftraceScripts(): Record<string, string> {
  const btf = Btf.vmlinux();
  const nrWriteback = btf.enumValue('node_stat_item', 'NR_WRITEBACK');
  const pgpgout = btf.enumValue('vm_event_item', 'PGPGOUT');
  const memcgId = btf.enumValue('cgroup_subsys_id', 'memory_cgrp_id');
  const knId = btf.structLayout('kernfs_node')?.fields.find((f) => f.name === 'id');
  if (nrWriteback === undefined || pgpgout === undefined || memcgId === undefined || !knId) {
    throw new Error('kernel BTF lacks NR_WRITEBACK, PGPGOUT, memory_cgrp_id or kernfs_node.id');
  }
  // Same aggregates as memcg.bpf.c: NR_WRITEBACK deltas per memcg; PGPGOUT batches (count,
  // pages, log2 histogram) per memcg; writeback waits per memcg of the waiting task.
  // bpftrace 0.17 cannot parse kernfs_node from this kernel's BTF, so kn->id is read at
  // its BTF offset.
  return {
    mod_memcg_lruvec_state:
      `tracepoint:memcg:mod_memcg_lruvec_state /args->item == ${nrWriteback}/ { @wb[args->id] = sum(args->val); }`,
    count_memcg_events:
      `tracepoint:memcg:count_memcg_events /args->item == ${pgpgout}/ { @un[args->id] = stats(args->val); @unh[args->id] = hist(args->val); }`,
    folio_wait_writeback:
      `tracepoint:writeback:folio_wait_writeback { @waits[*(uint64 *)((uint64)curtask->cgroups->subsys[${memcgId}]->cgroup->kn + ${knId.offset})] = count(); }`,
  };
}

class Bpftrace {
  private constructor(private readonly child: ChildProcess, readonly progFds: Map<string, number>) {}

  static version(): string | undefined {
    const r = spawnSync('bpftrace', ['--version'], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout.trim() : undefined;
  }

  static async start(scripts: Record<string, string>): Promise<Bpftrace> {
    const before = new Set(bpftoolProgs().map((p) => p.id));
    const child = spawn('bpftrace', ['-e', Object.values(scripts).join('\n')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 30_000;
    for (;;) {
      await new Promise((r) => setTimeout(r, 200));
      if (child.exitCode !== null) throw new Error(`bpftrace exited (${child.exitCode}): ${out.trim()}`);
      if (!out.includes('Attaching')) {
        if (Date.now() > deadline) break;
        continue;
      }
      const ids = new Map<string, number>();
      for (const p of bpftoolProgs()) {
        if (before.has(p.id) || p.type !== 'tracepoint') continue;
        const hook = HOOKS.find((h) => h.bpftraceName === p.name);
        if (hook) ids.set(hook.tp, p.id);
      }
      if (ids.size === HOOKS.length) return new Bpftrace(child, new Map([...ids].map(([tp, id]) => [tp, openProg(id)])));
      if (Date.now() > deadline) break;
    }
    child.kill('SIGKILL');
    throw new Error(`bpftrace did not attach its ${HOOKS.length} programs within 30 s: ${out.trim()}`);
  }

  stats(tp: string): ProgStats {
    return progStats(this.progFds.get(tp)!);
  }

  async stop(): Promise<void> {
    for (const fd of this.progFds.values()) fs.closeSync(fd);
    this.progFds.clear();
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGINT');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}

// ---- one tier: the hvwatch programs through the agent, the empty ones directly ----

interface Attached {
  agent: Agent;
  hv: Map<string, BpfProgram>;
  empty: Map<string, BpfProgram>;
  emptyObj: BpfObject;
  emptyLinks: BpfLink[];
}

function attachEmpty(tier: Tier): { obj: BpfObject; links: BpfLink[]; progs: Map<string, BpfProgram> } {
  const obj = BpfObject.open(path.join(BPF_BUILD, 'bench_empty.bpf.o'));
  const names = new Set(HOOKS.map((h) => h.empty[tier]));
  for (const p of obj.programs()) p.setAutoload(names.has(p.name));
  obj.load();
  const links: BpfLink[] = [];
  const progs = new Map<string, BpfProgram>();
  for (const h of HOOKS) {
    const p = obj.program(h.empty[tier]);
    links.push(p.attach(tier, tier === 'tp_btf' ? h.tp : h.tpPath));
    progs.set(h.tp, p);
  }
  return { obj, links, progs };
}

function startAgent(tier: Tier): { agent: Agent; hv: Map<string, BpfProgram> } {
  // Every probe of the memcg (tracepoint) family, forced onto this tier with the agent's
  // own candidate override; the other families stay out of this measurement.
  const attach = Object.fromEntries(HOOKS.map((h) => [h.probe, [{ attach: tier, target: tier === 'tp_btf' ? h.tp : h.tpPath }]]));
  const agent = new Agent(configSchema.parse({ probes: { hot: ['all'], attach } }), [memcgFamily]);
  agent.start();
  const hv = new Map<string, BpfProgram>();
  for (const h of HOOKS) {
    const st = agent.status.find((s) => s.name === h.probe);
    if (st?.chosen?.attach !== tier) {
      const why = st?.candidates.map((c) => c.error).join('; ') ?? 'no status';
      void agent.stop();
      throw new Error(`agent did not attach ${h.probe} on ${tier}: ${why}`);
    }
    const prog = agent.loader.families.flatMap((f) => f.programs).find((p) => p.probe === h.probe)?.program;
    if (!prog || prog.name !== h.hvwatch[tier]) throw new Error(`agent attached ${prog?.name} for ${h.probe}, expected ${h.hvwatch[tier]}`);
    hv.set(h.tp, prog);
  }
  return { agent, hv };
}

function attachTier(tier: Tier, emptyFirst: boolean): Attached {
  if (emptyFirst) {
    const e = attachEmpty(tier);
    const a = startAgent(tier);
    return { ...a, empty: e.progs, emptyObj: e.obj, emptyLinks: e.links };
  }
  const a = startAgent(tier);
  const e = attachEmpty(tier);
  return { ...a, empty: e.progs, emptyObj: e.obj, emptyLinks: e.links };
}

async function detach(a: Attached): Promise<void> {
  for (const l of a.emptyLinks) l.destroy();
  a.emptyObj.close();
  await a.agent.stop();
}

interface Acc { hvNs: number; hvCnt: number; emNs: number; emCnt: number; btNs: number; btCnt: number; pages: number }

function diff(after: ProgStats, before: ProgStats): ProgStats {
  return { runTimeNs: after.runTimeNs - before.runTimeNs, runCount: after.runCount - before.runCount };
}

export async function kernelCost(scratch: Scratch, quick: boolean): Promise<KernelCostResult> {
  const loads: Record<Load['kind'], Load> = quick
    ? { fault: { kind: 'fault', mib: 128, iters: 2 }, fsync: { kind: 'fsync', mib: 16, chunkKib: 64, passes: 1 } }
    // The fsync load is the slowdown's own (bench/workload.ts), so events per page carry over.
    : { fault: { kind: 'fault', mib: 256, iters: 4 }, fsync: { kind: 'fsync', mib: 64, chunkKib: 256, passes: 8 } };
  const notes: string[] = [];
  const version = Bpftrace.version();
  let scripts: Record<string, string> = {};
  let bt: Bpftrace | undefined;
  let btWhy: string | undefined;
  if (version) {
    try {
      scripts = bpftraceScripts();
    } catch (e) {
      btWhy = (e as Error).message;
    }
  } else {
    btWhy = 'bpftrace is not installed (apt-get install -y bpftrace)';
  }

  const acc = new Map<string, Acc>();
  const key = (tp: string, tier: Tier, load: string): string => `${tp}|${tier}|${load}`;
  const stats = enableRunTimeStats();
  try {
    if (version && !btWhy) {
      progress('kernel cost: starting bpftrace');
      try {
        bt = await Bpftrace.start(scripts);
      } catch (e) {
        btWhy = (e as Error).message;
      }
    }
    // Both attach orders per tier, summed: the first program on a hook may pay for cold
    // caches, so neither hvwatch nor the empty program always goes first.
    for (const tier of TIERS) {
      for (const emptyFirst of [true, false]) {
        progress(`kernel cost: ${tier}, ${emptyFirst ? 'empty' : 'hvwatch'} program attached first`);
        const a = attachTier(tier, emptyFirst);
        try {
          for (const kind of ['fault', 'fsync'] as const) {
            const snap = (): Map<string, [ProgStats, ProgStats, ProgStats | undefined]> => new Map(HOOKS.map((h) =>
              [h.tp, [a.hv.get(h.tp)!.stats(), a.empty.get(h.tp)!.stats(), bt?.stats(h.tp)]]));
            const before = snap();
            const r = runLoad(scratch, loads[kind]);
            const after = snap();
            for (const h of HOOKS) {
              const [hb, eb, bb] = before.get(h.tp)!;
              const [ha, ea, ba] = after.get(h.tp)!;
              const dh = diff(ha, hb);
              const de = diff(ea, eb);
              const db = ba && bb ? diff(ba, bb) : { runTimeNs: 0, runCount: 0 };
              const k = key(h.tp, tier, kind);
              const c = acc.get(k) ?? { hvNs: 0, hvCnt: 0, emNs: 0, emCnt: 0, btNs: 0, btCnt: 0, pages: 0 };
              c.hvNs += dh.runTimeNs; c.hvCnt += dh.runCount;
              c.emNs += de.runTimeNs; c.emCnt += de.runCount;
              c.btNs += db.runTimeNs; c.btCnt += db.runCount;
              c.pages += r.pages;
              acc.set(k, c);
            }
          }
        } finally {
          await detach(a);
        }
      }
    }
  } finally {
    await bt?.stop();
    stats.close();
  }

  const rows: CostRow[] = [];
  for (const h of HOOKS) {
    for (const tier of TIERS) {
      for (const load of ['fault', 'fsync'] as const) {
        const c = acc.get(key(h.tp, tier, load))!;
        if (!h.loads.includes(load) && c.hvCnt < MIN_EVENTS) {
          notes.push(`${h.tp} (${tier}) fired ${c.hvCnt} times during the ${load === 'fault' ? 'page-fault' : 'fsync'} load: no row.`);
          continue;
        }
        const hvwatchNs = c.hvNs / c.hvCnt;
        const emptyNs = c.emNs / c.emCnt;
        const row: CostRow = {
          hook: h.tp, tier, load, events: c.hvCnt, eventsPerPage: c.hvCnt / c.pages,
          hvwatchNs, emptyNs, ratioEmpty: hvwatchNs / emptyNs, hvwatchAboveFloorNs: hvwatchNs - emptyNs,
        };
        if (bt) {
          row.bpftraceNs = c.btNs / c.btCnt;
          row.ratioBpftrace = hvwatchNs / row.bpftraceNs;
        }
        // Programs on one hook see the same events up to the few fired between reading one
        // program's counters and the next's.
        const off = (n: number): boolean => Math.abs(n - c.hvCnt) > 0.01 * c.hvCnt + 10;
        if (off(c.emCnt) || (bt && off(c.btCnt))) row.runCountMismatch = `runs: hvwatch ${c.hvCnt}, empty ${c.emCnt}${bt ? `, bpftrace ${c.btCnt}` : ''}`;
        rows.push(row);
      }
    }
  }
  for (const r of rows) {
    const tpRow = rows.find((q) => q.hook === r.hook && q.load === r.load && q.tier === 'tracepoint');
    if (r.bpftraceNs !== undefined && tpRow) r.bpftraceAboveFloorNs = r.bpftraceNs - tpRow.emptyNs;
  }
  if (rows.some((r) => r.events < MIN_EVENTS)) notes.push('Some rows have fewer than 1000 events; their ns/event is rough.');
  return {
    rows,
    loads: { fault: describeLoad(loads.fault), fsync: describeLoad(loads.fsync) },
    bpftrace: { available: bt !== undefined, version, why: btWhy, scripts },
    notes,
  };
}

export function emptyObjectPresent(): boolean {
  return fs.existsSync(path.join(BPF_BUILD, 'bench_empty.bpf.o'));
}
