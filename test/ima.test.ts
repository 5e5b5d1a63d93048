// ima family (seed 004). This host's kernel has no IMA, so: detection is tested for real
// (not built: the family is off with that reason, hvwatch_ima_present 0, nothing failed) and
// on synthetic securityfs trees (built but off); the cache/reuse/measurement logic runs
// through BPF_PROG_TEST_RUN on the family's real maps, decoded by the agent's real collect
// and event paths. test/vm/ima-guest.test.ts attaches the probes for real in 6.1/6.12 guests.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { folded } from '../agent/aggregate/histogram.js';
import * as IMA from '../families/ima/family.js';
import { detectIma, devName, REUSE_KINDS } from '../families/ima/family.js';
import { moduleOf } from '../agent/families.js';
import { AgentServices } from '../agent/services/index.js';
import { AgentProcess, pick, value } from './helpers/agent.js';
import { createCgroup } from './helpers/memcg.js';
import { setLogLevel } from '../agent/log.js';
import { trampolineMaxArgs } from '../agent/kernel.js';

setLogLevel('error'); // reuse events are logged: expected here, noise in the test log

const CFG = configSchema.parse({});
const SERVICES = new AgentServices(CFG);
const imaFamily = IMA.create(CFG, SERVICES);
const IMA_PROBES = imaFamily.probes.map((p) => p.name);

// ---- detection ----

test('detection on this kernel: IMA not built (no ima_file_check in BTF or kallsyms), so the family is not present, with that reason', (t) => {
  const d = detectIma(SERVICES.kernel);
  t.false(d.built);
  t.regex(d.reason!, /^IMA is not built into this kernel \(CONFIG_IMA off\): no ima_file_check or ima_bprm_check in its BTF or \/proc\/kallsyms$/);
  t.is(imaFamily.present!(), d.reason);
});

test('detection: built and active, built but not among the active LSMs (6.9+), built but not initialized, securityfs unmounted (synthetic securityfs trees)', (t) => {
  const names = { btf: new Set(['ima_file_check']), kallsyms: new Set<string>() };
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'hvwatch-secfs-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  t.deepEqual(detectIma(SERVICES.kernel, root, names), { built: true, active: undefined }, 'empty: securityfs not mounted, cannot tell, so attach');
  fs.writeFileSync(path.join(root, 'lsm'), 'lockdown,capability,landlock,yama,apparmor,bpf\n');
  const off = detectIma(SERVICES.kernel, root, names, true);
  t.false(off.active);
  t.is(
    off.reason,
    `IMA is built into this kernel but off: not among the active LSMs (/sys/kernel/security/lsm: lockdown,capability,landlock,yama,apparmor,bpf), so it never initialized (no ${root}/ima)`,
  );
  fs.writeFileSync(path.join(root, 'lsm'), 'lockdown,capability,ima,evm\n');
  t.regex(detectIma(SERVICES.kernel, root, names, true).reason!, /^IMA is built into this kernel but off: securityfs is mounted but it never initialized/);
  fs.writeFileSync(path.join(root, 'lsm'), 'lockdown,capability,yama,apparmor\n');
  t.regex(
    detectIma(SERVICES.kernel, root, names, false).reason!,
    /^IMA is built into this kernel but off: securityfs is mounted but it never initialized/,
    'before 6.9 IMA is no LSM: the list says nothing',
  );
  fs.mkdirSync(path.join(root, 'ima'));
  t.deepEqual(detectIma(SERVICES.kernel, root, names), { built: true, active: true });
  t.is(detectIma(SERVICES.kernel, root, { btf: new Set(), kallsyms: new Set(['ima_bprm_check']) }).built, true, 'kallsyms alone is enough');
});

