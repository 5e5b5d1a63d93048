// In-process alerting: a race on this host should reach Alertmanager without waiting for a
// scrape and a rule evaluation. The agent calls evaluate() (after each collection, or
// through start()'s own timer); transitions and periodic re-sends go to every configured
// Alertmanager through its own bounded, retrying sender. Not wired into the agent here:
// `hvwatch run` constructs it with the agent's MetricStore and config.alerting.
import type { AlertingConfig } from './config.js';
import { IN_PROCESS_CONDITIONS, type Condition } from './conditions.js';
import { Evaluator, type AlertState, type StoreView } from './evaluator.js';
import { AlertmanagerSender, type DeliveryCounts, type PostableAlert, type SenderStats } from './alertmanager.js';
import { M } from '../catalog.js';
import type { MetricStore } from '../export/store.js';

export { alertingConfigSchema, type AlertingConfig } from './config.js';
export { IN_PROCESS_CONDITIONS, type Condition, type Severity } from './conditions.js';
export type { StoreView, AlertState } from './evaluator.js';
export type { PostableAlert, SenderStats } from './alertmanager.js';

export interface AlertingOptions {
  /** Host name: the `instance` label unless `instance` is given. */
  node: string;
  /**
   * Sent as label `instance`. Give it the address Prometheus scrapes (e.g. "node1:9477"):
   * then the agent's alert and the Prometheus rule's alert of the same name carry the same
   * labels (with extraLabels equal to Prometheus' external_labels) and Alertmanager merges
   * them into one. No separate `node` label for that reason.
   */
  instance?: string;
  /** Sent as label `job`, for the same reason (the rules select job="hvwatch"). */
  job?: string;
  /** A link for the alert's generatorURL (e.g. the agent's /api/races). */
  generatorURL?: string;
  conditions?: readonly Condition[];
  /** Where the delivery counts are published as hvwatch_alert* metrics (the agent's store),
   * as of each evaluation: a failing Alertmanager must show on /metrics, not only in logs. */
  metrics?: MetricStore;
  fetch?: typeof fetch;
  random?: () => number;
}

/** Delivery counts are sums over the Alertmanagers. */
export interface AlertingStats extends DeliveryCounts {
  evaluations: number;
  /** Evaluations that threw (a bug, or a store in an unexpected shape); never propagated. */
  evaluationErrors: number;
  firing: number;
  alertmanagers: SenderStats[];
}

const iso = (ms: number): string => new Date(ms).toISOString();

export class InProcessAlerting {
  private readonly evaluator: Evaluator;
  private readonly senders: AlertmanagerSender[];
  private readonly lastSent = new Map<AlertState, number>();
  private timer: NodeJS.Timeout | undefined;
  private evaluations = 0;
  private evaluationErrors = 0;

  constructor(
    private readonly store: StoreView,
    private readonly config: AlertingConfig,
    private readonly opts: AlertingOptions,
  ) {
    this.evaluator = new Evaluator(opts.conditions ?? IN_PROCESS_CONDITIONS, config.holdSeconds * 1000);
    this.senders = config.alertmanagers.map(
      (url) =>
        new AlertmanagerSender({
          url,
          timeoutMs: config.timeoutSeconds * 1000,
          queueSize: config.queueSize,
          backoff: {
            initialMs: config.backoff.initialSeconds * 1000,
            maxMs: config.backoff.maxSeconds * 1000,
            maxAttempts: config.backoff.maxAttempts,
          },
          fetch: opts.fetch,
          random: opts.random,
        }),
    );
  }

  /** Evaluate once and queue what changed or is due for a re-send. Synchronous, never throws. */
  evaluate(now: number = Date.now()): void {
    this.evaluations++;
    let resolved: AlertState[];
    try {
      ({ resolved } = this.evaluator.evaluate(this.store, now));
    } catch {
      this.evaluationErrors++;
      this.publish();
      return;
    }
    const out: PostableAlert[] = [];
    for (const a of resolved) {
      this.lastSent.delete(a);
      out.push(this.postable(a, a.endsAt!));
    }
    const resendMs = this.config.resendIntervalSeconds * 1000;
    for (const a of this.evaluator.firing()) {
      const last = this.lastSent.get(a);
      if (last !== undefined && now - last < resendMs) continue;
      this.lastSent.set(a, now);
      // Like Prometheus: a firing alert is valid for a few resend intervals, so Alertmanager
      // resolves it by itself if the agent dies.
      out.push(this.postable(a, now + 4 * resendMs));
    }
    if (out.length) for (const s of this.senders) s.enqueue(out);
    this.publish();
  }

