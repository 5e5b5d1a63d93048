// kvm family. For real on this machine: a guest on /dev/kvm doing N port writes is counted
// exactly under its `vm` label (kvm_pio, kvm_userspace_exit, KVM_RUN pairing), its failed
// KVM_GET/SET_NESTED_STATE are counted with their errno, and its series leave when it
// exits. kvm_exit/kvm_entry and the nested tracepoints do not fire on this (paravirtual)
// hypervisor, so their logic runs through BPF_PROG_TEST_RUN with synthetic sequences.
import test from 'ava';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { allProbeNames } from '../agent/families.js';
import { exitReasonName, errnoName } from '../families/kvm/family.js';
import { M } from '../agent/catalog.js';
import type { ProbeStatus } from '../agent/loader.js';
import { HASH_MAP, TASK_STORAGE } from '../agent/model/family.js';
import { AgentProcess, pick, until, value, writeConfig } from './helpers/agent.js';
import { kvmUsable, startGuest } from './helpers/kvm.js';

const skip = kvmUsable();
const kvmTest = skip ? test.skip : test;
if (skip) test('real-guest kvm tests are skipped here', (t) => t.log(`skipped: ${skip}`) ?? t.pass());

for (const threadState of ['auto', 'hash'] as const)
  kvmTest(
    `a real /dev/kvm guest (per-thread state in ${threadState === 'auto' ? 'task storage' : 'hash maps, the fallback tier forced by bpf.threadState: hash'}): N port writes counted exactly under its vm label, nested-state errors counted, series removed on exit`,
    async (t) => {
      // A short linger: the series must outlive the VMM by that long, then go.
      const agent = await AgentProcess.start(['--config', writeConfig(`kvm:\n  exitedVmSeconds: 3\nbpf:\n  threadState: ${threadState}\n`)]);
      t.teardown(() => agent.stop());
      const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as ProbeStatus[];
      const want = threadState === 'auto' ? TASK_STORAGE : HASH_MAP;
      for (const p of ['kvm_userspace_exit', 'kvm_ioctl', 'kvm_irq_ioctl']) t.is(status.find((s) => s.name === p)?.chosen?.state, want, p);
      // kvm_ioctl holds the ioctl hooks; kvm_irq_ioctl runs after it there, by tail call.
      t.deepEqual(
        status.find((s) => s.name === 'kvm_irq_ioctl')?.chosen?.chained?.map((c) => c.after),
        ['kvm_ioctl', 'kvm_ioctl'],
      );
      const name = `hvwatch-test-${threadState}-${process.pid}`;
      const N = 2000;
      const guest = await startGuest({ name, writes: N, holdMs: 60_000, nestedState: true });
      t.teardown(() => guest.kill());
      guest.go();
      const r = await guest.result;
      t.is(r.io_exits, N);
      t.truthy(r.nested_state?.get.errno, 'KVM_GET_NESTED_STATE fails on this kernel (KVM_CAP_NESTED_STATE 0)');

      const vm = { vm: name };
      const s = await until(
        async () => {
          const s = await agent.scrape();
          return (value(s, M.kvmUserspaceExits.name, { ...vm, reason: 'HLT' }) ?? 0) >= 1 ? s : undefined;
        },
        10_000,
        `the HLT exit of ${name}`,
      );
      t.is(value(s, M.kvmPio.name, { ...vm, direction: 'out' }), N);
      t.is(value(s, M.kvmPio.name, { ...vm, direction: 'in' }), undefined, 'no port read: that series is not born (README "Series lifecycle")');
      t.is(value(s, M.kvmUserspaceExits.name, { ...vm, reason: 'IO' }), N);
      t.is(value(s, M.kvmUserspaceExits.name, { ...vm, reason: 'HLT' }), 1);
      // Every IO exit is followed by the next KVM_RUN; the final HLT is not.
      t.is(value(s, `${M.kvmUserspaceTime.name}_count`, { ...vm, reason: 'IO' }), N);
      t.true(value(s, `${M.kvmUserspaceTime.name}_sum`, { ...vm, reason: 'IO' })! > 0);
      const info = pick(s, M.kvmVmInfo.name, vm);
      t.is(info.length, 1);
      t.is(info[0]!.labels.source, 'qemu');
      t.is(info[0]!.labels.pid, String(guest.pid));
      // The nested-state ioctls fail here; each is counted with its errno, and timed.
      const errno = r.nested_state!.get.errno!;
      t.is(value(s, M.kvmNestedStateOps.name, { ...vm, op: 'get', result: errno }), 1);
      t.is(value(s, M.kvmNestedStateOps.name, { ...vm, op: 'set', result: r.nested_state!.set.errno! }), 1);
      t.is(value(s, `${M.kvmNestedStateOpTime.name}_count`, { ...vm, op: 'get' }), 1);
      t.is(value(s, M.kvmNestedStateSaves.name, { ...vm, flag: 'guest_mode' }), undefined, 'a failed save is not a guest-mode save (no such save: not born)');
      t.is(value(s, M.probeAttached.name, { probe: 'kvm_io' }), 1);

      await guest.kill();
      const exitedAt = Date.now();
      const lingering = await agent.scrape();
      t.is(value(lingering, M.kvmPio.name, { ...vm, direction: 'out' }), N, 'the last counts are still served right after the VMM exited');
      const after = await until(
        async () => {
          const s = await agent.scrape();
          return pick(s, M.kvmVmInfo.name, vm).length === 0 ? s : undefined;
        },
        10_000,
        `${name}'s series gone after its process exited`,
      );
      t.deepEqual(
        after.filter((x) => x.labels.vm === name),
        [],
      );
      t.true(Date.now() - exitedAt >= 3000 - 100, 'not before kvm.exitedVmSeconds');
    },
  );

