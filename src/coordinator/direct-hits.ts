// Read hits on a cache device opened O_DIRECT, issued by the coordinator itself through its own
// AsyncIo (io_uring where it runs): with direct I/O every hit waits for the device, and handing
// each one to a stripe and back adds two cross-thread wake-ups to that wait, with only the
// client's queue depth in flight end to end. The checks are hit-reader.ts's (one live extent
// covering the request, the generation checked again on completion); a request that does not
// qualify, or whose read fails or raced GC, goes to its stripe as before (the stripe reports
// device errors and fails the cache; this path never decides that).

import { dataOffset } from '../cache/layout.js';
import type { Geometry } from '../cache/log.js';
import { FAULT_READS, type CacheShared } from '../cache/shared.js';
import { ExtentIndex } from '../cache/index/extent-index.js';
import { segmentLive } from '../cache/liveness.js';
import { blocks } from '../cache/data-runs.js';
import { SUBTREE_SIZE } from '../ring/layout.js';
import type { AsyncIo } from '../io/async-io.js';
import { MEM_ALIGN, alignedBuffer } from '../io/aligned.js';
import { stripeOf } from './router.js';
import { MAX_HIT_BYTES, onePiece, servable } from './hit-reader.js';

const SECTOR = 512;
/** Reads in flight at once: beyond it requests take the stripes' path (their own depth). */
const MAX_IN_FLIGHT = 64;
const CHUNK_BYTES = 1 << 20;

export interface DirectHitsDeps {
  io: AsyncIo;
  /** The cache file opened O_RDONLY | O_DIRECT. */
  fd: number;
  sh: CacheShared;
  geometry: Geometry;
  indexes: readonly ExtentIndex[];
  count: (stripe: number, blocks: number) => void;
}

export class DirectHits {
  readonly #d: DirectHitsDeps;
  readonly #indexes: ExtentIndex[];
  #inFlight = 0;
  #off = false;
  /** Aligned windows are cut from one chunk (dropped once every reply cut from it has gone). */
  #chunk: Buffer = Buffer.alloc(0);
  #used = 0;

  constructor(d: DirectHitsDeps) {
    this.#d = d;
    this.#indexes = d.indexes.map((ix) => ExtentIndex.attach(ix.sabs, 'reader'));
  }

  get inFlight(): number { return this.#inFlight; }

  /**
   * Starts the read of [off, off+len) when one live cached extent covers it at sector alignment;
   * `done` gets the data, or null when the stripe must serve the request after all. False (and
   * `done` never called) when it does not qualify.
   */
  read(off: number, len: number, done: (data: Buffer | null) => void): boolean {
    const d = this.#d;
    if (this.#off || this.#inFlight >= MAX_IN_FLIGHT || len > MAX_HIT_BYTES || len % SECTOR !== 0 || d.sh.failed !== 0 || (d.sh.testFaults & FAULT_READS) !== 0) return false;
    if (Math.floor(off / SUBTREE_SIZE) !== Math.floor((off + len - 1) / SUBTREE_SIZE)) return false;
    const stripe = stripeOf(off, this.#indexes.length);
    const e = onePiece(this.#indexes[stripe]!, off, len);
    if (e === null || !servable(e, len, d.sh)) return false;
    const at = dataOffset(e.seg, e.segOff, d.geometry.segmentSize);
    if (at % SECTOR !== 0) return false;
    const buf = this.#window(len);
    const seg = e.seg, gen = e.gen;
    this.#inFlight++;
    d.io.read(d.fd, buf, at, (err, n) => {
      this.#inFlight--;
      if (err || n !== len || this.#off || !segmentLive(d.sh.gen, seg, gen) || d.sh.failed !== 0) { done(null); return; }
      d.count(stripe, blocks(len));
      done(buf);
    });
    return true;
  }

  /** For good (detach, close): new reads go to the stripes; reads in flight answer null. */
  disable(): void {
    this.#off = true;
  }

  #window(len: number): Buffer {
    const need = Math.ceil(len / MEM_ALIGN) * MEM_ALIGN;
    if (this.#chunk.length - this.#used < need) {
      // Not zeroed: a window reaches the client only when its read filled all of it.
      this.#chunk = alignedBuffer(CHUNK_BYTES, false);
      this.#used = 0;
    }
    const w = this.#chunk.subarray(this.#used, this.#used + len);
    this.#used += need;
    return w;
  }
}
