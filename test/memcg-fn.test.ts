// Function-tier memcg logic and race indicators, exercised through BPF_PROG_TEST_RUN with
// synthetic sequences in the real kernel (fentry/kprobes cannot attach on these hosts;
// test/vm runs the attach itself in other kernels). Test names say "logic via test run".
import test from 'ava';
import type { Agent } from '../agent/agent.js';
import { mapsOnlyAgent } from './helpers/agent.js';
import { M } from '../agent/catalog.js';
import { folded } from '../agent/aggregate/histogram.js';
import { RACE_KINDS } from '../families/memcg_fn/family.js';
import { createCgroup, type TestCgroup } from './helpers/memcg.js';
import type { BpfProgram } from '../bpf/libbpf.js';
import { setLogLevel } from '../agent/log.js';

setLogLevel('error'); // race events are logged at warn: expected here, noise in the test log

const OP = { start: 0, endEnter: 1, endExit: 2, uncharge: 3, unchargeExit: 4, fill: 5 } as const;

interface Step {
  op: number;
  folio: bigint;
  now: bigint;
  cpu?: number;
  memcg?: bigint;
  flags?: bigint;
  refcount?: number;
  enter?: bigint;
  count?: number;
}

class Harness {
  readonly prog: BpfProgram;
  readonly pgWriteback: bigint;

  static async create(name: string, raceStateEntries?: number): Promise<Harness> {
    const cg = createCgroup(`hvwatch-fn-${name}-${process.pid}`);
    return new Harness(cg, await mapsOnlyAgent(raceStateEntries ? { raceStateEntries } : {}));
  }

  private constructor(
    readonly cg: TestCgroup,
    readonly agent: Agent,
  ) {
    const fam = this.agent.family('memcg_fn')!;
    this.prog = fam.testProgram('test_memcg_fn');
    const out = Buffer.alloc(8);
    fam.testProgram('test_memcg_fn_enums').testRun(out);
    this.pgWriteback = out.readBigUInt64LE(0);
  }

  run(s: Step): number {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(s.op, 0);
    b.writeUInt32LE(s.cpu ?? 0, 4);
    b.writeBigUInt64LE(s.folio, 8);
    b.writeBigUInt64LE(s.now, 16);
    b.writeBigUInt64LE(s.memcg ?? this.cg.id, 24);
    b.writeBigUInt64LE(s.flags ?? 0n, 32);
    b.writeBigInt64LE(BigInt(s.refcount ?? 1), 40);
    b.writeBigUInt64LE(s.enter ?? 0n, 48);
    b.writeBigUInt64LE(BigInt(s.count ?? 0), 56);
    return this.prog.testRun(b).retval;
  }

  async races(): Promise<Record<string, number>> {
    await this.agent.collect();
    return Object.fromEntries(RACE_KINDS.map((k) => [k, this.agent.store.get(M.memcgRaceEvents, { kind: k })?.value ?? 0]));
  }

  async stop(): Promise<void> {
    await this.agent.stop();
    this.cg.remove();
  }
}

const F = 0xffff888012340000n;
const MS = 1_000_000n;
const none = Object.fromEntries(RACE_KINDS.map((k) => [k, 0]));

test('logic via test run: start -> end -> uncharge gives no race, one latency sample and one time-inside sample', async (t) => {
  const h = await Harness.create('clean');
  t.teardown(() => h.stop());
  t.is(h.run({ op: OP.start, folio: F, now: 1000n * MS }), 0);
  t.is(h.run({ op: OP.endEnter, folio: F, now: 1003n * MS, cpu: 1 }), 0);
  t.is(h.run({ op: OP.endExit, folio: F, now: 1003n * MS + 5000n }), 0);
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1004n * MS, cpu: 0 }), 0);
  t.deepEqual(await h.races(), none);
  const lat = folded(h.agent.store.get(M.memcgWbLatency, { cgroup: h.cg.path })!.hist!);
  t.is(lat.count, 1);
  t.true(Math.abs(lat.sum - 0.003) < 1e-12, `sum ${lat.sum}`);
  // 3 ms falls in the slot [2^21, 2^22) ns; its le bound is (2^22 - 1) ns.
  t.is(lat.cumulative[lat.bounds.indexOf(Number(((2 ** 22 - 1) * 1e-9).toPrecision(12)))], 1);
  t.is(lat.cumulative[lat.bounds.indexOf(Number(((2 ** 21 - 1) * 1e-9).toPrecision(12)))], 0);
  const inside = h.agent.store.get(M.memcgWbEndDuration, { cgroup: h.cg.path })!.hist!;
  t.is(inside.count, 1);
  t.true(Math.abs(inside.sum - 5e-6) < 1e-15, `time inside ${inside.sum}`);
  t.is(h.agent.store.get(M.memcgUnchargedFolios, { cgroup: h.cg.path })?.value, 1);
  t.is(h.agent.store.get(M.mapEntries, { family: 'memcg_fn', map: 'wb_folios' })?.value, 0, 'end exit removes the entry');
});

