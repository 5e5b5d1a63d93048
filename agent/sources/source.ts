// One source interface, two sources (live BPF, a recorded trace: docs/ARCHITECTURE.md). The agent's pipeline (collectMap,
// each family's prepare/collect, ring-buffer decode + onEvents) reads only these views, so
// live eBPF maps and a recorded trace go through the same aggregation code.
import type { CgroupResolver, MemoryHierarchy, MemoryStatSource } from '../cgroups.js';
import type { ProbeStatus } from '../loader.js';
import type { FamilyView, MapView } from '../model/family.js';
import type { HostRefresher } from './refresh.js';

// The views the pipeline reads are declared with the model (agent/model/family.ts), below
// the loader, the collector and the sources.
export type { FamilyView, MapView, ProgramView } from '../model/family.js';

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
