// Reads and fills of one stripe: hits served by pread (the segment generation checked before and
// after, so a segment GC reused meanwhile is never served), TRIM/ZERO ranges as zeros, gaps read
// from the origin and promoted as clean data where their placeholder survived (ordering rule 4 in
// docs/cache-engine.md), and BLOCK_STATUS from the same index walk.

import type { BlockDevice } from './blockdev.js';
import { KSET_MAX_KEYS, crc32cOf, dataOffset } from './layout.js';
import type { Geometry } from './log.js';
import { ERR_CACHE_IO } from './shared.js';
import type { CacheShared } from './shared.js';
import type { KeyJournal } from './journal.js';
import { ExtentFlag, IndexFullError } from './index/extent-index.js';
import type { Extent, ExtentIndex } from './index/extent-index.js';
import type { Origin, Extent as StatusExtent } from '../origin/types.js';
import { BlockState } from '../nbd/constants.js';
import { Errno } from '../util/errno.js';
import { MissTable } from './admission.js';
import type { DataHead } from './allocator.js';
import { BLOCK, PIECE_FILL, blockNo, blocks } from './data-runs.js';
import type { DataRuns, Done } from './data-runs.js';
import { segmentLive, staleData } from './liveness.js';
import { modeRow } from './mode-table.js';
import type { EngineCounter, EngineLog } from './engine-counters.js';
import { copyBytes } from '../util/copy-bytes.js';

/** What reads need of the rest of the engine. */
export interface ReadContext {
  /** True once the cache device has failed (and the stripe has reacted to it). */
  noticeFailure(): boolean;
  /** Writes out the gathered data runs and acknowledges their writes. */
  flushData(): void;
  count(name: EngineCounter, n: number): void;
  requestError(err: unknown, what: string): void;
  cacheReadError(err: unknown, what: string): void;
  /** A write of this range is on its way to the origin first: a fill now might read the old data. */
  writingThrough(off: number, len: number): boolean;
}

export interface ReadDeps {
  dev: BlockDevice;
  sh: CacheShared;
  index: ExtentIndex;
  g: Geometry;
  origin: Origin;
  blockCrc: Int32Array | null;
  journal: KeyJournal;
  head: DataHead;
  runs: DataRuns;
  log: EngineLog;
  /** Read hits in flight at once through dev.readAsync (cacheQueueDepth); beyond it, reads block. */
  queueDepth?: number;
}

export class StripeReads {
  private readonly dev: BlockDevice;
  private readonly sh: CacheShared;
  private readonly index: ExtentIndex;
  private readonly g: Geometry;
  private readonly origin: Origin;
  private readonly blockCrc: Int32Array | null;
  private readonly journal: KeyJournal;
  private readonly head: DataHead;
  private readonly runs: DataRuns;
  private readonly log: EngineLog;
  private readonly misses = new MissTable();
  private readonly blockBuf = Buffer.alloc(BLOCK);
  private readonly scratch: Extent[] = [];
  private readonly depth: number;
  /** Read hits on the cache device in flight (dev.readAsync). */
  hitsInFlight = 0;

  constructor(d: ReadDeps, private readonly ctx: ReadContext) {
    this.dev = d.dev;
    this.sh = d.sh;
    this.index = d.index;
    this.g = d.g;
    this.origin = d.origin;
    this.blockCrc = d.blockCrc;
    this.journal = d.journal;
    this.head = d.head;
    this.runs = d.runs;
    this.log = d.log;
    this.depth = d.queueDepth ?? 32;
  }

