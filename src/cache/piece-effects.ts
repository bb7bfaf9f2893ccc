// What a piece of a data run becomes once the run is in the file (ordering rules 2, 4 and 5 in
// docs/cache-engine.md): a dirty write enters the index and the key stream in one step; a fill
// replaces its placeholder and is logged only when that survived whole; a clean copy waits for
// the origin's flush before its key. A piece that never reached the file gives its space back.

import { KEY_CLEAN, KEY_DIRTY } from './kset.js';
import type { CacheShared } from './shared.js';
import { ExtentFlag } from './index/extent-index.js';
import type { ExtentIndex } from './index/extent-index.js';
import type { DataHead } from './allocator.js';
import type { CommitRounds } from './commit-rounds.js';
import { PIECE_CLEAN, PIECE_FILL, blocks } from './data-runs.js';
import type { RunSink } from './data-runs.js';
import type { LocalCounters } from './engine-counters.js';
import { insertSweeping, segmentLive } from './liveness.js';
import type { StripeReads } from './reads.js';
import type { OriginFirst } from './write-through.js';

export class PieceEffects implements Omit<RunSink, 'writeFailed' | 'afterAcks'> {
  constructor(
    private readonly sh: CacheShared,
    private readonly index: ExtentIndex,
    private readonly head: DataHead,
    private readonly rounds: CommitRounds,
    private readonly through: OriginFirst,
    private readonly reads: StripeReads,
    private readonly counters: LocalCounters,
  ) {}

  /**
   * dm-writecache's write hits: blocks of a write that were already cached, split by whether
   * the copy they replace is in a key not yet captured by a commit round (`uncommitted`: data
   * allocated since the last round took its ksets) or already committed.
   */
  private hitsUncommitted = 0;
  private hitsCommitted = 0;
  /** Fed by the index insert itself as it replaces older extents (no second walk of the index). */
  private readonly replacedCb = (len: number, flags: number, seg: number, segOff: number, gen: number): void => {
    if ((flags & (ExtentFlag.DIRTY | ExtentFlag.CLEAN)) === 0 || !segmentLive(this.sh.gen, seg, gen)) return;
    if (this.head.sinceCommit(seg, segOff)) this.hitsUncommitted += len;
    else this.hitsCommitted += len;
  };

  /** After a run: the write hits its pieces made. */
  afterRun(): void {
    if (this.hitsUncommitted > 0) this.counters.count('write_hits_uncommitted', blocks(this.hitsUncommitted));
    if (this.hitsCommitted > 0) this.counters.count('write_hits_committed', blocks(this.hitsCommitted));
    this.hitsUncommitted = 0;
    this.hitsCommitted = 0;
  }

  /** A piece's data is in the file: its index entry and its key, in one step. */
  commit(p: readonly number[], i: number): void {
    const off = p[i]!, len = p[i + 1]!, seg = p[i + 2]!, segOff = p[i + 3]!, gen = p[i + 4]!, kind = p[i + 5]!, token = p[i + 6]!, dataCrc = p[i + 7]!;
    if (kind === PIECE_FILL) {
      const filled = this.index.replacePlaceholder(token, { off, len, seg, segOff, gen, flags: ExtentFlag.CLEAN });
      if (filled === len && this.through.originMayLack) {
        // The origin may have served writes it has not flushed (this stripe wrote them through),
        // or, after a failed flush, writes it may have lost (its page cache still shows them):
        // logged like a write-through copy, once the origin has flushed (logCleanCopies), or never.
        this.through.holdClean(p, i);
        this.counters.count('fills', 1);
      } else if (filled === len) {
        this.rounds.push({ originOffset: off, length: len, flags: KEY_CLEAN, segment: seg, offset: segOff, generation: gen, dataCrc });
        this.counters.count('fills', 1);
      } else {
        // Part of it was overwritten meanwhile: serve the surviving clean pieces from memory only;
        // logging them would let replay put them after the newer write. The segment's generation
        // retires them when it is freed.
        this.head.release(seg);
      }
      return;
    }
    if (kind === PIECE_CLEAN) {
      // A write-through copy: logged once the origin has flushed the write (logCleanCopies).
      insertSweeping(this.index, this.sh.gen, { off, len, seg, segOff, gen, flags: ExtentFlag.CLEAN });
      this.through.holdClean(p, i);
      return;
    }
    insertSweeping(this.index, this.sh.gen, { off, len, seg, segOff, gen, flags: ExtentFlag.DIRTY }, this.replacedCb);
    this.rounds.push({ originOffset: off, length: len, flags: KEY_DIRTY, segment: seg, offset: segOff, generation: gen, dataCrc });
    this.counters.addDirty(len);
  }

  /** A piece's data never reached the file: give back its space; a fill's placeholder goes too. */
  abort(p: readonly number[], i: number): void {
    this.head.release(p[i + 2]!);
    if (p[i + 5] === PIECE_FILL) this.reads.dropPlaceholder(p[i + 6]!, p[i]!, p[i + 1]!);
  }
}
