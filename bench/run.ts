// hvwatch benchmark: `node dist/bench/run.js [--json] [--quick] [--only PART,...] [--baseline REV]`
// (npm run bench; --only runs some parts and leaves bench/RESULTS.md as it is).
//   1. in-kernel cost per event of every attached program vs an empty program on the same
//      hook and vs a bpftrace equivalent (bpf_stats); test-run cost where hooks cannot attach
//   2. workload slowdown with and without the agent, interleaved: page faults, fsync'd
//      writes, cgroup churn, and a /dev/kvm guest doing port writes
//   3. the guest under `perf kvm stat record` vs under hvwatch: slowdown and bytes kept
//   4. the agent: start-up, RSS, CPU and /metrics latency idle and at scale, ring-buffer
//      decode throughput with every event accounted for
// Prints markdown (or JSON with --json) and, for a full run, rewrites bench/RESULTS.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { setLogLevel } from '../agent/log.js';
import { BENCH_DIR, machine, progress, Scratch, type Machine } from './common.js';
import { kernelCost, type KernelCostResult } from './kernel-cost.js';
import { testRunCost, type TestRunResult } from './test-run-cost.js';
import { workloadSlowdown, type SlowdownResult, type SlowdownRow } from './workload.js';
import { guestBench, guestUnavailable, type GuestResult } from './kvm.js';
import { agentCost, type AgentCostResult, type AgentRun, type ScrapeStats } from './agent-cost.js';
import { ringbufBench, type RingbufResult } from './ringbuf.js';
import { mapReadBench, mapReadMarkdown, type MapReadResult } from './map-read.js';
import { firstSightBench, firstSightSummary, type FirstSightResult } from './first-sight.js';
import { MISS_NOTES } from './notes.js';

export const TARGET = {
  vsFloor: 2, // each program <= 2x the empty floor
  vsBpftrace: 0.5, // and <= 0.5x bpftrace
  fault: 1.03, // default set on the page-fault loop
  fsync: 1.01, // ... on fsync'd writes
  guest: 1.03, // ... on the guest port-write loop (issue 16)
  p99ProtobufMs: 50, // /metrics p99 at 2,000 cgroups x 200 VMs, protobuf
  p99TextMs: 150, // ... classic text
  samples: 15_000, // samples per protobuf scrape (a native histogram is one)
  textShrink: 5, // classic text at least 5x smaller than the baseline's
  rssIdleMiB: 120, // agent RSS idle
  rssPeakMiB: 150, // ... during the scrapes at scale
  readyMs: 3000, // launch -> /readyz
  ringRate: 100_000, // events/s with 0 unexplained losses
} as const;

type Verdict = 'pass' | 'miss' | 'inconclusive' | 'n/a';

// Filled in from the measured composition of the exposition when the text target is missed.
const TEXT_SHRINK_WHY =
  'Each bench cgroup has three counters and two histograms whose classic form (every 4th power of two, catalog CLASSIC_STEP) is 7 and 4 buckets ' +
  "plus +Inf, _sum and _count: 22 lines a cgroup, about 2 kB with its ~40-byte cgroup label, against the baseline's 61. 5x (about 12 lines) would leave one " +
  'finite bucket per histogram; native histograms are the fleet answer (the protobuf row). gzip, which Prometheus always accepts, would shrink the bytes on ' +
  'the wire, not the samples stored.';

const P99_WHY =
  'A collection now reads only BPF maps and cached host facts: memory.stat, the cgroup and VMM liveness checks and the cgroupfs walks after the ' +
  'first are refreshed by a bounded background timer (agent/sources/refresh.ts, hvwatch_host_refresh_*), and a scrape allocates ~3 MB (was ' +
  '~7 MB: in-process heap sampling, docs/cost.md). What is left of p99 over p50 is V8 GC and, on this shared 2-CPU machine, other jobs ' +
  "(compare the baseline's p99 across runs; CPU ms per scrape is the steadier measure).";
const RSS_WHY =
  "bin/hvwatch runs Node with MALLOC_ARENA_MAX=1 and --max-semi-space-size=1 (~-45 MB idle), and the agent hands freed malloc pages back every 10 s. What is left: ~43 MB of the node binary's own " +
  'pages, the live JS heap (~21 MB at this scale after GC: the batched-read buffers ~7.5 MB, of which memcg_stats per CPU 5.6 MB; series, labels and ' +
  'cached protobuf bytes), malloc in use (~31 MB at scale) and V8 pages held between GCs; the peak (VmHWM) includes the scale-up, when ' +
  '2,000 cgroups and 200 VMs are first resolved. Run to run ±20 MB here.';

const pct = (r: number): string => (Number.isFinite(r) ? `${r >= 1 ? '+' : ''}${((r - 1) * 100).toFixed(1)} %` : 'n/a');
const x = (r: number | undefined): string => (r === undefined || !Number.isFinite(r) ? 'n/a' : `${r.toFixed(2)}x`);
const f1 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? 'n/a' : n.toFixed(1));
const f2 = (n: number | undefined): string => (n === undefined || !Number.isFinite(n) ? 'n/a' : n.toFixed(2));
const int = (n: number): string => Math.round(n).toLocaleString('en-US');
const mib = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** One-sided sign test over per-round ratios against a target: pass (miss) when few (many)
 * rounds exceed it at p < 0.05; otherwise inconclusive on this many rounds. */
function signTest(ratios: number[], target: number): Verdict {
  const n = ratios.length;
  if (!n) return 'n/a';
  const k = ratios.filter((q) => q > target).length;
  const choose = (a: number, b: number): number => {
    let c = 1;
    for (let i = 0; i < b; i++) c = (c * (a - i)) / (i + 1);
    return c;
  };
  let low = 0;
  let high = 0;
  for (let i = 0; i <= n; i++) {
    const p = choose(n, i) / 2 ** n;
    if (i <= k) low += p;
    if (i >= k) high += p;
  }
  return low < 0.05 ? 'pass' : high < 0.05 ? 'miss' : 'inconclusive';
}

