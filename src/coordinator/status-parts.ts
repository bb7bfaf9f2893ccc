// What the coordinator adds to the counters for `pcached status`: the cache's condition in one
// word, and the rates over the last minute and hour from periodic samples (src/stats/rates.ts).
// Also the hint a listener that cannot start gives.

import type { CacheStatus } from '../daemon/ipc.js';
import { RateHistory, RATE_SAMPLE_MS, RATE_WINDOWS } from '../stats/rates.js';

/** One word for the cache's condition, worst first (docs/operations.md, "Status"). */
export function conditionOf(cs: NonNullable<CacheStatus['cacheState']>): string {
  if (cs.failed) return 'failed';
  if (cs.errors.length > 0) return 'degraded';
  if (cs.dirtyBlocks === 0) return 'clean';
  if (cs.cleaner) return 'cleaning';
  return cs.draining ? 'draining' : 'dirty';
}

/** Requests of every command, for the request rate. */
const RATE_REQUESTS = ['reqs_read', 'reqs_write', 'reqs_flush', 'reqs_trim', 'reqs_cache', 'reqs_write_zeroes', 'reqs_block_status'];

/** The totals the rates are computed from, out of the coordinator's, the stripes' and the workers' counters. */
export function rateTotals(coordinator: Record<string, number>, stripes: Record<string, number>[], writebackBytes: number): Record<string, number> {
  const sum = (k: string): number => stripes.reduce((a, s) => a + (s[k] ?? 0), 0);
  return {
    requests: RATE_REQUESTS.reduce((a, k) => a + (coordinator[k] ?? 0), 0),
    bytesRead: coordinator.bytes_read ?? 0,
    bytesWritten: coordinator.bytes_written ?? 0,
    readBlocks: sum('read_blocks'),
    readHits: sum('read_hits'),
    writebackBytes,
  };
}

/** Samples `totals` every RATE_SAMPLE_MS while running; `status()` gives the totals and their windows. */
export class StatusRates {
  readonly #history = new RateHistory();
  readonly #totals: () => Record<string, number>;
  readonly #timer: NodeJS.Timeout;

  constructor(totals: () => Record<string, number>) {
    this.#totals = totals;
    this.#history.record(totals());
    this.#timer = setInterval(() => this.#history.record(this.#totals()), RATE_SAMPLE_MS);
    this.#timer.unref();
  }

  /** clear_stats: the counters start again from zero. */
  reset(): void {
    this.#history.reset(this.#totals());
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  status(): NonNullable<CacheStatus['rates']> {
    const now = this.#totals();
    const out: NonNullable<CacheStatus['rates']> = { total: now };
    for (const [name, ms] of Object.entries(RATE_WINDOWS)) {
      const r = this.#history.rates(ms, now);
      if (r) out[name as keyof typeof RATE_WINDOWS] = { spanSec: r.spanSec, perSec: r.perSec, hitRatio: r.delta.readBlocks ? r.delta.readHits! / r.delta.readBlocks : null };
    }
    return out;
  }
}

/** Why a listener could not start, and what to do about it. */
export function listenHint(err: NodeJS.ErrnoException, tcp: boolean): string {
  if (err.code === 'EADDRINUSE' && tcp) return ' (another pcached or NBD server holds that port: choose another with --tcp HOST:PORT or the cache\'s "tcp" key, or --tcp \'\' for none)';
  if (err.code === 'EADDRNOTAVAIL') return ' (no interface of this host has that address: use one it has, e.g. 127.0.0.1)';
  if (err.code === 'EACCES' && tcp) return ' (ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a port above 1023 with --tcp HOST:PORT)';
  return '';
}
