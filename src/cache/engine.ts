// The write-back cache engine of one stripe: it owns the stripe's subtrees of the index, its data
// head and its open kset, and does the cache I/O (synchronous pread/pwrite where the device offers
// nothing else; read hits and data runs asynchronous, up to the queue depth, where it does) and
// the origin reads of misses.
//
// This file takes the requests in and ties the paths together; each path lives in its own file
// (docs/cache-engine.md "Threads and what they share" lists them): allocator.ts, data-runs.ts,
// piece-effects.ts, commit-rounds.ts, reads.ts, write-through.ts, bypass.ts, mode-table.ts.
//
// Ordering rules this file keeps (docs/cache-engine.md "Ordering rules"):
//  * data is durable before any kset pointing at it is written (one group-commit sync first);
//  * an extent enters the index only once its data is in the file, and then in the same step as
//    its key enters the stripe's kset stream (and its journal), so the log order of one range is
//    the order its writes were applied and a failed data write never hides the extent it replaced;
//  * a read-miss fill is logged only when its placeholder survived whole, so a write that raced
//    the origin read is never overridden at replay by the older origin data;
//  * once the cache device has failed (sticky, src/cache/durability.ts), nothing new is accepted
//    and nothing is claimed durable: writes, FLUSH and FUA get EIO, durable data is still served.

import type { BlockDevice } from './blockdev.js';
import { KEY_DIRTY, KEY_TRIM, KEY_ZERO, needsWriteback } from './kset.js';
import type { CacheKey } from './kset.js';
import type { Geometry } from './log.js';
import { ERR_CACHE_IO, W_FOREGROUND, W_FREED, W_KICK_GC } from './shared.js';
import type { CacheShared } from './shared.js';
import { FAIL_REPLAY } from './durability.js';
import { rebuildSubtrees } from './rebuild.js';
import { KeyJournal } from './journal.js';
import { DataHead } from './allocator.js';
import { BLOCK, DataRuns, PIECE_DIRTY, blocks } from './data-runs.js';
import type { Done } from './data-runs.js';
import { insertSweeping, sweepStale } from './liveness.js';
import { modeRow } from './mode-table.js';
import { StripeReads } from './reads.js';
import { CommitRounds } from './commit-rounds.js';
import { Bypass } from './bypass.js';
import { OriginFirst } from './write-through.js';
import type { Queued } from './write-request.js';
import { PieceEffects } from './piece-effects.js';
import { LocalCounters } from './engine-counters.js';
import type { EngineCounter, EngineLog, EngineStats } from './engine-counters.js';
import { ExtentFlag } from './index/extent-index.js';
import type { Extent, ExtentIndex } from './index/extent-index.js';
import type { Origin, Extent as StatusExtent } from '../origin/types.js';
import { Errno } from '../util/errno.js';

export type { Done };
export { BLOCK };
export type { EngineCounter, EngineLog, EngineStats };

export interface EngineOptions {
  dev: BlockDevice;
  shared: CacheShared;
  index: ExtentIndex;
  geometry: Geometry;
  origin: Origin;
  /** dataCrc only: one CRC32C per 4 KiB cache block, shared (Int32 words). */
  blockCrc: Int32Array | null;
  stats?: EngineStats;
  log?: EngineLog;
  now?: () => number;
  /**
   * The stripe's pending keys in shared memory (src/cache/journal.ts). A respawned stripe passes
   * its predecessor's and takes over what it had accepted; tests may leave it out.
   */
  journal?: KeyJournal;
  /** Read hits, and data-run writes, each stripe keeps in flight on the cache device (cacheQueueDepth; default 32). */
  queueDepth?: number;
  /** Nothing else waits for the stripe thread (low queue depth, no request queued): see DataRuns. */
  idle?: () => boolean;
  /** Index slots a dead predecessor left half edited, emptied (ExtentIndex.attachRepairing): rebuilt from the log. */
  rebuild?: readonly number[];
}

const NO_STATS: EngineStats = { add() {} };
const NO_LOG: EngineLog = { warn() {}, error() {} };

