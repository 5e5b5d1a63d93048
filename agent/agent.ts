// The agent: loads the probe families, keeps the MetricStore current on each scrape, and
// owns every kernel resource it created so that stop() leaves nothing attached.
import { readFileSync } from 'node:fs';
import { enableRunTimeStats, libbpfVersion } from '../bpf/libbpf.js';
import { RingBufferReader } from '../bpf/ringbuf.js';
import { decodeStruct } from './aggregate/events.js';
import { M, ALL_METRICS } from './catalog.js';
import { MetricStore } from './export/store.js';
import { buildRegistries, type Registries } from './export/registry.js';
import { LabelBudget } from './aggregate/budget.js';
import { collectMap, UNKNOWN_CGROUP, type CollectContext } from './aggregate/collect.js';
import { decodeStack } from './symbols.js';
import { CgroupResolver, findMemoryHierarchy, type MemoryHierarchy } from './cgroups.js';
import { Loader, type LoadedFamily, type ProbeStatus } from './loader.js';
import { FAMILIES } from './probes/index.js';
import type { EventContext, FamilySpec, ProbeSpec } from './probes/model.js';
import type { Config } from './config.js';
import { ensureTracefs, kernelRelease, useVmlinuxBtf } from './kernel.js';
import { log } from './log.js';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const GC_INTERVAL_MS = 10_000;
/** How many race events the bounded log keeps (GET /api/races). */
const RACE_LOG_SIZE = 256;
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
  return o.map((c) => {
    const decl = p.candidates.find((d) => d.attach === c.attach && !d.hot) ?? p.candidates.find((d) => d.attach === c.attach);
    return { attach: c.attach, target: c.target, programs: decl?.programs ?? [], targets: decl?.targets, hot: decl?.hot };
  });
}

export class Agent {
  readonly store = new MetricStore();
  readonly registries: Registries;
  readonly loader: Loader;
  readonly budget: LabelBudget;
  readonly cgroups: { resolver: CgroupResolver; hierarchy: MemoryHierarchy } | undefined;
  private stats: { close(): void } | undefined;
  private readonly readers: RingBufferReader[] = [];
  /** The latest race events, newest last (GET /api/races). */
  readonly races: Record<string, unknown>[] = [];
  private lastGc = 0;
  private collecting: Promise<void> | undefined;
  ready = false;

  constructor(readonly config: Config, readonly families: readonly FamilySpec[] = FAMILIES) {
    this.registries = buildRegistries(ALL_METRICS, this.store);
    this.budget = new LabelBudget({ cgroup: config.cardinality.cgroups, vm: config.cardinality.vms },
      (label) => this.store.inc(M.cardinalityDropped, { label }));
    this.loader = new Loader({
      enabled: (p) => probeEnabled(config, p),
      candidates: (p) => candidatesFor(config, p),
      hotAllowed: (p) => hotOptedIn(config, p),
      mapSizes: { perObject: config.bpf.mapEntries, perFolio: config.bpf.raceStateEntries },
      btfCustomPath: config.bpf.btfPath,
    });
    const h = config.cgroups.root ? { version: findMemoryHierarchy()?.version ?? 2, mountPoint: config.cgroups.root } : findMemoryHierarchy();
    this.cgroups = h ? { hierarchy: h, resolver: new CgroupResolver(h) } : undefined;
    if (!h) log('warn', 'no memory cgroup hierarchy mounted: cgroup labels will be "unknown"');
  }

  start(): void {
    if (this.config.bpf.btfPath) useVmlinuxBtf(this.config.bpf.btfPath);
    if (!ensureTracefs()) log('warn', 'tracefs not mounted and mount failed: tracepoint candidates will not attach');
    if (this.config.bpf.stats) {
      try {
        this.stats = enableRunTimeStats();
      } catch (e) {
        log('warn', 'could not enable BPF run-time stats', { error: (e as Error).message });
      }
    }
    for (const f of this.families) {
      const fam = this.loader.loadFamily(f);
      if (fam) {
        try {
          f.setup?.(fam, this.config);
        } catch (e) {
          log('error', 'family setup failed; it runs with defaults', { family: f.name, error: (e as Error).message });
        }
      }
      if (fam && f.events) this.startEvents(fam, f.events);
    }
    this.publishProbeStatus();
    this.store.set(M.buildInfo, { version: VERSION, kernel: kernelRelease(), libbpf: libbpfVersion }, 1);
    this.ready = true;
  }

