// One model of the Kubernetes deployment. deploy/generate.ts renders it twice: with the
// default values into the plain manifests (deploy/manifests/), and with placeholders into
// the Helm chart's templates (deploy/helm/hvwatch/templates/), so the two cannot drift.
// test/deploy.test.ts renders the chart's templates with values.yaml and checks that they
// equal the plain manifests.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { REPO_ROOT } from '../alerts/artifacts.js';

export const VERSION: string = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
export const NAME = 'hvwatch';
export const PORT = 9477;

/* Footprint measured here (2 CPUs, kernel 6.18, default config, scraped every 15 s; see the
 * "Deploying on Kubernetes" section of the README): RSS 110-131 MiB, 163 MB charged to the
 * agent's memory cgroup (28.8 MB of it kernel memory), 0.23 s CPU per minute (~4 mCPU).
 * Per-CPU BPF maps add 34 MB per possible CPU at bpf.mapEntries 10240 (value bytes x entries,
 * bpftool map show), which grows with the host: hence a generous memory limit and no CPU limit
 * (a throttled agent answers scrapes late; it uses ~4 mCPU between them). */
export const DEFAULT_VALUES = {
  image: { repository: NAME, tag: VERSION, pullPolicy: 'IfNotPresent' },
  /** The agent's configuration file (README "Configuration"), mounted at /etc/hvwatch/hvwatch.yaml. */
  config: {
    listen: `:${PORT}`,
    cgroups: { kubernetes: 'auto', podLogsDir: '/var/log/pods', containerLogsDir: '/var/log/containers' },
  },
  privileges: {
    /** RLIMIT_MEMLOCK for BPF maps: only kernels before 5.11 need it. */
    sysResource: true,
    /** Kernels before 5.8 (no CAP_BPF/CAP_PERFMON) and bpf.stats: true need CAP_SYS_ADMIN. */
    sysAdmin: false,
  },
  resources: { requests: { cpu: '25m', memory: '192Mi' }, limits: { memory: '1Gi' } },
  /** Every node, whatever its taints: a hypervisor host is usually tainted for VMs only. */
  tolerations: [{ operator: 'Exists' }],
  nodeSelector: { 'kubernetes.io/os': 'linux' },
  serviceMonitor: { enabled: true, interval: '30s', labels: { 'app.kubernetes.io/name': NAME } as Record<string, string> },
  prometheusRule: { enabled: true, labels: { 'app.kubernetes.io/name': NAME } as Record<string, string> },
  dashboards: { enabled: true, labels: { 'app.kubernetes.io/name': NAME, grafana_dashboard: '1' } as Record<string, string> },
};
export type Values = typeof DEFAULT_VALUES;

/** Where the model's variable parts come from: the values themselves (plain manifests) or
 * placeholders that deploy/generate.ts turns into template actions (chart). */
export interface Source {
  /** A scalar value. */
  v(path: string): string | number;
  /** A structured value, emitted with toYaml. */
  y(path: string): unknown;
  /** A structured value as YAML text (a ConfigMap entry). */
  yText(path: string): string;
  /** A list item kept only when the boolean value at `path` is true. */
  when<T>(path: string, item: T): T | undefined;
  release: { name: string; namespace: string };
  /** A file's content (chart: .Files.Get). */
  file(chartPath: string, content: string): string;
  /** A file's content parsed as YAML (chart: .Files.Get indented under the key). */
  yamlFile(chartPath: string, content: string): unknown;
}