type Part<T> = { ok: true; value: T } | { ok: false; error: string };

/** The parts `--only` can pick. */
const PARTS = ['kernel', 'test-run', 'slowdown', 'guest', 'agent', 'map-read', 'first-sight', 'ringbuf'] as const;
type Part_ = (typeof PARTS)[number];

async function part<T>(name: string, fn: () => Promise<T> | T): Promise<Part<T>> {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    const error = (e as Error).message.split('\n')[0]!;
    progress(`${name} failed: ${error}`);
    return { ok: false, error };
  }
}

interface Results {
  machine: Machine;
  quick: boolean;
  elapsedS: number;
  dataDir: string;
  kernel: Part<KernelCostResult>;
  testRun: Part<TestRunResult>;
  slowdown: Part<SlowdownResult>;
  guest: Part<GuestResult>;
  agent: Part<AgentCostResult>;
  mapRead: Part<MapReadResult>;
  firstSight: Part<FirstSightResult>;
  ringbuf: Part<RingbufResult[]>;
}

// ---- estimates: program time per unit of work from the in-kernel table ----

/** Sum over the programs a configuration attached of events per unit x ns per event, over
 * the baseline ns per unit: what the programs alone add. */
function estimate(k: KernelCostResult, config: string, load: 'fault' | 'fsync' | 'guest', baselineNsPerUnit: number): number | undefined {
  let ns = 0;
  let any = false;
  for (const r of k.rows) {
    if (!r.configs.includes(config)) continue;
    const l = r.perLoad[load];
    if (!l) continue;
    ns += l.perUnit * l.hvwatchNs;
    any = true;
  }
  return any ? 1 + ns / baselineNsPerUnit : undefined;
}

// ---- the target summary ----

interface TargetRow {
  target: string;
  measured: string;
  verdict: Verdict;
  why?: string;
}

