// `hvwatch top`'s model: two scrapes of an agent's /metrics and the seconds between them
// in, the rows of one frame out. Pure (no I/O, no clock), so it is tested without a network.
import { M } from '../catalog.js';
import type { Sample } from '../export/parse.js';

/** vm: a VM's total; exit: a kvm_exit reason; nested: an L2 exit by handler (l0/l1) and
 * reason; user: a return to the VMM by KVM_EXIT_* reason; pio/mmio: I/O by direction/type;
 * other: what --limit cut from one group, summed. */
export type RowKind = 'vm' | 'exit' | 'nested' | 'user' | 'pio' | 'mmio' | 'other';

export interface Row {
  kind: RowKind;
  /** 0 for a VM, 1 for its child rows. */
  depth: 0 | 1;
  vm: string;
  /** What the row shows: the VM name, a reason ("HLT"), "nested l1 vmrun", "user IO", "pio in". */
  name: string;
  /** Per second over the interval between the two scrapes. */
  rate: number;
  /** Child rows: percent of the VM row's rate (null when that is 0). VM rows: null. */
  share: number | null;
  /** The counter's value at the second scrape (summed like the rate). */
  total: number;
  /** VM rows: which counter the VM's total comes from. "userspace" when the agent has no
   * hvwatch_kvm_exits_total samples for the VM (kernels where kvm_exit does not fire). */
  basis?: 'exits' | 'userspace';
  /** other rows: the group cut and how many rows it replaces. */
  group?: Exclude<RowKind, 'vm' | 'other'>;
  count?: number;
}

export interface Frame {
  /** Seconds between the two scrapes. */
  seconds: number;
  vms: number;
  /** Sum of the VM rows' rates. */
  rate: number;
  rows: Row[];
}

export interface ModelOptions {
  /** Child rows per group (exit reasons, nested, user, pio, mmio) per VM; the rest is one "other" row. */
  limit?: number;
}

export const TOP_METRICS = {
  exits: M.kvmExits.name,
  nested: M.kvmNestedExits.name,
  user: M.kvmUserspaceExits.name,
  pio: M.kvmPio.name,
  mmio: M.kvmMmio.name,
  vmInfo: M.kvmVmInfo.name,
} as const;

function seriesKey(s: Sample): string {
  return `${s.name}${JSON.stringify(Object.entries(s.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))}`;
}

const finite = (v: number): number => (Number.isFinite(v) ? v : 0);

/** Increase of one counter series between two scrapes. A series absent from the first
 * scrape started from 0 in between; a decrease is a counter reset (agent restart), counted
 * from the new value rather than negative. */
export function counterIncrease(prev: number | undefined, cur: number): number {
  const c = Math.max(0, finite(cur));
  if (prev === undefined || !Number.isFinite(prev)) return c;
  return c >= prev ? c - prev : c;
}

interface Agg {
  rate: number;
  total: number;
}

type Group = Exclude<RowKind, 'vm' | 'other'>;
const GROUPS: readonly Group[] = ['exit', 'nested', 'user', 'pio', 'mmio'];
const GROUP_METRIC: Record<Group, string> = {
  exit: TOP_METRICS.exits,
  nested: TOP_METRICS.nested,
  user: TOP_METRICS.user,
  pio: TOP_METRICS.pio,
  mmio: TOP_METRICS.mmio,
};

function childName(group: Group, l: Record<string, string>): string {
  switch (group) {
    case 'exit':
      return l['reason'] ?? '?';
    case 'nested':
      return `nested ${l['handler'] ?? '?'} ${l['reason'] ?? '?'}`;
    case 'user':
      return `user ${l['reason'] ?? '?'}`;
    case 'pio':
      return `pio ${l['direction'] ?? '?'}`;
    case 'mmio':
      return `mmio ${l['type'] ?? '?'}`;
  }
}

const GROUP_PREFIX: Record<Group, string> = { exit: '', nested: 'nested ', user: 'user ', pio: 'pio ', mmio: 'mmio ' };

const byRate = <T extends { rate: number; name: string }>(a: T, b: T): number => b.rate - a.rate || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** The rows of one frame from two scrapes `seconds` apart. */
export function buildFrame(prev: readonly Sample[], cur: readonly Sample[], seconds: number, opts: ModelOptions = {}): Frame {
  if (!(seconds > 0) || !Number.isFinite(seconds)) throw new RangeError(`interval must be a positive number of seconds, got ${seconds}`);
  const limit = opts.limit ?? 10;
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);

  const wanted = new Set<string>(Object.values(GROUP_METRIC));
  const before = new Map<string, number>();
  for (const s of prev) if (wanted.has(s.name)) before.set(seriesKey(s), s.value);

  // vm -> group -> child name -> aggregate
  const vms = new Map<string, Map<Group, Map<string, Agg>>>();
  const vmGroups = (vm: string): Map<Group, Map<string, Agg>> => {
    let g = vms.get(vm);
    if (!g) vms.set(vm, (g = new Map(GROUPS.map((k) => [k, new Map<string, Agg>()]))));
    return g;
  };
  for (const s of cur) {
    const vm = s.labels['vm'];
    if (vm === undefined) continue;
    if (s.name === TOP_METRICS.vmInfo) {
      vmGroups(vm);
      continue;
    }
    const group = GROUPS.find((g) => GROUP_METRIC[g] === s.name);
    if (!group) continue;
    const inc = counterIncrease(before.get(seriesKey(s)), s.value);
    const children = vmGroups(vm).get(group)!;
    const name = childName(group, s.labels);
    const a = children.get(name) ?? { rate: 0, total: 0 };
    a.rate += inc / seconds;
    a.total += Math.max(0, finite(s.value));
    children.set(name, a);
  }

  const blocks: { vm: Row; children: Row[] }[] = [];
  for (const [vm, groups] of vms) {
    const sum = (g: Group): Agg => [...groups.get(g)!.values()].reduce((x, a) => ({ rate: x.rate + a.rate, total: x.total + a.total }), { rate: 0, total: 0 });
    const basis = groups.get('exit')!.size > 0 ? 'exits' : 'userspace';
    const tot = sum(basis === 'exits' ? 'exit' : 'user');
    const vmRow: Row = { kind: 'vm', depth: 0, vm, name: vm, rate: tot.rate, share: null, total: tot.total, basis };
    const share = (r: number): number | null => (tot.rate > 0 ? (100 * r) / tot.rate : null);
    const children: Row[] = [];
    for (const g of GROUPS) {
      const rows = [...groups.get(g)!]
        .map(([name, a]) => ({ name, ...a }))
        .filter((a) => a.rate > 0)
        .sort(byRate);
      for (const a of rows.slice(0, limit)) {
        children.push({ kind: g, depth: 1, vm, name: a.name, rate: a.rate, share: share(a.rate), total: a.total });
      }
      const rest = rows.slice(limit);
      if (rest.length) {
        const r = rest.reduce((x, a) => x + a.rate, 0);
        const t = rest.reduce((x, a) => x + a.total, 0);
        children.push({
          kind: 'other',
          depth: 1,
          vm,
          name: `${GROUP_PREFIX[g]}(${rest.length} more)`,
          rate: r,
          share: share(r),
          total: t,
          group: g,
          count: rest.length,
        });
      }
    }
    blocks.push({ vm: vmRow, children });
  }
  blocks.sort((a, b) => byRate(a.vm, b.vm));
  return {
    seconds,
    vms: blocks.length,
    rate: blocks.reduce((x, b) => x + b.vm.rate, 0),
    rows: blocks.flatMap((b) => [b.vm, ...b.children]),
  };
}
