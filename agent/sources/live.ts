// The live source: BPF objects loaded into this kernel (agent/loader.ts), every family's
// ring buffer read by one worker thread, cgroup ids resolved against this host's memory
// hierarchy.
import { readFileSync } from 'node:fs';
import { enableRunTimeStats, libbpfVersion, releaseFreedMemory } from '../../bpf/libbpf.js';
import { RingBufferReader } from '../../bpf/ringbuf.js';
import { CgroupResolver, MemoryStatCache, findMemoryHierarchy } from '../cgroups.js';
import { HostRefresher } from './refresh.js';
import { ensureTracefs } from '../kernel.js';
import { Loader, type LoadOptions, type LoadedFamily, type ProbeStatus } from '../loader.js';
import { log } from '../log.js';
import { Btf } from '../../bpf/btf.js';
import type { FamilySpec } from '../model/family.js';
import type { AgentServices } from '../services/index.js';
import type { Config } from '../config.js';
import type { EventSink, HostView, Source } from './source.js';

const TRIM_EVERY_MS = 10_000;

export class LiveSource implements Source {
  readonly kind = 'live';
  readonly loader: Loader;
  readonly host: HostView;
  private stats: { close(): void } | undefined;
  private reader: RingBufferReader | undefined;

  constructor(
    private readonly config: Config,
    private readonly specs: readonly FamilySpec[],
    opts: LoadOptions,
    readonly services: AgentServices,
  ) {
    this.loader = new Loader(opts, services.kernel);
    const h = config.cgroups.root ? { version: findMemoryHierarchy()?.version ?? 2, mountPoint: config.cgroups.root } : findMemoryHierarchy();
    const refresher = new HostRefresher();
    refresher.add(services.vms.livenessJob());
    // Each scrape frees what it allocated outside the JS heap (batched-read buffers when a
    // map shrinks, 64 KiB exposition chunks, libbpf's call buffers); glibc keeps those pages.
    // Handing them back every 10 s costs 0.2-2 ms and took 5-12 MB off the RSS at 2,000
    // cgroups x 200 VMs (in-process mallinfo2 before and after).
    refresher.every(TRIM_EVERY_MS, releaseFreedMemory);
    let cgroups: HostView['cgroups'];
    if (h) {
      cgroups = { hierarchy: h, resolver: new CgroupResolver(h), memoryStats: new MemoryStatCache(h) };
      refresher.add(cgroups.memoryStats as MemoryStatCache);
      refresher.add(cgroups.resolver.aliveJob());
      refresher.add(cgroups.resolver.walkJob());
    }
    this.host = { cgroups, refresher };
    if (!h) log('warn', 'no memory cgroup hierarchy mounted: cgroup labels will be "unknown"');
  }

  get families(): readonly LoadedFamily[] {
    return this.loader.families;
  }

  get status(): readonly ProbeStatus[] {
    return this.loader.status;
  }

  get build(): { kernel: string; libbpf: string } {
    return { kernel: this.services.kernel.release, libbpf: libbpfVersion };
  }

  start(sink: EventSink): void {
    const cfg = this.config;
    if (!ensureTracefs()) log('warn', 'tracefs not mounted and mount failed: tracepoint candidates will not attach');
    if (cfg.bpf.stats) {
      try {
        this.stats = enableRunTimeStats();
      } catch (e) {
        log('warn', 'could not enable BPF run-time stats', { error: (e as Error).message });
      }
    }
    for (const f of this.specs) {
      const fam = this.loader.loadFamily(f);
      if (fam) {
        try {
          f.setup?.(fam, cfg);
        } catch (e) {
          log('error', 'family setup failed; it runs with defaults', { family: f.name, error: (e as Error).message });
        }
      }
      if (fam && f.events) this.addEvents(fam, f.events.map, sink);
    }
    this.reader?.start();
    this.host.refresher?.start();
    // Attach is over: the parsed kernel BTF served only the candidates' prechecks (a later
    // lookup reads it again), and libbpf's parsing left freed C heap behind.
    Btf.releaseCache();
    releaseFreedMemory();
  }

  private addEvents(fam: LoadedFamily, mapName: string, sink: EventSink): void {
    const map = fam.maps.get(mapName);
    if (!map) return; // the agent reports the unusable ring buffer
    const onError = (message: string): void =>
      log('error', "ring buffer reader failed; this family's events are no longer read", { family: fam.spec.name, error: message });
    try {
      this.reader ??= new RingBufferReader();
      this.reader.add(map.fd, (records) => sink(fam, records, fam.maps), { onError });
    } catch (e) {
      onError((e as Error).message);
    }
  }

  /** Resolves when the ring-buffer worker drains every family's ring (start() returns
   * before the worker thread has booted). */
  eventsReady(): Promise<void> {
    return this.reader?.ready ?? Promise.resolve();
  }

  bpfStatsOn(): boolean {
    if (this.stats) return true;
    try {
      return readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim() === '1';
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    this.host.refresher?.stop();
    await this.reader?.stop();
    this.reader = undefined;
    this.loader.destroy();
    this.stats?.close();
    this.stats = undefined;
  }
}
