// The `vm` label of every KVM-side family (kvm, kvm_irq, kvmi): a VM is its VMM process,
// keyed by tgid in the BPF maps and named from its command line (agent/vms.ts). One module,
// so the families agree on names, share one cardinality slot per VM, and publish one
// hvwatch_kvm_vm_info.
//
// Identity at first sight (README "Series lifecycle"): the BPF side records each new VMM's
// command line and start time in hv_vm_seen (bpf/src/hvwatch.h) the first time one of its
// keys is inserted, so a VM that exits before any scrape is still named as its operator
// named it. While the process lives, /proc is asked as before (argv beyond the recorded
// bytes, the exe link, the cgroup); once it is gone, the first-sight record names it, and
// its series linger for kvm.exitedVmSeconds before they go.
import { M } from '../catalog.js';
import { VmResolver, parseVmIdentity, pidIdentity, type VmIdentity } from '../vms.js';
import { RETIRE_INTO_OTHER, type CollectContext, type Decoder } from '../aggregate/collect.js';
import { OVERFLOW_VALUE } from '../aggregate/budget.js';
import { seriesKey, type MetricStore } from '../export/store.js';
import type { FamilyView, MapView } from '../sources/source.js';
import type { StructLayout } from '../../bpf/btf.js';
import type { RefreshJob } from '../sources/refresh.js';

interface Vm {
  /** The label value: the VM's name, or "_other" past the cardinality budget. */
  name: string;
  /** The name the budget admitted or refused (what release() takes). */
  id: string;
  source: string;
  /** When the process was first found gone (its series linger until then + linger). */
  goneAt?: number;
}

type ResolveVm = (pid: number) => VmIdentity | null;
const vms = new VmResolver();
const fromProc: ResolveVm = (pid) => vms.resolve(pid);
let identity: ResolveVm = fromProc;

/**
 * Where VM identities come from: /proc (the default), or what a recording taps from it, or
 * a replayed trace's table (agent/sources/host.ts). `wrap` gets the /proc lookup; the
 * returned function restores the previous source.
 */
export function useVmIdentity(wrap: (fromProc: ResolveVm) => ResolveVm): () => void {
  const prev = identity;
  identity = wrap(fromProc);
  return () => {
    identity = prev;
  };
}
/** The background check that the VMMs named so far are still the same processes
 * (agent/sources/refresh.ts): the vm label's /proc reads off the scrape path. */
export function vmLivenessJob(): RefreshJob {
  return vms.livenessJob();
}

/** By tgid: every VM named so far and not yet dropped. */
const known = new Map<number, Vm>();
/** By tgid, for the current collection: each VM is resolved once however many keys carry it. */
const seen = new Map<number, Vm | null>();
let collection = -1;
/** How long a VM's series stay after its VMM exits (config kvm.exitedVmSeconds). */
let lingerMs = 60_000;

/**
 * A VM's last counts must reach a scrape after its VMM exits: what happens while a VM dies
 * (an interrupt injected after its irqchip's teardown began, seed 003) is counted just
 * before the process is gone, and dropping its series at once would hide it.
 */
export function setExitedVmLinger(seconds: number): void {
  lingerMs = seconds * 1000;
}

function begin(ctx: CollectContext): void {
  if (ctx.now === collection) return;
  collection = ctx.now;
  seen.clear();
}

export const vmDecoder: Decoder = (raw, ctx) => {
  begin(ctx);
  const pid = Number(raw);
  const cached = seen.get(pid);
  if (cached !== undefined) return cached?.name ?? null;
  const vm = resolve(pid, ctx);
  seen.set(pid, vm);
  return vm?.name ?? null; // null: exited and lingered: the entries and series go
};

function resolve(pid: number, ctx: CollectContext): Vm | null {
  const id = identity(pid);
  let prev = known.get(pid);
  const first = firstSight.get(pid);
  if (id) {
    // A pid-only answer (argv unreadable, or rewritten) loses to the name seen at first sight.
    const best = id.source === 'pid' && first?.identity ? first.identity : id;
    if (prev && prev.id !== best.name) ctx.budget.release('vm', prev.id); // the pid was reused
    if (prev && prev.id === best.name && prev.source === best.source && prev.goneAt === undefined) {
      prev.name = ctx.budget.admit('vm', best.name); // the same VM as before: no new object per scrape
      return prev;
    }
    const vm = { name: ctx.budget.admit('vm', best.name), id: best.name, source: best.source };
    known.set(pid, vm);
    return vm;
  }
  if (!prev) {
    // Gone before any collection saw it alive: named from its first sight (or pid-N when
    // that could not be recorded), and it lingers like any exited VM.
    const named = first?.identity ?? pidIdentity(pid);
    prev = { name: ctx.budget.admit('vm', named.name), id: named.name, source: named.source };
    known.set(pid, prev);
  }
  prev.goneAt ??= ctx.now;
  if (ctx.now - prev.goneAt < lingerMs) return prev;
  ctx.budget.release('vm', prev.id);
  known.delete(pid);
  retire(pid);
  return prev.name === OVERFLOW_VALUE ? { ...prev, name: RETIRE_INTO_OTHER } : null;
}

