// kvmi family (seed 001). No kernel here has KVM introspection (it is not upstream), so:
// detection is tested for real (this kernel: not present, hvwatch_kvmi_present 0, the probes
// off with the reason, no failure anywhere), and the event/command logic runs through
// BPF_PROG_TEST_RUN with synthetic argument sequences on the family's real maps, decoded by
// the agent's real collect path (the store, and /metrics served over HTTP).
import test from 'ava';
import type { AddressInfo } from 'node:net';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { buildApp, listen } from '../agent/export/server.js';
import * as KVMI from '../families/kvmi/family.js';
import { detectKvmi, kvmiAbiOf } from '../families/kvmi/family.js';
import { moduleOf } from '../agent/families.js';
import { AgentServices } from '../agent/services/index.js';
import { actionName, commandName, eventName, resultName } from '../families/kvmi/ids.js';
import { AgentProcess, parseExposition, pick, runCli, value } from './helpers/agent.js';

const CFG = configSchema.parse({});
const SERVICES = new AgentServices(CFG);
const kvmiFamily = KVMI.create(CFG, SERVICES);
const KVMI_PROBES = kvmiFamily.probes.map((p) => p.name);

// ---- detection, for real ----

test('detection on this kernel: no KVMI functions in BTF or kallsyms, so not present, with the reason', (t) => {
  const d = detectKvmi(SERVICES.kernel);
  t.false(d.present);
  t.deepEqual(d.found, []);
  t.is(d.abi, undefined);
  t.regex(d.reason!, /no KVM introspection \(KVMI\).*kvmi_send_vcpu_event.*BTF or \/proc\/kallsyms/);
  t.is(kvmiFamily.present!(), d.reason);
});

test('the ABI generation follows the send function the kernel has (v10 renamed it)', (t) => {
  t.is(kvmiAbiOf(new Set(['kvmi_send_vcpu_event', 'kvmi_msg_send_unhook'])), 'v10-v12');
  t.is(kvmiAbiOf(new Set(['kvmi_send_event', 'kvmi_msg_process'])), 'v7-v9');
  t.is(kvmiAbiOf(new Set(['kvmi_msg_process'])), undefined);
});

test('a running agent on this kernel: hvwatch_kvmi_present 0, kvmi probes off with the reason, no failure series, no error lines', async (t) => {
  const agent = await AgentProcess.start([]);
  t.teardown(() => agent.stop());
  const s = await agent.scrape();
  t.is(value(s, M.kvmiPresent.name), 0);
  for (const probe of KVMI_PROBES) {
    t.deepEqual(pick(s, M.probeAttached.name, { probe }), [], `${probe}: not an attach failure`);
    t.deepEqual(pick(s, M.probeAttachFailures.name, { probe }), [], probe);
    t.deepEqual(pick(s, M.probeInfo.name, { probe }), [], probe);
  }
  t.deepEqual(
    s.filter((x) => x.name.startsWith('hvwatch_kvmi_') && x.name !== M.kvmiPresent.name),
    [],
    'no kvmi series without KVMI',
  );
  const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as {
    name: string;
    family: string;
    enabled: boolean;
    skipped?: string;
    candidates: unknown[];
    chosen: unknown;
  }[];
  const kvmi = status.filter((x) => x.family === 'kvmi');
  t.deepEqual(
    kvmi.map((x) => x.name),
    KVMI_PROBES,
  );
  for (const x of kvmi) {
    t.false(x.enabled);
    t.regex(x.skipped!, /^no KVM introspection \(KVMI\) in this kernel/);
    t.deepEqual(x.candidates, [], 'nothing tried, so nothing failed');
    t.is(x.chosen, null);
  }
  const lines = agent.stderr.split('\n').filter((l) => /kvmi/i.test(l));
  t.deepEqual(
    lines.filter((l) => !/level=info/.test(l)),
    [],
    'only info lines about kvmi',
  );
  t.true(lines.some((l) => /msg="probe family off: its subsystem is not in this kernel" family=kvmi/.test(l)));
});

