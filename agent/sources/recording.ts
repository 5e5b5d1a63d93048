// The recording source: the live source, plus a trace of what the pipeline read. Each
// collection first snapshots the live maps, then runs the pipeline over that snapshot, so
// what /metrics serves while recording is exactly what a replay of the trace computes.
import { BpfObject, type ProgStats } from '../../bpf/libbpf.js';
import { M } from '../catalog.js';
import { VERSION as AGENT_VERSION } from '../agent.js';
import { log } from '../log.js';
import type { MetricStore } from '../export/store.js';
import type { TraceHeader, TraceMapMeta } from '../record/format.js';
import { TraceWriter, type SnapshotMapOut } from '../record/writer.js';
import { hostname } from 'node:os';
import { deflateRawSync } from 'node:zlib';
import { HostFiles, HostTables, TappingCgroupResolver, tapMemoryStats, tapVms } from './host.js';
import type { LiveSource } from './live.js';
import { SnapshotMap } from './snapshot-map.js';
import type { CollectClock, EventSink, FamilyView, HostView, MapView, ProgramView, Source } from './source.js';
import type { Config } from '../config.js';

export interface RecordOptions {
  file: string;
  maxBytes?: number;
  intervalMs: number;
  compress?: boolean;
}

interface RecFamily {
  view: { -readonly [K in keyof FamilyView]: FamilyView[K] };
  live: FamilyView;
  index: number;
  metas: TraceMapMeta[];
  lastStats: ProgStats[];
}

/** Records a live map's lookups (the event handlers' stack lookups) for the events record. */
class TappedMap implements MapView {
  constructor(
    private readonly m: MapView,
    private readonly index: number,
    private readonly out: { map: number; key: Buffer; value: Buffer | undefined }[],
  ) {}
  get name(): string {
    return this.m.name;
  }
  get keySize(): number {
    return this.m.keySize;
  }
  get valueSize(): number {
    return this.m.valueSize;
  }
  get maxEntries(): number {
    return this.m.maxEntries;
  }
  get percpu(): boolean {
    return this.m.percpu;
  }
  keys(): Buffer[] {
    return this.m.keys();
  }
  entries(): Iterable<[Buffer, Buffer]> {
    return this.m.entries();
  }
  lookup(key: Buffer): Buffer | undefined {
    return this.note(key, this.m.lookup(key));
  }
  lookupRaw(key: Buffer): Buffer | undefined {
    return this.note(key, this.m.lookupRaw(key));
  }
  count(): number {
    return this.m.count();
  }
  counter(i: number): number {
    return this.m.counter(i);
  }
  delete(key: Buffer): boolean {
    return this.m.delete(key);
  }
  update(key: Buffer, value: Buffer, flags?: number): void {
    this.m.update(key, value, flags);
  }
  private note(key: Buffer, value: Buffer | undefined): Buffer | undefined {
    // A per-CPU raw value is wider than the recorded value size; such lookups are not replayable.
    if (value === undefined || value.length === this.m.valueSize) this.out.push({ map: this.index, key: Buffer.from(key), value: value && Buffer.from(value) });
    return value;
  }
}

export class RecordingSource implements Source {
  readonly kind = 'record';
  readonly host: HostView;
  private readonly tables = new HostTables();
  private readonly files: HostFiles | undefined;
  private readonly fams: RecFamily[] = [];
  private writer: TraceWriter | undefined;
  private restoreVms: (() => void) | undefined;
  private snapshot: SnapshotMapOut[] = [];
  private store: MetricStore | undefined;
  private stopped = false;
  private lastBpfStats = false;
  /** Why the next collection happens (the record command's timer sets "interval"). */
  cause: 'interval' | 'scrape' | 'final' = 'scrape';