function at(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

export function valuesSource(values: Values, release = { name: NAME, namespace: NAME }): Source {
  return {
    v: (p) => at(values, p) as string | number,
    y: (p) => at(values, p),
    yText: (p) => stringify(at(values, p)),
    when: (p, item) => (at(values, p) ? item : undefined),
    release,
    file: (_p, content) => content,
    yamlFile: (_p, content) => parse(content),
  };
}

/** The chart: placeholders that generate.ts rewrites into Go template actions. */
export const PH = {
  v: (p: string) => `@@V:${p}@@`,
  y: (p: string) => `@@Y:${p}@@`,
  ty: (p: string) => `@@TY:${p}@@`,
  if: (p: string) => `@@IF:${p}@@`,
  f: (p: string) => `@@F:${p}@@`,
  fy: (p: string) => `@@FY:${p}@@`,
};

export function templateSource(): Source {
  return {
    v: (p) => PH.v(p),
    y: (p) => PH.y(p),
    yText: (p) => PH.ty(p),
    when: (p, item) => (typeof item === 'string' ? (`${PH.if(p)}${item}` as typeof item) : item),
    release: { name: '@@R:Name@@', namespace: '@@R:Namespace@@' },
    file: (p) => PH.f(p),
    yamlFile: (p) => PH.fy(p),
  };
}

/** Each added capability and why (docs/security.md "Privileges" lists them; test/deploy.test.ts checks each reason is inline in the DaemonSet). */
export const CAPABILITIES: { cap: string; why: string; when?: string }[] = [
  { cap: 'BPF', why: 'create maps, load BTF and programs (bpf(2); kernel >= 5.8)' },
  { cap: 'PERFMON', why: 'load tracing programs, attach tracepoints/tp_btf/fentry/kprobes, read kernel memory in them (kernel >= 5.8)' },
  {
    cap: 'SYS_RESOURCE',
    why: 'raise RLIMIT_MEMLOCK for BPF maps: only kernels < 5.11 account map memory that way (privileges.sysResource)',
    when: 'privileges.sysResource',
  },
  {
    cap: 'SYS_ADMIN',
    why: 'kernels < 5.8 (no CAP_BPF/CAP_PERFMON), or bpf.stats: true (BPF_ENABLE_STATS needs it); off by default (privileges.sysAdmin)',
    when: 'privileges.sysAdmin',
  },
  { cap: 'DAC_READ_SEARCH', why: 'walk every cgroup directory (cgroup id -> path) and list /var/log/pods whatever their modes; read-only, no write bypass' },
];

/** Host paths the DaemonSet mounts, each read-only, and why. */
export const HOST_MOUNTS: { name: string; host: string; mount: string; why: string; type?: string }[] = [
  { name: 'btf', host: '/sys/kernel/btf', mount: '/sys/kernel/btf', why: 'kernel BTF for CO-RE relocations and tp_btf', type: 'Directory' },
  {
    name: 'cgroup',
    host: '/sys/fs/cgroup',
    mount: '/sys/fs/cgroup',
    why: "the host memory cgroup hierarchy, over the pod's own namespaced view: cgroup id -> path, memory.stat",
    type: 'Directory',
  },
  {
    name: 'tracing',
    host: '/sys/kernel/tracing',
    mount: '/sys/kernel/tracing',
    why: 'tracefs: libbpf resolves tracepoint ids there (the agent need not mount it)',
  },
  { name: 'bpffs', host: '/sys/fs/bpf', mount: '/sys/fs/bpf', why: 'the host bpffs; the agent pins nothing today, so read-only' },
  {
    name: 'host-proc',
    host: '/proc',
    mount: '/host/proc',
    why: 'VM identity: BPF reports host pids, so VMM command lines are read from the host /proc (HVWATCH_PROC_ROOT)',
    type: 'Directory',
  },
  { name: 'pod-logs', host: '/var/log/pods', mount: '/var/log/pods', why: 'pod uid -> namespace/pod (directory names only; cgroups.podLogsDir)' },
  {
    name: 'container-logs',
    host: '/var/log/containers',
    mount: '/var/log/containers',
    why: 'container id -> container name (link names only; cgroups.containerLogsDir)',
  },
];

export interface Manifest {
  /** File name under deploy/manifests/ (also the chart template's name without the prefix). */
  file: string;
  /** Values path that switches the whole object on (chart: `if`); the plain manifests have it. */
  enabledBy?: string;
  /** Not in the chart (Helm creates the namespace). */
  plainOnly?: boolean;
  object: Record<string, unknown>;
  /** Inline comments: YAML path -> text. */
  comments?: [(string | number)[], string][];
}

const labels = { 'app.kubernetes.io/name': NAME, 'app.kubernetes.io/component': 'agent' };
const selector = { 'app.kubernetes.io/name': NAME };

export function manifests(s: Source, files: { dashboards: Map<string, string>; prometheusRule: string }): Manifest[] {
  const name = s.release.name;
  const namespace = s.release.namespace;
  const meta = (n: string, extra: Record<string, unknown> = {}) => ({ name: n, namespace, labels, ...extra });
  const caps = CAPABILITIES.map((c) => (c.when ? s.when(c.when, c.cap) : c.cap));
  const capList = caps.filter((c): c is string => c !== undefined);
  const capComments: [(string | number)[], string][] = [];
  caps.forEach((c, i) => {
    if (c !== undefined)
      capComments.push([['spec', 'template', 'spec', 'containers', 0, 'securityContext', 'capabilities', 'add', capList.indexOf(c)], CAPABILITIES[i]!.why]);
  });
  const pr = parse(files.prometheusRule) as { spec: unknown };

  const daemonSet = {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: meta(name),
    spec: {
      selector: { matchLabels: selector },
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } },
      template: {
        metadata: { labels },
        spec: {
          serviceAccountName: name,
          automountServiceAccountToken: false,
          hostPID: false,
          tolerations: s.y('tolerations'),
          nodeSelector: s.y('nodeSelector'),
          securityContext: { seccompProfile: { type: 'RuntimeDefault' } },
          containers: [
            {
              name: 'hvwatch',
              image: `${s.v('image.repository')}:${s.v('image.tag')}`,
              imagePullPolicy: s.v('image.pullPolicy'),
              args: ['run', '--config', '/etc/hvwatch/hvwatch.yaml'],
              env: [{ name: 'HVWATCH_PROC_ROOT', value: '/host/proc' }],
              ports: [{ name: 'metrics', containerPort: PORT, protocol: 'TCP' }],
              livenessProbe: { httpGet: { path: '/healthz', port: 'metrics' }, periodSeconds: 10, timeoutSeconds: 5, failureThreshold: 3 },
              readinessProbe: { httpGet: { path: '/readyz', port: 'metrics' }, periodSeconds: 5, timeoutSeconds: 5, failureThreshold: 3 },
              startupProbe: { httpGet: { path: '/healthz', port: 'metrics' }, periodSeconds: 2, failureThreshold: 30 },
              resources: s.y('resources'),
              securityContext: {
                runAsUser: 0,
                runAsNonRoot: false,
                privileged: false,
                allowPrivilegeEscalation: false,
                readOnlyRootFilesystem: true,
                capabilities: { drop: ['ALL'], add: capList },
              },
              volumeMounts: [
                { name: 'config', mountPath: '/etc/hvwatch', readOnly: true },
                { name: 'tmp', mountPath: '/tmp' },
                ...HOST_MOUNTS.map((m) => ({ name: m.name, mountPath: m.mount, readOnly: true })),
              ],
            },
          ],
          volumes: [
            { name: 'config', configMap: { name } },
            { name: 'tmp', emptyDir: { medium: 'Memory', sizeLimit: '16Mi' } },
            ...HOST_MOUNTS.map((m) => ({ name: m.name, hostPath: { path: m.host, ...(m.type ? { type: m.type } : {}) } })),
          ],
        },
      },
    },
  };
  const volumeComments: [(string | number)[], string][] = HOST_MOUNTS.map((m, i) => [['spec', 'template', 'spec', 'volumes', i + 2], m.why]);
  volumeComments.push(
    [
      ['spec', 'template', 'spec', 'hostPID'],
      'the host /proc is mounted for VM identity instead; sharing the host pid namespace would also expose host processes to signals',
    ],
    [
      ['spec', 'template', 'spec', 'containers', 0, 'securityContext', 'runAsUser'],
      'root with a bounded set: Kubernetes grants added capabilities to uid 0 only (no ambient capabilities)',
    ],
    [
      ['spec', 'template', 'spec', 'securityContext', 'seccompProfile', 'type'],
      'containerd and CRI-O allow bpf(2) with CAP_BPF and perf_event_open(2) with CAP_PERFMON in their default profiles',
    ],
    [['spec', 'template', 'spec', 'containers', 0, 'env', 0, 'value'], 'agent/vms.ts reads VMM command lines here'],
  );

  return [
    {
      file: '00-namespace.yaml',
      plainOnly: true,
      object: { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace, labels: { ...labels, 'pod-security.kubernetes.io/enforce': 'privileged' } } },
      comments: [
        [['metadata', 'labels', 'pod-security.kubernetes.io/enforce'], 'hostPath volumes and added capabilities are outside the baseline Pod Security level'],
      ],
    },
    { file: '10-serviceaccount.yaml', object: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: meta(name), automountServiceAccountToken: false } },
    { file: '20-configmap.yaml', object: { apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(name), data: { 'hvwatch.yaml': s.yText('config') } } },
    { file: '30-daemonset.yaml', object: daemonSet, comments: [...capComments, ...volumeComments] },
    {
      file: '40-service.yaml',
      object: {
        apiVersion: 'v1',
        kind: 'Service',
        metadata: meta(name),
        spec: { clusterIP: 'None', selector, ports: [{ name: 'metrics', port: PORT, targetPort: 'metrics', protocol: 'TCP' }] },
      },
    },
    {
      file: '50-servicemonitor.yaml',
      enabledBy: 'serviceMonitor.enabled',
      object: {
        apiVersion: 'monitoring.coreos.com/v1',
        kind: 'ServiceMonitor',
        metadata: { name, namespace, labels: s.y('serviceMonitor.labels') },
        spec: {
          selector: { matchLabels: selector },
          namespaceSelector: { matchNames: [namespace] },
          endpoints: [
            {
              port: 'metrics',
              path: '/metrics',
              interval: s.v('serviceMonitor.interval'),
              // One target per node: name it after the node, not the pod IP.
              relabelings: [{ sourceLabels: ['__meta_kubernetes_pod_node_name'], targetLabel: 'instance', action: 'replace' }],
            },
          ],
        },
      },
    },
    {
      file: '60-prometheusrule.yaml',
      enabledBy: 'prometheusRule.enabled',
      object: {
        apiVersion: 'monitoring.coreos.com/v1',
        kind: 'PrometheusRule',
        metadata: { name, namespace, labels: s.y('prometheusRule.labels') },
        spec: s.yamlFile('files/prometheusrule-spec.yaml', stringifySpec(pr.spec)),
      },
    },
    {
      file: '70-dashboards.yaml',
      enabledBy: 'dashboards.enabled',
      object: {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: `${name}-dashboards`, namespace, labels: s.y('dashboards.labels'), annotations: { grafana_folder: 'hvwatch' } },
        data: Object.fromEntries([...files.dashboards].map(([f, content]) => [f, s.file(`dashboards/${f}`, content)])),
      },
      comments: [[['metadata', 'labels'], 'grafana_dashboard: "1" is what the Grafana sidecar (kube-prometheus-stack) watches for']],
    },
  ];
}

export function stringifySpec(spec: unknown): string {
  return stringify(spec, { lineWidth: 0 });
}
