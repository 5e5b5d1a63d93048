// What the rules are made of, shared by alerts/rules.ts, alerts/recording.ts and every
// family's alert group (families/<name>/alerts.ts): rule types and expression helpers.
import type { MetricDef } from '../agent/model/metric.js';
import type { AlertIdentity, Severity } from '../agent/model/alert.js';
import { by, quantile, series, TARGET_LABELS, type Matchers } from './promql.js';

export interface RecordingRule {
  record: string;
  expr: string;
  /** Labels of the recorded series (its `by` list without le): what selectors on it may use. */
  labels: readonly string[];
  /** One line for alerts/README.md. */
  help: string;
}

export interface AlertRule {
  alert: string;
  expr: string;
  /** How long the condition must hold first; '0m' fires at the first evaluation. */
  for: string;
  severity: Severity;
  summary: string;
  description: string;
  runbook: { meaning: string; check: string[]; act: string[] };
}

export interface RuleGroup<R> {
  name: string;
  rules: R[];
}

/** How long an event-type alert (a counter went up) stays firing. */
export const EVENT_WINDOW = '10m';

export const N = (d: MetricDef): string => d.name;
export const rate = (sel: string, w = '5m'): string => `rate(${sel}[${w}])`;

/**
 * "This counter went up in the window", including a series born with a value above 0 in
 * that window (increase() needs two samples, so it misses a counter whose first sample
 * already counts the event, e.g. a label created by the first occurrence).
 */
export function increased(def: MetricDef, window: string, m: Matchers = {}): string {
  const s = series(def, m);
  return `increase(${s}[${window}]) > 0 or (${s} > 0 unless ${s} offset ${window})`;
}

export function rec(record: string, labels: readonly string[], expr: string, help: string): RecordingRule {
  return { record, labels, expr, help };
}

export const P99 = (d: MetricDef, extra: string[]): string => quantile(0.99, d, [...TARGET_LABELS, ...extra], '5m');
export const RATE_BY = (d: MetricDef, extra: string[]): string => `sum ${by([...TARGET_LABELS, ...extra], d)} (${rate(series(d))})`;
export const KEEP = (extra: string[]): string[] => [...TARGET_LABELS, ...extra];

/** `{{ $labels.x }}` for every label: renders the shared alert texts as Prometheus templates. */
export const TEMPLATE_LABELS = new Proxy({}, { get: (_t, k) => `{{ $labels.${String(k)} }}` }) as Record<string, string>;

export function shared(id: AlertIdentity, rest: Omit<AlertRule, 'alert' | 'severity' | 'summary' | 'description'>): AlertRule {
  return { alert: id.name, severity: id.severity, summary: id.summary(TEMPLATE_LABELS), description: id.description(TEMPLATE_LABELS), ...rest };
}
