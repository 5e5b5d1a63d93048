// kvm_irq family (seed 003). For real on this machine: a /dev/kvm guest with an in-kernel
// irqchip (test/helpers/kvm-irq-guest.c) takes N KVM_IRQ_LINE edges and M KVM_SIGNAL_MSIs
// while the agent runs; its per-VM, per-path counts in /metrics equal what the helper did
// and what the kernel's own trace of the same tracepoints (a tracefs instance following the
// helper's pid) recorded. On this paravirtual host (kvm_pvm) kvm_inj_virq never fires although
// the guest takes every interrupt, and the teardown functions cannot be hooked (fentry EPERM,
// no kprobes), so the teardown race, the generation check, reaping and the delivery pairing
// run through BPF_PROG_TEST_RUN with synthetic sequences.
import test from 'ava';
import { spawn } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { allProbeNames } from '../agent/families.js';
import { IRQ_COUNTERS, IRQ_PATHS, TEARDOWN_KINDS } from '../families/kvm_irq/family.js';
import { tracefsRoot } from '../agent/kernel.js';
import { M } from '../agent/catalog.js';
import type { ProbeStatus } from '../agent/loader.js';
import { HASH_MAP, TASK_STORAGE } from '../agent/model/family.js';
import { AgentProcess, ROOT, pick, until, value, writeConfig } from './helpers/agent.js';
import { kvmUsable } from './helpers/kvm.js';

const GUEST = join(ROOT, 'test/helpers/build/kvm-irq-guest');

function guestUsable(): string | undefined {
  const k = kvmUsable();
  if (k) return k;
  try {
    accessSync(GUEST, constants.X_OK);
  } catch {
    return `${GUEST} not built (run: make -C test/helpers)`;
  }
  return tracefsRoot() ? undefined : 'tracefs not mounted';
}

interface IrqGuestResult {
  pid: number;
  irqchip: boolean;
  irqchip_errno?: string;
  gsi: number;
  irq_line_calls: number;
  irq_line_errors: number;
  msi_calls: number;
  msi_errors: number;
  delivered: { pic: number; msi: number; other: number };
  undelivered: number;
  vcpu_error: string | null;
}

/** Starts kvm-irq-guest waiting for its start byte; resolves once its VM exists. */
async function startIrqGuest(args: string[]) {
  const proc = spawn(GUEST, [...args, '--wait-start'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  let out = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  proc.stdin!.on('error', () => {});
  const exited = new Promise<number | null>((resolve) => proc.on('close', (c) => resolve(c)));
  const lines: unknown[] = [];
  let wake: () => void = () => {};
  proc.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (let i = out.indexOf('\n'); i >= 0; i = out.indexOf('\n')) {
      lines.push(JSON.parse(out.slice(0, i)));
      out = out.slice(i + 1);
      wake();
    }
  });
  const next = async (what: string): Promise<Record<string, unknown>> => {
    const deadline = Date.now() + 30_000;
    while (lines.length === 0) {
      if (proc.exitCode !== null) throw new Error(`kvm-irq-guest exited ${proc.exitCode} before ${what}: ${stderr.trim()}`);
      if (Date.now() > deadline) throw new Error(`kvm-irq-guest: no ${what} in time`);
      await Promise.race([new Promise<void>((r) => (wake = r)), exited, new Promise((r) => setTimeout(r, 200))]);
    }
    return lines.shift() as Record<string, unknown>;
  };
  const first = await next('ready line');
  return {
    pid: proc.pid!,
    first,
    go: () => proc.stdin!.end('g'),
    result: () => next('result line') as Promise<unknown> as Promise<IrqGuestResult>,
    kill: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    },
  };
}

const TRACEPOINTS = ['kvm_set_irq', 'kvm_msi_set_irq', 'kvm_ioapic_set_irq', 'kvm_pic_set_irq', 'kvm_apic_accept_irq', 'kvm_inj_virq'] as const;