export class StripeEngine {
  private readonly dev: BlockDevice;
  private readonly sh: CacheShared;
  private readonly index: ExtentIndex;
  private readonly g: Geometry;
  private readonly origin: Origin;
  private readonly opts: EngineOptions;
  private readonly counters: LocalCounters;
  private readonly log: EngineLog;
  private readonly now: () => number;
  private readonly writerId: number;
  private readonly journal: KeyJournal;

  private readonly head: DataHead;
  private readonly runs: DataRuns;
  private readonly reads: StripeReads;
  private readonly rounds: CommitRounds;
  private readonly bypass: Bypass;
  private readonly through: OriginFirst;
  private readonly effects: PieceEffects;
  private queue: Queued[] = [];
  private freedSeen: number;

  constructor(o: EngineOptions) {
    this.opts = o;
    this.dev = o.dev;
    this.sh = o.shared;
    this.index = o.index;
    this.g = o.geometry;
    this.origin = o.origin;
    this.log = o.log ?? NO_LOG;
    this.now = o.now ?? Date.now;
    this.writerId = this.sh.nextWriterId();
    this.freedSeen = this.sh.word(W_FREED);
    this.journal = o.journal ?? KeyJournal.create();
    this.counters = new LocalCounters(this.sh, this.journal, o.stats ?? NO_STATS);
    this.runs = new DataRuns(this.dev, this.sh, this.g, o.blockCrc, {
      commit: (p, i) => this.effects.commit(p, i),
      abort: (p, i) => this.effects.abort(p, i),
      afterRun: () => this.effects.afterRun(),
      // A FUA write whose run completed waits for a round now (see finishWrite).
      afterAcks: () => { if (this.rounds.waiting) this.rounds.kick(true); },
      writeFailed: (err, what, why) => this.deviceWriteFailed(err, what, why),
    }, o.queueDepth, o.idle);
    this.head = new DataHead(this.dev, this.sh, this.g, this.journal, (err, what, why) => this.deviceWriteFailed(err, what, why));
    this.rounds = new CommitRounds(this.dev, this.sh, this.g, this.journal, this.head, this.writerId, this.now, {
      beforeRound: () => { this.flushData(); return this.noticeFailure(); },
      reservedKeys: () => this.runs.outstandingKeys,
      unwritten: (note) => this.runs.forEachUnsettled(note),
      failed: () => { this.noticeFailure(); },
      count: (name, n) => this.count(name, n),
      writeFailed: (err, what, why) => this.deviceWriteFailed(err, what, why),
    });
    this.bypass = new Bypass(this.sh, this.index, this.origin, (name, n) => this.count(name, n));
    this.through = new OriginFirst({ sh: this.sh, index: this.index, g: this.g, origin: this.origin, journal: this.journal, head: this.head, runs: this.runs, rounds: this.rounds, log: this.log }, {
      submit: (q) => this.submit(q),
      spaceWaiters: () => this.queue.length > 0 || this.bypass.running,
      enqueue: (q) => { this.queue.push(q); },
      unpublishedDirty: () => this.counters.unpublishedDirty,
      count: (name, n) => this.count(name, n),
      requestError: (err, what) => this.requestError(err, what),
    });
    this.reads = new StripeReads({ dev: this.dev, sh: this.sh, index: this.index, g: this.g, origin: this.origin, blockCrc: o.blockCrc, journal: this.journal, head: this.head, runs: this.runs, log: this.log, queueDepth: o.queueDepth }, {
      noticeFailure: () => this.noticeFailure(),
      flushData: () => this.flushData(),
      count: (name, n) => this.count(name, n),
      requestError: (err, what) => this.requestError(err, what),
      cacheReadError: (err, what) => this.cacheReadError(err, what),
      writingThrough: (off, len) => this.through.inflight > 0 && this.through.overlapsInflight(off, len),
    });
    this.effects = new PieceEffects(this.sh, this.index, this.head, this.rounds, this.through, this.reads, this.counters);
    this.takeOver();
  }

