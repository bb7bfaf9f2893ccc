// Writes that go to the origin first: writethrough, writearound and passthrough, and any mode
// while the cleaner runs (docs/cache-engine.md "Modes", ordering rule 5).
//
// The origin and the cache must never disagree in a way a crash could expose: a clean cached
// copy replayed over newer origin data would change the volume by itself later, when it is
// evicted. So a write that goes to the origin first (writethrough, writearound, passthrough):
//  * over a range still holding dirty data (written in write-back mode, or a TRIM/ZERO key),
//    is taken by the cache as a dirty write instead; writeback puts it on the origin after the
//    older data, in log order;
//  * otherwise drops the cached copies of its range first, and, if one was live (replay would
//    restore it), logs an INVALIDATE key and makes it durable before the origin write starts;
//  * is not overtaken: later writes overlapping it wait in `parked`, in order, and reads of its
//    range do not promote (a fill could read the origin's old data);
//  * in writethrough, a WRITE is then cached as a clean extent (if there is room now).
// A FLUSH then flushes the origin too.

import { KSET_MAX_KEYS } from './layout.js';
import { KEY_CLEAN, KEY_INVALIDATE } from './kset.js';
import type { Geometry } from './log.js';
import { ERR_ORIGIN_FLUSH } from './shared.js';
import type { CacheShared } from './shared.js';
import type { KeyJournal } from './journal.js';
import { ExtentFlag } from './index/extent-index.js';
import type { ExtentIndex } from './index/extent-index.js';
import type { Origin } from '../origin/types.js';
import { Errno } from '../util/errno.js';
import type { DataHead } from './allocator.js';
import type { CommitRounds } from './commit-rounds.js';
import { PIECE_CLEAN, RUN_STRIDE, blocks } from './data-runs.js';
import type { DataRuns, Done } from './data-runs.js';
import { liveData, segmentLive } from './liveness.js';
import { modeRow } from './mode-table.js';
import type { Queued } from './write-request.js';
import type { EngineCounter, EngineLog } from './engine-counters.js';

/** Write-through copies waiting for the origin's flush before their keys are logged. */
const MAX_UNLOGGED_CLEAN = 8192;

/** What this path needs of the rest of the engine. */
export interface ThroughHooks {
  /** Takes a write into the cache as a dirty write (the write-back path). */
  submit(q: Queued): void;
  /** Writes wait for cache space (or a bypass runs): nothing may overtake them. */
  spaceWaiters(): boolean;
  /** Queues a write behind the ones waiting for cache space. */
  enqueue(q: Queued): void;
  /** Dirty bytes this stripe counted and has not published yet. */
  unpublishedDirty(): number;
  count(name: EngineCounter, n: number): void;
  requestError(err: unknown, what: string): void;
}

export interface ThroughDeps {
  sh: CacheShared;
  index: ExtentIndex;
  g: Geometry;
  origin: Origin;
  journal: KeyJournal;
  head: DataHead;
  runs: DataRuns;
  rounds: CommitRounds;
  log: EngineLog;
}

export class OriginFirst {
  private readonly sh: CacheShared;
  private readonly index: ExtentIndex;
  private readonly g: Geometry;
  private readonly origin: Origin;
  private readonly journal: KeyJournal;
  private readonly head: DataHead;
  private readonly runs: DataRuns;
  private readonly rounds: CommitRounds;
  private readonly log: EngineLog;

  constructor(d: ThroughDeps, private readonly hooks: ThroughHooks) {
    this.sh = d.sh;
    this.index = d.index;
    this.g = d.g;
    this.origin = d.origin;
    this.journal = d.journal;
    this.head = d.head;
    this.runs = d.runs;
    this.rounds = d.rounds;
    this.log = d.log;
  }

  /** Writes on the origin now, or waiting for one that overlaps them. */
  get inflight(): number { return this.throughInflight.length; }
  get parkedWrites(): number { return this.parked.length; }

