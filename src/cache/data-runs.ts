// Data runs: the cache data of one batch of requests, gathered into one pwritev per contiguous
// run. Allocation is log-structured, so a batch is mostly one run, and a 4 KiB pwrite costs ~5x a
// page of a batched one here. A piece takes effect (its index entry and key, the sink's commit)
// only once its run is in the file, and the writes waiting on it are acknowledged after that; a
// run that fails to write changes nothing in the index, so the extents it would have replaced are
// still served (docs/cache-engine.md, ordering rule 2).
//
// With a device that writes asynchronously (O_DIRECT: every write waits for the device) runs go
// out without blocking the stripe, up to the queue depth, and wait in a FIFO. Completions come in
// any order, but a run takes effect only once it and every run before it completed: two runs over
// the same range must reach the index, and their keys the log, in the order they were issued.
// Keys enter the open kset only then, so a commit round never logs a key whose data is still in
// flight, and its first sync, started later, covers that data (ordering rule 1).

import type { BlockDevice } from './blockdev.js';
import { alignUp, crc32cOf, dataOffset } from './layout.js';
import type { Geometry } from './log.js';
import type { CacheShared } from './shared.js';
import type { Alloc, WriteFailed } from './allocator.js';
import { FAIL_DATA_WRITE } from './durability.js';
import { segmentLive } from './liveness.js';
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
  /** Acknowledgements went out from a completion (not from flushAndAck): FUA writes may now want a round. */
  afterAcks(): void;
  writeFailed: WriteFailed;
}

/** The 4 KiB cache block number of an offset in a segment (dataCrc's per-block CRC table). */
export function blockNo(g: Geometry, seg: number, segOff: number): number {
  return seg * (g.dataAreaSize / BLOCK) + segOff / BLOCK;
}

/** A run's write: in flight, completed, failed (err null: never tried, the device had failed). */
const WRITING = 0;
const WRITTEN = 1;
const FAILED = 2;

/** A run between its write and its effect, or an in-order step without data (`step`). */
interface Run {
  pieces: number[];
  acks: Done[];
  throughAcks: Done[];
  step: ((ok: boolean) => void) | null;
  state: number;
  err: unknown;
}

