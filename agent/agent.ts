// The agent: loads the probe families, keeps the MetricStore current on each scrape, and
// owns every kernel resource it created so that stop() leaves nothing attached.
import { readFileSync } from 'node:fs';
import { compileDecoder, type DecodedEvent } from './aggregate/events.js';
import { M } from './catalog.js';
import { MetricStore } from './export/store.js';
import { LabelBudget } from './aggregate/budget.js';
import { checkDecoders, collectMap, UNKNOWN_CGROUP } from './aggregate/collect.js';
import { initFixedSeries } from './aggregate/initial.js';
import type { CgroupResolver, MemoryHierarchy, MemoryStatSource } from './cgroups.js';
import type { Loader, LoadedFamily, ProbeStatus } from './loader.js';
import { FAMILY_MODULES, createFamilies } from './families.js';
import { HASH_MAP, type CollectContext, type EventContext, type FamilyModule, type FamilySpec, type ProbeSpec } from './model/family.js';
import { AgentServices } from './services/index.js';
import type { Config } from './config.js';
import { log, logEnabled } from './log.js';
import { LogLimiter } from './log-limit.js';
import { kubeLabelerFor } from './k8s.js';
import { LiveSource } from './sources/live.js';
import type { FamilyView, MapView, Source } from './sources/source.js';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const GC_INTERVAL_MS = 10_000;
/** How many race events the bounded log keeps (GET /api/races). */
const RACE_LOG_SIZE = 256;
// Race indicator log lines: a burst of 20, then 2 a second; the rest are counted
// (hvwatch_log_lines_suppressed_total). A storm of races once cost one stderr write per
// event, more than the decoding (bench/RESULTS.md).
const RACE_LINES_BURST = 20;
const RACE_LINES_PER_S = 2;
// A family whose collection step throws does so at every scrape: its error line is written
// a burst of 3 times, then once a minute per family and stage; every failure is counted
// (hvwatch_collect_errors_total) and the lines held back too.
const COLLECT_LINES_BURST = 3;
const COLLECT_LINES_PER_S = 1 / 60;
/** Where in a family's collection a step threw (hvwatch_collect_errors_total{stage}). */
export const COLLECT_STAGES = ['prepare', 'map', 'collect', 'events'] as const;
export type CollectStage = (typeof COLLECT_STAGES)[number];
// hv_errors indices (bpf/src/hvwatch.h enum hv_error).
const HV_ERR_MAP_FULL = 0;
const HV_ERR_RINGBUF_FULL = 1;

function hotOptedIn(cfg: Config, p: ProbeSpec): boolean {
  return cfg.probes.hot.includes(p.name) || cfg.probes.hot.includes('all');
}

export function probeEnabled(cfg: Config, p: ProbeSpec): { on: true } | { on: false; why: string } {
  if (cfg.probes.disable.includes(p.name)) return { on: false, why: 'disabled by config (probes.disable)' };
  if (p.hot && !hotOptedIn(cfg, p)) {
    return { on: false, why: `hot probe, opt in with probes.hot or --hot ${p.name}: ${p.hot}` };
  }
  return { on: true };
}

function candidatesFor(cfg: Config, p: ProbeSpec): ProbeSpec['candidates'] {
  const o = cfg.probes.attach[p.name];
  if (!o) return p.candidates;
  // An override keeps the declared programs of the same tier and swaps the target.
  // An override keeps the declared programs of the same tier (each per-thread state variant
  // of it) and swaps the target.
  return o.flatMap((c): ProbeSpec['candidates'] => {
    const same = p.candidates.filter((d) => d.attach === c.attach);
    const decls = same.some((d) => !d.hot) ? same.filter((d) => !d.hot) : same.slice(0, 1);
    if (decls.length === 0) return [{ attach: c.attach, target: c.target, programs: [] }];
    return decls.map((decl) => ({ attach: c.attach, target: c.target, programs: decl.programs, targets: decl.targets, hot: decl.hot, state: decl.state }));
  });
}

