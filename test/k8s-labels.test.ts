// Kubernetes labels: cgroup paths shaped like the kubelet's (cgroupfs and systemd drivers)
// decoded into namespace/pod/container from a kubelet-style /var/log/pods and
// /var/log/containers tree. Parser tests cover the v2 and odd shapes; the end-to-end test
// makes real memory cgroups in those shapes, writes back pages inside them with a real
// agent attached, and reads the labels from /metrics.
import test from 'ava';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeLabeler, kubeLabelerFor, kubernetesEnabled, NO_KUBE_LABELS, parseContainerLogLink, parseKubeCgroupPath, parsePodLogDir } from '../agent/k8s.js';
import { CgroupResolver } from '../agent/cgroups.js';
import { configSchema, parseConfig, ConfigError } from '../agent/config.js';
import { M } from '../agent/catalog.js';
import { AgentProcess, pick, until, writeConfig, type Sample } from './helpers/agent.js';
import { dirtyWriteInCgroup, fsyncWriteInCgroup, memoryHierarchy, type TestCgroup } from './helpers/memcg.js';

const hex = (c: string): string => c.repeat(64);
const UID_A = '1a2b3c4d-0000-4000-8000-00000000000a';
const UID_B = '1a2b3c4d-0000-4000-8000-00000000000b';
const UID_C = '1a2b3c4d-0000-4000-8000-00000000000c';
const UID_D = '1a2b3c4d-0000-4000-8000-00000000000d';
const us = (uid: string): string => uid.replace(/-/g, '_');

test('parser: cgroupfs driver, every QoS class, containerd/docker bare ids and cri-o prefixes', (t) => {
  t.deepEqual(parseKubeCgroupPath(`/kubepods/burstable/pod${UID_A}/${hex('a')}`), {
    driver: 'cgroupfs',
    qos: 'burstable',
    podUid: UID_A,
    containerId: hex('a'),
    runtime: '',
  });
  t.deepEqual(parseKubeCgroupPath(`/kubepods/besteffort/pod${UID_A}/crio-${hex('b')}`), {
    driver: 'cgroupfs',
    qos: 'besteffort',
    podUid: UID_A,
    containerId: hex('b'),
    runtime: 'crio',
  });
  t.deepEqual(parseKubeCgroupPath(`/kubepods/pod${UID_A}/${hex('c')}`), {
    driver: 'cgroupfs',
    qos: 'guaranteed',
    podUid: UID_A,
    containerId: hex('c'),
    runtime: '',
  });
  // The pod's own cgroup: pod labels, no container.
  t.deepEqual(parseKubeCgroupPath(`/kubepods/burstable/pod${UID_A}`), { driver: 'cgroupfs', qos: 'burstable', podUid: UID_A });
});

test('parser: systemd driver (cgroup v2 unified paths), underscores in the uid, every runtime scope', (t) => {
  const base = `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${us(UID_B)}.slice`;
  t.deepEqual(parseKubeCgroupPath(`${base}/cri-containerd-${hex('1')}.scope`), {
    driver: 'systemd',
    qos: 'burstable',
    podUid: UID_B,
    containerId: hex('1'),
    runtime: 'containerd',
  });
  t.is(parseKubeCgroupPath(`${base}/docker-${hex('2')}.scope`)?.runtime, 'docker');
  t.is(parseKubeCgroupPath(`${base}/crio-${hex('3')}.scope`)?.runtime, 'crio');
  // crun/cri-o on v2 put the processes in a "container" child of the scope.
  t.is(parseKubeCgroupPath(`${base}/crio-${hex('3')}.scope/container`)?.containerId, hex('3'));
  // Guaranteed pods sit directly under kubepods.slice.
  t.deepEqual(parseKubeCgroupPath(`/kubepods.slice/kubepods-pod${us(UID_C)}.slice/cri-containerd-${hex('4')}.scope`), {
    driver: 'systemd',
    qos: 'guaranteed',
    podUid: UID_C,
    containerId: hex('4'),
    runtime: 'containerd',
  });
  // cri-o's conmon is a pod-level process, not a container.
  t.deepEqual(parseKubeCgroupPath(`${base}/crio-conmon-${hex('5')}.scope`), { driver: 'systemd', qos: 'burstable', podUid: UID_B });
});