/** A private tracefs instance recording the six tracepoints for one process and its threads. */
function kernelTrace(pid: number) {
  const dir = join(tracefsRoot()!, 'instances', `hvwatch-kvm-irq-${pid}`);
  if (!existsSync(dir)) mkdirSync(dir);
  writeFileSync(join(dir, 'options/event-fork'), '1');
  writeFileSync(join(dir, 'set_event_pid'), String(pid));
  for (const e of TRACEPOINTS) writeFileSync(join(dir, `events/kvm/${e}/enable`), '1');
  writeFileSync(join(dir, 'tracing_on'), '1');
  return {
    counts(): Record<string, number> {
      const text = readFileSync(join(dir, 'trace'), 'utf8');
      return Object.fromEntries(TRACEPOINTS.map((e) => [e, text.split('\n').filter((l) => l.includes(` ${e}:`)).length]));
    },
    remove(): void {
      writeFileSync(join(dir, 'tracing_on'), '0');
      for (const e of TRACEPOINTS) writeFileSync(join(dir, `events/kvm/${e}/enable`), '0');
      rmdirSync(dir);
    },
  };
}

const skip = guestUsable();
if (skip) test('real-guest kvm_irq test is skipped here', (t) => t.log(`skipped: ${skip}`) ?? t.pass());

const INJECTION_PROBES = {
  kvm_irq_set_irq: 'kvm_set_irq',
  kvm_irq_msi: 'kvm_msi_set_irq',
  kvm_irq_ioapic: 'kvm_ioapic_set_irq',
  kvm_irq_pic: 'kvm_pic_set_irq',
  kvm_irq_apic_accept: 'kvm_apic_accept_irq',
  kvm_irq_inj_virq: 'kvm_inj_virq',
} as const;