function targetRows(r: Results): TargetRow[] {
  const rows: TargetRow[] = [];
  if (r.kernel.ok || r.testRun.ok) {
    const kr = r.kernel.ok ? r.kernel.value.rows : [];
    const tr = r.testRun.ok ? r.testRun.value.rows : [];
    const floorMiss = [
      ...kr.filter((q) => q.ratioFloor > TARGET.vsFloor).map((q) => `${q.program} ${x(q.ratioFloor)}`),
      ...tr.filter((q) => q.ratio > TARGET.vsFloor).map((q) => `${q.program} (test-run) ${x(q.ratio)}`),
    ];
    rows.push({
      target: 'each program <= 2x the empty floor on its hook',
      measured: `${kr.length + tr.length - floorMiss.length} of ${kr.length + tr.length} programs within${floorMiss.length ? `; over: ${floorMiss.join(', ')}` : ''}`,
      verdict: floorMiss.length ? 'miss' : 'pass',
      why: floorMiss.length
        ? "The floor here is 60-70 ns (dispatch plus the accounting's two clock reads); each hash-map " +
          'operation adds about 40-50 ns, so a program doing two or more per event lands over 2x. Per program: "Programs over target" below.'
        : undefined,
    });
    const withBt = kr.filter((q) => q.ratioBpftrace !== undefined);
    const btMiss = withBt.filter((q) => q.ratioBpftrace! > TARGET.vsBpftrace);
    const onFloor = btMiss.filter((q) => q.bpftraceNs! < TARGET.vsFloor * q.floorNs);
    rows.push({
      target: 'each program <= 0.5x its bpftrace equivalent',
      measured: withBt.length
        ? `${withBt.length - btMiss.length} of ${withBt.length} programs with an equivalent within` +
          (btMiss.length
            ? `; over: ${btMiss.map((q) => `${q.program} ${x(q.ratioBpftrace)}`).join(', ')} (${onFloor.length} of them against a bpftrace program itself under 2x the floor)`
            : '')
        : `no bpftrace column (${r.kernel.ok ? (r.kernel.value.bpftrace.why ?? 'no equivalents') : 'in-kernel part failed'})`,
      verdict: withBt.length ? (btMiss.length ? 'miss' : 'pass') : 'n/a',
      why: btMiss.length
        ? `${onFloor.length} of the ${btMiss.length} are against bpftrace programs that themselves cost under 2x the floor: ` +
          'when both tools sit near the floor no ratio can reach 0.5, and "above floor" (section 1) is the fair comparison. Per program: "Programs over target" below.'
        : undefined,
    });
  }
  if (r.slowdown.ok) {
    for (const [load, t] of [
      ['fault', TARGET.fault],
      ['fsync', TARGET.fsync],
    ] as const) {
      const row = r.slowdown.value.rows.find((q) => q.load === load && q.setup === 'default')!;
      const v = signTest(row.ratios, t);
      const over = row.ratios.filter((q) => q > t).length;
      rows.push({
        target: `default probe set <= ${pct(t)} on ${load === 'fault' ? 'the page-fault loop' : "fsync'd writes in a memory cgroup"}`,
        measured: `median ${pct(row.ratio)} (rounds ${pct(row.min)} .. ${pct(row.max)}; ${over}/${row.ratios.length} rounds over)${estimateText(r, load)}`,
        verdict: v,
        why:
          v === 'pass'
            ? undefined
            : v === 'inconclusive'
              ? `The per-round spread (${pct(row.min)} .. ${pct(row.max)}) of this shared 2-CPU machine is far wider than the target, so ${row.ratios.length} rounds cannot resolve it; ` +
                'the in-kernel estimate is the better guide. Fix: more rounds on an idle host with pinned CPUs.'
              : `The in-kernel estimate says what the programs themselves add; the rest is this machine's noise or effects off the measured task. Fix: see the programs on this workload's hooks in section 1.`,
      });
    }
  }
  if (r.guest.ok) {
    const g = r.guest.value.ratios.hvwatch;
    const v: Verdict = g.ratios.length >= 5 ? signTest(g.ratios, TARGET.guest) : g.median <= TARGET.guest ? 'pass' : 'miss';
    rows.push({
      target: `default probe set <= ${pct(TARGET.guest)} on a guest doing ${int(r.guest.value.writes)} port writes`,
      measured: `median ${pct(g.median)} (rounds ${pct(g.min)} .. ${pct(g.max)}, ${g.ratios.length} rounds)${estimateText(r, 'guest')}${peerText(r.guest.value)}`,
      verdict: v,
      why: v !== 'pass' ? guestWhy(r) : undefined,
    });
  }
  if (r.agent.ok) {
    const a = r.agent.value;
    const full = a.scale.cgroups >= 2000 && a.scale.vms >= 200;
    const ours = a.runs.find((q) => q.label === 'hvwatch')!;
    const base = a.runs.find((q) => q.label === 'baseline');
    const at = (run: AgentRun | undefined, f: 'text' | 'protobuf'): ScrapeStats | undefined => run?.scale.find((q) => q.format === f);
    const [pb, tx, bt] = [at(ours, 'protobuf')!, at(ours, 'text')!, at(base, 'text')];
    const vs = (now: number, then: number | undefined, unit: string): string =>
      then === undefined ? '' : `; baseline ${f1(then)}${unit}, ${x(then / now)} less`;
    const scaleNote = `at ${ours.cgroupLabels} cgroups x ${ours.vmLabels} VMs in the exposition${full ? '' : ' (--quick: reduced scale)'}`;
    const judge = (ok: boolean): Verdict => (!full ? 'n/a' : ok ? 'pass' : 'miss');
    rows.push({
      target: `/metrics p99 <= ${TARGET.p99ProtobufMs} ms (protobuf) at 2,000 cgroups x 200 VMs`,
      measured: `p99 ${f1(pb.p99Ms)} ms, p50 ${f1(pb.p50Ms)} ms ${scaleNote}${vs(pb.p99Ms, bt?.p99Ms, ' ms p99 (text, its only format)')}`,
      verdict: judge(pb.p99Ms <= TARGET.p99ProtobufMs),
      why: full && pb.p99Ms > TARGET.p99ProtobufMs ? P99_WHY : undefined,
    });
    rows.push({
      target: `/metrics p99 <= ${TARGET.p99TextMs} ms (classic text) at 2,000 cgroups x 200 VMs`,
      measured: `p99 ${f1(tx.p99Ms)} ms, p50 ${f1(tx.p50Ms)} ms (of a scrape, collect takes ${f1(tx.collectMs)} ms)${vs(tx.p99Ms, bt?.p99Ms, ' ms p99')}`,
      verdict: judge(tx.p99Ms <= TARGET.p99TextMs),
    });
    rows.push({
      target: `<= ${int(TARGET.samples)} samples per protobuf scrape (a native histogram is one)`,
      measured: `${int(pb.samples)} samples, ${mib(pb.bytes)}${bt ? `; baseline ${int(bt.samples)} samples (${mib(bt.bytes)} text), ${x(bt.samples / pb.samples)} fewer` : ''}`,
      verdict: judge(pb.samples <= TARGET.samples),
    });
    rows.push({
      target: `classic text >= ${TARGET.textShrink}x smaller than the baseline's`,
      measured: bt
        ? `${mib(tx.bytes)} and ${int(tx.samples)} samples vs ${mib(bt.bytes)} and ${int(bt.samples)}: ${x(bt.bytes / tx.bytes)} smaller in bytes, ${x(bt.samples / tx.samples)} in samples`
        : `no baseline: ${a.baselineWhy}`,
      verdict: !bt ? 'n/a' : judge(bt.bytes / tx.bytes >= TARGET.textShrink),
      why: bt && full && bt.bytes / tx.bytes < TARGET.textShrink ? TEXT_SHRINK_WHY : undefined,
    });
    rows.push({
      target: `agent RSS <= ${TARGET.rssIdleMiB} MB idle and <= ${TARGET.rssPeakMiB} MB during the scrapes at scale`,
      measured:
        `idle ${f1(ours.idleRssMiB)} MiB, at scale ${f1(ours.rssMiB)} MiB, peak (VmHWM) ${f1(ours.peakRssMiB)} MiB` +
        (base ? `; baseline idle ${f1(base.idleRssMiB)}, at scale ${f1(base.rssMiB)}, peak ${f1(base.peakRssMiB)} MiB` : ''),
      verdict: ours.idleRssMiB <= TARGET.rssIdleMiB && ours.peakRssMiB <= TARGET.rssPeakMiB ? 'pass' : 'miss',
      why: ours.idleRssMiB > TARGET.rssIdleMiB || ours.peakRssMiB > TARGET.rssPeakMiB ? RSS_WHY : undefined,
    });
    rows.push({
      target: `ready (launch -> /readyz 200) <= ${TARGET.readyMs / 1000} s`,
      measured: `median ${int(a.startup.medianMs)} ms, max ${int(a.startup.maxMs)} ms over ${a.startup.trialsMs.length} launches`,
      verdict: a.startup.maxMs <= TARGET.readyMs ? 'pass' : 'miss',
      why:
        a.startup.maxMs > TARGET.readyMs ? "Start-up loads every family's BPF objects (verifier) and parses BTF; see the RSS row for the BTF cost." : undefined,
    });
  }
  if (r.ringbuf.ok) {
    for (const rb of r.ringbuf.value) {
      const at = rb.phases.filter((q) => q.targetRate === TARGET.ringRate);
      const p = at.find((q) => q.logLevel === 'info');
      const bad = at.filter((q) => q.unexplained !== 0);
      rows.push({
        target: `ring buffer (${rb.family}): 0 unexplained losses at 100,000 events/s`,
        measured: at.length
          ? at
              .map(
                (q) =>
                  `log level ${q.logLevel}: ${int(q.attempted)} sent in ${q.seconds.toFixed(1)} s, ${int(q.received)} decoded + ${int(q.droppedCounted)} counted drops, ${int(q.unexplained)} unexplained`,
              )
              .join('; ')
          : `not measured: ${rb.why}`,
        verdict: !at.length ? 'n/a' : bad.length ? 'miss' : 'pass',
        why: bad.length
          ? 'Events neither decoded nor counted as dropped: the reader lost them after the kernel accepted them (a bug to chase in bpf/ringbuf.ts).'
          : undefined,
      });
      if (p) {
        const q = at.find((z) => z.logLevel !== 'info');
        rows.push({
          target: `ring buffer (${rb.family}): decode keeps up with 100,000 events/s (no drops at all)`,
          measured:
            `as shipped (log level info): ${int(p.decodedPerS)} events/s decoded, ${int(p.droppedCounted)} dropped, ${p.cpuUsPerEvent.toFixed(1)} µs CPU per event` +
            (q ? `; log level error: ${int(q.decodedPerS)} events/s, ${int(q.droppedCounted)} dropped, ${q.cpuUsPerEvent.toFixed(1)} µs per event` : ''),
          verdict: p.droppedCounted === 0 ? 'pass' : 'miss',
          why:
            p.droppedCounted !== 0
              ? `The drops are counted (hvwatch_ringbuf_dropped_events_total), not lost silently. The agent spends ${p.cpuUsPerEvent.toFixed(1)} µs of CPU per event as shipped` +
                (q ? ` and ${q.cpuUsPerEvent.toFixed(1)} µs at log level error` : '') +
                '. The worker drains the ring from its mmap; drops at this rate mean it did not run for longer than the ring holds ' +
                '(262,144 bytes: ~33 ms of 80-byte records at 100,000/s), e.g. descheduled on a loaded machine: size the ring for the burst.'
              : undefined,
        });
      }
      const max = rb.phases.filter((q) => q.targetRate === undefined);
      if (max.length) {
        const best = max.reduce((a, b) => (b.decodedPerS > a.decodedPerS ? b : a));
        rows.push({
          target: `ring buffer (${rb.family}): >= 1,000,000 events/s decoded on one core, every event accounted for`,
          measured: max
            .map(
              (q) =>
                `log level ${q.logLevel}: ${int(q.decodedPerS)} events/s decoded, ${q.cpuUsPerEvent.toFixed(2)} µs CPU per event (worker + main thread), ${int(q.droppedCounted)} counted drops, ${int(q.unexplained)} unexplained`,
            )
            .join('; '),
          verdict: best.decodedPerS >= 1_000_000 && max.every((q) => q.cpuUsPerEvent <= 1 && q.unexplained === 0) ? 'pass' : 'miss',
          why: max.some((q) => q.unexplained !== 0) ? 'Events neither decoded nor counted as dropped at the maximum rate.' : undefined,
        });
      }
    }
  }
  return rows;
}

