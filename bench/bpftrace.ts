// bpftrace as the peer: for each hvwatch program a one-liner on the same tracepoint that keeps
// the same aggregate (same keys, counters and log2 histograms as the BPF maps of
// families/*/*.bpf.c), run as one bpftrace process; its programs are read through the kernel's
// run-time accounting exactly like hvwatch's.
import * as fs from 'node:fs';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createRequire } from 'node:module';
import { progStats, type ProgStats } from '../bpf/libbpf.js';
import { Btf } from '../bpf/btf.js';

interface Consts {
  nrWriteback: number;
  pgpgout: number;
  memcgId: number;
  knIdOffset: number;
}

function consts(): Consts {
  const btf = Btf.vmlinux();
  const nrWriteback = btf.enumValue('node_stat_item', 'NR_WRITEBACK');
  const pgpgout = btf.enumValue('vm_event_item', 'PGPGOUT');
  const memcgId = btf.enumValue('cgroup_subsys_id', 'memory_cgrp_id');
  const knId = btf.structLayout('kernfs_node')?.fields.find((f) => f.name === 'id');
  if (nrWriteback === undefined || pgpgout === undefined || memcgId === undefined || !knId) {
    throw new Error('kernel BTF lacks NR_WRITEBACK, PGPGOUT, memory_cgrp_id or kernfs_node.id');
  }
  return { nrWriteback: Number(nrWriteback), pgpgout: Number(pgpgout), memcgId: Number(memcgId), knIdOffset: knId.offset };
}

// bpftrace 0.17 cannot parse kernfs_node from this kernel's BTF, so kn->id is read at its
// BTF offset: the waiting task's memory cgroup, as task_memcg_id() in memcg.bpf.c.
const taskMemcg = (c: Consts): string => `*(uint64 *)((uint64)curtask->cgroups->subsys[${c.memcgId}]->cgroup->kn + ${c.knIdOffset})`;

/** The bpftrace equivalent of each hvwatch program, by program name (both tiers). */
const EQUIVALENTS: Record<string, (c: Consts) => string> = {
  // memcg family: NR_WRITEBACK deltas per memcg; PGPGOUT batches (count, pages, log2
  // histogram) per memcg; writeback waits per memcg of the waiting task.
  memcg_lruvec_state: (c) => `tracepoint:memcg:mod_memcg_lruvec_state /args->item == ${c.nrWriteback}/ { @wb[args->id] = sum(args->val); }`,
  count_memcg_events: (c) =>
    `tracepoint:memcg:count_memcg_events /args->item == ${c.pgpgout}/ { @un[args->id] = stats(args->val); @unh[args->id] = hist(args->val); }`,
  folio_wait_writeback: (c) => `tracepoint:writeback:folio_wait_writeback { @waits[${taskMemcg(c)}] = count(); }`,
  // the hot tier with latency: wait start per thread, ended at the thread's next switch-in
  wait_writeback_begin: (c) =>
    `tracepoint:writeback:folio_wait_writeback { $cg = ${taskMemcg(c)}; @waits[$cg] = count(); @wst[tid] = nsecs; @wcg[tid] = $cg; }`,
  wait_sched_switch: () =>
    'tracepoint:sched:sched_switch { $t = @wst[args->next_pid]; if ($t) { @wlat[@wcg[args->next_pid]] = hist(nsecs - $t); delete(@wst[args->next_pid]); delete(@wcg[args->next_pid]); } }',
  // kvm family: per VM (tgid) counters, exits by reason with the exit -> entry latency,
  // userspace exits by reason with the time until the next KVM_RUN, nested-state ioctls.
  kvm_exit: () => 'tracepoint:kvm:kvm_exit { @exits[pid, args->isa, args->exit_reason] = count(); @et[tid] = nsecs; @er[tid] = args->exit_reason; }',
  kvm_exit_legacy: () => 'tracepoint:kvm:kvm_exit { @exits[pid, args->isa, args->exit_reason] = count(); @et[tid] = nsecs; @er[tid] = args->exit_reason; }',
  kvm_entry: () => 'tracepoint:kvm:kvm_entry { $t = @et[tid]; if ($t) { @eh[pid, @er[tid]] = hist(nsecs - $t); @et[tid] = 0; } }',
  kvm_userspace_exit: () => 'tracepoint:kvm:kvm_userspace_exit { @uexit[pid, args->reason] = count(); @ut[tid] = nsecs; @ur[tid] = args->reason; }',
  sys_enter_ioctl: () =>
    'tracepoint:syscalls:sys_enter_ioctl /args->cmd == 0xae80 || args->cmd == 0xc080aebe || args->cmd == 0x4080aebf/ { if (args->cmd == 0xae80) { $t = @ut[tid]; if ($t) { @user[pid, @ur[tid]] = hist(nsecs - $t); @ut[tid] = 0; } } else { @ioc[tid] = nsecs; } }',
  sys_exit_ioctl: () => 'tracepoint:syscalls:sys_exit_ioctl { $t = @ioc[tid]; if ($t) { @nstate[pid, args->ret] = hist(nsecs - $t); delete(@ioc[tid]); } }',
  kvm_pio: () => 'tracepoint:kvm:kvm_pio { @pio[pid, args->rw] = count(); }',
  kvm_mmio: () => 'tracepoint:kvm:kvm_mmio { @mmio[pid, args->type] = count(); }',
  kvm_emulate_insn: () => 'tracepoint:kvm:kvm_emulate_insn { @emul[pid, args->failed] = count(); }',
};

