// `hvwatch check` thresholds: a YAML file (schema below; unknown keys are errors) with
// named shortcuts for what kernel and hypervisor CI asks most, generic rules over any
// catalog metric, the probes that must attach, and the baseline tolerances.
import * as fs from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { M, metricByName, type MetricDef } from '../catalog.js';
import type { Labels, MetricStore } from '../export/store.js';
import type { ProbeStatus } from '../loader.js';
import { histogramQuantile, mergeAll } from './quantile.js';
import { folded } from '../aggregate/histogram.js';

const ruleSchema = z
  .object({
    name: z.string().min(1).optional(),
    /** One metric name, or several summed (their series all count). */
    metric: z.union([z.string(), z.array(z.string()).min(1)]),
    /** Histograms: judge this quantile of all matching series merged; else their summed value. */
    quantile: z.number().min(0).max(1).optional(),
    labels: z.record(z.string(), z.string()).default({}),
    max: z.number().optional(),
    min: z.number().optional(),
    /** No series (or no observations): skip the rule (default for quantiles), fail it, or read 0 (default for sums). */
    missing: z.enum(['skip', 'fail', 'zero']).optional(),
  })
  .strict()
  .refine((r) => r.max !== undefined || r.min !== undefined, { message: 'a rule needs max or min' });

export const thresholdsSchema = z
  .object({
    /** Probes that must attach (also --require). */
    require: z.array(z.string()).default([]),
    thresholds: z
      .object({
        /** Race indicators allowed (memcg writeback/uncharge races, IRQ injections after teardown). */
        races: z.number().int().min(0).optional(),
        writeback_p99_seconds: z.number().positive().optional(),
        writeback_wait_p99_seconds: z.number().positive().optional(),
        nested_l1_p99_seconds: z.number().positive().optional(),
        nested_vmenter_failures: z.number().int().min(0).optional(),
        kvmi_reply_p99_seconds: z.number().positive().optional(),
      })
      .strict()
      .default({}),
    rules: z.array(ruleSchema).default([]),
    baseline: z
      .object({
        /** Relative change allowed per figure (0.25: 25 %). */
        tolerance: z.number().min(0).default(0.25),
        /** Per-figure tolerance, by figure name (`metric{labels} p99`) or metric name. */
        figures: z.record(z.string(), z.number().min(0)).default({}),
        /** Metrics compared (default: every histogram and counter of the probe families). */
        metrics: z.array(z.string()).optional(),
      })
      .strict()
      .default({}),
  })
  .strict();

export type Thresholds = z.infer<typeof thresholdsSchema>;
export type Rule = z.infer<typeof ruleSchema>;

export class ThresholdsError extends Error {}

/** Race-indicator counters: the catalog metrics whose any increase means a race was seen. */
export const RACE_METRICS: readonly MetricDef[] = [M.memcgRaceEvents, M.kvmIrqAfterTeardown];

