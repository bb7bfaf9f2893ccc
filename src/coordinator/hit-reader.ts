// Read hits the page cache holds, served on the coordinator's own thread: the request never
// crosses to a stripe. The index is shared memory that foreign readers may copy under its
// seqlocks (src/cache/index/extent-index.ts tryLookup), so the coordinator looks the range up,
// and when one live DIRTY or CLEAN extent covers all of it, reads it with preadv2 RWF_NOWAIT: the
// page cache answers in a few microseconds or says it cannot, and the request then takes the
// stripe's path (which reads asynchronously) as before. Measured on this machine a stripe
// hand-off costs a cross-thread wake-up each way on top of the same read (docs/performance.md).
//
// What makes it safe is what makes the stripe's own hits safe: an extent enters the index only
// once its data is in the file and before its write is acknowledged (ordering rule 2), so any
// read that follows an acknowledged write finds it; the segment generation is checked before and
// after the read, so bytes of a segment GC freed and reused meanwhile are never served. It is off
// where that is not enough: direct I/O (nothing is in the page cache, and a synchronous device
// read would stall every connection), dataCrc (blocks are verified by the stripe), a failed cache
// device (poisoned extents), and while a respawned stripe rebuilds its index. In passthrough mode
// a range the index holds nothing of is read from a buffered file origin the same way.

import { blocks } from '../cache/data-runs.js';
import { dataOffset } from '../cache/layout.js';
import type { Geometry } from '../cache/log.js';
import { FAULT_READS, MODE_PASSTHROUGH, type CacheShared } from '../cache/shared.js';
import { ExtentFlag, ExtentIndex, type Extent } from '../cache/index/extent-index.js';
import { segmentLive } from '../cache/liveness.js';
import { SUBTREE_SIZE } from '../ring/layout.js';
import { stripeOf } from './router.js';

/** Larger reads go to the stripes: a long copy here would hold up every other connection. */
export const MAX_HIT_BYTES = 128 * 1024;
const CHUNK_BYTES = 1 << 20;

export interface HitReaderDeps {
  fd: number;
  preadNowait: (fd: number, view: Uint8Array, offset: number) => number;
  sh: CacheShared;
  geometry: Geometry;
  /** Every stripe's index (the coordinator's own copies of the shared memory). */
  indexes: readonly ExtentIndex[];
  /**
   * A buffered file origin's read-only descriptor, for reads in passthrough mode of ranges the
   * cache holds nothing of (null: an NBD or direct-I/O origin, whose reads stay with the stripes).
   */
  originFd: number | null;
  /** Counts a served read on the stripe that owns the range: its blocks, as hits or as origin reads. */
  count: (stripe: number, blocks: number, hit: boolean, bytes: number) => void;
}

export class HitReader {
  readonly #d: HitReaderDeps;
  readonly #indexes: ExtentIndex[];
  /** Hits served here, and requests looked at, since start (status and the bench read them). */
  served = 0;
  declined = 0;
  #chunk: Buffer = Buffer.alloc(0);
  #used = 0;

  constructor(d: HitReaderDeps) {
    this.#d = d;
    this.#indexes = d.indexes.map((ix) => ExtentIndex.attach(ix.sabs, 'reader'));
  }

  /**
   * The whole reply to a READ of [off, off+len) with `header` bytes free in front for its header,
   * when read() can serve it; null when the stripe must. Replies are carved from a shared chunk
   * (a Buffer per 4 KiB reply would be a fresh allocation each, beyond Node's pool limit); the
   * chunk is dropped once every reply cut from it has left the socket.
   */
  reply(off: number, len: number, header: number): Buffer | null {
    const need = (header + len + 7) & ~7;
    if (this.#chunk.length - this.#used < need) {
      if (need > CHUNK_BYTES / 4) return this.#own(off, len, header);
      this.#chunk = Buffer.allocUnsafeSlow(CHUNK_BYTES);
      this.#used = 0;
    }
    const buf = this.#chunk.subarray(this.#used, this.#used + header + len);
    if (!this.read(off, len, buf.subarray(header))) return null;
    this.#used += need;
    return buf;
  }

  #own(off: number, len: number, header: number): Buffer | null {
    const buf = Buffer.allocUnsafe(header + len);
    return this.read(off, len, buf.subarray(header)) ? buf : null;
  }

  /**
   * Reads [off, off+len) into `dst` when the page cache holds one live cached extent covering it;
   * false (dst untouched or partly written, never replied) when the stripe must serve it.
   */
  read(off: number, len: number, dst: Uint8Array): boolean {
    const d = this.#d;
    // Injected cache read errors (PCACHED_TEST_HOOKS) live in the stripes' device: theirs to answer.
    if (this.#off || len > MAX_HIT_BYTES || d.sh.failed !== 0 || (d.sh.testFaults & FAULT_READS) !== 0 || Math.floor(off / SUBTREE_SIZE) !== Math.floor((off + len - 1) / SUBTREE_SIZE)) return this.#decline();
    const stripe = stripeOf(off, this.#indexes.length);
    const e = onePiece(this.#indexes[stripe]!, off, len);
    if (e === null) return this.#decline();
    if (e.flags === -1 && e.len === len && d.originFd !== null && d.sh.mode === MODE_PASSTHROUGH) return this.#readOrigin(stripe, off, len, dst);
    if (!servable(e, len, d.sh)) return this.#decline();
    const gens = d.sh.gen;
    const n = d.preadNowait(d.fd, dst, dataOffset(e.seg, e.segOff, d.geometry.segmentSize));
    // GC may have freed and reused the segment while we read; a device failure poisons what it held.
    if (n !== len || !segmentLive(gens, e.seg, e.gen) || d.sh.failed !== 0) return this.#decline();
    d.count(stripe, blocks(len), true, len);
    this.served++;
    return true;
  }

  /**
   * Passthrough mode, nothing of the range cached: the origin file's page cache answers, as the
   * stripe's miss would (it promotes nothing in this mode). A write acknowledged before this read
   * was written to the origin first, so its data is there; a mode switch during the read declines.
   */
  #readOrigin(stripe: number, off: number, len: number, dst: Uint8Array): boolean {
    const d = this.#d;
    const n = d.preadNowait(d.originFd!, dst, off);
    if (n !== len || d.sh.mode !== MODE_PASSTHROUGH || d.sh.failed !== 0) return this.#decline();
    d.count(stripe, blocks(len), false, len);
    this.served++;
    return true;
  }

  /** For good (the cache is being detached): every read goes to the stripes. */
  disable(): void {
    this.#off = true;
  }

  #off = false;

  #decline(): false {
    this.declined++;
    return false;
  }
}

/** The one piece (extent or gap, flags -1) [off, off+len) is, or null: several, or the subtree busy. */
export function onePiece(index: ExtentIndex, off: number, len: number): Extent | null {
  const pieces = index.tryLookup(off, len);
  return pieces !== null && pieces.length === 1 ? pieces[0]! : null;
}

/** A live DIRTY or CLEAN extent covering all `len` bytes, whose cached data may be served. */
export function servable(e: Extent, len: number, sh: CacheShared): boolean {
  return (e.flags & (ExtentFlag.DIRTY | ExtentFlag.CLEAN)) !== 0 && (e.flags & (ExtentFlag.POISON | ExtentFlag.EMPTY)) === 0 && e.len === len && segmentLive(sh.gen, e.seg, e.gen);
}
