// Nothing lost between scrapes (issue 17, README "Series lifecycle"): a VM or a memory
// cgroup that starts and ends before the agent's first scrape is named at first sight by
// the BPF side (hv_vm_seen, cgroup_seen) and its exact final counts are served by the next
// scrape, for the linger; counters with no labels or fixed label values exist from start-up.
import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { AgentProcess, ROOT, pick, value, writeConfig } from './helpers/agent.js';
import { kvmUsable, runGuest } from './helpers/kvm.js';
import { createCgroup, fsyncWriteInCgroup } from './helpers/memcg.js';
import { M } from '../agent/catalog.js';
import { allProbeNames } from '../agent/families.js';

const IRQ_GUEST = join(ROOT, 'test/helpers/build/kvm-irq-guest');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface IrqRun {
  ms: number;
  result: { irqchip: boolean; irq_line_calls: number; irq_line_errors: number; delivered: { pic: number } };
}

/** kvm-irq-guest to completion, timed from spawn to exit. */
async function runIrqGuest(args: string[]): Promise<IrqRun> {
  const t0 = Date.now();
  const proc = spawn(IRQ_GUEST, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => proc.on('close', resolve));
  if (code !== 0) throw new Error(`kvm-irq-guest exited ${code}: ${err.trim()}`);
  return { ms: Date.now() - t0, result: JSON.parse(out.trim().split('\n').at(-1)!) };
}

const skipKvm = kvmUsable();
(skipKvm ? test.skip : test)(
  'real /dev/kvm guests that live under 1 s and exit before any scrape: the first scrape has their exact counts under their -name',
  async (t) => {
    const agent = await AgentProcess.start([]);
    t.teardown(() => agent.stop());
    const io = `hvwatch-brief-io-${process.pid}`;
    const irq = `hvwatch-brief-irq-${process.pid}`;
    const WRITES = 10;
    const EDGES = 333;

    const t0 = Date.now();
    const r = await runGuest({ name: io, writes: WRITES, nestedState: true });
    const ioMs = Date.now() - t0;
    const ir = await runIrqGuest(['-name', `guest=${irq},debug-threads=on`, '--irq-line', String(EDGES)]);
    t.log(`guest ${io}: ${ioMs} ms from spawn to exit; guest ${irq}: ${ir.ms} ms`);
    t.true(ioMs < 1000, `${io} lived ${ioMs} ms`);
    t.true(ir.ms < 1000, `${irq} lived ${ir.ms} ms`);
    t.is(r.io_exits, WRITES);
    await sleep(1000); // both processes are gone; no scrape happened yet

    const s = await agent.scrape();
    const vio = { vm: io };
    t.is(value(s, M.kvmPio.name, { ...vio, direction: 'out' }), WRITES);
    t.is(value(s, M.kvmUserspaceExits.name, { ...vio, reason: 'IO' }), WRITES);
    t.is(value(s, M.kvmUserspaceExits.name, { ...vio, reason: 'HLT' }), 1);
    const getErr = r.nested_state!.get.errno ?? 'ok';
    const setErr = r.nested_state!.set.errno ?? 'ok';
    t.is(value(s, M.kvmNestedStateOps.name, { ...vio, op: 'get', result: getErr }), 1, 'KVM_GET_NESTED_STATE');
    t.is(value(s, M.kvmNestedStateOps.name, { ...vio, op: 'set', result: setErr }), 1, 'KVM_SET_NESTED_STATE');
    t.deepEqual(
      pick(s, M.kvmVmInfo.name, vio).map((x) => x.labels.source),
      ['qemu'],
      'named from its QEMU-style -name although the process was gone',
    );
    t.is(pick(s, M.kvmVmInfo.name).filter((x) => x.labels.vm === `pid-${r.pid}`).length, 0, 'never as pid-N');

    if (!ir.result.irqchip) {
      t.log('KVM_CREATE_IRQCHIP refused here: the IRQ edges part is not checked');
    } else {
      t.is(ir.result.irq_line_errors, 0);
      t.is(ir.result.delivered.pic, EDGES);
      const virq = { vm: irq };
      // Each edge is KVM_IRQ_LINE level 1 then 0: two kvm_set_irq, each reaching the PIC.
      t.is(value(s, M.kvmIrqInjections.name, { ...virq, path: 'set_irq' }), 2 * EDGES);
      t.is(value(s, M.kvmIrqInjections.name, { ...virq, path: 'pic' }), 2 * EDGES);
      t.is(pick(s, M.kvmVmInfo.name, virq).length, 1, `${irq} is named`);
    }
    t.is(value(s, M.mapFull.name, { family: 'kvm' }), 0, 'no first-sight record lost to a full map');

    // Lingering: the same counts at the next scrape (the series stay kvm.exitedVmSeconds).
    const again = await agent.scrape();
    t.is(value(again, M.kvmPio.name, { ...vio, direction: 'out' }), WRITES);
  },
);