test('a running agent on this kernel: hvwatch_ima_present 0, the ima probes off with the reason, no failure series, only info lines', async (t) => {
  const agent = await AgentProcess.start([]);
  t.teardown(() => agent.stop());
  const s = await agent.scrape();
  t.is(value(s, M.imaPresent.name), 0);
  for (const probe of IMA_PROBES) {
    t.deepEqual(pick(s, M.probeAttached.name, { probe }), [], `${probe}: not an attach failure`);
    t.deepEqual(pick(s, M.probeAttachFailures.name, { probe }), [], probe);
  }
  t.deepEqual(
    s.filter((x) => x.name.startsWith('hvwatch_ima_') && x.name !== M.imaPresent.name),
    [],
    'no ima series without IMA',
  );
  const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as {
    name: string;
    family: string;
    enabled: boolean;
    skipped?: string;
    candidates: unknown[];
  }[];
  const ima = status.filter((x) => x.family === 'ima');
  t.deepEqual(
    ima.map((x) => x.name),
    IMA_PROBES,
  );
  for (const x of ima) {
    t.false(x.enabled);
    t.regex(x.skipped!, /^IMA is not built into this kernel/);
    t.deepEqual(x.candidates, [], 'nothing tried, so nothing failed');
  }
  const lines = agent.stderr.split('\n').filter((l) => /family=ima|probe=ima_/.test(l));
  t.deepEqual(
    lines.filter((l) => !/level=info/.test(l)),
    [],
    'only info lines about ima',
  );
});

// ---- the logic, through BPF_PROG_TEST_RUN ----

const OP = { get: 0, free: 1, check: 2, measure: 3, appraise: 4, add: 5 } as const;
interface Step {
  op: number;
  inode?: bigint;
  ino?: number;
  gen?: number;
  dev?: number;
  hadIma?: boolean;
  iint?: bigint;
  now?: bigint;
  enter?: bigint;
  cg?: bigint;
  ret?: number;
  violation?: boolean;
}

/** struct ima_test_args in families/ima/ima.bpf.c. */
function encode(s: Step, cg: bigint): Buffer {
  const b = Buffer.alloc(80);
  b.writeUInt32LE(s.op, 0);
  b.writeUInt32LE(s.hadIma ? 1 : 0, 4);
  b.writeBigUInt64LE(s.inode ?? 0n, 8);
  b.writeBigUInt64LE(BigInt(s.ino ?? 0), 16);
  b.writeUInt32LE(s.gen ?? 0, 24);
  b.writeUInt32LE(s.dev ?? 0, 28);
  b.writeBigUInt64LE(s.iint ?? 0xffff888077770000n, 32);
  b.writeBigUInt64LE(s.now ?? 0n, 40);
  b.writeBigUInt64LE(s.enter ?? 0n, 48);
  b.writeBigUInt64LE(s.cg ?? cg, 56);
  b.writeBigInt64LE(BigInt(s.ret ?? 0), 64);
  b.writeUInt32LE(s.violation ? 1 : 0, 72);
  return b;
}

/** An in-process agent with only the ima family, forced on (this kernel has no IMA), its
 * probes disabled: its maps and test program are real, nothing is attached. */
