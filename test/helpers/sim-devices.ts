// The devices of the crash simulator (sim-cache.ts), built to fail the way real ones do:
//  * the cache device loses power (a budget of writes and syncs, then everything fails), fails
//    syncs the way Linux does after a writeback error (what was not yet synced never reaches the
//    media, a later sync succeeds without it, and reads still show it until the page cache lets
//    go), fails reads and writes with EIO, and corrupts bits at rest;
//  * each engine ("thread") gets its own handle on it, with asynchronous syncs completed from a
//    deterministic queue, so a thread can die with a sync in flight;
//  * the origin can have a volatile write cache too, so one power cut hits both, and its flushes
//    can fail and drop what they should have written.

import { Rng, SimBlockDevice } from '../../src/cache/blockdev.js';
import type { BlockDevice } from '../../src/cache/blockdev.js';
import type { Origin, Done, Extent, ZeroFlags } from '../../src/origin/types.js';
import { SECTOR } from './sim-model.js';

export class CrashNow extends Error {}

function eio(what: string): Error {
  return Object.assign(new Error(`injected ${what} error`), { code: 'EIO' });
}

/** Probabilities of each fault per operation while a fault window is open. */
export interface DeviceFaults { syncFail: number; writeFail: number; readFail: number }
export const NO_FAULTS: DeviceFaults = { syncFail: 0, writeFail: 0, readFail: 0 };

export interface FaultCounts { syncFails: number; writeFails: number; readFails: number }

/** The cache device: a simulated disk with a volatile cache, a power budget and injected faults. */
export class FaultyDevice implements BlockDevice {
  faults: DeviceFaults = NO_FAULTS;
  readonly counts: FaultCounts = { syncFails: 0, writeFails: 0, readFails: 0 };
  constructor(readonly inner: SimBlockDevice, public budget: number, private readonly rng: Rng = new Rng(1)) {}
  get size(): number { return this.inner.size; }
  private spend(): void { if (this.budget-- <= 0) throw new CrashNow('simulated power cut'); }
  pread(buf: Uint8Array, off: number): void {
    if (this.budget <= 0) throw new CrashNow('simulated power cut');
    if (this.faults.readFail > 0 && this.rng.chance(this.faults.readFail)) { this.counts.readFails++; throw eio('cache read'); }
    this.inner.pread(buf, off);
  }
  pwrite(buf: Uint8Array, off: number): void {
    this.spend();
    if (this.faults.writeFail > 0 && this.rng.chance(this.faults.writeFail)) { this.counts.writeFails++; throw eio('cache write'); }
    this.inner.pwrite(buf, off);
  }
  sync(): void {
    this.spend();
    if (this.faults.syncFail > 0 && this.rng.chance(this.faults.syncFail)) {
      this.counts.syncFails++;
      this.inner.dropPending();
      throw eio('cache sync');
    }
    this.inner.sync();
  }
  close(): void {}
  get dead(): boolean { return this.budget <= 0; }
}

/**
 * One engine's own handle on the cache device (each stripe thread opens its own descriptor).
 * Its asynchronous syncs complete when the simulator runs its I/O queue; when the thread dies,
 * what it had in flight never calls back.
 */
/** Cache reads and data-run writes ThreadDevices answered later (asyncReads, asyncWrites), over the whole test process. */
export const simCounters = { lateReads: 0, lateWrites: 0, reorderedWrites: 0 };

