// Run summaries (`--write-baseline`) and their comparison (`--baseline`): per histogram
// series its p50/p90/p99 and observation count, per counter series its value, each a named
// figure. A quantile regresses when it rises past its tolerance; a count when it moves
// past it either way (fewer events seen can mean a probe lost them).
import * as fs from 'node:fs';
import { z } from 'zod';
import { ALL_METRICS, type MetricDef } from '../catalog.js';
import type { Labels, MetricStore } from '../export/store.js';
import { histogramQuantile } from './quantile.js';
import { folded } from '../aggregate/histogram.js';
import { fmt } from './thresholds.js';

export const QUANTILES = [
  ['p50', 0.5],
  ['p90', 0.9],
  ['p99', 0.99],
] as const;

export const baselineSchema = z
  .object({
    format: z.literal('hvwatch-baseline'),
    version: z.literal(1),
    agent: z.string(),
    kernel: z.string(),
    figures: z.record(z.string(), z.number()),
  })
  .strict();
export type Baseline = z.infer<typeof baselineSchema>;

function labelText(l: Labels): string {
  const e = Object.entries(l)
    .filter(([, v]) => v !== '')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return e.length ? `{${e.map(([k, v]) => `${k}="${v}"`).join(',')}}` : '';
}

function defaultMetrics(): MetricDef[] {
  return ALL_METRICS.filter((m) => m.family !== 'agent' && (m.type === 'histogram' || m.type === 'counter'));
}

export function summarize(store: MetricStore, metrics?: readonly string[]): Record<string, number> {
  const defs = metrics ? ALL_METRICS.filter((m) => metrics.includes(m.name)) : defaultMetrics();
  const out: Record<string, number> = {};
  for (const d of defs) {
    for (const s of store.all(d)) {
      const base = `${d.name}${labelText(s.labels)}`;
      if (d.type === 'histogram' && s.hist) {
        if (s.hist.count === 0) continue;
        const f = folded(s.hist);
        for (const [n, q] of QUANTILES) out[`${base} ${n}`] = histogramQuantile(f, q)!;
        out[`${base} count`] = s.hist.count;
      } else if (d.type !== 'histogram') {
        out[`${base} value`] = s.value;
      }
    }
  }
  return out;
}

export function writeBaseline(file: string, b: Omit<Baseline, 'format' | 'version'>): void {
  fs.writeFileSync(file, `${JSON.stringify({ format: 'hvwatch-baseline', version: 1, ...b }, null, 2)}\n`);
}

export function loadBaseline(file: string): Baseline {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`baseline ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, { cause: e });
  }
  const r = baselineSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(`baseline ${file}: key ${i.path.join('.') || '(top level)'}: ${i.message}`);
  }
  return r.data;
}

export interface FigureResult {
  figure: string;
  baseline: number;
  current: number | undefined;
  /** Relative change (0.5: +50 %); Infinity from a zero baseline. */
  change: number | undefined;
  tolerance: number;
  regressed: boolean;
  message: string;
}

export function compare(base: Baseline, current: Record<string, number>, tol: { tolerance: number; figures: Record<string, number> }): FigureResult[] {
  const out: FigureResult[] = [];
  for (const [figure, b] of Object.entries(base.figures)) {
    const metric = figure.split(/[{ ]/, 1)[0]!;
    const tolerance = tol.figures[figure] ?? tol.figures[metric] ?? tol.tolerance;
    const c = current[figure];
    if (c === undefined) {
      out.push({
        figure,
        baseline: b,
        current: undefined,
        change: undefined,
        tolerance,
        regressed: true,
        message: `missing from this run (baseline ${fmt(b)})`,
      });
      continue;
    }
    const change = b === 0 ? (c === 0 ? 0 : Infinity) : (c - b) / b;
    const isQuantile = / p\d+$/.test(figure);
    const regressed = isQuantile ? change > tolerance : Math.abs(change) > tolerance;
    const pct = Number.isFinite(change) ? `${change >= 0 ? '+' : ''}${(change * 100).toFixed(1)}%` : 'from 0';
    out.push({
      figure,
      baseline: b,
      current: c,
      change,
      tolerance,
      regressed,
      message: `${fmt(c)} vs baseline ${fmt(b)} (${pct}, tolerance ${(tolerance * 100).toFixed(0)}%)`,
    });
  }
  return out;
}