  constructor(
    readonly live: LiveSource,
    private readonly config: Config,
    private readonly opts: RecordOptions,
  ) {
    const cg = live.host.cgroups;
    if (cg) {
      this.files = new HostFiles(cg.hierarchy.version);
      const resolver = new TappingCgroupResolver(cg.hierarchy, this.tables);
      // The live resolver is not the one asked here: this one's checks and walks are the jobs.
      live.host.refresher?.add(resolver.aliveJob());
      live.host.refresher?.add(resolver.walkJob());
      this.host = {
        refresher: live.host.refresher,
        cgroups: { resolver, hierarchy: this.files.hierarchy, memoryStats: tapMemoryStats(cg.memoryStats, this.tables, cg.hierarchy.version) },
      };
    } else {
      this.host = { cgroups: undefined, refresher: live.host.refresher };
    }
  }

  get families(): readonly FamilyView[] {
    return this.fams.map((f) => f.view);
  }

  get status(): LiveSource['status'] {
    return this.live.status;
  }

  get build(): { kernel: string; libbpf: string } {
    return this.live.build;
  }

  get writerStats(): TraceWriter['stats'] | undefined {
    return this.writer?.stats;
  }

  /** Where the recorder's own metrics (bytes written, records dropped) go. */
  attachStore(store: MetricStore): void {
    this.store = store;
    for (const type of ['snapshot', 'events', 'ident']) store.inc(M.recordDropped, { type }, 0);
    store.set(M.recordBytes, {}, 0);
  }

  start(sink: EventSink): void {
    this.restoreVms = tapVms(this.tables, this.live.services.vms);
    this.live.start((fam, records, maps) => this.onEvents(sink, fam, records, maps));
    const families: TraceHeader['families'] = [];
    this.live.families.forEach((live, index) => {
      const exported = new Set(live.spec.maps.map((e) => e.map));
      const metas: TraceMapMeta[] = [];
      for (const [name, m] of live.maps) {
        if (!m.walkable) continue; // per-thread state and hook chains: nothing the pipeline reads
        const ids = live.typeIds.get(name) ?? { key: 0, value: 0 };
        // Maps the pipeline only counts (pointer-keyed state) are recorded as their count.
        const countOnly = m.keySize === 0 || (live.spec.watchMaps?.includes(name) && !exported.has(name));
        metas.push({
          name,
          keySize: m.keySize,
          valueSize: m.valueSize,
          maxEntries: m.maxEntries,
          percpu: m.percpu,
          keyType: ids.key,
          valueType: ids.value,
          content: countOnly ? 'count' : 'full',
        });
      }
      const obj = BpfObject.open(live.path);
      let btf: Buffer;
      try {
        btf = obj.rawBtf();
      } finally {
        obj.close();
      }
      families.push({
        name: live.spec.name,
        object: live.spec.object,
        btf: deflateRawSync(btf).toString('base64'),
        maps: metas,
        programs: live.programs.map((p) => ({ probe: p.probe, program: p.program.name })),
      });
      const view: RecFamily['view'] = {
        spec: live.spec,
        btf: live.btf,
        typeIds: live.typeIds,
        maps: live.maps,
        programs: [],
      };
      const rf: RecFamily = { view, live, index, metas, lastStats: live.programs.map(() => ({ runCount: 0, runTimeNs: 0 })) };
      view.programs = live.programs.map((p, i) => ({
        probe: p.probe,
        program: { name: p.program.name, stats: () => (rf.lastStats[i] = p.program.stats()) } satisfies ProgramView,
      }));
      this.fams.push(rf);
    });
    const header: TraceHeader = {
      format: 'hvwatch-trace',
      agent: AGENT_VERSION,
      kernel: this.live.build.kernel,
      libbpf: this.live.build.libbpf,
      hostname: hostname(),
      started: new Date().toISOString(),
      intervalMs: this.opts.intervalMs,
      maxBytes: this.opts.maxBytes ?? null,
      cardinality: { cgroups: this.config.cardinality.cgroups, vms: this.config.cardinality.vms },
      cgroupVersion: this.live.host.cgroups?.hierarchy.version ?? null,
      probes: this.live.status.map((s) => ({
        name: s.name,
        family: s.family,
        description: s.description,
        enabled: s.enabled,
        skipped: s.skipped,
        hot: s.hot,
        candidates: s.candidates.map((c) => ({ attach: c.attach, target: c.target, ok: c.ok, error: c.error })),
        chosen: s.chosen,
        absent: s.absent,
      })),
      families,
    };
    this.writer = new TraceWriter(this.opts.file, header, {
      maxBytes: this.opts.maxBytes,
      compress: this.opts.compress,
      onDrop: (type, n) => {
        if (type !== 'ident' && this.writer && this.writer.stats.dropped[type] === n)
          log('warn', 'trace reached --max-bytes: later records are dropped and counted', { file: this.opts.file });
        this.store?.inc(M.recordDropped, { type }, n);
      },
    });
    this.store?.set(M.recordBytes, {}, this.writer.stats.bytes);
  }

