// Cost of first sight (issue 17, README "Series lifecycle"): what naming VMs and memory
// cgroups at first sight adds, measured three ways on this host.
//  - cgroup churn: mkdir+rmdir of N memory cgroups, with the cgroup_lifecycle probe attached
//    vs no agent, interleaved round by round; plus the probe's in-kernel time per event
//    (BPF run-time stats) and the agent's collection time with N fresh cgroup_seen records.
//  - guest start/stop: N short /dev/kvm guests (kvm-guest, 3 port writes each) with the kvm
//    families attached vs no agent, interleaved; plus the agent's collection with N exited VMs.
//  - the first sight itself in the kernel (hv_vm_seen insert, task/mm reads, a 256-byte
//    bpf_probe_read_user of the argv), through BPF_PROG_TEST_RUN of kvm.bpf.c's test_kvm
//    T_FIRST_SIGHT: once per new VM per family, never per event.
// Exported for bench/run.ts: firstSightBench(quick).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { findMemoryHierarchy } from '../agent/cgroups.js';
import { allProbeNames } from '../agent/families.js';
import { median, progress } from './common.js';
import { GUEST } from './kvm.js';

export interface AB {
  /** Wall ms of each round's workload, without any agent and with the mechanism attached. */
  off: number[];
  on: number[];
  medianOff: number;
  medianOn: number;
  /** Median of per-round on/off ratios, minus 1, in percent. */
  overheadPct: number;
}

export interface FirstSightResult {
  cgroups?: AB & {
    perRound: number;
    /** In-kernel ns per cgroup_mkdir/rmdir program run (BPF stats), and runs per round. */
    progNsPerRun: number;
    progRuns: number;
    /** Agent collection (ms) right after a round: learning perRound mkdir+rmdir records. */
    collectMs: number;
  };
  guests?: AB & {
    perRound: number;
    /** Agent collection (ms) right after a round: naming perRound exited VMs from hv_vm_seen. */
    collectMs: number;
    /** hv_vm_seen records after a round (one per VM per family that saw it). */
    records: number;
  };
  /** ns per first sight in the kernel (includes one hash delete), via BPF_PROG_TEST_RUN. */
  firstSightNs?: number;
  skipped: string[];
}

function ab(off: number[], on: number[]): AB {
  const ratios = on.map((v, i) => v / off[i]! - 1);
  return { off, on, medianOff: median(off), medianOn: median(on), overheadPct: 100 * median(ratios) };
}

