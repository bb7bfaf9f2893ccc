// The disk behind the faulty NBD server (test/helpers/faulty-disk-server.ts): a durable image file
// and a volatile write cache in memory, the shape of a real drive with its write cache on.
//
// WRITE, TRIM and WRITE_ZEROES land in the volatile cache (4 KiB pages; reads see them at once).
// FLUSH copies the cache into the image, fdatasyncs it and empties the cache; a FUA write makes
// exactly its own range durable. The process dying (SIGKILL: a power cut) loses what is only in the
// cache; the image then holds what was flushed, plus, with `powerCut: 'tear'`, a seeded random
// subset of the 512-byte sectors of unflushed writes (a drive destaging its cache on its own,
// which is what makes a cut tear a 4 KiB write). `powerCut: 'keep'` has no volatile cache at all.
//
// Faults behave like Linux after a writeback error: a failing FLUSH (or FUA write) gets EIO and
// the volatile cache is dropped, so what was not on stable media is gone and a later FLUSH succeeds
// without it. A failing WRITE/TRIM/WRITE_ZEROES gets EIO and changes nothing; a failing READ gets
// EIO. Each fault is a percentage (100: always), drawn from one seeded generator.
//
// All I/O on the image is synchronous: the server is one thread and a request is executed
// whole, so a FLUSH covers every write that completed before it, on every connection.

import { closeSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';

export const PAGE = 4096;
export const SECTOR = 512;
const EIO = 5;

export type PowerCutMode = 'drop' | 'keep' | 'tear';
export const POWER_CUT_MODES: readonly PowerCutMode[] = ['drop', 'keep', 'tear'];

/** Percentages (0-100) and delays (ms) a test may change at any time. */
export interface Faults {
  readFailPct: number;
  writeFailPct: number;
  flushFailPct: number;
  readLatencyMs: number;
  /** Applies to WRITE, TRIM, WRITE_ZEROES and FLUSH. */
  writeLatencyMs: number;
}

export const NO_FAULTS: Readonly<Faults> = { readFailPct: 0, writeFailPct: 0, flushFailPct: 0, readLatencyMs: 0, writeLatencyMs: 0 };

export interface DiskCounters {
  reads: number;
  writes: number;
  trims: number;
  zeroes: number;
  flushes: number;
  fuaWrites: number;
  readsFailed: number;
  writesFailed: number;
  flushesFailed: number;
  bytesRead: number;
  bytesWritten: number;
  /** Bytes of pages written to the image by successful FLUSHes. */
  bytesFlushed: number;
  /** Bytes of volatile pages thrown away by failed FLUSHes and FUA writes. */
  bytesDropped: number;
  /** Sectors of unflushed writes put on the image by `tear` mode. */
  sectorsDestaged: number;
  /** Bytes of pages written to the image (without a sync) because the cache was full. */
  bytesEvicted: number;
}

function zeroCounters(): DiskCounters {
  return {
    reads: 0, writes: 0, trims: 0, zeroes: 0, flushes: 0, fuaWrites: 0, readsFailed: 0, writesFailed: 0, flushesFailed: 0,
    bytesRead: 0, bytesWritten: 0, bytesFlushed: 0, bytesDropped: 0, sectorsDestaged: 0, bytesEvicted: 0,
  };
}

/** mulberry32: small, fast, and the same sequence for the same seed. */
export class SeededRandom {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0;
  }
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** True with probability pct/100 (0 never draws, 100 always without drawing). */
  percent(pct: number): boolean {
    if (pct <= 0) return false;
    if (pct >= 100) return true;
    return this.next() * 100 < pct;
  }
}

const ZEROS = Buffer.alloc(1 << 20);
/** Like a drive, the cache has a size: past it the oldest pages go to the image unsynced. */
export const DEFAULT_CACHE_LIMIT = 256 << 20;

export class VolatileDisk {
  readonly size: number;
  readonly imagePath: string;
  readonly powerCut: PowerCutMode;
  readonly faults: Faults;
  readonly counters: DiskCounters = zeroCounters();
  readonly #fd: number;
  #random: SeededRandom;
  /** Page index -> its newest content; null is a page of zeros (TRIM, WRITE_ZEROES). */
  readonly #pages = new Map<number, Buffer | null>();
  readonly #cacheLimitPages: number;

