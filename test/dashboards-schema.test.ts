// The committed dashboards validate against the schema @grafana/grafana-foundation-sdk
// carries. The SDK (devDependency) ships its schema as TypeScript types only (no JSON
// Schema or OpenAPI file in the package), so ts-json-schema-generator turns those types into
// JSON Schema (test/helpers/grafana-types.ts names them) and ajv validates: the dashboard
// model with additional properties refused, every target as the SDK's Prometheus query, and
// each panel's options and custom field config as its plugin's types. A mutated dashboard
// (unknown key, wrong enum, misspelt option) is shown to fail.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createGenerator } from 'ts-json-schema-generator';
import { Ajv, type ValidateFunction } from 'ajv';
import { ROOT } from './helpers/agent.js';

const PER_PANEL: Readonly<Record<string, readonly [options: string, custom?: string]>> = {
  timeseries: ['TimeseriesOptions', 'TimeseriesFieldConfig'],
  heatmap: ['HeatmapOptions', 'HeatmapFieldConfig'],
  stat: ['StatOptions'],
  table: ['TableOptions', 'TableFieldConfig'],
  bargauge: ['BarGaugeOptions'],
};

function validators(): Record<string, ValidateFunction> {
  const g = createGenerator({
    path: join(ROOT, 'test/helpers/grafana-types.ts'),
    tsconfig: join(ROOT, 'tsconfig.json'),
    skipTypeCheck: true,
    additionalProperties: false,
    topRef: false,
  });
  const ajv = new Ajv({ allErrors: true, strict: false });
  const query = g.createSchema('PrometheusQuery');
  const dash = g.createSchema('GrafanaDashboard');
  // The dashboard model types a target as the SDK's open `Dataquery`; every target here is
  // Prometheus, whose query type is also called Dataquery: its definitions replace the open one.
  if (query.$ref !== '#/definitions/Dataquery') throw new Error(`unexpected Prometheus query schema root ${query.$ref}`);
  dash.definitions = { ...dash.definitions, ...query.definitions };
  const out: Record<string, ValidateFunction> = { GrafanaDashboard: ajv.compile(dash) };
  for (const n of new Set(Object.values(PER_PANEL).flat())) if (n) out[n] = ajv.compile(g.createSchema(n));
  return out;
}

let cached: Record<string, ValidateFunction> | undefined;
const V = () => (cached ??= validators());

type Json = Record<string, unknown>;
/** Every problem of one dashboard, as "where: what". */
function problems(d: Json): string[] {
  const v = V();
  const fmt = (name: string, f: ValidateFunction) => (f.errors ?? []).map((e) => `${name}${e.instancePath}: ${e.message} ${JSON.stringify(e.params)}`);
  const out = v.GrafanaDashboard!(d) ? [] : fmt('dashboard', v.GrafanaDashboard!);
  for (const [i, p] of ((d.panels ?? []) as Json[]).entries()) {
    const kinds = PER_PANEL[p.type as string];
    if (!kinds) continue;
    const [options, custom] = kinds;
    const where = `panel ${i} (${String(p.type)} "${String(p.title)}")`;
    if (!v[options]!(p.options ?? {})) out.push(...fmt(`${where} options`, v[options]!));
    const c = ((p.fieldConfig as Json | undefined)?.defaults as Json | undefined)?.custom ?? {};
    if (custom && !v[custom]!(c)) out.push(...fmt(`${where} fieldConfig.defaults.custom`, v[custom]!));
  }
  return out;
}

const files = readdirSync(join(ROOT, 'dashboards/json')).filter((f) => f.endsWith('.json'));
const load = (f: string) => JSON.parse(readFileSync(join(ROOT, 'dashboards/json', f), 'utf8')) as Json;

test('every dashboard validates against the grafana-foundation-sdk schema (dashboard, Prometheus targets, panel options)', (t) => {
  t.true(files.length >= 4);
  for (const f of files) {
    const d = load(f);
    const types = new Set((d.panels as Json[]).map((p) => p.type as string));
    for (const ty of types)
      t.true(ty === 'row' || ty in PER_PANEL, `${f}: panel type ${ty} has no options schema here: add it to PER_PANEL and grafana-types.ts`);
    t.deepEqual(problems(d), [], f);
  }
});

test('the validation bites: an unknown key, a wrong enum, a misspelt target field and a bad option each fail', (t) => {
  const base = load('kvm.json');
  const panels = base.panels as Json[];
  const ts = panels.findIndex((p) => p.type === 'timeseries');
  const copy = () => structuredClone(base);
  const cases: [string, (d: Json) => void, RegExp][] = [
    ['unknown dashboard key', (d) => void (d.colour = 'red'), /must NOT have additional properties .*"colour"/],
    ['graphTooltip outside DashboardCursorSync', (d) => void (d.graphTooltip = 7), /graphTooltip: must be equal to one of the allowed values/],
    [
      'misspelt Prometheus target field',
      (d) => {
        const p = (d.panels as Json[])[ts]!;
        (p.targets as Json[])[0]!.exprr = 'up';
      },
      /targets\/0: must NOT have additional properties .*"exprr"/,
    ],
    [
      'timeseries legend display mode not in LegendDisplayMode',
      (d) => {
        const p = (d.panels as Json[])[ts]!;
        ((p.options as Json).legend as Json).displayMode = 'sideways';
      },
      /options\/legend\/displayMode: must be equal to one of the allowed values/,
    ],
    ['schemaVersion missing', (d) => void delete d.schemaVersion, /must have required property 'schemaVersion'/],
  ];
  for (const [what, mutate, want] of cases) {
    const d = copy();
    mutate(d);
    const p = problems(d);
    t.true(
      p.some((x) => want.test(x)),
      `${what}: ${p.join('\n') || 'no problem reported'}`,
    );
  }
});