const TIERS = {
  tp_btf: { memcg_writeback: 'mod_memcg_lruvec_state', cgroup_lifecycle: 'cgroup_mkdir' },
  tracepoint: { memcg_writeback: 'memcg/mod_memcg_lruvec_state', cgroup_lifecycle: 'cgroup/cgroup_mkdir' },
} as const;

for (const [tier, targets] of Object.entries(TIERS)) {
  test(`a memory cgroup made, written with fsync and removed before any scrape (${tier} tier): its completed writeback pages are exact under its path`, async (t) => {
    const keep = Object.keys(targets);
    const pins = Object.entries(targets)
      .map(([p, target]) => `    ${p}:\n      - { attach: ${tier}, target: ${target} }`)
      .join('\n');
    const cfg = writeConfig(`probes:
  disable: [${allProbeNames()
    .filter((n) => !keep.includes(n))
    .join(', ')}]
  hot: [memcg_writeback]
  attach:
${pins}
`);
    const agent = await AgentProcess.start(['--config', cfg]);
    t.teardown(() => agent.stop());
    const cg = createCgroup(`hvwatch-brief-cg-${tier}-${process.pid}`);
    t.teardown(() => cg.remove());
    const pages = fsyncWriteInCgroup(cg, 4);
    cg.remove();
    await sleep(500);

    const s = await agent.scrape();
    for (const p of keep) t.is(pick(s, M.probeInfo.name, { probe: p })[0]?.labels.attach, tier, p);
    t.is(value(s, M.memcgWbCompleted.name, { cgroup: cg.path }), pages, `${pages} pages under ${cg.path}, removed before the scrape`);
    t.is(value(s, M.memcgWbStarted.name, { cgroup: cg.path }), pages);
    t.truthy(value(s, M.mapEntries.name, { family: 'memcg', map: 'cgroup_seen' }), 'named from its cgroup_mkdir record');
  });
}

test('counters without labels or with fixed label values are exported as 0 from start-up', async (t) => {
  const agent = await AgentProcess.start([]);
  t.teardown(() => agent.stop());
  const s = await agent.scrape();
  t.is(value(s, M.cgroupUnresolved.name), 0);
  for (const label of ['cgroup', 'vm']) t.is(value(s, M.cardinalityDropped.name, { label }), 0, label);
  t.is(value(s, M.memcgWbUnpairedEnds.name), 0);
});

test('a cgroup whose linger is over leaves with its map entries; cgroups.removedSeconds is validated', async (t) => {
  const bad = await import('../agent/config.js').then((c) => c.configSchema.safeParse({ cgroups: { removedSeconds: -1 } }));
  t.false(bad.success);
  const cfg = writeConfig(`probes:
  disable: [${allProbeNames()
    .filter((n) => !['memcg_writeback', 'cgroup_lifecycle'].includes(n))
    .join(', ')}]
  hot: [memcg_writeback]
cgroups:
  removedSeconds: 2
`);
  const agent = await AgentProcess.start(['--config', cfg]);
  t.teardown(() => agent.stop());
  const cg = createCgroup(`hvwatch-brief-linger-${process.pid}`);
  t.teardown(() => cg.remove());
  const pages = fsyncWriteInCgroup(cg, 1);
  cg.remove();
  const first = await agent.scrape();
  t.is(value(first, M.memcgWbCompleted.name, { cgroup: cg.path }), pages, 'lingering');
  t.true(agent.holdsMapKey('cgroup_seen', cg.id), 'its first-sight record kept while it lingers');
  await sleep(2500);
  const later = await agent.scrape();
  t.is(value(later, M.memcgWbCompleted.name, { cgroup: cg.path }), undefined, 'gone after its linger');
  // Its own key, not the map's size: cgroups other work on the host makes and removes meanwhile
  // have records of their own in this agent's map.
  t.false(agent.holdsMapKey('cgroup_seen', cg.id), 'its first-sight record deleted');
});

test('the catalog drives the zero series: unlabelled counters and declared fixed values, for loaded families only', async (t) => {
  const { fixedSeries, initFixedSeries } = await import('../agent/aggregate/initial.js');
  const { MetricStore } = await import('../agent/export/store.js');
  t.deepEqual(fixedSeries(M.cardinalityDropped), [{ label: 'cgroup' }, { label: 'vm' }]);
  t.deepEqual(fixedSeries(M.cgroupUnresolved), [{}]);
  t.deepEqual(fixedSeries(M.kvmPio), [], 'per-object counters are born with their object');
  t.deepEqual(fixedSeries(M.collectSeconds), [], 'gauges are not zeroed');
  const store = new MetricStore();
  initFixedSeries(store, ['memcg']);
  t.is(store.get(M.cgroupUnresolved, {})?.value, 0);
  t.is(store.get(M.memcgWbUnpairedEnds, {}), undefined, 'memcg_fn not loaded: not exported');
});