  /** `noFill`: the coordinator saw a long sequential run; serve it without promoting it. */
  read(off: number, buf: Uint8Array, noFill: boolean, done: Done): void {
    if (!modeRow(this.sh.mode).promote) noFill = true;
    // A hit may be in a gathered run that is not in the file yet.
    if (this.runs.pending) this.ctx.flushData();
    // A failed device takes no new data, and what it holds that is not durable is poisoned.
    if (this.ctx.noticeFailure()) noFill = true;
    const len = buf.length;
    if (this.blockCrc === null && this.findWholeHit(off, len)) {
      if (this.dev.readAsync !== undefined && this.hitsInFlight < this.depth) {
        this.readHitAsync(off, buf, noFill, done);
        return;
      }
      if (this.readWholeHit(buf)) {
        this.ctx.count('read_blocks', blocks(len));
        this.ctx.count('read_hits', blocks(len));
        done(0);
        return;
      }
    }
    const pieces = this.collect(off, len);
    const gen = this.sh.gen;
    const gaps: { o: number; l: number; fill: boolean }[] = [];
    let errno = 0;
    let hitBytes = 0;
    for (const p of pieces) {
      const into = buf.subarray(p.off - off, p.off - off + p.len);
      if (p.flags === -1 || (p.flags & ExtentFlag.EMPTY)) {
        gaps.push({ o: p.off, l: p.len, fill: p.flags === -1 && !noFill });
        continue;
      }
      if (p.flags & ExtentFlag.POISON) {
        errno = Errno.EIO;
        continue;
      }
      if (p.flags & (ExtentFlag.TRIM | ExtentFlag.ZERO)) {
        into.fill(0);
        hitBytes += p.len;
        continue;
      }
      if (!segmentLive(gen, p.seg, p.gen)) {
        this.index.remove(p.off, p.len);
        gaps.push({ o: p.off, l: p.len, fill: !noFill });
        continue;
      }
      try {
        if (!this.readCached(p, into)) {
          errno = Errno.EIO;
          continue;
        }
      } catch (err) {
        this.ctx.cacheReadError(err, 'read');
        errno = Errno.EIO;
        continue;
      }
      // GC may have freed and reused the segment while we read: then the bytes are not ours.
      if (!segmentLive(gen, p.seg, p.gen)) {
        gaps.push({ o: p.off, l: p.len, fill: false });
        continue;
      }
      hitBytes += p.len;
    }
    this.ctx.count('read_blocks', blocks(len));
    this.ctx.count('read_hits', hitBytes === len ? blocks(len) : Math.floor(hitBytes / BLOCK));
    if (gaps.length === 0 || errno !== 0) { done(errno); return; }
    let remaining = gaps.length;
    let firstErr = 0;
    const pieceDone = (e: number): void => {
      if (e !== 0 && firstErr === 0) firstErr = e;
      if (--remaining === 0) done(firstErr);
    };
    for (const gap of gaps) this.readMiss(gap.o, buf.subarray(gap.o - off, gap.o - off + gap.l), gap.fill, pieceDone);
  }

  // The common read, one cached extent covering the whole request, without allocating: a
  // reusable callback records the first piece, and the data goes straight into the buffer.
  private hitPieces = 0;
  private readonly hit: Extent = { off: 0, len: 0, seg: 0, segOff: 0, gen: 0, flags: 0 };
  private readonly hitCb = (o: number, l: number, e: Extent | null): void => {
    if (this.hitPieces++ > 0 || e === null) return;
    const h = this.hit;
    h.off = o; h.len = l; h.seg = e.seg; h.segOff = e.segOff; h.gen = e.gen; h.flags = e.flags;
  };

  /** True when one live data extent covers the whole range (then in this.hit). */
  private findWholeHit(off: number, len: number): boolean {
    this.hitPieces = 0;
    this.hit.flags = 0;
    this.index.lookup(off, len, this.hitCb);
    const h = this.hit;
    if (this.hitPieces !== 1 || (h.flags & (ExtentFlag.DIRTY | ExtentFlag.CLEAN)) === 0 || h.len !== len) return false;
    return segmentLive(this.sh.gen, h.seg, h.gen);
  }

  /**
   * The hit found by findWholeHit, read without blocking the stripe: the hits and misses queued
   * behind it go on while the device works. A segment GC reused meanwhile is looked up again.
   */
  private readHitAsync(off: number, buf: Uint8Array, noFill: boolean, done: Done): void {
    const h = this.hit;
    const seg = h.seg;
    const segGen = h.gen;
    const gen = this.sh.gen;
    this.hitsInFlight++;
    this.dev.readAsync!(buf, dataOffset(seg, h.segOff, this.g.segmentSize), (err) => {
      this.hitsInFlight--;
      if (err) {
        this.ctx.cacheReadError(err, 'read');
        this.ctx.count('read_blocks', blocks(buf.length));
        done(Errno.EIO);
        return;
      }
      if (!segmentLive(gen, seg, segGen)) { this.read(off, buf, noFill, done); return; }
      this.ctx.count('read_blocks', blocks(buf.length));
      this.ctx.count('read_hits', blocks(buf.length));
      done(0);
    });
  }

  /** Reads the hit found by findWholeHit; true when it was served. */
  private readWholeHit(buf: Uint8Array): boolean {
    const h = this.hit;
    const gen = this.sh.gen;
    try {
      this.dev.pread(buf, dataOffset(h.seg, h.segOff, this.g.segmentSize));
    } catch {
      return false; // the general path reports it
    }
    // GC may have freed and reused the segment while we read.
    return segmentLive(gen, h.seg, h.gen);
  }

  /** Copies of the lookup pieces (flags -1 for a gap): the callback's extent object is reused. */
  private collect(off: number, len: number): Extent[] {
    const out = this.scratch;
    out.length = 0;
    this.index.lookup(off, len, (o, l, e) => {
      out.push(e === null ? { off: o, len: l, seg: 0, segOff: 0, gen: 0, flags: -1 } : { off: o, len: l, seg: e.seg, segOff: e.segOff, gen: e.gen, flags: e.flags });
    });
    return out.slice();
  }