  /** A write must wait behind a write on the origin (or behind writes already waiting so). */
  mustWait(q: Queued): boolean {
    return this.parked.length > 0 || (this.throughInflight.length > 0 && this.overlapsInflight(q.off, q.len));
  }

  park(q: Queued): void {
    this.parked.push(q);
  }

  /** The parked writes, handed back to be failed (the device failed). */
  takeParked(): Queued[] {
    const p = this.parked;
    this.parked = [];
    return p;
  }

  /** A respawned stripe owes what its predecessor owed the origin (the journal's origin state). */
  inherit(state: number): void {
    this.originFlushFailed = (state & 2) !== 0;
    this.originUnflushed = (state & 1) !== 0;
  }

  /** The origin may not have made durable what it serves now (writes since its last flush, or a failed flush). */
  get originMayLack(): boolean { return this.originUnflushed || this.originFlushFailed; }
  /** A FLUSH can only fail: an origin flush failed after writes that went to it first. */
  get flushFailed(): boolean { return this.originFlushFailed; }
  /** A FLUSH must flush the origin too. */
  get unflushed(): boolean { return this.originUnflushed; }

  private throughInflight: Queued[] = [];
  private parked: Queued[] = [];
  private originUnflushedNow = false;
  /** An origin flush failed after writes that went to the origin first (sticky, see flushOrigin()). */
  private originFlushFailedNow = false;
  // Mirrored in the journal: a successor stripe inherits both.
  private get originUnflushed(): boolean { return this.originUnflushedNow; }
  private set originUnflushed(v: boolean) { this.originUnflushedNow = v; this.journal.originState = (v ? 1 : 0) | (this.originFlushFailedNow ? 2 : 0); }
  private get originFlushFailed(): boolean { return this.originFlushFailedNow; }
  private set originFlushFailed(v: boolean) { this.originFlushFailedNow = v; this.journal.originState = (this.originUnflushedNow ? 1 : 0) | (v ? 2 : 0); }

  /** A write on its way to the origin first overlaps the range. */
  overlapsInflight(off: number, len: number): boolean {
    for (const t of this.throughInflight) if (off < t.off + t.len && t.off < off + len) return true;
    return false;
  }

  /** Starts the parked writes no write on the origin overlaps any more, in order. */
  private unpark(): void {
    while (this.parked.length > 0 && !this.overlapsInflight(this.parked[0]!.off, this.parked[0]!.len)) {
      const q = this.parked.shift()!;
      if (q.through) this.submit(q);
      else this.hooks.submit(q);
    }
  }

  /** A write taking this path (or queued behind the writes that wait for cache space). */
  submit(q: Queued): void {
    // Writes waiting for cache space keep their order: nothing overtakes them.
    if (this.hooks.spaceWaiters()) {
      this.hooks.enqueue(q);
      return;
    }
    this.start(q);
  }

  /** Starts a write on this path now (also from the queue of writes that waited for space). */
  start(q: Queued, behindRuns = false): void {
    // Writes still in the gathered run take effect first: the index must show them.
    this.runs.flush();
    if (!behindRuns && this.runs.unsettled > 0) {
      // Runs still in flight may hold dirty data over the range: decide once they took effect.
      // Held as in flight meanwhile, so later writes overlapping it wait behind it.
      this.throughInflight.push(q);
      this.runs.inOrder((ok) => {
        if (!ok) { this.endThrough(q, Errno.EIO, false); return; }
        this.throughInflight.splice(this.throughInflight.indexOf(q), 1);
        this.start(q, true);
      }, 0);
      return;
    }
    if (this.hasDirty(q.off, q.len)) {
      this.hooks.submit({ ...q, through: false });
      return;
    }
    if (!this.rounds.room(KSET_MAX_KEYS)) {
      this.hooks.enqueue(q);
      this.rounds.kick(false);
      return;
    }
    this.throughInflight.push(q);
    let logged: boolean;
    try {
      logged = this.invalidate(q.off, q.len);
    } catch (err) {
      this.hooks.requestError(err, 'invalidate');
      this.endThrough(q, Errno.EIO, false);
      return;
    }
    if (!logged) {
      this.writeOrigin(q);
      return;
    }
    // The INVALIDATE key is durable before the origin can hold data the old copy contradicts.
    this.rounds.waitDurable((errno) => {
      if (errno !== 0) this.endThrough(q, errno, false);
      else this.writeOrigin(q);
    });
    this.rounds.kick(true);
  }

