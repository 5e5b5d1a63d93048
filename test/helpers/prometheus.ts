// Real Prometheus and Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`)
// for tests: each in its own temp dir, on a free loopback port, in its own process group so
// that stop() takes everything it started, even when a test failed half-way.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { freePort } from './agent.js';

export class Service {
  output = '';
  private readonly exited: Promise<void>;

  // If the test process dies without teardown (a worker killed on timeout), its exit still
  // takes the service's process group down: nothing is left listening on the machine.
  private readonly killOnExit = (): void => {
    try {
      if (this.proc.pid !== undefined) process.kill(-this.proc.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  };

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
    readonly port: number,
    readonly dir: string,
  ) {
    const keep = (d: Buffer): void => void (this.output = (this.output + d.toString()).slice(-20_000));
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    process.once('exit', this.killOnExit);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get hostPort(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** SIGTERM to the process group, SIGKILL after 5 s; removes the temp dir. Idempotent. */
  async stop(): Promise<void> {
    const pid = this.proc.pid;
    if (pid !== undefined && this.proc.exitCode === null && this.proc.signalCode === null) {
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const killer = setTimeout(() => {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }, 5_000);
      await this.exited;
      clearTimeout(killer);
    }
    process.off('exit', this.killOnExit);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

async function startService(name: string, bin: string, args: (port: number, dir: string) => string[], dir: string, timeoutMs: number): Promise<Service> {
  const port = await freePort();
  const proc = spawn(bin, args(port, dir), { cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const s = new Service(name, proc, port, dir);
  const spawnError = new Promise<Error>((resolve) => proc.once('error', resolve));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const err = await Promise.race([spawnError, new Promise<undefined>((r) => setTimeout(() => r(undefined), 100))]);
    if (err) {
      await s.stop();
      throw new Error(`${name}: cannot start ${bin}: ${err.message} (Debian packages in scripts/debian-packages.txt)`);
    }
    if (proc.exitCode !== null) {
      await s.stop();
      throw new Error(`${name} exited ${proc.exitCode}: ${s.output}`);
    }
    try {
      if ((await fetch(`${s.url}/-/ready`)).ok) return s;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) {
      await s.stop();
      throw new Error(`${name} not ready in ${timeoutMs} ms: ${s.output}`);
    }
  }
}

export interface AlertmanagerOptions {
  /** A webhook URL that receives every notification, resolved ones included. */
  webhook?: string;
}

export async function startAlertmanager(opts: AlertmanagerOptions = {}, timeoutMs = 15_000): Promise<Service> {
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-am-'));
  const receiver = opts.webhook ? { name: 'test', webhook_configs: [{ url: opts.webhook, send_resolved: true }] } : { name: 'test' };
  fs.writeFileSync(
    join(dir, 'alertmanager.yml'),
    stringify({
      // Short waits: tests see notifications within a second or two.
      route: { receiver: 'test', group_by: ['alertname'], group_wait: '0s', group_interval: '1s', repeat_interval: '1h' },
      receivers: [receiver],
    }),
  );
  return startService(
    'alertmanager',
    'prometheus-alertmanager',
    (port, d) => [
      `--config.file=${join(d, 'alertmanager.yml')}`,
      `--storage.path=${join(d, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--cluster.listen-address=', // no HA gossip: it would bind 0.0.0.0:9094
      '--log.level=warn',
    ],
    dir,
    timeoutMs,
  );
}

export interface PrometheusOptions {
  /** host:port targets of job "hvwatch". */
  targets: string[];
  ruleFiles?: string[];
  /** host:port of an Alertmanager. */
  alertmanager?: string;
  interval?: string;
  /** --enable-feature values, e.g. native-histograms (Prometheus then scrapes protobuf). */
  features?: string[];
}

export async function startPrometheus(opts: PrometheusOptions, timeoutMs = 20_000): Promise<Service> {
  const dir = fs.mkdtempSync(join(tmpdir(), 'hvwatch-prom-'));
  const interval = opts.interval ?? '1s';
  fs.writeFileSync(
    join(dir, 'prometheus.yml'),
    stringify({
      global: { scrape_interval: interval, evaluation_interval: interval, scrape_timeout: interval },
      rule_files: opts.ruleFiles ?? [],
      scrape_configs: [{ job_name: 'hvwatch', static_configs: [{ targets: opts.targets }] }],
      ...(opts.alertmanager ? { alerting: { alertmanagers: [{ static_configs: [{ targets: [opts.alertmanager] }] }] } } : {}),
    }),
  );
  return startService(
    'prometheus',
    'prometheus',
    (port, d) => [
      `--config.file=${join(d, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(d, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
      ...(opts.features?.length ? [`--enable-feature=${opts.features.join(',')}`] : []),
    ],
    dir,
    timeoutMs,
  );
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
  /** A native histogram sample instead of `value` (Prometheus >= 2.40 API). */
  histogram?: [number, { count: string; sum: string; buckets?: [number, string, string, string][] }];
}

/** An instant query through Prometheus' HTTP API. */
export async function promQuery(prom: Service, expr: string): Promise<PromSample[]> {
  const r = await fetch(`${prom.url}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = (await r.json()) as { status: string; error?: string; data: { resultType: string; result: PromSample[] } };
  if (body.status !== 'success') throw new Error(`query ${expr}: ${body.error}`);
  return body.data.result;
}

/** Alertmanager's gettableAlert (api/v2), the fields tests look at. */
export interface AmAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
  status: { state: string };
}

/** Alerts Alertmanager holds (not resolved ones), optionally filtered by label matchers. */
export async function amAlerts(am: Service, filter: Record<string, string> = {}): Promise<AmAlert[]> {
  const q = Object.entries(filter)
    .map(([k, v]) => `filter=${encodeURIComponent(`${k}="${v}"`)}`)
    .join('&');
  const r = await fetch(`${am.url}/api/v2/alerts${q ? `?${q}` : ''}`);
  if (!r.ok) throw new Error(`alertmanager /api/v2/alerts: ${r.status}`);
  return (await r.json()) as AmAlert[];
}
