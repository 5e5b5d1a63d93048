// memcg writeback and uncharge per node and cgroup (seed 002): throughput and backlog from
// the tracepoint tier, latency heatmaps from the function tier's histograms, and the race
// indicators with the state that tracks them.
import { M, type MetricDef } from '../../agent/catalog.js';
import { by, heatmapQueries, histogramRate, quantile, re, series } from '../../alerts/promql.js';
import { U, dashboard, datasourceVar, graph, heat, labelVar } from '../../dashboards/lib.js';
import { nodeVar } from '../../dashboards/vars.js';

const NODE = { instance: re('$node') };
const CG = { ...NODE, cgroup: re('$cgroup') };

/** A counter's value per node and cgroup. */
const perCgroupValue = (d: MetricDef): string => `sum ${by(['instance', 'cgroup'], d)} (${series(d, CG)})`;
/** Per-second rate per node and cgroup. */
const perCgroup = (d: MetricDef): string => `sum ${by(['instance', 'cgroup'], d)} (rate(${series(d, CG)}[$__rate_interval]))`;
/** Observations per bucket and interval, summed over the selected nodes and cgroups: a heatmap. */
const cgQuantile = (q: number, d: MetricDef): string => quantile(q, d, ['instance', 'cgroup'], '$__rate_interval', CG);

export const cgroupVar = (): ReturnType<typeof labelVar> =>
  labelVar(
    'cgroup',
    'Cgroup',
    'label_values({__name__=~"hvwatch_memcg_.+", instance=~"$node"}, cgroup)',
    'Memory cgroups (paths under the memory hierarchy) seen by any memcg probe on the selected nodes.',
  );

const LEG = '{{instance}} {{cgroup}}';

