// A family is a folder plus a factory (docs/ARCHITECTURE.md "Where a new family goes"):
// adding one touches families/<name>/ and one line of the registry, families/index.ts.
// This holds it two ways: every folder is registered once and is what its registration says,
// and no other source of the agent, the generators or the benches names a family (its
// folder, its name as a string, its metrics by key or by name), except the registry and the
// consumers listed below, which show families an operator already has (a new family need
// not appear in any of them). Tests and docs are outside the rule: they are about families.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { REPO_ROOT } from '../alerts/artifacts.js';
import { FAMILY_MODULES } from '../families/index.js';
import type { MetricDef } from '../agent/model/metric.js';

const SCANNED = ['agent', 'bpf', 'alerts', 'dashboards', 'deploy', 'bench', 'families'];
const REGISTRY = 'families/index.ts';

/** Files that may name a family that is not theirs, and why. Keyed "family file". */
const CONSUMERS: Readonly<Record<string, string>> = {
  'memcg agent/check/thresholds.ts': '`hvwatch check` thresholds on chosen latency metrics',
  'memcg_fn agent/check/thresholds.ts': '`hvwatch check` thresholds on chosen latency metrics',
  'kvm agent/check/thresholds.ts': '`hvwatch check` thresholds on chosen latency metrics',
  'kvmi agent/check/thresholds.ts': '`hvwatch check` thresholds on chosen latency metrics',
  'kvm_irq agent/check/thresholds.ts': '`hvwatch check` thresholds on chosen latency metrics',
  'kvm agent/top/model.ts': '`hvwatch top` shows VMs and their exits',
  'kvm agent/services/vm-labels.ts': 'the VM label service publishes hvwatch_kvm_vm_info, listed under kvm',
  'memcg alerts/recording.ts': 'recording rules span families (the fleet board ranks VMs and cgroups)',
  'memcg_fn alerts/recording.ts': 'recording rules span families (the fleet board ranks VMs and cgroups)',
  'kvm alerts/recording.ts': 'recording rules span families (the fleet board ranks VMs and cgroups)',
  'kvmi alerts/recording.ts': 'recording rules span families (the fleet board ranks VMs and cgroups)',
  'kvm_irq alerts/recording.ts': 'recording rules span families (the fleet board ranks VMs and cgroups)',
  'memcg_fn dashboards/fleet.ts': 'the fleet overview counts race indicators',
  'kvm_irq dashboards/fleet.ts': 'the fleet overview counts injections after teardown',
  'memcg_fn families/memcg/alerts.ts': "memcg's alert group holds the function tiers' alerts (one group, hvwatch.memcg)",
  'memcg_fn families/memcg/dashboard.ts': "memcg's board shows the function tiers' latency and races",
  'kvm_irq families/kvmi/dashboard.ts': "the introspection board's interrupt-injection row",
  'kvm bench/first-sight.ts': 'a bench of the kvm first-sight path',
  'kvm bench/kvm.ts': 'a bench of the kvm exit path',
};

function sources(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(path.join(REPO_ROOT, dir), { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) {
      if (!['build', 'node_modules', 'include'].includes(e.name)) sources(p, out);
    } else if (/\.(ts|c|h)$/.test(e.name)) out.push(p);
  }
  return out;
}

/** Comments out: a path cited in a comment says where, it does not register anything. */
const code = (text: string): string => text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|\s)\/\/.*$/gm, '$1');

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** What in `text` names the family: its folder, its name as a string, its metrics. */
function mentions(text: string, family: string, metrics: Readonly<Record<string, MetricDef>>): string[] {
  const own = Object.entries(metrics).filter(([, d]) => d.family === family);
  const hits: string[] = [];
  if (text.includes(`families/${family}/`)) hits.push(`folder families/${family}/`);
  if (new RegExp(`['"\`]${esc(family)}['"\`]`).test(text)) hits.push(`name '${family}'`);
  for (const [key, d] of own) {
    if (new RegExp(`\\bM\\.${esc(key)}\\b`).test(text)) hits.push(`M.${key}`);
    if (new RegExp(`\\b${esc(d.name)}\\b`).test(text)) hits.push(d.name);
  }
  return hits;
}

