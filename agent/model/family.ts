// The probe model, the bottom of the agent (docs/ARCHITECTURE.md "The rooms"): what a family
// declares and the small interfaces it is handed. A family is a folder, families/<name>/,
// holding one BPF object and a factory, `create(config, services)`, that returns its
// FamilySpec: its probes each declare attach candidates in priority order; the loader
// (agent/loader.ts) takes the first that loads and attaches on this kernel. How maps become
// metrics is declared here too, so a new family touches its folder and one line of the
// registry, families/index.ts (docs/ARCHITECTURE.md "Where a new family goes").
//
// This file imports types only, and none from the loader, the collector or the agent: they
// import it.
import type { AttachKind, MapRead, ProgStats } from '../../bpf/libbpf.js';
import type { Btf } from '../../bpf/btf.js';
import type { MetricDef } from './metric.js';
import type { Condition } from './alert.js';
import type { MetricStore } from '../export/store.js';
import type { DecodedEvent } from '../aggregate/events.js';
import type { LabelBudget } from '../aggregate/budget.js';
import type { CgroupResolver, MemoryHierarchy, MemoryStatSource } from '../cgroups.js';
import type { Config } from '../config.js';

export type { AttachKind };

export interface Candidate {
  /** Tier, as reported in hvwatch_probe_info{attach}. */
  attach: AttachKind;
  /** Function, tracepoint ("category/name" for tracepoint, "name" for tp_btf) or symbol. */
  target: string;
  /** Programs attached together (an fentry/fexit pair is one candidate). */
  programs: string[];
  /** Programs of this candidate that attach to another function than `target`. */
  targets?: Readonly<Record<string, string>>;
  /** Required leading parameter names of raw tracepoints (btf_trace_<name>), by tracepoint:
   * a tp_btf program is written for one signature, and signatures change across kernels. */
  params?: Readonly<Record<string, readonly string[]>>;
  /** A hot hook: tried only when the probe is opted in (probes.hot), like a hot probe. */
  hot?: string;
  /** Where the candidate keeps per-thread state ('task storage', 'hash'). A pair's halves
   * are often written by one probe and read by another, so once one probe of a family has
   * chosen a candidate with a state, the family's other probes try only candidates with the
   * same state (or none). Declare the preferred state's candidates first. */
  state?: string;
}

export interface ProbeSpec {
  name: string;
  family: string;
  description: string;
  candidates: Candidate[];
  /** Hot hooks are opt-in (config `hotProbes`); the reason and its measured cost go here. */
  hot?: string;
  /** Declared for kernels that can run it, but no candidate can attach on some (kvmi). */
  optional?: boolean;
}

/** A BPF map field that becomes one metric per key. A histogram metric's field is an array
 * of log2 slots (its catalog `buckets` say how it is exported); `sumField` names the exact
 * sum beside it, else the sum is estimated from slot midpoints. */
export type FieldExport = {
  field: string;
  metric: MetricDef;
  sumField?: string;
  /** Fixed labels of this field's series (several fields of one value feed one metric:
   * pio in/out -> direction). */
  labels?: Readonly<Record<string, string>>;
};

export interface KeyLabel {
  label: string;
  field: string;
  /** A shared decoder by name (agent/aggregate/collect.ts `decoders`) or the family's own. */
  decoder: string | Decoder;
}

export interface MapExport {
  map: string;
  labels: KeyLabel[];
  fields: FieldExport[];
}

export interface EventContext {
  store: MetricStore;
  resolveCgroup: (id: number) => string;
  /** Kernel stack of a stack id from the family's `stacks` map, symbolized. */
  stack: (id: number) => string[];
  /** Append to the agent's bounded log of recent race events (GET /api/races) and log it,
   * rate-limited, at `level` (default warn; info for an indicator that is also normal life). */
  logRace: (record: Record<string, unknown>, level?: 'warn' | 'info') => void;
  /** The family the events came from (its BTF names its enums: FamilySpec.enums). */
  family: FamilyView;
}

/** A C enum of the family's object whose values label series or index counters, named by
 * enumerator: each enumerator's name -> its label. The values are read from the object's
 * BTF (the .bpf.c exports the enum with EXPORT_BTF_ENUM, bpf/src/hvwatch.h), never copied by
 * position; a family whose enum or enumerator is missing there fails to load, with why
 * (agent/aggregate/enums.ts). */
export interface EnumDecl {
  readonly enum: string;
  readonly labels: Readonly<Record<string, string>>;
}

/** What one scrape's decoders and family hooks are given. */
export interface CollectContext {
  store: MetricStore;
  budget: LabelBudget;
  cgroups?: { resolver: CgroupResolver; hierarchy: MemoryHierarchy; memoryStats: MemoryStatSource };
  now: number;
  /** Check whether labelled objects still exist (throttled: it costs a stat per cgroup). */
  gc: boolean;
}

/** A decoded key label, or null when the object behind the key is gone (drop the entry).
 * `field` reads another field of the same key (an exit reason's name depends on its ISA). */
export type Decoder = (raw: bigint, ctx: CollectContext, field: (name: string) => bigint) => string | null;

/** What a decoder returns for an object past its linger whose counts were folded into
 * "_other": the entry is deleted like for null, but its final counts stay in the "_other"
 * series, which outlives any one object and so must never go backwards. */
export const RETIRE_INTO_OTHER = '\u0000retire:_other';

/** What the pipeline calls on a map: the public surface of bpf/libbpf.ts MapFd. */
export interface MapView {
  readonly name: string;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly percpu: boolean;
  keys(): Buffer[];
  entries(): Iterable<[Buffer, Buffer]>;
  lookup(key: Buffer): Buffer | undefined;
  lookupRaw(key: Buffer): Buffer | undefined;
  count(): number;
  counter(i: number): number;
  delete(key: Buffer): boolean;
  update(key: Buffer, value: Buffer, flags?: number): void;
  /** The whole map in one batched read (live maps: bpf/libbpf.ts MapFd.readAll). */
  readAll?(): MapRead;
}

