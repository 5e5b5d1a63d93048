// The agent's view of every series it exports. Collectors write here; the exposition writer
// (export/exposition.ts) only formats what is here. Keeping one store means /metrics,
// /api/*, `hvwatch top` and the in-process alerts all read the same numbers.
//
// A series object lives as long as its label set does: collectors update it in place from
// scrape to scrape (MetricStore.rebuild), so what the writer caches on it (its rendered
// labels) is computed once per series, not once per scrape.
import type { MetricDef } from '../catalog.js';
import type { Log2Histogram } from '../aggregate/histogram.js';

export type Labels = Readonly<Record<string, string>>;

export interface Series {
  labels: Labels;
  value: number;
  hist?: Log2Histogram;
  /** Writer caches (export/exposition.ts), derived from `labels` only. */
  cache?: { text?: string; pb?: { name: string; value: string }[] };
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

  setHistogram(def: MetricDef, labels: Labels, hist: Log2Histogram): void {
    const fam = this.family(def);
    const k = seriesKey(def, labels);
    const s = fam.get(k);
    if (s) {
      s.hist = hist;
      s.value = hist.count;
    } else fam.set(k, { labels, value: hist.count, hist });
  }

  /** Replace every series of a metric at once: collectors publish whole snapshots. A
   * series whose label set was there before keeps its object (and the writer's caches). */
  replace(def: MetricDef, series: Iterable<Series>): void {
    const prev = this.series.get(def);
    const fam = new Map<string, Series>();
    for (const s of series) {
      const k = seriesKey(def, s.labels);
      const old = prev?.get(k);
      if (old) {
        old.value = s.value;
        old.hist = s.hist;
        fam.set(k, old);
      } else fam.set(k, s);
    }
    this.series.set(def, fam);
  }

  /** The map a collector rebuilds a metric into: `previous` answers the series of the last
   * snapshot by key (to update in place), `commit` publishes the new set. */
  rebuild(def: MetricDef): { previous: ReadonlyMap<string, Series>; next: Map<string, Series>; commit(): void } {
    const previous = this.series.get(def) ?? new Map<string, Series>();
    const next = new Map<string, Series>();
    return { previous, next, commit: () => void this.series.set(def, next) };
  }

  remove(def: MetricDef, match: (labels: Labels) => boolean): number {
    const fam = this.series.get(def);
    if (!fam) return 0;
    let n = 0;
    for (const [k, s] of fam) if (match(s.labels)) { fam.delete(k); n++; }
    return n;
  }

  get(def: MetricDef, labels: Labels = {}): Series | undefined {
    return this.series.get(def)?.get(seriesKey(def, labels));
  }

  all(def: MetricDef): Series[] {
    return [...this.each(def)];
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