const RUNS = [
  { tier: 'tp_btf', threadState: 'auto' },
  { tier: 'tracepoint', threadState: 'auto' },
  { tier: 'tp_btf', threadState: 'hash' },
] as const;
for (const { tier, threadState } of RUNS)
  (skip ? test.skip : test)(
    `a real /dev/kvm guest with an in-kernel irqchip (${tier} tier, thread context in ${threadState === 'auto' ? 'task storage' : 'hash maps: the fallback tier forced by bpf.threadState: hash'}): KVM_IRQ_LINE and KVM_SIGNAL_MSI counted per VM and path, equal to the kernel's own trace (kvm_inj_virq does not fire on this kvm_pvm host)`,
    async (t) => {
      const name = `hvwatch-irq-${tier}-${threadState}-${process.pid}`;
      const N = 20;
      const MSI = 15;
      const guest = await startIrqGuest(['-name', `guest=${name},debug-threads=on`, '--irq-line', String(N), '--msi', String(MSI), '--hold-ms', '60000']);
      t.teardown(() => guest.kill());
      if (guest.first.irqchip === false) {
        t.log(`KVM_CREATE_IRQCHIP refused here (${String(guest.first.irqchip_errno)}): only the BPF_PROG_TEST_RUN tests below cover the family`);
        t.pass();
        return;
      }
      // Each injection probe pinned to this tier (probes.attach), so both tiers run for real.
      const pins = Object.entries(INJECTION_PROBES)
        .map(([p, tp]) => `    ${p}:\n      - { attach: ${tier}, target: ${tier === 'tp_btf' ? tp : `kvm/${tp}`} }`)
        .join('\n');
      const agent = await AgentProcess.start(['--config', writeConfig(`probes:\n  attach:\n${pins}\nbpf:\n  threadState: ${threadState}\n`)]);
      t.teardown(() => agent.stop());
      const status = (await (await fetch(`${agent.url}/api/probes`)).json()) as ProbeStatus[];
      for (const p of [...Object.keys(INJECTION_PROBES), 'kvm_irq_ioctl'])
        t.is(status.find((s) => s.name === p)?.chosen?.state, threadState === 'auto' ? TASK_STORAGE : HASH_MAP, p);
      const trace = kernelTrace(guest.pid);
      t.teardown(() => trace.remove());

      guest.go();
      const r = await guest.result();
      t.is(r.vcpu_error, null);
      t.is(r.irq_line_errors, 0);
      t.is(r.msi_errors, 0);
      t.deepEqual(r.delivered, { pic: N, msi: MSI, other: 0 }, 'the guest took every interrupt (its handlers report each vector)');

      const kernel = trace.counts();
      t.log(`kernel trace of pid ${guest.pid}: ${JSON.stringify(kernel)}`);
      // What the kernel itself saw: each KVM_IRQ_LINE call reaches the PIC and the IOAPIC pin
      // (default routing of GSI 0-15); each MSI is accepted by vCPU 0's LAPIC.
      t.is(kernel.kvm_set_irq, 2 * N);
      t.is(kernel.kvm_pic_set_irq, 2 * N);
      t.is(kernel.kvm_ioapic_set_irq, 2 * N);
      t.is(kernel.kvm_msi_set_irq, MSI);
      t.is(kernel.kvm_apic_accept_irq, MSI);

      const vm = { vm: name };
      const s = await until(
        async () => {
          const s = await agent.scrape();
          return (value(s, M.kvmIrqInjections.name, { ...vm, path: 'apic_accept' }) ?? 0) >= MSI ? s : undefined;
        },
        10_000,
        `${name}'s injections in /metrics`,
      );
      const byTracepoint: Record<(typeof IRQ_PATHS)[number], string> = {
        set_irq: 'kvm_set_irq',
        msi: 'kvm_msi_set_irq',
        ioapic: 'kvm_ioapic_set_irq',
        pic: 'kvm_pic_set_irq',
        apic_accept: 'kvm_apic_accept_irq',
        inj_virq: 'kvm_inj_virq',
      };
      const seen: Record<string, number | undefined> = {};
      for (const path of IRQ_PATHS) {
        seen[path] = value(s, M.kvmIrqInjections.name, { ...vm, path });
        // A path the kernel never traced has no series yet (README "Series lifecycle").
        t.is(seen[path], kernel[byTracepoint[path]] || undefined, `path ${path}: /metrics equals the kernel's trace`);
        t.is(value(s, M.kvmIrqAfterTeardown.name, { ...vm, path }), undefined, `no teardown, so nothing after it (${path}): not born`);
      }
      t.log(`/metrics ${M.kvmIrqInjections.name}{vm="${name}"}: ${JSON.stringify(seen)}`);
      for (const kind of TEARDOWN_KINDS) t.is(value(s, M.kvmIrqTeardowns.name, { ...vm, kind }), undefined, `no ${kind} while the VM runs: not born`);
      // Delivery pairs an acceptance with the injection on the same vCPU and vector: every MSI
      // where kvm_inj_virq fires, none here.
      const delivered = value(s, `${M.kvmIrqDelivery.name}_count`, vm);
      t.is(delivered, kernel.kvm_inj_virq === N + MSI ? MSI : undefined, 'nothing delivered: the delivery histogram is not born');
      t.log(`${M.kvmIrqDelivery.name}_count{vm="${name}"} ${delivered} (kernel kvm_inj_virq events: ${kernel.kvm_inj_virq})`);
      t.is(pick(s, M.kvmVmInfo.name, vm).length, 1, 'the same vm label as the kvm family');
      for (const p of Object.keys(INJECTION_PROBES)) t.is(pick(s, M.probeInfo.name, { probe: p })[0]?.labels.attach, tier, p);
      t.is(value(s, M.probeAttached.name, { probe: 'kvm_irq_ioctl' }), 1);
      t.is(value(s, M.probeAttached.name, { probe: 'kvm_irq_free_irq_routing' }), 0, 'no fentry, no kprobes here');
    },
  );

// ---- the handlers through BPF_PROG_TEST_RUN (logic, not attach) ----

