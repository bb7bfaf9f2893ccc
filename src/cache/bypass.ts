// The cache-full bypass: a write that waited `cacheFullWaitMs` for space goes straight to the
// origin, where that cannot contradict what the cache holds (docs/cache-engine.md "Cache full").
// One bypass at a time per stripe; the writes queued behind it keep their order.

import type { CacheShared } from './shared.js';
import { W_KICK_WB } from './shared.js';
import { ExtentFlag } from './index/extent-index.js';
import type { ExtentIndex } from './index/extent-index.js';
import { staleData } from './liveness.js';
import type { Origin } from '../origin/types.js';
import type { Queued } from './write-request.js';
import type { EngineCounter } from './engine-counters.js';

export class Bypass {
  /** The log position every older epoch must be written back to before the waiting write bypasses (-1: none yet). */
  #target = -1;
  #running = false;

  constructor(
    private readonly sh: CacheShared,
    private readonly index: ExtentIndex,
    private readonly origin: Origin,
    private readonly count: (name: EngineCounter, n: number) => void,
  ) {}

  /** A bypassed write is on the origin: nothing queued may start before it completes. */
  get running(): boolean { return this.#running; }

  /**
   * A bypass writes straight to the origin. It is only safe where the index holds nothing live:
   * a dirty extent would be written back over it later, and a clean or trim/zero extent may have
   * a key in the log that replay would bring back over the bypassed data. Gaps and extents of
   * reclaimed segments have no live key.
   */
  allowed(off: number, len: number): boolean {
    let ok = true;
    const gen = this.sh.gen;
    this.index.lookup(off, len, (_o, _l, e) => {
      if (e === null || (e.flags & ExtentFlag.EMPTY)) return;
      if (staleData(gen, e)) return;
      ok = false;
    });
    return ok;
  }

  /**
   * Epoch order holds for bypassed writes too: one goes to the origin only once every epoch closed
   * before it (up to the newest EPOCH kset in the log) has been written back and synced, so the
   * origin never gets a write ahead of an older epoch; keys after that mark are of the write's own
   * epoch, which the origin may hold in part. Writeback runs at full speed meanwhile (writes are
   * waiting for space).
   */
  drained(): boolean {
    if (this.#target < 0) this.#target = this.sh.lastEpochLsn + 1;
    if (this.sh.dirtyTail().lsn < this.#target) {
      this.sh.kick(W_KICK_WB);
      return false;
    }
    this.#target = -1;
    return true;
  }

  /** The waiting write gave up (it fails): the next one takes its own mark. */
  forget(): void {
    this.#target = -1;
  }

  start(q: Queued): void {
    this.index.remove(q.off, q.len);
    this.count('write_bypass', 1);
    this.#running = true;
    const finish = (errno: number): void => {
      this.#running = false;
      q.done(errno);
    };
    // FUA: a FLUSH only syncs the cache, so a bypassed write must be durable on its own.
    if (q.kind === 'write') {
      this.count('origin_writes', 1);
      this.count('origin_write_bytes', q.len);
      this.origin.write(q.off, q.data!, true, finish);
    } else if (q.kind === 'trim') this.origin.trim(q.off, q.len, true, finish);
    else this.origin.zero(q.off, q.len, { noHole: false, fastZero: false, fua: true }, finish);
  }
}