// ---- the handlers through BPF_PROG_TEST_RUN (logic, not attach) ----

// struct kvm_test_args and enum kvm_test_op in families/kvm/kvm.bpf.c.
const T = {
  EXIT: 0,
  ENTRY: 1,
  USERSPACE_EXIT: 2,
  IOCTL_ENTER: 3,
  IOCTL_EXIT: 4,
  PIO: 5,
  MMIO: 6,
  EMULATE: 7,
  NESTED_VMEXIT: 8,
  NESTED_INJECT: 9,
  NESTED_VMENTER: 10,
  NESTED_INTR: 11,
  VMENTER_FAILED: 12,
  TS_USERSPACE_EXIT: 14,
  TS_IOCTL_ENTER: 15,
  TS_IOCTL_EXIT: 16,
  TS_EXIT: 17,
  TS_ENTRY: 18,
} as const;
interface Ev {
  tid?: number;
  tgid?: number;
  vcpu?: number;
  now?: number;
  isa?: number;
  reason?: number;
  ret?: number;
  arg?: bigint;
  msg?: string;
}
const SVM = 2;
const KVM_RUN = 0xae80;
const GET_NESTED_STATE = 0xc080aebe;

function encode(op: number, e: Ev): Buffer {
  const b = Buffer.alloc(112);
  b.writeUInt32LE(op, 0);
  b.writeUInt32LE(e.tid ?? 1, 4);
  b.writeUInt32LE(e.tgid ?? process.pid, 8);
  b.writeUInt32LE(e.vcpu ?? 0, 12);
  b.writeBigUInt64LE(BigInt(e.now ?? 0), 16);
  b.writeUInt32LE(e.isa ?? SVM, 24);
  b.writeUInt32LE((e.reason ?? 0) >>> 0, 28);
  b.writeBigInt64LE(BigInt(e.ret ?? 0), 32);
  b.writeBigUInt64LE(e.arg ?? 0n, 40);
  if (e.msg) b.write(e.msg, 48, 63, 'latin1');
  return b;
}

