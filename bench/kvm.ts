// A /dev/kvm guest doing port writes (test/helpers/kvm-guest.c), run four ways interleaved
// round by round: alone, under the agent's default probe set, under `perf kvm stat record`
// (Debian's linux-perf) and under a bpftrace one-liner counting exits per VM and reason, the
// tools operators compare hvwatch with.
// Judged on the guest's own run time (vCPU release to last HLT), so neither tool's start-up
// counts; also the bytes each keeps: perf.data on disk vs the agent's BPF map memory.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { Bpftrace, bpftraceVersion } from './bpftrace.js';
import { lastJsonLine, mapMemlockBytes, median, progress, REPO_ROOT, runAsync, type Scratch } from './common.js';

const GUEST_BIN = path.join(REPO_ROOT, 'test/helpers/build/kvm-guest');

/** The guest binary when real guests can run here, else undefined. */
export const GUEST: string | undefined = (() => {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    fs.accessSync(GUEST_BIN, fs.constants.X_OK);
    return GUEST_BIN;
  } catch {
    return undefined;
  }
})();

export function guestUnavailable(): string | undefined {
  if (GUEST) return undefined;
  return fs.existsSync('/dev/kvm') ? `${GUEST_BIN} not built (make -C test/helpers)` : 'no usable /dev/kvm';
}

interface GuestOut {
  run_ns: number;
  io_exits: number;
}

function check(out: GuestOut, writes: number): number {
  if (out.io_exits !== writes) throw new Error(`kvm-guest: ${out.io_exits} io exits for ${writes} writes`);
  return out.run_ns / 1e6;
}

/** One guest run to completion, synchronously; returns its run time in ms. */
export function guestRun(writes: number): number {
  const r = spawnSync(GUEST!, ['-name', 'guest=hvwatch-bench', '--writes', String(writes)], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`kvm-guest failed (status ${r.status}): ${r.stderr.trim()}`);
  return check(lastJsonLine<GuestOut>(r.stdout), writes);
}

async function guestRunAsync(writes: number, tick?: () => unknown): Promise<number> {
  return check(lastJsonLine<GuestOut>(await runAsync(GUEST!, ['-name', 'guest=hvwatch-bench', '--writes', String(writes)], tick)), writes);
}

export type GuestSetup = 'baseline' | 'hvwatch' | 'perf' | 'bpftrace';
export type GuestPeer = Exclude<GuestSetup, 'baseline'>;

/** The bpftrace peer: exits per VM (pid) and reason, on every exit tracepoint that can fire
 * (kvm_exit does not on this paravirtual host; kvm_userspace_exit does, once per write). */
export const BPFTRACE_EXITS = new Map([
  ['kvm:kvm_exit', 'tracepoint:kvm:kvm_exit { @exits[pid, args->exit_reason] = count(); }'],
  ['kvm:kvm_userspace_exit', 'tracepoint:kvm:kvm_userspace_exit { @uexits[pid, args->reason] = count(); }'],
]);

export interface GuestResult {
  writes: number;
  rounds: number;
  ms: Record<GuestSetup, number[]>;
  /** Per-round ratios to the same round's baseline. */
  ratios: Record<GuestPeer, { ratios: number[]; median: number; min: number; max: number }>;
  /** hvwatch's slowdown (median ratio - 1) as a fraction of each peer's. */
  vsPeer: Partial<Record<'perf' | 'bpftrace', number>>;
  /** perf.data bytes per run (median), and per port write. */
  perfDataBytes: number;
  /** Kernel memory of the agent's BPF maps (memlock, /proc/self/fdinfo), and what it writes. */
  hvwatchMapBytes: number;
  hvwatchMapBytesByFamily: Record<string, number>;
  attached: string[];
  perfCommand: string;
  perfWhy?: string;
  bpftraceCommand: string;
  bpftraceWhy?: string;
}

