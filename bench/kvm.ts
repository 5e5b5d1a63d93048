// KVM family costs, measured in one run:
//  1. in-kernel ns per event of the kvm programs that fire here (a /dev/kvm guest doing port
//     writes: kvm_pio, kvm_userspace_exit, the ioctl tracepoints), each next to an empty
//     program on the same hook, attached at the same time, through the kernel's bpf_stats;
//  2. the exit/entry pair, whose hooks do not fire on this (paravirtual) hypervisor, through
//     BPF_PROG_TEST_RUN with repeat next to an empty program on the same path;
//  3. the guest's wall time with the default probe set attached against detached, interleaved.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { allProbeNames } from '../agent/probes/index.js';
import { BpfObject, enableRunTimeStats, type BpfLink } from '../bpf/libbpf.js';
import { BPF_BUILD, median, progress, REPO_ROOT } from './common.js';
import { testRunVsEmpty } from './race-cost.js';

const GUEST = path.join(REPO_ROOT, 'test/helpers/build/kvm-guest');

// hvwatch program -> the empty program on the same hook (bpf/src/bench_empty.bpf.c).
const PAIRS = [
  { hook: 'kvm_pio', program: 'btf_kvm_pio', empty: 'empty_btf_kvm_pio', attach: 'tp_btf' as const, target: 'kvm_pio' },
  { hook: 'kvm_userspace_exit', program: 'btf_kvm_userspace_exit', empty: 'empty_btf_kvm_userspace_exit', attach: 'tp_btf' as const, target: 'kvm_userspace_exit' },
  { hook: 'sys_enter_ioctl', program: 'tp_sys_enter_ioctl', empty: 'empty_tp_sys_enter_ioctl', attach: 'tracepoint' as const, target: 'syscalls/sys_enter_ioctl' },
  { hook: 'sys_exit_ioctl', program: 'tp_sys_exit_ioctl', empty: 'empty_tp_sys_exit_ioctl', attach: 'tracepoint' as const, target: 'syscalls/sys_exit_ioctl' },
];

export interface KvmCostRow {
  hook: string;
  program: string;
  events: number;
  hvwatchNs: number;
  emptyNs: number;
  ratio: number;
}

export interface KvmBenchResult {
  writes: number;
  rounds: number;
  inKernel: KvmCostRow[];
  exitEntry: { repeat: number; pairNs: number; emptyNs: number; perEventNs: number; ratio: number };
  slowdown: { baselineMs: number[]; attachedMs: number[]; ratios: number[]; ratio: number; min: number; max: number };
  attached: string[];
}