// ---- first sight (hv_vm_seen) ----

interface FirstSight {
  /** /proc/PID/stat field 22 (clock ticks) of the VMM, from task_struct.start_boottime. */
  startTicks: number;
  identity?: VmIdentity;
}

/** By tgid: what the BPF side recorded when it first saw the VMM. */
const firstSight = new Map<number, FirstSight>();
/** Every family's hv_vm_seen map: an exited VM's record is deleted from all of them. */
const seenMaps = new Set<MapView>();
const seenLayouts = new WeakMap<FamilyView, StructLayout | null>();
// USER_HZ: /proc/PID/stat reports start_boottime with nsec_to_clock_t (fs/proc/array.c
// do_task_stat, v6.18), and USER_HZ is 100 on every Linux architecture we build for.
const NS_PER_TICK = 10_000_000n;
/** Beyond the linger, before an unclaimed first-sight record is swept. */
const SWEEP_GRACE_MS = 60_000;

function retire(pid: number): void {
  vms.forget(pid);
  infoSeries.delete(pid);
  firstSight.delete(pid);
  const k = Buffer.alloc(4);
  k.writeUInt32LE(pid);
  for (const m of seenMaps) m.delete(k);
}

/** The argv recorded at first sight; a truncated record loses its last, partial, word. */
export function argvOfRecord(bytes: Buffer, truncated: boolean): string[] {
  const argv = bytes.toString('utf8').split('\0');
  if (truncated || argv.at(-1) === '') argv.pop();
  return argv;
}

/**
 * Reads a VM family's hv_vm_seen records (call from the family's prepare hook, before its
 * maps are decoded). Records are decoded by the struct's layout in the object's BTF.
 */
export function learnVms(fam: FamilyView): void {
  const map = fam.maps.get('hv_vm_seen');
  if (!map) return;
  let lay = seenLayouts.get(fam);
  if (lay === undefined) seenLayouts.set(fam, (lay = fam.btf.structLayout('hv_vm_seen') ?? null));
  if (!lay) return;
  seenMaps.add(map);
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
      identity === fromProc &&
      !known.has(pid) &&
      nowNs - v.readBigUInt64LE(oSeen) > BigInt(lingerMs + SWEEP_GRACE_MS) * 1_000_000n &&
      vms.startTime(pid) !== startTicks
    ) {
      map.delete(k);
      firstSight.delete(pid);
      continue;
    }
    const had = firstSight.get(pid);
    if (had && had.startTicks === startTicks && had.identity) continue;
    const len = Math.min(v.readUInt32LE(oLen), v.length - oCmd);
    const argv = len > 0 ? argvOfRecord(v.subarray(oCmd, oCmd + len), v.readUInt32LE(oTrunc) !== 0) : [];
    firstSight.set(pid, { startTicks, identity: argv.length > 0 ? parseVmIdentity(argv) : undefined });
  }
}

/** hvwatch_kvm_vm_info from the VMs decoded in this collection, by any family. Each VM
 * family calls it after its maps, so the last one publishes the complete set. */
export function publishVmInfo(ctx: CollectContext, store: MetricStore): void {
  begin(ctx);
  // In place, with each VM's labels and store key kept while its name stands (a new label
  // object and key per VM and family at every scrape was most of what the vm label cost).
  seen.forEach((vm, pid) => {
    if (!vm || vm.name === RETIRE_INTO_OTHER) return;
    let inf = infoSeries.get(pid);
    if (!inf || inf.labels.vm !== vm.name || inf.labels.source !== vm.source) {
      const labels = { vm: vm.name, pid: String(pid), source: vm.source };
      infoSeries.set(pid, (inf = { labels, key: seriesKey(M.kvmVmInfo, labels) }));
    }
    const s = store.visit(M.kvmVmInfo, inf.key);
    if (s) s.value = 1;
    else store.adopt(M.kvmVmInfo, inf.key, { labels: inf.labels, value: 1 });
  });
  store.collected(M.kvmVmInfo); // VMs not seen in this collection go at its end
}

/** By tgid: the labels and store key of the VM's hvwatch_kvm_vm_info series. */
const infoSeries = new Map<number, { labels: Readonly<Record<string, string>>; key: string }>();
