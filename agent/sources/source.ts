// One source interface, two sources (live BPF, a recorded trace: docs/ARCHITECTURE.md). The agent's pipeline (collectMap,
// each family's prepare/collect, ring-buffer decode + onEvents) reads only these views, so
// live eBPF maps and a recorded trace go through the same aggregation code.
import type { Btf } from '../../bpf/btf.js';
import type { MapRead, ProgStats } from '../../bpf/libbpf.js';
import type { CgroupResolver, MemoryHierarchy, MemoryStatSource } from '../cgroups.js';
import type { LoadedFamily, ProbeStatus } from '../loader.js';
import type { FamilySpec } from '../probes/model.js';
import type { HostRefresher } from './refresh.js';

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

/** A family as the pipeline sees it: its spec, its maps, and the BTF that decodes them. */
export interface FamilyView {
  readonly spec: FamilySpec;
  readonly maps: ReadonlyMap<string, MapView>;
  readonly typeIds: ReadonlyMap<string, { key: number; value: number }>;
  readonly btf: Btf;
  readonly programs: readonly { probe: string; program: ProgramView }[];
}

/** FamilySpec hooks and collectMap are typed against loader.ts's LoadedFamily, a class;
 * they use only the FamilyView part of it, so any FamilyView is passed through this cast. */
export function asLoaded(f: FamilyView): LoadedFamily {
  return f as unknown as LoadedFamily;
}

/** The host facts the decoders read (cgroup id -> path, memory.stat): live cgroupfs, or
 * the tables a trace carries. VM identities go through agent/sources/host.ts. */
export interface HostView {
  /** Keeps host facts fresh off the scrape path (live sources only; agent/sources/refresh.ts). */
  refresher?: HostRefresher;
  cgroups: { resolver: CgroupResolver; hierarchy: MemoryHierarchy; memoryStats: MemoryStatSource } | undefined;
}

export interface CollectClock {
  /** Wall-clock ms the collection is stamped with. */
  now: number;
  /** Whether label objects are checked for liveness on this collection. */
  gc: boolean;
}

/** Called with each batch of ring-buffer records; `maps` answers the lookups the event
 * handlers make (stacks), as of when the records arrived. */
export type EventSink = (fam: FamilyView, records: Buffer[], maps: ReadonlyMap<string, MapView>) => void;

export interface Source {
  readonly kind: 'live' | 'record' | 'replay';
  readonly host: HostView;
  readonly families: readonly FamilyView[];
  readonly status: readonly ProbeStatus[];
  /** Kernel release and libbpf version for hvwatch_build_info (the recorded host's in replay). */
  readonly build: { kernel: string; libbpf: string };
  start(sink: EventSink): void;
  /** Before the maps are read: a recorder snapshots them; a replay supplies the recorded
   * clock, or null outside a replayed snapshot (a scrape then serves the store as it is). */
  beginCollect?(clock: CollectClock): CollectClock | null;
  /** Before a family's own collect hook (which reads host files such as memory.stat). */
  beforeFamilyCollect?(fam: FamilyView): void;
  /** After the whole collection: a recorder writes what it used. */
  endCollect?(clock: CollectClock): void;
  bpfStatsOn(): boolean;
  stop(): Promise<void>;
}
