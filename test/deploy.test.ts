// deploy/: the plain manifests validate against the Kubernetes and prometheus-operator
// schemas (kubernetes-models, @kubernetes-models/prometheus-operator: helm and kubeconform
// are in neither the Debian nor the npm registry here); the chart, rendered by
// deploy/helm-render.ts with its values.yaml, equals them; the DaemonSet asks for the
// privileges the README lists; the Dockerfile is checked statically (no docker here).
import test from 'ava';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigMap, Namespace, Service, ServiceAccount } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { PrometheusRule, ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';
import { REPO_ROOT, staleArtifacts } from '../alerts/artifacts.js';
import { CHART_DASHBOARDS, CHART_DASHBOARDS_TARGET, CHART_DIR, MANIFEST_DIR, chartDashboardsLinked, generateDeploy } from '../deploy/generate.js';
import { renderTemplate } from '../deploy/helm-render.js';
import { CAPABILITIES, DEFAULT_VALUES, HOST_MOUNTS } from '../deploy/model.js';
import { configSchema } from '../agent/config.js';
import { VmResolver } from '../agent/vms.js';

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: unknown };

const MODELS: Record<string, new (o: never) => { validate(): void }> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'apps/v1/DaemonSet': DaemonSet,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
};

/** Throws the schema's first complaint; unknown kinds are errors too. */
function validate(o: Obj): void {
  const M = MODELS[`${o.apiVersion}/${o.kind}`];
  if (!M) throw new Error(`no schema for ${o.apiVersion}/${o.kind}`);
  new M(o as never).validate();
}

const read = (rel: string): string => fs.readFileSync(join(REPO_ROOT, rel), 'utf8');

function plainManifests(): Map<string, Obj> {
  const out = new Map<string, Obj>();
  for (const f of fs.readdirSync(join(REPO_ROOT, MANIFEST_DIR)).sort()) out.set(f, parse(read(`${MANIFEST_DIR}/${f}`)) as Obj);
  return out;
}

function renderChart(values: unknown = parse(read(`${CHART_DIR}/values.yaml`))): Obj[] {
  const dir = join(REPO_ROOT, CHART_DIR, 'templates');
  const ctx = {
    values,
    release: { Name: 'hvwatch', Namespace: 'hvwatch' },
    files: (p: string) => {
      try {
        return fs.readFileSync(join(REPO_ROOT, CHART_DIR, p), 'utf8');
      } catch {
        return undefined;
      }
    },
  };
  const docs: Obj[] = [];
  for (const f of fs.readdirSync(dir).sort()) {
    for (const d of parseAllDocuments(renderTemplate(fs.readFileSync(join(dir, f), 'utf8'), ctx))) {
      if (d.errors.length) throw new Error(`${f}: ${d.errors[0]!.message}`);
      const o = d.toJS() as Obj | null;
      if (o) docs.push(o);
    }
  }
  return docs;
}

/** ConfigMap entries that are YAML compare by content (Helm's toYaml orders keys its own way). */
function normalize(o: Obj): Obj {
  if (o.kind !== 'ConfigMap') return o;
  const data = Object.fromEntries(Object.entries(o.data as Record<string, string>).map(([k, v]) => [k, k.endsWith('.yaml') ? parse(v) : v]));
  return { ...o, data };
}

const daemonSet = (): Obj => plainManifests().get('30-daemonset.yaml')!;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const container = (ds: Obj): any => (ds as any).spec.template.spec.containers[0];

test('deploy/ outputs are what deploy/generate.ts makes from the model (run npm run build after a change)', (t) => {
  t.deepEqual(staleArtifacts(generateDeploy()), []);
});

test('every plain manifest validates against the Kubernetes OpenAPI and prometheus-operator CRD schemas (kubernetes-models)', (t) => {
  const m = plainManifests();
  t.deepEqual(
    [...m.values()].map((o) => o.kind),
    ['Namespace', 'ServiceAccount', 'ConfigMap', 'DaemonSet', 'Service', 'ServiceMonitor', 'PrometheusRule', 'ConfigMap'],
  );
  for (const [f, o] of m) t.notThrows(() => validate(o), f);
  // The validator is live: the same DaemonSet with a port given as text, or a ServiceMonitor
  // with a malformed interval, is refused.
  const bad = structuredClone(daemonSet());
  container(bad).ports[0].containerPort = 'ninety';
  t.throws(() => validate(bad), { message: /containerPort must be integer/ });
  const sm = structuredClone(m.get('50-servicemonitor.yaml')!) as Obj & { spec: { endpoints: { interval: string }[] } };
  sm.spec.endpoints[0]!.interval = 'half a minute';
  t.throws(() => validate(sm), { message: /interval must match pattern/ });
});

test('the chart rendered with its values.yaml (deploy/helm-render.ts, NOT `helm template`: helm is not packaged here) equals the plain manifests, and validates', (t) => {
  const plain = [...plainManifests().values()].filter((o) => o.kind !== 'Namespace'); // helm install --create-namespace
  const chart = renderChart();
  const key = (o: Obj) => `${o.kind}/${o.metadata.name}`;
  t.deepEqual(chart.map(key).sort(), plain.map(key).sort());
  for (const o of chart) {
    t.deepEqual(normalize(o), normalize(plain.find((p) => key(p) === key(o))!), key(o));
    t.notThrows(() => validate(o), key(o));
  }
});

