// Kubernetes labels for cgroup paths: namespace, pod and container, decoded from the path
// the kubelet gives each pod and container cgroup, without the API server.
//
// Cgroup path shapes (relative to the memory hierarchy root; v1 and v2 look the same there):
//   cgroupfs driver  /kubepods[/burstable|/besteffort]/pod<uid>/<container>
//                    where <container> is <64-hex id> (containerd, dockershim) or crio-<id>
//   systemd driver   /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _>.slice/<scope>
//                    where <scope> is cri-containerd-<id>.scope, crio-<id>.scope or docker-<id>.scope
// (kubelet pkg/kubelet/cm/cgroup_manager_linux.go: the systemd driver escapes '-' in a uid as
// '_' and nests each slice under its parent's name; pod_container_manager_linux.go: the pod
// cgroup is "pod"+uid under the QoS cgroup; guaranteed pods sit directly under kubepods.)
// The kubepods root may itself be nested (kind: /kubelet.slice/kubelet-kubepods.slice/...,
// docker-in-docker: /docker/<id>/kubepods/...), so the first kubepods segment anywhere counts.
// cri-o's conmon scope (crio-conmon-<id>.scope) is a pod-level process, not a container.
//
// Names come from two host directories the kubelet keeps (mounted read-only into the pod):
//   /var/log/pods/<namespace>_<pod>_<uid>/          pod uid -> namespace, pod
//     (pkg/kubelet/kuberuntime/helpers.go BuildPodLogsDirectory)
//   /var/log/containers/<pod>_<namespace>_<container>-<container id>.log   id -> container
//     (pkg/kubelet/kuberuntime/kuberuntime_container.go logSymlink; the name is cut to
//     255 bytes, so a long one carries only a prefix of the id)
// Namespace, pod and container names are DNS-1123 names, which cannot contain '_', so the
// '_'-separated fields are unambiguous. Only directory entries are read, never the logs.
import * as fs from 'node:fs';
import { log } from './log.js';

export const KUBE_LABELS = ['namespace', 'pod', 'container'] as const;
export type KubeLabels = Readonly<Record<(typeof KUBE_LABELS)[number], string>>;
/** An empty label value is an absent label to Prometheus (and the exporter omits it). */
export const NO_KUBE_LABELS: KubeLabels = Object.freeze({ namespace: '', pod: '', container: '' });

export type KubeDriver = 'cgroupfs' | 'systemd';

export interface KubeCgroup {
  driver: KubeDriver;
  qos: 'guaranteed' | 'burstable' | 'besteffort';
  /** Pod uid with dashes (the systemd driver's underscores undone). */
  podUid: string;
  /** Container id (lowercase hex) when the path is a container's cgroup or below it. */
  containerId?: string;
  /** Which runtime named the container cgroup: containerd, crio, docker, or '' (bare id). */
  runtime?: string;
}

const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const CGROUPFS_POD = /^pod([0-9a-f-]{36})$/;
const SYSTEMD_POD = /(?:^|-)kubepods(?:-(burstable|besteffort))?-pod([0-9a-f_]{36})\.slice$/;
const CONTAINER = /^(?:(docker|crio|cri-containerd|containerd)-)?([0-9a-f]{64})(?:\.scope)?$/;
const RUNTIME: Record<string, string> = { docker: 'docker', crio: 'crio', 'cri-containerd': 'containerd', containerd: 'containerd' };

