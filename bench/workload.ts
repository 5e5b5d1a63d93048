// Workload slowdown: the same driver runs without the agent, with the default probe set
// and with every hot probe, interleaved round by round (A B C A B C ...), the agent living
// in this process and attached only for its own runs, scraped (collect()) every second
// while a workload runs. Ratios are per round (B/A, C/A), so slow drift of the shared
// machine cancels; the median and the min-max spread are reported.
import * as path from 'node:path';
import { BpfObject, type BpfLink } from '../bpf/libbpf.js';
import { Agent } from '../agent/agent.js';
import { configSchema, type Config } from '../agent/config.js';
import { BPF_BUILD, bpfStatsSysctl, describeLoad, median, progress, runLoadAsync, type Load, type LoadKind, type Scratch } from './common.js';

export type SetupName = 'baseline' | 'default' | 'hot-all' | 'empty-hot';

interface Setup {
  name: SetupName;
  label: string;
  config?: Config;
  /** Attach bench_empty.bpf.o programs instead of the agent. */
  empty?: { name: string; tp: string }[];
}

const SETUPS: readonly Setup[] = [
  { name: 'baseline', label: 'no agent' },
  { name: 'default', label: 'default probe set', config: configSchema.parse({}) },
  { name: 'hot-all', label: 'all hot probes (probes.hot: [all])', config: configSchema.parse({ probes: { hot: ['all'] } }) },
  // Not an agent setup: the floor any program on the two hot hooks pays, for comparison.
  {
    name: 'empty-hot',
    label: 'empty tp_btf programs on the 2 hot hooks (no agent)',
    empty: [
      { name: 'empty_btf_lruvec_state', tp: 'mod_memcg_lruvec_state' },
      { name: 'empty_btf_memcg_events', tp: 'count_memcg_events' },
    ],
  },
];

function attachEmpty(progs: { name: string; tp: string }[]): { close(): void } {
  const obj = BpfObject.open(path.join(BPF_BUILD, 'bench_empty.bpf.o'));
  const links: BpfLink[] = [];
  try {
    for (const p of obj.programs()) p.setAutoload(progs.some((q) => q.name === p.name));
    obj.load();
    for (const q of progs) links.push(obj.program(q.name).attach('tp_btf', q.tp));
  } catch (e) {
    for (const l of links) l.destroy();
    obj.close();
    throw e;
  }
  return {
    close: () => {
      for (const l of links) l.destroy();
      obj.close();
    },
  };
}

/** The page-fault loop is CPU-bound and judged on the driver's CPU time, which a
 * neighbour on the same CPUs does not inflate; fsync'd writes wait on the disk and the
 * churn loop on fork, fsync and cgroup removal, so they are judged on wall-clock time. */
export const METRIC: Record<LoadKind, 'cpu' | 'wall'> = { fault: 'cpu', fsync: 'wall', churn: 'wall' };
export const KINDS: readonly LoadKind[] = ['fault', 'fsync', 'churn'];

export interface SlowdownRow {
  load: LoadKind;
  setup: SetupName;
  label: string;
  metric: 'cpu' | 'wall';
  /** Median driver time in ms of this setup's runs (the row's metric). */
  medianMs: number;
  /** Median of the per-round ratios to the same round's baseline (baseline: 1). */
  ratio: number;
  min: number;
  max: number;
  /** Per-round ratios, in round order. */
  ratios: number[];
  /** Median per-round ratio of wall-clock time (equals ratio for wall-clock rows). */
  wallRatio: number;
}

export interface SlowdownResult {
  rounds: number;
  loads: Record<LoadKind, string>;
  /** Pages the driver touches (fault) or writes (fsync) per run. */
  pagesPerRun: Record<LoadKind, number>;
  /** Probes and tiers each setup attached. */
  attached: Record<SetupName, string[]>;
  rows: SlowdownRow[];
  /** Every timed run, ms, by load and setup, in round order. */
  raw: Record<LoadKind, Record<SetupName, { ms: number; cpuMs: number }[]>>;
  notes: string[];
}

