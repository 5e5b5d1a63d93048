// memcg family, end to end on the real kernel: probes attach, a real fsync'd write in a
// memory cgroup we create shows up under that cgroup's path in a scrape over HTTP.
import test from 'ava';
import { AgentProcess, mapsOnlyAgent, pick, runCli, until, value, writeConfig } from './helpers/agent.js';
import { createCgroup, fsyncWriteInCgroup } from './helpers/memcg.js';
import { M } from '../agent/catalog.js';
import { folded } from '../agent/aggregate/histogram.js';
import { declaredFamilies } from '../agent/families.js';

test("memcg tracepoint probes count a 50 MiB fsync'd write under its cgroup path; every page started completes", async (t) => {
  const agent = await AgentProcess.start(['--hot', 'memcg_writeback', '--hot', 'memcg_uncharge']);
  t.teardown(() => agent.stop());
  const cg = createCgroup(`hvwatch-wb-${process.pid}`);
  t.teardown(() => cg.remove());

  const pages = fsyncWriteInCgroup(cg, 50);
  t.is(pages, 12800);
  const labels = { cgroup: cg.path };
  const s = await until(
    async () => {
      const s = await agent.scrape();
      return (value(s, M.memcgWbCompleted.name, labels) ?? 0) >= pages ? s : undefined;
    },
    15_000,
    `${pages} completed writeback pages for ${cg.path}`,
  );
  t.true(value(s, M.memcgWbStarted.name, labels)! >= pages);
  t.is(value(s, M.probeAttached.name, { probe: 'memcg_writeback' }), 1);
  t.is(pick(s, M.probeInfo.name, { probe: 'memcg_writeback' })[0]?.labels.attach, 'tp_btf');

  // In flight is started - completed (PromQL computes it; docs/metrics.md): it drains to 0.
  const drained = await until(
    async () => {
      const x = await agent.scrape();
      const inFlight = value(x, M.memcgWbStarted.name, labels)! - value(x, M.memcgWbCompleted.name, labels)!;
      return inFlight === 0 ? x : undefined;
    },
    15_000,
    'in-flight writeback pages back to 0',
  );
  t.true(value(drained, M.memcgWbCompleted.name, labels)! >= pages);
});

test('a probe whose every candidate targets a missing symbol reports attached 0 with reasons; the others keep serving', async (t) => {
  const cfg = writeConfig(`
probes:
  hot: [memcg_writeback]
  attach:
    memcg_writeback_wait:
      - { attach: tp_btf, target: hvwatch_no_such_tracepoint }
      - { attach: tracepoint, target: writeback/hvwatch_no_such_tracepoint }
`);
  const agent = await AgentProcess.start(['--config', cfg]);
  t.teardown(() => agent.stop());
  const cg = createCgroup(`hvwatch-miss-${process.pid}`);
  t.teardown(() => cg.remove());

  const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as { name: string; chosen: unknown; candidates: { ok: boolean; error: string }[] }[];
  const wait = status.find((p) => p.name === 'memcg_writeback_wait')!;
  t.is(wait.chosen, null);
  t.is(wait.candidates.length, 2);
  for (const c of wait.candidates) {
    t.false(c.ok);
    t.regex(c.error, /hvwatch_no_such_tracepoint/);
  }
  t.regex(agent.stderr, /probe did not attach.*memcg_writeback_wait/);

  const pages = fsyncWriteInCgroup(cg, 8);
  const s = await until(
    async () => {
      const s = await agent.scrape();
      return (value(s, M.memcgWbCompleted.name, { cgroup: cg.path }) ?? 0) >= pages ? s : undefined;
    },
    15_000,
    'the other probe still counting',
  );
  t.is(value(s, M.probeAttached.name, { probe: 'memcg_writeback_wait' }), 0);
  t.is(value(s, M.probeAttachFailures.name, { probe: 'memcg_writeback_wait' }), 2);
  t.is(value(s, M.probeAttached.name, { probe: 'memcg_writeback' }), 1);
});

// ---- handler logic through BPF_PROG_TEST_RUN (the same functions the hooks call) ----

// struct memcg_test_args in families/memcg/memcg.bpf.c.
function args(
  op: number,
  item: number,
  val: number,
  cgroupId: bigint,
  w: { tid?: number; preempt?: boolean; now?: number; folio?: bigint; underWb?: boolean } = {},
): Buffer {
  const b = Buffer.alloc(56);
  b.writeUInt32LE(op, 0);
  b.writeInt32LE(item, 4);
  b.writeBigInt64LE(BigInt(val), 8);
  b.writeBigUInt64LE(cgroupId, 16);
  b.writeUInt32LE(w.tid ?? 0, 24);
  b.writeUInt32LE(w.preempt ? 1 : 0, 28);
  b.writeBigUInt64LE(BigInt(w.now ?? 0), 32);
  b.writeBigUInt64LE(w.folio ?? 0n, 40);
  b.writeUInt32LE(w.underWb ? 1 : 0, 48);
  return b;
}

