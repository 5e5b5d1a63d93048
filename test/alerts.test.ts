// The Prometheus rules: committed artifacts are what the generator makes, promtool accepts
// them, and the promtool unit tests (alerts/tests/*.yml) pass and cover every alert both
// firing and not firing, and every recording rule.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { generateAlerts } from '../alerts/generate.js';
import { REPO_ROOT, staleArtifacts } from '../alerts/artifacts.js';
import { ALL_ALERTS, RECORDING } from '../alerts/rules.js';
import { IN_PROCESS_CONDITIONS } from '../agent/alerting/conditions.js';

const RULES = join(REPO_ROOT, 'alerts/hvwatch.rules.yml');
const TESTS_DIR = join(REPO_ROOT, 'alerts/tests');
const testFiles = (dir = TESTS_DIR): string[] =>
  fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.yml'))
    .map((f) => join(dir, f));

function promtool(args: string[], cwd = REPO_ROOT): { status: number | null; out: string } {
  const r = spawnSync('promtool', args, { cwd, encoding: 'utf8' });
  if (r.error) throw new Error(`promtool: ${r.error.message} (Debian package prometheus, scripts/debian-packages.txt)`);
  return { status: r.status, out: r.stdout + r.stderr };
}

interface RulesFile {
  groups: { name: string; rules: { record?: string; alert?: string; expr: string; labels?: Record<string, string>; annotations?: Record<string, string> }[] }[];
}
const rulesFile = (): RulesFile => parseYaml(fs.readFileSync(RULES, 'utf8')) as RulesFile;

test('committed alerts/ artifacts equal freshly generated ones (the CLI check agrees)', (t) => {
  const want = generateAlerts();
  t.deepEqual([...want.keys()].sort(), ['alerts/README.md', 'alerts/hvwatch.rules.yml', 'alerts/prometheusrule.yaml']);
  t.deepEqual(staleArtifacts(want), [], 'run `npm run build` and commit the result');
  const cli = spawnSync(process.execPath, [join(REPO_ROOT, 'dist/alerts/generate.js'), '--check'], { encoding: 'utf8' });
  t.is(cli.status, 0, cli.stderr);
});

test('the --check mode fails on a stale artifact', (t) => {
  const root = fs.mkdtempSync(join(tmpdir(), 'hvwatch-alerts-'));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const want = generateAlerts();
  fs.mkdirSync(join(root, 'alerts'));
  for (const [rel, content] of want) fs.writeFileSync(join(root, rel), content);
  t.deepEqual(staleArtifacts(want, root), []);
  fs.appendFileSync(join(root, 'alerts/hvwatch.rules.yml'), '# hand edit\n');
  t.deepEqual(staleArtifacts(want, root), ['alerts/hvwatch.rules.yml']);
});

test("promtool check rules accepts the rules file and the PrometheusRule's groups", (t) => {
  const r = promtool(['check', 'rules', RULES]);
  t.is(r.status, 0, r.out);
  const n = rulesFile().groups.reduce((a, g) => a + g.rules.length, 0);
  t.regex(r.out, new RegExp(`SUCCESS: ${n} rules found`));

  // The manifest carries exactly the same groups; promtool checks them as a rules file.
  const manifest = parseYaml(fs.readFileSync(join(REPO_ROOT, 'alerts/prometheusrule.yaml'), 'utf8')) as {
    apiVersion: string;
    kind: string;
    metadata: { name: string };
    spec: RulesFile;
  };
  t.is(manifest.apiVersion, 'monitoring.coreos.com/v1');
  t.is(manifest.kind, 'PrometheusRule');
  t.is(manifest.metadata.name, 'hvwatch');
  t.deepEqual(manifest.spec.groups, rulesFile().groups);
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-prule-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(join(dir, 'spec.yml'), stringify(manifest.spec));
  const r2 = promtool(['check', 'rules', join(dir, 'spec.yml')]);
  t.is(r2.status, 0, r2.out);
});