async function logicAgent(t: import('ava').ExecutionContext, kvm: { vcpuLabel?: boolean } = {}) {
  const agent = new Agent(configSchema.parse({ probes: { disable: allProbeNames() }, kvm }));
  agent.start();
  t.teardown(() => agent.stop());
  const fam = agent.family('kvm')!;
  const run = (op: number, e: Ev = {}): number => fam.testProgram('test_kvm').testRun(encode(op, e)).retval;
  return { agent, fam, run, vm: `pid-${process.pid}` };
}

/** A pid that is certainly not running: pid_max is at most 2^22. */
const DEAD_PID = 4_194_304 + 7;

test('exit->entry pairing per vCPU via BPF_PROG_TEST_RUN (logic, not attach): latency per reason, interleaved vCPUs, no double pairing', async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  const IO = 0x7b;
  const NPF = 0x400;
  run(T.EXIT, { tid: 10, vcpu: 0, now: 1_000, reason: IO });
  run(T.EXIT, { tid: 11, vcpu: 1, now: 2_000, reason: NPF });
  run(T.ENTRY, { tid: 11, vcpu: 1, now: 3_000 });
  run(T.ENTRY, { tid: 10, vcpu: 0, now: 9_000 });
  run(T.ENTRY, { tid: 10, vcpu: 0, now: 20_000 }); // an entry with no exit before it: nothing
  await agent.collect();
  const io = { vm, isa: 'svm', reason: 'io' };
  const npf = { vm, isa: 'svm', reason: 'npf' };
  t.is(agent.store.get(M.kvmExits, io)?.value, 1);
  t.is(agent.store.get(M.kvmExits, npf)?.value, 1);
  t.is(agent.store.get(M.kvmExitHandling, io)?.hist?.count, 1);
  t.is(Math.round(agent.store.get(M.kvmExitHandling, io)!.hist!.sum * 1e9), 8_000);
  t.is(Math.round(agent.store.get(M.kvmExitHandling, npf)!.hist!.sum * 1e9), 1_000);
  t.is(agent.store.get(M.kvmUnpaired, { pairing: 'exit_entry' })?.value, 0);
  t.is(agent.store.get(M.kvmVcpuExits, { vm, vcpu: '0' }), undefined, 'per-vCPU series only when configured');
});

test("exit->entry pairing via BPF_PROG_TEST_RUN (logic, not attach; task-storage tier, the calling thread's slot): latency per reason, no double pairing, another VM's or vCPU's exit unpaired", async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  run(T.TS_ENTRY, { now: 500 }); // no exit seen yet: nothing to close
  run(T.TS_EXIT, { now: 1_000, vcpu: 0, reason: 0x7b });
  run(T.TS_ENTRY, { now: 1_400, vcpu: 0 });
  run(T.TS_ENTRY, { now: 1_900, vcpu: 0 }); // a second entry pairs with nothing
  run(T.TS_EXIT, { now: 2_000, vcpu: 0, reason: 0x7c });
  run(T.TS_ENTRY, { now: 2_900, vcpu: 1 }); // another vCPU on this thread: unpaired
  run(T.TS_EXIT, { now: 3_000, vcpu: 0, reason: 0x7b, tgid: DEAD_PID });
  run(T.TS_ENTRY, { now: 3_100, vcpu: 0 }); // another VM's exit: unpaired
  await agent.collect();
  const h = agent.store.get(M.kvmExitHandling, { vm, isa: 'svm', reason: exitReasonName(SVM, 0x7b) })!.hist!;
  t.is(h.count, 1);
  t.is(Math.round(h.sum * 1e9), 400);
  t.is(agent.store.get(M.kvmExits, { vm, isa: 'svm', reason: exitReasonName(SVM, 0x7c) })?.value, 1);
  t.is(agent.store.get(M.kvmExitHandling, { vm, isa: 'svm', reason: exitReasonName(SVM, 0x7c) })?.hist?.count ?? 0, 0, "its entry was another vCPU's");
  t.is(agent.family('kvm')!.maps.get('unpaired')!.counter(0 /* UNPAIRED_EXIT_ENTRY */), 2);
});