test('parser: nested kubelet roots (kind, docker-in-docker) and a test prefix', (t) => {
  t.is(
    parseKubeCgroupPath(
      `/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod${us(UID_D)}.slice/cri-containerd-${hex('e')}.scope`,
    )?.podUid,
    UID_D,
  );
  t.is(parseKubeCgroupPath(`/docker/${hex('f')}/kubepods/burstable/pod${UID_D}/${hex('e')}`)?.containerId, hex('e'));
  t.is(parseKubeCgroupPath(`//hvwatch-x//kubepods/pod${UID_D}/${hex('e')}/`)?.podUid, UID_D);
});

test('parser: what is not a pod cgroup is refused', (t) => {
  for (const p of [
    '/',
    '/system.slice/containerd.service',
    `/system.slice/docker-${hex('a')}.scope`,
    '/kubepods',
    '/kubepods/burstable',
    '/kubepods.slice/kubepods-burstable.slice',
    `/kubepods/burstable/pod${UID_A.slice(1)}`,
    '/kubepods/burstable/podnot-a-uid-at-all-0000000000000000000',
    `/kubepods/burstable/pod${UID_A.toUpperCase()}`, // uids are lowercase
    // QoS of the pod slice disagrees with its parent slice.
    `/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod${us(UID_B)}.slice`,
    // A systemd-escaped uid under the cgroupfs layout.
    `/kubepods/burstable/pod${us(UID_A)}`,
    'unknown',
    '_other',
  ])
    t.is(parseKubeCgroupPath(p), undefined, p);
  // A container segment that is not an id leaves a pod-level result.
  t.is(parseKubeCgroupPath(`/kubepods/pod${UID_A}/${'a'.repeat(63)}`)?.containerId, undefined);
});

test('kubelet directory names: pods, container links, cut names and the pre-1.14 layout', (t) => {
  t.deepEqual(parsePodLogDir(`team-a_web-0_${UID_A}`), { namespace: 'team-a', pod: 'web-0', uid: UID_A });
  t.is(parsePodLogDir(UID_A), undefined); // /var/log/pods/<uid> before Kubernetes 1.14: no names in it
  t.is(parsePodLogDir(`a_b_c_${UID_A}`), undefined);
  t.deepEqual(parseContainerLogLink(`web-0_team-a_nginx-proxy-${hex('a')}.log`), { pod: 'web-0', namespace: 'team-a', container: 'nginx-proxy', id: hex('a') });
  t.deepEqual(parseContainerLogLink(`p_ns_c-${'a'.repeat(20)}.log`)?.id, 'a'.repeat(20));
  t.is(parseContainerLogLink(`p_ns_c-${'a'.repeat(5)}.log`), undefined);
  t.is(parseContainerLogLink(`p_ns_c-${hex('a')}`), undefined);
  t.is(parseContainerLogLink(`p_c-${hex('a')}.log`), undefined);
});

function kubeletTree(): {
  dir: string;
  pods: string;
  containers: string;
  addPod(ns: string, pod: string, uid: string, containers?: Record<string, string>): void;
} {
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-k8s-'));
  const pods = join(dir, 'pods');
  const containers = join(dir, 'containers');
  fs.mkdirSync(pods);
  fs.mkdirSync(containers);
  return {
    dir,
    pods,
    containers,
    addPod(ns, pod, uid, cs = {}) {
      const pd = join(pods, `${ns}_${pod}_${uid}`);
      fs.mkdirSync(pd);
      for (const [name, id] of Object.entries(cs)) {
        fs.mkdirSync(join(pd, name));
        fs.writeFileSync(join(pd, name, '0.log'), '');
        fs.symlinkSync(join(pd, name, '0.log'), join(containers, `${pod}_${ns}_${name}-${id}.log`));
      }
    },
  };
}