export async function workloadSlowdown(scratch: Scratch, quick: boolean): Promise<SlowdownResult> {
  const rounds = quick ? 3 : 11;
  const loads: Record<LoadKind, Load> = quick
    ? {
        fault: { kind: 'fault', mib: 64, iters: 4 },
        fsync: { kind: 'fsync', mib: 32, chunkKib: 256, passes: 1 },
        churn: { kind: 'churn', cgroups: 30, anonKib: 1024, writeKib: 64 },
      }
    : {
        fault: { kind: 'fault', mib: 64, iters: 16 },
        fsync: { kind: 'fsync', mib: 64, chunkKib: 256, passes: 6 },
        churn: { kind: 'churn', cgroups: 150, anonKib: 1024, writeKib: 64 },
      };
  const notes: string[] = [];
  if (bpfStatsSysctl() !== '0') {
    notes.push(`kernel.bpf_stats_enabled was ${bpfStatsSysctl()} during the slowdown runs: run-time accounting adds to every program run`);
  }
  const perSetup = (): Record<SetupName, { ms: number; cpuMs: number }[]> => ({ baseline: [], default: [], 'hot-all': [], 'empty-hot': [] });
  const raw: SlowdownResult['raw'] = { fault: perSetup(), fsync: perSetup(), churn: perSetup() };
  const attached: SlowdownResult['attached'] = { baseline: [], default: [], 'hot-all': [], 'empty-hot': [] };
  const pagesPerRun: SlowdownResult['pagesPerRun'] = { fault: 0, fsync: 0, churn: 0 };

  // Round 0 warms the page cache, the cgroup and the agent's code paths; it is not counted.
  for (let round = 0; round <= rounds; round++) {
    progress(`slowdown: round ${round}/${rounds}${round === 0 ? ' (warm-up, discarded)' : ''}`);
    // Rotated each round, so no setup always runs right after the agent's load/unload.
    for (const s of SETUPS.map((_, i) => SETUPS[(i + round) % SETUPS.length]!)) {
      let agent: Agent | undefined;
      let empty: { close(): void } | undefined;
      if (s.empty) {
        empty = attachEmpty(s.empty);
        attached[s.name] = s.empty.map((e) => `${e.name} (tp_btf)`);
      }
      if (s.config) {
        agent = new Agent(s.config);
        agent.start();
        attached[s.name] = agent.status.filter((p) => p.chosen).map((p) => `${p.name} (${p.chosen!.attach})`);
        // Probes this kernel cannot attach (e.g. fentry/kprobe tiers here) cost nothing.
        const off = agent.status.filter((p) => p.enabled && !p.chosen).map((p) => p.name);
        if (off.length && round === 0) notes.push(`${s.label}: enabled but not attachable on this kernel: ${off.join(', ')}`);
        if (!attached[s.name]!.length) {
          await agent.stop();
          throw new Error(`${s.label}: the agent attached no probe`);
        }
      }
      try {
        for (const kind of KINDS) {
          const r = await runLoadAsync(scratch, loads[kind], agent ? () => agent!.collect() : undefined);
          if (round > 0) raw[kind][s.name].push({ ms: r.ns / 1e6, cpuMs: r.cpu_ns / 1e6 });
          pagesPerRun[kind] = r.pages;
        }
      } finally {
        await agent?.stop();
        empty?.close();
      }
    }
  }

  const rows: SlowdownRow[] = [];
  for (const kind of KINDS) {
    const metric = METRIC[kind];
    const pick = (r: { ms: number; cpuMs: number }): number => (metric === 'cpu' ? r.cpuMs : r.ms);
    const base = raw[kind].baseline;
    for (const s of SETUPS) {
      const runs = raw[kind][s.name];
      const ratios = runs.map((r, i) => pick(r) / pick(base[i]!));
      rows.push({
        load: kind,
        setup: s.name,
        label: s.label,
        metric,
        medianMs: median(runs.map(pick)),
        ratio: median(ratios),
        min: Math.min(...ratios),
        max: Math.max(...ratios),
        ratios,
        wallRatio: median(runs.map((r, i) => r.ms / base[i]!.ms)),
      });
    }
  }
  return {
    rounds,
    loads: { fault: describeLoad(loads.fault), fsync: describeLoad(loads.fsync), churn: describeLoad(loads.churn) },
    pagesPerRun,
    attached,
    rows,
    raw,
    notes,
  };
}
