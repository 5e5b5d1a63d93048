// Catalog consistency: every PromQL expression in the generated rules and dashboards names
// only metrics and labels the agent exports (agent/catalog.ts), recording rules, or target
// labels. Also: the tokenizer and checker catch what they claim to, the dashboards are
// fresh, valid PromQL (promtool parses them), and every panel has a unit and a description.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { ALL_METRICS, M } from '../agent/catalog.js';
import { analyze, recordingRules, ruleExpressions, tokenize, type CheckContext } from '../alerts/promql-check.js';
import { REPO_ROOT, staleArtifacts } from '../alerts/artifacts.js';
import { RECORDING } from '../alerts/rules.js';
import { allPanels, dashboardExpressions, type DashboardJson } from '../dashboards/expressions.js';
import { buildDashboards, generateDashboards, orphanedJson } from '../dashboards/generate.js';

const rulesYaml = (): string => fs.readFileSync(join(REPO_ROOT, 'alerts/hvwatch.rules.yml'), 'utf8');
const recorded = (): CheckContext['recorded'] => recordingRules(rulesYaml());

function committedDashboards(): Map<string, DashboardJson> {
  const dir = join(REPO_ROOT, 'dashboards/json');
  return new Map(
    fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.json'))
      .map((f) => [f, JSON.parse(fs.readFileSync(join(dir, f), 'utf8')) as DashboardJson]),
  );
}

function allExpressions(): { where: string; expr: string }[] {
  return [...ruleExpressions(rulesYaml()), ...[...committedDashboards().values()].flatMap(dashboardExpressions)];
}

// ---- the tokenizer and checker ----
test('tokenizer: selectors, durations, offsets, Grafana variables, strings with escapes', (t) => {
  const toks = tokenize('sum by (instance, le) (rate(x_bucket{cgroup=~"$cgroup", a!="b\\"c"}[$__rate_interval])) > 0.5 or y offset 10m');
  t.deepEqual(
    toks.map((x) => `${x.kind}:${x.text}`),
    [
      'ident:sum',
      'ident:by',
      'punct:(',
      'ident:instance',
      'punct:,',
      'ident:le',
      'punct:)',
      'punct:(',
      'ident:rate',
      'punct:(',
      'ident:x_bucket',
      'punct:{',
      'ident:cgroup',
      'op:=~',
      'string:"$cgroup"',
      'punct:,',
      'ident:a',
      'op:!=',
      'string:"b\\"c"',
      'punct:}',
      'punct:[',
      'var:$__rate_interval',
      'punct:]',
      'punct:)',
      'punct:)',
      'op:>',
      'number:0.5',
      'ident:or',
      'ident:y',
      'ident:offset',
      'duration:10m',
    ],
  );
  t.deepEqual(
    tokenize('a[1h30m:1m]').map((x) => x.kind),
    ['ident', 'punct', 'duration', 'punct', 'duration', 'punct'],
  );
  t.throws(() => tokenize('x{a="unterminated}'), { message: /unterminated string/ });
});

test('checker: accepts catalog metrics, histogram series, recording rules and target labels', (t) => {
  const ok = [
    `sum by (instance, job, cgroup, le) (rate(${M.memcgWbLatency.name}_bucket{cgroup="/a"}[5m]))`,
    `${M.memcgWbLatency.name}_sum / ${M.memcgWbLatency.name}_count`,
    `topk(5, sum(rate(${M.kvmExits.name}[5m])) by (vm, reason))`,
    `up{job="hvwatch"} == 0`,
    `vm:hvwatch_kvm_exits:rate5m{instance=~"$node", vm=~"$vm"}`,
    `label_values(${M.kvmVmInfo.name}{instance=~"$node"}, vm)`,
    'label_values({__name__=~"hvwatch_memcg_.+"}, cgroup)',
    `count_values("v", ${M.buildInfo.name}) or vector(0)`,
    `histogram_quantile(0.99, sum by (cgroup) (rate(${M.memcgWbLatency.name}[5m])))`, // native
  ];
  for (const e of ok) t.deepEqual(analyze(e, { recorded: recorded() }).problems, [], e);
});

