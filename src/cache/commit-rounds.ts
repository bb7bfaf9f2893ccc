// Commit rounds of one stripe: the keys it accepted (the open kset, closed ksets waiting), and
// the rounds that make them durable. A round takes every closed kset, syncs the cache (ordering
// rule 1: data before keys), appends them to the key log under the log lock, and, when a FLUSH or
// FUA waits, syncs again before the replies (rule 3). The syncs run off-thread, so the stripe keeps
// serving meanwhile; one round at a time.

import type { BlockDevice } from './blockdev.js';
import { KSET_MAX_KEYS } from './layout.js';
import { KEY_CLEAN, KEY_DIRTY } from './kset.js';
import type { CacheKey } from './kset.js';
import { appendKsets } from './log.js';
import type { Geometry } from './log.js';
import { W_KICK_GC } from './shared.js';
import type { CacheShared } from './shared.js';
import { FAIL_LOG_WRITE } from './durability.js';
import type { KeyJournal } from './journal.js';
import type { DataHead, WriteFailed } from './allocator.js';
import { BLOCK } from './data-runs.js';
import type { Done } from './data-runs.js';
import { Errno } from '../util/errno.js';
import type { EngineCounter } from './engine-counters.js';

/** What a round needs of the rest of the engine. */
export interface RoundHooks {
  /** Writes out the gathered data (the round's first sync must cover it); true when the cache device has failed. */
  beforeRound(): boolean;
  /** Keys still to come from data runs not yet written (the journal keeps room for them). */
  reservedKeys(): number;
  /** Every allocation whose data run has not taken effect yet: its key comes after this round. */
  unwritten(note: (seg: number, segOff: number) => void): void;
  /** A sync or log append of the round failed: the device has failed (the engine reacts). */
  failed(): void;
  count(name: EngineCounter, n: number): void;
  writeFailed: WriteFailed;
}

/**
 * Uncommitted 4 KiB blocks that start a commit round before the autocommit time (the shared
 * `autocommit.blocks` word, dm-writecache's autocommit_blocks: 65,536 by default, its SSD value):
 * a round costs an fdatasync, so a full kset alone does not start one. At 64 ksets (8192 blocks)
 * a 4 KiB random-write load paid an fdatasync every 0.15 s and ran 10% slower. The autocommit time
 * bounds what a crash can take back; this also bounds the memory the ksets hold.
 */

function blocksOfKey(k: CacheKey): number {
  return k.flags === KEY_DIRTY || k.flags === KEY_CLEAN ? Math.ceil(k.length / BLOCK) : 1;
}

