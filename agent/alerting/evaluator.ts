// Evaluates the in-process conditions over a read-only view of the MetricStore and keeps
// each alert's state (inactive -> firing -> resolved). Pure: no I/O, time is a parameter.
import type { MetricDef } from '../catalog.js';
import type { Labels, Series } from '../export/store.js';
import type { Condition } from './conditions.js';

/** What the evaluator needs of the store: MetricStore satisfies it. */
export interface StoreView {
  all(def: MetricDef): readonly Readonly<Series>[];
}

export interface AlertState {
  readonly condition: Condition;
  /** The series' own labels (e.g. {kind}, {probe}, {family}). */
  readonly labels: Labels;
  readonly startsAt: number;
  /** Set once resolved. */
  endsAt?: number;
}

interface Tracked {
  last: number;
  lastRiseAt?: number;
  alert?: AlertState;
}

export interface Transitions {
  fired: AlertState[];
  resolved: AlertState[];
}

function seriesKey(c: Condition, labels: Labels): string {
  return `${c.name}\u0000${c.metric.labels.map((l) => labels[l] ?? '').join('\u0000')}`;
}

export class Evaluator {
  private readonly tracked = new Map<string, Tracked>();

  constructor(
    private readonly conditions: readonly Condition[],
    private readonly holdMs: number,
  ) {}

  evaluate(store: StoreView, now: number): Transitions {
    const out: Transitions = { fired: [], resolved: [] };
    const seen = new Set<string>();
    for (const c of this.conditions) {
      for (const s of store.all(c.metric)) {
        const key = seriesKey(c, s.labels);
        seen.add(key);
        let t = this.tracked.get(key);
        // The store belongs to this process and its counters start at 0, so a series seen
        // for the first time with a value > 0 has risen since the agent started.
        if (!t) this.tracked.set(key, (t = { last: 0 }));
        const active = c.kind === 'zero' ? s.value === 0 : this.rose(t, s.value, now);
        t.last = s.value;
        this.step(t, c, s.labels, active, now, out);
      }
    }
    for (const [key, t] of this.tracked) {
      if (seen.has(key)) continue;
      // A vanished series: a state condition is over; an increase keeps its hold time.
      const c = t.alert?.condition;
      if (!c || c.kind === 'zero' || !this.holding(t, now)) {
        if (t.alert) this.step(t, c!, t.alert.labels, false, now, out);
        this.tracked.delete(key);
      }
    }
    return out;
  }

  /** Alerts firing now. */
  firing(): AlertState[] {
    return [...this.tracked.values()].flatMap((t) => (t.alert ? [t.alert] : []));
  }

  private rose(t: Tracked, value: number, now: number): boolean {
    // A lower value is a reset (the map was recreated): everything since counts as new.
    const delta = value < t.last ? value : value - t.last;
    if (delta > 0) t.lastRiseAt = now;
    return this.holding(t, now);
  }

  private holding(t: Tracked, now: number): boolean {
    return t.lastRiseAt !== undefined && now - t.lastRiseAt <= this.holdMs;
  }

  private step(t: Tracked, c: Condition, labels: Labels, active: boolean, now: number, out: Transitions): void {
    if (active && !t.alert) {
      t.alert = { condition: c, labels, startsAt: now };
      out.fired.push(t.alert);
    } else if (!active && t.alert) {
      t.alert.endsAt = now;
      out.resolved.push(t.alert);
      t.alert = undefined;
    }
  }
}
