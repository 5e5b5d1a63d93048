// The `vm` label of every KVM-side family (kvm, kvm_irq, kvmi): a VM is its VMM process,
// keyed by tgid in the BPF maps and named from its command line (agent/vms.ts). One instance
// per agent (services.vms, agent/services/index.ts), so the families agree on names, share
// one cardinality slot per VM, and one hvwatch_kvm_vm_info is published after every family
// has decoded its maps.
//
// Identity at first sight (README "Series lifecycle"): the BPF side records each new VMM's
// command line and start time in hv_vm_seen (bpf/src/hvwatch.h) the first time one of its
// keys is inserted, so a VM that exits before any scrape is still named as its operator
// named it. While the process lives, /proc is asked as before (argv beyond the recorded
// bytes, the exe link, the cgroup); once it is gone, the first-sight record names it, and
// its series linger for kvm.exitedVmSeconds before they go.
import { def } from '../model/metric.js';
import { RETIRE_INTO_OTHER, type CollectContext, type Decoder, type FamilyView, type MapView, type VmLabels } from '../model/family.js';
import { VmResolver, parseVmIdentity, pidIdentity, type VmIdentity } from '../vms.js';
import { OVERFLOW_VALUE } from '../aggregate/budget.js';
import { seriesKey, type MetricStore } from '../export/store.js';
import type { RefreshJob } from '../sources/refresh.js';
import type { StructLayout } from '../../bpf/btf.js';

/** Published by this service; the kvm family lists it among its metrics (families/kvm/metrics.ts). */
export const VM_INFO = def(
  'kvm',
  'hvwatch_kvm_vm_info',
  'gauge',
  ['vm', 'pid', 'source'],
  'Always 1 for each VM (VMM process) seen by the KVM probes; source says where its name came from (qemu, libvirt, firecracker, cloud-hypervisor, pid).',
);

interface Vm {
  /** The label value: the VM's name, or "_other" past the cardinality budget. */
  name: string;
  /** The name the budget admitted or refused (what release() takes). */
  id: string;
  source: string;
  /** When the process was first found gone (its series linger until then + linger). */
  goneAt?: number;
}

export type ResolveVm = (pid: number) => VmIdentity | null;

interface FirstSight {
  /** /proc/PID/stat field 22 (clock ticks) of the VMM, from task_struct.start_boottime. */
  startTicks: number;
  identity?: VmIdentity;
}

// USER_HZ: /proc/PID/stat reports start_boottime with nsec_to_clock_t (fs/proc/array.c
// do_task_stat, v6.18), and USER_HZ is 100 on every Linux architecture we build for.
const NS_PER_TICK = 10_000_000n;
/** Beyond the linger, before an unclaimed first-sight record is swept. */
const SWEEP_GRACE_MS = 60_000;

/** The argv recorded at first sight; a truncated record loses its last, partial, word. */
export function argvOfRecord(bytes: Buffer, truncated: boolean): string[] {
  const argv = bytes.toString('utf8').split('\0');
  if (truncated || argv.at(-1) === '') argv.pop();
  return argv;
}

export class VmLabelService implements VmLabels {
  private readonly vms = new VmResolver();
  private readonly fromProc: ResolveVm = (pid) => this.vms.resolve(pid);
  private identity: ResolveVm = this.fromProc;
  /** By tgid: every VM named so far and not yet dropped. */
  private readonly known = new Map<number, Vm>();
  /** By tgid, for the current collection: each VM is resolved once however many keys carry it. */
  private readonly seen = new Map<number, Vm | null>();
  private collection = -1;
  /** Whether a VM family learned or decoded in the current collection (then vm info is published). */
  private used = false;
  /** By tgid: what the BPF side recorded when it first saw the VMM. */
  private readonly firstSight = new Map<number, FirstSight>();
  /** Every family's hv_vm_seen map: an exited VM's record is deleted from all of them. */
  private readonly seenMaps = new Set<MapView>();
  private readonly seenLayouts = new WeakMap<FamilyView, StructLayout | null>();
  /** By tgid: the labels and store key of the VM's hvwatch_kvm_vm_info series. */
  private readonly infoSeries = new Map<number, { labels: Readonly<Record<string, string>>; key: string }>();

  /**
   * `lingerMs`: how long a VM's series stay after its VMM exits (config kvm.exitedVmSeconds).
   * A VM's last counts must reach a scrape after its VMM exits: what happens while a VM dies
   * (an interrupt injected after its irqchip's teardown began) is counted just before the
   * process is gone, and dropping its series at once would hide it.
   */
  constructor(private readonly lingerMs = 60_000) {}

  /**
   * Where VM identities come from: /proc (the default), or what a recording taps from it, or
   * a replayed trace's table (agent/sources/host.ts). `wrap` gets the /proc lookup; the
   * returned function restores the previous source.
   */
  useIdentity(wrap: (fromProc: ResolveVm) => ResolveVm): () => void {
    const prev = this.identity;
    this.identity = wrap(this.fromProc);
    return () => {
      this.identity = prev;
    };
  }

  /** The background check that the VMMs named so far are still the same processes
   * (agent/sources/refresh.ts): the vm label's /proc reads off the scrape path. */
  livenessJob(): RefreshJob {
    return this.vms.livenessJob();
  }

  private begin(ctx: CollectContext): void {
    if (ctx.now === this.collection) return;
    this.collection = ctx.now;
    this.seen.clear();
    this.used = false;
  }

