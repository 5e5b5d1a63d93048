// Cardinality is a budget (README "Series lifecycle"): at most `cap` distinct values per budgeted
// label (cgroup, vm). Values past the cap are reported as "_other" and counted, so totals
// stay right while the series count stays bounded. Values are released when their object
// (cgroup, VM) goes away, which frees room for new ones (not for values already refused).
export const OVERFLOW_VALUE = '_other';

export class LabelBudget {
  private readonly admitted = new Map<string, Set<string>>();
  private readonly refused = new Map<string, Set<string>>();

  constructor(
    private readonly caps: Readonly<Record<string, number>>,
    private readonly onDrop: (label: string) => void,
  ) {}

  admit(label: string, value: string): string {
    const cap = this.caps[label];
    if (cap === undefined) return value;
    let set = this.admitted.get(label);
    if (!set) this.admitted.set(label, (set = new Set()));
    if (set.has(value)) return value;
    // A refused value stays refused until its own object goes (release): admitting it when
    // another's slot frees would move its counts out of "_other", and "_other" would go
    // backwards (README "Series lifecycle").
    if (this.refused.get(label)?.has(value)) return OVERFLOW_VALUE;
    if (set.size < cap) {
      set.add(value);
      return value;
    }
    let r = this.refused.get(label);
    if (!r) this.refused.set(label, (r = new Set()));
    if (!r.has(value)) {
      r.add(value);
      this.onDrop(label);
    }
    return OVERFLOW_VALUE;
  }

  release(label: string, value: string): void {
    this.admitted.get(label)?.delete(value);
    this.refused.get(label)?.delete(value);
  }

  size(label: string): number {
    return this.admitted.get(label)?.size ?? 0;
  }
}
