// Record and replay: a real memcg workload recorded by bin/hvwatch record replays (through
// bin/hvwatch replay, on a host where its cgroup no longer exists) to the same /metrics the
// recording agent served; race events with their stacks and latency histograms made by the
// real BPF handlers (logic via test run) replay to the same store and /api/races; --max-bytes
// bounds a trace and counts what it dropped.
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { HVWATCH, freePort, parseExposition, until, value, type Sample } from './helpers/agent.js';
import { createCgroup, fsyncWriteInCgroup } from './helpers/memcg.js';
import { M, metricByName } from '../agent/catalog.js';
import { readTrace } from '../agent/record/reader.js';
import { Agent, liveSource } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { allProbeNames } from '../agent/families.js';
import { RecordingSource } from '../agent/sources/recording.js';
import { HostRefresher } from '../agent/sources/refresh.js';
import { replayAgent } from '../agent/commands/common.js';
import { RACE_KINDS } from '../families/memcg_fn/family.js';
import { setLogLevel } from '../agent/log.js';

setLogLevel('error');
const dir = mkdtempSync(join(tmpdir(), 'hvwatch-rr-'));

class Proc {
  stderr = '';
  readonly exited: Promise<number | null>;
  constructor(
    readonly p: ChildProcess,
    readonly port: number,
  ) {
    p.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((r) => p.on('exit', (c) => r(c)));
  }

  static async start(args: string[]): Promise<Proc> {
    const port = await freePort();
    const pr = new Proc(spawn(HVWATCH, [...args, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] }), port);
    await until(
      async () => {
        if (pr.p.exitCode !== null) throw new Error(`exited ${pr.p.exitCode}: ${pr.stderr}`);
        try {
          return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200 ? true : undefined;
        } catch {
          return undefined;
        }
      },
      30_000,
      `${args[0]} ready`,
    );
    return pr;
  }

  async scrape(): Promise<Sample[]> {
    const r = await fetch(`http://127.0.0.1:${this.port}/metrics`);
    if (r.status !== 200) throw new Error(`/metrics ${r.status}`);
    return parseExposition(await r.text());
  }

  async stop(): Promise<number | null> {
    if (this.p.exitCode === null) this.p.kill('SIGTERM');
    return this.exited;
  }
}

// Self-metrics that legitimately differ between the recording agent and a replay.
// The background refresher's own metrics are the live host's (a replay runs no refresher).
const DIFFER = new Set([M.collectSeconds.name, M.recordBytes.name, M.recordDropped.name, ...HostRefresher.metrics.map((m) => m.name)]);

function byFamily(samples: Sample[]): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const s of samples) {
    const base = s.name.replace(/_(bucket|sum|count)$/, '');
    const def = metricByName(s.name) ?? metricByName(base);
    if (!def || DIFFER.has(def.name)) continue;
    const l = Object.entries(s.labels)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, v]) => `${k}=${v}`)
      .join(',');
    if (!out.has(def.family)) out.set(def.family, []);
    out.get(def.family)!.push(`${s.name}{${l}} ${s.value}`);
  }
  for (const l of out.values()) l.sort();
  return out;
}

test('a recorded real memcg workload replays to the same /metrics as were served live, family by family, after its cgroup is gone', async (t) => {
  const file = join(dir, 'memcg.trace');
  const rec = await Proc.start(['record', file, '--interval', '3600', '--hot', 'memcg_writeback']);
  t.teardown(() => rec.stop());
  const cg = createCgroup(`hvwatch-rr-${process.pid}`);
  const pages = fsyncWriteInCgroup(cg, 8);
  const live = await until(
    async () => {
      const s = await rec.scrape();
      return (value(s, M.memcgWbCompleted.name, { cgroup: cg.path }) ?? 0) >= pages &&
        value(s, M.memcgWbStarted.name, { cgroup: cg.path }) === value(s, M.memcgWbCompleted.name, { cgroup: cg.path })
        ? s
        : undefined;
    },
    15_000,
    "the workload's writeback in the recording agent",
  );
  t.is(await rec.stop(), 0, rec.stderr);
  cg.remove(); // the replay must take the label from the trace, not from this host

  const trace = readTrace(fs.readFileSync(file));
  const snaps = trace.records.filter((r) => r.type === 'snapshot');
  t.is(snaps.at(-1)?.type === 'snapshot' && snaps.at(-1)!.meta.cause, 'final');
  // The live scrape above was the last scrape: its snapshot is the last one with that cause.
  const last = snaps
    .map((s, i) => [s, i] as const)
    .filter(([s]) => s.meta.cause === 'scrape')
    .at(-1)![1];
  t.deepEqual(trace.footer?.dropped, { snapshot: 0, events: 0, ident: 0 });

  const rep = await Proc.start(['replay', file, '--at', String(last)]);
  t.teardown(() => rep.stop());
  const replayed = await rep.scrape();
  t.is(value(replayed, M.memcgWbCompleted.name, { cgroup: cg.path }), value(live, M.memcgWbCompleted.name, { cgroup: cg.path }));
  const a = byFamily(live);
  const b = byFamily(replayed);
  t.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [family, lines] of a) t.deepEqual(b.get(family), lines, `family ${family}`);
  t.true(a.get('memcg')!.length > 0);
});