test('memcg handlers via BPF_PROG_TEST_RUN (logic, not attach): NR_WRITEBACK deltas, PGPGOUT log2 batches, other items ignored', async (t) => {
  // A cgroup that exists so the decoder resolves it; nothing attaches (all probes disabled).
  const cg = createCgroup(`hvwatch-logic-${process.pid}`);
  t.teardown(() => cg.remove());
  const agent = await mapsOnlyAgent();
  t.teardown(() => agent.stop());
  const fam = agent.family('memcg')!;
  const enums = Buffer.alloc(16);
  fam.testProgram('test_memcg_enums').testRun(enums);
  const NR_WRITEBACK = Number(enums.readBigUInt64LE(0));
  const PGPGOUT = Number(enums.readBigUInt64LE(8));
  const run = (op: number, item: number, val: number): void => {
    t.is(fam.testProgram('test_memcg_handler').testRun(args(op, item, val, cg.id)).retval, 0);
  };
  run(0, NR_WRITEBACK, 16);
  run(0, NR_WRITEBACK, 4);
  run(0, NR_WRITEBACK, -12);
  run(0, NR_WRITEBACK + 1, 1000); // another node_stat_item: ignored
  run(1, PGPGOUT, 1);
  run(1, PGPGOUT, 3);
  run(1, PGPGOUT, 100);
  run(1, PGPGOUT + 1, 7); // another vm_event_item: ignored
  run(2, 0, 0);
  await agent.collect();
  const l = { cgroup: cg.path };
  t.is(agent.store.get(M.memcgWbStarted, l)?.value, 20);
  t.is(agent.store.get(M.memcgWbCompleted, l)?.value, 12);
  t.is(agent.store.get(M.memcgWbWaits, l)?.value, 1);
  const h = folded(agent.store.get(M.memcgUnchargeBatchPages, l)!.hist!);
  // le=1 holds the 1-page batch, le=3 adds the 3-page one, le=127 adds the 100-page one.
  t.is(h.cumulative[h.bounds.indexOf(1)], 1);
  t.is(h.cumulative[h.bounds.indexOf(3)], 2);
  t.is(h.cumulative[h.bounds.indexOf(63)], 2);
  t.is(h.cumulative[h.bounds.indexOf(127)], 3);
  t.is(h.sum, 104);
  t.is(h.count, 3);
  t.is(agent.store.get(M.mapFull, { family: 'memcg' })?.value, 0);
});

test('writeback-wait pairing via BPF_PROG_TEST_RUN (logic, not attach): fexit end, sched_switch sleep/wake, no-sleep waits, loop iterations', async (t) => {
  const cg = createCgroup(`hvwatch-wait-${process.pid}`);
  t.teardown(() => cg.remove());
  const agent = await mapsOnlyAgent();
  t.teardown(() => agent.stop());
  const fam = agent.family('memcg')!;
  const op = (code: number, w: Parameters<typeof args>[4]): number => fam.testProgram('test_memcg_handler').testRun(args(code, 0, 0, cg.id, w)).retval;
  const [BEGIN, END, OUT, IN] = [4, 5, 6, 7];
  const A = 0xffff888000100000n;
  // Thread 1 sleeps on folio A: a preemption before the sleep does not count as sleeping,
  // a second loop iteration keeps the first start, and the switch-in ends the wait.
  op(BEGIN, { tid: 1, now: 1_000, folio: A });
  op(BEGIN, { tid: 1, now: 5_000, folio: A });
  op(OUT, { tid: 1, preempt: true, underWb: true });
  op(IN, { tid: 1, now: 500_000 }); // runnable again after a preemption: not the wait's end
  op(OUT, { tid: 1, preempt: false, underWb: true });
  op(IN, { tid: 1, now: 1_001_000 });
  // Thread 2's folio was already clear at its next switch-out: a zero-length wait.
  op(BEGIN, { tid: 2, now: 7_000, folio: A + 64n });
  op(OUT, { tid: 2, preempt: false, underWb: false });
  // Thread 3 through the fentry/fexit pairing: exact.
  op(BEGIN, { tid: 3, now: 10_000, folio: A + 128n });
  op(END, { tid: 3, now: 12_000 });
  // A switch-out of a thread with no wait, and an end with no begin, change nothing.
  t.is(op(OUT, { tid: 4, preempt: false, underWb: true }), 1);
  op(END, { tid: 5, now: 99_999 });
  await agent.collect();
  const h = agent.store.get(M.memcgWbWaitTime, { cgroup: cg.path })!.hist!;
  t.is(h.count, 3);
  t.is(Math.round(h.sum * 1e9), 1_000_000 + 0 + 2_000);
  t.is(fam.maps.get('wb_waits')!.count(), 0, 'every finished wait leaves the per-thread map');
});

test('uncharge_batch handler via BPF_PROG_TEST_RUN (logic, not attach): pages per batch, empty batches ignored', async (t) => {
  const cg = createCgroup(`hvwatch-batch-${process.pid}`);
  t.teardown(() => cg.remove());
  const agent = await mapsOnlyAgent();
  t.teardown(() => agent.stop());
  const fam = agent.family('memcg')!;
  for (const pages of [32, 1, 0]) fam.testProgram('test_memcg_handler').testRun(args(3, 0, pages, cg.id));
  await agent.collect();
  const l = { cgroup: cg.path };
  const h = folded(agent.store.get(M.memcgUnchargeBatchPages, l)!.hist!);
  t.is(h.cumulative[h.bounds.indexOf(1)], 1);
  t.is(h.cumulative[h.bounds.indexOf(63)], 2);
  t.is(h.count, 2);
  t.is(h.sum, 33);
});