/** hvwatch's slowdown as a fraction of each peer's, measured in the same rounds. A peer whose
 * median shows no slowdown leaves nothing to divide by: its median is given instead. */
function peerText(g: GuestResult): string {
  const parts: string[] = [];
  const one = (name: string, peer: 'perf' | 'bpftrace'): void => {
    const m = g.ratios[peer].median;
    if (g.vsPeer[peer] === undefined) return;
    parts.push(m > 1 ? `${f2(g.vsPeer[peer])}x ${name}'s (${pct(m)})` : `n/a against ${name} (its median ${pct(m)}: no slowdown resolved)`);
  };
  one('perf kvm stat record', 'perf');
  one('the bpftrace exit counter', 'bpftrace');
  return parts.length ? `; hvwatch's slowdown is ${parts.join(' and ')}` : '';
}

/** What the default set's programs do per port write, from the in-kernel table. */
function guestWhy(r: Results): string {
  if (!r.kernel.ok || !r.guest.ok) return "See section 1 for the KVM programs' cost per event.";
  const per = r.kernel.value.rows
    .filter((q) => q.configs.includes('default') && (q.perLoad.guest?.perUnit ?? 0) >= 0.5)
    .map((q) => ({ p: q.program, n: q.perLoad.guest!.perUnit, ns: q.perLoad.guest!.perUnit * q.perLoad.guest!.hvwatchNs }))
    .sort((a, b) => b.ns - a.ns);
  const total = per.reduce((s, q) => s + q.ns, 0);
  const exitUs = (Math.min(...r.guest.value.ms.baseline) * 1e3) / r.guest.value.writes;
  return (
    `Each port write is one exit to the VMM (${exitUs.toFixed(1)} µs here), and the default set runs ${per.reduce((s, q) => s + q.n, 0).toFixed(1)} programs on it: ` +
    `${per.map((q) => `${q.p} ${q.n.toFixed(1)}x ${f1(q.ns)} ns`).join(', ')}; ${f1(total)} ns per write in all, with the floor's dispatch. ` +
    'A hook shared by several families runs one attached program (the others by tail call, counted in its time). ' +
    'The kvm and kvm_irq programs share one per-thread task-storage record, kvm_irq does no work on KVM_RUN (an injection finds its VM when it needs it); ' +
    "what is left per write is four hooks' dispatch, two tail calls, four record lookups, " +
    'two clock reads and three per-VM hash lookups (port counter, userspace-exit counter, userspace-time histogram). ' +
    'Fix: a pointer-free per-VM slot index in the thread record (array access instead of hash lookups; see "Programs over target").'
  );
}

function estimateText(r: Results, load: 'fault' | 'fsync' | 'guest'): string {
  if (!r.kernel.ok) return '';
  let base: number | undefined;
  if (load === 'guest' && r.guest.ok) {
    base = (Math.min(...r.guest.value.ms.baseline) * 1e6) / r.guest.value.writes;
  } else if (load !== 'guest' && r.slowdown.ok) {
    const row = r.slowdown.value.rows.find((q) => q.load === load && q.setup === 'baseline')!;
    base = (row.medianMs * 1e6) / r.slowdown.value.pagesPerRun[load];
  }
  const e = base === undefined ? undefined : estimate(r.kernel.value, 'default', load, base);
  return e === undefined ? '' : `; in-kernel estimate ${pct(e)}`;
}