export async function guestBench(scratch: Scratch, quick: boolean): Promise<GuestResult> {
  const writes = quick ? 100_000 : 1_000_000;
  const rounds = quick ? 2 : 5;
  const ms: GuestResult['ms'] = { baseline: [], hvwatch: [], perf: [], bpftrace: [] };
  let bpftraceWhy: string | undefined = bpftraceVersion() ? undefined : 'bpftrace is not installed';
  const perfBytes: number[] = [];
  let mapBytes = 0;
  const byFamily: Record<string, number> = {};
  let attached: string[] = [];
  const perfFile = path.join(scratch.dir, 'perf.data');
  const perfArgs = (): string[] => ['kvm', 'stat', 'record', '-o', perfFile, '--', GUEST!, '-name', 'guest=hvwatch-bench', '--writes', String(writes)];
  let perfWhy: string | undefined = spawnSync('perf', ['--version']).status === 0 ? undefined : 'perf is not installed (Debian linux-perf)';

  const run: Record<GuestSetup, () => Promise<number>> = {
    baseline: () => guestRunAsync(writes),
    hvwatch: async () => {
      const a = new Agent(configSchema.parse({}));
      a.start();
      try {
        attached = a.status.filter((p) => p.chosen).map((p) => `${p.name} (${p.chosen!.attach})`);
        // Scraped every second while the guest runs, as a (very eager) Prometheus would.
        const t = await guestRunAsync(writes, () => a.collect());
        await a.collect();
        mapBytes = 0;
        for (const fam of a.loader.families) {
          const b = [...fam.maps.values()].reduce((s, m) => s + mapMemlockBytes(m.fd), 0);
          byFamily[fam.spec.name] = b;
          mapBytes += b;
        }
        return t;
      } finally {
        await a.stop();
      }
    },
    perf: async () => {
      fs.rmSync(perfFile, { force: true });
      const t = check(lastJsonLine<GuestOut>(await runAsync('perf', perfArgs())), writes);
      perfBytes.push(fs.statSync(perfFile).size);
      fs.rmSync(perfFile, { force: true });
      return t;
    },
    bpftrace: async () => {
      const bt = await Bpftrace.start(BPFTRACE_EXITS);
      try {
        return await guestRunAsync(writes);
      } finally {
        await bt.stop();
      }
    },
  };
  const setups: GuestSetup[] = ['baseline', 'hvwatch', 'perf', 'bpftrace'];
  guestRun(Math.min(writes, 20_000)); // warm-up, discarded
  for (let r = 0; r < rounds; r++) {
    // Rotate the order each round so no setup always runs first or last.
    for (let i = 0; i < setups.length; i++) {
      const s = setups[(i + r) % setups.length]!;
      if ((s === 'perf' && perfWhy) || (s === 'bpftrace' && bpftraceWhy)) continue;
      progress(`guest: round ${r + 1}/${rounds}, ${s} (${writes.toLocaleString('en-US')} port writes)`);
      try {
        ms[s].push(await run[s]());
      } catch (e) {
        const msg = (e as Error).message.split('\n').slice(-2).join(' ');
        if (s === 'perf') perfWhy = `perf kvm stat record failed: ${msg}`;
        else if (s === 'bpftrace') bpftraceWhy = `bpftrace failed: ${msg}`;
        else throw e;
      }
    }
  }
  // A peer that failed midway has fewer runs: its ratios pair with the rounds it ran in.
  const ratio = (s: GuestPeer): GuestResult['ratios']['hvwatch'] => {
    const rs = ms[s].map((x, i) => x / ms.baseline[i]!);
    return { ratios: rs, median: rs.length ? median(rs) : NaN, min: Math.min(...rs), max: Math.max(...rs) };
  };
  const ratios = { hvwatch: ratio('hvwatch'), perf: ratio('perf'), bpftrace: ratio('bpftrace') };
  const vsPeer: GuestResult['vsPeer'] = {};
  for (const p of ['perf', 'bpftrace'] as const) {
    if (ms[p].length) vsPeer[p] = (ratios.hvwatch.median - 1) / (ratios[p].median - 1);
  }
  return {
    writes,
    rounds,
    ms,
    ratios,
    vsPeer,
    bpftraceCommand: `bpftrace -e '${[...BPFTRACE_EXITS.values()].join(' ')}'`,
    bpftraceWhy,
    perfDataBytes: median(perfBytes),
    hvwatchMapBytes: mapBytes,
    hvwatchMapBytesByFamily: byFamily,
    attached,
    perfCommand: `perf kvm stat record -o perf.data -- kvm-guest --writes ${writes}`,
    perfWhy,
  };
}