test('checker: rejects unknown metrics, le on a native histogram, and labels the metric does not carry', (t) => {
  const bad: [string, RegExp][] = [
    ['hvwatch_no_such_metric_total', /unknown metric hvwatch_no_such_metric_total/],
    [`sum by (le) (rate(${M.memcgWbLatency.name}[5m]))`, /label le \(by \(…\)\) is not a label of hvwatch_memcg_writeback_latency_seconds/],
    [`${M.memcgRaceEvents.name}{cgroup="/a"}`, /label cgroup \(matcher\) is not a label of hvwatch_memcg_race_events_total/],
    [`sum by (vm) (rate(${M.memcgWbStarted.name}[5m]))`, /label vm \(by \(…\)\) is not a label/],
    [`sum(rate(${M.kvmPio.name}[5m])) by (reason)`, /label reason \(by \(…\)\) is not a label of hvwatch_kvm_pio_total/],
    [`${M.memcgWbStarted.name}_bucket`, /unknown metric/],
    [`label_values(${M.kvmVmInfo.name}, cgroup)`, /label cgroup \(label_values\)/],
    ['label_values({__name__=~"hvwatch_nothing_.+"}, cgroup)', /matches no exported metric/],
    ['vm:hvwatch_kvm_exits:rate5m{cgroup="x"}', /label cgroup \(matcher\) is not a label of vm:hvwatch_kvm_exits:rate5m/],
    ['vm:hvwatch_kvm_exits:rate1h', /unknown metric vm:hvwatch_kvm_exits:rate1h/],
    [`sum by (le) (${M.memcgWbStarted.name})`, /label le/],
  ];
  for (const [e, re] of bad) {
    const p = analyze(e, { recorded: recorded() }).problems;
    t.true(
      p.some((x) => re.test(x)),
      `${e}: ${JSON.stringify(p)}`,
    );
  }
});

test('recording rules: labels derived from their expressions equal what alerts/rules.ts declares', (t) => {
  const fromFile = recordingRules(rulesYaml());
  t.deepEqual(
    [...fromFile.keys()].sort(),
    Object.values(RECORDING)
      .map((r) => r.record)
      .sort(),
  );
  for (const r of Object.values(RECORDING)) t.deepEqual(fromFile.get(r.record), r.labels, r.record);
});

// ---- the generated artifacts ----
test('every expression in the rules file and the dashboards references only exported metrics and labels', (t) => {
  const exprs = allExpressions();
  t.true(exprs.length > 80, `${exprs.length} expressions`);
  const problems = exprs.flatMap(({ where, expr }) => analyze(expr, { recorded: recorded() }).problems.map((p) => `${where}: ${p}`));
  t.deepEqual(problems, []);
  // Metric names only: the check is not vacuous, it saw the families it should.
  const seen = new Set(exprs.flatMap(({ expr }) => analyze(expr, { recorded: recorded() }).metrics));
  for (const n of [M.memcgRaceEvents.name, `${M.memcgWbLatency.name}_bucket`, M.kvmExits.name, M.kvmNestedStateSaves.name, M.probeAttached.name, 'up'])
    t.true(seen.has(n), n);
});

test('the same check fails for the committed artifacts when the catalog loses a metric', (t) => {
  const without = ALL_METRICS.filter((m) => m !== M.kvmNestedVmenterFailures && m !== M.memcgWbLatency);
  const problems = allExpressions().flatMap(({ where, expr }) =>
    analyze(expr, { recorded: recorded(), metrics: without }).problems.map((p) => `${where}: ${p}`),
  );
  t.true(
    problems.some((p) => /HvwatchNestedVmentryFailures: unknown metric hvwatch_kvm_nested_vmenter_failures_total/.test(p)),
    problems.join('\n'),
  );
  t.true(
    problems.some((p) => /hvwatch-memcg panel "Writeback latency" A: unknown metric hvwatch_memcg_writeback_latency_seconds_bucket/.test(p)),
    problems.join('\n'),
  );
});

test('committed dashboards, provisioning and README equal freshly generated ones', (t) => {
  const files = generateDashboards();
  // The boards are the fleet overview and each registered family's (families/<name>/dashboard.ts):
  // derived, so a new family's board needs no edit here.
  const boards = [...buildDashboards().keys()].sort();
  t.true(boards.includes('fleet.json') && boards.length > 1, boards.join(', '));
  t.deepEqual(
    [...files.keys()].sort(),
    [
      'dashboards/README.md',
      ...boards.map((b) => `dashboards/json/${b}`),
      ...boards.map((b) => `dashboards/preview/${b.replace(/\.json$/, '.svg')}`),
      'dashboards/provisioning/hvwatch.yaml',
    ].sort(),
  );
  t.deepEqual(staleArtifacts(files), [], 'run `npm run build` and commit the result');
  t.deepEqual(orphanedJson(files), []);
  const cli = spawnSync(process.execPath, [join(REPO_ROOT, 'dist/dashboards/generate.js'), '--check'], { encoding: 'utf8' });
  t.is(cli.status, 0, cli.stderr);
});

