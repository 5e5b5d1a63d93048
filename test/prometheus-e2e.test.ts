// End to end on loopback, every component real: the agent (bin/hvwatch) on the real kernel,
// Prometheus (Debian's `prometheus`) scraping it every second with alerts/hvwatch.rules.yml
// loaded and evaluated every second, and Alertmanager (`prometheus-alertmanager`). A real
// fsync'd write in a memory cgroup drives the memcg family; a probe retargeted to a
// tracepoint that does not exist makes a real health alert; a real /dev/kvm guest (when
// this machine can run one) drives the kvm family. Everything is asserted through
// Prometheus' and Alertmanager's HTTP APIs and torn down even when an assertion fails.
import test from 'ava';
import { join } from 'node:path';
import { M, ALL_METRICS } from '../agent/catalog.js';
import { RECORDING } from '../alerts/rules.js';
import { REPO_ROOT } from '../alerts/artifacts.js';
import { PROBE_NOT_ATTACHED } from '../agent/alerting/conditions.js';
import { AgentProcess, until, writeConfig } from './helpers/agent.js';
import { createCgroup, fsyncWriteInCgroup, type TestCgroup } from './helpers/memcg.js';
import { kvmUsable, startGuest, type GuestHandle } from './helpers/kvm.js';
import { amAlerts, promQuery, startAlertmanager, startPrometheus, type Service } from './helpers/prometheus.js';

/** The probe this test makes fail: on by default and attaching on every kernel we run. */
const BROKEN_PROBE = 'memcg_writeback_wait';

interface ProbeStatusJson {
  name: string;
  family: string;
  enabled: boolean;
  chosen: { attach: string; target: string } | null;
}

const ctx: { am?: Service; prom?: Service; agent?: AgentProcess; cg?: TestCgroup; guest?: GuestHandle; probes?: ProbeStatusJson[]; pages?: number } = {};

const GUEST = `hvwatch-e2e-${process.pid}`;
const GUEST_WRITES = 500;
const noKvm = kvmUsable();

test.before(async () => {
  // Each start is assigned as soon as it resolves, so after.always stops whatever started.
  ctx.am = await startAlertmanager();
  // The agent alerts Alertmanager itself too; `source` keeps its alert apart from
  // Prometheus' alert of the same name (Alertmanager would otherwise merge the two).
  const config = writeConfig(`
probes:
  hot: [memcg_writeback]
  attach:
    ${BROKEN_PROBE}:
      - { attach: tp_btf, target: hvwatch_e2e_no_such_tracepoint }
      - { attach: tracepoint, target: writeback/hvwatch_e2e_no_such_tracepoint }
alerting:
  alertmanagers: ["http://${ctx.am.hostPort}"]
  evaluationIntervalSeconds: 0.5
  extraLabels: { source: in-process }
`);
  ctx.agent = await AgentProcess.start(['--config', config]);
  ctx.prom = await startPrometheus({
    targets: [`127.0.0.1:${ctx.agent!.port}`],
    ruleFiles: [join(REPO_ROOT, 'alerts/hvwatch.rules.yml')],
    alertmanager: ctx.am!.hostPort,
  });
  ctx.probes = (await (await fetch(`${ctx.agent!.url}/api/probes`)).json()) as ProbeStatusJson[];
  ctx.cg = createCgroup(`hvwatch-e2e-${process.pid}`);
  // A first small write creates the cgroup's series; the test's main write comes once
  // Prometheus holds them, so rate() sees an increase rather than a series born whole.
  ctx.pages = fsyncWriteInCgroup(ctx.cg, 1);
});

test.after.always(async () => {
  // Independent teardowns: one failing must not leave the others running.
  await Promise.allSettled([ctx.prom?.stop(), ctx.am?.stop(), ctx.agent?.stop(), ctx.guest?.kill()]);
  ctx.cg?.remove();
});

const instance = (): string => `127.0.0.1:${ctx.agent!.port}`;