test('labeler: a pod that appears after its cgroup is labelled after the next scan; sandboxes get pod labels', (t) => {
  const tree = kubeletTree();
  let now = 0;
  const l = new KubeLabeler({ podLogsDir: tree.pods, containerLogsDir: tree.containers, rescanIntervalMs: 1000, now: () => now });
  const path = `/kubepods/burstable/pod${UID_A}/${hex('a')}`;
  t.deepEqual(l.labels(path), NO_KUBE_LABELS);
  tree.addPod('team-a', 'web-0', UID_A, { nginx: hex('a') });
  t.deepEqual(l.labels(path), NO_KUBE_LABELS, 'no rescan before the interval');
  now = 1000;
  t.deepEqual(l.labels(path), { namespace: 'team-a', pod: 'web-0', container: 'nginx' });
  // The sandbox (pause) container: a cgroup with no log link.
  t.deepEqual(l.labels(`/kubepods/burstable/pod${UID_A}/${hex('9')}`), { namespace: 'team-a', pod: 'web-0', container: '' });
  // A container link of another pod with the same id prefix is not trusted for this pod.
  tree.addPod('team-b', 'other', UID_B, { evil: hex('8') });
  now = 5000;
  t.deepEqual(l.labels(`/kubepods/burstable/pod${UID_A}/${hex('8')}`), { namespace: 'team-a', pod: 'web-0', container: '' });
  t.is(l.stats.scans, 3);
  // Resolved paths stay cached: a later scan is not needed for them.
  fs.rmSync(tree.dir, { recursive: true });
  now = 10_000;
  t.deepEqual(l.labels(path), { namespace: 'team-a', pod: 'web-0', container: 'nginx' });
});

test('labeler: an unreadable kubelet directory is counted and labels nothing', (t) => {
  const l = new KubeLabeler({ podLogsDir: '/nonexistent/pods', containerLogsDir: '/nonexistent/containers' });
  t.deepEqual(l.labels(`/kubepods/pod${UID_A}/${hex('a')}`), NO_KUBE_LABELS);
  t.deepEqual(l.stats.readErrors, { '/nonexistent/pods': 'ENOENT', '/nonexistent/containers': 'ENOENT' });
  t.is(l.stats.unresolved, 1);
});

test('config switch: auto follows KUBERNETES_SERVICE_HOST, true/false force it, anything else is a config error', (t) => {
  const c = configSchema.parse({}).cgroups;
  t.is(c.kubernetes, 'auto');
  t.deepEqual([c.podLogsDir, c.containerLogsDir], ['/var/log/pods', '/var/log/containers']);
  t.true(kubernetesEnabled(c, { KUBERNETES_SERVICE_HOST: '10.96.0.1' }));
  t.false(kubernetesEnabled(c, {}));
  t.true(kubernetesEnabled({ kubernetes: true }, {}));
  t.false(kubernetesEnabled({ kubernetes: false }, { KUBERNETES_SERVICE_HOST: '10.96.0.1' }));
  t.is(kubeLabelerFor({ ...c, kubernetes: false }), undefined);
  t.throws(() => parseConfig('cgroups: { kubernetes: yes-please }', 'f.yaml'), {
    instanceOf: ConfigError,
    message: 'f.yaml: key cgroups.kubernetes: expected auto, true or false',
  });
  // Off: a kubelet-shaped path keeps only its cgroup label.
  const r = new CgroupResolver({ version: 1, mountPoint: '/nonexistent' });
  t.deepEqual(r.labelsOf(`/kubepods/pod${UID_A}/${hex('a')}`), NO_KUBE_LABELS);
});

// ---- end to end: real memory cgroups, a real agent, real writeback ----

function mkCgroup(rel: string): TestCgroup {
  const h = memoryHierarchy();
  const dir = join(h.mountPoint, rel);
  fs.mkdirSync(dir, { recursive: true });
  return { path: `/${rel}`, dir, id: fs.statSync(dir, { bigint: true }).ino, remove() {} };
}

/** rmdir leaf-first, retrying while the kernel still holds a cgroup briefly. */
function removeTree(dir: string): void {
  if (!fs.existsSync(dir)) return;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeTree(join(dir, e.name));
  for (let i = 0; i < 50; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
    }
  }
}