  /** Keys a dead predecessor of this stripe had accepted, now pending here again (respawn). */
  readonly recoveredKeys: number = 0;

  /**
   * A respawned stripe carries on where the dead thread stopped: the keys it had accepted but not
   * logged (acknowledged writes: the next FLUSH must cover them), its data head (and the segment
   * reference that comes with it), and the dirty bytes it had not published. Its read-miss
   * placeholders would block promotion of their ranges for ever, so they go.
   */
  private takeOver(): void {
    const j = this.journal;
    if (j.incarnation++ === 0) return;
    this.sh.lockLog(); // a half-done append of the dead thread is judged against the log head
    let keys: CacheKey[];
    try {
      keys = j.recover(this.sh.headLsn);
    } finally {
      this.sh.unlockLog();
    }
    if (j.unpublishedDirty !== 0) {
      this.sh.addDirty(j.unpublishedDirty);
      j.unpublishedDirty = 0;
    }
    if (j.headSeg >= 0) this.head.resume(j.headSeg, j.headOff);
    for (const k of keys) this.rounds.queue(k);
    (this as { recoveredKeys: number }).recoveredKeys = keys.length;
    const slots = this.opts.rebuild ?? [];
    if (slots.length > 0) {
      let r: number | string = 'not tried';
      // GC may retire ksets under the walk: try again from the new key tail.
      for (let attempt = 0; attempt < 3 && typeof r !== 'number'; attempt++) r = rebuildSubtrees(this.dev, this.sh, this.g, this.index, slots, keys);
      if (typeof r === 'number') {
        this.index.repaired();
        this.log.warn({ slots: slots.length, keys: r }, 'stripe restarted: rebuilt the index subtrees its predecessor left half edited');
      } else {
        // Those subtrees would serve older data than the cache holds: refuse instead.
        this.log.error({ why: r }, 'stripe restarted: could not rebuild its index from the key log; the cache fails');
        this.sh.fail(Errno.EIO, FAIL_REPLAY);
      }
    }
    // Writes the predecessor sent to the origin first and did not flush there yet, or an origin
    // flush of its that failed: the successor owes the same.
    this.through.inherit(j.originState);
    this.index.removeIf((e) => (e.flags & ExtentFlag.EMPTY) !== 0);
    this.log.warn({ keys: keys.length, headSegment: this.head.segment }, 'stripe restarted: took over the keys its predecessor had accepted');
  }

  /** Keys accepted but not yet in the log (open kset plus closed ones waiting for log space). */
  get pendingKeys(): number {
    return this.rounds.pendingKeys;
  }

  get queuedWrites(): number { return this.queue.length; }

  // ---- keys and commit rounds (src/cache/commit-rounds.ts) ----

  /** A new key: into the open kset, and into the shared journal so it survives this thread. */
  private pushKey(k: CacheKey): void {
    this.rounds.push(k);
  }

  /** Room in the journal for `n` more keys; without it the next round is asked for. */
  private journalRoom(n: number): boolean {
    return this.rounds.room(n);
  }

  // ---- the device failed (src/cache/durability.ts) ----

  private failureSeen = false;

  /**
   * True once the cache device has failed. The first time a stripe sees it: data it wrote since the
   * last successful sync may not be on the device (a failed fsync may have dropped those pages,
   * and the page cache may still show them until they are evicted), so its extents are poisoned
   * (reads get EIO, never whatever the device holds there); clean copies are dropped (the origin
   * has the data); keys still pending are never logged; everything waiting fails with EIO.
   * Durable data stays served, and writeback keeps writing it to the origin.
   */
  private noticeFailure(): boolean {
    if (this.sh.failed === 0) return false;
    if (this.failureSeen) return true;
    this.failureSeen = true;
    this.runs.flush(); // pieces not yet written are aborted
    const { suspect, unlogged } = this.rounds.abandon();
    let poisoned = 0;
    for (const ks of suspect) {
      for (const k of ks) {
        if (k.flags !== KEY_DIRTY) continue;
        this.insertIndex({ off: k.originOffset, len: k.length, seg: 0, segOff: 0, gen: 0, flags: ExtentFlag.POISON });
        poisoned += k.length;
      }
    }
    // Never written back in this run (writeback stops at the last durable kset).
    for (const ks of unlogged) for (const k of ks) if (needsWriteback(k.flags)) this.addDirty(-k.length);
    this.index.removeIf((e) => (e.flags & ExtentFlag.CLEAN) !== 0);
    if (poisoned > 0) this.log.error({ bytes: poisoned }, 'cache device failed: data not yet durable is unreadable until restart (EIO)');
    this.failAllWaiting();
    this.publishStats();
    return true;
  }