test('logic via test run: uncharge on another CPU while writeback end runs fires only uncharge_during_writeback_end', async (t) => {
  const h = await Harness.create('during');
  t.teardown(() => h.stop());
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  h.run({ op: OP.endEnter, folio: F, now: 1002n * MS, cpu: 1 });
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1002n * MS + 700n, cpu: 0 }), 1);
  t.deepEqual(await h.races(), { ...none, uncharge_during_writeback_end: 1 });
  // The same CPU uncharging inside its own writeback end is the normal path, not a race.
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1002n * MS + 900n, cpu: 1 }), 0);
});

test('logic via test run: uncharge of a folio with PG_writeback set fires only uncharge_under_writeback', async (t) => {
  const h = await Harness.create('under');
  t.teardown(() => h.stop());
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1001n * MS, cpu: 0, flags: h.pgWriteback }), 1);
  t.deepEqual(await h.races(), { ...none, uncharge_under_writeback: 1 });
});

test('logic via test run: memcg gone at writeback end fires only memcg_cleared_under_writeback, and it reaches /api/races data', async (t) => {
  const h = await Harness.create('cleared');
  t.teardown(() => h.stop());
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  t.is(h.run({ op: OP.endEnter, folio: F, now: 1001n * MS, cpu: 1, memcg: 0n }), 1);
  t.deepEqual(await h.races(), { ...none, memcg_cleared_under_writeback: 1 });
  const deadline = Date.now() + 5000;
  while (h.agent.races.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const ev = h.agent.races[0]!;
  t.is(ev.kind, 'memcg_cleared_under_writeback');
  t.is(ev.start_cgroup, h.cg.path);
  t.is(ev.cgroup, null);
  t.is(ev.since_paired_ns, 1_000_000);
  t.is(ev.folio, `0x${F.toString(16)}`);
  t.is(ev.cpu, 1);
});

test('logic via test run: writeback end on a zero-refcount folio fires only writeback_end_zero_refcount', async (t) => {
  const h = await Harness.create('zeroref');
  t.teardown(() => h.stop());
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  t.is(h.run({ op: OP.endEnter, folio: F, now: 1001n * MS, cpu: 0, refcount: 0 }), 1);
  t.deepEqual(await h.races(), { ...none, writeback_end_zero_refcount: 1 });
});

test('logic via test run: a reused folio pointer with a new start timestamp does not fire', async (t) => {
  const h = await Harness.create('reuse');
  t.teardown(() => h.stop());
  // The old folio's writeback end entered on CPU 1 and its exit was never seen...
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  h.run({ op: OP.endEnter, folio: F, now: 1001n * MS, cpu: 1 });
  // ...then the pointer is a new folio in a new writeback (a new start time) in another memcg.
  h.run({ op: OP.start, folio: F, now: 1002n * MS, memcg: h.cg.id });
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1002n * MS + 10n, cpu: 0 }), 0, 'no stale end marker');
  t.is(h.run({ op: OP.endEnter, folio: F, now: 1005n * MS, cpu: 0 }), 0);
  t.deepEqual(await h.races(), none);
  // The latency is measured from the new start, not the old one.
  const lat = h.agent.store.get(M.memcgWbLatency, { cgroup: h.cg.path })!.hist!;
  t.true(Math.abs(lat.sum - (0.001 + 0.003)) < 1e-12, `sum ${lat.sum}`);
});

test('logic via test run: a folio without a memcg is not counted as uncharged (uncharge_folio returns early for it)', async (t) => {
  const h = await Harness.create('nomemcg');
  t.teardown(() => h.stop());
  t.is(h.run({ op: OP.uncharge, folio: F, now: 1000n * MS, cpu: 0, memcg: 0n, flags: h.pgWriteback }), 0);
  t.deepEqual(await h.races(), none);
  t.deepEqual(h.agent.store.all(M.memcgUnchargedFolios), []);
});

test('logic via test run: a writeback-end marker older than 1 s is reaped and counted, not trusted', async (t) => {
  const h = await Harness.create('stale');
  t.teardown(() => h.stop());
  h.run({ op: OP.start, folio: F, now: 1000n * MS });
  h.run({ op: OP.endEnter, folio: F, now: 1001n * MS, cpu: 1 });
  t.is(h.run({ op: OP.uncharge, folio: F, now: 3000n * MS, cpu: 0 }), 0);
  await h.races();
  t.is(h.agent.store.get(M.memcgRaceStateReaped)?.value, 1);
});

test('logic via test run: the LRU bound holds under 1,000,000 distinct folios and evictions are counted', async (t) => {
  const h = await Harness.create('lru', 32768);
  t.teardown(() => h.stop());
  h.run({ op: OP.fill, folio: F, now: 1n, count: 1_000_000 });
  await h.races();
  const entries = h.agent.store.get(M.mapEntries, { family: 'memcg_fn', map: 'wb_folios' })!.value;
  const cap = h.agent.store.get(M.mapCapacity, { family: 'memcg_fn', map: 'wb_folios' })!.value;
  t.is(cap, 32768);
  t.true(entries <= cap && entries > 0, `entries ${entries}`);
  t.is(h.agent.store.get(M.memcgRaceStateEvictions)!.value, 1_000_000 - entries);
  t.deepEqual(await h.races(), none);
});
