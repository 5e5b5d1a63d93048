// The agent itself, as operators run it: bin/hvwatch as its own process, scraped over HTTP.
//  - start-up: launch -> first 200 from /readyz;
//  - idle and at scale: RSS, CPU per scrape, /metrics latency p50/p99 in text and protobuf,
//    next to a baseline revision built in the same run (bench/baseline.ts);
//  - scale = real memory cgroups (each saw a write, fsync'd writeback and an uncharge, so
//    each has series) and real VMs (one small kvm-guest process per VM, held open).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { median, procCpuMs, procRssMiB, progress, quantile, REPO_ROOT, runAsync, type Scratch } from './common.js';
import { GUEST } from './kvm.js';
import { buildBaseline, DEFAULT_BASELINE_REV, type Baseline } from './baseline.js';
import { decodeProtobufExposition, PROTOBUF_CONTENT_TYPE } from '../agent/export/metrics-proto.js';

const HVWATCH = path.join(REPO_ROOT, 'bin/hvwatch');

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

class AgentProc {
  stderr = '';
  readonly exited: Promise<number | null>;
  constructor(
    readonly proc: ChildProcess,
    readonly url: string,
  ) {
    proc.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.exited = new Promise((r) => proc.on('exit', (c) => r(c)));
  }

  /** Launches the agent; resolves with the ms from spawn to the first 200 on /readyz. */
  static async start(args: string[], bin = HVWATCH): Promise<{ agent: AgentProc; readyMs: number }> {
    const port = await freePort();
    const t0 = performance.now();
    const proc = spawn(bin, ['run', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    const a = new AgentProc(proc, `http://127.0.0.1:${port}`);
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`hvwatch exited ${proc.exitCode}: ${a.stderr.trim().split('\n').slice(-2).join(' ')}`);
      try {
        const r = await fetch(`${a.url}/readyz`);
        await r.arrayBuffer();
        if (r.status === 200) return { agent: a, readyMs: performance.now() - t0 };
      } catch {
        /* not listening yet */
      }
      if (performance.now() - t0 > 60_000) {
        await a.stop();
        throw new Error('hvwatch not ready within 60 s');
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** One GET of /metrics in a format; the time covers the whole body. */
  async scrape(format: Format = 'text'): Promise<{ ms: number; body: Buffer }> {
    const t0 = performance.now();
    const r = await fetch(`${this.url}/metrics`, { headers: { accept: ACCEPT[format] } });
    const body = Buffer.from(await r.arrayBuffer());
    const ms = performance.now() - t0;
    if (r.status !== 200) throw new Error(`/metrics ${r.status}: ${body.subarray(0, 200).toString()}`);
    return { ms, body };
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(t);
  }
}

export type Format = 'text' | 'protobuf';

/** What a scraper sends: Prometheus 2.42 without and with --enable-feature=native-histograms
 * (scrape/scrape.go scrapeAcceptHeader, scrapeAcceptHeaderWithProtobuf, less OpenMetrics). */
const ACCEPT: Record<Format, string> = {
  text: 'text/plain;version=0.0.4;q=0.5,*/*;q=0.1',
  protobuf: `${PROTOBUF_CONTENT_TYPE},text/plain;version=0.0.4;q=0.5,*/*;q=0.1`,
};

export interface ScrapeStats {
  format: Format;
  scrapes: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Samples of one exposition: text lines that are not comments; in protobuf each
   * counter, gauge or (native) histogram is one sample, as Prometheus stores them. */
  samples: number;
  bytes: number;
  /** The agent's own hvwatch_collect_duration_seconds (map reads and decoding, before
   * formatting), median over the scrapes, ms. */
  collectMs: number;
  /** The agent's utime + stime over these scrapes (10 ms ticks) / scrapes. */
  cpuMsPerScrape: number;
}

/** One agent build measured idle and at scale. */
export interface AgentRun {
  /** "hvwatch" (this tree) or "baseline" (an older revision built in the same run). */
  label: string;
  rev: string;
  idle: ScrapeStats[];
  scale: ScrapeStats[];
  idleRssMiB: number;
  rssMiB: number;
  /** VmHWM: the most the process ever held, start-up and every scrape included. */
  peakRssMiB: number;
  cgroupLabels: number;
  vmLabels: number;
}

export interface AgentCostResult {
  startup: { trialsMs: number[]; medianMs: number; maxMs: number; args: string };
  runs: AgentRun[];
  /** Why no baseline ran, when it did not. */
  baselineWhy?: string;
  scale: { cgroups: number; vms: number; how: string; populateS: number; vmsStartS: number };
  config: string;
}

function sampleCount(format: Format, body: Buffer): number {
  if (format === 'protobuf') return decodeProtobufExposition(body).reduce((n, f) => n + f.metric.length, 0);
  return body
    .toString()
    .split('\n')
    .filter((l) => l && !l.startsWith('#')).length;
}

interface Probe {
  agent: AgentProc;
  formats: Format[];
}

/**
 * n rounds; in each, every agent is scraped once in each of its formats, one GET at a time,
 * so two agents never compete for the CPU during a measured scrape and both see the same
 * cgroups and VMs at the same moment.
 */
async function measure(probes: Probe[], n: number): Promise<ScrapeStats[][]> {
  for (const p of probes) for (const f of p.formats) for (let i = 0; i < 3; i++) await p.agent.scrape(f); // warm: the first scrapes resolve every label
  const acc = probes.map((p) => p.formats.map(() => ({ lat: [] as number[], coll: [] as number[], last: Buffer.alloc(0) as Buffer, cpu: 0 })));
  for (let i = 0; i < n; i++) {
    for (const [pi, p] of probes.entries()) {
      for (const [fi, f] of p.formats.entries()) {
        const a = acc[pi]![fi]!;
        const cpu0 = procCpuMs(p.agent.proc.pid!);
        const s = await p.agent.scrape(f);
        a.cpu += procCpuMs(p.agent.proc.pid!) - cpu0;
        a.lat.push(s.ms);
        a.last = s.body;
        if (f === 'text') {
          const c = /^hvwatch_collect_duration_seconds (\S+)$/m.exec(s.body.toString())?.[1];
          if (c) a.coll.push(Number(c) * 1000);
        }
      }
    }
  }
  return probes.map((p, pi) =>
    p.formats.map((format, fi) => {
      const a = acc[pi]![fi]!;
      return {
        format,
        scrapes: n,
        p50Ms: quantile(a.lat, 0.5),
        p99Ms: quantile(a.lat, 0.99),
        maxMs: Math.max(...a.lat),
        samples: sampleCount(format, a.last),
        bytes: a.last.length,
        collectMs: a.coll.length ? median(a.coll) : NaN,
        cpuMsPerScrape: a.cpu / n,
      };
    }),
  );
}

function labelCounts(text: string, ours: { cgroupPrefix: string; vmPrefix: string }): { cgroupLabels: number; vmLabels: number } {
  const lines = text.split('\n').filter((l) => l && !l.startsWith('#'));
  const values = (label: string, prefix: string): number =>
    new Set(lines.map((l) => new RegExp(`[{,]${label}="([^"]*)"`).exec(l)?.[1]).filter((v) => v?.startsWith(prefix))).size;
  return { cgroupLabels: values('cgroup', ours.cgroupPrefix), vmLabels: values('vm', ours.vmPrefix) };
}

interface Guest {
  proc: ChildProcess;
  done: Promise<void>;
}

function startGuest(name: string): Guest {
  const proc = spawn(GUEST!, ['-name', `guest=${name}`, '--writes', '100', '--hold-ms', '3600000'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const done = new Promise<void>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve();
    });
    proc.on('exit', (c) => reject(new Error(`kvm-guest ${name} exited ${c} before its result line`)));
  });
  done.catch(() => {});
  return { proc, done };
}

export async function agentCost(scratch: Scratch, quick: boolean, baselineRev: string = DEFAULT_BASELINE_REV): Promise<AgentCostResult> {
  const nCgroups = quick ? 200 : 2000;
  const nVms = GUEST ? (quick ? 20 : 200) : 0;
  const scrapes = quick ? 20 : 50;
  // Every hot probe on, so each cgroup carries its writeback, uncharge and wait series (the
  // heaviest exposition); budgets above the scale so nothing folds into _other.
  const cfgFile = path.join(scratch.dir, 'agent-bench.yaml');
  fs.writeFileSync(cfgFile, `probes:\n  hot: [all]\ncardinality:\n  cgroups: ${nCgroups + 2000}\n  vms: ${nVms + 256}\n`);
  const args = ['--config', cfgFile];

  // Start-up, launch to ready, several times.
  const trials: number[] = [];
  for (let i = 0; i < (quick ? 2 : 5); i++) {
    progress(`agent: start-up ${i + 1}`);
    const { agent, readyMs } = await AgentProc.start(args);
    trials.push(readyMs);
    await agent.stop();
  }

  let baseline: Baseline | undefined;
  let baselineWhy: string | undefined;
  try {
    baseline = buildBaseline(scratch, baselineRev);
  } catch (e) {
    baselineWhy = (e as Error).message;
    progress(`agent: no baseline: ${baselineWhy}`);
  }

  const ours = { cgroupPrefix: `/hvwatch-bench-${process.pid}/scale-`, vmPrefix: `bench-vm-${process.pid}-` };
  const agents: { label: string; rev: string; agent: AgentProc; formats: Format[] }[] = [];
  const guests: Guest[] = [];
  const cgDirs: string[] = [];
  try {
    agents.push({ label: 'hvwatch', rev: gitRev(), agent: (await AgentProc.start(args)).agent, formats: ['text', 'protobuf'] });
    // The baseline predates the protobuf exposition: it answers text whatever is asked.
    if (baseline) agents.push({ label: 'baseline', rev: baseline.rev, agent: (await AgentProc.start(args, baseline.bin)).agent, formats: ['text'] });

    progress('agent: idle scrapes');
    const idle = await measure(agents, Math.min(scrapes, 30));
    const idleRss = agents.map((a) => procRssMiB(a.agent.proc.pid!).rss);

    progress(`agent: creating ${nCgroups} memory cgroups with writeback`);
    const t0 = performance.now();
    await runAsync(scratch.driver, ['populate', scratch.cgroup, String(nCgroups), scratch.data.path, 'scale']);
    for (let i = 0; i < nCgroups; i++) cgDirs.push(path.join(scratch.cgroup, `scale-${i}`));
    const populateS = (performance.now() - t0) / 1000;

    progress(`agent: starting ${nVms} VMs`);
    const t1 = performance.now();
    for (let i = 0; i < nVms; i++) {
      guests.push(startGuest(`${ours.vmPrefix}${i}`));
      if (i % 20 === 19) await Promise.all(guests.slice(-20).map((g) => g.done)); // 20 at a time
    }
    await Promise.all(guests.map((g) => g.done));
    const vmsStartS = (performance.now() - t1) / 1000;

    progress(`agent: ${scrapes} scrape rounds at ${nCgroups} cgroups x ${nVms} VMs (${agents.map((a) => `${a.label}: ${a.formats.join('+')}`).join(', ')})`);
    const scale = await measure(agents, scrapes);
    const runs: AgentRun[] = [];
    for (const [i, a] of agents.entries()) {
      const mem = procRssMiB(a.agent.proc.pid!);
      const text = (await a.agent.scrape('text')).body.toString();
      runs.push({
        label: a.label,
        rev: a.rev,
        idle: idle[i]!,
        scale: scale[i]!,
        idleRssMiB: idleRss[i]!,
        rssMiB: mem.rss,
        peakRssMiB: mem.hwm,
        ...labelCounts(text, ours),
      });
    }
    return {
      startup: { trialsMs: trials, medianMs: median(trials), maxMs: Math.max(...trials), args: `bin/hvwatch run --config <hot: [all]>` },
      runs,
      baselineWhy,
      scale: {
        cgroups: nCgroups,
        vms: nVms,
        populateS,
        vmsStartS,
        how:
          `real: ${nCgroups} memory cgroups made by bench/hvbench.c populate (each: one page written with fsync, then unlinked), ` +
          `${nVms} VMs = ${nVms} kvm-guest processes (100 port writes each, then held open)`,
      },
      config: fs.readFileSync(cfgFile, 'utf8'),
    };
  } finally {
    await Promise.all(
      guests.map(async (g) => {
        if (g.proc.exitCode === null) {
          const e = new Promise((r) => g.proc.once('exit', r));
          g.proc.kill('SIGKILL');
          await e;
        }
      }),
    );
    await Promise.all(agents.map((a) => a.agent.stop()));
    baseline?.cleanup();
    for (const d of cgDirs) {
      try {
        fs.rmdirSync(d);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') spawnSync('sh', ['-c', `sleep 0.2; rmdir ${d}`]);
      }
    }
  }
}

function gitRev(): string {
  const r = spawnSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8' });
  const dirty = spawnSync('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).stdout.trim();
  return r.status === 0 ? `${r.stdout.trim()}${dirty ? '+changes' : ''}` : 'unknown';
}