  private writeOrigin(q: Queued): void {
    const finish = (errno: number): void => {
      let cached = false;
      if (errno === 0 && q.kind === 'write' && modeRow(this.sh.mode).cleanCopy) {
        try {
          cached = this.cacheClean(q.off, q.data!);
        } catch (err) {
          // The origin has the write and the range holds no cached copy: still a success.
          this.hooks.requestError(err, 'write-through cache copy');
        }
      }
      this.endThrough(q, errno, cached);
    };
    if (q.kind === 'write') {
      this.hooks.count('origin_writes', 1);
      this.hooks.count('origin_write_bytes', q.len);
      this.origin.write(q.off, q.data!, q.fua, finish);
    } else if (q.kind === 'trim') this.origin.trim(q.off, q.len, q.fua, finish);
    else this.origin.zero(q.off, q.len, { noHole: false, fastZero: false, fua: q.fua }, finish);
  }

  private endThrough(q: Queued, errno: number, cached: boolean): void {
    this.throughInflight.splice(this.throughInflight.indexOf(q), 1);
    if (errno === 0 && !this.originUnflushed) {
      this.originUnflushed = true;
      this.journal.originMark = this.sh.originFlushFails;
    }
    // A cached copy sits in a gathered run: acknowledged once it is in the file (flushData). The
    // origin has the write either way, so a failed copy (its extent never entered the index) does
    // not fail it.
    if (cached && errno === 0 && this.runs.pending) this.runs.ackThroughAfterWrite(q.done);
    else q.done(errno);
    this.unpark();
    this.runs.flushAndAck();
  }

  /** Live dirty data, or a TRIM/ZERO key, anywhere in the range (writeback still owes it to the origin). */
  private hasDirty(off: number, len: number): boolean {
    // The index keeps DIRTY/TRIM/ZERO flags after writeback; with nothing dirty anywhere, none is
    // (this stripe's own unpublished count included: see publishStats).
    if (this.sh.dirtyBytes + this.hooks.unpublishedDirty() === 0) return false;
    let dirty = false;
    const gen = this.sh.gen;
    this.index.lookup(off, len, (_o, _l, e) => {
      if (e === null || dirty) return;
      if (e.flags & (ExtentFlag.TRIM | ExtentFlag.ZERO)) dirty = true;
      else if ((e.flags & ExtentFlag.DIRTY) && segmentLive(gen, e.seg, e.gen)) dirty = true;
    });
    return dirty;
  }

  /**
   * Drops every cached copy, placeholder and TRIM/ZERO entry in the range (which holds nothing
   * writeback still owes the origin: see start(); entries flagged DIRTY or TRIM/ZERO are
   * written back already). Returns true when an INVALIDATE key was logged for a live entry, which
   * replay would otherwise restore.
   */
  private invalidate(off: number, len: number): boolean {
    const drop: [number, number, boolean][] = [];
    const gen = this.sh.gen;
    this.index.lookup(off, len, (o, l, e) => {
      if (e === null) return;
      const live = (e.flags & (ExtentFlag.TRIM | ExtentFlag.ZERO)) !== 0 || liveData(gen, e);
      drop.push([o, l, live]);
    });
    let logged = false;
    for (const [o, l, live] of drop) {
      this.index.remove(o, l);
      if (live) {
        this.rounds.push({ originOffset: o, length: l, flags: KEY_INVALIDATE, segment: 0, offset: 0, generation: 0, dataCrc: 0 });
        logged = true;
      }
    }
    return logged;
  }

