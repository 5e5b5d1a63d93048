// Quantiles of the store's folded histograms, the way PromQL's histogram_quantile computes
// them (linear interpolation inside the bucket holding the rank; the first bucket starts at
// 0; a rank in +Inf answers the highest finite bound), so `hvwatch check`, the baseline
// and a dashboard's histogram_quantile agree on what "p99" means.
import { mergeFolded, type FoldedHistogram } from '../aggregate/histogram.js';

/** The q-quantile (0 <= q <= 1), or undefined for a histogram without observations. */
export function histogramQuantile(h: FoldedHistogram, q: number): number | undefined {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} is outside [0, 1]`);
  if (h.count <= 0 || h.bounds.length === 0) return undefined;
  const rank = q * h.count;
  for (let b = 0; b < h.bounds.length; b++) {
    const cum = h.cumulative[b]!;
    if (cum >= rank && cum > 0) {
      const prev = b === 0 ? 0 : h.cumulative[b - 1]!;
      const lower = b === 0 ? 0 : h.bounds[b - 1]!;
      const upper = h.bounds[b]!;
      const inBucket = cum - prev;
      return inBucket > 0 ? lower + (upper - lower) * ((rank - prev) / inBucket) : upper;
    }
  }
  return h.bounds[h.bounds.length - 1]; // the rank lies in +Inf
}

/** Several series' histograms as one (same bounds: one metric's series). */
export function mergeAll(hs: readonly FoldedHistogram[]): FoldedHistogram | undefined {
  return hs.reduce<FoldedHistogram | undefined>((acc, h) => (acc ? mergeFolded(acc, h) : h), undefined);
}