export const memcg = () =>
  dashboard({
    uid: 'hvwatch-memcg',
    title: 'hvwatch / memcg writeback and uncharge',
    description: 'Writeback and uncharge per node and memory cgroup: pages and backlog (tracepoints), latency heatmaps (function tier), race indicators.',
    variables: [datasourceVar(), nodeVar(), cgroupVar()],
    sections: [
      {
        row: 'Writeback',
        panels: [
          graph({
            title: 'Pages entering writeback',
            unit: U.perSecond('pages'),
            description: 'Pages that entered writeback per second (NR_WRITEBACK increments), per node and cgroup. Needs the hot probe memcg_writeback.',
            queries: [{ expr: perCgroup(M.memcgWbStarted), legend: LEG }],
          }),
          graph({
            title: 'Pages completing writeback',
            unit: U.perSecond('pages'),
            description: 'Pages whose writeback completed per second (NR_WRITEBACK decrements), per node and cgroup. Needs the hot probe memcg_writeback.',
            queries: [{ expr: perCgroup(M.memcgWbCompleted), legend: LEG }],
          }),
          graph({
            title: 'Pages in flight',
            unit: U.of('pages'),
            description:
              'Pages started and not yet completed since the probe attached, per node and cgroup: a backlog that keeps growing is a device or throttling problem.',
            queries: [{ expr: `clamp_min(${perCgroupValue(M.memcgWbStarted)} - ${perCgroupValue(M.memcgWbCompleted)}, 0)`, legend: LEG }],
          }),
          graph({
            title: 'Dirty and under writeback (memory.stat)',
            unit: U.bytes,
            description: 'Dirty page cache and page cache under writeback per cgroup, read from memory.stat at scrape time.',
            queries: [
              { expr: series(M.memcgStatDirty, CG), legend: 'dirty {{instance}} {{cgroup}}' },
              { expr: series(M.memcgStatWriteback, CG), legend: 'writeback {{instance}} {{cgroup}}' },
            ],
          }),
          graph({
            title: 'Waits on writeback',
            unit: U.perSecond('waits'),
            description:
              'Times per second a task of the cgroup waited for a folio under writeback (writeback:folio_wait_writeback): stalls the workload feels.',
            queries: [{ expr: perCgroup(M.memcgWbWaits), legend: LEG }],
          }),
          heat({
            title: 'Time waiting on writeback',
            unit: U.seconds,
            description:
              'Waits for a folio under writeback by how long the task waited (log2 buckets), over the selected nodes and cgroups: what an fsync or a reclaim stall costs the workload.',
            queries: heatmapQueries(M.memcgWbWaitTime, CG),
          }),
        ],
      },
      {
        row: 'Writeback latency (function tier)',
        panels: [
          heat({
            title: 'Writeback latency',
            unit: U.seconds,
            description:
              'Folios by time from writeback start to writeback end (log2 buckets), over the selected nodes and cgroups. Needs fentry or kprobes (memcg_writeback_start_fn and _end_fn).',
            queries: heatmapQueries(M.memcgWbLatency, CG),
          }),
          graph({
            title: 'Writeback latency p50 and p99',
            unit: U.seconds,
            description:
              'Median and 99th percentile of folio writeback latency per node and cgroup. Alert HvwatchMemcgWritebackLatencyHigh: p99 above 2 s for 10 minutes.',
            queries: [
              { expr: cgQuantile(0.5, M.memcgWbLatency), legend: 'p50 {{instance}} {{cgroup}}' },
              { expr: cgQuantile(0.99, M.memcgWbLatency), legend: 'p99 {{instance}} {{cgroup}}' },
            ],
          }),
          heat({
            title: 'Time inside writeback end',
            unit: U.seconds,
            description: 'Calls of __folio_end_writeback by time spent inside (log2 buckets): the window in which an uncharge on another CPU races with it.',
            queries: heatmapQueries(M.memcgWbEndDuration, CG),
          }),
          graph({
            title: 'Writeback ends without a start',
            unit: U.perSecond('ends'),
            description: 'Writeback ends with no recorded start (begun before attach, or evicted from the race-state map): no latency is recorded for them.',
            queries: [
              {
                expr: `sum ${by(['instance'], M.memcgWbUnpairedEnds)} (rate(${series(M.memcgWbUnpairedEnds, NODE)}[$__rate_interval]))`,
                legend: '{{instance}}',
              },
            ],
          }),
        ],
      },
      {
        row: 'Uncharge',
        panels: [
          graph({
            title: 'Uncharge batches',
            unit: U.perSecond('batches'),
            description: 'Uncharge batches per second (PGPGOUT events, cgroup v1 accounting), per node and cgroup. Needs the hot probe memcg_uncharge.',
            queries: [{ expr: histogramRate('count', M.memcgUnchargeBatchPages, ['instance', 'cgroup'], '$__rate_interval', CG), legend: LEG }],
          }),
          graph({
            title: 'Pages uncharged',
            unit: U.perSecond('pages'),
            description: 'Pages uncharged per second (sum of PGPGOUT batch sizes), per node and cgroup.',
            queries: [{ expr: histogramRate('sum', M.memcgUnchargeBatchPages, ['instance', 'cgroup'], '$__rate_interval', CG), legend: LEG }],
          }),
          heat({
            title: 'Pages per uncharge batch',
            unit: U.of('pages'),
            description: 'Uncharge batches by size in pages (native: log2 buckets; classic: le = 15, 255, 4095, 8191), over the selected nodes and cgroups.',
            queries: heatmapQueries(M.memcgUnchargeBatchPages, CG),
          }),
          heat({
            title: 'Time inside uncharge',
            unit: U.seconds,
            description: 'Calls of __mem_cgroup_uncharge[_folios] by time spent inside (log2 buckets; function tier).',
            queries: heatmapQueries(M.memcgUnchargeDuration, CG),
          }),
          graph({
            title: 'Folios uncharged',
            unit: U.perSecond('folios'),
            w: 24,
            description: 'Folios uncharged per second (uncharge_folio; function tier), per node and cgroup.',
            queries: [{ expr: perCgroup(M.memcgUnchargedFolios), legend: LEG }],
          }),
        ],
      },
      {
        row: 'Race indicators and their state',
        panels: [
          graph({
            title: 'Race indicators by kind',
            unit: U.of('events'),
            bars: true,
            description:
              'memcg race indicators per interval by node and kind (not per cgroup: the event carries both cgroups, see GET /api/races). Alert HvwatchMemcgRaceIndicator.',
            queries: [
              {
                expr: `sum ${by(['instance', 'kind'], M.memcgRaceEvents)} (increase(${series(M.memcgRaceEvents, NODE)}[$__rate_interval]))`,
                legend: '{{instance}} {{kind}}',
              },
            ],
          }),
          graph({
            title: 'Race-state evictions and reaped markers',
            unit: U.perSecond('entries'),
            description:
              'Per-folio race-tracking entries evicted by the LRU bound before their writeback ended, and writeback-end markers older than 1 s cleared instead of trusted. Rising evictions: raise bpf.raceStateEntries.',
            queries: [
              { expr: `rate(${series(M.memcgRaceStateEvictions, NODE)}[$__rate_interval])`, legend: 'evicted {{instance}}' },
              { expr: `rate(${series(M.memcgRaceStateReaped, NODE)}[$__rate_interval])`, legend: 'reaped {{instance}}' },
            ],
          }),
          graph({
            title: 'Race-state map fill',
            unit: U.fraction,
            description: "Folios under writeback tracked by the race indicators against the map's capacity (bpf.raceStateEntries).",
            queries: [
              {
                expr: `${series(M.mapEntries, { ...NODE, family: 'memcg_fn', map: 'wb_folios' })} / ${series(M.mapCapacity, { ...NODE, family: 'memcg_fn', map: 'wb_folios' })}`,
                legend: '{{instance}}',
              },
            ],
          }),
          graph({
            title: 'Unresolved cgroup ids',
            unit: U.perSecond('lookups'),
            description: 'Cgroup id lookups that matched no directory (labelled cgroup="unknown"): usually dying memcgs whose pages are still written back.',
            queries: [{ expr: `rate(${series(M.cgroupUnresolved, NODE)}[$__rate_interval])`, legend: '{{instance}}' }],
          }),
        ],
      },
    ],
  });

/** The boards this family's folder owns (dashboards/generate.ts gathers them in registry order). */
export const boards = { 'memcg.json': memcg };