export function parseThresholds(text: string, file: string): Thresholds {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: false }) ?? {};
  } catch (e) {
    throw new ThresholdsError(`${file}: invalid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const r = thresholdsSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    const key = i.code === 'unrecognized_keys' ? [...i.path, i.keys.join(',')] : i.path;
    throw new ThresholdsError(`${file}: key ${key.length ? key.join('.') : '(top level)'}: ${i.message}`);
  }
  for (const [n, rule] of r.data.rules.entries()) {
    for (const m of [rule.metric].flat()) {
      const def = metricByName(m);
      if (!def) throw new ThresholdsError(`${file}: key rules.${n}.metric: unknown metric ${m}`);
      if (rule.quantile !== undefined && def.type !== 'histogram')
        throw new ThresholdsError(`${file}: key rules.${n}.quantile: ${m} is a ${def.type}, not a histogram`);
    }
  }
  for (const m of r.data.baseline.metrics ?? []) {
    if (!metricByName(m)) throw new ThresholdsError(`${file}: key baseline.metrics: unknown metric ${m}`);
  }
  return r.data;
}

export function loadThresholds(file: string): Thresholds {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ThresholdsError(`${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseThresholds(text, file);
}

/** The shortcuts as generic rules. */
export function expandRules(t: Thresholds): Rule[] {
  const s = t.thresholds;
  const out: Rule[] = [];
  const q99 = (name: string, metric: MetricDef, max: number | undefined): void => {
    if (max !== undefined) out.push({ name, metric: metric.name, quantile: 0.99, labels: {}, max, missing: 'skip' });
  };
  if (s.races !== undefined) out.push({ name: 'race indicators', metric: RACE_METRICS.map((m) => m.name), labels: {}, max: s.races, missing: 'zero' });
  q99('writeback p99', M.memcgWbLatency, s.writeback_p99_seconds);
  q99('writeback wait p99', M.memcgWbWaitTime, s.writeback_wait_p99_seconds);
  q99('nested L1 handling p99', M.kvmNestedL1Handling, s.nested_l1_p99_seconds);
  if (s.nested_vmenter_failures !== undefined) {
    out.push({ name: 'nested VM-entry failures', metric: M.kvmNestedVmenterFailures.name, labels: {}, max: s.nested_vmenter_failures, missing: 'zero' });
  }
  q99('KVMI reply p99', M.kvmiReplyTime, s.kvmi_reply_p99_seconds);
  return out.concat(t.rules);
}

export type Outcome = 'pass' | 'fail' | 'skip';

export interface RuleResult {
  name: string;
  kind: 'threshold' | 'require';
  outcome: Outcome;
  value?: number;
  limit?: string;
  message: string;
}

const matches =
  (want: Readonly<Record<string, string>>) =>
  (l: Labels): boolean =>
    Object.entries(want).every(([k, v]) => l[k] === v);

export function ruleName(r: Rule): string {
  if (r.name) return r.name;
  const m = [r.metric].flat().join('+');
  const l = Object.entries(r.labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  return `${m}${l ? `{${l}}` : ''}${r.quantile !== undefined ? ` p${+(r.quantile * 100).toFixed(3)}` : ''}`;
}

export function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  return a >= 1e6 || a < 1e-3 ? v.toExponential(3) : String(Number(v.toPrecision(6)));
}

export function evaluateRule(r: Rule, store: MetricStore): RuleResult {
  const name = ruleName(r);
  const defs = [r.metric].flat().map((n) => metricByName(n)!);
  const series = defs.flatMap((d) => store.all(d)).filter((s) => matches(r.labels)(s.labels));
  let value: number | undefined;
  if (r.quantile !== undefined) {
    const h = mergeAll(series.flatMap((s) => (s.hist ? [folded(s.hist)] : [])));
    value = h ? histogramQuantile(h, r.quantile) : undefined;
  } else if (series.length) {
    value = series.reduce((a, s) => a + s.value, 0);
  }
  const limit = [r.min !== undefined ? `>= ${fmt(r.min)}` : '', r.max !== undefined ? `<= ${fmt(r.max)}` : ''].filter(Boolean).join(' and ');
  if (value === undefined) {
    const missing = r.missing ?? (r.quantile !== undefined ? 'skip' : 'zero');
    if (missing === 'zero') value = 0;
    else {
      const why = r.quantile !== undefined ? 'no observations' : 'no series';
      return {
        name,
        kind: 'threshold',
        outcome: missing === 'fail' ? 'fail' : 'skip',
        limit,
        message: `${why} (did its probe attach and the workload exercise it?)`,
      };
    }
  }
  const bad = (r.max !== undefined && value > r.max) || (r.min !== undefined && value < r.min);
  return { name, kind: 'threshold', outcome: bad ? 'fail' : 'pass', value, limit, message: `${fmt(value)} ${bad ? 'breaks' : 'within'} ${limit}` };
}

export function evaluateRequire(probes: readonly string[], status: readonly ProbeStatus[]): RuleResult[] {
  return probes.map((p) => {
    const s = status.find((x) => x.name === p);
    const name = `probe ${p} attached`;
    if (!s) return { name, kind: 'require', outcome: 'fail', message: `no probe named ${p}` };
    if (s.chosen) return { name, kind: 'require', outcome: 'pass', message: `attached via ${s.chosen.attach} ${s.chosen.target}` };
    const why = s.skipped ?? s.candidates.map((c) => `${c.attach} ${c.target}: ${c.error ?? 'failed'}`).join('; ');
    return { name, kind: 'require', outcome: 'fail', message: `not attached: ${why || 'no candidate tried'}` };
  });
}