test.serial('Prometheus scrapes the agent and gets series from every probe family that attached', async (t) => {
  const up = await until(
    async () => {
      const r = await promQuery(ctx.prom!, `up{job="hvwatch", instance="${instance()}"}`);
      return r[0]?.value[1] === '1' ? r : undefined;
    },
    10_000,
    'up == 1',
  );
  t.is(up.length, 1);

  const attachedFamilies = [...new Set(ctx.probes!.filter((p) => p.chosen).map((p) => p.family))];
  t.true(attachedFamilies.includes('memcg'), `attached families: ${attachedFamilies.join(', ')}`);
  for (const family of attachedFamilies) {
    // Series of the family's own catalog metrics, or at least its BPF maps being read.
    const own = ALL_METRICS.filter((m) => m.family === family)
      .map((m) => m.name)
      .join('|');
    const expr = `count({__name__=~"${own}.*", instance="${instance()}"}) or count(hvwatch_bpf_map_entries{family="${family}", instance="${instance()}"})`;
    const n = await until(async () => Number((await promQuery(ctx.prom!, expr))[0]?.value[1] ?? 0) || undefined, 10_000, `series of family ${family}`);
    t.true(n > 0, family);
  }

  // The memcg family saw the real workload, under its cgroup's path.
  const cgroup = ctx.cg!.path;
  const completedNow = async (): Promise<number> =>
    Number((await promQuery(ctx.prom!, `${M.memcgWbCompleted.name}{cgroup="${cgroup}", instance="${instance()}"}`))[0]?.value[1] ?? 0);
  await until(async () => ((await completedNow()) >= ctx.pages! ? true : undefined), 15_000, `the first write's pages for ${cgroup} in Prometheus`);
  ctx.pages! += fsyncWriteInCgroup(ctx.cg!, 16);
  const completed = await until(
    async () => {
      const v = await completedNow();
      return v >= ctx.pages! ? v : undefined;
    },
    15_000,
    `${ctx.pages} completed writeback pages for ${cgroup} in Prometheus`,
  );
  t.true(completed >= ctx.pages!);
  const started = await promQuery(ctx.prom!, `${M.memcgWbStarted.name}{cgroup="${cgroup}", instance="${instance()}"}`);
  t.true(Number(started[0]?.value[1]) >= ctx.pages!);
});

test.serial("the kvm family: a real guest's port writes and userspace exits arrive under its vm label", async (t) => {
  if (noKvm) {
    t.log(`skipped: ${noKvm}`);
    t.pass();
    return;
  }
  t.true(
    ctx.probes!.some((p) => p.family === 'kvm' && p.chosen),
    'a kvm probe attached',
  );
  // The VM is held open after its run: the agent drops a VM's series when its VMM exits.
  ctx.guest = await startGuest({ name: GUEST, writes: GUEST_WRITES, holdMs: 60_000 });
  ctx.guest.go();
  t.is((await ctx.guest.result).io_exits, GUEST_WRITES);
  const vm = `vm="${GUEST}", instance="${instance()}"`;
  const pio = await until(
    async () => {
      const v = Number((await promQuery(ctx.prom!, `${M.kvmPio.name}{${vm}, direction="out"}`))[0]?.value[1] ?? 0);
      return v >= GUEST_WRITES ? v : undefined;
    },
    10_000,
    `${GUEST_WRITES} port writes of ${GUEST} in Prometheus`,
  );
  t.is(pio, GUEST_WRITES);
  const io = await promQuery(ctx.prom!, `${M.kvmUserspaceExits.name}{${vm}, reason="IO"}`);
  t.is(Number(io[0]?.value[1]), GUEST_WRITES);
  t.is((await promQuery(ctx.prom!, `${M.kvmVmInfo.name}{${vm}}`)).length, 1);
});