test('chart values switch what they claim: SYS_ADMIN, SYS_RESOURCE, the prometheus-operator objects, the image, extra selector labels', (t) => {
  const v = structuredClone(DEFAULT_VALUES) as typeof DEFAULT_VALUES;
  v.privileges = { sysAdmin: true, sysResource: false };
  v.serviceMonitor.enabled = false;
  v.prometheusRule.labels = { ...v.prometheusRule.labels, release: 'kube-prometheus-stack' };
  v.image.tag = '9.9.9';
  const docs = renderChart(v);
  const ds = docs.find((o) => o.kind === 'DaemonSet')!;
  t.deepEqual(container(ds).securityContext.capabilities.add, ['BPF', 'PERFMON', 'SYS_ADMIN', 'DAC_READ_SEARCH']);
  t.is(container(ds).image, 'hvwatch:9.9.9');
  t.false(docs.some((o) => o.kind === 'ServiceMonitor'));
  t.is(docs.find((o) => o.kind === 'PrometheusRule')!.metadata.labels!.release, 'kube-prometheus-stack');
  for (const o of docs) t.notThrows(() => validate(o));
});

test('the DaemonSet asks for least privilege: drop ALL, the listed capabilities each with an inline reason, read-only root and mounts', (t) => {
  const ds = daemonSet();
  const c = container(ds);
  const sc = c.securityContext;
  t.deepEqual(sc.capabilities.drop, ['ALL']);
  t.deepEqual(sc.capabilities.add, ['BPF', 'PERFMON', 'SYS_RESOURCE', 'DAC_READ_SEARCH'], 'SYS_ADMIN only when privileges.sysAdmin');
  t.like(sc, { readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, privileged: false });
  const text = read(`${MANIFEST_DIR}/30-daemonset.yaml`);
  for (const cap of sc.capabilities.add as string[]) {
    const why = CAPABILITIES.find((x) => x.cap === cap)!.why;
    t.true(text.includes(`- ${cap} # ${why}`), `${cap} carries its reason inline`);
  }
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const pod = (ds as any).spec.template.spec;
  t.false(pod.hostPID);
  t.false(pod.hostNetwork ?? false);
  t.deepEqual(pod.tolerations, [{ operator: 'Exists' }], 'one toleration without a key tolerates every taint');
  const mounts = new Map<string, { mountPath: string; readOnly?: boolean }>(c.volumeMounts.map((m: { name: string }) => [m.name, m]));
  for (const want of ['/sys/kernel/btf', '/sys/fs/cgroup', '/sys/kernel/tracing', '/sys/fs/bpf', '/proc', '/var/log/pods', '/var/log/containers']) {
    const vol = pod.volumes.find((v: { hostPath?: { path: string } }) => v.hostPath?.path === want);
    t.truthy(vol, `hostPath ${want}`);
    t.true(mounts.get(vol.name)?.readOnly, `${want} is mounted read-only`);
  }
  t.is(mounts.get('host-proc')!.mountPath, '/host/proc');
  t.deepEqual(c.env, [{ name: 'HVWATCH_PROC_ROOT', value: '/host/proc' }]);
  t.is(c.livenessProbe.httpGet.path, '/healthz');
  t.is(c.readinessProbe.httpGet.path, '/readyz');
  t.deepEqual(HOST_MOUNTS.map((m) => m.host).sort(), [
    '/proc',
    '/sys/fs/bpf',
    '/sys/fs/cgroup',
    '/sys/kernel/btf',
    '/sys/kernel/tracing',
    '/var/log/containers',
    '/var/log/pods',
  ]);
});

test('the agent config the manifests ship is a valid hvwatch config with Kubernetes labels on auto', (t) => {
  const cm = plainManifests().get('20-configmap.yaml') as Obj & { data: Record<string, string> };
  const cfg = configSchema.parse(parse(cm.data['hvwatch.yaml']!));
  t.is(cfg.cgroups.kubernetes, 'auto');
  t.is(cfg.listen, ':9477');
  t.deepEqual(container(daemonSet()).args, ['run', '--config', '/etc/hvwatch/hvwatch.yaml']);
});

test('dashboards ConfigMap carries every dashboards/json file, labelled for the Grafana sidecar; PrometheusRule is alerts/prometheusrule.yaml', (t) => {
  const m = plainManifests();
  const dash = m.get('70-dashboards.yaml') as Obj & { data: Record<string, string> };
  t.is(dash.metadata.labels!.grafana_dashboard, '1');
  const files = fs
    .readdirSync(join(REPO_ROOT, 'dashboards/json'))
    .filter((f) => f.endsWith('.json'))
    .sort();
  t.deepEqual(Object.keys(dash.data).sort(), files);
  for (const f of files) t.is(dash.data[f], read(`dashboards/json/${f}`));
  const pr = m.get('60-prometheusrule.yaml') as Obj & { spec: unknown };
  t.deepEqual(pr.spec, (parse(read('alerts/prometheusrule.yaml')) as { spec: unknown }).spec);
});