function logicAgent(t: import('ava').ExecutionContext, name: string) {
  const cg = createCgroup(`hvwatch-ima-${name}-${process.pid}`);
  const agent = new Agent(configSchema.parse({ probes: { disable: IMA_PROBES } }), [moduleOf((c, s) => ({ ...IMA.create(c, s), present: () => undefined }))]);
  agent.start();
  t.teardown(async () => {
    await agent.stop();
    cg.remove();
  });
  const fam = agent.family('ima')!;
  const prog = fam.testProgram('test_ima');
  const run = (s: Step): number => prog.testRun(encode(s, cg.id)).retval;
  const reuse = async (): Promise<Record<string, number>> => {
    await agent.collect();
    return Object.fromEntries(REUSE_KINDS.map((k) => [k, agent.store.get(M.imaInodeReuse, { kind: k })?.value ?? 0]));
  };
  const events = async (n: number): Promise<Record<string, unknown>[]> => {
    const deadline = Date.now() + 5000;
    while (agent.races.length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return agent.races;
  };
  return { agent, cg, run, reuse, events };
}

const I = 0xffff888012345600n; // an inode pointer
const DEV = (8 << 20) | 1; // 8:1
const MS = 1_000_000n;

test('pointer reuse after the iint was freed, same i_ino with a new i_generation, via BPF_PROG_TEST_RUN (logic, not attach): counted after_free, paired with both identities', async (t) => {
  const { agent, cg, run, reuse, events } = logicAgent(t, 'gen');
  t.is(run({ op: OP.get, inode: I, ino: 4242, gen: 7, dev: DEV, hadIma: false, now: 1000n * MS }), 0, 'first allocation');
  t.is(run({ op: OP.get, inode: I, ino: 4242, gen: 7, dev: DEV, hadIma: true, now: 1001n * MS }), 0, 'a hit on the same identity');
  run({ op: OP.free, inode: I, hadIma: true, now: 1002n * MS });
  // The file is deleted and another created: ext4 hands out the same inode number with a new
  // generation, and the slab the same struct inode.
  t.is(run({ op: OP.get, inode: I, ino: 4242, gen: 8, dev: DEV, hadIma: false, now: 1005n * MS }), 1, 'reuse kind after_free (+1)');
  t.deepEqual(await reuse(), { after_free: 1, live_state: 0 });
  const [ev] = await events(1);
  t.like(ev, {
    kind: 'after_free',
    inode: `0x${I.toString(16)}`,
    old: { dev: '8:1', ino: 4242, generation: 7 },
    new: { dev: '8:1', ino: 4242, generation: 8 },
    since_alloc_ns: 5_000_000,
    since_free_ns: 3_000_000,
    old_cgroup: cg.path,
    cgroup: cg.path,
  });
  await agent.collect();
  t.is(agent.store.get(M.imaCacheAllocations, { cgroup: cg.path })?.value, 2);
  t.is(agent.store.get(M.imaCacheFrees, {})?.value, 1);
  t.is(agent.store.get(M.imaCacheEntries, {})?.value, 1, 'two allocated, one freed');
  // The new identity is tracked now: a hit on it is no reuse.
  t.is(run({ op: OP.get, inode: I, ino: 4242, gen: 8, dev: DEV, hadIma: true, now: 1006n * MS }), 0);
  t.deepEqual(await reuse(), { after_free: 1, live_state: 0 });
});

test("pointer reuse while the old identity's iint was never freed via BPF_PROG_TEST_RUN (logic, not attach): counted live_state, each identity field on its own", async (t) => {
  const { run, reuse, events } = logicAgent(t, 'live');
  run({ op: OP.get, inode: I, ino: 10, gen: 1, dev: DEV, now: 1000n * MS });
  t.is(run({ op: OP.get, inode: I, ino: 10, gen: 2, dev: DEV, hadIma: true, now: 1001n * MS }), 2, 'new generation: live_state (+1)');
  t.is(run({ op: OP.get, inode: I, ino: 11, gen: 2, dev: DEV, hadIma: true, now: 1002n * MS }), 2, 'new i_ino');
  t.is(run({ op: OP.get, inode: I, ino: 11, gen: 2, dev: DEV + 1, hadIma: true, now: 1003n * MS }), 2, 'another device, same i_ino and generation');
  t.is(run({ op: OP.get, inode: I, ino: 11, gen: 2, dev: DEV + 1, hadIma: true, now: 1004n * MS }), 0, 'same identity again: a hit');
  t.deepEqual(await reuse(), { after_free: 0, live_state: 3 });
  const ev = await events(3);
  t.deepEqual(
    ev.map((e) => [e.kind, e.old, e.new, e.since_free_ns]),
    [
      ['live_state', { dev: '8:1', ino: 10, generation: 1 }, { dev: '8:1', ino: 10, generation: 2 }, 0],
      ['live_state', { dev: '8:1', ino: 10, generation: 2 }, { dev: '8:1', ino: 11, generation: 2 }, 0],
      ['live_state', { dev: '8:1', ino: 11, generation: 2 }, { dev: '8:2', ino: 11, generation: 2 }, 0],
    ],
  );
});

test('cache bookkeeping via BPF_PROG_TEST_RUN (logic, not attach): iints from before attach are not tracked, their frees are counted apart, other pointers never pair', async (t) => {
  const { agent, cg, run, reuse } = logicAgent(t, 'book');
  const J = I + 0x400n;
  t.is(run({ op: OP.get, inode: J, ino: 5, gen: 1, dev: DEV, hadIma: true, now: 1000n * MS }), 0, 'S_IMA already set: allocated before attach');
  run({ op: OP.free, inode: J, hadIma: true, now: 1001n * MS });
  run({ op: OP.free, inode: J + 0x400n, hadIma: false, now: 1001n * MS }); // an inode without an iint: nothing
  run({ op: OP.get, inode: I, ino: 6, gen: 1, dev: DEV, now: 1002n * MS });
  run({ op: OP.get, inode: J, ino: 6, gen: 1, dev: DEV, now: 1003n * MS }); // same identity, another pointer
  run({ op: OP.get, inode: I, ino: 9, gen: 9, iint: 0n, hadIma: false, now: 1004n * MS }); // allocation failed: nothing cached
  t.deepEqual(await reuse(), { after_free: 0, live_state: 0 });
  t.is(agent.store.get(M.imaCacheAllocations, { cgroup: cg.path })?.value, 2);
  t.is(agent.store.get(M.imaCacheFrees, {})?.value, 1);
  t.is(agent.store.get(M.imaStateEvents, { kind: 'untracked_free' })?.value, 1);
  t.is(agent.store.get(M.imaCacheEntries, {})?.value, 2);
  t.is(agent.store.get(M.mapEntries, { family: 'ima', map: 'ima_inodes' })?.value, 2);
});

test('measurements, violations and the three latency histograms per cgroup via BPF_PROG_TEST_RUN (logic, not attach)', async (t) => {
  const { agent, cg, run } = logicAgent(t, 'hist');
  run({ op: OP.check, enter: 1000n, now: 1000n + 3000n });
  run({ op: OP.check, enter: 5000n, now: 5000n + 1_000_000n });
  run({ op: OP.measure, enter: 1000n, now: 1000n + 250_000n });
  run({ op: OP.appraise, enter: 1000n, now: 1000n + 40_000n });
  for (let i = 0; i < 3; i++) run({ op: OP.add, ret: 0 });
  run({ op: OP.add, ret: -17 }); // -EEXIST: a duplicate template digest is not a new line in the log
  run({ op: OP.add, ret: 0, violation: true });
  await agent.collect();
  const l = { cgroup: cg.path };
  t.is(agent.store.get(M.imaMeasurements, l)?.value, 3);
  t.is(agent.store.get(M.imaViolations, l)?.value, 1);
  const check = folded(agent.store.get(M.imaCheckDuration, l)!.hist!);
  t.is(check.count, 2);
  t.true(Math.abs(check.sum - 1.003e-3) < 1e-12, `check sum ${check.sum}`);
  const m = agent.store.get(M.imaMeasurementDuration, l)!.hist!;
  t.is(m.count, 1);
  t.true(Math.abs(m.sum - 250e-6) < 1e-12);
  const a = agent.store.get(M.imaAppraisalDuration, l)!.hist!;
  t.is(a.count, 1);
  t.true(Math.abs(a.sum - 40e-6) < 1e-12);
});

test('devName: a kernel dev_t as major:minor (include/linux/kdev_t.h)', (t) => {
  t.is(devName((259 << 20) | 3), '259:3');
  t.is(devName(0), '0:0');
});

test('trampoline argument limit the fentry precheck applies: x86-64 takes 6 before 6.6 and 12 from 6.6; other arches are not limited here', (t) => {
  t.is(trampolineMaxArgs('x64', false), 6);
  t.is(trampolineMaxArgs('x64', true), 12);
  t.is(trampolineMaxArgs('arm64', false), undefined);
  // The two 7-argument IMA functions have a fallback that fits 6 (ima_file_check) or a kprobe.
  const check = imaFamily.probes.find((p) => p.name === 'ima_check')!;
  t.deepEqual(
    check.candidates.filter((c) => c.attach === 'fentry').map((c) => c.target),
    ['process_measurement', 'ima_file_check'],
  );
});