function guestRunMs(writes: number): number {
  const r = spawnSync(GUEST, ['-name', 'guest=hvwatch-bench', '--writes', String(writes)], { encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`kvm-guest failed (status ${r.status}): ${r.stderr.trim()}`);
  const out = JSON.parse(r.stdout) as { run_ns: number; io_exits: number };
  if (out.io_exits !== writes) throw new Error(`kvm-guest: ${out.io_exits} io exits for ${writes} writes`);
  return out.run_ns / 1e6;
}

function attachEmpty(): { obj: BpfObject; links: BpfLink[] } {
  const obj = BpfObject.open(path.join(BPF_BUILD, 'bench_empty.bpf.o'));
  const want = new Set(PAIRS.map((p) => p.empty));
  for (const p of obj.programs()) p.setAutoload(want.has(p.name));
  obj.load();
  return { obj, links: PAIRS.map((p) => obj.program(p.empty).attach(p.attach, p.target)) };
}

export function kvmBenchAvailable(): string | undefined {
  if (!fs.existsSync('/dev/kvm')) return 'no /dev/kvm';
  if (!fs.existsSync(GUEST)) return `${GUEST} not built (make -C test/helpers)`;
  return undefined;
}

export async function kvmBench(quick: boolean): Promise<KvmBenchResult> {
  const writes = quick ? 100_000 : 1_000_000;
  const rounds = quick ? 2 : 5;

  // 1. In-kernel cost, hvwatch and empty programs attached together, run-time stats on.
  progress(`kvm: in-kernel cost over ${writes.toLocaleString('en-US')} port writes`);
  const stats = enableRunTimeStats();
  const agent = new Agent(configSchema.parse({}));
  let inKernel: KvmCostRow[];
  let attached: string[];
  try {
    agent.start();
    attached = agent.status.filter((p) => p.family === 'kvm' && p.chosen).map((p) => `${p.name} (${p.chosen!.attach})`);
    const empty = attachEmpty();
    try {
      const progs = agent.family('kvm')!.programs;
      const before = new Map(progs.map((p) => [p.program.name, p.program.stats()]));
      const emptyBefore = new Map(PAIRS.map((p) => [p.empty, empty.obj.program(p.empty).stats()]));
      guestRunMs(writes);
      inKernel = PAIRS.flatMap((pair) => {
        const prog = progs.find((p) => p.program.name === pair.program)?.program;
        if (!prog) return [];
        const a = prog.stats();
        const a0 = before.get(pair.program)!;
        const e = empty.obj.program(pair.empty).stats();
        const e0 = emptyBefore.get(pair.empty)!;
        const events = a.runCount - a0.runCount;
        const hvwatchNs = (a.runTimeNs - a0.runTimeNs) / Math.max(1, events);
        const emptyNs = (e.runTimeNs - e0.runTimeNs) / Math.max(1, e.runCount - e0.runCount);
        return [{ hook: pair.hook, program: pair.program, events, hvwatchNs, emptyNs, ratio: hvwatchNs / emptyNs }];
      });
    } finally {
      for (const l of empty.links) l.destroy();
      empty.obj.close();
    }
  } finally {
    await agent.stop();
    stats.close();
  }

  // 2. exit/entry through the test-run path (kvm_exit/kvm_entry do not fire here).
  progress('kvm: exit/entry pair through BPF_PROG_TEST_RUN');
  const bare = new Agent(configSchema.parse({ probes: { disable: allProbeNames() } }));
  bare.start();
  let exitEntry: KvmBenchResult['exitEntry'];
  try {
    const fam = bare.family('kvm')!;
    const repeat = quick ? 100_000 : 1_000_000;
    const { ns: pairNs, emptyNs } = testRunVsEmpty(fam, 'bench_exit_entry', repeat, quick ? 3 : 9);
    exitEntry = { repeat, pairNs, emptyNs, perEventNs: pairNs / 2, ratio: pairNs / 2 / emptyNs };
  } finally {
    await bare.stop();
  }

  // 3. The guest's wall time, detached vs the default probe set, interleaved per round.
  const baselineMs: number[] = [];
  const attachedMs: number[] = [];
  guestRunMs(Math.min(writes, 50_000)); // warm-up, discarded
  for (let round = 1; round <= rounds; round++) {
    progress(`kvm: guest slowdown round ${round}/${rounds}`);
    baselineMs.push(guestRunMs(writes));
    const a = new Agent(configSchema.parse({}));
    a.start();
    try {
      attachedMs.push(guestRunMs(writes));
    } finally {
      await a.stop();
    }
  }
  const ratios = attachedMs.map((ms, i) => ms / baselineMs[i]!);
  return {
    writes, rounds, inKernel, exitEntry, attached,
    slowdown: { baselineMs, attachedMs, ratios, ratio: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) },
  };
}

export function kvmBenchMarkdown(r: KvmBenchResult): string {
  const f = (n: number): string => n.toFixed(1);
  const v = (ratio: number): string => `${ratio.toFixed(2)}x ${ratio <= 2 ? 'pass' : 'miss'}`;
  return `## KVM family

A /dev/kvm guest (test/helpers/kvm-guest.c) doing ${r.writes.toLocaleString('en-US')} port writes, then HLT. Attached by
the default set: ${r.attached.join(', ')}. On this hypervisor kvm_exit/kvm_entry and the nested
tracepoints do not fire (see DESIGN.md), so the exit/entry pair is measured on the test-run path.

In-kernel cost per event (bpf_stats, hvwatch and empty programs attached together):

| hook | hvwatch program | events | hvwatch ns/ev | empty ns/ev | hvwatch/empty (<= 2x) |
|---|---|---:|---:|---:|---|
${r.inKernel.map((x) => `| ${x.hook} | ${x.program} | ${x.events} | ${f(x.hvwatchNs)} | ${f(x.emptyNs)} | ${v(x.ratio)} |`).join('\n')}

Exit/entry pair through BPF_PROG_TEST_RUN (repeat ${r.exitEntry.repeat.toLocaleString('en-US')}): one run is one exit and one entry on
64 rotating vCPU threads; per event = half a run, against an empty SEC("tc") program on the same path.

| program | ns per run | ns per event | per event / empty (<= 2x) |
|---|---:|---:|---|
| empty SEC("tc") | ${f(r.exitEntry.emptyNs)} | ${f(r.exitEntry.emptyNs)} | 1 (floor) |
| exit + entry handlers | ${f(r.exitEntry.pairNs)} | ${f(r.exitEntry.perEventNs)} | ${v(r.exitEntry.ratio)} |

Guest wall time (vCPU released to last HLT), default probe set attached vs detached, ${r.rounds} interleaved rounds:
median ratio ${r.slowdown.ratio.toFixed(3)} (min ${r.slowdown.min.toFixed(3)}, max ${r.slowdown.max.toFixed(3)});
detached ${r.slowdown.baselineMs.map((x) => x.toFixed(0)).join(', ')} ms; attached ${r.slowdown.attachedMs.map((x) => x.toFixed(0)).join(', ')} ms.
`;
}