function timed(script: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync('bash', ['-c', script, 'bench', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`workload failed (${r.status}): ${r.stderr.trim()}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function startAgent(keep: (name: string) => boolean, extra: Record<string, unknown> = {}): Agent {
  const a = new Agent(configSchema.parse({ probes: { disable: allProbeNames().filter((n) => !keep(n)) }, bpf: { stats: true }, ...extra }));
  a.start();
  return a;
}

async function collectMs(a: Agent): Promise<number> {
  const t0 = process.hrtime.bigint();
  await a.collect();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

const CG_CHURN = `base=$1; n=$2; mkdir -p "$base"; for ((i = 0; i < n; i++)); do mkdir "$base/c$i"; rmdir "$base/c$i"; done; rmdir "$base"`;
const GUESTS = `guest=$1; n=$2; for ((i = 0; i < n; i++)); do "$guest" -name "guest=hvwatch-fs-bench-$i" --writes 3 > /dev/null || exit 1; done`;

export async function firstSightBench(quick = false): Promise<FirstSightResult> {
  const rounds = quick ? 3 : 7;
  const out: FirstSightResult = { skipped: [] };

  const h = findMemoryHierarchy();
  if (!h) out.skipped.push('cgroup churn: no memory cgroup hierarchy');
  else {
    const n = quick ? 200 : 1000;
    const base = path.join(h.mountPoint, `hvwatch-fs-bench-${process.pid}`);
    const off: number[] = [];
    const on: number[] = [];
    let runs = 0;
    let ns = 0;
    let col = 0;
    for (let r = 0; r < rounds; r++) {
      progress(`first sight: cgroup churn round ${r + 1}/${rounds} (${n} mkdir+rmdir)`);
      off.push(timed(CG_CHURN, [base, String(n)]));
      const a = startAgent((p) => p === 'cgroup_lifecycle');
      try {
        on.push(timed(CG_CHURN, [base, String(n)]));
        col += await collectMs(a);
        for (const s of a.store.all(M.progRuns)) if (s.labels.probe === 'cgroup_lifecycle') runs += s.value;
        for (const s of a.store.all(M.progRunSeconds)) if (s.labels.probe === 'cgroup_lifecycle') ns += s.value * 1e9;
      } finally {
        await a.stop();
      }
    }
    out.cgroups = { ...ab(off, on), perRound: n, progNsPerRun: runs ? ns / runs : 0, progRuns: runs / rounds, collectMs: col / rounds };
    fs.rmSync(base, { recursive: true, force: true });
  }

  if (!GUEST) out.skipped.push('guests: no usable /dev/kvm or kvm-guest not built');
  else {
    const n = quick ? 50 : 200;
    const off: number[] = [];
    const on: number[] = [];
    let col = 0;
    let records = 0;
    for (let r = 0; r < rounds; r++) {
      progress(`first sight: guest start/stop round ${r + 1}/${rounds} (${n} guests)`);
      off.push(timed(GUESTS, [GUEST, String(n)]));
      const a = startAgent((p) => p.startsWith('kvm_'));
      try {
        on.push(timed(GUESTS, [GUEST, String(n)]));
        col += await collectMs(a);
        for (const s of a.store.all(M.mapEntries)) if (s.labels.map === 'hv_vm_seen') records += s.value;
        if (r === 0) out.firstSightNs = firstSightNs(a);
      } finally {
        await a.stop();
      }
    }
    out.guests = { ...ab(off, on), perRound: n, collectMs: col / rounds, records: records / rounds };
  }
  return out;
}

/** ns per first sight: test_kvm T_FIRST_SIGHT looping 251 vs 1 times, median of 30. */
function firstSightNs(a: Agent): number {
  const prog = a.family('kvm')?.testProgram('test_kvm');
  if (!prog) return 0;
  const args = (times: number): Buffer => {
    const b = Buffer.alloc(112);
    b.writeUInt32LE(13, 0); // T_FIRST_SIGHT in families/kvm/kvm.bpf.c
    b.writeUInt32LE(times, 28);
    return b;
  };
  const once = (times: number): number => {
    const t0 = process.hrtime.bigint();
    prog.testRun(args(times));
    return Number(process.hrtime.bigint() - t0);
  };
  const few: number[] = [];
  const many: number[] = [];
  for (let i = 0; i < 30; i++) {
    few.push(once(1));
    many.push(once(251));
  }
  return (median(many) - median(few)) / 250;
}

export function firstSightSummary(r: FirstSightResult): string[] {
  const lines: string[] = [];
  if (r.cgroups) {
    const c = r.cgroups;
    lines.push(
      `cgroup churn, ${c.perRound} mkdir+rmdir per round: ${c.medianOff.toFixed(0)} ms without an agent, ${c.medianOn.toFixed(0)} ms with cgroup_lifecycle (${c.overheadPct.toFixed(1)} %); ` +
        `${c.progNsPerRun.toFixed(0)} ns in the kernel per mkdir/rmdir (${c.progRuns.toFixed(0)} runs per round); the next collection ${c.collectMs.toFixed(1)} ms`,
    );
  }
  if (r.guests) {
    const g = r.guests;
    lines.push(
      `guest start/stop, ${g.perRound} guests per round: ${g.medianOff.toFixed(0)} ms without an agent, ${g.medianOn.toFixed(0)} ms with the kvm families (${g.overheadPct.toFixed(1)} %); ` +
        `${g.records.toFixed(0)} hv_vm_seen records; the next collection ${g.collectMs.toFixed(1)} ms`,
    );
  }
  if (r.firstSightNs !== undefined) lines.push(`one VM first sight in the kernel: ${r.firstSightNs.toFixed(0)} ns (BPF_PROG_TEST_RUN, includes a hash delete)`);
  for (const s of r.skipped) lines.push(`skipped: ${s}`);
  return lines;
}

// `node dist/bench/first-sight.js [--quick]`: this part alone.
if (process.argv[1] && path.resolve(process.argv[1]) === new URL(import.meta.url).pathname) {
  const r = await firstSightBench(process.argv.includes('--quick'));
  for (const l of firstSightSummary(r)) console.log(l);
  console.log(JSON.stringify(r));
}