export class CommitRounds {
  private open: CacheKey[] = [];
  #openSince = 0;
  private ready: CacheKey[][] = [];
  private lastLsn = 0;

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly journal: KeyJournal,
    private readonly head: DataHead,
    private readonly writerId: number,
    private readonly now: () => number,
    private readonly hooks: RoundHooks,
  ) {}

  /** Keys accepted but not yet in the log (open kset plus closed ones waiting for log space). */
  get pendingKeys(): number {
    let n = this.open.length;
    for (const k of this.ready) n += k.length;
    return n;
  }

  /** When the oldest key not yet taken by a round was accepted. */
  get openSince(): number { return this.#openSince; }
  /** Keys wait for a round (open or closed ksets). */
  get holdsKeys(): boolean { return this.open.length > 0 || this.ready.length > 0; }
  /** Closed ksets wait for a round (or for log space). */
  get hasClosed(): boolean { return this.ready.length > 0; }
  get running(): boolean { return this.roundRunning; }
  /** FLUSH/FUA replies wait for the next round. */
  get waiting(): boolean { return this.durableWaiters.length > 0; }

  /** `done` once a round after every key accepted so far has made them durable (call kick). */
  waitDurable(done: Done): void {
    this.durableWaiters.push(done);
  }

  /** Blocks in the open and closed ksets not yet taken by a round. */
  private pendingBlocks = 0;

  /** Enough keys wait uncommitted that a round is due before the autocommit time. */
  get autocommitDue(): boolean {
    return this.pendingBlocks >= this.sh.autocommitBlocks || this.journal.pending * 2 >= this.journal.capacity;
  }

  /** A new key: into the open kset, and into the shared journal so it survives this thread. */
  push(k: CacheKey): void {
    this.journal.push(k);
    this.queue(k);
  }

  /** A key already in the journal (a predecessor's, taken over) joins the open kset. */
  queue(k: CacheKey): void {
    if (this.open.length === 0 && this.ready.length === 0) this.#openSince = this.now();
    this.pendingBlocks += blocksOfKey(k);
    this.open.push(k);
    if (this.open.length >= KSET_MAX_KEYS) {
      this.ready.push(this.open);
      this.open = [];
    }
  }

  /** Room in the journal for `n` more keys (it bounds what a stripe holds uncommitted). */
  room(n: number): boolean {
    if (this.journal.room(n + KSET_MAX_KEYS + this.hooks.reservedKeys())) return true;
    this.wantRound = true;
    return false;
  }

  /**
   * Commit machinery. A round: take every closed kset, sync the cache (their data must be durable
   * before any kset points at it), append them to the log, and, when a FLUSH or FUA waits, sync
   * again so the ksets are durable before the replies. The syncs run off-thread (fdatasync in the
   * libuv pool), so the stripe keeps serving I/O meanwhile; writes that arrive during a round go
   * to the next one, and so do FLUSHes (they may cover those writes). One round at a time.
   */
  private roundRunning = false;
  /** FLUSH/FUA replies waiting for the next round to complete. */
  private durableWaiters: Done[] = [];
  private wantRound = false;

  /** The round in flight: its ksets, and whether the sync that covers their data succeeded. */
  private round: { batch: CacheKey[][]; dataDurable: boolean } | null = null;

  /** Starts a round if one is due and none runs. */
  kick(durable: boolean): void {
    if (durable) this.wantRound = true;
    if (this.roundRunning) return;
    // The round's first sync must cover the data its keys point at.
    if (this.hooks.beforeRound()) return;
    // Acknowledgements sent by beforeRound may have started a round already (a FUA write's).
    if (this.roundRunning) return;
    if (this.open.length > 0) {
      this.ready.push(this.open);
      this.open = [];
    }
    const waiters = this.durableWaiters;
    const needDurable = waiters.length > 0;
    if (this.ready.length === 0 && !needDurable) { this.wantRound = false; return; }
    this.durableWaiters = [];
    this.wantRound = false;
    this.roundRunning = true;
    // Everything allocated so far has its key in this round, except what is still being written.
    this.head.committed();
    this.hooks.unwritten((seg, segOff) => this.head.noteUncommitted(seg, segOff));
    this.pendingBlocks = 0;
    const batch = this.ready;
    this.ready = [];
    // A round for FLUSH/FUA ends an epoch with its last kset; with nothing new to log, an empty
    // kset carries the mark unless the newest kset in the log already ends one.
    if (needDurable && batch.length === 0 && !this.sh.epochClosed) batch.push([]);
    const epochAt = needDurable ? batch.length - 1 : -1;
    const round = { batch, dataDurable: false };
    this.round = round;
    // A failed sync or log write is the device failing (sticky): the round's keys are never
    // logged again (that would count them twice), its waiters and everyone after them get EIO.
    const fail = (): void => {
      this.hooks.failed();
      this.round = null;
      this.endRound(waiters, Errno.EIO);
    };
    const done = (): void => {
      this.round = null;
      this.endRound(waiters, 0);
    };
    const afterAppend = (): void => {
      if (!needDurable || this.lastLsn <= this.sh.durableLsn) { done(); return; }
      this.sh.syncCacheAsync(this.dev, (ok) => (ok ? done() : fail()));
    };
    if (batch.length === 0) { afterAppend(); return; }
    this.sh.syncCacheAsync(this.dev, (ok) => {
      if (!ok) { fail(); return; }
      round.dataDurable = true;
      let appended = 0;
      try {
        const r = appendKsets(this.dev, this.sh, this.g, batch, this.writerId, epochAt, this.journal);
        appended = r.appended;
        if (appended > 0) {
          this.lastLsn = r.headLsn;
          this.hooks.count('ksets', appended);
        }
      } catch (e) {
        this.hooks.writeFailed(e, 'key log append', FAIL_LOG_WRITE);
        fail();
        return;
      }
      if (appended < batch.length) {
        // Log full: the rest waits for GC, and so do the durable waiters of this round.
        this.round = null;
        this.ready = batch.slice(appended).concat(this.ready);
        for (const ks of batch.slice(appended)) for (const k of ks) this.pendingBlocks += blocksOfKey(k);
        this.durableWaiters = waiters.concat(this.durableWaiters);
        this.roundRunning = false;
        this.sh.kick(W_KICK_GC);
        return;
      }
      afterAppend();
    });
  }

  private endRound(waiters: Done[], errno: number): void {
    this.roundRunning = false;
    if (errno === 0 && waiters.length > 0) this.hooks.count('cache_flushes', 1);
    for (const d of waiters) d(errno);
    if (this.wantRound || this.durableWaiters.length > 0) this.kick(this.durableWaiters.length > 0);
  }

  /**
   * The device failed: every pending key is dropped, never to be logged. Returns the keys whose
   * data may not be durable (`suspect`: not covered by a successful sync) and every key this
   * stripe had not logged (`unlogged`, the round in flight included).
   */
  abandon(): { suspect: CacheKey[][]; unlogged: CacheKey[][] } {
    const suspect: CacheKey[][] = [this.open, ...this.ready];
    if (this.round && !this.round.dataDurable) suspect.push(...this.round.batch);
    const unlogged = [this.open, ...this.ready, ...(this.round?.batch ?? [])];
    this.open = [];
    this.ready = [];
    this.pendingBlocks = 0;
    return { suspect, unlogged };
  }

  /** Every FLUSH and FUA still waiting gets EIO (the device failed). */
  failWaiters(): void {
    const waiters = this.durableWaiters;
    this.durableWaiters = [];
    this.wantRound = false;
    for (const d of waiters) d(Errno.EIO);
  }

  /**
   * Stop: append every pending kset synchronously (the thread is about to end; the caller wrote
   * out the data first). True when every key is in the log and durable.
   */
  drain(): boolean {
    if (this.open.length > 0) { this.ready.push(this.open); this.open = []; }
    if (this.ready.length > 0) {
      if (!this.sh.syncCache(this.dev)) return false;
      try {
        const r = appendKsets(this.dev, this.sh, this.g, this.ready, this.writerId, -1, this.journal);
        if (r.appended > 0) this.lastLsn = r.headLsn;
        this.ready.splice(0, r.appended);
      } catch (err) {
        this.hooks.writeFailed(err, 'key log append at stop', FAIL_LOG_WRITE);
        return false;
      }
    }
    if (this.lastLsn > this.sh.durableLsn && !this.sh.syncCache(this.dev)) return false;
    return this.ready.length === 0;
  }}