test("writeback-wait latency for real (tracepoint + sched_switch tier, opted in): an fsync'd write waits under its cgroup", async (t) => {
  const agent = await AgentProcess.start(['--hot', 'memcg_writeback_wait']);
  t.teardown(() => agent.stop());
  const cg = createCgroup(`hvwatch-waitlat-${process.pid}`);
  t.teardown(() => cg.remove());
  const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as {
    name: string;
    chosen: { attach: string } | null;
    candidates: { ok: boolean }[];
  }[];
  const w = status.find((p) => p.name === 'memcg_writeback_wait')!;
  // fentry is refused and there are no kprobes on CI hosts: the hot pairing is the one here.
  t.is(w.chosen?.attach, 'tp_btf');
  const labels = { cgroup: cg.path };
  let s: Awaited<ReturnType<typeof agent.scrape>> | undefined;
  for (let i = 0; i < 5 && !s; i++) {
    fsyncWriteInCgroup(cg, 32);
    s = await until(
      async () => {
        const s = await agent.scrape();
        return (value(s, `${M.memcgWbWaitTime.name}_count`, labels) ?? 0) > 0 ? s : undefined;
      },
      3_000,
      'a timed writeback wait',
    ).catch(() => undefined);
  }
  if (!s) return t.fail("no writeback wait was timed after five fsync'd writes");
  const waits = value(s, M.memcgWbWaits.name, labels)!;
  const timed = value(s, `${M.memcgWbWaitTime.name}_count`, labels)!;
  t.true(waits >= timed, `tracepoint hits (${waits}) count every loop iteration, timed waits (${timed}) one per wait`);
  t.true(value(s, `${M.memcgWbWaitTime.name}_sum`, labels)! > 0, 'some wait slept on its folio');
});

test("a deleted cgroup's entries and series linger after it vanishes (cgroups.removedSeconds), then are dropped", async (t) => {
  const cg = createCgroup(`hvwatch-gone-${process.pid}`);
  t.teardown(() => cg.remove());
  const agent = await mapsOnlyAgent();
  t.teardown(() => agent.stop());
  const fam = agent.family('memcg')!;
  fam.testProgram('test_memcg_handler').testRun(args(2, 0, 0, cg.id));
  await agent.collect();
  t.is(agent.store.get(M.memcgWbWaits, { cgroup: cg.path })?.value, 1);
  cg.remove();
  await new Promise((r) => setTimeout(r, 10_100)); // the liveness check runs every 10 s
  await agent.collect();
  t.is(agent.store.get(M.memcgWbWaits, { cgroup: cg.path })?.value, 1, 'its final count lingers');
  agent.cgroups!.resolver.setLinger(0); // as if the linger had passed
  await agent.collect();
  t.is(agent.store.get(M.memcgWbWaits, { cgroup: cg.path }), undefined);
  t.is(fam.maps.get('memcg_stats')!.count(), 0);
});

test('hvwatch probes --json --strict: exit 1 and the documented shape when a probe attached nothing', async (t) => {
  const cfg = writeConfig(`
probes:
  attach:
    memcg_writeback_wait: [{ attach: tracepoint, target: writeback/hvwatch_absent }]
`);
  const r = await runCli(['probes', '--json', '--strict', '--config', cfg]);
  if (r.code !== 1) return t.fail(`exit ${r.code}, stderr: ${r.stderr}`);
  const report = JSON.parse(r.stdout) as {
    name: string;
    family: string;
    candidates: { attach: string; target: string; ok: boolean; error: string | null; log: string[] }[];
    chosen: unknown;
  }[];
  const w = report.find((p) => p.name === 'memcg_writeback_wait')!;
  t.deepEqual(w.candidates, [{ attach: 'tracepoint', target: 'writeback/hvwatch_absent', ok: false, error: w.candidates[0]!.error, log: [] }]);
  t.regex(w.candidates[0]!.error!, /not found/);
  t.is(w.chosen, null);
  t.is(w.family, 'memcg');
  // The function tiers cannot attach on these hosts (no kprobes, fentry refused): --strict
  // passes once only probes that can attach are enabled.
  const fnTiers = new Set(['fentry', 'fexit', 'kprobe', 'kretprobe']);
  const fn = declaredFamilies()
    .flatMap((f) => f.probes)
    .filter((p) => p.candidates.every((c) => fnTiers.has(c.attach)))
    .map((p) => p.name);
  t.true(fn.includes('memcg_uncharge_fn') && fn.includes('kvm_irq_device_release'), fn.join(' '));
  const ok = await runCli(['probes', '--strict', ...fn.flatMap((p) => ['--disable', p])]);
  t.is(ok.code, 0, ok.stderr);
});