test('a vCPU thread id reused by another VM does not pair via BPF_PROG_TEST_RUN (logic, not attach): counted as unpaired', async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  run(T.EXIT, { tid: 20, tgid: DEAD_PID, vcpu: 0, now: 1_000, reason: 0x7b });
  run(T.ENTRY, { tid: 20, tgid: process.pid, vcpu: 0, now: 2_000 });
  // Same VM, another vCPU id on the same thread (a thread that ran vCPU 0 now runs vCPU 1).
  run(T.EXIT, { tid: 21, vcpu: 0, now: 1_000, reason: 0x7b });
  run(T.ENTRY, { tid: 21, vcpu: 1, now: 2_000 });
  // The same for the L1 handling pairing: reflected in one VM, VM-entry seen in another.
  run(T.NESTED_INJECT, { tid: 22, tgid: DEAD_PID, now: 1_000, reason: 0x81 });
  run(T.NESTED_VMENTER, { tid: 22, now: 5_000 });
  await agent.collect();
  t.is(agent.store.get(M.kvmUnpaired, { pairing: 'exit_entry' })?.value, 2);
  t.is(agent.store.get(M.kvmUnpaired, { pairing: 'nested_l1' })?.value, 1);
  t.is(agent.store.get(M.kvmExitHandling, { vm, isa: 'svm', reason: 'io' })?.hist, undefined, 'an unpaired exit is timed nowhere: no latency series is born');
  // The dead VM had no first-sight record (a synthetic tgid, not this process): its counts
  // linger under pid-N (kvm.exitedVmSeconds), never under another VM's name.
  t.deepEqual(
    agent.store
      .all(M.kvmExits)
      .filter((s) => s.labels.vm === `pid-${DEAD_PID}`)
      .map((s) => s.value),
    [1],
  );
  t.is(agent.store.get(M.kvmExits, { vm, isa: 'svm', reason: 'io' })?.value, 1, 'only its own exit under this VM');
});

test('nested exit/inject/vmenter state machine via BPF_PROG_TEST_RUN (logic, not attach): L0 vs L1 by reason, L1 handling latency', async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  const NPF = 0x400;
  const HYPERCALL = 0x81; // SVM_EXIT_VMMCALL
  // L2 takes an NPF that L0 handles (nothing reflected), then a VMMCALL reflected to L1,
  // which handles it for 50 us and re-enters L2 with VMRUN.
  run(T.NESTED_VMEXIT, { tid: 30, now: 1_000, reason: NPF });
  run(T.ENTRY, { tid: 30, now: 2_000 });
  run(T.NESTED_VMEXIT, { tid: 30, now: 10_000, reason: HYPERCALL });
  run(T.NESTED_INJECT, { tid: 30, now: 11_000, reason: HYPERCALL });
  run(T.NESTED_VMENTER, { tid: 30, now: 61_000 });
  // A second L0-handled NPF is settled by the next nested event of that vCPU.
  run(T.NESTED_VMEXIT, { tid: 30, now: 70_000, reason: NPF });
  run(T.NESTED_VMEXIT, { tid: 30, now: 80_000, reason: NPF });
  run(T.NESTED_INTR, {});
  await agent.collect();
  const exits = (reason: string, handler: string) => agent.store.get(M.kvmNestedExits, { vm, isa: 'svm', reason, handler })?.value;
  t.is(exits('npf', 'l0'), 2, 'the first NPF at the next nested exit, the second at the one after; the third still pending');
  t.is(exits('npf', 'l1'), undefined, 'never reflected: not born');
  t.is(exits('hypercall', 'l1'), 1);
  t.is(exits('hypercall', 'l0'), undefined, "a reflected exit is not also counted as L0's");
  const l1 = agent.store.get(M.kvmNestedL1Handling, { vm, isa: 'svm', reason: 'hypercall' })!.hist!;
  t.is(l1.count, 1);
  t.is(Math.round(l1.sum * 1e9), 50_000);
  t.is(agent.store.get(M.kvmNestedVmenters, { vm })?.value, 1);
  t.is(agent.store.get(M.kvmNestedIntrExits, { vm })?.value, 1);
});

