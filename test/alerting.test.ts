// In-process alerting (agent/alerting): alerts reach a real Alertmanager (Debian's
// prometheus-alertmanager, on loopback) with their labels and get resolved; delivery
// retries with exponential backoff, times out, and keeps its queue bounded against local
// HTTP servers that fail in each way.
import test from 'ava';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { z } from 'zod';
import { M } from '../agent/catalog.js';
import { MetricStore } from '../agent/export/store.js';
import { InProcessAlerting, alertingConfigSchema, type AlertingConfig, type PostableAlert } from '../agent/alerting/index.js';
import { AlertmanagerSender } from '../agent/alerting/alertmanager.js';
import { Evaluator } from '../agent/alerting/evaluator.js';
import { PROBE_NOT_ATTACHED } from '../agent/alerting/conditions.js';
import { RACE } from '../families/memcg_fn/family.js';
import { until } from './helpers/agent.js';
import { amAlerts, startAlertmanager, type Service } from './helpers/prometheus.js';

// ---- a local HTTP server whose behaviour each test scripts ----
interface Recorded {
  at: number;
  alerts: PostableAlert[];
}
type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

async function httpServer(handler: Handler): Promise<{ url: string; requests: Recorded[]; server: Server; close(): Promise<void> }> {
  const requests: Recorded[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      requests.push({ at: Date.now(), alerts: body ? (JSON.parse(body) as PostableAlert[]) : [] });
      handler(req, res, requests.length);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    server,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

const config = (over: Record<string, unknown>): AlertingConfig => alertingConfigSchema.parse(over);

// ---- against a real Alertmanager ----
let am: Service | undefined;
let webhook: Awaited<ReturnType<typeof httpServer>> | undefined;
/** Notifications Alertmanager sent to the webhook receiver. */
const notifications: { status: string; alerts: { status: string; labels: Record<string, string> }[] }[] = [];

test.before(async () => {
  webhook = await httpServer((_req, res) => res.end());
  webhook.server.on('request', (req: IncomingMessage) => {
    let b = '';
    req.on('data', (d: Buffer) => (b += d.toString()));
    req.on('end', () => notifications.push(JSON.parse(b) as (typeof notifications)[number]));
  });
  am = await startAlertmanager({ webhook: `${webhook.url}/hook` });
});

test.after.always(async () => {
  await am?.stop();
  await webhook?.close();
});

test.serial('a race indicator increase reaches Alertmanager with its labels, then resolves when the hold time passes', async (t) => {
  const store = new MetricStore();
  for (const kind of ['uncharge_under_writeback', 'memcg_cleared_under_writeback']) store.set(M.memcgRaceEvents, { kind }, 0);
  const alerting = new InProcessAlerting(store, config({ alertmanagers: [am!.url], holdSeconds: 2, extraLabels: { cluster: 'test-cluster' } }), {
    node: hostname(),
    instance: 'node-a:9477',
  });
  t.is(alerting.stats.alertmanagers.length, 1);
  t.teardown(() => alerting.stop());

  alerting.evaluate();
  await alerting.flush();
  t.is(alerting.stats.sent, 0, 'nothing to say while the counters stay 0');

  store.set(M.memcgRaceEvents, { kind: 'uncharge_under_writeback' }, 3);
  const firedAt = Date.now();
  alerting.evaluate(firedAt);
  await alerting.flush();
  t.is(alerting.stats.sent, 1);
  t.is(alerting.stats.firing, 1);

  const [a, ...rest] = await amAlerts(am!, { alertname: RACE.name });
  t.is(rest.length, 0, 'only the kind that rose');
  t.deepEqual(a!.labels, {
    alertname: 'HvwatchMemcgRaceIndicator',
    severity: 'critical',
    kind: 'uncharge_under_writeback',
    instance: 'node-a:9477',
    job: 'hvwatch',
    cluster: 'test-cluster',
  });
  t.is(a!.annotations.summary, 'memcg race indicator uncharge_under_writeback on node-a:9477');
  t.regex(a!.annotations.description!, /GET \/api\/races/);
  t.is(a!.annotations.runbook_url, 'alerts/README.md#hvwatchmemcgraceindicator');
  t.is(a!.status.state, 'active');
  t.is(Date.parse(a!.startsAt), firedAt);
  t.true(Date.parse(a!.endsAt) > Date.now() + 60_000, 'a firing alert stays valid for several resend intervals');

  // No further increase: after the 2 s hold the next evaluation resolves it.
  await new Promise((r) => setTimeout(r, 2_100));
  alerting.evaluate();
  await alerting.flush();
  t.is(alerting.stats.firing, 0);
  t.is(alerting.stats.sent, 2);
  await until(async () => ((await amAlerts(am!, { alertname: RACE.name })).length === 0 ? true : undefined), 5_000, 'Alertmanager to drop the resolved alert');
  const resolved = await until(
    async () => notifications.find((n) => n.status === 'resolved' && n.alerts.some((x) => x.labels.alertname === RACE.name)),
    10_000,
    "Alertmanager's resolved notification",
  );
  t.is(resolved.alerts[0]!.labels.kind, 'uncharge_under_writeback');
});

test.serial('a probe that did not attach fires while its gauge is 0 and resolves when it attaches', async (t) => {
  const store = new MetricStore();
  store.set(M.probeAttached, { probe: 'memcg_writeback_wait' }, 0);
  store.set(M.probeAttached, { probe: 'memcg_writeback' }, 1);
  const alerting = new InProcessAlerting(store, config({ alertmanagers: [am!.url] }), { node: 'node-b' });
  t.teardown(() => alerting.stop());

  alerting.evaluate();
  await alerting.flush();
  const got = await amAlerts(am!, { alertname: PROBE_NOT_ATTACHED.name, instance: 'node-b' });
  t.deepEqual(
    got.map((a) => a.labels.probe),
    ['memcg_writeback_wait'],
  );
  t.is(got[0]!.labels.severity, 'warning');
  t.deepEqual(
    got[0]!.labels,
    { alertname: PROBE_NOT_ATTACHED.name, severity: 'warning', probe: 'memcg_writeback_wait', instance: 'node-b', job: 'hvwatch' },
    'instance defaults to the node name; the label set is what the Prometheus rule produces',
  );

  store.set(M.probeAttached, { probe: 'memcg_writeback_wait' }, 1);
  alerting.evaluate();
  await alerting.flush();
  await until(
    async () => ((await amAlerts(am!, { alertname: PROBE_NOT_ATTACHED.name, instance: 'node-b' })).length === 0 ? true : undefined),
    5_000,
    'the resolved probe alert to leave Alertmanager',
  );
  t.is(alerting.stats.sent, 2);
  t.is(alerting.stats.failedAttempts, 0);
});

// ---- delivery against local servers that fail ----
function raceStore(): MetricStore {
  const store = new MetricStore();
  store.set(M.memcgRaceEvents, { kind: 'uncharge_under_writeback' }, 1);
  return store;
}

test('retries with exponential backoff until Alertmanager answers', async (t) => {
  const srv = await httpServer((_q, res, n) => {
    res.statusCode = n <= 3 ? 503 : 200;
    res.end(n <= 3 ? 'unavailable' : '');
  });
  t.teardown(() => srv.close());
  const alerting = new InProcessAlerting(raceStore(), config({ alertmanagers: [srv.url], backoff: { initialSeconds: 0.1, maxSeconds: 1, maxAttempts: 5 } }), {
    node: 'n',
    random: () => 1,
  });
  t.teardown(() => alerting.stop());

  alerting.evaluate();
  await alerting.flush();
  t.is(srv.requests.length, 4);
  const gaps = srv.requests.slice(1).map((r, i) => r.at - srv.requests[i]!.at);
  // Waits of 100, 200, 400 ms (the schedule itself is exact in the backoffMs test below).
  // Only lower bounds here: a loaded machine delays timers, it never fires them early.
  [100, 200, 400].forEach((want, i) => t.true(gaps[i]! >= want - 5, `retry ${i + 1}: ${gaps[i]} ms, want >= ${want}`));
  const s = alerting.stats;
  t.like(s, { sent: 1, failedAttempts: 3, retries: 3, droppedFailed: 0, droppedQueueFull: 0, queued: 0 });
  t.regex(s.alertmanagers[0]!.lastError!, /HTTP 503 unavailable/);
  t.deepEqual(srv.requests[3]!.alerts, srv.requests[0]!.alerts, 'the same batch is retried');
});

test('backoff is capped at maxSeconds and jittered between half and all of its step', (t) => {
  let rnd = 0;
  const s = new AlertmanagerSender({
    url: 'http://127.0.0.1:1',
    timeoutMs: 100,
    queueSize: 1,
    backoff: { initialMs: 100, maxMs: 1000, maxAttempts: 10 },
    random: () => rnd,
  });
  t.deepEqual(
    [0, 1, 2, 3, 4, 8].map((i) => s.backoffMs(i)),
    [50, 100, 200, 400, 500, 500],
  );
  rnd = 1;
  t.deepEqual(
    [0, 1, 2, 3, 4, 8].map((i) => s.backoffMs(i)),
    [100, 200, 400, 800, 1000, 1000],
  );
});

test('gives up after maxAttempts and counts the alerts it dropped', async (t) => {
  const srv = await httpServer((_q, res) => {
    res.statusCode = 500;
    res.end('boom');
  });
  t.teardown(() => srv.close());
  const alerting = new InProcessAlerting(
    raceStore(),
    config({ alertmanagers: [srv.url], backoff: { initialSeconds: 0.01, maxSeconds: 0.05, maxAttempts: 3 } }),
    { node: 'n' },
  );
  t.teardown(() => alerting.stop());
  alerting.evaluate();
  await alerting.flush();
  t.is(srv.requests.length, 3);
  t.like(alerting.stats, { sent: 0, failedAttempts: 3, retries: 2, droppedFailed: 1 });
  // The same counts on /metrics: the next evaluation publishes them into the agent's store.
  const metrics = new MetricStore();
  const published = new InProcessAlerting(
    raceStore(),
    config({ alertmanagers: [srv.url], backoff: { initialSeconds: 0.01, maxSeconds: 0.05, maxAttempts: 3 } }),
    { node: 'n', metrics },
  );
  t.teardown(() => published.stop());
  published.evaluate();
  await published.flush();
  published.evaluate();
  const am = { alertmanager: srv.url };
  t.is(metrics.get(M.alertPostFailures, am)?.value, 3);
  t.is(metrics.get(M.alertsDropped, { ...am, reason: 'failed' })?.value, 1);
  t.is(metrics.get(M.alertsSent, am)?.value, 0);
  t.is(metrics.get(M.alertsFiring)?.value, 1);
  t.is(metrics.get(M.alertEvaluations, { result: 'ok' })?.value, 2);
});

test('a 4xx rejection is not retried', async (t) => {
  const srv = await httpServer((_q, res) => {
    res.statusCode = 400;
    res.end('{"code":400,"message":"bad alert"}');
  });
  t.teardown(() => srv.close());
  const alerting = new InProcessAlerting(raceStore(), config({ alertmanagers: [srv.url], backoff: { initialSeconds: 0.01, maxAttempts: 5 } }), { node: 'n' });
  t.teardown(() => alerting.stop());
  alerting.evaluate();
  await alerting.flush();
  t.is(srv.requests.length, 1);
  t.like(alerting.stats, { failedAttempts: 1, retries: 0, droppedFailed: 1 });
  t.regex(alerting.stats.alertmanagers[0]!.lastError!, /HTTP 400 .*bad alert/);
});

test('a hung Alertmanager times out and never blocks evaluation', async (t) => {
  const srv = await httpServer(() => {
    /* never answers */
  });
  t.teardown(() => srv.close());
  const store = new MetricStore();
  for (let i = 0; i < 100; i++) store.set(M.probeAttached, { probe: `p${i}` }, 0);
  const alerting = new InProcessAlerting(store, config({ alertmanagers: [srv.url], timeoutSeconds: 1, backoff: { initialSeconds: 0.05, maxAttempts: 2 } }), {
    node: 'n',
  });
  t.teardown(() => alerting.stop());

  // Were evaluate() waiting on the network it would take at least the 1 s timeout.
  const t0 = performance.now();
  alerting.evaluate();
  const took = performance.now() - t0;
  t.true(took < 250, `evaluate() took ${took.toFixed(1)} ms with Alertmanager hung`);
  const f0 = Date.now();
  await alerting.flush();
  const waited = Date.now() - f0;
  // 100 alerts -> batches of 64 and 36, each 2 attempts of 1 s plus a backoff.
  t.true(waited >= 2 * 2 * 1000 - 20, `delivery gave up after ${waited} ms`);
  t.like(alerting.stats, { sent: 0, failedAttempts: 4, retries: 2, droppedFailed: 100 });
  t.regex(alerting.stats.alertmanagers[0]!.lastError!, /timed out after 1000 ms/);
});

test('the queue is bounded: the oldest alerts are dropped and counted, the newest delivered', async (t) => {
  let release: (() => void) | undefined;
  const srv = await httpServer((_q, res, n) => {
    if (n === 1)
      release = () => res.end(); // the first POST hangs until released
    else res.end();
  });
  t.teardown(() => srv.close());
  const store = new MetricStore();
  const alerting = new InProcessAlerting(store, config({ alertmanagers: [srv.url], queueSize: 3, timeoutSeconds: 30 }), { node: 'n' });
  t.teardown(() => alerting.stop());

  store.set(M.probeAttached, { probe: 'first' }, 0);
  alerting.evaluate(); // in flight, hanging
  await until(async () => (release ? true : undefined), 2_000, 'the first POST');
  for (let i = 0; i < 10; i++) store.set(M.probeAttached, { probe: `p${i}` }, 0);
  alerting.evaluate();
  t.like(alerting.stats, { queued: 3, droppedQueueFull: 7 });

  release!();
  await alerting.flush();
  t.is(srv.requests.length, 2);
  t.deepEqual(
    srv.requests[1]!.alerts.map((a) => a.labels.probe),
    ['p7', 'p8', 'p9'],
  );
  t.like(alerting.stats, { sent: 4, queued: 0, droppedQueueFull: 7 });
});

test('a newer state of an alert replaces its queued older one (a resolution never trails a stale firing)', async (t) => {
  const firing: PostableAlert = { labels: { alertname: 'X', probe: 'a' }, annotations: {}, startsAt: 'x', endsAt: 'later' };
  const posted: PostableAlert[][] = [];
  const s = new AlertmanagerSender({
    url: 'http://127.0.0.1:9',
    timeoutMs: 100,
    queueSize: 10,
    backoff: { initialMs: 1, maxMs: 1, maxAttempts: 1 },
    fetch: (async (_u: string, init: RequestInit) => {
      posted.push(JSON.parse(init.body as string) as PostableAlert[]);
      return new Response('');
    }) as unknown as typeof fetch,
  });
  // Enqueue twice in one tick: the first POST takes the firing one, the queue keeps one entry.
  s.enqueue([firing]);
  s.enqueue([
    { ...firing, endsAt: 'now' },
    { ...firing, endsAt: 'resolved' },
  ]);
  t.is(s.stats.queued, 1);
  await s.idle();
  t.deepEqual(
    posted.map((b) => b.map((a) => a.endsAt)),
    [['later'], ['resolved']],
  );
});

test('firing alerts are re-sent every resend interval with endsAt four intervals ahead', async (t) => {
  const srv = await httpServer((_q, res) => res.end());
  t.teardown(() => srv.close());
  const alerting = new InProcessAlerting(raceStore(), config({ alertmanagers: [srv.url], resendIntervalSeconds: 10 }), { node: 'n' });
  t.teardown(() => alerting.stop());
  const t0 = Date.now();
  for (const dt of [0, 5_000, 9_999, 10_000, 15_000, 20_000]) {
    alerting.evaluate(t0 + dt);
    await alerting.flush();
  }
  t.is(srv.requests.length, 3, 'at 0, 10 and 20 s');
  t.deepEqual(
    srv.requests.map((r) => Date.parse(r.alerts[0]!.endsAt) - t0),
    [40_000, 50_000, 60_000],
  );
  t.true(
    srv.requests.every((r) => Date.parse(r.alerts[0]!.startsAt) === t0),
    'startsAt stays the first firing time',
  );
});

test('evaluator: counter resets count as increases, vanished state series resolve, increases hold then resolve', (t) => {
  const store = new MetricStore();
  const ev = new Evaluator([RACE, PROBE_NOT_ATTACHED], 1_000);
  store.set(M.memcgRaceEvents, { kind: 'k' }, 5); // first sight above 0: risen since start
  store.set(M.probeAttached, { probe: 'p' }, 0);
  let tr = ev.evaluate(store, 0);
  t.deepEqual(tr.fired.map((a) => a.condition.name).sort(), [RACE.name, PROBE_NOT_ATTACHED.name]);
  tr = ev.evaluate(store, 500);
  t.deepEqual([tr.fired.length, tr.resolved.length], [0, 0], 'within the hold nothing changes');
  store.remove(M.probeAttached, () => true);
  tr = ev.evaluate(store, 1_001);
  t.deepEqual(tr.resolved.map((a) => a.condition.name).sort(), [RACE.name, PROBE_NOT_ATTACHED.name]);
  t.is(tr.resolved.find((a) => a.condition === RACE)!.endsAt, 1_001);
  store.set(M.memcgRaceEvents, { kind: 'k' }, 2); // reset (5 -> 2): two new events
  tr = ev.evaluate(store, 2_000);
  t.deepEqual(
    tr.fired.map((a) => a.labels),
    [{ kind: 'k' }],
  );
  t.is(tr.fired[0]!.startsAt, 2_000);
});

test('evaluation errors are counted, never thrown (the agent must keep probing)', (t) => {
  const broken = {
    all: () => {
      throw new Error('store gone');
    },
  };
  const alerting = new InProcessAlerting(broken, config({}), { node: 'n' });
  t.notThrows(() => alerting.evaluate());
  t.like(alerting.stats, { evaluations: 1, evaluationErrors: 1 });
});

test('start() evaluates on its own timer after the refresh hook', async (t) => {
  const store = new MetricStore();
  const alerting = new InProcessAlerting(store, config({ evaluationIntervalSeconds: 0.1 }), { node: 'n' });
  let refreshed = 0;
  alerting.start(async () => {
    refreshed++;
    store.set(M.probeAttached, { probe: 'p' }, 0);
  });
  t.teardown(() => alerting.stop());
  await until(async () => (alerting.stats.evaluations >= 3 ? true : undefined), 2_000, 'three evaluations');
  t.true(refreshed >= 3);
  t.is(alerting.active().length, 1);
  await alerting.stop();
  const n = alerting.stats.evaluations;
  await new Promise((r) => setTimeout(r, 300));
  t.is(alerting.stats.evaluations, n, 'stop() ends the timer');
});

test('config fragment: defaults, merged into a parent schema, and one-line errors for bad values', (t) => {
  const parent = z.object({ alerting: alertingConfigSchema }).strict();
  const d = parent.parse({}).alerting;
  t.like(d, { alertmanagers: [], timeoutSeconds: 10, resendIntervalSeconds: 60, queueSize: 1000, holdSeconds: 600, extraLabels: {} });
  t.like(d.backoff, { initialSeconds: 0.5, maxSeconds: 30, maxAttempts: 5 });
  const bad = (v: unknown): string => {
    const r = parent.safeParse({ alerting: v });
    return r.success ? 'accepted' : `${r.error.issues[0]!.path.join('.')}: ${r.error.issues[0]!.message}`;
  };
  t.regex(bad({ alertmanagers: ['ftp://am:21'] }), /^alerting\.alertmanagers\.0: expected an http/);
  t.regex(bad({ alertmanagers: ['not a url'] }), /^alerting\.alertmanagers\.0: Invalid url/);
  t.regex(bad({ extraLabels: { severity: 'page' } }), /^alerting\.extraLabels: extraLabels may not set alertname or severity/);
  t.regex(bad({ extraLabels: { 'bad-name': 'x' } }), /^alerting\.extraLabels\.bad-name/);
  t.regex(bad({ queueSize: 0 }), /^alerting\.queueSize/);
  t.regex(bad({ alertmanager: ['http://x'] }), /Unrecognized key/);
  t.is(bad({ alertmanagers: ['http://am:9093', 'https://am2/prefix/'], extraLabels: { cluster: 'c1', instance: 'n1:9477' } }), 'accepted');
});

test('the endpoint is the base URL plus /api/v2/alerts, with or without a trailing slash or path prefix', async (t) => {
  const seen: string[] = [];
  const fetchSpy = (async (u: string) => {
    seen.push(u);
    return new Response('');
  }) as unknown as typeof fetch;
  for (const url of ['http://am:9093', 'http://am:9093/', 'http://am/prefix/']) {
    const s = new AlertmanagerSender({ url, timeoutMs: 100, queueSize: 1, backoff: { initialMs: 1, maxMs: 1, maxAttempts: 1 }, fetch: fetchSpy });
    s.enqueue([{ labels: { alertname: 'X' }, annotations: {}, startsAt: '', endsAt: '' }]);
    await s.idle();
  }
  t.deepEqual(seen, ['http://am:9093/api/v2/alerts', 'http://am:9093/api/v2/alerts', 'http://am/prefix/api/v2/alerts']);
});