/** Decodes a kubelet-made cgroup path; undefined for anything else (system services, VMs). */
export function parseKubeCgroupPath(cgPath: string): KubeCgroup | undefined {
  const segs = cgPath.split('/').filter((s) => s !== '');
  const root = segs.findIndex((s) => s === 'kubepods' || s === 'kubepods.slice' || s.endsWith('-kubepods.slice'));
  if (root < 0) return undefined;
  const driver: KubeDriver = segs[root] === 'kubepods' ? 'cgroupfs' : 'systemd';
  let i = root + 1;
  let qos: KubeCgroup['qos'] = 'guaranteed';
  let uid: string | undefined;
  if (driver === 'cgroupfs') {
    if (segs[i] === 'burstable' || segs[i] === 'besteffort') qos = segs[i++] as KubeCgroup['qos'];
    uid = CGROUPFS_POD.exec(segs[i] ?? '')?.[1];
  } else {
    const q = /-kubepods-(burstable|besteffort)\.slice$|^kubepods-(burstable|besteffort)\.slice$/.exec(segs[i] ?? '');
    if (q) {
      qos = (q[1] ?? q[2]) as KubeCgroup['qos'];
      i++;
    }
    const m = SYSTEMD_POD.exec(segs[i] ?? '');
    // The QoS in the pod slice's name must agree with its parent's.
    if (m && (m[1] ?? 'guaranteed') === qos) uid = m[2]!.replace(/_/g, '-');
  }
  if (!uid || !UID.test(uid)) return undefined;
  const out: KubeCgroup = { driver, qos, podUid: uid };
  const c = CONTAINER.exec(segs[i + 1] ?? '');
  if (c) {
    out.containerId = c[2]!;
    out.runtime = c[1] ? RUNTIME[c[1]]! : '';
  }
  return out;
}

export interface PodRef {
  namespace: string;
  pod: string;
}

/** `<namespace>_<pod>_<uid>` (a /var/log/pods entry) -> its parts; undefined if not that shape. */
export function parsePodLogDir(name: string): (PodRef & { uid: string }) | undefined {
  const f = name.split('_');
  if (f.length !== 3 || !f[0] || !f[1] || !UID.test(f[2]!)) return undefined;
  return { namespace: f[0], pod: f[1], uid: f[2]! };
}

/** `<pod>_<namespace>_<container>-<id>.log` (a /var/log/containers entry) -> its parts. */
export function parseContainerLogLink(name: string): (PodRef & { container: string; id: string }) | undefined {
  if (!name.endsWith('.log')) return undefined;
  const base = name.slice(0, -4);
  const dash = base.lastIndexOf('-');
  if (dash < 0) return undefined;
  const id = base.slice(dash + 1);
  const f = base.slice(0, dash).split('_');
  // A name cut at 255 bytes keeps at least a short id prefix or it is useless.
  if (f.length !== 3 || !f[0] || !f[1] || !f[2] || !/^[0-9a-f]{12,64}$/.test(id)) return undefined;
  return { pod: f[0], namespace: f[1], container: f[2], id };
}

export interface KubeLabelerOptions {
  podLogsDir: string;
  containerLogsDir: string;
  /** Minimum time between two directory scans triggered by a miss (default 5000 ms). */
  rescanIntervalMs?: number;
  now?: () => number;
  /** Bound on remembered paths (default 16384; the oldest go first). */
  maxEntries?: number;
}

export interface KubeLabelerStats {
  scans: number;
  /** Kubelet-shaped paths whose pod (or container) was not found at the last try. */
  unresolved: number;
  /** Errors reading the two directories (missing mount, permissions), by directory. */
  readErrors: Record<string, string>;
}

/**
 * Labels for cgroup paths. A path that resolves fully is cached for good (a cgroup path
 * names one pod uid and container id for its whole life); a kubelet-shaped path that does
 * not (yet) resolve is retried after the next scan, so a pod whose log directory appears
 * after its cgroup gets its labels within rescanIntervalMs.
 */
export class KubeLabeler {
  private readonly opts: Required<Omit<KubeLabelerOptions, 'now'>> & { now: () => number };
  private pods = new Map<string, PodRef>();
  private containers = new Map<string, PodRef & { container: string }>();
  /** Cut ids (names over 255 bytes) matched by prefix. */
  private cutIds: [string, PodRef & { container: string }][] = [];
  private readonly cache = new Map<string, { labels: KubeLabels; complete: boolean; scan: number }>();
  private lastScanAt = -Infinity;
  private readonly _stats: KubeLabelerStats = { scans: 0, unresolved: 0, readErrors: {} };

  constructor(opts: KubeLabelerOptions) {
    this.opts = { rescanIntervalMs: 5000, maxEntries: 16384, now: Date.now, ...opts };
  }

  get stats(): KubeLabelerStats {
    return { ...this._stats, readErrors: { ...this._stats.readErrors } };
  }