test('dashboards: every panel has a unit and a description; ids and uids are unique; variables are as specified', (t) => {
  const ds = committedDashboards();
  t.deepEqual([...ds.keys()].sort(), [...buildDashboards().keys()].sort(), 'the committed boards are the generated ones');
  const uids = new Set<string>();
  for (const [file, d] of ds) {
    t.false(uids.has(d.uid!), `duplicate uid ${d.uid}`);
    uids.add(d.uid!);
    const panels = allPanels(d).filter((p) => p.type !== 'row');
    t.true(panels.length >= 10, `${file}: ${panels.length} panels`);
    for (const p of panels) {
      t.truthy(p.fieldConfig?.defaults?.unit, `${file} "${p.title}": unit`);
      t.true((p.description ?? '').length >= 30, `${file} "${p.title}": description`);
      t.true((p.targets ?? []).length > 0 && p.targets!.every((q) => q.expr && q.refId), `${file} "${p.title}": targets`);
    }
    // Every panel inside the 24-column grid, none overlapping another.
    const boxes = allPanels(d).map((p) => ({ title: p.title, ...p.gridPos! }));
    for (const [i, a] of boxes.entries()) {
      t.true(a.x >= 0 && a.x + a.w <= 24, `${file} "${a.title}": x=${a.x} w=${a.w} leaves the grid`);
      for (const b of boxes.slice(i + 1)) {
        const overlap = a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
        t.false(overlap, `${file}: "${a.title}" overlaps "${b.title}"`);
      }
    }
    const ids = allPanels(d).map((p) => p.id);
    t.is(new Set(ids).size, ids.length, `${file}: panel ids unique`);
    const vars = (d.templating?.list ?? []).map((v) => v.name);
    t.deepEqual(vars.slice(0, 2), ['datasource', 'node'], file);
  }
  for (const f of ['memcg.json', 'ima.json'])
    t.true(
      ds.get(f)!.templating!.list!.some((v) => v.name === 'cgroup'),
      f,
    );
  for (const f of ['kvm.json', 'introspection.json'])
    t.true(
      ds.get(f)!.templating!.list!.some((v) => v.name === 'vm'),
      f,
    );
  // The panels the issue asks for.
  const titles = (f: string): string[] => allPanels(ds.get(f)!).map((p) => `${p.type}:${p.title}`);
  for (const want of [
    'bargauge:Top VMs by exit rate',
    'bargauge:Top cgroups by writeback latency (p99)',
    'table:Probes that did not attach',
    'timeseries:Race indicators by node and kind',
  ])
    t.true(titles('fleet.json').includes(want), want);
  for (const want of ['heatmap:Writeback latency', 'heatmap:Pages per uncharge batch', 'heatmap:Time inside uncharge'])
    t.true(titles('memcg.json').includes(want), want);
  for (const want of [
    'timeseries:VM-exits by reason',
    'timeseries:Nested exits: L0 vs L1',
    'heatmap:L1 handling time',
    'timeseries:Risky saves: GUEST_MODE and RUN_PENDING',
    'timeseries:Userspace exits by reason',
  ])
    t.true(titles('kvm.json').includes(want), want);
  for (const want of [
    'timeseries:Measurements',
    'heatmap:Hashing time per measurement',
    'timeseries:Appraisal p99',
    'timeseries:Live cache entries',
    'timeseries:Inode pointer reuse',
    'stat:Live-state pointer reuse, in range',
  ])
    t.true(titles('ima.json').includes(want), want);
  for (const want of [
    'heatmap:Reply time (vCPU paused)',
    'timeseries:Reply actions',
    'timeseries:Command errors',
    'timeseries:Injections by path',
    'heatmap:Delivery delay',
    'timeseries:Injections after teardown',
  ])
    t.true(titles('introspection.json').includes(want), want);
});

test('dashboard queries are valid PromQL: promtool parses each one (Grafana variables substituted)', (t) => {
  const grafana = (e: string): string =>
    e
      .replace(/\$__rate_interval|\$__interval/g, '1m')
      .replace(/\$__range/g, '1h')
      .replace(/\$\{?[a-z_]+\}?/g, '.*');
  const exprs = [...buildDashboards().values()].flatMap(dashboardExpressions).filter((e) => !e.expr.startsWith('label_values('));
  t.true(exprs.length > 60);
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-dash-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'dashboards.rules.yml');
  fs.writeFileSync(
    file,
    stringify({ groups: [{ name: 'dashboards', rules: exprs.map((e, i) => ({ record: `dashboard_query:${i}`, expr: grafana(e.expr) })) }] }),
  );
  const r = spawnSync('promtool', ['check', 'rules', file], { encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.regex(r.stdout, new RegExp(`SUCCESS: ${exprs.length} rules found`));
});

test('provisioning points Grafana at the JSON directory, one file provider', (t) => {
  const text = fs.readFileSync(join(REPO_ROOT, 'dashboards/provisioning/hvwatch.yaml'), 'utf8');
  t.regex(text, /apiVersion: 1/);
  t.regex(text, /type: file/);
  t.regex(text, /path: \/var\/lib\/grafana\/dashboards\/hvwatch/);
  const readme = fs.readFileSync(join(REPO_ROOT, 'dashboards/README.md'), 'utf8');
  for (const d of committedDashboards().values()) {
    t.true(readme.includes(`## ${d.title}`), `README section for ${d.title}`);
    for (const p of allPanels(d).filter((x) => x.type !== 'row')) t.true(readme.includes(`| ${p.title} |`), `README row for ${p.title}`);
  }
});