export interface ProgramView {
  readonly name: string;
  stats(): ProgStats;
}

/** A family as the pipeline sees it: its spec, its maps, and the BTF that decodes them
 * (loader.ts LoadedFamily, a recorder's wrapper of it, or a replayed trace's). */
export interface FamilyView {
  readonly spec: FamilySpec;
  readonly maps: ReadonlyMap<string, MapView>;
  readonly typeIds: ReadonlyMap<string, { key: number; value: number }>;
  readonly btf: Btf;
  readonly programs: readonly { probe: string; program: ProgramView }[];
}

/** The `vm` label every KVM-side family shares (agent/services/vm-labels.ts): one instance
 * per agent, so the families agree on names and share one cardinality slot per VM. */
export interface VmLabels {
  /** Key field tgid -> the VM's name (null once the VM is gone and its linger over). */
  readonly decoder: Decoder;
  /** Reads a VM family's first-sight records (hv_vm_seen); call from its prepare hook. */
  learn(fam: FamilyView, ctx: CollectContext): void;
}

/** What this kernel has, asked once and shared by every family (agent/services/kernel.ts). */
export interface KernelFacts {
  /** The running kernel's release (/proc/sys/kernel/osrelease). */
  readonly release: string;
  /** Whether the running kernel is at least major.minor. */
  atLeast(major: number, minor: number): boolean;
  /** Names starting with `prefix` in any kernel BTF's strings (vmlinux or bpf.btfPath, modules). */
  btfNamesWithPrefix(prefix: string): Set<string>;
  /** Function symbols starting with `prefix` in /proc/kallsyms (one read of the file, shared). */
  kallsymsWithPrefix(prefix: string): Set<string>;
}

/** What a family's factory is handed: one instance per agent. */
export interface Services {
  readonly vms: VmLabels;
  readonly kernel: KernelFacts;
}

/** A registered family (families/index.ts): its folder's family.ts, imported as a module. */
export interface FamilyModule {
  /** The family's name: its folder, its BPF object (<name>.bpf.o) and its metrics' family. */
  readonly name: string;
  /** Its metrics (families/<name>/metrics.ts); the catalog gathers them. */
  readonly metrics: Readonly<Record<string, MetricDef>>;
  /** The family's declarations for one agent. Cheap and side-effect free: what asks the
   * kernel runs in the spec's present() and setup(). */
  create(config: Config, services: Services): FamilySpec;
  /** Alerts the agent also evaluates in process (agent/alerting), each the identity of the
   * Prometheus rule of the same name in the family's alerts.ts. */
  readonly conditions?: readonly Condition[];
}

export interface FamilySpec {
  name: string;
  /** BPF object file name under bpf/build/. */
  object: string;
  probes: ProbeSpec[];
  maps: MapExport[];
  /** Rare events (races, failures) from a BPF ring buffer, decoded by the struct's BTF. */
  events?: {
    map: string;
    struct: string;
    onEvents: (events: DecodedEvent[], ctx: EventContext) => void;
  };
  /** Maps sized from config: per cgroup/VM (bpf.mapEntries) or per folio in flight (bpf.raceStateEntries). */
  sizes?: Readonly<Record<string, 'perObject' | 'perFolio'>>;
  /** Maps whose fill level is exported (hvwatch_bpf_map_entries) besides the MapExport ones. */
  watchMaps?: string[];
  /** Extra scrape-time work that reads outside BPF (cgroupfs, procfs); runs after the maps. */
  collect?: (ctx: CollectContext, store: MetricStore, fam: FamilyView) => void;
  /** Scrape-time work before the maps are read (e.g. a lookup table the decoders need). */
  prepare?: (ctx: CollectContext, fam: FamilyView) => void;
  /** Whether the subsystem the family watches is in this kernel at all; a reason when not
   * (kvm not loaded). Its probes are then off, not failed. */
  present?: () => string | undefined;
  /** A gauge the agent sets to 1 when present() finds the subsystem and 0 when not, so
   * "not present" is a sample, not a missing series (hvwatch_kvmi_present). */
  presentMetric?: MetricDef;
  /** Hook events one run of each of the object's SEC("tc") bench_* programs stands for
   * (bench/test-run-cost.ts divides by it; its comment in the .bpf.c says why). */
  benchEventsPerRun?: Readonly<Record<string, number>>;
  /** The C enums the family names values of (checked against the object's BTF at load). */
  enums?: readonly EnumDecl[];
  /** Once after load: write configuration into the family's BPF maps. */
  setup?: (fam: FamilyView, cfg: Config) => void;
}

/** Candidate.state values. */
export const TASK_STORAGE = 'task storage';
export const HASH_MAP = 'hash';

/** Candidates in both tiers of per-thread state, task storage first (BPF_MAP_TYPE_TASK_STORAGE,
 * 5.11+: the program `<name>_ts`), then the hash-map fallback (`<name>`): every candidate in
 * the first tier before any in the second, so a kernel with task storage never ends up on
 * the hash tier only because its first attach kind failed. */
export function inStateTiers(cands: readonly Candidate[]): Candidate[] {
  const ts = (n: string): string => `${n}_ts`;
  return [
    ...cands.map((c) => ({
      ...c,
      state: TASK_STORAGE,
      programs: c.programs.map(ts),
      ...(c.targets ? { targets: Object.fromEntries(Object.entries(c.targets).map(([k, v]) => [ts(k), v])) } : {}),
    })),
    ...cands.map((c) => ({ ...c, state: HASH_MAP })),
  ];
}