// struct irq_test_args, enum irq_test_op, enum irq_path, enum td_kind in families/kvm_irq/kvm_irq.bpf.c.
const T = { INJECT: 0, TEARDOWN: 1, IOCTL_ENTER: 2, IOCTL_EXIT: 3, RUN_VM: 4, CREATE_VCPU: 5 } as const;
const P = { SET_IRQ: 0, MSI: 1, IOAPIC: 2, PIC: 3, APIC_ACCEPT: 4, INJ_VIRQ: 5 } as const;
const TD = { DEVICE_RELEASE: 0, DESTROY_DEVICES: 1, FREE_IRQ_ROUTING: 2 } as const;
const IOCTL = { KVM_RUN: 0xae80, KVM_IRQ_LINE: 0x4008ae61, KVM_SIGNAL_MSI: 0x4020aea5, KVM_CREATE_VM: 0xae01 } as const;
const SEC = 1_000_000_000;

interface Ev {
  path?: number;
  tid?: number;
  tgid?: number;
  now?: number;
  kvm?: bigint;
  arg0?: number;
  arg1?: number;
  flags?: number;
  ts?: boolean;
}

function encode(op: number, e: Ev): Buffer {
  const b = Buffer.alloc(48);
  b.writeUInt32LE(op, 0);
  b.writeUInt32LE(e.path ?? 0, 4);
  b.writeUInt32LE(e.tid ?? 1, 8);
  b.writeUInt32LE(e.tgid ?? process.pid, 12);
  b.writeBigUInt64LE(BigInt(e.now ?? 0), 16);
  b.writeBigUInt64LE(e.kvm ?? 0n, 24);
  b.writeUInt32LE((e.arg0 ?? 0) >>> 0, 32);
  b.writeUInt32LE(e.arg1 ?? 0, 36);
  b.writeUInt32LE(e.flags ?? 0, 40);
  b.writeUInt32LE(e.ts ? 1 : 0, 44);
  return b;
}

/** ts: drive the task-storage tier (every op on the calling thread's slot) instead of the hash tier. */
async function logicAgent(t: import('ava').ExecutionContext, ts = false) {
  const agent = new Agent(configSchema.parse({ probes: { disable: allProbeNames() } }));
  agent.start();
  t.teardown(() => agent.stop());
  const fam = agent.family('kvm_irq')!;
  const run = (op: number, e: Ev = {}): number => fam.testProgram('test_kvm_irq').testRun(encode(op, { ts, ...e })).retval;
  const counter = (name: (typeof IRQ_COUNTERS)[number]): number => fam.maps.get('irq_counters')!.counter(IRQ_COUNTERS.indexOf(name));
  const vm = `pid-${process.pid}`;
  const inj = (path: string) => agent.store.get(M.kvmIrqInjections, { vm, path })?.value;
  const after = (path: string) => agent.store.get(M.kvmIrqAfterTeardown, { vm, path })?.value;
  const teardowns = (kind: string) => agent.store.get(M.kvmIrqTeardowns, { vm, kind })?.value;
  // The VMM side of a sequence: its threads' ioctls, as the syscall tracepoints report them.
  const vmm = {
    createVm: (tid: number, now: number, kvm: bigint) => {
      run(T.IOCTL_ENTER, { tid, now, arg0: IOCTL.KVM_CREATE_VM });
      t.is(run(T.IOCTL_EXIT, { tid, now: now + 10, arg0: 5 /* the new fd */, kvm }), 0);
    },
    enter: (tid: number, now: number, cmd: number, kvm: bigint, vcpu = 0) => run(T.IOCTL_ENTER, { tid, now, arg0: cmd, kvm, arg1: vcpu }),
    exit: (tid: number, now: number) => run(T.IOCTL_EXIT, { tid, now }),
    inject: (tid: number, now: number, path: number, arg0 = 0, arg1 = 0, flags = 0) => run(T.INJECT, { tid, now, path, arg0, arg1, flags }),
    teardown: (kvm: bigint, now: number, kind: number, tgid = process.pid) => run(T.TEARDOWN, { kvm, now, path: kind, tgid }),
  };
  return { agent, fam, run, counter, inj, after, teardowns, vmm, vm };
}

const VM_A = 0xffff_8880_1234_0000n;
/** A pid that is certainly not running: pid_max is at most 2^22. */
const DEAD_TGID = 4_194_304 + 7;