// ---- tables ----

function costTable(k: KernelCostResult): string {
  const lines = [
    '| family | probe | program | hook | configs | events | hvwatch ns/ev | floor ns/ev | hvwatch/floor (<= 2x) | bpftrace ns/ev | hvwatch/bpftrace (<= 0.5x) | above floor: hvwatch / bpftrace ns |',
    '|---|---|---|---|---|---:|---:|---:|---|---:|---|---:|',
  ];
  for (const r of k.rows) {
    const vf = r.ratioFloor <= TARGET.vsFloor ? 'pass' : 'miss';
    const vb = r.ratioBpftrace === undefined ? `n/a (${r.bpftraceWhy})` : `${x(r.ratioBpftrace)} ${r.ratioBpftrace <= TARGET.vsBpftrace ? 'pass' : 'miss'}`;
    lines.push(
      `| ${r.family} | ${r.probe} | ${r.program} | ${r.hook} | ${r.configs.join(', ')} | ${int(r.events)} | ${f1(r.hvwatchNs)} | ${f1(r.floorNs)} | ` +
        `${x(r.ratioFloor)} ${vf} | ${f1(r.bpftraceNs)} | ${vb} | ${f1(r.hvwatchAboveFloorNs)} / ${f1(r.bpftraceAboveFloorNs)} |`,
    );
  }
  return lines.join('\n');
}

function testRunTable(t: TestRunResult): string {
  const lines = [
    '| family | program | repeat x trials | ns per run | events per run | ns per event | floor ns (empty SEC("tc")) | per event / floor (<= 2x) |',
    '|---|---|---|---:|---:|---:|---:|---|',
  ];
  for (const r of t.rows) {
    lines.push(
      `| ${r.family} | ${r.program} | ${int(r.repeat)} x ${r.trials} | ${f1(r.nsPerRun)} | ${r.eventsPerRun}${r.eventsPerRunKnown ? '' : ' (assumed)'} | ` +
        `${f1(r.nsPerEvent)} | ${f1(r.floorNs)} | ${x(r.ratio)} ${r.ratio <= TARGET.vsFloor ? 'pass' : 'miss'} |`,
    );
  }
  return lines.join('\n');
}

function slowdownTable(r: Results): string {
  const s = r.slowdown.ok ? r.slowdown.value : undefined;
  const lines = [
    '| workload | setup | median time | median ratio vs baseline | per-round spread | rounds | target | verdict | wall-clock median ratio | in-kernel estimate |',
    '|---|---|---:|---:|---|---:|---|---|---:|---:|',
  ];
  const name = { fault: 'page-fault loop', fsync: "fsync'd writes (memory cgroup)", churn: 'memory-cgroup churn' } as const;
  const target = (row: SlowdownRow): number | undefined =>
    row.setup !== 'default' ? undefined : row.load === 'fault' ? TARGET.fault : row.load === 'fsync' ? TARGET.fsync : undefined;
  for (const row of s?.rows ?? []) {
    const base = row.setup === 'baseline';
    const t = target(row);
    let est = '';
    if (!base && r.kernel.ok && (row.setup === 'default' || row.setup === 'hot-all') && row.load !== 'churn') {
      const b = s!.rows.find((q) => q.load === row.load && q.setup === 'baseline')!;
      const e = estimate(r.kernel.value, row.setup, row.load, (b.medianMs * 1e6) / s!.pagesPerRun[row.load]);
      est = e === undefined ? '' : pct(e);
    }
    lines.push(
      `| ${name[row.load]} | ${row.label} | ${row.medianMs.toFixed(1)} ms ${row.metric === 'cpu' ? 'CPU' : 'wall'} | ` +
        `${base ? '1 (reference)' : pct(row.ratio)} | ${base ? '' : `${pct(row.min)} .. ${pct(row.max)}`} | ${row.ratios.length} | ` +
        `${t ? `<= ${pct(t)}` : ''} | ${t ? `${signTest(row.ratios, t)} (${row.ratios.filter((q) => q > t).length} over)` : ''} | ${base ? '' : pct(row.wallRatio)} | ${est} |`,
    );
  }
  if (r.guest.ok) {
    const g = r.guest.value;
    const med = (a: number[]): number => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
    const est = estimateText(r, 'guest').replace('; in-kernel estimate ', '');
    lines.push(
      `| /dev/kvm guest, ${int(g.writes)} port writes | no agent | ${med(g.ms.baseline).toFixed(0)} ms guest run | 1 (reference) | | ${g.ms.baseline.length} | | | | |`,
    );
    const h = g.ratios.hvwatch;
    const v = h.ratios.length >= 5 ? signTest(h.ratios, TARGET.guest) : `${h.median <= TARGET.guest ? 'pass' : 'miss'} (median; ${h.ratios.length} rounds)`;
    lines.push(
      `| /dev/kvm guest, ${int(g.writes)} port writes | default probe set | ${med(g.ms.hvwatch).toFixed(0)} ms guest run | ${pct(h.median)} | ${pct(h.min)} .. ${pct(h.max)} | ${h.ratios.length} | <= ${pct(TARGET.guest)} | ${v} | | ${est} |`,
    );
    if (g.ms.perf.length) {
      const p = g.ratios.perf;
      lines.push(
        `| /dev/kvm guest, ${int(g.writes)} port writes | perf kvm stat record (peer) | ${med(g.ms.perf).toFixed(0)} ms guest run | ${pct(p.median)} | ${pct(p.min)} .. ${pct(p.max)} | ${p.ratios.length} | | | | |`,
      );
    }
    if (g.ms.bpftrace.length) {
      const p = g.ratios.bpftrace;
      lines.push(
        `| /dev/kvm guest, ${int(g.writes)} port writes | bpftrace exits per VM and reason (peer) | ${med(g.ms.bpftrace).toFixed(0)} ms guest run | ${pct(p.median)} | ${pct(p.min)} .. ${pct(p.max)} | ${p.ratios.length} | | | | |`,
      );
    }
  }
  return lines.join('\n');
}

