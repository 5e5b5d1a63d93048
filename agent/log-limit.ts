// A token bucket for log lines that an event storm could multiply (one race indicator per
// ring-buffer event): the first `burst` lines pass, then `perSecond`; what it holds back is
// counted (hvwatch_log_lines_suppressed_total) and summed up in one line when lines pass
// again, so a storm costs a bounded number of writes to stderr and loses nothing untold.
export class LogLimiter {
  private tokens: number;
  private last: number;
  private held = 0;

  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
    now = Date.now(),
  ) {
    this.tokens = burst;
    this.last = now;
  }

  /** Whether this line may be written; when not, it is counted as suppressed. `t` (ms) is
   * the caller's clock, read once per batch of events rather than once per line. */
  take(t: number): boolean {
    if (this.tokens < 1) {
      this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) / 1000) * this.perSecond);
      this.last = t;
    }
    if (this.tokens >= 1) {
      this.tokens--;
      return true;
    }
    this.held++;
    return false;
  }

  /** Lines suppressed since the last call (for the summary line). */
  takeSuppressed(): number {
    const n = this.held;
    this.held = 0;
    return n;
  }
}