test('every folder under families/ is registered once, by one line, and is what its module says', (t) => {
  const dirs = fs
    .readdirSync(path.join(REPO_ROOT, 'families'), { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
  const registry = fs.readFileSync(path.join(REPO_ROOT, REGISTRY), 'utf8');
  const lines = [...registry.matchAll(/^.*import\('\.\/([^/']+)\/family\.js'\).*$/gm)];
  t.deepEqual(lines.map((m) => m[1]).sort(), dirs, 'one registry line per folder');
  for (const m of lines) t.is(registry.split('\n').filter((l) => l.includes(`./${m[1]}/`)).length, 1, `${m[1]}: one line`);
  t.deepEqual(FAMILY_MODULES.map((f) => f.name).sort(), dirs);
  for (const name of dirs) {
    t.true(fs.existsSync(path.join(REPO_ROOT, `families/${name}/${name}.bpf.c`)), `families/${name}/${name}.bpf.c`);
    t.true(fs.existsSync(path.join(REPO_ROOT, `bpf/build/${name}.bpf.o`)), `bpf/Makefile built bpf/build/${name}.bpf.o from the folder`);
    t.true(fs.existsSync(path.join(REPO_ROOT, `families/${name}/family.ts`)), `families/${name}/family.ts`);
  }
  for (const f of FAMILY_MODULES) {
    for (const d of Object.values(f.metrics as Readonly<Record<string, MetricDef>>)) {
      t.true(d.family === f.name || d.family === 'agent' || FAMILY_MODULES.some((g) => g.name === d.family), `${f.name}: ${d.name}`);
    }
  }
});

test('outside its folder, a family is named only by the registry and the listed consumers', (t) => {
  const files = SCANNED.flatMap((d) => sources(d));
  t.true(files.length > 100, `${files.length} files scanned`);
  const found = new Map<string, string[]>();
  for (const file of files) {
    if (file === REGISTRY) continue;
    const text = code(fs.readFileSync(path.join(REPO_ROOT, file), 'utf8'));
    for (const f of FAMILY_MODULES) {
      if (file.startsWith(`families/${f.name}/`)) continue;
      const hits = mentions(text, f.name, f.metrics);
      if (hits.length) found.set(`${f.name} ${file}`, hits);
    }
  }
  const unexpected = [...found].filter(([k]) => !(k in CONSUMERS)).map(([k, hits]) => `${k}: ${hits.join(', ')}`);
  t.deepEqual(unexpected, [], 'a family named outside its folder: move it into families/<name>/ or derive it from the registry');
  const stale = Object.keys(CONSUMERS).filter((k) => !found.has(k));
  t.deepEqual(stale, [], 'consumers listed here that no longer name the family: drop them from CONSUMERS');
});

test('the files a family once had to edit name no family: agent, catalog, alert groups, dashboards list, Makefile', (t) => {
  for (const file of [
    'agent/agent.ts',
    'agent/families.ts',
    'agent/catalog.ts',
    'alerts/rules.ts',
    'dashboards/generate.ts',
    'bpf/Makefile',
    'test/promql-catalog.test.ts',
  ]) {
    const text = fs.readFileSync(path.join(REPO_ROOT, file), 'utf8');
    const lists = file === 'test/promql-catalog.test.ts' ? (text.match(/committed dashboards[\s\S]*?\n\}\);/)?.[0] ?? '') : code(text);
    t.true(lists.length > 0, file);
    const named = FAMILY_MODULES.filter((f) => new RegExp(`['"\`/]${esc(f.name)}(['"\`/.]|\\.json)`).test(lists));
    t.deepEqual(
      named.map((f) => f.name),
      [],
      file,
    );
  }
});

test('the scan catches what it claims to: a folder import, the name, a metric key and a metric name', (t) => {
  const f = FAMILY_MODULES.find((x) => x.name === 'kvm_irq')!;
  const [key, def] = Object.entries(f.metrics as Readonly<Record<string, MetricDef>>).find(([, d]) => d.family === 'kvm_irq')!;
  t.deepEqual(mentions(code(`import { x } from '../families/kvm_irq/family.js';`), f.name, f.metrics), ['folder families/kvm_irq/']);
  t.deepEqual(mentions(code(`const n = 'kvm_irq';`), f.name, f.metrics), ["name 'kvm_irq'"]);
  t.deepEqual(mentions(code(`store.set(M.${key}, {}, 1);`), f.name, f.metrics), [`M.${key}`]);
  t.deepEqual(mentions(code(`rate(${def.name}[5m])`), f.name, f.metrics), [def.name]);
  t.deepEqual(mentions(code(`// see families/kvm_irq/kvm_irq.bpf.c\nconst kvm = 1;`), f.name, f.metrics), [], 'comments and other names do not count');
});