  /** Every FLUSH, FUA and write still waiting gets EIO (the device failed). */
  private failAllWaiting(): void {
    this.rounds.failWaiters();
    const queued = this.queue.concat(this.through.takeParked());
    this.queue = [];
    for (const q of queued) q.done(Errno.EIO);
  }

  /** A write to the cache device failed: the device has failed (as in dm-writecache, any write error). */
  private deviceWriteFailed(err: unknown, what: string, why: number): void {
    this.count('cache_errors', 1);
    this.log.error({ err, what }, 'cache device write failed: the cache refuses writes and flushes until restart');
    this.sh.fail(Errno.EIO, why);
  }

  /** Housekeeping between batches: autocommit, queued writes, the stale-entry sweep. */
  tick(): void {
    this.publishStats();
    this.flushData();
    if (this.noticeFailure()) return;
    const now = this.now();
    // Closed ksets wait for the autocommit time (or for enough of them): every round costs a sync.
    if (!this.rounds.running && (this.rounds.autocommitDue || (this.rounds.holdsKeys && now - this.rounds.openSince >= this.sh.autocommitMs))) this.rounds.kick(false);
    const freed = this.sh.word(W_FREED);
    if (freed !== this.freedSeen) {
      this.freedSeen = freed;
      this.sweepStale();
      if (this.rounds.hasClosed || this.rounds.waiting) this.rounds.kick(this.rounds.waiting);
    }
    if (this.queue.length > 0) {
      this.runQueue();
      this.flushData();
    }
  }

  /** Milliseconds until tick() has something to do (for the stripe's idle wait). */
  nextTickIn(): number {
    if (this.queue.length > 0 || (this.rounds.autocommitDue && !this.rounds.running)) return 5;
    if (this.rounds.holdsKeys) return Math.max(0, this.sh.autocommitMs - (this.now() - this.rounds.openSince));
    return Infinity;
  }

  /** True while keys or replies wait on a commit round, or writes on the origin (modes that write it first). */
  get committing(): boolean {
    return this.rounds.running || this.rounds.waiting || this.through.inflight > 0;
  }

  private sweepStale(): void {
    sweepStale(this.index, this.sh.gen);
  }

  private insertIndex(e: Extent): void {
    insertSweeping(this.index, this.sh.gen, e);
  }

  /** Not a device error (index memory, a bug): EIO for this request only, logged. */
  private requestError(err: unknown, what: string): void {
    this.count('cache_errors', 1);
    this.log.error({ err, what }, 'cache request failed');
  }

  /** A cache read failed: EIO for that request only (the data may still be good elsewhere), counted and shown. */
  private cacheReadError(err: unknown, what: string): void {
    this.sh.setError(ERR_CACHE_IO);
    this.count('cache_errors', 1);
    this.log.error({ err, what }, 'cache device read error');
  }

  // ---- FLUSH ----

  /** Group commit: every FLUSH (and FUA) of one batch shares one round (see endBatch). */
  flush(done: Done): void {
    if (this.noticeFailure() || this.through.flushFailed) {
      done(Errno.EIO);
      return;
    }
    if (!this.through.unflushed) {
      this.rounds.waitDurable(done);
      return;
    }
    // Writes completed on the origin since its last flush (modes that write it first).
    this.through.flushOrigin(done);
  }