test('logic via test run: race events and latency histograms replay to the same store and /api/races; --max-bytes drops and counts', async (t) => {
  const file = join(dir, 'races.trace');
  const cfg = configSchema.parse({ probes: { disable: allProbeNames() } });
  const agent = new Agent(cfg, undefined, (families, services) => new RecordingSource(liveSource(cfg, families, services), cfg, { file, intervalMs: 1000 }));
  const src = agent.source;
  if (!(src instanceof RecordingSource)) throw new Error('not a recording agent');
  src.attachStore(agent.store);
  agent.start();
  const cg = createCgroup(`hvwatch-rr-fn-${process.pid}`);
  t.teardown(() => cg.remove());
  // struct test args of families/memcg_fn/memcg_fn.bpf.c, as in test/memcg-fn.test.ts.
  const prog = src.live.families.find((f) => f.spec.name === 'memcg_fn')!.testProgram('test_memcg_fn');
  const run = (op: number, folio: bigint, now: bigint, o: { cpu?: number; memcg?: bigint } = {}): number => {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(op, 0);
    b.writeUInt32LE(o.cpu ?? 0, 4);
    b.writeBigUInt64LE(folio, 8);
    b.writeBigUInt64LE(now, 16);
    b.writeBigUInt64LE(o.memcg ?? cg.id, 24);
    b.writeBigInt64LE(1n, 40);
    return prog.testRun(b).retval;
  };
  const MS = 1_000_000n;
  for (let i = 0n; i < 20n; i++) {
    // clean writebacks: start -> end enter/exit
    const f = 0xffff888000100000n + i * 0x1000n;
    run(0, f, 1000n * MS);
    run(1, f, (1000n + i) * MS);
    run(2, f, (1000n + i) * MS + 5000n);
  }
  await agent.collect();
  run(0, 0xffff888012340000n, 2000n * MS);
  t.is(run(1, 0xffff888012340000n, 2001n * MS, { cpu: 1, memcg: 0n }), 1); // memcg cleared under writeback
  await until(async () => (agent.races.length ? true : undefined), 5000, 'the race event');
  await agent.collect();
  const liveRaces = agent.races.map(({ time: _t, ...r }) => r);
  const snapshot = (a: Agent) =>
    Object.fromEntries(
      [M.memcgWbLatency, M.memcgWbEndDuration, M.memcgRaceEvents, M.ringbufEvents, M.memcgWbUnpairedEnds].map((d) => [
        d.name,
        a.store.all(d).map((s) => ({ labels: s.labels, value: s.value, hist: s.hist })),
      ]),
    );
  const liveState = snapshot(agent);
  await agent.stop();

  const trace = readTrace(fs.readFileSync(file));
  t.true(trace.records.some((r) => r.type === 'events'));
  const { agent: re, source } = replayAgent(trace);
  re.start();
  await source.play(() => re.collect());
  t.deepEqual(snapshot(re), liveState);
  t.deepEqual(
    re.races.map(({ time: _t, ...r }) => r),
    liveRaces,
  );
  t.is(re.store.get(M.memcgRaceEvents, { kind: RACE_KINDS[2]! })?.value, 1);
  t.is(re.store.all(M.memcgWbLatency).find((s) => s.labels.cgroup === cg.path)?.hist?.count, 20);
  await re.stop();

  // The same recording bounded: the header and one snapshot fit, the rest is dropped and counted.
  const small = join(dir, 'small.trace');
  const maxBytes = trace.records[0]!.offset + 4096;
  const a2 = new Agent(
    cfg,
    undefined,
    (families, services) => new RecordingSource(liveSource(cfg, families, services), cfg, { file: small, intervalMs: 1000, maxBytes }),
  );
  const src2 = a2.source;
  if (!(src2 instanceof RecordingSource)) throw new Error('not a recording agent');
  src2.attachStore(a2.store);
  a2.start();
  for (let i = 0; i < 30; i++) await a2.collect();
  const dropped = a2.store.get(M.recordDropped, { type: 'snapshot' })?.value ?? 0;
  await a2.stop();
  t.true(dropped > 0);
  t.true(fs.statSync(small).size <= maxBytes);
  const st = readTrace(fs.readFileSync(small));
  t.is(st.footer?.dropped.snapshot, dropped);
  t.is(st.footer?.bytes, fs.statSync(small).size);
  t.is(st.records.filter((r) => r.type === 'snapshot').length + dropped, 30);
});
