// The engine's counters and its share of the dirty byte count. They live in SharedArrayBuffer
// words: an Atomics.add (and a BigInt) per request costs more than the request's own bookkeeping,
// so a stripe sums locally and publishes once per batch and tick.

import type { CacheShared } from './shared.js';
import type { KeyJournal } from './journal.js';

/** Counters the engine bumps; the stripe maps them onto its SAB counter block. */
export interface EngineStats {
  add(name: EngineCounter, n: number): void;
}
export type EngineCounter =
  | 'read_blocks' | 'read_hits' | 'write_blocks' | 'write_bypass' | 'write_blocked' | 'cache_flushes'
  | 'discards' | 'fills' | 'fills_skipped' | 'crc_errors' | 'cache_errors' | 'ksets' | 'origin_reads' | 'origin_read_bytes'
  | 'origin_writes' | 'origin_write_bytes' | 'write_hits_uncommitted' | 'write_hits_committed' | 'write_allocs' | 'fills_deferred';

export interface EngineLog {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export class LocalCounters {
  readonly #local = new Map<EngineCounter, number>();
  #dirtyDelta = 0;

  constructor(
    private readonly sh: CacheShared,
    private readonly journal: KeyJournal,
    private readonly stats: EngineStats,
  ) {}

  count(name: EngineCounter, n: number): void {
    this.#local.set(name, (this.#local.get(name) ?? 0) + n);
  }

  /** Dirty bytes gained (or lost); mirrored in the journal so a successor publishes what this thread could not. */
  addDirty(n: number): void {
    this.#dirtyDelta += n;
    this.journal.unpublishedDirty = this.#dirtyDelta;
  }

  /** Dirty bytes counted here and not published yet. */
  get unpublishedDirty(): number { return this.#dirtyDelta; }

  /** Publishes the locally summed counters (end of every batch and tick). */
  publish(): void {
    if (this.#dirtyDelta !== 0) {
      this.sh.addDirty(this.#dirtyDelta);
      this.#dirtyDelta = 0;
      this.journal.unpublishedDirty = 0;
    }
    if (this.#local.size === 0) return;
    for (const [k, v] of this.#local) if (v !== 0) this.stats.add(k, v);
    this.#local.clear();
  }
}
