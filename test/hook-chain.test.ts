// One attached program per hook, whatever number of families watch it (agent/hook-chain.ts).
// For real on this machine: the kvm family's kvm_ioctl and the kvm_irq family's kvm_irq_ioctl
// both watch syscalls/sys_enter_ioctl and sys_exit_ioctl, and the agent attaches one program
// to each; the second family's programs run by tail call, and do their work (a real guest's
// KVM_CREATE_VM is seen by kvm_irq's chained sys_exit_ioctl program; its KVM_RUN pairing by
// kvm's attached one). A family whose probe is off leaves the hook to the other, attached.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent } from '../agent/agent.js';
import { configSchema } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { allProbeNames } from '../agent/families.js';
import { SHARED_MAP_PREFIX } from '../agent/loader.js';
import { TASK_STORAGE } from '../agent/model/family.js';
import { kvmUsable, startGuest } from './helpers/kvm.js';

const skip = kvmUsable() ?? (spawnSync('bpftool', ['version']).status === 0 ? undefined : 'bpftool is not installed');
if (skip) test('hook-chain tests are skipped here', (t) => t.log(`skipped: ${skip}`) ?? t.pass());
const kvmTest = skip ? test.serial.skip : test.serial;

interface PerfLink {
  pid: number;
  prog_id: number;
  fd_type: string;
  tracepoint?: string;
}

/** Tracepoint programs this process has attached, by tracepoint (bpftool perf show). */
function attachedHere(): Map<string, number> {
  const r = spawnSync('bpftool', ['perf', 'show', '--json'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bpftool perf show: ${r.stderr}`);
  const out = new Map<string, number>();
  for (const l of JSON.parse(r.stdout) as PerfLink[]) {
    if (l.pid === process.pid && l.fd_type === 'tracepoint' && l.tracepoint) out.set(l.tracepoint, (out.get(l.tracepoint) ?? 0) + 1);
  }
  return out;
}

const IOCTL_PROBES = ['kvm_ioctl', 'kvm_irq_ioctl'];

function agentWith(t: import('ava').ExecutionContext, enabled: string[]): Agent {
  const agent = new Agent(configSchema.parse({ probes: { disable: allProbeNames().filter((n) => !enabled.includes(n)) } }));
  agent.start();
  t.teardown(() => agent.stop());
  return agent;
}

kvmTest(
  "two families on sys_enter/exit_ioctl attach one program per hook; the second runs after the first by tail call and sees a real guest's KVM_CREATE_VM",
  async (t) => {
    const agent = agentWith(t, [...IOCTL_PROBES, 'kvm_userspace_exit']);
    const st = (n: string) => agent.status.find((s) => s.name === n)!;
    t.truthy(st('kvm_ioctl').chosen, 'kvm_ioctl attached');
    t.is(st('kvm_ioctl').chosen!.chained, undefined, 'the first on the hooks attaches');
    t.deepEqual(st('kvm_irq_ioctl').chosen?.chained, [
      { hook: 'tracepoint:syscalls/sys_enter_ioctl', after: 'kvm_ioctl' },
      { hook: 'tracepoint:syscalls/sys_exit_ioctl', after: 'kvm_ioctl' },
    ]);
    const here = attachedHere();
    t.is(here.get('sys_enter_ioctl'), 1, 'one program on sys_enter_ioctl for two families');
    t.is(here.get('sys_exit_ioctl'), 1, 'one program on sys_exit_ioctl for two families');

    const N = 300;
    const guest = await startGuest({ name: `hvwatch-chain-${process.pid}`, writes: N, holdMs: 30_000 });
    t.teardown(() => guest.kill());
    guest.go();
    t.is((await guest.result).io_exits, N);
    // kvm_irq (chained): KVM_CREATE_VM's context at sys_enter_ioctl, the new VM's generation at
    // sys_exit_ioctl (struct irq_vm_state: tgid at offset 32).
    const states = [...agent.family('kvm_irq')!.maps.get('irq_vm_state')!.entries()].filter(([, v]) => v.readUInt32LE(32) === guest.pid);
    t.is(states.length, 1, "the guest's VM got its generation from the chained program");
    t.true(states[0]![1].readBigUInt64LE(8) > 0n, 'created_ns: KVM_CREATE_VM was seen, not a later first sight');
    // kvm (attached): each IO exit closed by the next KVM_RUN.
    await agent.collect();
    const vm = { vm: `hvwatch-chain-${process.pid}` };
    t.is(agent.store.get(M.kvmUserspaceTime, { ...vm, reason: 'IO' })?.hist?.count, N);
  },
);

kvmTest("with the first family's probe off, the other family's program attaches to the hooks itself", (t) => {
  const agent = agentWith(t, ['kvm_irq_ioctl']);
  const irq = agent.status.find((s) => s.name === 'kvm_irq_ioctl')!;
  t.truthy(irq.chosen);
  t.is(irq.chosen!.chained, undefined);
  t.is(agent.status.find((s) => s.name === 'kvm_ioctl')!.enabled, false);
  const here = attachedHere();
  t.is(here.get('sys_enter_ioctl'), 1);
  t.is(here.get('sys_exit_ioctl'), 1);
});

/** The kernel's id of the map behind a map fd (/proc/self/fdinfo, map_id: kernel/bpf/syscall.c). */
function mapId(fd: number): number {
  const m = /^map_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  if (!m) throw new Error(`no map_id in /proc/self/fdinfo/${fd}`);
  return Number(m[1]);
}

test.serial('the kvm and kvm_irq families keep their per-thread state in one shared task-storage map (one record per vCPU thread)', (t) => {
  const agent = agentWith(t, [...IOCTL_PROBES, 'kvm_userspace_exit']);
  const kvmIoctl = agent.status.find((s) => s.name === 'kvm_ioctl')!;
  if (kvmIoctl.chosen?.state !== TASK_STORAGE) {
    t.log(`skipped: kvm_ioctl is on the ${kvmIoctl.chosen?.state ?? 'no'} tier here (no task storage, or kvm not loaded)`);
    t.pass();
    return;
  }
  const name = `${SHARED_MAP_PREFIX}kvm_thread`;
  const a = agent.family('kvm')!.maps.get(name);
  const b = agent.family('kvm_irq')!.maps.get(name);
  t.truthy(a && b, 'both objects declare the record');
  t.not(a!.fd, b!.fd, 'each family holds its own fd');
  t.is(mapId(a!.fd), mapId(b!.fd), "the second family was given the first one's map, not a map of its own");
});