function perfTable(g: GuestResult): string {
  const h = g.ratios.hvwatch;
  const p = g.ratios.perf;
  return [
    '| tool | guest slowdown (median, spread) | bytes written | bytes kept in memory |',
    '|---|---|---:|---:|',
    `| hvwatch, default probe set | ${pct(h.median)} (${pct(h.min)} .. ${pct(h.max)}) | 0 (aggregates stay in BPF maps, read at scrape) | ${mib(g.hvwatchMapBytes)} BPF maps (${Object.entries(
      g.hvwatchMapBytesByFamily,
    )
      .map(([k, v]) => `${k} ${mib(v)}`)
      .join(', ')}) |`,
    g.perfWhy && !g.ms.perf.length
      ? `| perf kvm stat record | n/a: ${g.perfWhy} | | |`
      : `| \`${g.perfCommand}\` | ${pct(p.median)} (${pct(p.min)} .. ${pct(p.max)}) | ${mib(g.perfDataBytes)} perf.data (${(g.perfDataBytes / g.writes).toFixed(0)} bytes per port write) | perf's ring buffers while recording; the file until \`perf kvm stat report\` |`,
    g.bpftraceWhy && !g.ms.bpftrace.length
      ? `| bpftrace exit counter | n/a: ${g.bpftraceWhy} | | |`
      : `| \`${g.bpftraceCommand}\` | ${pct(g.ratios.bpftrace.median)} (${pct(g.ratios.bpftrace.min)} .. ${pct(g.ratios.bpftrace.max)}) | 0 | its BPF maps |`,
    '',
    `hvwatch's slowdown as a fraction of each peer's, same rounds: ${peerText(g).replace(/^; hvwatch's slowdown is /, '') || 'n/a'}.`,
  ].join('\n');
}

function agentTable(a: AgentCostResult): string {
  const lines = [
    '| agent | state | format | samples | exposition | scrapes | p50 ms | p99 ms | max ms | of which collect (median ms) | CPU ms per scrape |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const run of a.runs) {
    for (const [state, stats] of [
      ['idle', run.idle],
      [`${a.scale.cgroups} cgroups x ${a.scale.vms} VMs`, run.scale],
    ] as const) {
      for (const s of stats) {
        lines.push(
          `| ${run.label} (${run.rev}) | ${state} | ${s.format} | ${int(s.samples)} | ${mib(s.bytes)} | ${s.scrapes} | ${f1(s.p50Ms)} | ${f1(s.p99Ms)} | ${f1(s.maxMs)} | ${f1(s.collectMs)} | ${f1(s.cpuMsPerScrape)} |`,
        );
      }
    }
  }
  lines.push(
    '',
    '| agent | RSS idle MiB | RSS at scale MiB | peak RSS (VmHWM) MiB | bench cgroups in /metrics | bench VMs in /metrics |',
    '|---|---:|---:|---:|---:|---:|',
  );
  for (const run of a.runs)
    lines.push(`| ${run.label} (${run.rev}) | ${f1(run.idleRssMiB)} | ${f1(run.rssMiB)} | ${f1(run.peakRssMiB)} | ${run.cgroupLabels} | ${run.vmLabels} |`);
  return lines.join('\n');
}

function ringTable(rs: RingbufResult[]): string {
  const lines = [
    '| family | agent log level | phase | seconds | attempted | forgone by the emitter (lag) | accepted by kernel | decoded by agent | counted drops | unexplained | decoded events/s | agent CPU µs/event | log lines |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rs) {
    if (r.why) lines.push(`| ${r.family} | | not measured: ${r.why} | | | | | | | | | | |`);
    for (const p of r.phases) {
      lines.push(
        `| ${r.family} | ${p.logLevel} | ${p.name} | ${p.seconds.toFixed(1)} | ${int(p.attempted)} | ${int(p.laggedEvents ?? 0)} | ${int(p.sent)} | ${int(p.received)} | ${int(p.droppedCounted)} | ${int(p.unexplained)} | ${int(p.decodedPerS)} | ${p.cpuUsPerEvent.toFixed(2)} | ${int(p.logLines)} |`,
      );
    }
  }
  return lines.join('\n');
}

function failed(p: Part<unknown>): string {
  return p.ok ? '' : `**Not measured in this run:** ${p.error}\n`;
}