test.serial('a recording rule evaluates over the scraped series', async (t) => {
  const rule = RECORDING.writebackPages;
  const r = await until(
    async () => {
      const res = await promQuery(ctx.prom!, `${rule.record}{cgroup="${ctx.cg!.path}", instance="${instance()}"}`);
      return Number(res[0]?.value[1] ?? 0) > 0 ? res : undefined;
    },
    15_000,
    `${rule.record} for ${ctx.cg!.path}`,
  );
  t.deepEqual(Object.keys(r[0]!.metric).sort(), ['__name__', ...rule.labels].sort());
  t.is(r[0]!.metric.job, 'hvwatch');
  // The rule group is healthy in Prometheus' own view, not only producing a number.
  const rules = (await (await fetch(`${ctx.prom!.url}/api/v1/rules?type=record`)).json()) as {
    data: { groups: { name: string; rules: { name: string; health: string }[] }[] };
  };
  const recordedRule = rules.data.groups.flatMap((g) => g.rules).find((x) => x.name === rule.record);
  t.is(recordedRule?.health, 'ok');
});

test.serial('a probe that cannot attach raises HvwatchProbeNotAttached in Prometheus and it reaches Alertmanager', async (t) => {
  const broken = ctx.probes!.find((p) => p.name === BROKEN_PROBE);
  t.is(broken?.chosen, null, 'the config made the probe attach nothing');
  const attached = ctx.probes!.filter((p) => p.chosen).map((p) => p.name);
  t.true(attached.length > 0);

  // Prometheus' rule fires...
  const firing = await until(
    async () => {
      const r = (await (await fetch(`${ctx.prom!.url}/api/v1/alerts`)).json()) as { data: { alerts: { labels: Record<string, string>; state: string }[] } };
      return r.data.alerts.find((a) => a.labels.alertname === PROBE_NOT_ATTACHED.name && a.labels.probe === BROKEN_PROBE && a.state === 'firing');
    },
    15_000,
    `${PROBE_NOT_ATTACHED.name} firing in Prometheus`,
  );
  t.is(firing.labels.instance, instance());

  // ...and Prometheus delivers it to Alertmanager.
  const alert = await until(
    async () => {
      const got = await amAlerts(ctx.am!, { alertname: PROBE_NOT_ATTACHED.name, probe: BROKEN_PROBE });
      return got.find((a) => a.labels.source === undefined); // Prometheus', not the agent's own
    },
    20_000,
    `${PROBE_NOT_ATTACHED.name}{probe="${BROKEN_PROBE}"} in Alertmanager`,
  );
  t.like(alert.labels, { alertname: 'HvwatchProbeNotAttached', severity: 'warning', job: 'hvwatch', instance: instance(), probe: BROKEN_PROBE });
  t.is(alert.annotations.summary, `hvwatch probe ${BROKEN_PROBE} did not attach on ${instance()}`);
  t.is(alert.annotations.runbook_url, 'alerts/README.md#hvwatchprobenotattached');
  t.is(alert.status.state, 'active');

  // Probes that attached raise nothing.
  const all = await amAlerts(ctx.am!, { alertname: PROBE_NOT_ATTACHED.name });
  t.deepEqual(
    all.filter((a) => attached.includes(a.labels.probe!)),
    [],
  );
});

test.serial("the agent's own in-process HvwatchProbeNotAttached reaches Alertmanager without Prometheus", async (t) => {
  const alert = await until(
    async () => {
      const got = await amAlerts(ctx.am!, { alertname: PROBE_NOT_ATTACHED.name, probe: BROKEN_PROBE, source: 'in-process' });
      return got[0];
    },
    20_000,
    `the agent's own ${PROBE_NOT_ATTACHED.name} in Alertmanager`,
  );
  t.like(alert.labels, { alertname: PROBE_NOT_ATTACHED.name, severity: 'warning', job: 'hvwatch', probe: BROKEN_PROBE, source: 'in-process' });
  t.is(alert.status.state, 'active');
  t.truthy(alert.annotations.summary);
  // The delivery shows on the agent's own /metrics, from its next evaluation on.
  const sent = await until(
    async () => {
      const m = /^hvwatch_alertmanager_alerts_sent_total\{alertmanager="[^"]+"\} (\d+)$/m.exec(await ctx.agent!.scrapeText());
      return m && Number(m[1]) > 0 ? Number(m[1]) : undefined;
    },
    20_000,
    'hvwatch_alertmanager_alerts_sent_total > 0 on /metrics',
  );
  t.true(sent >= 1);
});