  private publish(): void {
    const m = this.opts.metrics;
    if (!m) return;
    const st = this.stats;
    m.set(M.alertEvaluations, { result: 'ok' }, st.evaluations - st.evaluationErrors);
    m.set(M.alertEvaluations, { result: 'error' }, st.evaluationErrors);
    m.set(M.alertsFiring, {}, st.firing);
    for (const a of st.alertmanagers) {
      const alertmanager = a.url;
      m.set(M.alertsSent, { alertmanager }, a.sent);
      m.set(M.alertPostFailures, { alertmanager }, a.failedAttempts);
      m.set(M.alertsDropped, { alertmanager, reason: 'queue_full' }, a.droppedQueueFull);
      m.set(M.alertsDropped, { alertmanager, reason: 'failed' }, a.droppedFailed);
      m.set(M.alertsQueued, { alertmanager }, a.queued);
    }
  }

  /** Evaluate every evaluationIntervalSeconds; `refresh` (e.g. the agent's collect) runs first. */
  start(refresh?: () => Promise<void>): void {
    if (this.timer) return;
    const tick = async (): Promise<void> => {
      try {
        await refresh?.();
      } catch {
        /* a failed collection leaves the store as it was: evaluate that */
      }
      this.evaluate();
      if (this.timer) this.timer = setTimeout(() => void tick(), this.config.evaluationIntervalSeconds * 1000).unref();
    };
    this.timer = setTimeout(() => void tick(), 0).unref();
  }

  async stop(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    await Promise.all(this.senders.map((s) => s.close()));
  }

  /** Waits until every sender's queue is empty (tests, orderly shutdown). */
  async flush(): Promise<void> {
    await Promise.all(this.senders.map((s) => s.idle()));
  }

  active(): readonly AlertState[] {
    return this.evaluator.firing();
  }

  get stats(): AlertingStats {
    const am = this.senders.map((s) => ({ ...s.stats }));
    const sum = (k: keyof DeliveryCounts): number => am.reduce((t, s) => t + s[k], 0);
    return {
      evaluations: this.evaluations,
      evaluationErrors: this.evaluationErrors,
      firing: this.evaluator.firing().length,
      sent: sum('sent'),
      failedAttempts: sum('failedAttempts'),
      retries: sum('retries'),
      droppedQueueFull: sum('droppedQueueFull'),
      droppedFailed: sum('droppedFailed'),
      queued: sum('queued'),
      alertmanagers: am,
    };
  }

  private postable(a: AlertState, endsAt: number): PostableAlert {
    const c = a.condition;
    const labels: Record<string, string> = {
      ...a.labels,
      instance: this.opts.instance ?? this.opts.node,
      job: this.opts.job ?? 'hvwatch',
      ...this.config.extraLabels,
      alertname: c.name,
      severity: c.severity,
    };
    const p: PostableAlert = {
      labels,
      annotations: {
        summary: c.summary(labels),
        description: c.description(labels),
        runbook_url: runbookUrl(c.name),
      },
      startsAt: iso(a.startsAt),
      endsAt: iso(endsAt),
    };
    if (this.opts.generatorURL) p.generatorURL = this.opts.generatorURL;
    return p;
  }
}

/**
 * Where an alert's runbook section lives (alerts/README.md, one heading per alert name).
 * The Prometheus rules use the same function, so both point at the same section.
 */
export const RUNBOOK_BASE = 'alerts/README.md';
export function runbookUrl(alertname: string): string {
  return `${RUNBOOK_BASE}#${alertname.toLowerCase()}`;
}
