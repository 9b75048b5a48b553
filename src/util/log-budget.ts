/**
 * A bound on how many lines of one kind a process logs: at most `perWindow`
 * in each window of `windowMs`; the rest are counted, and the first line
 * allowed after them says how many were left out. So a flood of refused
 * connections costs a few lines a second, never the disk. Pure but for the
 * clock, which is injected.
 */
export class LogBudget {
  private windowStart = -Infinity;
  private used = 0;
  private dropped = 0;

  constructor(private readonly o: { perWindow: number; windowMs: number; now: () => number }) {
    if (!(o.perWindow >= 1) || !(o.windowMs > 0)) throw new RangeError('a log budget needs perWindow ≥ 1 and windowMs > 0');
  }

  /**
   * Whether one more line may be logged now, and how many were left out
   * before it (to say so with it); `ok: false` counts it as left out.
   */
  take(): { ok: boolean; leftOut: number } {
    const now = this.o.now();
    if (now - this.windowStart >= this.o.windowMs) {
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used >= this.o.perWindow) {
      this.dropped++;
      return { ok: false, leftOut: 0 };
    }
    this.used++;
    const leftOut = this.dropped;
    this.dropped = 0;
    return { ok: true, leftOut };
  }

  /** Lines left out since the last one logged. */
  get pending(): number {
    return this.dropped;
  }
}

/** A logger of one kind of line under a budget: `log(line)` writes it, or counts it; the next line written says how many were not. */
export function budgeted(budget: LogBudget, write: (line: string) => void): (line: string) => void {
  return (line) => {
    const t = budget.take();
    if (!t.ok) return;
    write(t.leftOut ? `${line} (${t.leftOut} more like it not logged)` : line);
  };
}