export class ThreadDevice implements BlockDevice {
  dead = false;
  /** Cache reads answered later (asyncReads): the read itself happens then, after whatever ran between. */
  readAsync?: (buf: Uint8Array, off: number, cb: (err: Error | null) => void) => void;
  /**
   * Data-run writes answered later (asyncWrites): the write itself happens then, and a write
   * queued behind another may overtake it (as the kernel completes them in any order).
   */
  writevAsync?: (bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void) => void;
  constructor(readonly inner: FaultyDevice, private readonly io: (() => void)[], asyncReads = false, asyncWrites: Rng | null = null) {
    if (asyncWrites) {
      const rng = asyncWrites;
      const queued = new Set<() => void>();
      this.writevAsync = (bufs, off, cb) => {
        const job = (): void => {
          queued.delete(job);
          if (this.dead) return;
          simCounters.lateWrites++;
          let err: Error | null = null;
          try {
            let at = off;
            for (const b of bufs) { this.inner.pwrite(b, at); at += b.length; }
          } catch (e) { err = e as Error; }
          cb(err);
        };
        // Now and then ahead of this thread's writes still queued: completions out of issue order.
        let at = this.io.length;
        if (queued.size > 0 && rng.chance(0.3)) {
          const first = this.io.findIndex((j) => queued.has(j));
          if (first >= 0) { at = first; simCounters.reorderedWrites++; }
        }
        this.io.splice(at, 0, job);
        queued.add(job);
      };
    }
    if (asyncReads) {
      this.readAsync = (buf, off, cb) => {
        this.io.push(() => {
          if (this.dead) return;
          simCounters.lateReads++;
          let err: Error | null = null;
          try { this.inner.pread(buf, off); } catch (e) { err = e as Error; }
          cb(err);
        });
      };
    }
  }
  get size(): number { return this.inner.size; }
  pread(buf: Uint8Array, off: number): void { this.inner.pread(buf, off); }
  pwrite(buf: Uint8Array, off: number): void { this.inner.pwrite(buf, off); }
  sync(): void { this.inner.sync(); }
  syncAsync(cb: (err: Error | null) => void): void {
    this.io.push(() => {
      if (this.dead) return;
      let err: Error | null = null;
      try { this.inner.sync(); } catch (e) { err = e as Error; }
      cb(err);
    });
  }
  close(): void {}
}

interface PendingOriginWrite { off: number; data: Buffer }

/**
 * The origin, in memory. Durable by default; with `volatile`, writes wait in a write cache until
 * a flush, and a power cut (`crash`) keeps each unflushed write whole, torn at sectors, or not at
 * all. `flushFail`: the probability that a flush fails and drops the write cache; reads still see
 * it (a page cache), and, as Linux reports a writeback error to every descriptor (errseq), the
 * next flush through every other handle (`handle()`: one per stripe, one for writeback) fails too.
 */
export class SimOrigin implements Origin {
  readonly description = 'memory';
  readonly readOnly = false;
  readonly synchronous = true;
  readonly canFastZero = true;
  /** What reads return. */
  data: Buffer;
  /** What survives a power cut for sure. */
  private durable: Buffer;
  private pending: PendingOriginWrite[] = [];
  volatile: boolean;
  flushFail = 0;
  writes = 0;
  /** Operations a `later` handle answered on a later microtask. */
  lateAnswers = 0;
  flushFails = 0;
  /** Called after every write, trim and zero: the crash property checks the origin mid-writeback here. */
  afterWrite: (() => void) | null = null;

  constructor(readonly size: number, opts: { volatile?: boolean; image?: Buffer; rng?: Rng } = {}) {
    this.data = opts.image ? Buffer.from(opts.image) : Buffer.alloc(size);
    this.durable = Buffer.from(this.data);
    this.volatile = opts.volatile ?? false;
    this.rng = opts.rng ?? new Rng(7);
  }
  private readonly rng: Rng;

  private put(off: number, src: Uint8Array | null, len: number): void {
    const buf = src ? Buffer.from(src) : Buffer.alloc(len);
    buf.copy(this.data, off);
    if (this.volatile) this.pending.push({ off, data: buf });
    else buf.copy(this.durable, off);
    this.writes++;
    this.afterWrite?.();
  }

  read(off: number, dst: Uint8Array, cb: Done): void { this.data.copy(dst, 0, off, off + dst.length); cb(0); }
  write(off: number, src: Uint8Array, fua: boolean, cb: Done): void {
    if (fua && this.volatile) this.forceUnitAccess(off, Buffer.from(src));
    else this.put(off, src, src.length);
    cb(0);
  }

  /** A FUA write is on the media at once, and older cached writes of its range are superseded. */
  private forceUnitAccess(off: number, data: Buffer): void {
    const end = off + data.length;
    const kept: PendingOriginWrite[] = [];
    for (const w of this.pending) {
      const wEnd = w.off + w.data.length;
      if (wEnd <= off || w.off >= end) { kept.push(w); continue; }
      if (w.off < off) kept.push({ off: w.off, data: w.data.subarray(0, off - w.off) });
      if (wEnd > end) kept.push({ off: end, data: w.data.subarray(end - w.off) });
    }
    this.pending = kept;
    data.copy(this.data, off);
    data.copy(this.durable, off);
    this.writes++;
    this.afterWrite?.();
  }
  flush(cb: Done): void {
    if (this.volatile && this.flushFail > 0 && this.rng.chance(this.flushFail)) {
      // The write cache is gone: a later flush succeeds without it.
      this.flushFails++;
      this.pending = [];
      cb(5);
      return;
    }
    for (const w of this.pending) w.data.copy(this.durable, w.off);
    this.pending = [];
    cb(0);
  }
  trim(off: number, len: number, fua: boolean, cb: Done): void {
    if (fua && this.volatile) this.forceUnitAccess(off, Buffer.alloc(len));
    else this.put(off, null, len);
    cb(0);
  }
  zero(off: number, len: number, f: ZeroFlags, cb: Done): void {
    if (f.fua && this.volatile) this.forceUnitAccess(off, Buffer.alloc(len));
    else this.put(off, null, len);
    cb(0);
  }
  cache(_off: number, _len: number, cb: Done): void { cb(0); }
  blockStatus(_off: number, len: number, _max: number, cb: (errno: number, e: Extent[]) => void): void { cb(0, [{ length: len, flags: 0 }]); }
  async close(): Promise<void> {}