/** This kernel's BPF, loaded as the config says (also what `hvwatch record` wraps). */
export function liveSource(config: Config, families: readonly FamilySpec[], services: AgentServices): LiveSource {
  return new LiveSource(
    config,
    families,
    {
      enabled: (p) => probeEnabled(config, p),
      candidates: (p) => candidatesFor(config, p),
      hotAllowed: (p) => hotOptedIn(config, p),
      mapSizes: { perObject: config.bpf.mapEntries, perFolio: config.bpf.raceStateEntries },
      btfCustomPath: config.bpf.btfPath,
      stateAllowed: (state) => config.bpf.threadState === 'auto' || state === HASH_MAP,
    },
    services,
  );
}

/** Where an agent's maps, events and host facts come from, made from its families and
 * services: a recorder around liveSource (`hvwatch record`), a trace (`hvwatch replay`). */
export type SourceFactory = (families: readonly FamilySpec[], services: AgentServices) => Source;

export class Agent {
  readonly store = new MetricStore();
  readonly budget: LabelBudget;
  /** This agent's services, handed to each family's create() (agent/services/index.ts). */
  readonly services: AgentServices;
  /** The families, each created for this agent from its module. */
  readonly families: readonly FamilySpec[];
  readonly cgroups: { resolver: CgroupResolver; hierarchy: MemoryHierarchy; memoryStats: MemoryStatSource } | undefined;
  /** Where maps, events and host facts come from: live BPF, a recorder over it, or a trace. */
  readonly source: Source;
  private readonly eventDecoders = new Map<string, (record: Buffer) => DecodedEvent>();
  private readonly raceLines = new LogLimiter(RACE_LINES_BURST, RACE_LINES_PER_S);
  private readonly collectLines = new Map<string, LogLimiter>();
  /** The latest race events, newest last (GET /api/races). */
  readonly races: Record<string, unknown>[] = [];
  private lastGc = 0;
  private collecting: Promise<void> | undefined;
  ready = false;

  constructor(
    readonly config: Config,
    modules: readonly FamilyModule[] = FAMILY_MODULES,
    source?: SourceFactory,
  ) {
    this.services = new AgentServices(config);
    const families = (this.families = createFamilies(config, this.services, modules));
    for (const f of families) checkDecoders(f); // an unknown decoder name is an error here, before any load
    this.budget = new LabelBudget({ cgroup: config.cardinality.cgroups, vm: config.cardinality.vms }, (label) =>
      this.store.inc(M.cardinalityDropped, { label }),
    );
    this.source = source ? source(families, this.services) : liveSource(config, families, this.services);
    this.cgroups = this.source.host.cgroups;
    this.cgroups?.resolver.setKubeLabeler(kubeLabelerFor(config.cgroups)); // namespace/pod/container (agent/k8s.ts)
    this.cgroups?.resolver.setLinger(config.cgroups.removedSeconds); // README "Series lifecycle"
  }

  /** The live loader (benches and tests reach the loaded objects through it). */
  get loader(): Loader {
    let s: Source = this.source;
    while (!(s instanceof LiveSource)) {
      const inner = (s as { live?: Source }).live;
      if (!inner) throw new Error(`a ${this.source.kind} agent has no BPF loader`);
      s = inner;
    }
    return s.loader;
  }

  start(): void {
    this.source.start((fam, records, maps) => this.deliverEvents(fam, records, maps));
    for (const fam of this.source.families) {
      const ev = fam.spec.events;
      if (!ev) continue;
      const layout = fam.btf.structLayout(ev.struct);
      if (!layout || !fam.maps.get(ev.map)) {
        log('error', 'event ring buffer not usable; events of this family are lost', { family: fam.spec.name, map: ev.map, struct: ev.struct });
        continue;
      }
      this.eventDecoders.set(fam.spec.name, compileDecoder(layout));
      this.store.inc(M.ringbufEvents, { family: fam.spec.name }, 0);
    }
    initFixedSeries(
      this.store,
      this.source.families.map((f) => f.spec.name),
    );
    this.store.inc(M.logLinesSuppressed, { reason: 'race_indicator' }, 0);
    this.store.inc(M.logLinesSuppressed, { reason: 'collect_error' }, 0);
    for (const fam of this.source.families) for (const stage of COLLECT_STAGES) this.store.inc(M.collectErrors, { family: fam.spec.name, stage }, 0);
    this.publishProbeStatus();
    this.store.set(M.buildInfo, { version: VERSION, kernel: this.source.build.kernel, libbpf: this.source.build.libbpf }, 1);
    this.services.started();
    this.ready = true;
  }

