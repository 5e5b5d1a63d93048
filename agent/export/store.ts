// The agent's view of every series it exports. Collectors write here; the exposition writer
// (export/exposition.ts) only formats what is here. Keeping one store means /metrics,
// /api/*, `hvwatch top` and the in-process alerts all read the same numbers.
//
// A series object lives as long as its label set does: collectors update it in place from
// scrape to scrape (MetricStore.visit/adopt, then sweep() drops what a collection did not see), so
// what the writer caches on it (its rendered labels) is computed once per series, not once
// per scrape.
import { isPerObject, type MetricDef } from '../model/metric.js';
import type { Log2Histogram } from '../aggregate/histogram.js';

export type Labels = Readonly<Record<string, string>>;

export interface Series {
  labels: Labels;
  value: number;
  hist?: Log2Histogram;
  /** Writer caches (export/exposition.ts), derived from `labels` only. */
  cache?: {
    text?: string;
    /** The series' encoded protobuf (exposition.ts seriesBytes) and the count/value and sum
     * it was encoded for. */
    pbBytes?: Uint8Array;
    pbValue?: number;
    pbSum?: number;
  };
  /** The collection that last visited it (MetricStore.visit); -1 once removed. */
  epoch?: number;
  /** How many visits it had in that collection: more than one when several map entries
   * fold into it ("_other"), which rules out collect.ts's unchanged-entry shortcut. */
  visits?: number;
}

// A label left out is an empty one, as in Prometheus: a cgroup that is not a pod's has no
// namespace/pod/container (catalog CG), and lookups by its cgroup alone find it.
export function seriesKey(def: MetricDef, labels: Labels): string {
  let k = '';
  for (const l of def.labels) k += `${labels[l] ?? ''}\u0000`;
  return k;
}

export class MetricStore {
  private readonly series = new Map<MetricDef, Map<string, Series>>();
  private epoch = 0;
  private readonly swept = new Set<MetricDef>();

  private family(def: MetricDef): Map<string, Series> {
    let m = this.series.get(def);
    if (!m) this.series.set(def, (m = new Map()));
    return m;
  }

  set(def: MetricDef, labels: Labels, value: number): void {
    const fam = this.family(def);
    const k = seriesKey(def, labels);
    const s = fam.get(k);
    if (s) s.value = value;
    else fam.set(k, { labels, value });
  }

  inc(def: MetricDef, labels: Labels = {}, by = 1): void {
    const fam = this.family(def);
    const k = seriesKey(def, labels);
    const s = fam.get(k);
    if (s) s.value += by;
    else fam.set(k, { labels, value: by });
  }

  /** Replace every series of a metric at once: collectors publish whole snapshots. A
   * series whose label set was there before keeps its object (and the writer's caches); a
   * per-object one that would be born at zero is not born yet (catalog isPerObject). */
  replace(def: MetricDef, series: Iterable<Series>): void {
    const prev = this.series.get(def);
    for (const s of prev?.values() ?? []) s.epoch = -1; // those kept get their epoch back below
    const fam = new Map<string, Series>();
    const perObject = isPerObject(def);
    for (const s of series) {
      const k = seriesKey(def, s.labels);
      const old = prev?.get(k);
      if (!old && perObject && s.value === 0) continue;
      if (old) {
        old.value = s.value;
        old.hist = s.hist;
        old.epoch = this.epoch;
        fam.set(k, old);
      } else {
        s.epoch = this.epoch;
        fam.set(k, s);
      }
    }
    this.series.set(def, fam);
  }

  /** Starts a collection: collectors then visit() the series they find; sweep() ends it. */
  beginCollection(): void {
    this.epoch++;
  }

  /** Whether the series the last visit() or adopt() returned is met for the first time in
   * this collection (the caller then replaces its value rather than adding to it: two raw
   * map keys can fold into one label set, "_other"). */
  fresh = false;

  /** The series of `key` in the collection under way, marked as seen; undefined when there
   * is none yet (adopt() makes it; a per-object series is not born at zero). */
  visit(def: MetricDef, key: string): Series | undefined {
    const s = this.series.get(def)?.get(key);
    if (!s) return undefined;
    this.fresh = s.epoch !== this.epoch;
    s.visits = this.fresh ? 1 : (s.visits ?? 0) + 1;
    s.epoch = this.epoch;
    return s;
  }

  /** A series first met in this collection. */
  adopt(def: MetricDef, key: string, s: Series): Series {
    s.epoch = this.epoch;
    s.visits = 1;
    this.family(def).set(key, s);
    this.fresh = true;
    return s;
  }

  /**
   * Whether `s` can be kept as it is in this collection: it is still in the store, was
   * visited exactly once in the previous collection and not yet in this one, so its value is
   * that one visitor's alone. collect.ts asks this for a map entry whose bytes did not change.
   */
  keepable(s: Series): boolean {
    return s.epoch === this.epoch - 1 && s.visits === 1;
  }

  /** Marks a keepable() series as visited in this collection, value unchanged. */
  keep(s: Series): void {
    s.epoch = this.epoch;
    s.visits = 1;
  }

  /** The collection under way (collect.ts tells its memo entries apart by it). */
  get collection(): number {
    return this.epoch;
  }

  /** After a metric was collected whole: its series not visited in this collection are gone
   * when the collection ends. */
  collected(def: MetricDef): void {
    this.swept.add(def);
  }

  /** Ends the collection: removes the series of collected metrics that were not visited. */
  sweep(): void {
    const epoch = this.epoch;
    for (const def of this.swept) {
      // forEach, not for-of over entries: no [key, value] array per series (~10,000 a
      // collection at fleet scale).
      const fam = this.series.get(def);
      fam?.forEach((s, k) => {
        if (s.epoch !== epoch) {
          fam.delete(k);
          s.epoch = -1;
        }
      });
    }
    this.swept.clear();
  }

  remove(def: MetricDef, match: (labels: Labels) => boolean): number {
    const fam = this.series.get(def);
    if (!fam) return 0;
    let n = 0;
    for (const [k, s] of fam)
      if (match(s.labels)) {
        fam.delete(k);
        s.epoch = -1;
        n++;
      }
    return n;
  }

  get(def: MetricDef, labels: Labels = {}): Series | undefined {
    return this.series.get(def)?.get(seriesKey(def, labels));
  }

  all(def: MetricDef): Series[] {
    return [...this.each(def)];
  }

  /** The metric's series with their keys, without copying them. */
  forEachKeyed(def: MetricDef, fn: (s: Series, key: string) => void): void {
    this.series.get(def)?.forEach(fn);
  }

  /** The metric's series without copying them (the writer's path). */
  each(def: MetricDef): Iterable<Series> {
    return this.series.get(def)?.values() ?? [];
  }

  size(def: MetricDef): number {
    return this.series.get(def)?.size ?? 0;
  }

  /** Sum of a metric's values over the series that match. */
  total(def: MetricDef, match: (labels: Labels) => boolean = () => true): number {
    let t = 0;
    for (const s of this.series.get(def)?.values() ?? []) if (match(s.labels)) t += s.value;
    return t;
  }
}