  private onEvents(sink: EventSink, live: FamilyView, records: Buffer[], maps: ReadonlyMap<string, MapView>): void {
    const rf = this.fams.find((f) => f.live === live);
    if (!rf || this.stopped) {
      if (rf) sink(rf.view, records, maps);
      return;
    }
    const lookups: { map: number; key: Buffer; value: Buffer | undefined }[] = [];
    const tapped = new Map<string, MapView>();
    for (const [name, m] of maps) {
      const i = rf.metas.findIndex((x) => x.name === name);
      if (i >= 0) tapped.set(name, new TappedMap(m, i, lookups));
    }
    sink(rf.view, records, tapped);
    this.flushIdent();
    this.writer?.writeEvents({ family: rf.index, records: records.map((r) => Buffer.from(r)), lookups });
    this.store?.set(M.recordBytes, {}, this.writer?.stats.bytes ?? 0);
  }

  private flushIdent(): void {
    const d = this.tables.takeDelta();
    if (d) this.writer?.writeIdent(d);
  }

  beginCollect(clock: CollectClock): CollectClock {
    this.snapshot = [];
    for (const rf of this.fams) {
      const maps = new Map<string, MapView>();
      rf.metas.forEach((meta, mi) => {
        const live = rf.live.maps.get(meta.name)!;
        if (meta.content === 'count') {
          const n = meta.keySize === 0 ? 0 : live.count();
          this.snapshot.push({ family: rf.index, map: mi, entries: null, count: n });
          maps.set(meta.name, meta.keySize === 0 ? live : new SnapshotMap(meta, [], n));
          return;
        }
        const entries = [...live.entries()];
        this.snapshot.push({ family: rf.index, map: mi, entries, count: entries.length });
        maps.set(meta.name, new SnapshotMap(meta, entries, undefined, (k) => live.delete(k)));
      });
      rf.view.maps = maps;
    }
    return clock;
  }

  endCollect(clock: CollectClock): void {
    this.flushIdent();
    const progs = this.fams.flatMap((f) => f.lastStats.map((s) => [s.runCount, s.runTimeNs] as [number, number]));
    this.writer?.writeSnapshot({ now: clock.now, gc: clock.gc, cause: this.cause, bpfStats: this.lastBpfStats, progs }, this.snapshot);
    this.cause = 'scrape';
    this.store?.set(M.recordBytes, {}, this.writer?.stats.bytes ?? 0);
  }

  bpfStatsOn(): boolean {
    return (this.lastBpfStats = this.live.bpfStatsOn());
  }

  async stop(): Promise<void> {
    await this.live.stop(); // drains the ring buffers: their last events are still recorded
    this.stopped = true;
    const footer = this.writer?.close('stop');
    if (footer) log('info', 'trace written', { file: this.opts.file, bytes: footer.bytes, records: footer.records, dropped: JSON.stringify(footer.dropped) });
    this.restoreVms?.();
    this.files?.remove();
  }
}