  // One decode + onEvents for every source: `maps` answers the handlers' lookups (stacks).
  private deliverEvents(fam: FamilyView, records: Buffer[], maps: ReadonlyMap<string, MapView>): void {
    const ev = fam.spec.events;
    const decode = this.eventDecoders.get(fam.spec.name);
    if (!ev || !decode) return;
    let suppressed = 0;
    const now = Date.now();
    const ctx: EventContext = {
      family: fam,
      store: this.store,
      resolveCgroup: (id) => this.cgroups?.resolver.resolve(BigInt(id)) ?? UNKNOWN_CGROUP,
      stack: (id) => {
        const k = Buffer.alloc(4);
        k.writeUInt32LE(id);
        const raw = maps.get('stacks')?.lookupRaw(k);
        return raw ? this.services.symbols.decodeStack(raw) : [];
      },
      logRace: (record, level = 'warn') => {
        this.races.push(record);
        if (this.races.length > RACE_LOG_SIZE) this.races.shift();
        if (!logEnabled(level)) return;
        if (!this.raceLines.take(now)) {
          suppressed++;
          return;
        }
        const held = this.raceLines.takeSuppressed();
        if (held > 0) log('warn', 'race indicator lines suppressed by the rate limit; the events are all counted and in /api/races', { suppressed: held });
        log(level, 'race indicator', { family: fam.spec.name, ...record, stack: (record.stack as string[] | undefined)?.slice(0, 8).join(' < ') });
      },
    };
    this.store.inc(M.ringbufEvents, { family: fam.spec.name }, records.length);
    const events: DecodedEvent[] = new Array<DecodedEvent>(records.length);
    for (let i = 0; i < records.length; i++) events[i] = decode(records[i]!);
    try {
      ev.onEvents(events, ctx);
    } catch (err) {
      this.collectFailed(fam.spec.name, 'events', err);
    } finally {
      if (suppressed > 0) this.store.inc(M.logLinesSuppressed, { reason: 'race_indicator' }, suppressed);
    }
  }

  get status(): ProbeStatus[] {
    return this.source.status as ProbeStatus[];
  }

  /** A loaded family of the live loader (tests and benches run its programs). */
  family(name: string): LoadedFamily | undefined {
    return this.loader.families.find((x) => x.spec.name === name);
  }

  private publishProbeStatus(): void {
    for (const f of this.families) {
      // FamilySpec.presentMetric: 0 when every probe of the family is absent
      const st = this.source.status.filter((s) => s.family === f.name);
      if (f.presentMetric) this.store.set(f.presentMetric, {}, st.length > 0 && st.every((s) => s.absent) ? 0 : 1);
    }
    for (const s of this.source.status) {
      if (!s.enabled) continue;
      this.store.set(M.probeAttached, { probe: s.name }, s.chosen ? 1 : 0);
      if (s.chosen) this.store.set(M.probeInfo, { probe: s.name, attach: s.chosen.attach, target: s.chosen.target }, 1);
      const failed = s.candidates.filter((c) => !c.ok).length;
      this.store.set(M.probeAttachFailures, { probe: s.name }, failed);
    }
  }

  /** Refresh the store from the kernel. Concurrent scrapes share one collection. */
  collect(): Promise<void> {
    if (!this.collecting) {
      this.collecting = Promise.resolve()
        .then(() => this.collectNow())
        .finally(() => (this.collecting = undefined));
    }
    return this.collecting;
  }