test('promtool test rules: every unit test in alerts/tests passes', (t) => {
  const files = testFiles();
  t.true(files.length >= 4);
  const r = promtool(['test', 'rules', ...files]);
  t.is(r.status, 0, r.out);
  t.is(r.out.match(/SUCCESS/g)?.length, files.length, r.out);
});

test('the unit tests fail when an alert is missing from the rules (they test the rules, not nothing)', (t) => {
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-rules-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(join(dir, 'tests'));
  const f = rulesFile();
  for (const g of f.groups) g.rules = g.rules.filter((r) => r.alert !== 'HvwatchMemcgRaceIndicator');
  fs.writeFileSync(join(dir, 'hvwatch.rules.yml'), stringify(f));
  fs.copyFileSync(join(TESTS_DIR, 'memcg.yml'), join(dir, 'tests/memcg.yml'));
  const r = promtool(['test', 'rules', join(dir, 'tests/memcg.yml')]);
  t.not(r.status, 0);
  t.regex(r.out, /HvwatchMemcgRaceIndicator/);
});

test('every alert has a firing and a not-firing case, every recording rule an expression test', (t) => {
  const firing = new Set<string>();
  const quiet = new Set<string>();
  const exprTests: string[] = [];
  for (const file of testFiles()) {
    const doc = parseYaml(fs.readFileSync(file, 'utf8')) as {
      tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[]; promql_expr_test?: { expr: string }[] }[];
    };
    for (const tc of doc.tests) {
      for (const a of tc.alert_rule_test ?? []) (a.exp_alerts.length ? firing : quiet).add(a.alertname);
      for (const e of tc.promql_expr_test ?? []) exprTests.push(e.expr);
    }
  }
  const alerts = ALL_ALERTS.map((a) => a.alert);
  t.deepEqual(
    alerts.filter((a) => !firing.has(a)),
    [],
    'alerts without a firing case',
  );
  t.deepEqual(
    alerts.filter((a) => !quiet.has(a)),
    [],
    'alerts without a not-firing case',
  );
  const untested = Object.values(RECORDING)
    .map((r) => r.record)
    .filter((rec) => !exprTests.some((e) => e.startsWith(rec)));
  t.deepEqual(untested, [], 'recording rules without an expression test');
});

test('every alert has severity, summary, description and a runbook_url whose section exists in alerts/README.md', (t) => {
  const readme = fs.readFileSync(join(REPO_ROOT, 'alerts/README.md'), 'utf8');
  const anchors = new Set(
    [...readme.matchAll(/^#{1,3} (.+)$/gm)].map((m) =>
      m[1]!
        .trim()
        .toLowerCase()
        .replace(/[^\w\- ]/g, '')
        .replace(/ /g, '-'),
    ),
  );
  const alerts = rulesFile().groups.flatMap((g) => g.rules.filter((r) => r.alert));
  t.is(alerts.length, ALL_ALERTS.length);
  for (const a of alerts) {
    t.true(['critical', 'warning', 'info'].includes(a.labels?.severity ?? ''), `${a.alert}: severity`);
    t.true((a.annotations?.summary ?? '').length > 10, `${a.alert}: summary`);
    t.true((a.annotations?.description ?? '').length > 40, `${a.alert}: description`);
    const url = a.annotations?.runbook_url ?? '';
    t.regex(url, /^alerts\/README\.md#[a-z0-9-]+$/, `${a.alert}: runbook_url`);
    t.true(anchors.has(url.split('#')[1]!), `${a.alert}: no section ${url} in alerts/README.md`);
  }
});

test('the alerts the agent raises in process exist as rules with the same name and severity', (t) => {
  for (const c of IN_PROCESS_CONDITIONS) {
    const rule = ALL_ALERTS.find((a) => a.alert === c.name);
    t.truthy(rule, c.name);
    t.is(rule?.severity, c.severity, c.name);
  }
  t.is(ALL_ALERTS.find((a) => a.alert === 'HvwatchMemcgRaceIndicator')?.severity, 'critical');
});