  readonly decoder: Decoder = (raw, ctx) => {
    this.begin(ctx);
    this.used = true;
    const pid = Number(raw);
    const cached = this.seen.get(pid);
    if (cached !== undefined) return cached?.name ?? null;
    const vm = this.resolve(pid, ctx);
    this.seen.set(pid, vm);
    return vm?.name ?? null; // null: exited and lingered: the entries and series go
  };

  private resolve(pid: number, ctx: CollectContext): Vm | null {
    const id = this.identity(pid);
    let prev = this.known.get(pid);
    const first = this.firstSight.get(pid);
    if (id) {
      // A pid-only answer (argv unreadable, or rewritten) loses to the name seen at first sight.
      const best = id.source === 'pid' && first?.identity ? first.identity : id;
      if (prev && prev.id !== best.name) ctx.budget.release('vm', prev.id); // the pid was reused
      if (prev && prev.id === best.name && prev.source === best.source && prev.goneAt === undefined) {
        prev.name = ctx.budget.admit('vm', best.name); // the same VM as before: no new object per scrape
        return prev;
      }
      const vm = { name: ctx.budget.admit('vm', best.name), id: best.name, source: best.source };
      this.known.set(pid, vm);
      return vm;
    }
    if (!prev) {
      // Gone before any collection saw it alive: named from its first sight (or pid-N when
      // that could not be recorded), and it lingers like any exited VM.
      const named = first?.identity ?? pidIdentity(pid);
      prev = { name: ctx.budget.admit('vm', named.name), id: named.name, source: named.source };
      this.known.set(pid, prev);
    }
    prev.goneAt ??= ctx.now;
    if (ctx.now - prev.goneAt < this.lingerMs) return prev;
    ctx.budget.release('vm', prev.id);
    this.known.delete(pid);
    this.retire(pid);
    return prev.name === OVERFLOW_VALUE ? { ...prev, name: RETIRE_INTO_OTHER } : null;
  }

  private retire(pid: number): void {
    this.vms.forget(pid);
    this.infoSeries.delete(pid);
    this.firstSight.delete(pid);
    const k = Buffer.alloc(4);
    k.writeUInt32LE(pid);
    for (const m of this.seenMaps) m.delete(k);
  }

  /**
   * Reads a VM family's hv_vm_seen records (call from the family's prepare hook, before its
   * maps are decoded). Records are decoded by the struct's layout in the object's BTF.
   */
  learn(fam: FamilyView, ctx: CollectContext): void {
    this.begin(ctx);
    this.used = true;
    const map = fam.maps.get('hv_vm_seen');
    if (!map) return;
    let lay = this.seenLayouts.get(fam);
    if (lay === undefined) this.seenLayouts.set(fam, (lay = fam.btf.structLayout('hv_vm_seen') ?? null));
    if (!lay) return;
    this.seenMaps.add(map);
    const off = (name: string): number => lay.fields.find((f) => f.name === name)!.offset;
    const [oStart, oSeen, oLen, oTrunc, oCmd] = [off('start_boottime_ns'), off('seen_ns'), off('cmdline_len'), off('truncated'), off('cmdline')];
    const nowNs = process.hrtime.bigint(); // CLOCK_MONOTONIC, as bpf_ktime_get_ns
    for (const [k, v] of map.entries()) {
      const pid = k.readUInt32LE(0);
      const startTicks = Number(v.readBigUInt64LE(oStart) / NS_PER_TICK);
      // A record no stats entry carries (its insert found the stats map full) is never retired
      // by the decoders: sweep it once it is older than a linger and its process is gone (live
      // only: a replayed trace's clock and processes are not this host's).
      if (
        this.identity === this.fromProc &&
        !this.known.has(pid) &&
        nowNs - v.readBigUInt64LE(oSeen) > BigInt(this.lingerMs + SWEEP_GRACE_MS) * 1_000_000n &&
        this.vms.startTime(pid) !== startTicks
      ) {
        map.delete(k);
        this.firstSight.delete(pid);
        continue;
      }
      const had = this.firstSight.get(pid);
      if (had && had.startTicks === startTicks && had.identity) continue;
      const len = Math.min(v.readUInt32LE(oLen), v.length - oCmd);
      const argv = len > 0 ? argvOfRecord(v.subarray(oCmd, oCmd + len), v.readUInt32LE(oTrunc) !== 0) : [];
      this.firstSight.set(pid, { startTicks, identity: argv.length > 0 ? parseVmIdentity(argv) : undefined });
    }
  }

  /** hvwatch_kvm_vm_info from the VMs decoded in this collection, by any family: called by
   * the agent once every family has collected (agent/services/index.ts afterCollect), when a
   * VM family learned or decoded in it. */
  publish(ctx: CollectContext, store: MetricStore): void {
    this.begin(ctx);
    if (!this.used) return;
    // In place, with each VM's labels and store key kept while its name stands (a new label
    // object and key per VM at every scrape was most of what the vm label cost).
    this.seen.forEach((vm, pid) => {
      if (!vm || vm.name === RETIRE_INTO_OTHER) return;
      let inf = this.infoSeries.get(pid);
      if (!inf || inf.labels.vm !== vm.name || inf.labels.source !== vm.source) {
        const labels = { vm: vm.name, pid: String(pid), source: vm.source };
        this.infoSeries.set(pid, (inf = { labels, key: seriesKey(VM_INFO, labels) }));
      }
      const s = store.visit(VM_INFO, inf.key);
      if (s) s.value = 1;
      else store.adopt(VM_INFO, inf.key, { labels: inf.labels, value: 1 });
    });
    store.collected(VM_INFO); // VMs not seen in this collection go at its end
  }
}
