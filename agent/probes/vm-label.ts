// The `vm` label of every KVM-side family (kvm, kvm_irq, kvmi): a VM is its VMM process,
// keyed by tgid in the BPF maps and named from its command line (agent/vms.ts). One module,
// so the families agree on names, share one cardinality slot per VM, and publish one
// hvwatch_kvm_vm_info.
import { M } from '../catalog.js';
import { VmResolver, type VmIdentity } from '../vms.js';
import type { CollectContext, Decoder } from '../aggregate/collect.js';
import type { MetricStore, Series } from '../export/store.js';

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
  const prev = known.get(pid);
  if (id) {
    if (prev && prev.id !== id.name) ctx.budget.release('vm', prev.id); // the pid was reused
    const vm = { name: ctx.budget.admit('vm', id.name), id: id.name, source: id.source };
    known.set(pid, vm);
    return vm;
  }
  if (!prev) return null;
  prev.goneAt ??= ctx.now;
  if (ctx.now - prev.goneAt < lingerMs) return prev;
  ctx.budget.release('vm', prev.id);
  known.delete(pid);
  return null;
}

/** hvwatch_kvm_vm_info from the VMs decoded in this collection, by any family. Each VM
 * family calls it after its maps, so the last one publishes the complete set. */
export function publishVmInfo(ctx: CollectContext, store: MetricStore): void {
  begin(ctx);
  const info: Series[] = [];
  for (const [pid, vm] of seen) if (vm) info.push({ labels: { vm: vm.name, pid: String(pid), source: vm.source }, value: 1 });
  store.replace(M.kvmVmInfo, info);
}