test('userspace time and nested-state saves via BPF_PROG_TEST_RUN (logic, not attach): KVM_RUN pairing, restart, flags, errno', async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  run(T.USERSPACE_EXIT, { tid: 40, now: 1_000, reason: 2 /* KVM_EXIT_IO */ });
  run(T.IOCTL_ENTER, { tid: 40, now: 8_000, reason: KVM_RUN });
  run(T.USERSPACE_EXIT, { tid: 40, now: 9_000, reason: 2, ret: -4 /* -EINTR */ });
  run(T.IOCTL_ENTER, { tid: 41, now: 10_000, reason: 0x5401 /* TCGETS: not ours */ });
  // A save with GUEST_MODE|RUN_PENDING, a save whose buffer could not be read, a failed one.
  const save = (now: number, ret: number, flags: bigint) => {
    run(T.IOCTL_ENTER, { tid: 42, now, reason: GET_NESTED_STATE, arg: 0x7000n });
    t.is(run(T.IOCTL_EXIT, { tid: 42, now: now + 3_000, ret, arg: flags }), 0);
  };
  save(20_000, 0, 0x3n);
  save(30_000, 0, 0xffff_ffff_ffff_ffffn);
  save(40_000, -22, 0n);
  t.is(run(T.IOCTL_EXIT, { tid: 41, now: 11_000 }), 1, 'an ioctl that is not ours left no pending entry');
  await agent.collect();
  const io = agent.store.get(M.kvmUserspaceTime, { vm, reason: 'IO' })!.hist!;
  t.is(io.count, 1);
  t.is(Math.round(io.sum * 1e9), 7_000);
  t.is(agent.store.get(M.kvmUserspaceExits, { vm, reason: 'restart' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateOps, { vm, op: 'get', result: 'ok' })?.value, 2);
  t.is(agent.store.get(M.kvmNestedStateOps, { vm, op: 'get', result: 'EINVAL' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateSaves, { vm, flag: 'guest_mode' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateSaves, { vm, flag: 'run_pending' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateOpTime, { vm, op: 'get' })?.hist?.count, 3);
});

test("userspace time and nested-state saves via BPF_PROG_TEST_RUN (logic, not attach; task-storage tier, the calling thread's slot): KVM_RUN pairing, one nested-state ioctl at a time", async (t) => {
  const { agent, run, vm } = await logicAgent(t);
  t.is(run(T.TS_IOCTL_EXIT, { now: 500 }), 1, 'no ioctl in flight: sys_exit_ioctl leaves at the flag');
  run(T.TS_USERSPACE_EXIT, { now: 1_000, reason: 2 /* KVM_EXIT_IO */ });
  run(T.TS_IOCTL_ENTER, { now: 8_000, reason: KVM_RUN });
  run(T.TS_IOCTL_ENTER, { now: 8_500, reason: KVM_RUN });
  run(T.TS_USERSPACE_EXIT, { now: 9_000, reason: 2, ret: -4 /* -EINTR */ });
  run(T.TS_IOCTL_ENTER, { now: 10_000, reason: 0x5401 /* TCGETS: not ours */ });
  t.is(run(T.TS_IOCTL_EXIT, { now: 10_500 }), 1, 'an ioctl that is not ours raised no flag');
  run(T.TS_IOCTL_ENTER, { now: 20_000, reason: GET_NESTED_STATE, arg: 0x7000n });
  t.is(run(T.TS_IOCTL_EXIT, { now: 23_000, ret: 0, arg: 0x3n }), 0);
  t.is(run(T.TS_IOCTL_EXIT, { now: 24_000 }), 1, 'the flag is down once the save is counted');
  run(T.TS_IOCTL_ENTER, { now: 30_000, reason: GET_NESTED_STATE, arg: 0x7000n });
  t.is(run(T.TS_IOCTL_EXIT, { now: 31_000, ret: -22 }), 0);
  // A pending return to userspace written by another process is never closed by this one.
  run(T.TS_USERSPACE_EXIT, { now: 40_000, reason: 2, tgid: DEAD_PID });
  run(T.TS_IOCTL_ENTER, { now: 41_000, reason: KVM_RUN });
  await agent.collect();
  const io = agent.store.get(M.kvmUserspaceTime, { vm, reason: 'IO' })!.hist!;
  t.is(io.count, 1, 'the second KVM_RUN found the pending half consumed');
  t.is(Math.round(io.sum * 1e9), 7_000);
  t.is(agent.store.get(M.kvmUserspaceExits, { vm, reason: 'restart' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateOps, { vm, op: 'get', result: 'ok' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateOps, { vm, op: 'get', result: 'EINVAL' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateSaves, { vm, flag: 'guest_mode' })?.value, 1);
  t.is(agent.store.get(M.kvmNestedStateOpTime, { vm, op: 'get' })?.hist?.count, 2);
  t.is(agent.family('kvm')!.maps.get('unpaired')!.counter(2 /* UNPAIRED_USERSPACE */), 1, "the other process's half: unpaired");
});

test('nested VM-entry failure messages and per-vCPU exits via BPF_PROG_TEST_RUN (logic, not attach)', async (t) => {
  const { agent, run, vm } = await logicAgent(t, { vcpuLabel: true });
  const msg = 'CC(!nested_vmcb_check_controls(vcpu, &svm->nested.ctl))';
  run(T.VMENTER_FAILED, { msg });
  run(T.VMENTER_FAILED, { msg });
  run(T.VMENTER_FAILED, { msg: 'x'.repeat(80) }); // longer than the bounded read
  run(T.EXIT, { tid: 50, vcpu: 3, reason: 0x7b });
  run(T.EXIT, { tid: 51, vcpu: 4, reason: 0x7b });
  run(T.EXIT, { tid: 51, vcpu: 4, reason: 0x78 });
  run(T.PIO, { reason: 0 });
  run(T.MMIO, { reason: 2 });
  run(T.EMULATE, { reason: 1 });
  await agent.collect();
  t.is(agent.store.get(M.kvmNestedVmenterFailures, { vm, message: msg })?.value, 2);
  t.is(agent.store.get(M.kvmNestedVmenterFailures, { vm, message: 'x'.repeat(63) })?.value, 1);
  t.is(agent.store.get(M.kvmVcpuExits, { vm, vcpu: '3' })?.value, 1);
  t.is(agent.store.get(M.kvmVcpuExits, { vm, vcpu: '4' })?.value, 2);
  t.is(agent.store.get(M.kvmPio, { vm, direction: 'in' })?.value, 1);
  t.is(agent.store.get(M.kvmMmio, { vm, type: 'write' })?.value, 1);
  t.is(agent.store.get(M.kvmEmulated, { vm, result: 'failed' })?.value, 1);
});

test("exit reasons decode from the kernel's VMX/SVM tables; errno names from the OS", (t) => {
  t.is(exitReasonName(1, 30), 'IO_INSTRUCTION');
  t.is(exitReasonName(1, 48), 'EPT_VIOLATION');
  t.is(exitReasonName(1, 0x80000021), 'INVALID_STATE_FAILED_VMENTRY');
  t.is(exitReasonName(2, 0x7b), 'io');
  t.is(exitReasonName(2, 0x400), 'npf');
  t.is(exitReasonName(2, 0x4e), 'PF');
  t.is(exitReasonName(2, -1), 'invalid_guest_state');
  t.is(exitReasonName(2, 0x3ff), 'svm_0x3ff');
  t.is(errnoName(0), 'ok');
  t.is(errnoName(22), 'EINVAL');
});