test('the dashboards JSON is stored once: the chart reads dashboards/json through a symlink, and its rendered ConfigMap carries each file', (t) => {
  t.true(fs.lstatSync(join(REPO_ROOT, CHART_DASHBOARDS)).isSymbolicLink(), `${CHART_DASHBOARDS} is a symlink`);
  t.is(fs.readlinkSync(join(REPO_ROOT, CHART_DASHBOARDS)), CHART_DASHBOARDS_TARGET);
  t.true(chartDashboardsLinked());
  t.false(
    [...generateDeploy().keys()].some((k) => k.startsWith(`${CHART_DASHBOARDS}/`)),
    'the generator writes no copy into the chart',
  );
  const cm = renderChart().find((o) => o.kind === 'ConfigMap' && o.metadata.name?.endsWith('-dashboards')) as
    (Obj & { data: Record<string, string> }) | undefined;
  t.truthy(cm, 'the chart renders the dashboards ConfigMap');
  const files = fs
    .readdirSync(join(REPO_ROOT, 'dashboards/json'))
    .filter((f) => f.endsWith('.json'))
    .sort();
  t.deepEqual(Object.keys(cm!.data).sort(), files);
  for (const f of files) t.is(cm!.data[f], read(`dashboards/json/${f}`), f);
});

test('VM identity reads the host /proc the DaemonSet mounts (HVWATCH_PROC_ROOT)', (t) => {
  const root = fs.mkdtempSync(join(tmpdir(), 'hvwatch-proc-'));
  const pid = 4242;
  fs.mkdirSync(join(root, String(pid)));
  // /proc/PID/stat: field 22 (start time) = 777.
  fs.writeFileSync(join(root, String(pid), 'stat'), `${pid} (qemu-system-x86) S 1 ${Array.from({ length: 17 }, () => '0').join(' ')} 777 0 0\n`);
  fs.writeFileSync(join(root, String(pid), 'cmdline'), ['qemu-system-x86_64', '-name', 'guest=db-17,debug-threads=on', ''].join('\0'));
  const before = process.env.HVWATCH_PROC_ROOT;
  process.env.HVWATCH_PROC_ROOT = root;
  try {
    t.deepEqual(new VmResolver().resolve(pid), { name: 'db-17', source: 'qemu' });
  } finally {
    if (before === undefined) delete process.env.HVWATCH_PROC_ROOT;
    else process.env.HVWATCH_PROC_ROOT = before;
    fs.rmSync(root, { recursive: true });
  }
});

test('Dockerfile (static checks only: no docker on this machine): Debian 12 stages, the build tools, and every file the runtime copies exists after a local build', (t) => {
  const df = read('deploy/Dockerfile');
  const froms = [...df.matchAll(/^FROM (\S+) AS (\w+)$/gm)].map((m) => [m[1], m[2]]);
  t.deepEqual(
    froms,
    [
      ['node:20-bookworm', 'build'],
      ['node:20-bookworm-slim', 'runtime'],
    ],
    'bookworm = Debian 12; Node 20 as package.json engines asks',
  );
  t.regex((JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node, /^>=20\./);
  const [buildStage, runtimeStage] = df.split(/^FROM .* AS runtime$/m) as [string, string];
  for (const pkg of ['clang', 'make', 'libbpf-dev']) t.regex(buildStage, new RegExp(`apt-get install[^\\n]*\\b${pkg}\\b`), pkg);
  for (const step of ['npm ci', 'make -C bpf', 'npx tsc -p .']) t.true(buildStage.includes(step), step);
  t.regex(runtimeStage, /apt-get install[^\n]*\blibbpf1\b/);
  t.notRegex(runtimeStage, /clang|libbpf-dev/, 'no compiler in the runtime image');
  // What the runtime stage copies out of the build stage is what a local build produces.
  for (const [, src] of runtimeStage.matchAll(/^COPY --from=build \/src\/(\S+) /gm)) t.true(fs.existsSync(join(REPO_ROOT, src!)), src!);
  t.true(fs.readdirSync(join(REPO_ROOT, 'bpf/build')).some((f) => f.endsWith('.bpf.o')));
  const entry = /^ENTRYPOINT \["node", "\/app\/(\S+)"\]$/m.exec(df)?.[1];
  t.is(entry, 'dist/agent/cli.js');
  t.true(fs.existsSync(join(REPO_ROOT, entry!)));
  // Context copies exist and are not excluded by the Dockerfile's own .dockerignore.
  const ignored = read('deploy/Dockerfile.dockerignore')
    .split('\n')
    .filter((l) => l && !l.startsWith('#'));
  for (const [, src] of df.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const p of src!.split(' ')) {
      t.true(fs.existsSync(join(REPO_ROOT, p)), `COPY ${p}`);
      t.false(ignored.includes(p), `${p} is dockerignored`);
    }
  }
  t.regex(df, /^USER 0$/m);
});
