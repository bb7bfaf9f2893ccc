// Rates over the last minute and the last hour beside the totals, as bcache's stats_five_minute /
// stats_hour do: the daemon samples its counters periodically and a window's rate is the change
// from the oldest sample inside it to the counters now. Pure code with an injected clock, so the
// windows can be tested without waiting an hour.

export const RATE_SAMPLE_MS = 5000;
export const RATE_WINDOWS = { minute: 60_000, hour: 3_600_000 } as const;
export type RateWindowName = keyof typeof RATE_WINDOWS;

export interface WindowRates {
  /** Seconds the window really covers: shorter than its nominal length while the daemon is younger. */
  spanSec: number;
  /** Counter name → change per second over the span. */
  perSec: Record<string, number>;
  /** Counter name → change over the span. */
  delta: Record<string, number>;
}

interface Sample { at: number; values: Record<string, number> }

export class RateHistory {
  readonly #samples: Sample[] = [];
  readonly #now: () => number;
  readonly #keepMs: number;

  constructor(opts: { now?: () => number; keepMs?: number } = {}) {
    this.#now = opts.now ?? (() => performance.now());
    this.#keepMs = opts.keepMs ?? RATE_WINDOWS.hour;
  }

  /** Takes a sample; keeps one sample older than the longest window so that window stays full. */
  record(values: Record<string, number>): void {
    const at = this.#now();
    this.#samples.push({ at, values: { ...values } });
    while (this.#samples.length > 2 && at - this.#samples[1]!.at >= this.#keepMs) this.#samples.shift();
  }

  /** Counters were reset (clear_stats): old samples would give negative rates. */
  reset(values: Record<string, number>): void {
    this.#samples.length = 0;
    this.record(values);
  }

  /** Rates over the last `windowMs` up to `current`; null before the first sample. */
  rates(windowMs: number, current: Record<string, number>): WindowRates | null {
    const now = this.#now();
    // The oldest sample no older than the window; the first one while the history is shorter.
    const base = this.#samples.find((s) => now - s.at <= windowMs) ?? this.#samples[this.#samples.length - 1];
    if (!base) return null;
    const spanMs = now - base.at;
    const delta: Record<string, number> = {};
    const perSec: Record<string, number> = {};
    for (const [k, v] of Object.entries(current)) {
      const d = Math.max(0, v - (base.values[k] ?? 0));
      delta[k] = d;
      perSec[k] = spanMs > 0 ? d / (spanMs / 1000) : 0;
    }
    return { spanSec: Math.round(spanMs / 100) / 10, perSec, delta };
  }
}
