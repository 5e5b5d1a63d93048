// The agent's view of every series it exports. Collectors write here; the prom-client
// registries (export/registry.ts) only format what is here. Keeping one store means
// /metrics, /api/*, `hvwatch top` and the in-process alerts all read the same numbers.
import type { MetricDef } from '../catalog.js';
import type { FoldedHistogram } from '../aggregate/histogram.js';

export type Labels = Readonly<Record<string, string>>;

export interface Series {
  labels: Labels;
  value: number;
  hist?: FoldedHistogram;
}

// A label left out is an empty one, as in Prometheus: a cgroup that is not a pod's has no
// namespace/pod/container (catalog CG), and lookups by its cgroup alone find it.
function keyOf(def: MetricDef, labels: Labels): string {
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
    this.family(def).set(keyOf(def, labels), { labels, value });
  }

  inc(def: MetricDef, labels: Labels = {}, by = 1): void {
    const fam = this.family(def);
    const k = keyOf(def, labels);
    const s = fam.get(k);
    if (s) s.value += by;
    else fam.set(k, { labels, value: by });
  }

  setHistogram(def: MetricDef, labels: Labels, hist: FoldedHistogram): void {
    this.family(def).set(keyOf(def, labels), { labels, value: hist.count, hist });
  }

  /** Replace every series of a metric at once: collectors publish whole snapshots. */
  replace(def: MetricDef, series: Iterable<Series>): void {
    const fam = new Map<string, Series>();
    for (const s of series) fam.set(keyOf(def, s.labels), s);
    this.series.set(def, fam);
  }

  remove(def: MetricDef, match: (labels: Labels) => boolean): number {
    const fam = this.series.get(def);
    if (!fam) return 0;
    let n = 0;
    for (const [k, s] of fam) if (match(s.labels)) { fam.delete(k); n++; }
    return n;
  }

  get(def: MetricDef, labels: Labels = {}): Series | undefined {
    return this.series.get(def)?.get(keyOf(def, labels));
  }

  all(def: MetricDef): Series[] {
    return [...(this.series.get(def)?.values() ?? [])];
  }

  /** Sum of a metric's values over the series that match. */
  total(def: MetricDef, match: (labels: Labels) => boolean = () => true): number {
    let t = 0;
    for (const s of this.series.get(def)?.values() ?? []) if (match(s.labels)) t += s.value;
    return t;
  }
}
