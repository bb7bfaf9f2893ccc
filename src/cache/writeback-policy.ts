// When writeback runs, and how fast: pure decisions over a snapshot of the shared state and an
// injected clock, so every rule below is tested with a fake clock (test/writeback-policy.test.ts)
// and the worker (workers/writeback.ts) is left with reading the state, acting and sleeping.
//
// Writeback always follows the log while anything is pending; the controls only decide whether it
// may wait. It waits (dm-writecache's pause_writeback) while the volume saw foreground I/O (or the
// worker started) within `pauseMs` and segment use is below gc_percent, and it is paced to `writeback.rate` after each
// epoch, unless a reason makes it urgent: dirty blocks past the high watermark (until back to the
// low one), writes that waited for cache space, the cleaner, or dirty data older than max_age.
// Idle, it sleeps until the log head moves or a second passes; after an origin error it backs
// off (100 ms to 5 s, reset by a step that succeeds); halted, it looks again every 5 s.

export interface Clock {
  /** Milliseconds, monotonic (performance.now() in the worker). */
  now(): number;
}

/** What the worker reads from the shared words before each decision. */
export interface WritebackState {
  /** Committed log up to `headLsn`; the origin has seen it up to `tailLsn` (dirty_tail). */
  headLsn: number;
  tailLsn: number;
  dirtyBytes: number;
  /** Bytes of the data area: the base of the watermarks' percentages. */
  cacheBytes: number;
  highWatermark: number;
  lowWatermark: number;
  cleaner: boolean;
  /** A write waited for cache space within the last WRITES_WAITING_MS. */
  writesWaiting: boolean;
  /** 0: no limit. */
  maxAgeMs: number;
  /** The stripes' foreground I/O counter: any change is foreground I/O now. */
  foreground: number;
  pauseMs: number;
  /** Segment use is below gc_percent: there is room to wait. */
  roomy: boolean;
  /** Origin bytes per second, 0 = unlimited. */
  rate: number;
}

export type Urgency = 'high watermark' | 'writes waiting for space' | 'cleaner' | 'max age';

export type Decision =
  | { act: 'write'; urgent: Urgency | null }
  /** Sleep `ms`; `wake`: cut short when the log head moves (or the worker stops). */
  | { act: 'sleep'; ms: number; why: 'pause' | 'idle' | 'backoff' | 'halted'; wake: boolean };

/** Delays after consecutive failed steps; the last one repeats. Also the worker's open and restart back-off. */
export const BACKOFF_MS: readonly number[] = [100, 250, 500, 1000, 2000, 5000];
/** Nothing to write back: look again after this long (or when the log head moves). */
export const IDLE_MS = 1000;
/** A halted writeback (a kset that does not verify) looks again this often. */
export const HALTED_MS = 5000;
/** The window in which a write that waited for space makes writeback urgent. */
export const WRITES_WAITING_MS = 1000;
/** A pause is taken in slices this long, so urgency, stops and new head samples are seen. */
const PAUSE_SLICE_MS = 100;
/** One rate-limit sleep is at most this long: a lowered rate must not leave writeback asleep for minutes. */
const MAX_PACE_MS = 5000;

export class WritebackPolicy {
  #aboveHigh = false;
  #fgSeen: number | null = null;
  /** The start counts as foreground I/O: a volume just (re)started is about to get its client's. */
  #fgAt: number;
  /** When the log head was first seen past each sequence number, oldest first: the ages for max_age. */
  readonly #headSeen: { lsn: number; at: number }[] = [];
  /** The sleep a step's outcome asks for, taken by the next decision. */
  #rest: Decision | null = null;
  #failures = 0;

  constructor(private readonly clock: Clock) {
    this.#fgAt = clock.now();
  }

  /** What to do next: write back now, or sleep. */
  next(s: WritebackState): Decision {
    this.#observe(s);
    const rest = this.#rest;
    if (rest) {
      // One-shot: a wake-up (the log head moved) must lead to a step, not to the same sleep again.
      this.#rest = null;
      return rest;
    }
    const urgent = this.urgency(s);
    if (urgent === null && s.pauseMs > 0 && s.roomy && s.tailLsn < s.headLsn && this.clock.now() - this.#fgAt < s.pauseMs) {
      return { act: 'sleep', ms: Math.min(PAUSE_SLICE_MS, s.pauseMs), why: 'pause', wake: false };
    }
    return { act: 'write', urgent };
  }

  /**
   * Why writeback must run at full speed now (no pause, no rate limit), or null. (A switch to a
   * mode that does not cache writes drains at the normal pace, as in bcache; the cleaner is the
   * way to drain now.)
   */
  urgency(s: WritebackState): Urgency | null {
    const dirtyPct = (100 * s.dirtyBytes) / s.cacheBytes;
    if (dirtyPct >= s.highWatermark) this.#aboveHigh = true;
    else if (dirtyPct <= s.lowWatermark) this.#aboveHigh = false;
    if (this.#aboveHigh) return 'high watermark';
    if (s.writesWaiting) return 'writes waiting for space';
    if (s.cleaner) return 'cleaner';
    if (s.maxAgeMs > 0 && this.oldestDirtyAge(s) >= s.maxAgeMs) return 'max age';
    return null;
  }

  /**
   * Milliseconds to sleep after an epoch of `bytes` that took `ms`, for `writeback.rate`: none
   * when unlimited or urgent, or when the epoch itself took its share of time.
   */
  paceMs(bytes: number, ms: number, s: WritebackState): number {
    this.#observe(s);
    if (s.rate <= 0 || this.urgency(s) !== null) return 0;
    const due = (bytes / s.rate) * 1000 - ms;
    return due > 1 ? Math.min(due, MAX_PACE_MS) : 0;
  }

  /** A step succeeded with `bytes` written back (0: nothing was pending). */
  stepDone(bytes: number): void {
    this.#failures = 0;
    if (bytes === 0) this.#rest = { act: 'sleep', ms: IDLE_MS, why: 'idle', wake: true };
  }

  /** A step failed; returns the back-off it asks for. Halted: no back-off growth, a slow look again. */
  stepFailed(halted: boolean): number {
    const ms = halted ? HALTED_MS : BACKOFF_MS[Math.min(this.#failures++, BACKOFF_MS.length - 1)]!;
    this.#rest = { act: 'sleep', ms, why: halted ? 'halted' : 'backoff', wake: halted };
    return ms;
  }

  /** Age in ms of the oldest dirty kset: logged at or before the first sample whose head passed it. */
  oldestDirtyAge(s: Pick<WritebackState, 'headLsn' | 'tailLsn'>): number {
    if (s.tailLsn >= s.headLsn) return 0;
    for (const x of this.#headSeen) if (x.lsn > s.tailLsn) return this.clock.now() - x.at;
    return 0;
  }

  /** Foreground I/O and the log head, sampled: every decision and every pace sees the state. */
  #observe(s: WritebackState): void {
    const now = this.clock.now();
    // The first sample is the baseline: what the counter says about I/O before the start is unknown.
    if (this.#fgSeen !== null && s.foreground !== this.#fgSeen) this.#fgAt = now;
    this.#fgSeen = s.foreground;
    const seen = this.#headSeen;
    const last = seen[seen.length - 1];
    if (!last || last.lsn < s.headLsn) seen.push({ lsn: s.headLsn, at: now });
    // Drop samples the dirty tail has passed (keep the one covering it).
    while (seen.length > 1 && seen[1]!.lsn <= s.tailLsn) seen.shift();
  }
}