  labels(cgPath: string): KubeLabels {
    const hit = this.cache.get(cgPath);
    if (hit?.complete) return hit.labels;
    if (hit && hit.scan === this._stats.scans && !this.scanDue()) return hit.labels;
    const k = parseKubeCgroupPath(cgPath);
    if (!k) return this.remember(cgPath, NO_KUBE_LABELS, true);
    let r = this.lookup(k);
    if (!r.complete && this.scanDue()) {
      this.scan();
      r = this.lookup(k);
    }
    if (!r.complete) this._stats.unresolved++;
    return this.remember(cgPath, r.labels, r.complete);
  }

  /** Re-read both directories now. */
  scan(): void {
    this.lastScanAt = this.opts.now();
    this._stats.scans++;
    const pods = new Map<string, PodRef>();
    for (const n of this.list(this.opts.podLogsDir)) {
      const p = parsePodLogDir(n);
      if (p) pods.set(p.uid, { namespace: p.namespace, pod: p.pod });
    }
    const containers = new Map<string, PodRef & { container: string }>();
    const cut: [string, PodRef & { container: string }][] = [];
    for (const n of this.list(this.opts.containerLogsDir)) {
      const c = parseContainerLogLink(n);
      if (!c) continue;
      const ref = { namespace: c.namespace, pod: c.pod, container: c.container };
      if (c.id.length === 64) containers.set(c.id, ref);
      else cut.push([c.id, ref]);
    }
    this.pods = pods;
    this.containers = containers;
    this.cutIds = cut;
  }

  private scanDue(): boolean {
    return this.opts.now() - this.lastScanAt >= this.opts.rescanIntervalMs;
  }

  private lookup(k: KubeCgroup): { labels: KubeLabels; complete: boolean } {
    const pod = this.pods.get(k.podUid);
    if (!pod) return { labels: NO_KUBE_LABELS, complete: false };
    if (!k.containerId) return { labels: { ...pod, container: '' }, complete: true };
    const c = this.containers.get(k.containerId) ?? this.cutIds.find(([id]) => k.containerId!.startsWith(id))?.[1];
    // The pod's sandbox (pause) container has a cgroup but no log link: pod labels only,
    // and it is looked up again after later scans in case it is a container not linked yet.
    if (!c || c.pod !== pod.pod || c.namespace !== pod.namespace) return { labels: { ...pod, container: '' }, complete: false };
    return { labels: { ...pod, container: c.container }, complete: true };
  }

  private remember(cgPath: string, labels: KubeLabels, complete: boolean): KubeLabels {
    this.cache.delete(cgPath);
    this.cache.set(cgPath, { labels, complete, scan: this._stats.scans });
    while (this.cache.size > this.opts.maxEntries) this.cache.delete(this.cache.keys().next().value!);
    return labels;
  }

  private list(dir: string): string[] {
    try {
      const names = fs.readdirSync(dir);
      delete this._stats.readErrors[dir];
      return names;
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (this._stats.readErrors[dir] !== why) {
        log('warn', 'cannot list a kubelet directory: pods there get no namespace/pod/container labels (mount it read-only)', { dir, error: why });
      }
      this._stats.readErrors[dir] = why;
      return [];
    }
  }
}

export interface KubeConfig {
  kubernetes: 'auto' | boolean;
  podLogsDir: string;
  containerLogsDir: string;
}

/** Whether Kubernetes labels are on: `auto` means "inside a pod", which the kubelet marks
 * by setting KUBERNETES_SERVICE_HOST in every container's environment. */
export function kubernetesEnabled(cfg: Pick<KubeConfig, 'kubernetes'>, env: NodeJS.ProcessEnv = process.env): boolean {
  return cfg.kubernetes === 'auto' ? !!env.KUBERNETES_SERVICE_HOST : cfg.kubernetes;
}

export function kubeLabelerFor(cfg: KubeConfig, env: NodeJS.ProcessEnv = process.env): KubeLabeler | undefined {
  return kubernetesEnabled(cfg, env) ? new KubeLabeler({ podLogsDir: cfg.podLogsDir, containerLogsDir: cfg.containerLogsDir }) : undefined;
}