  /** Caches data the origin already holds as clean extents; false (nothing cached) when there is no room now. */
  private cacheClean(off: number, data: Uint8Array): boolean {
    if (this.sh.failed !== 0 || !this.journal.room(data.length / this.g.dataAreaSize + 2 + KSET_MAX_KEYS + this.runs.outstandingKeys)) return false;
    // Copies wait in memory for the origin flush: bounded, beyond which writes are not cached.
    if (this.unloggedClean.length >= MAX_UNLOGGED_CLEAN * RUN_STRIDE) return false;
    const allocs = this.head.allocAll(data.length, true);
    if (allocs === null) return false;
    let pos = 0;
    for (const a of allocs) {
      this.runs.add(a, data.subarray(pos, pos + a.len), off + pos, PIECE_CLEAN, 0);
      pos += a.len;
    }
    this.hooks.count('write_blocks', blocks(data.length));
    return true;
  }

  /**
   * A FLUSH once writes completed on the origin since its last flush: the origin is flushed, then
   * the copies it now holds are logged, and the reply waits for that and for a commit round.
   */
  flushOrigin(done: Done): void {
    this.originUnflushed = false;
    let left = 2;
    let first = 0;
    const both = (errno: number): void => {
      if (errno !== 0 && first === 0) first = errno;
      if (--left === 0) done(first);
    };
    const cleans = this.unloggedClean;
    this.unloggedClean = [];
    const mark = this.journal.originMark;
    this.origin.flush((status) => {
      if (status !== 0) this.sh.noteOriginFlushFailed();
      // A flush anywhere that failed since these writes began may have dropped them: not covered.
      const errno = status !== 0 ? status : this.sh.originFlushFails !== mark ? Errno.EIO : 0;
      // Those writes may be gone (a flush that failed may have dropped them, and a later one
      // would succeed without them) and nothing holds a copy to write again: every later FLUSH
      // of this stripe fails too, until a restart.
      if (errno !== 0 && !this.originFlushFailed) {
        this.originFlushFailed = true;
        this.sh.setError(ERR_ORIGIN_FLUSH);
        this.log.error({ errno }, 'origin flush failed after writes that went to the origin first: FLUSH fails until restart');
      }
      if (errno === 0) this.logCleanCopies(cleans);
      else for (let i = 0; i < cleans.length; i += RUN_STRIDE) this.head.release(cleans[i + 2]!);
      this.rounds.waitDurable(both);
      this.rounds.kick(true);
      both(errno);
    });
  }

  /**
   * Write-through copies whose origin write is not flushed yet (flat, RUN_STRIDE numbers each). A
   * clean key says "the origin holds this": logged before the origin flushed it, a power cut that
   * cost the origin its write cache would leave the cache replaying a copy the origin lost. Until
   * the flush, the copy is served from memory only.
   */
  private unloggedClean: number[] = [];

  /** A piece's clean copy (RUN_STRIDE numbers at `i`) waits for the origin's flush before its key is logged. */
  holdClean(p: readonly number[], i: number): void {
    for (let j = 0; j < RUN_STRIDE; j++) this.unloggedClean.push(p[i + j]!);
  }

  /** After the origin flushed them: log the copies the index still holds whole (nothing newer touched them). */
  private logCleanCopies(p: readonly number[]): void {
    for (let i = 0; i < p.length; i += RUN_STRIDE) {
      const off = p[i]!, len = p[i + 1]!, seg = p[i + 2]!, segOff = p[i + 3]!, gen = p[i + 4]!;
      let whole = 0, pieces = 0;
      this.index.lookup(off, len, (_o, l, e) => {
        pieces++;
        if (e !== null && e.flags === ExtentFlag.CLEAN && e.seg === seg && e.gen === gen && e.segOff === segOff) whole += l;
      });
      if (pieces === 1 && whole === len && this.rounds.room(1)) {
        this.rounds.push({ originOffset: off, length: len, flags: KEY_CLEAN, segment: seg, offset: segOff, generation: gen, dataCrc: p[i + 7]! });
      } else this.head.release(seg);
    }
  }
}
