// Delivery to one Alertmanager (POST /api/v2/alerts): a bounded queue drained by one async
// loop, a timeout on every request, exponential backoff between attempts. Nothing here
// blocks the caller: enqueue() returns at once, and a slow or dead Alertmanager only costs
// queued alerts (dropped oldest-first and counted) and failed attempts (counted).

/** Alertmanager's postableAlert (api/v2/openapi.yaml). */
export interface PostableAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  startsAt: string;
  endsAt: string;
  generatorURL?: string;
}

export interface SenderOptions {
  url: string;
  timeoutMs: number;
  queueSize: number;
  backoff: { initialMs: number; maxMs: number; maxAttempts: number };
  /** Alerts per POST. */
  maxBatch?: number;
  fetch?: typeof fetch;
  /** 0..1; the backoff waits between half and all of its step (jitter spreads a fleet's retries). */
  random?: () => number;
}

/** Delivery counts: per Alertmanager, and summed over them in AlertingStats. */
export interface DeliveryCounts {
  /** Alerts Alertmanager accepted. */
  sent: number;
  /** POSTs that failed (network error, timeout, non-2xx). */
  failedAttempts: number;
  /** POSTs repeated after a failure. */
  retries: number;
  /** Alerts dropped because the queue was full. */
  droppedQueueFull: number;
  /** Alerts dropped after their last attempt failed or Alertmanager rejected them (4xx). */
  droppedFailed: number;
  queued: number;
}

export interface SenderStats extends DeliveryCounts {
  url: string;
  lastError?: string;
  lastSuccessAt?: number;
}

export const ALERTS_PATH = '/api/v2/alerts';

function fingerprint(a: PostableAlert): string {
  return JSON.stringify(Object.entries(a.labels).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
}

class Retryable extends Error {}

export class AlertmanagerSender {
  readonly stats: SenderStats;
  // Keyed by label set: a newer state of an alert replaces a queued older one, so a
  // resolution never queues behind its own stale "firing".
  private readonly queue = new Map<string, PostableAlert>();
  private draining: Promise<void> | undefined;
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly endpoint: string;
  private readonly fetchFn: typeof fetch;
  private readonly random: () => number;

  constructor(private readonly opts: SenderOptions) {
    this.endpoint = opts.url.replace(/\/+$/, '') + ALERTS_PATH;
    this.stats = { url: opts.url, sent: 0, failedAttempts: 0, retries: 0, droppedQueueFull: 0, droppedFailed: 0, queued: 0 };
    this.fetchFn = opts.fetch ?? fetch;
    this.random = opts.random ?? Math.random;
  }

  enqueue(alerts: readonly PostableAlert[]): void {
    if (this.closed) return;
    for (const a of alerts) {
      const k = fingerprint(a);
      this.queue.delete(k); // re-insert: the newest state goes to the back
      this.queue.set(k, a);
      if (this.queue.size > this.opts.queueSize) {
        const oldest = this.queue.keys().next().value as string;
        this.queue.delete(oldest);
        this.stats.droppedQueueFull++;
      }
    }
    this.stats.queued = this.queue.size;
    this.draining ??= this.drain().finally(() => (this.draining = undefined));
  }

  /** Resolves when the queue is empty and nothing is in flight (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.draining) await this.draining;
  }

  /** Stop sending: pending backoff waits end, queued alerts are abandoned. */
  async close(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.draining;
    this.queue.clear();
    this.stats.queued = 0;
  }

  private async drain(): Promise<void> {
    while (!this.closed && this.queue.size > 0) {
      const batch: PostableAlert[] = [];
      for (const [k, a] of this.queue) {
        if (batch.length >= (this.opts.maxBatch ?? 64)) break;
        batch.push(a);
        this.queue.delete(k);
      }
      this.stats.queued = this.queue.size;
      await this.deliver(batch);
    }
  }

  private async deliver(batch: PostableAlert[]): Promise<void> {
    const { maxAttempts } = this.opts.backoff;
    for (let attempt = 0; attempt < maxAttempts && !this.closed; attempt++) {
      if (attempt > 0) {
        this.stats.retries++;
        await this.sleep(this.backoffMs(attempt - 1));
        if (this.closed) break;
      }
      try {
        await this.post(batch);
        this.stats.sent += batch.length;
        this.stats.lastSuccessAt = Date.now();
        return;
      } catch (e) {
        this.stats.failedAttempts++;
        this.stats.lastError = (e as Error).message;
        if (!(e instanceof Retryable)) break;
      }
    }
    this.stats.droppedFailed += batch.length;
  }

  private async post(batch: PostableAlert[]): Promise<void> {
    let status: number;
    let body: string;
    try {
      const r = await this.fetchFn(this.endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(batch),
        signal: AbortSignal.timeout(this.opts.timeoutMs),
      });
      status = r.status;
      // Read the body under the same timeout: a server that sends headers and stalls is a failure too.
      body = await r.text();
    } catch (e) {
      const err = e as Error & { cause?: { code?: string; message?: string } };
      const why = err.name === 'TimeoutError' ? `timed out after ${this.opts.timeoutMs} ms` : (err.cause?.code ?? err.cause?.message ?? err.message);
      throw new Retryable(`${this.endpoint}: ${why}`);
    }
    if (status >= 200 && status < 300) return;
    const msg = `${this.endpoint}: HTTP ${status} ${body.trim().slice(0, 200)}`;
    // Any other 4xx means Alertmanager rejected these alerts: sending them again cannot help.
    if (status >= 400 && status < 500 && status !== 408 && status !== 429) throw new Error(msg);
    throw new Retryable(msg);
  }

  backoffMs(retry: number): number {
    const { initialMs, maxMs } = this.opts.backoff;
    const step = Math.min(maxMs, initialMs * 2 ** retry);
    return step / 2 + (step / 2) * this.random();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, ms);
      timer.unref();
      this.wake = () => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }
}
