// The replay source: a recorded trace played through the same pipeline as live maps. Each
// snapshot record becomes the families' maps for one collection (with the recorded clock),
// events records go through the same decode + onEvents, ident records answer the label
// decoders (cgroup paths, memory.stat, VM identities) as the recording host did.
import type { FamilySpec } from '../model/family.js';
import type { AgentServices } from '../services/index.js';
import type { ProbeStatus } from '../loader.js';
import type { Trace } from '../record/reader.js';
import type { SnapshotMeta, TraceRecord } from '../record/format.js';
import { log } from '../log.js';
import { HostFiles, HostTables, TableCgroupResolver, serveVms, tableMemoryStats } from './host.js';
import { SnapshotMap } from './snapshot-map.js';
import type { CollectClock, EventSink, FamilyView, HostView, MapView, Source } from './source.js';

interface ReplayFamily {
  view: { -readonly [K in keyof FamilyView]: FamilyView[K] };
  /** Index into header.families. */
  index: number;
  progBase: number;
}

export class ReplaySource implements Source {
  readonly kind = 'replay';
  readonly host: HostView;
  readonly status: readonly ProbeStatus[];
  readonly build: { kernel: string; libbpf: string };
  private readonly tables = new HostTables();
  private readonly files: HostFiles | undefined;
  private readonly fams: ReplayFamily[] = [];
  private readonly byIndex = new Map<number, ReplayFamily>();
  private sink: EventSink | undefined;
  private restoreVms: (() => void) | undefined;
  private current: { meta: SnapshotMeta } | undefined;
  private lastMeta: SnapshotMeta | undefined;
  /** Snapshots played so far. */
  played = 0;

  constructor(
    readonly trace: Trace,
    specs: readonly FamilySpec[],
    private readonly services: Pick<AgentServices, 'vms'>,
  ) {
    const h = trace.header;
    this.status = h.probes.map((p) => ({ ...p, candidates: p.candidates.map((c) => ({ ...c })) }));
    this.build = { kernel: h.kernel, libbpf: h.libbpf };
    if (h.cgroupVersion !== null) {
      this.files = new HostFiles(h.cgroupVersion);
      this.host = {
        cgroups: {
          resolver: new TableCgroupResolver(this.files.hierarchy, this.tables),
          hierarchy: this.files.hierarchy,
          memoryStats: tableMemoryStats(this.tables, h.cgroupVersion),
        },
      };
    } else {
      this.host = { cgroups: undefined };
    }
    let progBase = 0;
    h.families.forEach((f, index) => {
      const spec = specs.find((s) => s.name === f.name);
      const base = progBase;
      progBase += f.programs.length;
      if (!spec) {
        log('warn', 'trace has a probe family this hvwatch does not know; its data is skipped', { family: f.name });
        return;
      }
      const btf = trace.btf[index]!;
      const maps = new Map<string, MapView>(f.maps.map((m) => [m.name, SnapshotMap.empty(m)]));
      const typeIds = new Map(f.maps.map((m) => [m.name, { key: m.keyType, value: m.valueType }]));
      const rf: ReplayFamily = { index, progBase: base, view: { spec, btf, maps, typeIds, programs: [] } };
      rf.view.programs = f.programs.map((p, i) => ({
        probe: p.probe,
        program: {
          name: p.program,
          stats: () => {
            const s = this.lastMeta?.progs[base + i];
            return { runCount: s?.[0] ?? 0, runTimeNs: s?.[1] ?? 0 };
          },
        },
      }));
      this.fams.push(rf);
      this.byIndex.set(index, rf);
    });
  }

  get families(): readonly FamilyView[] {
    return this.fams.map((f) => f.view);
  }

  start(sink: EventSink): void {
    this.sink = sink;
    this.restoreVms = serveVms(this.tables, this.services.vms);
  }

  /** Applies one record; resolves once a snapshot's collection (via `collect`) is done. */
  async apply(r: TraceRecord, collect: () => Promise<void>): Promise<void> {
    switch (r.type) {
      case 'ident':
        this.tables.apply(r.delta);
        break;
      case 'events': {
        const rf = this.byIndex.get(r.family);
        if (!rf || !this.sink) break;
        const meta = this.trace.header.families[r.family]!.maps;
        const seen = new Map<number, [Buffer, Buffer][]>();
        for (const l of r.lookups) {
          if (!seen.has(l.map)) seen.set(l.map, []);
          if (l.value) seen.get(l.map)!.push([l.key, l.value]);
        }
        const maps = new Map<string, MapView>();
        for (const [mi, entries] of seen) maps.set(meta[mi]!.name, new SnapshotMap(meta[mi]!, entries));
        this.sink(rf.view, r.records, maps);
        break;
      }
      case 'snapshot': {
        for (const m of r.maps) {
          const rf = this.byIndex.get(m.family);
          if (!rf) continue;
          const meta = this.trace.header.families[m.family]!.maps[m.map]!;
          (rf.view.maps as Map<string, MapView>).set(meta.name, new SnapshotMap(meta, m.entries ?? [], m.entries ? undefined : m.count));
        }
        this.current = { meta: r.meta };
        this.lastMeta = r.meta;
        try {
          await collect();
        } finally {
          this.current = undefined;
        }
        this.played++;
        break;
      }
      case 'footer':
        break;
    }
  }

  /** Plays the records in order: all of them, or up to and including snapshot `until` (0-based). */
  async play(collect: () => Promise<void>, until?: number): Promise<void> {
    for (const r of this.trace.records) {
      if (until !== undefined && this.played > until) break;
      await this.apply(r, collect);
    }
  }

  beginCollect(): CollectClock | null {
    return this.current ? { now: this.current.meta.now, gc: this.current.meta.gc } : null;
  }

  bpfStatsOn(): boolean {
    return this.lastMeta?.bpfStats ?? false;
  }

  async stop(): Promise<void> {
    this.restoreVms?.();
    this.restoreVms = undefined;
    this.files?.remove();
  }
}