test('hvwatch probes (text and --json) list the kvmi probes as off, not failed', async (t) => {
  const json = await runCli(['probes', '--json']);
  t.is(json.code, 0, json.stderr);
  const st = JSON.parse(json.stdout) as { name: string; family: string; enabled: boolean; skipped: string | null; candidates: unknown[]; chosen: unknown }[];
  const kvmi = st.filter((x) => x.family === 'kvmi');
  t.deepEqual(
    kvmi.map((x) => x.name),
    KVMI_PROBES,
  );
  t.true(kvmi.every((x) => !x.enabled && /KVMI/.test(x.skipped ?? '') && x.candidates.length === 0 && x.chosen === null));
  t.notRegex(json.stderr, /level=(warn|error).*kvmi/i);
  const text = await runCli(['probes']);
  for (const p of KVMI_PROBES) t.regex(text.stdout, new RegExp(`^${p} \\[kvmi\\] off \\(no KVM introspection \\(KVMI\\)`, 'm'));
  t.notRegex(text.stdout, /^kvmi_\S+ \[kvmi\] NOT ATTACHED/m);
});

// ---- the handlers through BPF_PROG_TEST_RUN (logic, not attach) ----

// struct kvmi_test_args and enum kvmi_test_op in families/kvmi/kvmi.bpf.c.
const T = { EVENT_SEND: 0, EVENT_DONE: 1, EVENT_DONE_THREAD: 2, UNHOOK: 3, CMD_START: 4, CMD_REPLY: 5 } as const;
interface Ev {
  tid?: number;
  tgid?: number;
  id?: number;
  now?: number;
  vcpu?: bigint;
  ret?: number;
  action?: number;
}
const CMD_ANY = 0xffffffff;
// v10..v12 ids (families/kvmi/ids.ts).
const EV = { PAUSE: 1, BREAKPOINT: 5, CR: 7, MSR: 15, PF: 17 } as const;
const CMD = { VM_READ_PHYSICAL: 12, VCPU_GET_REGISTERS: 7, VCPU_GET_XSAVE: 19 } as const;
const ACT = { CONTINUE: 0, RETRY: 1, CRASH: 2 } as const;
const EINTR = -4;

function encode(op: number, e: Ev): Buffer {
  const b = Buffer.alloc(48);
  b.writeUInt32LE(op, 0);
  b.writeUInt32LE(e.tid ?? 1, 4);
  b.writeUInt32LE(e.tgid ?? process.pid, 8);
  b.writeUInt32LE((e.id ?? 0) >>> 0, 12);
  b.writeBigUInt64LE(BigInt(e.now ?? 0), 16);
  b.writeBigUInt64LE(e.vcpu ?? 0n, 24);
  b.writeBigInt64LE(BigInt(e.ret ?? 0), 32);
  b.writeUInt32LE((e.action ?? 0) >>> 0, 40);
  return b;
}

/** An in-process agent with only the kvmi family, forced on (this kernel has no KVMI), all
 * its probes disabled: its maps and test program are real, nothing is attached. */
function logicAgent(t: import('ava').ExecutionContext) {
  const agent = new Agent(configSchema.parse({ probes: { disable: KVMI_PROBES } }), [moduleOf((c, s) => ({ ...KVMI.create(c, s), present: () => undefined }))]);
  agent.start();
  t.teardown(() => agent.stop());
  const fam = agent.family('kvmi')!;
  const run = (op: number, e: Ev = {}): number => fam.testProgram('test_kvmi').testRun(encode(op, e)).retval;
  return { agent, run, vm: `pid-${process.pid}` };
}

