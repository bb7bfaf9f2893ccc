// Retrying with back-off for the long-lived loops of worker threads: a thread that gives up on
// the first failure (an origin not reachable yet, a bug hit once) stops working for the rest of
// the daemon's life without anyone noticing. Time and stopping are injected, so tests need no
// clock.

export interface BackoffOptions {
  /** True once the caller is shutting down: no further attempt is made. */
  stopped(): boolean;
  /** Waits ms (or less, once stopped). */
  sleep(ms: number): Promise<void>;
  /** Delays between attempts; the last one repeats. */
  backoffMs: readonly number[];
}

/** `open()` until it resolves, sleeping between failures; null if stopped first. */
export async function retryUntilOpen<T>(open: () => Promise<T>, o: BackoffOptions & {
  onFailure(err: unknown, failures: number, retryInMs: number): void;
}): Promise<T | null> {
  for (let failures = 0; !o.stopped(); ) {
    try {
      return await open();
    } catch (err) {
      const delay = o.backoffMs[Math.min(failures, o.backoffMs.length - 1)]!;
      failures++;
      try {
        o.onFailure(err, failures, delay);
      } catch {
        // Reporting must never end the retries it reports on.
      }
      await o.sleep(delay);
    }
  }
  return null;
}

/**
 * Runs `body` until it returns or `stopped()`. A throw is reported and `body` starts again after
 * a back-off that grows with consecutive failures; a run that lasted `stableMs` resets it.
 */
export async function keepRunning(body: () => Promise<void>, o: BackoffOptions & {
  stableMs: number;
  now(): number;
  onCrash(err: unknown, crashes: number, retryInMs: number): void;
}): Promise<void> {
  let crashes = 0;
  while (!o.stopped()) {
    const started = o.now();
    try {
      await body();
      return;
    } catch (err) {
      if (o.now() - started >= o.stableMs) crashes = 0;
      const delay = o.backoffMs[Math.min(crashes, o.backoffMs.length - 1)]!;
      crashes++;
      try {
        o.onCrash(err, crashes, delay);
      } catch {
        // Reporting must never end the loop it reports on.
      }
      await o.sleep(delay);
    }
  }
}