  private collectNow(): void {
    const t0 = process.hrtime.bigint();
    let clock = { now: Date.now(), gc: false };
    clock.gc = clock.now - this.lastGc >= GC_INTERVAL_MS;
    const given = this.source.beginCollect?.(clock);
    if (given === null) return;
    clock = given ?? clock;
    const { now, gc } = clock;
    if (gc) this.lastGc = now;
    const ctx: CollectContext = { store: this.store, budget: this.budget, cgroups: this.cgroups, now, gc };
    this.store.beginCollection();
    for (const fam of this.source.families) {
      // Each step of each family is isolated: one that throws is counted and logged, and
      // the family's other steps, the other families and the self-metrics still export.
      try {
        fam.spec.prepare?.(ctx, fam);
      } catch (err) {
        this.collectFailed(fam.spec.name, 'prepare', err);
      }
      for (const e of fam.spec.maps) {
        try {
          collectMap(fam, e, ctx);
        } catch (err) {
          this.collectFailed(fam.spec.name, 'map', err, { map: e.map });
        }
      }
      try {
        this.source.beforeFamilyCollect?.(fam);
        fam.spec.collect?.(ctx, this.store, fam);
      } catch (err) {
        this.collectFailed(fam.spec.name, 'collect', err);
      }
      try {
        for (const name of fam.spec.watchMaps ?? []) {
          const m = fam.maps.get(name);
          if (!m) continue;
          this.store.set(M.mapEntries, { family: fam.spec.name, map: name }, m.count());
          this.store.set(M.mapCapacity, { family: fam.spec.name, map: name }, m.maxEntries);
        }
        this.collectErrors(fam);
      } catch (err) {
        this.collectFailed(fam.spec.name, 'map', err, { map: 'hv_errors/watched maps' });
      }
    }
    try {
      this.services.afterCollect(ctx, this.store); // what spans families (hvwatch_kvm_vm_info)
    } catch (err) {
      this.collectFailed('agent', 'collect', err);
    }
    this.store.sweep(); // series the maps no longer have (their entries were deleted)
    this.collectProgramStats();
    this.store.set(M.bpfStatsEnabled, {}, this.source.bpfStatsOn() ? 1 : 0);
    this.source.host.refresher?.publish(this.store, Date.now());
    this.source.endCollect?.(clock);
    this.store.set(M.collectSeconds, {}, Number(process.hrtime.bigint() - t0) / 1e9);
  }

  /** A family's collection step threw: counted always, logged within the rate limit. */
  private collectFailed(family: string, stage: CollectStage, err: unknown, fields: Record<string, string> = {}): void {
    this.store.inc(M.collectErrors, { family, stage });
    const key = `${family}\u0000${stage}`;
    let lines = this.collectLines.get(key);
    if (!lines) this.collectLines.set(key, (lines = new LogLimiter(COLLECT_LINES_BURST, COLLECT_LINES_PER_S)));
    if (!logEnabled('error')) return;
    if (!lines.take(Date.now())) {
      this.store.inc(M.logLinesSuppressed, { reason: 'collect_error' });
      return;
    }
    const held = lines.takeSuppressed();
    log('error', `collecting family ${family} failed (${stage}); the other families and the agent's own metrics are still exported`, {
      family,
      stage,
      ...fields,
      error: err instanceof Error ? err.message : String(err),
      suppressed: held > 0 ? held : undefined,
    });
  }

  private collectErrors(fam: FamilyView): void {
    const errs = fam.maps.get('hv_errors');
    if (!errs) return;
    this.store.set(M.mapFull, { family: fam.spec.name }, errs.counter(HV_ERR_MAP_FULL));
    this.store.set(M.ringbufDropped, { family: fam.spec.name }, errs.counter(HV_ERR_RINGBUF_FULL));
  }

  private collectProgramStats(): void {
    for (const fam of this.source.families) {
      for (const { probe, program } of fam.programs) {
        const s = program.stats();
        const labels = { probe, program: program.name };
        this.store.set(M.progRuns, labels, s.runCount);
        this.store.set(M.progRunSeconds, labels, s.runTimeNs / 1e9);
      }
    }
  }

  async stop(): Promise<void> {
    this.ready = false;
    await this.source.stop();
  }
}