test('send/reply pairing per vCPU via BPF_PROG_TEST_RUN (logic, not attach): paused time per event, reply actions, interleaved vCPUs', async (t) => {
  const { agent, run, vm } = logicAgent(t);
  const A = 0xffff_8880_0000_a000n;
  const B = 0xffff_8880_0000_b000n;
  run(T.EVENT_SEND, { vcpu: A, tid: 10, now: 1_000, id: EV.PF });
  run(T.EVENT_SEND, { vcpu: B, tid: 11, now: 2_000, id: EV.CR });
  run(T.EVENT_DONE, { vcpu: B, tid: 11, now: 5_000, action: ACT.RETRY }); // B's reply first
  run(T.EVENT_DONE, { vcpu: A, tid: 10, now: 9_000, action: ACT.CONTINUE });
  run(T.EVENT_SEND, { vcpu: A, tid: 10, now: 10_000, id: EV.PF });
  t.is(run(T.EVENT_DONE_THREAD, { tid: 10, now: 10_500, action: ACT.CRASH }), 0, 'kretprobe path: the thread names its vCPU');
  run(T.EVENT_DONE, { vcpu: A, tid: 10, now: 11_000 }); // a second return for one send: no start
  run(T.EVENT_SEND, { vcpu: B, tid: 11, now: 20_000, id: EV.PAUSE });
  run(T.EVENT_DONE, { vcpu: B, tid: 99, now: 21_000 }); // another thread's return never pairs
  await agent.collect();
  const pf = { vm, event: 'PF' };
  const cr = { vm, event: 'CR' };
  t.is(agent.store.get(M.kvmiEvents, pf)?.value, 2);
  t.is(agent.store.get(M.kvmiEvents, cr)?.value, 1);
  t.is(agent.store.get(M.kvmiEvents, { vm, event: 'PAUSE' })?.value, 1);
  const pfTime = agent.store.get(M.kvmiReplyTime, pf)!.hist!;
  t.is(pfTime.count, 2);
  t.is(Math.round(pfTime.sum * 1e9), 8_000 + 500);
  t.is(Math.round(agent.store.get(M.kvmiReplyTime, cr)!.hist!.sum * 1e9), 3_000);
  t.is(agent.store.get(M.kvmiReplies, { ...pf, action: 'continue' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplies, { ...pf, action: 'crash' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplies, { ...cr, action: 'retry' })?.value, 1);
  t.is(agent.store.get(M.kvmiUnreplied, pf)?.value, undefined, 'every PF event was replied: not born');
  t.is(agent.store.get(M.kvmiUnpaired, { pairing: 'event_no_start' })?.value, 2);
  t.is(agent.store.get(M.kvmiUnpaired, { pairing: 'event_stale' })?.value, 0);
  t.is(agent.store.get(M.kvmiReplyTime, { vm, event: 'PAUSE' })?.hist, undefined, 'the PAUSE event is still waiting: not timed yet, not born');
});

test('unhook with pending replies via BPF_PROG_TEST_RUN (logic, not attach): the waiting events end unreplied, a late reply is a reply', async (t) => {
  const { agent, run, vm } = logicAgent(t);
  const C = 0xc000n;
  const D = 0xd000n;
  const E = 0xe000n;
  run(T.EVENT_SEND, { vcpu: C, tid: 30, now: 1_000, id: EV.BREAKPOINT });
  run(T.EVENT_SEND, { vcpu: D, tid: 31, now: 2_000, id: EV.MSR });
  run(T.EVENT_SEND, { vcpu: E, tid: 32, now: 2_500, id: EV.MSR });
  run(T.UNHOOK, { tid: 33, now: 3_000 });
  // The tool answers E after the unhook notice, then closes: C and D are aborted (-EINTR).
  run(T.EVENT_DONE, { vcpu: E, tid: 32, now: 3_500, action: ACT.CONTINUE });
  run(T.EVENT_DONE, { vcpu: C, tid: 30, now: 4_000, ret: EINTR });
  run(T.EVENT_DONE_THREAD, { tid: 31, now: 4_100, ret: EINTR });
  // A vCPU whose return was never seen: its next send replaces the open one and counts it.
  const F = 0xf000n;
  run(T.EVENT_SEND, { vcpu: F, tid: 34, now: 1_000, id: EV.PF });
  run(T.EVENT_SEND, { vcpu: F, tid: 34, now: 9_000, id: EV.PF });
  await agent.collect();
  t.is(agent.store.get(M.kvmiUnhooks, { vm })?.value, 1);
  t.is(agent.store.get(M.kvmiUnreplied, { vm, event: 'BREAKPOINT' })?.value, 1);
  t.is(agent.store.get(M.kvmiUnreplied, { vm, event: 'MSR' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplies, { vm, event: 'MSR', action: 'continue' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplyTime, { vm, event: 'MSR' })?.hist?.count, 1, 'only the replied MSR event is timed');
  t.is(agent.store.get(M.kvmiReplyTime, { vm, event: 'BREAKPOINT' })?.hist, undefined, 'an unreplied event is timed nowhere: not born');
  t.is(agent.store.get(M.kvmiUnpaired, { pairing: 'event_stale' })?.value, 1);
  t.is(agent.store.get(M.kvmiEvents, { vm, event: 'PF' })?.value, 2);
});

test('unknown ids via BPF_PROG_TEST_RUN (logic, not attach): events, actions, commands and error codes decode to their number, never dropped', async (t) => {
  const { agent, run, vm } = logicAgent(t);
  run(T.EVENT_SEND, { vcpu: 0x1000n, tid: 40, now: 1_000, id: 99 });
  run(T.EVENT_DONE, { vcpu: 0x1000n, tid: 40, now: 2_000, action: 7 });
  run(T.EVENT_SEND, { vcpu: 0x2000n, tid: 41, now: 1_000, id: EV.CR });
  run(T.EVENT_DONE, { vcpu: 0x2000n, tid: 41, now: 2_000, action: 0xffffffff }); // reply struct unreadable
  run(T.CMD_REPLY, { tid: 42, now: 1_000, id: 1234, ret: -5 });
  run(T.CMD_REPLY, { tid: 42, now: 1_000, id: 1234, ret: -1000 });
  await agent.collect();
  t.is(agent.store.get(M.kvmiEvents, { vm, event: '99' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplies, { vm, event: '99', action: '7' })?.value, 1);
  t.is(agent.store.get(M.kvmiReplies, { vm, event: 'CR', action: 'unreadable' })?.value, 1);
  t.is(agent.store.get(M.kvmiCommands, { vm, command: '1234', result: '-5' })?.value, 1);
  t.is(agent.store.get(M.kvmiCommands, { vm, command: '1234', result: 'KVM_ENOSYS' })?.value, 1);
});

test('command results and latency via BPF_PROG_TEST_RUN (logic, not attach): KVM error codes, per-thread dispatch pairing, histogram over results', async (t) => {
  const { agent, run, vm } = logicAgent(t);
  // vCPU thread 50 runs two GET_XSAVE jobs (seed 001): ok after 3 us, -KVM_EINVAL after 1 us.
  run(T.CMD_START, { tid: 50, now: 1_000, id: CMD.VCPU_GET_XSAVE });
  run(T.CMD_REPLY, { tid: 50, now: 4_000, id: CMD.VCPU_GET_XSAVE, ret: 0 });
  run(T.CMD_START, { tid: 50, now: 5_000, id: CMD.VCPU_GET_XSAVE });
  run(T.CMD_REPLY, { tid: 50, now: 6_000, id: CMD.VCPU_GET_XSAVE, ret: -22 });
  // The receiving thread answers -KVM_EAGAIN (vCPU not ready) and -KVM_ENOMEM with no
  // dispatch seen (no start hook attached): counted, not timed.
  run(T.CMD_REPLY, { tid: 51, now: 7_000, id: CMD.VCPU_GET_XSAVE, ret: -11 });
  run(T.CMD_REPLY, { tid: 51, now: 7_000, id: CMD.VCPU_GET_XSAVE, ret: -12 });
  // A VM command on the receiving thread: dispatched (kvmi_is_command_allowed), then answered.
  run(T.CMD_START, { tid: 52, now: 10_000, id: CMD.VM_READ_PHYSICAL });
  run(T.CMD_REPLY, { tid: 52, now: 12_000, id: CMD.VM_READ_PHYSICAL, ret: 0 });
  // A job whose id could not be read pairs with the reply it makes.
  run(T.CMD_START, { tid: 53, now: 20_000, id: CMD_ANY });
  run(T.CMD_REPLY, { tid: 53, now: 20_700, id: CMD.VCPU_GET_REGISTERS, ret: 0 });
  // A reply after another command's dispatch on the same thread: counted, not timed.
  run(T.CMD_START, { tid: 54, now: 30_000, id: CMD.VM_READ_PHYSICAL });
  run(T.CMD_REPLY, { tid: 54, now: 31_000, id: CMD.VCPU_GET_REGISTERS, ret: -1 });
  await agent.collect();
  const xsave = { vm, command: 'KVMI_VCPU_GET_XSAVE' };
  t.is(agent.store.get(M.kvmiCommands, { ...xsave, result: 'ok' })?.value, 1);
  t.is(agent.store.get(M.kvmiCommands, { ...xsave, result: 'KVM_EINVAL' })?.value, 1);
  t.is(agent.store.get(M.kvmiCommands, { ...xsave, result: 'KVM_EAGAIN' })?.value, 1);
  t.is(agent.store.get(M.kvmiCommands, { ...xsave, result: 'KVM_ENOMEM' })?.value, 1);
  const xt = agent.store.get(M.kvmiCommandTime, xsave)!.hist!;
  t.is(xt.count, 2, 'one histogram per command, across its results');
  t.is(Math.round(xt.sum * 1e9), 4_000);
  t.is(Math.round(agent.store.get(M.kvmiCommandTime, { vm, command: 'KVMI_VM_READ_PHYSICAL' })!.hist!.sum * 1e9), 2_000);
  t.is(agent.store.get(M.kvmiCommandTime, { vm, command: 'KVMI_VCPU_GET_REGISTERS' })?.hist?.count, 1);
  t.is(agent.store.get(M.kvmiCommands, { vm, command: 'KVMI_VCPU_GET_REGISTERS', result: 'KVM_EPERM' })?.value, 1);
  t.is(agent.store.get(M.kvmiUnpaired, { pairing: 'command' })?.value, 1);
});

test('the decoded samples on /metrics via BPF_PROG_TEST_RUN (logic, not attach): the exposition a scrape sees', async (t) => {
  const { agent, run, vm } = logicAgent(t);
  run(T.EVENT_SEND, { vcpu: 0x1n, tid: 60, now: 1_000, id: EV.PF });
  run(T.EVENT_DONE, { vcpu: 0x1n, tid: 60, now: 1_000 + 300_000, action: ACT.RETRY }); // 300 us paused
  run(T.EVENT_SEND, { vcpu: 0x2n, tid: 61, now: 1_000, id: EV.PF });
  run(T.UNHOOK, {});
  run(T.EVENT_DONE, { vcpu: 0x2n, tid: 61, now: 2_000, ret: EINTR });
  run(T.CMD_START, { tid: 62, now: 1_000, id: CMD.VCPU_GET_XSAVE });
  run(T.CMD_REPLY, { tid: 62, now: 51_000, id: CMD.VCPU_GET_XSAVE, ret: -22 });
  const server = await listen(buildApp(agent), '127.0.0.1', 0);
  t.teardown(() => void server.close());
  const text = await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`)).text();
  t.log(
    text
      .split('\n')
      .filter((l) => l.startsWith('hvwatch_kvmi_') && !/_bucket\{/.test(l))
      .join('\n'),
  );
  const s = parseExposition(text);
  const pf = { vm, event: 'PF' };
  t.is(value(s, M.kvmiPresent.name), 1, 'the family was forced on: present as far as the agent knows');
  t.is(value(s, M.kvmiEvents.name, pf), 2);
  t.is(value(s, M.kvmiReplies.name, { ...pf, action: 'retry' }), 1);
  t.is(value(s, M.kvmiUnreplied.name, pf), 1);
  t.is(value(s, M.kvmiUnhooks.name, { vm }), 1);
  t.is(value(s, `${M.kvmiReplyTime.name}_count`, pf), 1);
  t.is(Math.round(value(s, `${M.kvmiReplyTime.name}_sum`, pf)! * 1e9), 300_000);
  // 300 us is in log2 slot 18 ([2^18, 2^19) ns): the classic bucket holding it ends with slot
  // 19, le 2^20 - 1 ns; the one before (every fourth power of two: catalog buckets) ends with
  // slot 15, le 2^16 - 1 ns.
  t.is(value(s, `${M.kvmiReplyTime.name}_bucket`, { ...pf, le: String((2 ** 20 - 1) / 1e9) }), 1);
  t.is(value(s, `${M.kvmiReplyTime.name}_bucket`, { ...pf, le: String((2 ** 16 - 1) / 1e9) }), 0);
  t.is(value(s, M.kvmiCommands.name, { vm, command: 'KVMI_VCPU_GET_XSAVE', result: 'KVM_EINVAL' }), 1);
  t.is(Math.round(value(s, `${M.kvmiCommandTime.name}_sum`, { vm, command: 'KVMI_VCPU_GET_XSAVE' })! * 1e9), 50_000);
  // Every kvmi series carries exactly its catalog labels (plus le on buckets).
  for (const def of [M.kvmiEvents, M.kvmiReplies, M.kvmiUnreplied, M.kvmiUnhooks, M.kvmiCommands, M.kvmiCommandTime, M.kvmiReplyTime]) {
    for (const x of s.filter((y) => y.name.startsWith(def.name))) {
      t.deepEqual(
        Object.keys(x.labels)
          .filter((l) => l !== 'le')
          .sort(),
        [...def.labels].sort(),
        x.name,
      );
    }
  }
});

test('the id tables: v10..v12 (issue numbering), v7..v9 (seed 001 numbering), actions and KVM error codes', (t) => {
  const v12 = [
    [1, 'PAUSE'],
    [3, 'HYPERCALL'],
    [5, 'BREAKPOINT'],
    [7, 'CR'],
    [9, 'TRAP'],
    [11, 'XSETBV'],
    [13, 'DESCRIPTOR'],
    [15, 'MSR'],
    [17, 'PF'],
    [19, 'SINGLESTEP'],
  ] as const;
  for (const [id, name] of v12) t.is(eventName('v10-v12', id), name);
  t.is(eventName('v7-v9', 9), 'PF');
  t.is(eventName('v7-v9', 1), 'PAUSE');
  t.is(eventName('v7-v9', 17), '17', 'no v7..v9 event 17');
  t.is(commandName('v7-v9', 18), 'KVMI_VCPU_GET_XSAVE'); // seed 001
  t.is(commandName('v7-v9', 17), 'KVMI_VM_GET_MAX_GFN');
  t.is(commandName('v7-v9', 22), '22', 'moved between v7 and v9: left as a number');
  t.is(commandName('v10-v12', 19), 'KVMI_VCPU_GET_XSAVE');
  t.is(commandName('v10-v12', 20), '20', 'GET_MAX_GFN in one revision, SET_PAGE_ACCESS in another');
  t.deepEqual([0, 1, 2, 3].map(actionName), ['continue', 'retry', 'crash', '3']);
  t.deepEqual([0, -22, -11, -12, -1000, -95, 22].map(resultName), ['ok', 'KVM_EINVAL', 'KVM_EAGAIN', 'KVM_ENOMEM', 'KVM_ENOSYS', 'KVM_EOPNOTSUPP', '22']);
});
