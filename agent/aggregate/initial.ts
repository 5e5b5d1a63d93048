// Counters exist before their first event (README "Series lifecycle"): a counter without
// labels, or with the fixed label values its catalog entry declares (MetricDef.zeros), is
// exported as 0 from start-up. Without it the first increment creates the series, and
// rate()/increase() over a window that starts with no sample see nothing; an alert on such a
// counter could never be tested before the incident. One place, driven by the catalog.
import { ALL_METRICS, type MetricDef } from '../catalog.js';
import type { MetricStore } from '../export/store.js';

function combinations(labels: readonly string[], zeros: Readonly<Record<string, readonly string[]>>): Record<string, string>[] {
  let out: Record<string, string>[] = [{}];
  for (const l of labels) out = out.flatMap((c) => (zeros[l] ?? []).map((v) => ({ ...c, [l]: v })));
  return out;
}

/** The label sets a counter is exported with from start-up ([] when none are fixed). */
export function fixedSeries(m: MetricDef): Record<string, string>[] {
  if (m.type !== 'counter') return [];
  if (m.labels.length === 0) return [{}];
  return m.zeros ? combinations(m.labels, m.zeros) : [];
}

/** Zero every fixed series of the agent's own counters and of the loaded families'. */
export function initFixedSeries(store: MetricStore, families: readonly string[], metrics: readonly MetricDef[] = ALL_METRICS): void {
  for (const m of metrics) {
    if (m.family !== 'agent' && !families.includes(m.family)) continue;
    for (const labels of fixedSeries(m)) store.inc(m, labels, 0);
  }
}
