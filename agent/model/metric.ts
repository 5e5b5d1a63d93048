// What a metric is, and the helpers every metric block is written with: the bottom of the
// model (agent/model/), imported by the catalog (agent/catalog.ts), the families' metrics
// (families/<name>/metrics.ts) and the store, and importing nothing of the agent's own.
// Names follow Prometheus conventions: counters end in _total, base units (_seconds,
// _bytes), `promtool check metrics` clean.

import type { Log2Range } from '../aggregate/histogram.js';

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
  /** Histograms: the kernel's log2 slots kept, and the classic `le` set every series of the
   * metric shares (agent/aggregate/histogram.ts). */
  readonly buckets?: Log2Range;
  /** A counter's fixed label values: every combination is exported as 0 from start-up
   * (agent/aggregate/initial.ts), as is every counter without labels, so rate() and
   * increase() see the first event and alerts on them can be written and tested. */
  readonly zeros?: Readonly<Record<string, readonly string[]>>;
}

export function withZeros(d: MetricDef, zeros: Readonly<Record<string, readonly string[]>>): MetricDef {
  for (const l of d.labels) if (!zeros[l]) throw new Error(`${d.name}: fixed label ${l} has no values`);
  return { ...d, zeros };
}

export function def(family: string, name: string, type: MetricType, labels: readonly string[], help: string, unit?: string): MetricDef {
  return unit === undefined ? { name, type, help, labels, family } : { name, type, help, labels, family, unit };
}

export function hist(family: string, name: string, labels: readonly string[], help: string, unit: string, buckets: Log2Range): MetricDef {
  return { name, type: 'histogram', help, labels, family, unit, buckets };
}

// Classic buckets at every CLASSIC_STEP-th power of two: le = 2^(4k) - 1 ns (4.095e-06,
// 6.5535e-05, 0.001048575, ... s) or pages (15, 255, 4095), plus the top of the range; a
// factor of 16 between bounds (docs/metrics.md "Histograms"). A classic scraper gets 8 bucket lines
// per latency series instead of 27; native histograms (protobuf) keep every slot.
export const CLASSIC_STEP = 4;
/** Nanosecond slots minSlot..maxSlot exported in seconds (slot i: [2^i, 2^(i+1)) ns). */
export const NS = (minSlot: number, maxSlot: number): Log2Range => ({ minSlot, maxSlot, scale: 1e-9, classicStep: CLASSIC_STEP });
/** Pages per batch, 1 .. 8191. */
export const PAGES: Log2Range = { minSlot: 0, maxSlot: 12, scale: 1, classicStep: CLASSIC_STEP };

// Per-cgroup series: the path, plus namespace/pod/container when Kubernetes labels are on
// and the path is a kubelet-made pod or container cgroup (agent/k8s.ts). The three are
// functions of the path, so they add no series; where they do not apply they are empty and
// the exposition leaves them out.
export const CG = ['cgroup', 'namespace', 'pod', 'container'] as const;

/** Series of one cgroup or VM: born at their first non-zero value, removed with their object
 * (README "Series lifecycle"). Every other series is exported from start-up. */
export function isPerObject(def: MetricDef): boolean {
  return def.labels.includes('cgroup') || def.labels.includes('vm');
}