export class DataRuns {
  #bufs: Uint8Array[] = [];
  #at = 0;
  #end = 0;
  #pieces: number[] = [];
  /** Writes whose data sits in the gathered run: they move with it into the FIFO. */
  #acks: Done[] = [];
  /** Write-through writes whose clean copy sits in the run: the origin has them, so they succeed either way. */
  #throughAcks: Done[] = [];
  /** Runs written or in flight, not yet taken effect, in issue order. */
  #fifo: Run[] = [];
  /** Runs whose pieces took effect, their acknowledgements not yet sent. */
  #settled: Run[] = [];
  /** Asynchronous writes in flight (bounded by the queue depth; beyond it, runs are written synchronously). */
  #writing = 0;
  /** Keys the gathered and unsettled runs will push (the journal must have room for them). */
  #keys = 0;
  #settling = false;
  /** A run failed since the FIFO was last empty: the writes waiting on runs get EIO. */
  #failed = false;

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly blockCrc: Int32Array | null,
    private readonly sink: RunSink,
    private readonly depth = 32,
    /**
     * True when nothing else waits for this thread (the client keeps one or two requests out and
     * none is queued): a run then goes out synchronously, since an asynchronous one would add a
     * thread wake-up to the device's wait with nothing to overlap it with.
     */
    private readonly idle: () => boolean = () => false,
  ) {}

  /** Data gathered and not yet sent to the file. */
  get pending(): boolean { return this.#bufs.length > 0; }

  /** Asynchronous run writes in flight (their completions need the event loop). */
  get inFlight(): number { return this.#writing; }

  /** Runs issued that have not taken effect yet (in flight, or waiting behind one that is). */
  get unsettled(): number { return this.#fifo.length; }

  /** Keys still to come from gathered and unsettled runs (journal room is reserved for them). */
  get outstandingKeys(): number { return this.#keys; }

  /** Every allocation whose run has not taken effect yet (its key is not in any kset). */
  forEachUnsettled(cb: (seg: number, segOff: number) => void): void {
    for (const r of this.#fifo) for (let i = 0; i < r.pieces.length; i += RUN_STRIDE) cb(r.pieces[i + 2]!, r.pieces[i + 3]!);
    for (let i = 0; i < this.#pieces.length; i += RUN_STRIDE) cb(this.#pieces[i + 2]!, this.#pieces[i + 3]!);
  }

  /** Acknowledges `done` once the gathered data, and every run before it, took effect (now, with nothing outstanding). */
  ackAfterWrite(done: Done): void {
    if (this.#bufs.length > 0) this.#acks.push(done);
    else if (this.#fifo.length > 0) this.#fifo[this.#fifo.length - 1]!.acks.push(done);
    else done(0);
  }

  /** A write-through write whose clean copy is gathered: succeeds once the run is out, whatever becomes of it. */
  ackThroughAfterWrite(done: Done): void {
    this.#throughAcks.push(done);
  }

  /**
   * Runs `step` once every run issued so far took effect (now, when none waits): a TRIM/ZERO key
   * or a write-through decision must see the writes before it in the index. `ok` is false when
   * the device failed meanwhile; writes acknowledged after the step then get EIO.
   */
  inOrder(step: (ok: boolean) => void, keys: number): void {
    this.flush();
    if (this.#fifo.length === 0) { step(this.sh.failed === 0); return; }
    this.#keys += keys;
    this.#fifo.push({ pieces: [], acks: [], throughAcks: [], step, state: WRITTEN, err: null });
  }

  /** Data goes out padded to whole 4 KiB blocks, so every cache block has a well-defined CRC. */
  add(a: Alloc, piece: Uint8Array, originOff: number, kind: number, token: number): void {
    const at = dataOffset(a.seg, a.segOff, this.g.segmentSize);
    if (this.#bufs.length > 0 && (at !== this.#end || this.#bufs.length >= RUN_MAX_BUFS || this.#end - this.#at >= RUN_MAX_BYTES)) this.flush();
    if (this.#bufs.length === 0) this.#at = this.#end = at;
    const gen = this.sh.genOf(a.seg);
    const crc = this.g.dataCrc ? crc32cOf(piece) : 0;
    this.#pieces.push(originOff, piece.length, a.seg, a.segOff, gen, kind, token, crc);
    this.#keys++;
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

  /**
   * Sends the gathered run to the file: asynchronously when the device can and the queue depth
   * allows, else synchronously. Its pieces take effect in issue order once it is written (or give
   * back their allocations when it failed).
   */
  flush(): void {
    const bufs = this.#bufs;
    if (bufs.length === 0) return;
    const run: Run = { pieces: this.#pieces, acks: this.#acks, throughAcks: this.#throughAcks, step: null, state: FAILED, err: null };
    this.#bufs = [];
    this.#pieces = [];
    this.#acks = [];
    this.#throughAcks = [];
    this.#fifo.push(run);
    if (this.sh.failed === 0) {
      if (this.dev.writevAsync !== undefined && this.#writing < this.depth && (this.#writing > 0 || !this.idle())) {
        run.state = WRITING;
        this.#writing++;
        this.dev.writevAsync(bufs, this.#at, (err) => {
          this.#writing--;
          run.state = err ? FAILED : WRITTEN;
          run.err = err;
          this.settle();
          if (this.deliver()) this.sink.afterAcks();
        });
        return;
      }
      try {
        if (bufs.length === 1) this.dev.pwrite(bufs[0]!, this.#at);
        else if (this.dev.pwritev) this.dev.pwritev(bufs, this.#at);
        else {
          let at = this.#at;
          for (const b of bufs) { this.dev.pwrite(b, at); at += b.length; }
        }
        run.state = WRITTEN;
      } catch (err) {
        run.err = err;
      }
    }
    this.settle();
  }

  /** Gives effect to the runs at the head of the FIFO that are written, in order. */
  private settle(): void {
    // A piece's effect may issue more (a step that starts a write-through): the loop takes those.
    if (this.#settling) return;
    this.#settling = true;
    try {
      while (this.#fifo.length > 0 && this.#fifo[0]!.state !== WRITING) {
        const run = this.#fifo.shift()!;
        const p = run.pieces;
        this.#keys -= p.length / RUN_STRIDE + (run.step ? 1 : 0);
        if (run.state === FAILED && run.err !== null) this.sink.writeFailed(run.err, 'data write', FAIL_DATA_WRITE);
        // A device that failed while the run was in flight: what it wrote since the last sync may
        // never reach the media, so nothing new takes effect (as a run issued after it would).
        const ok = run.state === WRITTEN && this.sh.failed === 0;
        if (!ok) this.#failed = true;
        if (run.step) run.step(ok);
        else if (ok) {
          // The pieces hold references on their segments, so GC cannot have freed one; should a
          // generation have moved on anyway, the bytes are no longer the piece's to index.
          const gens = this.sh.gen;
          for (let i = 0; i < p.length; i += RUN_STRIDE) {
            if (segmentLive(gens, p[i + 2]!, p[i + 4]!)) this.sink.commit(p, i);
            else this.sink.abort(p, i);
          }
          this.sink.afterRun();
        } else for (let i = 0; i < p.length; i += RUN_STRIDE) this.sink.abort(p, i);
        if (run.acks.length > 0 || run.throughAcks.length > 0) this.#settled.push(run);
      }
    } finally {
      this.#settling = false;
    }
  }

  /** Acknowledges the writes of settled runs; true when there were any. */
  private deliver(): boolean {
    if (this.#settled.length === 0) {
      if (this.#fifo.length === 0 && this.#bufs.length === 0) this.#failed = false;
      return false;
    }
    const runs = this.#settled;
    this.#settled = [];
    const errno = this.#failed ? Errno.EIO : 0;
    if (this.#fifo.length === 0 && this.#bufs.length === 0) this.#failed = false;
    for (const r of runs) {
      for (const d of r.throughAcks) d(0);
      for (const d of r.acks) d(errno);
    }
    return true;
  }

  /** Sends every gathered run and acknowledges the writes of every run that took effect. */
  flushAndAck(): void {
    this.flush();
    this.deliver();
  }
}