function markdown(r: Results): string {
  const m = r.machine;
  const k = r.kernel.ok ? r.kernel.value : undefined;
  const tr = r.testRun.ok ? r.testRun.value : undefined;
  const s = r.slowdown.ok ? r.slowdown.value : undefined;
  const g = r.guest.ok ? r.guest.value : undefined;
  const a = r.agent.ok ? r.agent.value : undefined;
  const targets = targetRows(r);
  const missNotes = k
    ? k.rows
        .filter((q) => q.ratioFloor > TARGET.vsFloor || (q.ratioBpftrace ?? 0) > TARGET.vsBpftrace)
        .map((q) => `- \`${q.program}\` (${x(q.ratioFloor)} its floor, ${x(q.ratioBpftrace)} bpftrace): ${MISS_NOTES[q.program] ?? 'not analysed yet.'}`)
    : [];
  for (const q of tr?.rows ?? [])
    if (q.ratio > TARGET.vsFloor) missNotes.push(`- \`${q.program}\` (test-run, ${x(q.ratio)} its floor): ${MISS_NOTES[q.program] ?? 'not analysed yet.'}`);
  return `# hvwatch benchmark results

Machine: ${m.cpus} CPUs (${m.cpuModel}), ${m.memoryGiB} GiB, kernel ${m.kernel}, Node ${m.node}; shared with other jobs.
Date: ${m.date} (this machine's clock). Command: \`node dist/bench/run.js${r.quick ? ' --quick' : ''}\` (\`npm run bench\`), ${r.elapsedS.toFixed(0)} s.
Absolute times on this shared 2-CPU VM move between runs; the ratios come from runs interleaved
in the same session and are what to compare.

## Targets

| target | measured | verdict | why, and what would fix it |
|---|---|---|---|
${targets.map((t) => `| ${t.target} | ${t.measured} | **${t.verdict}** | ${t.why ?? ''} |`).join('\n')}

## 1. In-kernel cost per event

${failed(r.kernel)}${
    k
      ? `Every program the agent attached on this kernel (enumerated from the agent, so new families are
included as they land), in three agent configurations: \`default\`, \`hot-all\` (\`probes.hot: [all]\`)
and \`tracepoint\` (every probe forced onto its classic-tracepoint candidate, the tier bpftrace
uses). Each ran next to an empty program on the same hook (generated per hook by
bench/hooks.ts) and a bpftrace one-liner keeping the same aggregate${k.bpftrace.version ? ` (${k.bpftrace.version})` : ''}, all
attached together, twice (floor first, hvwatch first). ns/event = delta run_time_ns / delta
run_cnt with BPF_ENABLE_STATS on. Workloads: page faults (${k.loads.fault}); fsync'd writes
(${k.loads.fsync}); cgroup churn (${k.loads.churn}); ${k.loads.guest}. The hooks are global,
so other activity on the machine is counted too. "Above floor" subtracts each hook's floor
(bpftrace: the classic-tracepoint floor of the same event).

${costTable(k)}

${k.silent.length ? `Attached but silent during these workloads (no row): ${k.silent.map((q) => `\`${q.program}\` (${q.hook})`).join(', ')}.\n` : ''}
${k.notAttached.length ? `Probes that attach nothing on this kernel (hot-all configuration):\n\n${k.notAttached.map((q) => `- \`${q.probe}\` (${q.family}): ${q.why}`).join('\n')}\n` : ''}
bpftrace programs used:

${
  Object.values(k.bpftrace.scripts)
    .map((sc) => `    ${sc}`)
    .join('\n') || '    (none)'
}
`
      : ''
  }
### Hooks that cannot attach here: BPF_PROG_TEST_RUN with repeat

${failed(r.testRun)}${
    tr
      ? `Each family object's \`SEC("tc") bench_*\` programs run the handlers of its fentry/kprobe-only
(or non-firing) hooks under BPF_PROG_TEST_RUN with \`repeat\`, interleaved with an empty
SEC("tc") program on the same path (median of the trials). **Marked: test-run, not a live hook.**
On a live fentry hook the floor is the trampoline, not this loop.

${testRunTable(tr)}
${tr.uncovered.length ? `\nNot covered by a test-run program: ${tr.uncovered.map((u) => `${u.family} (${u.why})`).join('; ')}.\n` : ''}`
      : ''
  }
${missNotes.length ? `### Programs over target\n\n${missNotes.join('\n')}\n` : ''}
## 2. Workload slowdown

${failed(r.slowdown)}${
    s
      ? `${s.rounds} rounds after a discarded warm-up; each round runs no agent, the default probe
set, all hot probes and (a reference, not an agent setup) empty programs on the two hot memcg
hooks, in an order rotated every round. The agent lives in the bench process, attached only for
its own runs and scraped (collect) every second while a workload runs; BPF run-time stats off.
The page-fault loop is judged on the driver's CPU time (user + system), the others on wall
time. Loads: page faults ${s.loads.fault}; fsync'd writes ${s.loads.fsync}
(to ${r.dataDir}); churn ${s.loads.churn}.
Attached: default = ${s.attached.default.join(', ')}; hot-all adds ${s.attached['hot-all'].filter((q) => !s.attached.default.includes(q)).join(', ')}.`
      : ''
  }
${failed(r.guest)}${
    g
      ? `The guest (test/helpers/kvm-guest.c: ${int(g.writes)} one-byte \`out\` writes, then HLT) ran
${g.rounds} rounds of no agent / default probe set / \`perf kvm stat record\`, order rotated;
judged on the guest's own run time (vCPU release to last HLT).`
      : ''
  }
Verdicts: a one-sided sign test on the rounds over the target (pass or miss at p < 0.05,
otherwise inconclusive); under 5 rounds, the median against the target. The in-kernel
estimate is the attached programs' run time per page (or port write) from section 1 over the
baseline time per page: a cross-check that includes the accounting's clock reads and misses
the dispatch around each program.

${slowdownTable(r)}

## 3. Against \`perf kvm stat\`

${g ? perfTable(g) : failed(r.guest)}
${
  g
    ? `\nperf records every kvm event to perf.data for a later \`perf kvm stat report\`, so its bytes grow
with the exits (${int(g.perfDataBytes)} bytes for ${int(g.writes)} port writes). hvwatch writes nothing: it keeps per-VM
aggregates in BPF maps whose memory is allocated at load (hash maps preallocated to
\`bpf.mapEntries\`, the race state to \`bpf.raceStateEntries\`) and does not grow with the exits; most of
it is empty slots, which BPF_F_NO_PREALLOC or smaller defaults would give back.`
    : ''
}

## 4. The agent itself

