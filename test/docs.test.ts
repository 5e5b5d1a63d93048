// docs/ stays true: the metrics reference is what the catalog generates (stale -> fail),
// every probe and each of its candidates is in docs/probes.md, and every relative link in
// docs/ resolves.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { ALL_METRICS, M, type MetricDef } from '../agent/catalog.js';
import { generateMetricsDoc, METRICS_DOC, renderMetricsDoc } from '../agent/catalog-doc.js';
import { staleArtifacts } from '../alerts/artifacts.js';
import { declaredFamilies } from '../agent/families.js';
import { brokenLinks } from './helpers/markdown.js';
import { ROOT } from './helpers/agent.js';

const read = (rel: string) => readFileSync(join(ROOT, rel), 'utf8');

test('docs/metrics.md is what the catalog generates (run npm run build when this fails)', (t) => {
  t.deepEqual(staleArtifacts(generateMetricsDoc()), [], `${METRICS_DOC} is stale: run \`npm run build\` and commit it`);
  const cli = spawnSync(process.execPath, [join(ROOT, 'dist/agent/catalog-doc.js'), '--check'], { encoding: 'utf8' });
  t.is(cli.status, 0, cli.stderr);
});

test('the staleness check sees a changed catalog entry (HELP, labels) and a missing metric', (t) => {
  const doc = read(METRICS_DOC);
  const changed: MetricDef[] = ALL_METRICS.map((m) => (m === M.kvmPio ? { ...m, help: `${m.help} (changed)` } : m));
  t.not(renderMetricsDoc(doc, changed), doc);
  const relabelled: MetricDef[] = ALL_METRICS.map((m) => (m === M.kvmPio ? { ...m, labels: ['vm'] } : m));
  t.not(renderMetricsDoc(doc, relabelled), doc);
  t.not(
    renderMetricsDoc(
      doc,
      ALL_METRICS.filter((m) => m !== M.kvmPio),
    ),
    doc,
  );
  t.is(renderMetricsDoc(doc), doc);
  t.throws(() => renderMetricsDoc('# no markers\n'), { message: /metrics-catalog markers/ });
});

test('every catalog metric is in docs/metrics.md with its type, labels and HELP', (t) => {
  const lines = read(METRICS_DOC).split('\n');
  for (const m of ALL_METRICS) {
    const row = lines.find((l) => l.startsWith(`| \`${m.name}\` |`));
    t.truthy(row, `${m.name} missing from ${METRICS_DOC}`);
    const cells = row!.split(' | ').map((c) => c.replace(/^\| |\s*\|$/g, '').trim());
    t.is(cells[1], m.type, m.name);
    t.is(cells[2], m.labels.join(', ') || '—', m.name);
    t.true(row!.includes(m.help.replace(/\|/g, '\\|')), `${m.name}: HELP text`);
  }
});

test('HELP texts carry no internal ids (mailing-list seed numbers) and cite files that exist', (t) => {
  for (const m of ALL_METRICS) {
    t.notRegex(m.help, /\bseed \d+/i, m.name);
    for (const ref of m.help.matchAll(/\b((?:docs|agent|bpf|alerts|dashboards|deploy)\/[\w./-]+\.\w+)/g))
      t.notThrows(() => read(ref[1]!), `${m.name} cites ${ref[1]}`);
  }
});

test('every probe and each of its candidate targets is in docs/probes.md', (t) => {
  const lines = read('docs/probes.md').split('\n');
  for (const p of declaredFamilies().flatMap((f) => f.probes)) {
    const row = lines.find((l) => l.startsWith(`| \`${p.name}\` |`));
    t.truthy(row, `${p.name} missing from docs/probes.md`);
    for (const c of p.candidates) t.true(row!.includes(`\`${c.attach}\` ${c.target}`), `${p.name}: ${c.attach} ${c.target}`);
  }
});

test('docs/ has the reference pages, and the kernel matrix has its generated section', (t) => {
  const docs = readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort();
  for (const f of ['ARCHITECTURE.md', 'cost.md', 'kernel-matrix.md', 'metrics.md', 'probes.md', 'trace-format.md']) t.true(docs.includes(f), `docs/${f}`);
  const km = read('docs/kernel-matrix.md');
  t.is(km.split('<!-- kernel-matrix:start -->').length, 2);
  t.true(km.includes('<!-- kernel-matrix:end -->'));
});

test('docs/ARCHITECTURE.md names files that exist', (t) => {
  const text = read('docs/ARCHITECTURE.md');
  const paths = [...new Set([...text.matchAll(/`((?:agent|bpf|test|alerts|dashboards|deploy|bench)\/[\w./-]+\.(?:ts|c|h|md))`/g)].map((m) => m[1]!))];
  t.true(paths.length > 10, `only ${paths.length} file paths found`);
  for (const p of paths) t.notThrows(() => read(p), p);
});

test('every relative link in docs/ resolves (file and #section)', (t) => {
  for (const f of readdirSync(join(ROOT, 'docs')).filter((x) => x.endsWith('.md'))) t.deepEqual(brokenLinks(`docs/${f}`), [], f);
});
