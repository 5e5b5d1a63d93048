// Host facts kept fresh off the scrape path. At 2,000 cgroups x 200 VMs a collection used
// to read memory.stat (~28 us of kernel time each), /proc/PID/stat of every VMM (proving it
// is still the same process) and, every 10 s, stat every cgroup directory: ~10 ms of a 40 ms
// scrape, and the p99 tail when the cgroup check fell on a scrape (bench/RESULTS.md). A
// scrape now reads BPF maps and cached facts; a timer refreshes the facts a few at a time.
//
// Each job is a set of items refreshed stalest first. Every tick (TICK_MS) does
// ceil(items x TICK_MS / interval) of them, at most its maxPerTick, so each item is
// re-read about once per interval and the kernel time is spread evenly over it. A tick
// whose stalest remaining item is older than twice the interval has fallen behind (the cap
// binds, or the event loop was blocked): counted in hvwatch_host_refresh_behind_total.
//
// The jobs only fill caches. What a collection serves goes through the same lookups as
// before (CgroupResolver.isAlive, the vm label's identity, the memcg family's memory.stat
// source), which `hvwatch record` taps into the trace's ident records before each snapshot:
// a replay serves exactly what the live collection served, with no timer of its own.
import { AGENT_METRICS as M } from '../agent-metrics.js';
import type { MetricDef } from '../model/metric.js';
import type { MetricStore } from '../export/store.js';

/** How often the refresher wakes. */
export const TICK_MS = 100;

export interface RefreshJob {
  /** The `fact` label of its self-metrics. */
  readonly fact: string;
  /** Each item is refreshed about this often. */
  readonly intervalMs: number;
  /** The most items one tick refreshes (bounds the event loop's time per tick). */
  readonly maxPerTick: number;
  /** Items tracked now. */
  size(): number;
  /** Refreshes up to `n` of the stalest items at `now`. */
  refresh(n: number, now: number): void;
  /** When the stalest item was last refreshed (undefined when there is none). */
  oldest(): number | undefined;
  /** The refresher started (true) or stopped (false). Caches are trusted only while it
   * runs: before start() and after stop() every lookup reads the host as without it. */
  running?(on: boolean): void;
}

/**
 * Items keyed by K, in the order they were last refreshed (a Map's insertion order: a
 * refresh deletes and re-inserts), so the stalest are always the first keys.
 */
export class RefreshOrder<K, V> {
  private readonly m = new Map<K, { at: number; v: V }>();

  get size(): number {
    return this.m.size;
  }

  get(k: K): V | undefined {
    return this.m.get(k)?.v;
  }

  has(k: K): boolean {
    return this.m.has(k);
  }

  /** Stores a fresh value (moves the item last). */
  set(k: K, v: V, at: number): void {
    const e = this.m.get(k);
    this.m.delete(k);
    if (e) {
      e.at = at;
      e.v = v;
      this.m.set(k, e);
    } else this.m.set(k, { at, v });
  }

  delete(k: K): void {
    this.m.delete(k);
  }

  keys(): IterableIterator<K> {
    return this.m.keys();
  }

  /** The `n` stalest keys (a copy: refreshing them reorders the map). */
  stalest(n: number): K[] {
    const out: K[] = [];
    for (const k of this.m.keys()) {
      if (out.length >= n) break;
      out.push(k);
    }
    return out;
  }

  oldest(): number | undefined {
    for (const e of this.m.values()) return e.at;
    return undefined;
  }

  /** Drops the stalest items past `max`. */
  bound(max: number): void {
    for (const k of this.m.keys()) {
      if (this.m.size <= max) break;
      this.m.delete(k);
    }
  }
}

/** What a KeyChecks check returns for a key it no longer tracks. */
export const FORGET: unique symbol = Symbol('forget');

/**
 * A job that re-checks a set of keys (cgroups' liveness, VMM processes): the owner records a
 * key's result as it answers a lookup (checks.set), the job re-checks the stalest ones each
 * tick. `checks` exists only while the refresher runs (RefreshJob.running), so an owner
 * without a refresher reads the host at every lookup.
 */
export class KeyChecks<K, V> implements RefreshJob {
  /** Each key's last result, stalest first; undefined while the refresher is not running. */
  checks: RefreshOrder<K, V> | undefined;

  constructor(
    readonly fact: string,
    readonly intervalMs: number,
    readonly maxPerTick: number,
    private readonly check: (k: K) => V | typeof FORGET,
    /** Bound applied after each refresh (stalest dropped first). */
    private readonly max = Infinity,
  ) {}

  running(on: boolean): void {
    this.checks = on ? new RefreshOrder() : undefined;
  }

  size(): number {
    return this.checks?.size ?? 0;
  }

  oldest(): number | undefined {
    return this.checks?.oldest();
  }

  refresh(n: number, now: number): void {
    const checks = this.checks;
    if (!checks) return;
    for (const k of checks.stalest(n)) {
      const v = this.check(k);
      if (v === FORGET) checks.delete(k);
      else checks.set(k, v, now);
    }
    checks.bound(this.max);
  }
}

export class HostRefresher {
  private readonly jobs: RefreshJob[] = [];
  private readonly behind = new Map<RefreshJob, number>();
  private timer: NodeJS.Timeout | undefined;
  private readonly periodic: { ms: number; fn: () => void; last: number }[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  /** Also runs `fn` about every `ms` from the same timer (LiveSource: malloc_trim). */
  every(ms: number, fn: () => void): void {
    this.periodic.push({ ms, fn, last: this.now() });
  }

  private on = false;

  add(job: RefreshJob): void {
    if (this.jobs.includes(job)) return;
    this.jobs.push(job);
    this.behind.set(job, 0);
    if (this.on) job.running?.(true);
  }

  /** Starts the jobs; `timer` false leaves the ticks to the caller (tests). */
  start(timer = true): void {
    if (!this.on) for (const j of this.jobs) j.running?.(true);
    this.on = true;
    // unref: the refresher never keeps the process alive on its own.
    if (timer) this.timer ??= setInterval(() => this.tick(), TICK_MS).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.on) for (const j of this.jobs) j.running?.(false);
    this.on = false;
  }

  /** One tick (the timer's; tests call it directly). */
  tick(now = this.now()): void {
    for (const j of this.jobs) {
      const n = j.size();
      if (n === 0) continue;
      j.refresh(Math.min(j.maxPerTick, Math.ceil((n * TICK_MS) / j.intervalMs)), now);
      const o = j.oldest();
      if (o !== undefined && now - o > 2 * j.intervalMs) this.behind.set(j, this.behind.get(j)! + 1);
    }
    for (const p of this.periodic) {
      if (now - p.last < p.ms) continue;
      p.last = now;
      p.fn();
    }
  }

  /** The refresher's self-metrics, set at each collection. */
  publish(store: MetricStore, now: number): void {
    for (const j of this.jobs) {
      const labels = { fact: j.fact };
      store.set(M.hostRefreshBehind, labels, this.behind.get(j)!);
      const o = j.oldest();
      store.set(M.hostRefreshAge, labels, o === undefined ? 0 : Math.max(0, now - o) / 1000);
      store.set(M.hostRefreshItems, labels, j.size());
    }
  }

  /** The metrics publish() sets (replay leaves them out: test/record-replay.test.ts). */
  static readonly metrics: readonly MetricDef[] = [M.hostRefreshBehind, M.hostRefreshAge, M.hostRefreshItems];
}