  /** What a power cut would certainly keep (the final check reads this, not what reads show). */
  get media(): Buffer { return this.durable; }

  /**
   * A descriptor of its own on this origin: flush failures anywhere reach its next flush.
   * `later`: asynchronous, as the file origin is: each operation takes effect and answers on a
   * later microtask, in issue order, so the engine meets completions that arrive after other work
   * (and a thread that died, `alive` false, never hears back, though its writes may land).
   */
  handle(opts: { later?: boolean; alive?: () => boolean } = {}): Origin {
    const o = this as SimOrigin;
    let seen = o.flushFails;
    const run = (fn: () => void): void => { if (opts.later) { o.lateAnswers++; queueMicrotask(fn); } else fn(); };
    const answer = <A extends unknown[]>(cb: (...a: A) => void) => (...a: A): void => { if (!opts.alive || opts.alive()) cb(...a); };
    return {
      size: o.size, description: o.description, readOnly: false, synchronous: !opts.later, canFastZero: true,
      read: (off, dst, cb) => run(() => o.read(off, dst, answer(cb))),
      write: (off, src, fua, cb) => run(() => o.write(off, src, fua, answer(cb))),
      trim: (off, len, fua, cb) => run(() => o.trim(off, len, fua, answer(cb))),
      zero: (off, len, f, cb) => run(() => o.zero(off, len, f, answer(cb))),
      cache: (off, len, cb) => o.cache(off, len, cb),
      blockStatus: (off, len, max, cb) => run(() => o.blockStatus(off, len, max, answer(cb))),
      flush: (cb) => run(() => o.flush((e) => {
        const missed = o.flushFails !== seen;
        seen = o.flushFails;
        answer(cb)(e !== 0 ? e : missed ? 5 : 0);
      })),
      close: async () => {},
    };
  }

  /** The origin after a power cut: what was flushed, then each later write kept, dropped or torn. */
  crash(rng: Rng): SimOrigin {
    const img = Buffer.from(this.durable);
    for (const w of this.pending) {
      const r = rng.below(3);
      if (r === 0) continue;
      if (r === 1) { w.data.copy(img, w.off); continue; }
      for (let s = 0; s < w.data.length; s += SECTOR) if (rng.chance(0.5)) w.data.copy(img, w.off + s, s, Math.min(s + SECTOR, w.data.length));
    }
    const o = new SimOrigin(this.size, { volatile: this.volatile, image: img, rng: this.rng });
    o.flushFail = this.flushFail;
    return o;
  }
}

/** A durable, synchronous origin in memory: the base for tests' own origins with special failures. */
export class MemOrigin implements Origin {
  readonly data: Buffer;
  readonly description = 'memory';
  readonly readOnly = false;
  readonly synchronous = true;
  readonly canFastZero = true;
  constructor(readonly size: number) { this.data = Buffer.alloc(size); }
  read(off: number, dst: Uint8Array, cb: Done): void { this.data.copy(dst, 0, off, off + dst.length); cb(0); }
  write(off: number, src: Uint8Array, _fua: boolean, cb: Done): void { this.data.set(src, off); cb(0); }
  flush(cb: Done): void { cb(0); }
  trim(off: number, len: number, _fua: boolean, cb: Done): void { this.data.fill(0, off, off + len); cb(0); }
  zero(off: number, len: number, _f: ZeroFlags, cb: Done): void { this.data.fill(0, off, off + len); cb(0); }
  cache(_off: number, _len: number, cb: Done): void { cb(0); }
  blockStatus(_off: number, len: number, _max: number, cb: (errno: number, e: Extent[]) => void): void { cb(0, [{ length: len, flags: 0 }]); }
  async close(): Promise<void> {}
}