  /** Reads a hit; with dataCrc, verifies every 4 KiB block it touches. False on a CRC mismatch. */
  private readCached(p: Extent, into: Uint8Array): boolean {
    const at = dataOffset(p.seg, p.segOff, this.g.segmentSize);
    const crc = this.blockCrc;
    if (!crc) {
      this.dev.pread(into, at);
      return true;
    }
    const blk = this.blockBuf;
    let done = 0;
    while (done < p.len) {
      const segOff = p.segOff + done;
      const blockStart = segOff - (segOff % BLOCK);
      this.dev.pread(blk, dataOffset(p.seg, blockStart, this.g.segmentSize));
      if ((crc32cOf(blk) | 0) !== Atomics.load(crc, blockNo(this.g, p.seg, blockStart))) {
        this.ctx.count('crc_errors', 1);
        this.sh.setError(ERR_CACHE_IO);
        this.log.error({ segment: p.seg, offset: blockStart, origin: p.off + done }, 'data CRC mismatch on a cache read: returning EIO');
        return false;
      }
      const from = segOff - blockStart;
      const n = Math.min(BLOCK - from, p.len - done);
      copyBytes(into, done, blk.subarray(from, from + n));
      done += n;
    }
    return true;
  }

  /** Origin reads of misses in flight (their fills still touch the cache when they return). */
  missesInFlight = 0;

  private readMiss(off: number, into: Uint8Array, fill: boolean, done: Done): void {
    if (fill && this.ctx.writingThrough(off, into.length)) fill = false;
    if (fill) {
      const need = this.sh.promoteHits;
      if (need > 1 && !this.misses.admit(off, need)) {
        fill = false;
        this.ctx.count('fills_deferred', 1);
      }
    }
    this.ctx.count('origin_reads', 1);
    this.ctx.count('origin_read_bytes', into.length);
    if (!fill) {
      this.origin.read(off, into, done);
      return;
    }
    let token: number;
    try {
      token = this.index.insertPlaceholder(off, into.length);
    } catch (err) {
      if (!(err instanceof IndexFullError)) throw err;
      this.origin.read(off, into, done);
      return;
    }
    this.missesInFlight++;
    this.origin.read(off, into, (errno) => {
      this.missesInFlight--;
      if (errno === 0) {
        try {
          this.fill(token, off, into);
        } catch (err) {
          this.ctx.requestError(err, 'fill');
          this.dropPlaceholder(token, off, into.length);
        }
      } else this.dropPlaceholder(token, off, into.length);
      done(errno);
    });
  }

  /** Removes what is left of a miss's placeholder (its fill will not happen). */
  dropPlaceholder(token: number, off: number, len: number): void {
    const mine: [number, number][] = [];
    this.index.lookup(off, len, (o, l, e) => {
      if (e !== null && (e.flags & ExtentFlag.EMPTY) && e.seg === token) mine.push([o, l]);
    });
    for (const [o, l] of mine) this.index.remove(o, l);
  }

  /** Promotes a miss into the cache as clean data, where its placeholder survived. */
  private fill(token: number, off: number, data: Uint8Array): void {
    // The read buffer goes back to its owner with the reply, before the gathered run is written.
    const copy = Buffer.allocUnsafe(data.length);
    copyBytes(copy, 0, data);
    let pos = 0;
    // Fills never wait, and never take the last free segments from writes (nor journal room).
    const room = this.sh.failed === 0 && this.journal.room(data.length / this.g.dataAreaSize + 2 + KSET_MAX_KEYS + this.runs.outstandingKeys);
    while (room && pos < data.length) {
      const a = this.head.alloc(data.length - pos, true);
      if (a === null) break;
      // Takes effect (placeholder replaced, key logged) once the run is written: commitPiece.
      this.runs.add(a, copy.subarray(pos, pos + a.len), off + pos, PIECE_FILL, token);
      pos += a.len;
    }
    if (pos < data.length) {
      this.ctx.count('fills_skipped', 1);
      this.dropPlaceholder(token, off + pos, data.length - pos);
    }
  }

  /** A prefix of the range (the protocol allows short replies): cached pieces first, else the origin's answer for the first gap. */
  blockStatus(off: number, len: number, maxExtents: number, cb: (errno: number, extents: StatusExtent[]) => void): void {
    this.runs.flush();
    const pieces = this.collect(off, len);
    const first = pieces[0];
    const gen = this.sh.gen;
    const isGap = (p: Extent): boolean => p.flags === -1 || (p.flags & ExtentFlag.EMPTY) !== 0 ||
      staleData(gen, p);
    if (!first || isGap(first)) {
      let gapLen = 0;
      for (const p of pieces) { if (!isGap(p)) break; gapLen += p.len; }
      this.origin.blockStatus(off, gapLen || len, maxExtents, cb);
      return;
    }
    const out: StatusExtent[] = [];
    for (const p of pieces) {
      if (isGap(p) || out.length >= maxExtents) break;
      // Writeback zeroes with holes allowed (the key does not keep NO_HOLE), so both read as holes.
      const flags = p.flags & (ExtentFlag.TRIM | ExtentFlag.ZERO) ? BlockState.HOLE | BlockState.ZERO : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += p.len;
      else out.push({ length: p.len, flags });
    }
    cb(0, out);
  }
}
