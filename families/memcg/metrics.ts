// The memcg family's metrics: writeback and uncharge per memory cgroup, tracepoint tier. agent/catalog.ts gathers every
// registered family's block into the one catalog; docs/metrics.md is generated from it.
import { CG, def, hist, NS, PAGES, type MetricDef } from '../../agent/model/metric.js';

export const MEMCG_METRICS = {
  memcgWbStarted: def(
    'memcg',
    'hvwatch_memcg_writeback_started_pages_total',
    'counter',
    CG,
    'Pages that entered writeback, per memory cgroup (NR_WRITEBACK increments).',
    'pages',
  ),
  memcgWbCompleted: def(
    'memcg',
    'hvwatch_memcg_writeback_completed_pages_total',
    'counter',
    CG,
    'Pages whose writeback completed, per memory cgroup (NR_WRITEBACK decrements).',
    'pages',
  ),
  memcgWbWaits: def(
    'memcg',
    'hvwatch_memcg_writeback_waits_total',
    'counter',
    CG,
    'Times a task of this memory cgroup waited for a folio under writeback (writeback:folio_wait_writeback).',
  ),
  memcgWbWaitTime: hist(
    'memcg',
    'hvwatch_memcg_writeback_wait_seconds',
    CG,
    "Time a task of this memory cgroup waited for one folio's writeback (folio_wait_writeback; zero when it did not sleep).",
    'seconds',
    NS(8, 34),
  ),
  memcgUnchargeBatchPages: hist(
    'memcg',
    'hvwatch_memcg_uncharge_batch_pages',
    CG,
    'Pages per uncharge batch, per memory cgroup (uncharge_batch, or PGPGOUT batch sizes on cgroup v1); its count is the batches, its sum the pages uncharged.',
    'pages',
    PAGES,
  ),
  memcgStatDirty: def(
    'memcg',
    'hvwatch_memcg_stat_dirty_bytes',
    'gauge',
    CG,
    'Dirty page cache of the cgroup, from memory.stat (read at first sight, then re-read in the background about every 10 s).',
    'bytes',
  ),
  memcgStatWriteback: def(
    'memcg',
    'hvwatch_memcg_stat_writeback_bytes',
    'gauge',
    CG,
    'Page cache under writeback in the cgroup, from memory.stat (read at first sight, then re-read in the background about every 10 s).',
    'bytes',
  ),
} as const satisfies Record<string, MetricDef>;