${failed(r.agent)}${
    a
      ? `\`bin/hvwatch run\` as its own process, config:

${a.config
  .trim()
  .split('\n')
  .map((l) => `    ${l}`)
  .join('\n')}

Start-up (launch -> first 200 from /readyz): ${a.startup.trialsMs.map((t) => `${int(t)} ms`).join(', ')}.
Scale: ${a.scale.how}; made in ${a.scale.populateS.toFixed(1)} s and ${a.scale.vmsStartS.toFixed(1)} s.
${
  a.runs.length > 1
    ? `Two agents ran side by side over the same cgroups and VMs: this tree and the baseline revision,
built from git in this run (bench/baseline.ts; \`--baseline REV\` picks another).`
    : `No baseline ran: ${a.baselineWhy}.`
}
Scrapes are sequential GETs of /metrics from the bench process, one agent and format at a time
in rounds, with the Accept header of Prometheus 2.42 without (text) and with
(protobuf) --enable-feature=native-histograms; CPU is the agent's utime + stime over its
scrapes (10 ms ticks) divided by their number.

${agentTable(a)}
`
      : ''
  }
### Map reads: BPF_MAP_LOOKUP_BATCH against the key-by-key walk

${failed(r.mapRead)}${
    r.mapRead.ok
      ? `\`bench/map-read.ts\`: every entry of a real per-CPU hash read with one batched syscall per
4,096 entries (bpf/libbpf.ts readAll), with the per-CPU fold, with the get_next_key + lookup
walk it falls back to, and with the per-entry \`entries()\` the agent used before.

${mapReadMarkdown(r.mapRead.value)}
`
      : ''
  }
### First sight: naming short-lived VMs and cgroups

${failed(r.firstSight)}${
    r.firstSight.ok
      ? `\`bench/first-sight.ts\`, rounds interleaved with and without an agent:

${firstSightSummary(r.firstSight.value)
  .map((l) => `- ${l}`)
  .join('\n')}
`
      : ''
  }
### Ring-buffer decode

${failed(r.ringbuf)}${
    r.ringbuf.ok
      ? `An agent process (bench/ringbuf-child.ts: every family loaded, no probe attached, default
log level, stderr to a file) reads each event family's ring buffer; this process writes the
family's event struct into that ring buffer through a BPF program sharing the agent's maps
(bench/ringbuf_emit.bpf.c via BPF_PROG_TEST_RUN), paced in 2 ms steps, then as fast as it can.
Accepted + counted drops = attempted; "unexplained" = attempted - decoded - counted drops.
Ring buffer ${r.ringbuf.value.map((q) => `${q.family}: ${int(q.ringBytes)} bytes, ${q.recordBytes}-byte records`).join('; ')}.

${ringTable(r.ringbuf.value)}
`
      : ''
  }
${k?.notes.length || s?.notes.length ? `## Notes\n\n${[...(k?.notes ?? []), ...(s?.notes ?? []), ...(k?.rows.filter((q) => q.runCountMismatch).map((q) => `${q.program}: ${q.runCountMismatch}`) ?? [])].map((n) => `- ${n}`).join('\n')}\n` : ''}`;
}

async function main(): Promise<void> {
  const { values: opts } = parseArgs({
    options: { json: { type: 'boolean' }, quick: { type: 'boolean' }, only: { type: 'string' }, baseline: { type: 'string' } },
    strict: true,
    allowPositionals: false,
  });
  const json = !!opts.json;
  const quick = !!opts.quick;
  const only = opts.only?.split(',').map((p) => p.trim());
  const bad = only?.filter((p) => !(PARTS as readonly string[]).includes(p));
  if (bad?.length) throw new Error(`--only: unknown part ${bad.join(', ')} (parts: ${PARTS.join(', ')})`);
  const want = (p: Part_): boolean => !only || only.includes(p);
  const skipped = <T>(_part: Part_): Promise<Part<T>> => Promise.resolve({ ok: false, error: `not run (--only ${only?.join(',')})` });
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark loads BPF programs and creates memory cgroups');
  setLogLevel('error'); // probes this kernel cannot attach are expected; the tables say what attached
  const t0 = Date.now();
  const m = machine();
  const scratch = Scratch.create();
  const onSignal = (): void => {
    scratch.cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let r: Results;
  try {
    const kernel = want('kernel') ? await part('in-kernel cost', () => kernelCost(scratch, quick)) : await skipped<KernelCostResult>('kernel');
    const testRun = want('test-run') ? await part('test-run cost', () => testRunCost(scratch, quick)) : await skipped<TestRunResult>('test-run');
    const slowdown = want('slowdown') ? await part('workload slowdown', () => workloadSlowdown(scratch, quick)) : await skipped<SlowdownResult>('slowdown');
    const why = guestUnavailable();
    const guest: Part<GuestResult> = !want('guest')
      ? await skipped('guest')
      : why
        ? { ok: false, error: why }
        : await part('guest', () => guestBench(scratch, quick));
    const agent = want('agent') ? await part('agent', () => agentCost(scratch, quick, opts.baseline)) : await skipped<AgentCostResult>('agent');
    const mapRead = want('map-read') ? await part('map reads', () => mapReadBench({ trials: quick ? 5 : 11 })) : await skipped<MapReadResult>('map-read');
    const firstSight = want('first-sight') ? await part('first sight', () => firstSightBench(quick)) : await skipped<FirstSightResult>('first-sight');
    const ringbuf = want('ringbuf') ? await part('ring buffer', () => ringbufBench(scratch, quick)) : await skipped<RingbufResult[]>('ringbuf');
    r = {
      machine: m,
      quick,
      elapsedS: (Date.now() - t0) / 1000,
      dataDir: scratch.data.description,
      kernel,
      testRun,
      slowdown,
      guest,
      agent,
      mapRead,
      firstSight,
      ringbuf,
    };
  } finally {
    scratch.cleanup();
  }
  const md = markdown(r);
  if (quick || only) {
    progress(`${quick ? '--quick' : '--only'}: bench/RESULTS.md left as it is`);
  } else {
    fs.writeFileSync(path.join(BENCH_DIR, 'RESULTS.md'), md);
    progress('wrote bench/RESULTS.md');
  }
  if (json) {
    process.stdout.write(JSON.stringify({ ...r, targets: TARGET, verdicts: targetRows(r) }, null, 2) + '\n');
  } else {
    process.stdout.write(md);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