  endBatch(): void {
    this.publishStats();
    if (this.wroteInBatch) {
      this.wroteInBatch = false;
      Atomics.add(this.sh.w, W_FOREGROUND, 1);
    }
    this.flushData();
    if (this.rounds.waiting) this.rounds.kick(true);
  }

  // ---- WRITE / TRIM / ZERO ----

  write(off: number, data: Uint8Array, fua: boolean, done: Done): void {
    this.enter({ kind: 'write', off, len: data.length, data, fua, done, since: this.now(), through: this.writesThrough() });
  }

  trim(off: number, len: number, fua: boolean, done: Done): void {
    this.enter({ kind: 'trim', off, len, data: null, fua, done, since: this.now(), through: this.writesThrough() });
  }

  zero(off: number, len: number, fua: boolean, done: Done): void {
    this.enter({ kind: 'zero', off, len, data: null, fua, done, since: this.now(), through: this.writesThrough() });
  }

  /** writeback and writeonly complete writes in the cache; the other modes write the origin first. */
  private writesThrough(): boolean {
    // dm-writecache's cleaner: no new write promotions; writes go around the cache.
    return modeRow(this.sh.mode).originFirst || this.sh.cleaner;
  }

  /** Every write enters here: behind an overlapping write on the origin, or down its mode's path. */
  private enter(q: Queued): void {
    this.wroteInBatch = true;
    if (this.noticeFailure()) {
      q.done(Errno.EIO);
      return;
    }
    if (this.through.mustWait(q)) {
      this.through.park(q);
      return;
    }
    if (q.through) this.through.submit(q);
    else this.submit(q);
  }

  /** Foreground I/O seen in this batch (reads included: writeback competes for the same CPU). */
  private wroteInBatch = false;

  private count(name: EngineCounter, n: number): void {
    this.counters.count(name, n);
  }

  private addDirty(n: number): void {
    this.counters.addDirty(n);
  }

  /** Publishes the locally summed counters (end of every batch and tick). */
  publishStats(): void {
    this.counters.publish();
  }

  private submit(q: Queued): void {
    this.wroteInBatch = true;
    // Writes waiting for space keep their order: nothing overtakes them.
    if (this.queue.length > 0 || this.bypass.running) {
      this.queue.push(q);
      return;
    }
    let r: 'ok' | 'full';
    try {
      r = this.apply(q);
    } catch (err) {
      this.requestError(err, q.kind);
      q.done(Errno.EIO);
      return;
    }
    if (r === 'full') {
      this.count('write_blocked', 1);
      this.sh.kick(W_KICK_GC);
      this.queue.push(q);
      return;
    }
    this.finishWrite(q);
  }

  private finishWrite(q: Queued): void {
    if (!q.fua) {
      this.runs.ackAfterWrite(q.done);
      return;
    }
    // The round must carry the write's own key, which exists only once its run took effect
    // (at once when the run is written synchronously: the round's beforeRound writes it).
    this.runs.ackAfterWrite((errno) => {
      if (errno !== 0) q.done(errno);
      else this.rounds.waitDurable(q.done);
    });
    this.rounds.kick(true);
  }

  private apply(q: Queued): 'ok' | 'full' {
    if (q.kind !== 'write') {
      const flags = q.kind === 'trim' ? KEY_TRIM : KEY_ZERO;
      // Writes still in the gathered run come first in the index and the log.
      this.runs.flush();
      if (this.noticeFailure()) throw new Error('the cache device failed');
      // A key without data still needs log space; keep a segment's worth of headroom.
      if (this.sh.freeSegments === 0 && this.rounds.hasClosed) return 'full';
      if (!this.journalRoom(1)) return 'full';
      // Behind runs still in flight: the key takes effect after theirs (their acks wait for it).
      this.runs.inOrder((ok) => {
        if (!ok) return;
        this.insertIndex({ off: q.off, len: q.len, seg: 0, segOff: 0, gen: 0, flags: q.kind === 'trim' ? ExtentFlag.TRIM : ExtentFlag.ZERO });
        this.pushKey({ originOffset: q.off, length: q.len, flags, segment: 0, offset: 0, generation: 0, dataCrc: 0 });
        this.addDirty(q.len);
      }, 1);
      if (q.kind === 'trim') this.count('discards', blocks(q.len));
      return 'ok';
    }
    const data = q.data!;
    if (!this.journalRoom(Math.ceil(data.length / this.g.dataAreaSize) + 1)) return 'full';
    const allocs = this.head.allocAll(data.length, false);
    if (allocs === null) return 'full';
    this.count('write_allocs', blocks(data.length));
    let pos = 0;
    for (const a of allocs) {
      this.runs.add(a, data.subarray(pos, pos + a.len), q.off + pos, PIECE_DIRTY, 0);
      pos += a.len;
    }
    this.count('write_blocks', blocks(data.length));
    return 'ok';
  }

