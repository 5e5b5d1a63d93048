// Folding of the kernel's log2 histograms into Prometheus histograms. The BPF side
// (bpf/src/hvwatch.h log2_slot) puts value v in slot floor(log2(v)), v <= 1 in slot 0, so
// slot i holds the integers [2^i, 2^(i+1) - 1]. The exact inclusive upper bound of slot i
// is therefore 2^(i+1) - 1, scaled into the metric's base unit (e.g. ns -> seconds).

export interface Log2Range {
  /** Slots below this fold into the first bucket. */
  minSlot: number;
  /** Slots above this count only towards +Inf. */
  maxSlot: number;
  /** Multiply raw integer values by this to get the base unit (1e-9 for ns -> s). */
  scale: number;
}

export interface FoldedHistogram {
  /** Upper bounds (le), ascending, without +Inf. */
  bounds: number[];
  /** Cumulative counts per bound, then the +Inf count last (= count). */
  cumulative: number[];
  sum: number;
  count: number;
}

export function log2Bounds(r: Log2Range): number[] {
  const out: number[] = [];
  // toPrecision keeps le labels clean (4095e-9, not 4.095000000000001e-6).
  for (let i = r.minSlot; i <= r.maxSlot; i++) out.push(Number(((2 ** (i + 1) - 1) * r.scale).toPrecision(12)));
  return out;
}

/**
 * slots: per-slot counts already summed across CPUs. rawSum: the exact sum in raw units when
 * the BPF side keeps one; otherwise the sum is estimated from slot midpoints (and says so).
 */
export function foldLog2(slots: ArrayLike<number>, r: Log2Range, rawSum?: number): FoldedHistogram & { sumEstimated: boolean } {
  const bounds = log2Bounds(r);
  const cumulative = new Array<number>(bounds.length + 1).fill(0);
  let count = 0;
  let est = 0;
  for (let i = 0; i < slots.length; i++) {
    const c = slots[i] ?? 0;
    if (c === 0) continue;
    count += c;
    est += c * (i === 0 ? 1 : 1.5 * 2 ** i);
    const b = Math.max(i, r.minSlot) - r.minSlot;
    if (i <= r.maxSlot) cumulative[b]! += c;
  }
  for (let b = 1; b < bounds.length; b++) cumulative[b]! += cumulative[b - 1]!;
  cumulative[bounds.length] = count;
  return {
    bounds, cumulative, count,
    sum: (rawSum ?? est) * r.scale,
    sumEstimated: rawSum === undefined,
  };
}

/** Merge folded histograms with identical bounds (used when labels fold into "_other"). */
export function mergeFolded(a: FoldedHistogram, b: FoldedHistogram): FoldedHistogram {
  return {
    bounds: a.bounds,
    cumulative: a.cumulative.map((v, i) => v + (b.cumulative[i] ?? 0)),
    sum: a.sum + b.sum,
    count: a.count + b.count,
  };
}
