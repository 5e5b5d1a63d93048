// `node dist/agent/catalog-doc.js [--check]`: writes (or checks) the metrics reference in
// docs/metrics.md from the catalog (agent/catalog.ts). Only the text between the markers is
// generated; the prose around it (label meanings, histograms, series lifecycle) is written by
// hand. Run by `npm run build`; test/docs.test.ts fails when the committed file is stale.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { generatorMain, isMain, REPO_ROOT } from '../alerts/artifacts.js';
import { ALL_METRICS, type MetricDef } from './catalog.js';

export const METRICS_DOC = 'docs/metrics.md';
export const START = '<!-- metrics-catalog:start (generated from agent/catalog.ts by npm run build; do not edit) -->';
export const END = '<!-- metrics-catalog:end -->';

/** Families in catalog order, each with a heading; unknown families get their own name. */
const FAMILY_TITLES: Readonly<Record<string, string>> = {
  agent: 'The agent itself',
  memcg: 'memcg family (tracepoint tiers)',
  memcg_fn: 'memcg family, function tiers (fentry/kprobe) and race indicators',
  kvm: 'kvm family: exits, nested virtualization, nested-state save/restore',
  kvmi: 'kvmi family: VM introspection (KVMI kernels only)',
  kvm_irq: 'kvm_irq family: interrupt injection and irqchip teardown',
};

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function row(m: MetricDef): string {
  return `| \`${m.name}\` | ${m.type} | ${m.labels.join(', ') || '—'} | ${m.unit ?? '—'} | ${cell(m.help)} |`;
}

/** The generated part: one table per family, in catalog order. */
export function renderCatalogSection(metrics: readonly MetricDef[] = ALL_METRICS): string {
  const families = [...new Set(metrics.map((m) => m.family))];
  const out = [START, '', `${metrics.length} metrics in ${families.length} families.`, ''];
  for (const f of families) {
    out.push(`### ${FAMILY_TITLES[f] ?? f}`, '', '| metric | type | labels | unit | meaning |', '|---|---|---|---|---|');
    for (const m of metrics.filter((x) => x.family === f)) out.push(row(m));
    out.push('');
  }
  out.push(END);
  return out.join('\n');
}

/** docs/metrics.md with its generated section replaced (the markers must be there once). */
export function renderMetricsDoc(current: string, metrics: readonly MetricDef[] = ALL_METRICS): string {
  const s = current.indexOf(START),
    e = current.indexOf(END);
  if (s < 0 || e < s || current.indexOf(START, s + 1) >= 0) throw new Error(`${METRICS_DOC}: needs exactly one pair of metrics-catalog markers`);
  return current.slice(0, s) + renderCatalogSection(metrics) + current.slice(e + END.length);
}

export function generateMetricsDoc(root = REPO_ROOT): Map<string, string> {
  const current = fs.readFileSync(join(root, METRICS_DOC), 'utf8');
  return new Map([[METRICS_DOC, renderMetricsDoc(current)]]);
}

if (isMain(import.meta.url)) generatorMain('agent/catalog-doc', generateMetricsDoc());