  /** Opens `imagePath`, creating it sparse at `size` bytes if absent; an existing image must have that size. */
  constructor(imagePath: string, size: number, opts: { powerCut?: PowerCutMode; seed?: number; faults?: Partial<Faults>; cacheLimit?: number } = {}) {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0) throw new RangeError(`disk size ${size} must be a positive multiple of ${PAGE}`);
    this.size = size;
    this.imagePath = imagePath;
    this.powerCut = opts.powerCut ?? 'drop';
    this.faults = { ...NO_FAULTS, ...opts.faults };
    this.#random = new SeededRandom(opts.seed ?? 1);
    this.#cacheLimitPages = Math.max(1, Math.floor((opts.cacheLimit ?? DEFAULT_CACHE_LIMIT) / PAGE));
    const fd = openSync(imagePath, 'a+');
    closeSync(fd);
    this.#fd = openSync(imagePath, 'r+');
    const have = fstatSync(this.#fd).size;
    if (have === 0) ftruncateSync(this.#fd, size);
    else if (have !== size) {
      closeSync(this.#fd);
      throw new RangeError(`image ${imagePath} is ${have} bytes, not the ${size} asked for`);
    }
  }

  get volatileBytes(): number {
    return this.#pages.size * PAGE;
  }

  /** Restart the fault and tear draws from `seed` (runs stay reproducible from here on). */
  reseed(seed: number): void {
    this.#random = new SeededRandom(seed);
  }

  /** Reads [off, off+len) as a client would see it: the image overlaid with the volatile cache. */
  read(off: number, len: number): { errno: number; data?: Buffer } {
    this.counters.reads++;
    if (this.#random.percent(this.faults.readFailPct)) {
      this.counters.readsFailed++;
      return { errno: EIO };
    }
    const out = this.#overlay(off, len);
    this.counters.bytesRead += len;
    return { errno: 0, data: out };
  }

  write(off: number, data: Uint8Array, fua: boolean): number {
    this.counters.writes++;
    if (this.#random.percent(this.faults.writeFailPct)) {
      this.counters.writesFailed++;
      return EIO;
    }
    this.counters.bytesWritten += data.length;
    if (this.powerCut === 'keep') {
      this.#writeImage(data, off);
    } else {
      let done = 0;
      while (done < data.length) {
        const at = off + done;
        const p = Math.floor(at / PAGE);
        const inPage = at - p * PAGE;
        const n = Math.min(PAGE - inPage, data.length - done);
        const page = n === PAGE ? Buffer.allocUnsafe(PAGE) : this.#pageForUpdate(p);
        page.set(data.subarray(done, done + n), inPage);
        this.#pages.set(p, page);
        if (this.powerCut === 'tear') this.#destageSomeSectors(p, page, inPage, n);
        done += n;
      }
      this.#evictPastLimit();
    }
    return fua ? this.#makeDurable(off, data.length) : 0;
  }

  /** TRIM and WRITE_ZEROES alike: the range reads as zeros afterwards. */
  zero(off: number, len: number, fua: boolean, kind: 'trim' | 'zero'): number {
    if (kind === 'trim') this.counters.trims++;
    else this.counters.zeroes++;
    if (this.#random.percent(this.faults.writeFailPct)) {
      this.counters.writesFailed++;
      return EIO;
    }
    if (this.powerCut === 'keep') {
      for (let done = 0; done < len; done += ZEROS.length) this.#writeImage(ZEROS.subarray(0, Math.min(ZEROS.length, len - done)), off + done);
    } else {
      for (let at = off; at < off + len;) {
        const p = Math.floor(at / PAGE);
        const inPage = at - p * PAGE;
        const n = Math.min(PAGE - inPage, off + len - at);
        if (n === PAGE) this.#pages.set(p, null);
        else {
          const page = this.#pageForUpdate(p);
          page.fill(0, inPage, inPage + n);
          this.#pages.set(p, page);
        }
        at += n;
      }
      this.#evictPastLimit();
    }
    return fua ? this.#makeDurable(off, len) : 0;
  }

  /** Everything in the volatile cache to the image, then fdatasync; on a fault the cache is lost instead. */
  flush(): number {
    this.counters.flushes++;
    if (this.#random.percent(this.faults.flushFailPct)) return this.#failFlush();
    const order = [...this.#pages.keys()].sort((a, b) => a - b);
    for (let i = 0; i < order.length;) {
      // Runs of consecutive pages go out in one write each.
      let j = i + 1;
      while (j < order.length && order[j] === order[j - 1]! + 1) j++;
      const bufs = order.slice(i, j).map((p) => this.#pages.get(p) ?? ZEROS.subarray(0, PAGE));
      this.#writeImage(bufs.length === 1 ? bufs[0]! : Buffer.concat(bufs), order[i]! * PAGE);
      i = j;
    }
    fdatasyncSync(this.#fd);
    this.counters.bytesFlushed += order.length * PAGE;
    this.#pages.clear();
    return 0;
  }

  close(): void {
    closeSync(this.#fd);
  }

  /** A FUA request: only [off, off+len) goes to the image (a failing flush drops the cache, as FLUSH does). */
  #makeDurable(off: number, len: number): number {
    this.counters.fuaWrites++;
    if (this.#random.percent(this.faults.flushFailPct)) return this.#failFlush();
    if (this.powerCut !== 'keep') {
      this.#writeImage(this.#overlay(off, len), off);
      // Pages wholly inside the range now equal the image; the others keep bytes outside it.
      for (let p = Math.ceil(off / PAGE); (p + 1) * PAGE <= off + len; p++) this.#pages.delete(p);
    }
    fdatasyncSync(this.#fd);
    return 0;
  }

  /** The image overlaid with the volatile cache, without counting or faults. */
  #overlay(off: number, len: number): Buffer {
    const out = Buffer.allocUnsafe(len);
    this.#readImage(out, off);
    if (this.#pages.size > 0) {
      for (let p = Math.floor(off / PAGE); p * PAGE < off + len; p++) {
        const page = this.#pages.get(p);
        if (page === undefined) continue;
        const from = Math.max(off, p * PAGE);
        const to = Math.min(off + len, (p + 1) * PAGE);
        if (page === null) out.fill(0, from - off, to - off);
        else page.copy(out, from - off, from - p * PAGE, to - p * PAGE);
      }
    }
    return out;
  }

  #failFlush(): number {
    this.counters.flushesFailed++;
    this.counters.bytesDropped += this.#pages.size * PAGE;
    this.#pages.clear();
    return EIO;
  }

  #evictPastLimit(): void {
    for (const [p, page] of this.#pages) {
      if (this.#pages.size <= this.#cacheLimitPages) return;
      this.#writeImage(page ?? ZEROS.subarray(0, PAGE), p * PAGE);
      this.#pages.delete(p);
      this.counters.bytesEvicted += PAGE;
    }
  }

  /** The page's current content, in a buffer of its own that may be changed. */
  #pageForUpdate(p: number): Buffer {
    const cur = this.#pages.get(p);
    if (cur === null) return Buffer.alloc(PAGE);
    if (cur !== undefined) return cur;
    const page = Buffer.allocUnsafe(PAGE);
    this.#readImage(page, p * PAGE);
    return page;
  }

  /** `tear` mode: each sector the write touched reaches the image now with probability 1/2. */
  #destageSomeSectors(p: number, page: Buffer, inPage: number, n: number): void {
    for (let s = Math.floor(inPage / SECTOR); s * SECTOR < inPage + n; s++) {
      if (this.#random.next() < 0.5) continue;
      this.#writeImage(page.subarray(s * SECTOR, (s + 1) * SECTOR), p * PAGE + s * SECTOR);
      this.counters.sectorsDestaged++;
    }
  }

  #readImage(buf: Buffer, off: number): void {
    let done = 0;
    while (done < buf.length) {
      const n = readSync(this.#fd, buf, done, buf.length - done, off + done);
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  #writeImage(buf: Uint8Array, off: number): void {
    let done = 0;
    while (done < buf.length) done += writeSync(this.#fd, buf, done, buf.length - done, off + done);
  }
}
