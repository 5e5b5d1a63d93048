// The catalog against the real exposition: every exported name is catalogued with its
// type and help, promtool's lint is clean, and OpenMetrics is served on request.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { AgentProcess } from './helpers/agent.js';
import { createCgroup, fsyncWriteInCgroup } from './helpers/memcg.js';
import { ALL_METRICS, M, metricByName } from '../agent/catalog.js';
import { KUBE_LABELS } from '../agent/k8s.js';

let agent: AgentProcess;
let text: string;

test.before(async () => {
  agent = await AgentProcess.start(['--hot', 'all', '--bpf-stats']);
  const cg = createCgroup(`hvwatch-cat-${process.pid}`);
  try {
    fsyncWriteInCgroup(cg, 4);
    await new Promise((r) => setTimeout(r, 300));
    text = await agent.scrapeText();
  } finally {
    cg.remove();
  }
});
test.after.always(() => agent?.stop());

test('catalog names follow Prometheus conventions', (t) => {
  const names = new Set<string>();
  for (const m of ALL_METRICS) {
    t.regex(m.name, /^hvwatch_[a-z0-9_]+$/);
    t.false(names.has(m.name), `duplicate ${m.name}`);
    names.add(m.name);
    if (m.type === 'counter') t.regex(m.name, /_total$/, m.name);
    else t.notRegex(m.name, /_total$/, m.name);
    if (m.unit === 'seconds') t.regex(m.name, /_seconds(_total)?$/, m.name);
    if (m.unit === 'bytes') t.regex(m.name, /_bytes(_total)?$/, m.name);
    t.true(m.help.length > 10, m.name);
  }
});

test('every exported metric is in the catalog with the same type and help', (t) => {
  const families = [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)];
  t.true(families.length > 10);
  for (const [, name, type] of families) {
    const d = metricByName(name!);
    t.truthy(d, `${name} exported but not catalogued`);
    t.is(d?.type as string | undefined, type, name);
    t.true(text.includes(`# HELP ${name} ${d?.help}`), `help of ${name}`);
  }
  for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
    const base = line.replace(/[{ ].*$/, '').replace(/_(bucket|sum|count)$/, '');
    t.truthy(metricByName(base) ?? metricByName(line.replace(/[{ ].*$/, '')), line);
  }
});

test('every exported sample carries exactly its catalog labels (plus le on buckets; Kubernetes labels only when resolved)', (t) => {
  for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) {
    const name = line.replace(/[{ ].*$/, '');
    const bucket = name.endsWith('_bucket');
    const d = metricByName(name) ?? metricByName(name.replace(/_(bucket|sum|count)$/, ''))!;
    const got = [...(/\{(.*)\}/.exec(line)?.[1] ?? '').matchAll(/(\w+)="(?:[^"\\]|\\.)*"/g)].map((m) => m[1]!);
    // An empty label is no label to Prometheus: namespace/pod/container of a non-pod cgroup are left out.
    const want = [...d.labels, ...(bucket ? ['le'] : [])].filter((l) => got.includes(l) || !(KUBE_LABELS as readonly string[]).includes(l));
    t.deepEqual(got.sort(), want.sort(), line);
  }
});

test('the memcg family and the self-metrics are all exported once the probes saw work', (t) => {
  const expected = ALL_METRICS.filter((m) => m.family === 'memcg').concat([
    M.buildInfo,
    M.probeInfo,
    M.probeAttached,
    M.probeAttachFailures,
    M.progRuns,
    M.progRunSeconds,
    M.bpfStatsEnabled,
    M.mapFull,
    M.mapEntries,
    M.mapCapacity,
    M.collectSeconds,
    M.ringbufDropped,
  ]);
  for (const m of expected) t.true(text.includes(`# TYPE ${m.name} `), `${m.name} missing`);
  t.regex(text, /^hvwatch_bpf_stats_enabled 1$/m);
  t.regex(text, /^hvwatch_bpf_program_runs_total\{probe="memcg_writeback",program="\w+"\} [1-9]/m);
});

test('promtool check metrics is clean on a real scrape', (t) => {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.is((r.stdout + r.stderr).trim(), '');
});

test('OpenMetrics is served when the scraper asks for it', async (t) => {
  const r = await fetch(`${agent.url}/metrics`, { headers: { accept: 'application/openmetrics-text; version=1.0.0,text/plain;q=0.5' } });
  t.regex(r.headers.get('content-type') ?? '', /^application\/openmetrics-text; version=1\.0\.0/);
  const om = await r.text();
  t.true(om.endsWith('# EOF\n'));
  t.regex(om, /^# TYPE hvwatch_memcg_writeback_started_pages counter$/m);
  t.regex(om, /^hvwatch_memcg_writeback_started_pages_total\{cgroup="[^"]+"\} \d+$/m);
  t.notRegex(om, /_total_total/);
  // The plain-text registry is untouched by the OpenMetrics one renaming counters.
  t.regex(await agent.scrapeText(), /^# TYPE hvwatch_memcg_writeback_started_pages_total counter$/m);
});

test('the HTTP surface: health, readiness, 404 and 405', async (t) => {
  t.is((await fetch(`${agent.url}/healthz`)).status, 200);
  t.is((await fetch(`${agent.url}/readyz`)).status, 200);
  t.is((await fetch(`${agent.url}/nope`)).status, 404);
  t.is((await fetch(`${agent.url}/metrics`, { method: 'POST', body: 'x' })).status, 405);
});