for (const ts of [false, true])
  test(`KVM_RUN's VM is resolved once per vCPU fd and reused while the fd, tgid and vCPU-fd generation match via BPF_PROG_TEST_RUN (logic, not attach; ${ts ? 'task-storage' : 'hash-map'} tier)`, async (t) => {
    const { agent, run, vmm, after } = await logicAgent(t, ts);
    const VM_B = VM_A + 0x10000n;
    // KVM_RUN on fd `fd` whose fd table (synthetic) holds (kvm, vcpu): 1 when the thread's cache answered.
    const kvmRun = (fd: number, kvm: bigint, vcpu: number, now: number, tgid = process.pid) => run(T.RUN_VM, { tid: 30, path: fd, kvm, arg1: vcpu, now, tgid });
    t.is(kvmRun(7, VM_A, 1, 1_000), 0, 'first KVM_RUN of the thread: resolved from the fd table');
    t.is(kvmRun(7, VM_B, 2, 2_000), 1, 'the next one on the same fd: from the cache');
    t.is(kvmRun(8, VM_B, 0, 3_000), 0, 'another fd: resolved again');
    t.is(kvmRun(8, VM_A, 0, 4_000), 1);
    run(T.CREATE_VCPU);
    t.is(kvmRun(8, VM_B, 3, 5_000), 0, 'a KVM_CREATE_VCPU since (an fd number may now name another vCPU): resolved again');
    t.is(kvmRun(8, VM_A, 3, 6_000), 1);
    t.is(kvmRun(8, VM_A, 3, 7_000, DEAD_TGID), 0, 'another process on that thread slot: resolved again');
    t.is(kvmRun(8, VM_B, 3, 8_000), 0, "and back: the cache now holds the other process's");
    t.is(kvmRun(8, VM_A, 3, 9_000), 1, 'hit: the context names VM_B, from the cache');
    // The injection inside that KVM_RUN is tied to the cached VM (VM_B), whose teardown began.
    vmm.teardown(VM_B, 10_000, TD.DEVICE_RELEASE);
    vmm.inject(30, 11_000, P.SET_IRQ);
    await agent.collect();
    t.is(after('set_irq'), 1, "counted after VM_B's teardown: the cached VM, not the (ignored) fd table's VM_A");
  });

test('teardown race via BPF_PROG_TEST_RUN (logic, not attach): injections after a device release and during kvm_destroy_vm are counted per path', async (t) => {
  const { agent, vmm, inj, after, teardowns } = await logicAgent(t);
  vmm.createVm(10, 1_000, VM_A);
  // KVM_IRQ_LINE on the VM fd: one edge before the irqchip device goes away, one after
  // (seed 003: the ioctl races with the device fd's release).
  vmm.enter(11, 2_000, IOCTL.KVM_IRQ_LINE, VM_A);
  vmm.inject(11, 2_100, P.SET_IRQ);
  vmm.inject(11, 2_200, P.PIC);
  vmm.teardown(VM_A, 3_000, TD.DEVICE_RELEASE);
  vmm.inject(11, 3_100, P.SET_IRQ);
  vmm.inject(11, 3_200, P.IOAPIC);
  vmm.exit(11, 3_300);
  // Outside any ioctl the thread's injections are no longer tied to the VM.
  vmm.inject(11, 3_400, P.SET_IRQ);
  // A vCPU in KVM_RUN accepts and takes an IPI after the release.
  vmm.enter(12, 4_000, IOCTL.KVM_RUN, VM_A, 1);
  vmm.inject(12, 4_100, P.APIC_ACCEPT, 1, 0xec);
  vmm.inject(12, 4_200, P.INJ_VIRQ, 0xec);
  vmm.exit(12, 4_300);
  // The VM is destroyed: routing freed, devices destroyed; an MSI racing with it counts.
  vmm.teardown(VM_A, 5_000, TD.FREE_IRQ_ROUTING);
  vmm.enter(13, 5_100, IOCTL.KVM_SIGNAL_MSI, VM_A);
  vmm.inject(13, 5_200, P.MSI);
  vmm.exit(13, 5_300);
  vmm.teardown(VM_A, 6_000, TD.DESTROY_DEVICES, 0 /* from a kworker: still the VMM's VM */);
  await agent.collect();
  t.is(inj('set_irq'), 3);
  t.is(after('set_irq'), 1, 'only the edge after the release, inside the ioctl');
  t.is(after('pic'), undefined, 'no pic injection after the release: not born');
  t.is(after('ioapic'), 1);
  t.is(after('apic_accept'), 1);
  t.is(after('inj_virq'), 1);
  t.is(after('msi'), 1, 'an MSI during kvm_destroy_vm');
  t.is(teardowns('device_release'), 1);
  t.is(teardowns('free_irq_routing'), 1);
  t.is(teardowns('destroy_devices'), 1, 'counted under the VM that was created, not the kworker');
  t.is(agent.store.get(M.kvmIrqDelivery, { vm: `pid-${process.pid}` })?.hist?.count, 1);
});