/** hvwatch names a program `<tier prefix>_<what>[_ts]`: btf_, tp_, raw_ (or none); `_ts`
 * for its task-storage variant (agent/model/family.ts inStateTiers). */
function equivalentKey(program: string): string {
  return program.replace(/^(btf|tp|raw)_/, '').replace(/_ts$/, '');
}

/** bpftrace's one-liner for an hvwatch program on `event` ("cat:name"), or why there is none. */
export function bpftraceFor(program: string, event: string | undefined, c: Consts): { script: string } | { why: string } {
  const f = EQUIVALENTS[equivalentKey(program)];
  if (!f) return { why: 'no bpftrace equivalent written for this program' };
  const script = f(c);
  if (!event || !script.startsWith(`tracepoint:${event} `)) return { why: `equivalent is on another hook than ${event ?? 'this one'}` };
  return { script };
}

export function bpftraceVersion(): string | undefined {
  const r = spawnSync('bpftrace', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

export function bpftraceConsts(): Consts {
  return consts();
}

interface BpftoolProg {
  id: number;
  type: string;
  name?: string;
}

function bpftoolProgs(): BpftoolProg[] {
  const r = spawnSync('bpftool', ['prog', 'show', '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`bpftool prog show failed: ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as BpftoolProg[];
}

// Programs are read through an fd of our own (bpf_prog_get_fd_by_id): spawning bpftool
// between snapshots would itself fire the hooks being measured.
const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
const progFdById = koffi.load('libbpf.so.1').func('int bpf_prog_get_fd_by_id(uint32_t id)');

export class Bpftrace {
  private constructor(
    private readonly child: ChildProcess,
    private readonly fds: Map<string, number>,
  ) {}

  /** Starts one bpftrace with one probe per event; resolves once all are attached. bpftrace
   * names a tracepoint program after the event, cut to 15 characters. */
  static async start(scripts: Map<string, string>): Promise<Bpftrace> {
    const before = new Set(bpftoolProgs().map((p) => p.id));
    const child = spawn('bpftrace', ['-e', [...scripts.values()].join('\n')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
    child.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-4000)));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      if (child.exitCode !== null) throw new Error(`bpftrace exited (${child.exitCode}): ${out.trim().split('\n').slice(-3).join(' ')}`);
      if (!out.includes('Attaching')) continue;
      const ids = new Map<string, number>();
      for (const p of bpftoolProgs()) {
        if (before.has(p.id) || p.type !== 'tracepoint') continue;
        const ev = [...scripts.keys()].find((e) => e.split(':')[1]!.slice(0, 15) === p.name);
        if (ev) ids.set(ev, p.id);
      }
      if (ids.size === scripts.size) {
        const fds = new Map<string, number>();
        for (const [ev, id] of ids) {
          const fd = progFdById(id) as number;
          if (fd < 0) throw new Error(`bpf_prog_get_fd_by_id(${id}) failed (${fd})`);
          fds.set(ev, fd);
        }
        return new Bpftrace(child, fds);
      }
    }
    child.kill('SIGKILL');
    throw new Error(`bpftrace did not attach its ${scripts.size} programs within 30 s: ${out.trim().split('\n').slice(-3).join(' ')}`);
  }

  stats(event: string): ProgStats | undefined {
    const fd = this.fds.get(event);
    return fd === undefined ? undefined : progStats(fd);
  }

  async stop(): Promise<void> {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGINT');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }
}
