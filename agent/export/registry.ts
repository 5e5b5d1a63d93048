// prom-client registries over the MetricStore, one per exposition format. prom-client's
// OpenMetrics registry renames counters in place (strips _total, re-appends it per sample),
// so each registry gets its own metric objects; they share only the store.
import client from 'prom-client';
import type { MetricDef } from '../catalog.js';
import type { MetricStore } from './store.js';

type PromValue = { value: number; labels: Record<string, string | number>; metricName?: string };

function formatLe(v: number): string {
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(12)));
}

// An empty label value and an absent label are the same series to Prometheus (data model),
// so empty values are left out: a cgroup without Kubernetes labels keeps only `cgroup`.
function present(labels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== '') out[k] = v;
  return out;
}

class StoreMetric {
  name: string;
  readonly help: string;
  readonly type: string;
  readonly aggregator = 'sum';
  constructor(private readonly def: MetricDef, private readonly store: MetricStore) {
    this.name = def.name;
    this.help = def.help;
    this.type = def.type;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: PromValue[] } {
    const values: PromValue[] = [];
    for (const s of this.store.all(this.def)) {
      const labels = present(s.labels);
      if (this.def.type !== 'histogram' || !s.hist) {
        values.push({ value: s.value, labels: { ...labels } });
        continue;
      }
      const h = s.hist;
      h.bounds.forEach((le, i) => values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: formatLe(le) }, value: h.cumulative[i]! }));
      values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count });
      values.push({ metricName: `${this.name}_sum`, labels: { ...labels }, value: h.sum });
      values.push({ metricName: `${this.name}_count`, labels: { ...labels }, value: h.count });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {}
}

export interface Registries {
  prometheus: client.Registry;
  openmetrics: client.Registry<client.OpenMetricsContentType>;
}

export function buildRegistries(defs: readonly MetricDef[], store: MetricStore): Registries {
  const prometheus = new client.Registry();
  const openmetrics = new client.Registry<client.OpenMetricsContentType>();
  openmetrics.setContentType(client.Registry.OPENMETRICS_CONTENT_TYPE);
  for (const d of defs) {
    prometheus.registerMetric(new StoreMetric(d, store) as unknown as client.Metric);
    openmetrics.registerMetric(new StoreMetric(d, store) as unknown as client.Metric);
  }
  return { prometheus, openmetrics };
}

/** Pick the format the scraper asked for (Accept negotiation, as Prometheus sends it). */
export function pickRegistry(r: Registries, accept: string | undefined): client.Registry<client.RegistryContentType> {
  return accept && /application\/openmetrics-text/i.test(accept) ? r.openmetrics : r.prometheus;
}