test('end to end: real kubelet-shaped memory cgroups (cgroupfs and systemd drivers) carry namespace/pod/container on /metrics', async (t) => {
  const h = memoryHierarchy();
  if (h.version !== 1) return t.pass('the shapes are the same on v2; this host has the v1 memory hierarchy this test was written for');
  const base = `hvwatch-k8s-${process.pid}`;
  const tree = kubeletTree();
  tree.addPod('team-a', 'web-0', UID_A, { nginx: hex('a') });
  tree.addPod('kube-system', 'coredns-7d8f', UID_B, { coredns: hex('b') });
  tree.addPod('vms', 'virt-launcher-db1', UID_C, { compute: hex('c') });
  // UID_D has no pod directory: its cgroup keeps the plain label.
  const cgs = {
    cgroupfs: mkCgroup(`${base}/kubepods/burstable/pod${UID_A}/${hex('a')}`),
    cgroupfsPod: mkCgroup(`${base}/kubepods/burstable/pod${UID_A}`),
    systemd: mkCgroup(`${base}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${us(UID_B)}.slice/cri-containerd-${hex('b')}.scope`),
    systemdGuaranteed: mkCgroup(`${base}/kubepods.slice/kubepods-pod${us(UID_C)}.slice/crio-${hex('c')}.scope`),
    unknownPod: mkCgroup(`${base}/kubepods/besteffort/pod${UID_D}/${hex('d')}`),
  };
  const cfg = writeConfig(`cgroups:\n  kubernetes: true\n  podLogsDir: ${tree.pods}\n  containerLogsDir: ${tree.containers}\n`);
  const agent = await AgentProcess.start(['--config', cfg, '--hot', 'memcg_writeback']);
  try {
    for (const cg of Object.values(cgs)) fsyncWriteInCgroup(cg, 2, `/var/tmp/hvwatch-k8s-${process.pid}.bin`);
    const started = M.memcgWbStarted.name;
    const samples = await until(
      async () => {
        const s = await agent.scrape();
        return Object.values(cgs).every((cg) => pick(s, started, { cgroup: cg.path }).some((x) => x.value > 0)) ? s : undefined;
      },
      20_000,
      'writeback in every test cgroup',
    );
    const labelsOf = (cg: TestCgroup, metric = started): Record<string, string> => {
      const [s] = pick(samples, metric, { cgroup: cg.path }) as [Sample?];
      const { cgroup: _c, ...rest } = s?.labels ?? {};
      return rest;
    };
    t.deepEqual(labelsOf(cgs.cgroupfs), { namespace: 'team-a', pod: 'web-0', container: 'nginx' });
    t.deepEqual(labelsOf(cgs.cgroupfsPod), { namespace: 'team-a', pod: 'web-0' }, 'the pod cgroup itself: no container label');
    t.deepEqual(labelsOf(cgs.systemd), { namespace: 'kube-system', pod: 'coredns-7d8f', container: 'coredns' });
    t.deepEqual(labelsOf(cgs.systemdGuaranteed), { namespace: 'vms', pod: 'virt-launcher-db1', container: 'compute' });
    t.deepEqual(labelsOf(cgs.unknownPod), {}, 'unresolvable: the plain cgroup label only');
    // memory.stat gauges carry the same labels as the map series (one decoding point). A
    // per-cgroup gauge is born at its first non-zero value (README "Series lifecycle"), so
    // leave dirty pages in the cgroup first.
    const dirtyFile = `/var/tmp/hvwatch-k8s-dirty-${process.pid}.bin`;
    dirtyWriteInCgroup(cgs.systemd, 4, dirtyFile);
    try {
      const stat = await until(
        async () => {
          const x = pick(await agent.scrape(), M.memcgStatDirty.name, { cgroup: cgs.systemd.path });
          return x.length ? x : undefined;
        },
        20_000,
        'the dirty pages in memory.stat',
      );
      t.true(stat.length === 1 && stat[0]!.labels.pod === 'coredns-7d8f' && stat[0]!.value > 0, JSON.stringify(stat));
    } finally {
      fs.rmSync(dirtyFile, { force: true });
    }
    // A series outside Kubernetes' tree is untouched.
    t.true(samples.filter((s) => s.name === started && !s.labels.cgroup!.startsWith(`/${base}/`)).every((s) => s.labels.pod === undefined));
  } finally {
    await agent.stop();
    removeTree(join(h.mountPoint, base));
    fs.rmSync(tree.dir, { recursive: true, force: true });
  }
});
