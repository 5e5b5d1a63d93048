// The one metric catalog. The exporter, the dashboards and the alert rules import names
// from here, and test/catalog.test.ts fails if the exposition and this list disagree.
// Names follow Prometheus conventions: counters end in _total, base units (_seconds,
// _bytes), `promtool check metrics` clean.

export type MetricType = 'counter' | 'gauge' | 'histogram';

export interface MetricDef {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly labels: readonly string[];
  /** Base unit, for dashboards and docs ('seconds', 'bytes', 'pages', ...). */
  readonly unit?: string;
  /** Which probe family produces it ('agent' for self-metrics). */
  readonly family: string;
}

function def(family: string, name: string, type: MetricType, labels: readonly string[], help: string, unit?: string): MetricDef {
  return unit === undefined ? { name, type, help, labels, family } : { name, type, help, labels, family, unit };
}

const CG = ['cgroup'] as const;

export const M = {
  // ---- the agent itself ----
  buildInfo: def('agent', 'hvwatch_build_info', 'gauge', ['version', 'kernel', 'libbpf'],
    'Always 1; labels carry the agent version, the kernel release and the libbpf version.'),
  probeInfo: def('agent', 'hvwatch_probe_info', 'gauge', ['probe', 'attach', 'target'],
    'Always 1 for each attached probe; labels say which attach candidate it took.'),
  probeAttached: def('agent', 'hvwatch_probe_attached', 'gauge', ['probe'],
    '1 if the enabled probe attached through one of its candidates, 0 if none worked.'),
  probeAttachFailures: def('agent', 'hvwatch_probe_attach_failures_total', 'counter', ['probe'],
    'Attach candidates that failed to load or attach, per probe (reasons in `hvwatch probes`).'),
  progRuns: def('agent', 'hvwatch_bpf_program_runs_total', 'counter', ['probe', 'program'],
    'Times the kernel ran each attached BPF program (needs BPF run-time stats enabled).'),
  progRunSeconds: def('agent', 'hvwatch_bpf_program_run_seconds_total', 'counter', ['probe', 'program'],
    'Time the kernel spent running each attached BPF program (needs BPF run-time stats enabled).', 'seconds'),
  bpfStatsEnabled: def('agent', 'hvwatch_bpf_stats_enabled', 'gauge', [],
    '1 if the kernel is accounting BPF program run time (kernel.bpf_stats_enabled or BPF_ENABLE_STATS).'),
  ringbufEvents: def('agent', 'hvwatch_ringbuf_events_total', 'counter', ['family'],
    'Events received from a family\'s BPF ring buffer.'),
  ringbufDropped: def('agent', 'hvwatch_ringbuf_dropped_events_total', 'counter', ['family'],
    'Events the BPF side could not reserve in the ring buffer because it was full.'),
  mapFull: def('agent', 'hvwatch_bpf_map_full_errors_total', 'counter', ['family'],
    'Updates the BPF side could not make because a map was full.'),
  mapEntries: def('agent', 'hvwatch_bpf_map_entries', 'gauge', ['family', 'map'],
    'Entries in each BPF map read by the agent.'),
  mapCapacity: def('agent', 'hvwatch_bpf_map_capacity_entries', 'gauge', ['family', 'map'],
    'Maximum entries of each BPF map read by the agent.'),
  cardinalityDropped: def('agent', 'hvwatch_cardinality_dropped_total', 'counter', ['label'],
    'Label values refused by the cardinality budget; their samples are folded into the value "_other".'),
  cgroupUnresolved: def('agent', 'hvwatch_cgroup_unresolved_total', 'counter', [],
    'Cgroup id lookups that matched no directory in the memory hierarchy (labelled cgroup="unknown").'),
  collectSeconds: def('agent', 'hvwatch_collect_duration_seconds', 'gauge', [],
    'Time the last scrape spent reading BPF maps and cgroupfs.', 'seconds'),

  // ---- memcg family (tracepoint tier) ----
  memcgWbStarted: def('memcg', 'hvwatch_memcg_writeback_started_pages_total', 'counter', CG,
    'Pages that entered writeback, per memory cgroup (NR_WRITEBACK increments).', 'pages'),
  memcgWbCompleted: def('memcg', 'hvwatch_memcg_writeback_completed_pages_total', 'counter', CG,
    'Pages whose writeback completed, per memory cgroup (NR_WRITEBACK decrements).', 'pages'),
  memcgWbInflight: def('memcg', 'hvwatch_memcg_writeback_inflight_pages', 'gauge', CG,
    'Pages started and not yet completed since the probe attached (writeback begun before attach is not counted).', 'pages'),
  memcgWbWaits: def('memcg', 'hvwatch_memcg_writeback_waits_total', 'counter', CG,
    'Times a task of this memory cgroup waited for a folio under writeback (writeback:folio_wait_writeback).'),
  memcgUnchargeBatches: def('memcg', 'hvwatch_memcg_uncharge_batches_total', 'counter', CG,
    'Uncharge batches, per memory cgroup (PGPGOUT events; cgroup v1 accounting).'),
  memcgUnchargedPages: def('memcg', 'hvwatch_memcg_uncharged_pages_total', 'counter', CG,
    'Pages uncharged, per memory cgroup (sum of PGPGOUT batch sizes; cgroup v1 accounting).', 'pages'),
  memcgUnchargeBatchPages: def('memcg', 'hvwatch_memcg_uncharge_batch_pages', 'histogram', CG,
    'Pages per uncharge batch, per memory cgroup.', 'pages'),
  memcgStatDirty: def('memcg', 'hvwatch_memcg_stat_dirty_bytes', 'gauge', CG,
    'Dirty page cache of the cgroup, from memory.stat at scrape time.', 'bytes'),
  memcgStatWriteback: def('memcg', 'hvwatch_memcg_stat_writeback_bytes', 'gauge', CG,
    'Page cache under writeback in the cgroup, from memory.stat at scrape time.', 'bytes'),

  // ---- memcg family, function tiers (fentry/kprobe) and race indicators ----
  memcgWbLatency: def('memcg_fn', 'hvwatch_memcg_writeback_latency_seconds', 'histogram', CG,
    'Time from a folio\'s writeback start to its writeback end, per memory cgroup (at start).', 'seconds'),
  memcgWbEndDuration: def('memcg_fn', 'hvwatch_memcg_writeback_end_duration_seconds', 'histogram', CG,
    'Time spent inside writeback end (__folio_end_writeback), per memory cgroup.', 'seconds'),
  memcgUnchargeDuration: def('memcg_fn', 'hvwatch_memcg_uncharge_duration_seconds', 'histogram', CG,
    'Time spent inside one uncharge call (__mem_cgroup_uncharge[_folios]), per memory cgroup of its first folio.', 'seconds'),
  memcgUnchargedFolios: def('memcg_fn', 'hvwatch_memcg_uncharged_folios_total', 'counter', CG,
    'Folios uncharged (uncharge_folio), per memory cgroup.'),
  memcgRaceEvents: def('memcg_fn', 'hvwatch_memcg_race_events_total', 'counter', ['kind'],
    'memcg writeback/uncharge race indicators by kind (README "Race indicators"); any increase deserves a look.'),
  memcgRaceStateEvictions: def('memcg_fn', 'hvwatch_memcg_race_state_evictions_total', 'counter', [],
    'Per-folio race-tracking entries evicted by the LRU bound before their writeback ended.'),
  memcgRaceStateReaped: def('memcg_fn', 'hvwatch_memcg_race_state_reaped_total', 'counter', [],
    'Writeback-end markers older than 1 s (their exit was never seen) that were cleared instead of trusted.'),
  memcgWbUnpairedEnds: def('memcg_fn', 'hvwatch_memcg_writeback_unpaired_ends_total', 'counter', [],
    'Writeback ends with no recorded start (started before attach, or evicted): no latency for them.'),
} as const satisfies Record<string, MetricDef>;

export type MetricKey = keyof typeof M;

export const ALL_METRICS: readonly MetricDef[] = Object.values(M);

export function metricByName(name: string): MetricDef | undefined {
  return ALL_METRICS.find((m) => m.name === name);
}
