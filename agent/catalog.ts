// The one metric catalog: the agent's own metrics (agent/agent-metrics.ts) and every
// registered family's (families/<name>/metrics.ts, gathered through the registry). The
// exporter, the dashboards and the alert rules import names from here, and
// test/catalog.test.ts fails if the exposition and this list disagree. What a metric is,
// and the helpers the blocks are written with: agent/model/metric.ts.
import { FAMILY_MODULES } from '../families/index.js';
import type { MetricDef } from './model/metric.js';
import { AGENT_METRICS } from './agent-metrics.js';

export { isPerObject, type MetricDef, type MetricType } from './model/metric.js';

export { AGENT_METRICS };

type FamilyMetrics = (typeof FAMILY_MODULES)[number]['metrics'];
type Merged<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never;

function gather(): typeof AGENT_METRICS & Merged<FamilyMetrics> {
  const all: Record<string, MetricDef> = { ...AGENT_METRICS };
  const byName = new Map<string, string>(Object.values(AGENT_METRICS).map((d) => [d.name, 'agent']));
  for (const f of FAMILY_MODULES) {
    for (const [key, d] of Object.entries(f.metrics as Readonly<Record<string, MetricDef>>)) {
      // One name, one definition: a family may list a shared metric (kvm lists the vm info
      // the VM label service publishes) but never redefine another's key or name.
      if (all[key] && all[key] !== d) throw new Error(`catalog: metric key ${key} of family ${f.name} is already defined`);
      const owner = byName.get(d.name);
      if (owner && all[key] !== d) throw new Error(`catalog: metric ${d.name} of family ${f.name} is already defined by ${owner}`);
      all[key] = d;
      byName.set(d.name, f.name);
    }
  }
  return all as typeof AGENT_METRICS & Merged<FamilyMetrics>;
}

export const M = gather();

export type MetricKey = keyof typeof M;

export const ALL_METRICS: readonly MetricDef[] = Object.values(M);

export function metricByName(name: string): MetricDef | undefined {
  return ALL_METRICS.find((m) => m.name === name);
}
