// The memcg_fn family's metrics: the memcg function tiers (fentry/kprobe) and race indicators. agent/catalog.ts gathers every
// registered family's block into the one catalog; docs/metrics.md is generated from it.
import { CG, def, hist, NS, type MetricDef } from '../../agent/model/metric.js';

export const MEMCG_FN_METRICS = {
  memcgWbLatency: hist(
    'memcg_fn',
    'hvwatch_memcg_writeback_latency_seconds',
    CG,
    "Time from a folio's writeback start to its writeback end, per memory cgroup (at start).",
    'seconds',
    NS(10, 36),
  ),
  memcgWbEndDuration: hist(
    'memcg_fn',
    'hvwatch_memcg_writeback_end_duration_seconds',
    CG,
    'Time spent inside writeback end (__folio_end_writeback), per memory cgroup.',
    'seconds',
    NS(6, 30),
  ),
  memcgUnchargeDuration: hist(
    'memcg_fn',
    'hvwatch_memcg_uncharge_duration_seconds',
    CG,
    'Time spent inside one uncharge call (__mem_cgroup_uncharge[_folios]), per memory cgroup of its first folio.',
    'seconds',
    NS(6, 30),
  ),
  memcgUnchargedFolios: def('memcg_fn', 'hvwatch_memcg_uncharged_folios_total', 'counter', CG, 'Folios uncharged (uncharge_folio), per memory cgroup.'),
  memcgRaceEvents: def(
    'memcg_fn',
    'hvwatch_memcg_race_events_total',
    'counter',
    ['kind'],
    'memcg writeback/uncharge race indicators by kind (docs/metrics.md "Race indicators"); any increase deserves a look.',
  ),
  memcgRaceStateEvictions: def(
    'memcg_fn',
    'hvwatch_memcg_race_state_evictions_total',
    'counter',
    [],
    'Per-folio race-tracking entries evicted by the LRU bound before their writeback ended.',
  ),
  memcgRaceStateReaped: def(
    'memcg_fn',
    'hvwatch_memcg_race_state_reaped_total',
    'counter',
    [],
    'Writeback-end markers older than 1 s (their exit was never seen) that were cleared instead of trusted.',
  ),
  memcgWbUnpairedEnds: def(
    'memcg_fn',
    'hvwatch_memcg_writeback_unpaired_ends_total',
    'counter',
    [],
    'Writeback ends with no recorded start (started before attach, or evicted): no latency for them.',
  ),
} as const satisfies Record<string, MetricDef>;