  /** Writes out every gathered run and acknowledges the writes waiting on them. */
  flushData(): void {
    this.runs.flushAndAck();
  }

  private runQueue(): void {
    if (this.queue.length > 0) this.sh.noteWriteBlocked(Date.now());
    while (this.queue.length > 0 && !this.bypass.running) {
      const q = this.queue[0]!;
      if (q.through) {
        this.queue.shift();
        this.through.start(q);
        continue;
      }
      let r: 'ok' | 'full';
      try {
        r = this.apply(q);
      } catch (err) {
        this.queue.shift();
        this.requestError(err, q.kind);
        q.done(Errno.EIO);
        continue;
      }
      if (r === 'ok') {
        this.queue.shift();
        this.finishWrite(q);
        continue;
      }
      const waited = this.now() - q.since;
      if (waited < this.sh.cacheFullWaitMs) return;
      // A bypass checks the index for dirty data over its range: writes still in flight are not
      // in it yet (and their keys would then be written back over the bypassed data).
      if (this.runs.unsettled > 0) return;
      if (this.bypass.allowed(q.off, q.len)) {
        if (!this.bypass.drained()) {
          if (waited < this.sh.cacheFullMaxWaitMs) return;
        } else {
          this.queue.shift();
          this.bypass.start(q);
          continue;
        }
      }
      if (waited < this.sh.cacheFullMaxWaitMs) return;
      this.queue.shift();
      this.bypass.forget();
      this.log.error({ off: q.off, len: q.len, waitedMs: waited }, 'cache full and writeback not freeing space: write failed');
      q.done(Errno.EIO);
    }
  }

  // ---- READ and BLOCK_STATUS (src/cache/reads.ts) ----

  /** `noFill`: the coordinator saw a long sequential run; serve it without promoting it. */
  read(off: number, buf: Uint8Array, noFill: boolean, done: Done): void {
    this.wroteInBatch = true; // any foreground I/O pauses writeback (see shared.ts writebackPauseMs)
    this.reads.read(off, buf, noFill, done);
  }

  /** A prefix of the range (the protocol allows short replies): cached pieces first, else the origin's answer for the first gap. */
  blockStatus(off: number, len: number, maxExtents: number, cb: (errno: number, extents: StatusExtent[]) => void): void {
    this.reads.blockStatus(off, len, maxExtents, cb);
  }

  /** Read hits on the cache device in flight: their completions need the event loop. */
  get cacheReadsInFlight(): number {
    return this.reads.hitsInFlight;
  }

  /** Data-run writes on the cache device in flight: their completions need the event loop. */
  get cacheWritesInFlight(): number {
    return this.runs.inFlight;
  }

  /** Anything still in motion: commit rounds, queued or parked writes, writes on the origin, misses. */
  get busy(): boolean {
    return this.committing || this.queue.length > 0 || this.through.parkedWrites > 0 || this.reads.missesInFlight > 0 || this.reads.hitsInFlight > 0 || this.runs.pending || this.runs.unsettled > 0;
  }

  /**
   * Stop: commit everything synchronously (the thread is about to end; the caller waited for the
   * data-run writes in flight). True when every key is in the log and durable.
   */
  drain(): boolean {
    this.flushData();
    if (this.noticeFailure()) return false;
    return this.rounds.drain() && this.runs.unsettled === 0;
  }

}
