// Builds PromQL selectors from catalog entries, so rules and panels never spell a metric
// name: a renamed metric breaks the build, and a label the metric does not carry throws
// when the artifacts are generated (test/promql-catalog.test.ts checks the output again).
import type { MetricDef } from '../agent/model/metric.js';

/** Labels Prometheus adds to every scraped series. */
export const TARGET_LABELS = ['instance', 'job'] as const;

/** The scrape job the rules and dashboards expect (alerts/README.md, first section). */
export const JOB = 'hvwatch';

export type Matcher = string | { re: string } | { ne: string } | { nre: string };

/** A regex matcher: `{ instance: re('$node') }` -> instance=~"$node". */
export const re = (v: string): Matcher => ({ re: v });

function quote(v: string): string {
  return JSON.stringify(v);
}

function matcher(label: string, m: Matcher): string {
  if (typeof m === 'string') return `${label}=${quote(m)}`;
  if ('re' in m) return `${label}=~${quote(m.re)}`;
  if ('ne' in m) return `${label}!=${quote(m.ne)}`;
  return `${label}!~${quote(m.nre)}`;
}

export type Matchers = Readonly<Record<string, Matcher>>;

function selector(name: string, allowed: readonly string[], matchers: Matchers): string {
  const parts = Object.entries(matchers).map(([l, m]) => {
    if (!allowed.includes(l)) throw new Error(`${name} has no label ${l} (it has ${allowed.join(', ') || 'none'})`);
    return matcher(l, m);
  });
  return parts.length ? `${name}{${parts.join(', ')}}` : name;
}

/** A counter's or gauge's series. */
export function series(def: MetricDef, matchers: Matchers = {}): string {
  if (def.type === 'histogram') throw new Error(`${def.name} is a histogram: use bucket(), hsum() or hcount()`);
  return selector(def.name, [...def.labels, ...TARGET_LABELS], matchers);
}

function histogramPart(def: MetricDef, suffix: string, extra: readonly string[], matchers: Matchers): string {
  if (def.type !== 'histogram') throw new Error(`${def.name} is a ${def.type}, not a histogram`);
  return selector(`${def.name}${suffix}`, [...def.labels, ...TARGET_LABELS, ...extra], matchers);
}

export const bucket = (def: MetricDef, m: Matchers = {}): string => histogramPart(def, '_bucket', ['le'], m);
/** A histogram's native series: one sample per series when Prometheus scraped protobuf. */
export const native = (def: MetricDef, m: Matchers = {}): string => histogramPart(def, '', [], m);
export const hsum = (def: MetricDef, m: Matchers = {}): string => histogramPart(def, '_sum', [], m);
export const hcount = (def: MetricDef, m: Matchers = {}): string => histogramPart(def, '_count', [], m);

/** `by (…)` with the labels checked against what the aggregated metrics carry. */
export function by(labels: readonly string[], ...defs: MetricDef[]): string {
  const allowed = new Set<string>([...TARGET_LABELS, ...defs.flatMap((d) => [...d.labels, ...(d.type === 'histogram' ? ['le'] : [])])]);
  for (const l of labels)
    if (!allowed.has(l)) throw new Error(`by (${labels.join(', ')}): no metric among ${defs.map((d) => d.name).join(', ')} has label ${l}`);
  return `by (${labels.join(', ')})`;
}

/** A recording rule's series (alerts/rules.ts RECORDING), with its labels checked. */
export function recorded(rule: { record: string; labels: readonly string[] }, matchers: Matchers = {}): string {
  return selector(rule.record, rule.labels, matchers);
}

// Both histogram kinds (docs/metrics.md "Histograms"): a Prometheus with native histograms on scrapes
// protobuf and stores `name` as one native series; one without stores `name_bucket{le}`.
// Each expression below reads the native form where it exists and the classic one elsewhere,
// per label set, so one rule serves a fleet with both kinds of Prometheus.

/** The q-quantile per `labels` over `window`, from native or classic buckets. */
export function quantile(q: number, def: MetricDef, labels: readonly string[], window: string, m: Matchers = {}): string {
  return (
    `histogram_quantile(${q}, sum ${by(labels, def)} (rate(${native(def, m)}[${window}])))` +
    ` or histogram_quantile(${q}, sum ${by([...labels, 'le'], def)} (rate(${bucket(def, m)}[${window}])))`
  );
}

/** Observations per bucket and window, summed: a heatmap's two queries (classic, native). */
export function heatmapQueries(def: MetricDef, m: Matchers, window = '$__rate_interval'): { expr: string; legend?: string }[] {
  return [
    { expr: `sum ${by(['le'], def)} (increase(${bucket(def, m)}[${window}]))` },
    { expr: `sum(increase(${native(def, m)}[${window}]))`, legend: 'native' },
  ];
}

/** Per-second observations (what = 'count') or their sum (what = 'sum') of a histogram per
 * `labels`, from native or classic series. */
export function histogramRate(what: 'count' | 'sum', def: MetricDef, labels: readonly string[], window: string, m: Matchers = {}): string {
  return (
    `histogram_${what}(sum ${by(labels, def)} (rate(${native(def, m)}[${window}])))` +
    ` or sum ${by(labels, def)} (rate(${what === 'count' ? hcount(def, m) : hsum(def, m)}[${window}]))`
  );
}
