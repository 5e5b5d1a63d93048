// The agent itself, as operators run it: bin/hvwatch as its own process, scraped over HTTP.
//  - start-up: launch -> first 200 from /readyz;
//  - idle and at scale: RSS, CPU per scrape, /metrics latency p50/p99;
//  - scale = real memory cgroups (each saw a write, fsync'd writeback and an uncharge, so
//    each has series) and real VMs (one small kvm-guest process per VM, held open).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { median, procCpuMs, procRssMiB, progress, quantile, REPO_ROOT, runAsync, type Scratch } from './common.js';
import { GUEST } from './kvm.js';

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
  constructor(readonly proc: ChildProcess, readonly url: string) {
    proc.stderr!.on('data', (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    this.exited = new Promise((r) => proc.on('exit', (c) => r(c)));
  }

  /** Launches the agent; resolves with the ms from spawn to the first 200 on /readyz. */
  static async start(args: string[]): Promise<{ agent: AgentProc; readyMs: number }> {
    const port = await freePort();
    const t0 = performance.now();
    const proc = spawn(HVWATCH, ['run', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    const a = new AgentProc(proc, `http://127.0.0.1:${port}`);
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`hvwatch exited ${proc.exitCode}: ${a.stderr.trim().split('\n').slice(-2).join(' ')}`);
      try {
        const r = await fetch(`${a.url}/readyz`);
        await r.arrayBuffer();
        if (r.status === 200) return { agent: a, readyMs: performance.now() - t0 };
      } catch { /* not listening yet */ }
      if (performance.now() - t0 > 60_000) {
        await a.stop();
        throw new Error('hvwatch not ready within 60 s');
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async scrape(): Promise<{ ms: number; text: string }> {
    const t0 = performance.now();
    const r = await fetch(`${this.url}/metrics`);
    const text = await r.text();
    if (r.status !== 200) throw new Error(`/metrics ${r.status}: ${text.slice(0, 200)}`);
    return { ms: performance.now() - t0, text };
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(t);
  }
}

export interface ScrapeStats {
  scrapes: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  cpuMsPerScrape: number;
  rssMiB: number;
  peakRssMiB: number;
  /** Samples (non-comment lines) and bytes of one exposition. */
  series: number;
  bytes: number;
  cgroupLabels: number;
  vmLabels: number;
  /** The agent's own hvwatch_collect_duration_seconds (map reads and decoding, before
   * formatting), median over the scrapes, ms. */
  collectMs: number;
}

export interface AgentCostResult {
  startup: { trialsMs: number[]; medianMs: number; maxMs: number; args: string };
  idle: ScrapeStats;
  scale: ScrapeStats & { cgroups: number; vms: number; how: string; populateS: number; vmsStartS: number };
  config: string;
}

async function measure(a: AgentProc, n: number, ours: { cgroupPrefix: string; vmPrefix: string }): Promise<ScrapeStats> {
  for (let i = 0; i < 3; i++) await a.scrape(); // warm: first scrapes resolve every label
  const pid = a.proc.pid!;
  const cpu0 = procCpuMs(pid);
  const lat: number[] = [];
  const coll: number[] = [];
  let last = '';
  for (let i = 0; i < n; i++) {
    const s = await a.scrape();
    lat.push(s.ms);
    last = s.text;
    const c = /^hvwatch_collect_duration_seconds (\S+)$/m.exec(s.text)?.[1];
    if (c) coll.push(Number(c) * 1000);
  }
  const cpu = procCpuMs(pid) - cpu0;
  const mem = procRssMiB(pid);
  const lines = last.split('\n').filter((l) => l && !l.startsWith('#'));
  const labelValues = (label: string, prefix: string): number =>
    new Set(lines.map((l) => new RegExp(`[{,]${label}="([^"]*)"`).exec(l)?.[1]).filter((v) => v?.startsWith(prefix))).size;
  return {
    scrapes: n, p50Ms: quantile(lat, 0.5), p99Ms: quantile(lat, 0.99), maxMs: Math.max(...lat),
    cpuMsPerScrape: cpu / n, rssMiB: mem.rss, peakRssMiB: mem.hwm, series: lines.length, bytes: Buffer.byteLength(last),
    cgroupLabels: labelValues('cgroup', ours.cgroupPrefix), vmLabels: labelValues('vm', ours.vmPrefix),
    collectMs: median(coll),
  };
}

interface Guest { proc: ChildProcess; done: Promise<void> }

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

export async function agentCost(scratch: Scratch, quick: boolean): Promise<AgentCostResult> {
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

  const ours = { cgroupPrefix: `/hvwatch-bench-${process.pid}/scale-`, vmPrefix: `bench-vm-${process.pid}-` };
  const { agent } = await AgentProc.start(args);
  const guests: Guest[] = [];
  const cgDirs: string[] = [];
  try {
    progress('agent: idle scrapes');
    const idle = await measure(agent, Math.min(scrapes, 30), ours);

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

    progress(`agent: ${scrapes} scrapes at ${nCgroups} cgroups x ${nVms} VMs`);
    const scale = await measure(agent, scrapes, ours);
    return {
      startup: { trialsMs: trials, medianMs: median(trials), maxMs: Math.max(...trials), args: `bin/hvwatch run --config <hot: [all]>` },
      idle,
      scale: {
        ...scale, cgroups: nCgroups, vms: nVms, populateS, vmsStartS,
        how: `real: ${nCgroups} memory cgroups made by bench/hvbench.c populate (each: one page written with fsync, then unlinked), ` +
          `${nVms} VMs = ${nVms} kvm-guest processes (100 port writes each, then held open)`,
      },
      config: fs.readFileSync(cfgFile, 'utf8'),
    };
  } finally {
    await Promise.all(guests.map(async (g) => {
      if (g.proc.exitCode === null) {
        const e = new Promise((r) => g.proc.once('exit', r));
        g.proc.kill('SIGKILL');
        await e;
      }
    }));
    await agent.stop();
    for (const d of cgDirs) {
      try { fs.rmdirSync(d); } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') spawnSync('sh', ['-c', `sleep 0.2; rmdir ${d}`]);
      }
    }
  }
}
