// Data runs: the cache data of one batch of requests, gathered into one pwritev per contiguous
// run. Allocation is log-structured, so a batch is mostly one run, and a 4 KiB pwrite costs ~5x a
// page of a batched one here. A piece takes effect (its index entry and key, the sink's commit)
// only once its run is in the file, and the writes waiting on it are acknowledged after that; a
// run that fails to write changes nothing in the index, so the extents it would have replaced are
// still served (docs/cache-engine.md, ordering rule 2).

import type { BlockDevice } from './blockdev.js';
import { alignUp, crc32cOf, dataOffset } from './layout.js';
import type { Geometry } from './log.js';
import type { CacheShared } from './shared.js';
import type { Alloc, WriteFailed } from './allocator.js';
import { FAIL_DATA_WRITE } from './durability.js';
import { Errno } from '../util/errno.js';

export type Done = (errno: number) => void;

export const BLOCK = 4096;

/** 4 KiB blocks a byte count covers (how the counters count). */
export function blocks(len: number): number {
  return Math.ceil(len / BLOCK);
}

/** A gathered run goes out at this size (bounded by IOV_MAX buffers). */
const RUN_MAX_BYTES = 1 << 20;
const RUN_MAX_BUFS = 256;
/** What a run piece becomes once written: a dirty write, a read-miss fill, a write-through clean copy. */
export const PIECE_DIRTY = 0;
export const PIECE_FILL = 1;
export const PIECE_CLEAN = 2;
/**
 * Pieces are flat, RUN_STRIDE numbers each: origin offset, length, segment, segment offset,
 * generation, kind, placeholder token, data CRC.
 */
export const RUN_STRIDE = 8;

/** What becomes of the pieces of a run: `commit` once it is in the file, `abort` when it never got there. */
export interface RunSink {
  commit(p: readonly number[], i: number): void;
  abort(p: readonly number[], i: number): void;
  /** After the last piece of a written run took effect. */
  afterRun(): void;
  writeFailed: WriteFailed;
}

/** The 4 KiB cache block number of an offset in a segment (dataCrc's per-block CRC table). */
export function blockNo(g: Geometry, seg: number, segOff: number): number {
  return seg * (g.dataAreaSize / BLOCK) + segOff / BLOCK;
}

export class DataRuns {
  #bufs: Uint8Array[] = [];
  #at = 0;
  #end = 0;
  #pieces: number[] = [];
  /** Writes whose data sits in runs not yet written: acknowledged by flushAndAck. */
  #acks: Done[] = [];
  /** Write-through writes whose clean copy sits in the run: the origin has them, so they succeed either way. */
  #throughAcks: Done[] = [];
  /** A run failed since the last acknowledgement: the writes waiting on runs get EIO. */
  #failed = false;

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly blockCrc: Int32Array | null,
    private readonly sink: RunSink,
  ) {}

  /** Data gathered and not in the file yet. */
  get pending(): boolean { return this.#bufs.length > 0; }

  /** Acknowledges `done` once the gathered data is in the file (now, with nothing gathered). */
  ackAfterWrite(done: Done): void {
    if (this.#bufs.length > 0) this.#acks.push(done);
    else done(0);
  }

  /** A write-through write whose clean copy is gathered: succeeds once the run is out, whatever becomes of it. */
  ackThroughAfterWrite(done: Done): void {
    this.#throughAcks.push(done);
  }

  /** Data goes out padded to whole 4 KiB blocks, so every cache block has a well-defined CRC. */
  add(a: Alloc, piece: Uint8Array, originOff: number, kind: number, token: number): void {
    const at = dataOffset(a.seg, a.segOff, this.g.segmentSize);
    if (this.#bufs.length > 0 && (at !== this.#end || this.#bufs.length >= RUN_MAX_BUFS || this.#end - this.#at >= RUN_MAX_BYTES)) this.flush();
    if (this.#bufs.length === 0) this.#at = this.#end = at;
    const gen = this.sh.genOf(a.seg);
    const crc = this.g.dataCrc ? crc32cOf(piece) : 0;
    this.#pieces.push(originOff, piece.length, a.seg, a.segOff, gen, kind, token, crc);
    const whole = piece.length - (piece.length % BLOCK);
    if (whole > 0) this.#bufs.push(piece.subarray(0, whole));
    let tail: Uint8Array | null = null;
    if (whole < piece.length) {
      tail = Buffer.alloc(BLOCK);
      tail.set(piece.subarray(whole));
      this.#bufs.push(tail);
    }
    this.#end += alignUp(piece.length, BLOCK);
    const blockCrc = this.blockCrc;
    if (blockCrc) {
      const first = blockNo(this.g, a.seg, a.segOff);
      for (let b = 0; b * BLOCK < piece.length; b++) {
        const chunk = b * BLOCK + BLOCK <= piece.length ? piece.subarray(b * BLOCK, b * BLOCK + BLOCK) : tail!;
        Atomics.store(blockCrc, first + b, crc32cOf(chunk) | 0);
      }
    }
  }

  /** Writes the gathered run, then gives its pieces effect in order (or undoes their allocations). */
  flush(): void {
    const bufs = this.#bufs;
    if (bufs.length === 0) return;
    this.#bufs = [];
    const pieces = this.#pieces;
    this.#pieces = [];
    let written = false;
    if (this.sh.failed === 0) {
      try {
        if (bufs.length === 1) this.dev.pwrite(bufs[0]!, this.#at);
        else if (this.dev.pwritev) this.dev.pwritev(bufs, this.#at);
        else {
          let at = this.#at;
          for (const b of bufs) { this.dev.pwrite(b, at); at += b.length; }
        }
        written = true;
      } catch (err) {
        this.sink.writeFailed(err, 'data write', FAIL_DATA_WRITE);
      }
    }
    if (!written) {
      this.#failed = true;
      for (let i = 0; i < pieces.length; i += RUN_STRIDE) this.sink.abort(pieces, i);
      return;
    }
    for (let i = 0; i < pieces.length; i += RUN_STRIDE) this.sink.commit(pieces, i);
    this.sink.afterRun();
  }

  /** Writes out every gathered run and acknowledges the writes waiting on them. */
  flushAndAck(): void {
    this.flush();
    if (this.#throughAcks.length > 0) {
      const acks = this.#throughAcks;
      this.#throughAcks = [];
      for (const d of acks) d(0);
    }
    if (this.#acks.length === 0) {
      this.#failed = false;
      return;
    }
    const errno = this.#failed ? Errno.EIO : 0;
    this.#failed = false;
    const acks = this.#acks;
    this.#acks = [];
    for (const d of acks) d(errno);
  }
}