  private startEvents(fam: LoadedFamily, ev: NonNullable<FamilySpec['events']>): void {
    const layout = fam.btf.structLayout(ev.struct);
    const map = fam.maps.get(ev.map);
    if (!layout || !map) {
      log('error', 'event ring buffer not usable; events of this family are lost', { family: fam.spec.name, map: ev.map, struct: ev.struct });
      return;
    }
    const labels = { family: fam.spec.name };
    this.store.inc(M.ringbufEvents, labels, 0);
    const stacks = fam.maps.get('stacks');
    const ctx: EventContext = {
      store: this.store,
      resolveCgroup: (id) => this.cgroups?.resolver.resolve(BigInt(id)) ?? UNKNOWN_CGROUP,
      stack: (id) => {
        const k = Buffer.alloc(4);
        k.writeUInt32LE(id);
        const raw = stacks?.lookupRaw(k);
        return raw ? decodeStack(raw) : [];
      },
      logRace: (record) => {
        this.races.push(record);
        if (this.races.length > RACE_LOG_SIZE) this.races.shift();
        log('warn', 'race indicator', { family: fam.spec.name, ...record, stack: (record.stack as string[] | undefined)?.slice(0, 8).join(' < ') });
      },
    };
    const reader = new RingBufferReader(map.fd, (records) => {
      this.store.inc(M.ringbufEvents, labels, records.length);
      ev.onEvents(records.map((r) => decodeStruct(layout, r)), ctx);
    }, { onError: (message) => log('error', 'ring buffer reader failed; this family\'s events are no longer read', { family: fam.spec.name, error: message }) });
    reader.start();
    this.readers.push(reader);
  }

  get status(): ProbeStatus[] {
    return this.loader.status;
  }

  family(name: string): LoadedFamily | undefined {
    return this.loader.families.find((f) => f.spec.name === name);
  }

  private publishProbeStatus(): void {
    for (const s of this.loader.status) {
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
      this.collecting = Promise.resolve().then(() => this.collectNow()).finally(() => (this.collecting = undefined));
    }
    return this.collecting;
  }

  private collectNow(): void {
    const t0 = process.hrtime.bigint();
    const now = Date.now();
    const gc = now - this.lastGc >= GC_INTERVAL_MS;
    if (gc) this.lastGc = now;
    const ctx: CollectContext = { store: this.store, budget: this.budget, cgroups: this.cgroups, now, gc };
    for (const fam of this.loader.families) {
      try {
        fam.spec.prepare?.(ctx, fam);
      } catch (err) {
        log('error', 'preparing a family\'s collection failed', { family: fam.spec.name, error: (err as Error).message });
      }
      for (const e of fam.spec.maps) {
        try {
          collectMap(fam, e, ctx);
        } catch (err) {
          log('error', 'collecting map failed', { family: fam.spec.name, map: e.map, error: (err as Error).message });
        }
      }
      fam.spec.collect?.(ctx, this.store, fam);
      for (const name of fam.spec.watchMaps ?? []) {
        const m = fam.maps.get(name);
        if (!m) continue;
        this.store.set(M.mapEntries, { family: fam.spec.name, map: name }, m.count());
        this.store.set(M.mapCapacity, { family: fam.spec.name, map: name }, m.maxEntries);
      }
      this.collectErrors(fam);
    }
    this.collectProgramStats();
    this.store.set(M.bpfStatsEnabled, {}, this.bpfStatsOn() ? 1 : 0);
    this.store.set(M.collectSeconds, {}, Number(process.hrtime.bigint() - t0) / 1e9);
  }

  private collectErrors(fam: LoadedFamily): void {
    const errs = fam.maps.get('hv_errors');
    if (!errs) return;
    this.store.set(M.mapFull, { family: fam.spec.name }, errs.counter(HV_ERR_MAP_FULL));
    this.store.set(M.ringbufDropped, { family: fam.spec.name }, errs.counter(HV_ERR_RINGBUF_FULL));
  }

  private collectProgramStats(): void {
    for (const fam of this.loader.families) {
      for (const { probe, program } of fam.programs) {
        const s = program.stats();
        const labels = { probe, program: program.name };
        this.store.set(M.progRuns, labels, s.runCount);
        this.store.set(M.progRunSeconds, labels, s.runTimeNs / 1e9);
      }
    }
  }

  private bpfStatsOn(): boolean {
    if (this.stats) return true;
    try {
      return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1';
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    this.ready = false;
    await Promise.all(this.readers.splice(0).map((r) => r.stop()));
    this.loader.destroy();
    this.stats?.close();
    this.stats = undefined;
  }
}