test('a new VM at the same struct kvm address is a new generation via BPF_PROG_TEST_RUN (logic, not attach): its injections are not after-teardown, a stale context is not counted', async (t) => {
  const { agent, vmm, after, counter, inj } = await logicAgent(t);
  vmm.createVm(20, 1_000, VM_A);
  vmm.enter(21, 1_500, IOCTL.KVM_IRQ_LINE, VM_A); // a thread inside KVM_IRQ_LINE on the old VM
  vmm.teardown(VM_A, 2_000, TD.DEVICE_RELEASE);
  vmm.teardown(VM_A, 2_100, TD.FREE_IRQ_ROUTING);
  // The old VM is freed; KVM_CREATE_VM returns a new VM at the same address.
  vmm.createVm(22, 3_000, VM_A);
  t.is(counter('reaped'), 1, "the old VM's state was replaced");
  vmm.enter(23, 4_000, IOCTL.KVM_IRQ_LINE, VM_A);
  vmm.inject(23, 4_100, P.SET_IRQ);
  vmm.inject(23, 4_200, P.IOAPIC);
  vmm.exit(23, 4_300);
  vmm.enter(24, 5_000, IOCTL.KVM_RUN, VM_A, 0);
  vmm.inject(24, 5_100, P.APIC_ACCEPT, 0, 0x30);
  vmm.inject(24, 5_200, P.INJ_VIRQ, 0x30);
  // The context opened on the old generation does not match the new VM.
  vmm.inject(21, 5_500, P.SET_IRQ);
  await agent.collect();
  t.is(inj('set_irq'), 2);
  for (const path of ['set_irq', 'ioapic', 'apic_accept', 'inj_virq']) t.is(after(path), undefined, `${path}: nothing after teardown, not born`);
  t.is(counter('stale_context'), 1);
});

test("stale VM state is reaped via BPF_PROG_TEST_RUN (logic, not attach): a VM destroyed over 1 s ago whose successor's creation was not seen never matches", async (t) => {
  const { agent, fam, vmm, after, counter } = await logicAgent(t);
  const VM_B = VM_A + 0x1000n;
  // Created before the probe attached (no KVM_CREATE_VM seen), then destroyed.
  vmm.teardown(VM_B, 1 * SEC, TD.FREE_IRQ_ROUTING);
  // An injection racing with the destroy (0.5 s later) still counts...
  vmm.enter(30, 1.5 * SEC, IOCTL.KVM_IRQ_LINE, VM_B);
  vmm.inject(30, 1.5 * SEC + 100, P.SET_IRQ);
  vmm.exit(30, 1.5 * SEC + 200);
  t.is(fam.maps.get('irq_vm_state')!.count(), 1);
  // ...but 2 s later the address is another VM (created while the probe was not looking):
  // the entry is reaped when looked up, and nothing is counted.
  vmm.enter(31, 3 * SEC, IOCTL.KVM_IRQ_LINE, VM_B);
  vmm.inject(31, 3 * SEC + 100, P.SET_IRQ);
  vmm.exit(31, 3 * SEC + 200);
  t.is(counter('reaped'), 1);
  t.is(fam.maps.get('irq_vm_state')!.count(), 0, "the dead VM's entry is gone");
  // A teardown of the new VM opens a new generation; an injection after it counts again.
  vmm.teardown(VM_B, 4 * SEC, TD.DEVICE_RELEASE);
  vmm.enter(32, 4 * SEC + 100, IOCTL.KVM_IRQ_LINE, VM_B);
  vmm.inject(32, 4 * SEC + 200, P.SET_IRQ);
  await agent.collect();
  t.is(after('set_irq'), 2, 'the racing one and the last one');
  t.is(agent.store.get(M.kvmIrqTeardowns, { vm: `pid-${process.pid}`, kind: 'free_irq_routing' })?.value, 1);
});

test('delivery latency pairing via BPF_PROG_TEST_RUN (logic, not attach): LAPIC acceptance to kvm_inj_virq per vCPU and vector', async (t) => {
  const { agent, vmm, counter, vm } = await logicAgent(t);
  vmm.createVm(40, 100, VM_A);
  vmm.enter(41, 500, IOCTL.KVM_RUN, VM_A, 1); // vCPU 1 runs on thread 41
  vmm.enter(42, 900, IOCTL.KVM_SIGNAL_MSI, VM_A); // the VMM signals an MSI for vCPU 1
  vmm.inject(42, 1_000, P.MSI);
  vmm.inject(42, 1_100, P.APIC_ACCEPT, 1, 0x30);
  vmm.exit(42, 1_200);
  vmm.enter(42, 1_400, IOCTL.KVM_SIGNAL_MSI, VM_A); // the same vector again before injection:
  vmm.inject(42, 1_500, P.APIC_ACCEPT, 1, 0x30); // one IRR bit, the first time is kept
  vmm.exit(42, 1_600);
  vmm.inject(42, 1_700, P.APIC_ACCEPT, 0, 0x30); // outside an ioctl: no VM, no pairing
  vmm.inject(41, 9_100, P.INJ_VIRQ, 0x30); // 8 us after the first acceptance
  vmm.inject(41, 9_500, P.INJ_VIRQ, 0x30, 0, 2); // reinjected: the first attempt had the pair
  vmm.inject(41, 9_600, P.INJ_VIRQ, 0x80, 0, 1); // soft (INTn): never went through the LAPIC
  vmm.inject(41, 9_700, P.INJ_VIRQ, 0x31); // nothing accepted for it: unpaired
  vmm.exit(41, 10_000);
  vmm.inject(41, 11_000, P.INJ_VIRQ, 0x30); // outside KVM_RUN: no vCPU known
  await agent.collect();
  const h = agent.store.get(M.kvmIrqDelivery, { vm })!.hist!;
  t.is(h.count, 1);
  t.is(Math.round(h.sum * 1e9), 8_000);
  t.is(counter('unpaired'), 1);
  t.is(agent.store.get(M.kvmIrqInjections, { vm, path: 'inj_virq' })?.value, 5);
  t.is(agent.store.get(M.kvmIrqInjections, { vm, path: 'apic_accept' })?.value, 3);
});

test('injections from kernel threads via BPF_PROG_TEST_RUN (logic, not attach): counted under vm="unknown", never under a VMM', async (t) => {
  const { agent, run, counter, vm } = await logicAgent(t);
  run(T.INJECT, { tid: 50, tgid: 0, path: P.SET_IRQ }); // irqfd work in a kworker
  run(T.INJECT, { tid: 50, tgid: 0, path: P.MSI });
  run(T.INJECT, { tid: 51, path: P.MSI }); // a VMM thread outside any KVM ioctl (vhost worker)
  await agent.collect();
  t.is(agent.store.get(M.kvmIrqInjections, { vm: 'unknown', path: 'set_irq' })?.value, 1);
  t.is(agent.store.get(M.kvmIrqInjections, { vm: 'unknown', path: 'msi' })?.value, 1);
  t.is(agent.store.get(M.kvmIrqInjections, { vm, path: 'msi' })?.value, 1);
  t.is(counter('no_vm'), 2);
  t.is(run(T.INJECT, { path: 6 }), 0, 'an out-of-range path is ignored');
  t.is(run(99), -1);
});
