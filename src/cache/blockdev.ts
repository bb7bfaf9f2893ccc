// The cache device as the engine sees it: synchronous positional I/O (it runs inside stripe
// worker threads) plus a barrier. The simulated device models a disk with a volatile write cache
// so crash tests can ask "what could be on the media if power failed now?".

import { formatBytes } from '../util/size.js';
import fs from 'node:fs';
import { PcachedError } from '../util/errors.js';
import { blockDeviceSize } from '../util/block-device.js';
import { native } from '../native/index.js';
import { DirectSync, SECTOR as DIRECT_SECTOR, readFullyAsync } from '../io/direct-sync.js';
import { alignedBuffer, canAlign } from '../io/aligned.js';
import type { AsyncIo } from '../io/async-io.js';

const ENXIO = 6;

export interface BlockDevice {
  readonly size: number;
  /** Fills `buf` completely from `off`; reading past the end is an error, never a short read. */
  pread(buf: Uint8Array, off: number): void;
  pwrite(buf: Uint8Array, off: number): void;
  /** Gathered write of consecutive buffers starting at `off` (optional: callers fall back to pwrite). */
  pwritev?(bufs: readonly Uint8Array[], off: number): void;
  /**
   * Fills `buf` from `off` without blocking the calling thread where it can (optional: callers
   * fall back to pread). The callback may run before this returns (the page cache held it all).
   */
  readAsync?(buf: Uint8Array, off: number, cb: (err: Error | null) => void): void;
  /**
   * Gathered write of consecutive buffers from `off` without blocking the calling thread
   * (optional: callers fall back to pwritev). The buffers must stay untouched until the callback,
   * which always runs later, never before this returns. A completed write counts for `sync` as a
   * completed pwrite does.
   */
  writevAsync?(bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void): void;
  /** Barrier: every completed pwrite is durable when this returns. */
  sync(): void;
  /** The same barrier off-thread: every pwrite completed before the call is durable at the callback. */
  syncAsync?(cb: (err: Error | null) => void): void;
  close(): void;
}

function checkRange(dev: BlockDevice, len: number, off: number, what: string): void {
  if (!Number.isSafeInteger(off) || off < 0 || off + len > dev.size) {
    throw new PcachedError('ERR_CACHE_FILE', `${what} of ${len} bytes at ${off} is outside the ${dev.size}-byte cache device`);
  }
}

export class FileBlockDevice implements BlockDevice {
  private readonly direct: DirectSync | null;

  private constructor(private fd: number, readonly size: number, readonly path: string, readonly readOnly: boolean, readonly isFile = true, direct = false) {
    this.direct = direct ? new DirectSync(fd, path) : null;
  }

  /** True when opened O_DIRECT: I/O bypasses the page cache, through aligned bounce buffers. */
  get isDirect(): boolean { return this.direct !== null; }

  private io: AsyncIo | null = null;

  /**
   * Turns on readAsync, through `io` (one per thread: it delivers on this thread's loop). Without
   * it readAsync is absent and reads are synchronous, as in the writeback and GC threads.
   */
  useAsyncIo(io: AsyncIo): void {
    this.io = io;
    this.readAsync = this.readAsyncImpl;
    // A buffered write only copies into the page cache: a thread hand-off would cost more than it
    // saves. With O_DIRECT every write waits for the device, so it goes asynchronous.
    if (this.direct !== null && !this.readOnly) this.writevAsync = this.writevAsyncImpl;
  }

  readAsync?: (buf: Uint8Array, off: number, cb: (err: Error | null) => void) => void;
  writevAsync?: (bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void) => void;

  private writevAsyncImpl(bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void): void {
    let total = 0;
    for (const b of bufs) total += b.length;
    checkRange(this, total, off, 'write');
    this.direct!.writevAsync(this.io!, bufs, off, cb);
  }

  private readAsyncImpl(buf: Uint8Array, off: number, cb: (err: Error | null) => void): void {
    checkRange(this, buf.length, off, 'read');
    const io = this.io!;
    if (this.direct !== null) { this.direct.readAsync(io, buf, off, cb); return; }
    // A page-cache hit costs a syscall here; only a read that would wait for the device pays a
    // thread hand-off (or an io_uring round).
    if (native?.preadNowait !== undefined && native.preadNowait(this.fd, buf, off) === buf.length) { cb(null); return; }
    readFullyAsync(io, this.fd, buf, off, this.path, cb);
  }

  /**
   * Reserves the whole file on its filesystem (a no-op for block devices). A cache must not meet
   * ENOSPC in the middle of a write, and writing into a sparse file costs a block allocation per
   * page: measured here, 16 µs per 4 KiB sparse against 1 µs preallocated. Returns null when done,
   * or why it could not be done (no native addon): the cache then runs sparse.
   */
  preallocate(): string | null {
    if (!this.isFile || this.readOnly) return null;
    if (!native) return 'native addon unavailable: the cache file stays sparse (slower writes, no space reservation)';
    const r = native.fallocate(this.fd, 0, 0, this.size);
    if (r === -28) throw new PcachedError('ERR_CACHE_FILE', `not enough space on the filesystem of ${this.path} to hold the ${formatBytes(this.size)} (${this.size} bytes) cache: free space there, or give a smaller cacheSize (--cache-size) and delete the file so it is created again`);
    if (r < 0) return `fallocate failed (errno ${-r}): the cache file stays sparse`;
    // ext4 measured here: the first write into freshly fallocated blocks costs 10 µs per 4 KiB
    // until the allocation is committed, then 0.6 µs; one fsync now makes the whole first pass cheap.
    fs.fsyncSync(this.fd);
    return null;
  }

  /**
   * Lets the page cache go of the file's clean pages, so the next reads come from the device. After
   * a failed fsync Linux marks the pages it could not write clean and keeps their new contents: a
   * restarted daemon would replay ksets that never reached the device, and a later FLUSH would
   * "succeed" over them. (Dirty pages are not dropped: they are still going to the device.) False
   * when it cannot (no native addon; a block device or O_DIRECT later makes this moot).
   */
  dropPageCache(): boolean {
    if (!native) return false;
    return native.fadvise(this.fd, 0, 0, native.POSIX_FADV_DONTNEED) === 0;
  }

  /**
   * Ranges of [off, off+len) that the filesystem has never written: holes and, on ext4 and XFS,
   * fallocated extents not yet written (they read as zeros). null when it cannot tell (a block
   * device, no native addon, or lseek failed).
   */
  unwrittenRanges(off: number, len: number): [number, number][] | null {
    if (!this.isFile || !native) return null;
    const end = Math.min(off + len, this.size);
    const out: [number, number][] = [];
    for (let pos = off; pos < end;) {
      const hole = native.seekHole(this.fd, pos);
      if (hole < 0) return null;
      if (hole >= end) break;
      let data = native.seekData(this.fd, hole);
      if (data === -ENXIO) data = end;
      else if (data < 0) return null;
      out.push([hole, Math.min(data, end)]);
      pos = data;
    }
    return out;
  }

  /**
   * Opens an existing file or block device; with `createSize`, creates (or extends) a sparse
   * file; with `readOnly`, opens O_RDONLY and refuses every write (inspection).
   */
  static open(path: string, opts: { createSize?: number; readOnly?: boolean; direct?: boolean } = {}): FileBlockDevice {
    let fd: number;
    if (opts.direct && !canAlign()) throw new PcachedError('ERR_CACHE_FILE', `cannot open cache file ${path} with direct I/O: it needs the native addon for aligned buffers: set cacheDirectIo to off or auto`);
    try {
      const flags = (opts.readOnly ? fs.constants.O_RDONLY
        : opts.createSize === undefined ? fs.constants.O_RDWR : fs.constants.O_RDWR | fs.constants.O_CREAT) |
        (opts.direct ? fs.constants.O_DIRECT : 0);
      fd = fs.openSync(path, flags, 0o600);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (opts.direct && e.code === 'EINVAL') throw new PcachedError('ERR_CACHE_FILE', `cannot open cache file ${path} with direct I/O: its file system does not support O_DIRECT: set cacheDirectIo to off or auto`, { cause: err });
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
      throw new PcachedError('ERR_CACHE_FILE', `cannot open cache file ${path}: ${why}`, { cause: err });
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new PcachedError('ERR_CACHE_FILE', `cache file ${path} is not a regular file or block device`);
      }
      let size = st.isBlockDevice() ? blockDeviceSize(fd, st.rdev) : st.size;
      if (opts.createSize !== undefined && !opts.readOnly && st.isFile() && size < opts.createSize) {
        fs.ftruncateSync(fd, opts.createSize);
        size = opts.createSize;
      }
      if (opts.direct) probeDirect(fd, path, size);
      return new FileBlockDevice(fd, size, path, opts.readOnly === true, st.isFile(), opts.direct === true);
    } catch (err) {
      fs.closeSync(fd);
      throw err instanceof PcachedError ? err : new PcachedError('ERR_CACHE_FILE', `cannot size cache device ${path}`, { cause: err });
    }
  }

  pread(buf: Uint8Array, off: number): void {
    checkRange(this, buf.length, off, 'read');
    if (this.direct) { this.direct.pread(buf, off); return; }
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(this.fd, buf, done, buf.length - done, off + done);
      if (n === 0) throw new PcachedError('ERR_CACHE_FILE', `short read at ${off + done} of ${this.path}`);
      done += n;
    }
  }

  pwrite(buf: Uint8Array, off: number): void {
    if (this.readOnly) throw new PcachedError('ERR_CACHE_FILE', `${this.path} is open read-only`);
    checkRange(this, buf.length, off, 'write');
    if (this.direct) { this.direct.pwrite(buf, off); return; }
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, off + done);
  }

  pwritev(bufs: readonly Uint8Array[], off: number): void {
    if (this.readOnly) throw new PcachedError('ERR_CACHE_FILE', `${this.path} is open read-only`);
    let total = 0;
    for (const b of bufs) total += b.length;
    checkRange(this, total, off, 'write');
    if (this.direct) { this.direct.pwritev(bufs, off); return; }
    let done = fs.writevSync(this.fd, bufs as Uint8Array[], off);
    // A short gathered write is finished piece by piece.
    if (done < total) {
      let skip = done;
      for (const b of bufs) {
        if (skip >= b.length) { skip -= b.length; continue; }
        this.pwrite(b.subarray(skip), off + done);
        done += b.length - skip;
        skip = 0;
      }
    }
  }

  sync(): void {
    if (this.readOnly) throw new PcachedError('ERR_CACHE_FILE', `${this.path} is open read-only`);
    fs.fdatasyncSync(this.fd);
  }

  syncAsync(cb: (err: Error | null) => void): void {
    if (this.readOnly) { cb(new PcachedError('ERR_CACHE_FILE', `${this.path} is open read-only`)); return; }
    fs.fdatasync(this.fd, cb);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * One sector-sized direct read: a file system or device that refuses 512-byte direct I/O (4 KiB
 * logical sectors, some FUSE file systems) says so now, with EINVAL, not in the middle of a write.
 */
function probeDirect(fd: number, path: string, size: number): void {
  if (size < DIRECT_SECTOR) return;
  try {
    fs.readSync(fd, alignedBuffer(DIRECT_SECTOR), 0, DIRECT_SECTOR, 0);
  } catch (err) {
    throw new PcachedError('ERR_CACHE_FILE', `cache file ${path} does not take ${DIRECT_SECTOR}-byte direct I/O (${(err as NodeJS.ErrnoException).code ?? String(err)}): set cacheDirectIo to off`, { cause: err });
  }
}

/** Deterministic 32-bit generator (mulberry32): crash tests must reproduce from a printed seed. */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, n). */
  below(n: number): number { return Math.floor((this.u32() / 0x1_0000_0000) * n); }
  chance(p: number): boolean { return this.u32() / 0x1_0000_0000 < p; }
}

export const SECTOR = 512;

interface PendingWrite { off: number; data: Buffer }

export interface CrashOptions {
  /** Probability that an unsynced write survives whole (default 0.5). */
  keep?: number;
  /** Probability that an unsynced write survives torn: a random subset of its sectors (default 0.25). */
  torn?: number;
  /** Probability that an unsynced write that survives (whole or torn) comes out with one bit flipped. */
  corrupt?: number;
}

/**
 * In-memory device with a volatile write cache. Reads see every write; `crash` builds the image a
 * power failure could leave: all writes before the last completed sync, then, in issue order, each
 * later write kept, dropped, or torn at 512-byte device sector boundaries.
 */
export class SimBlockDevice implements BlockDevice {
  readonly size: number;
  private current: Buffer;
  private durable: Buffer;
  private pending: PendingWrite[] = [];
  writes = 0;
  syncs = 0;
  closed = false;

  constructor(sizeOrImage: number | Buffer) {
    this.current = typeof sizeOrImage === 'number' ? Buffer.alloc(sizeOrImage) : Buffer.from(sizeOrImage);
    this.durable = Buffer.from(this.current);
    this.size = this.current.length;
  }

  pread(buf: Uint8Array, off: number): void {
    checkRange(this, buf.length, off, 'read');
    this.current.copy(buf, 0, off, off + buf.length);
  }

  pwrite(buf: Uint8Array, off: number): void {
    checkRange(this, buf.length, off, 'write');
    const data = Buffer.from(buf);
    data.copy(this.current, off);
    this.pending.push({ off, data });
    this.writes++;
    // A dropped write overwritten since is not the page cache's to forget any more.
    if (this.dropped.length > 0) this.dropped = this.dropped.filter((w) => w.off + w.data.length <= off || off + data.length <= w.off);
  }

  sync(): void {
    for (const w of this.pending) w.data.copy(this.durable, w.off);
    this.pending = [];
    this.syncs++;
  }

  close(): void { this.closed = true; }

  /**
   * A sync that failed, the way Linux handles a writeback error: the writes since the last sync
   * never reach the media (a later sync succeeds without them), but reads still see them, as the
   * page cache does until the pages are evicted (`evictDropped`).
   */
  dropPending(): void {
    this.dropped.push(...this.pending);
    this.pending = [];
  }

  /** The page cache lets go of dropped writes: reads of those ranges show the media again. */
  evictDropped(): number {
    const n = this.dropped.length;
    for (const w of this.dropped) this.durable.copy(this.current, w.off, w.off, w.off + w.data.length);
    this.dropped = [];
    return n;
  }

  private dropped: PendingWrite[] = [];

  /** Writes issued since the last sync (the ones a crash may lose or tear). */
  get unsynced(): number { return this.pending.length; }

  /** The full image as reads currently see it (a copy). */
  image(): Buffer { return Buffer.from(this.current); }

  crash(rng: Rng, opts: CrashOptions = {}): SimBlockDevice {
    const keep = opts.keep ?? 0.5;
    const torn = opts.torn ?? 0.25;
    const corrupt = opts.corrupt ?? 0;
    const img = Buffer.from(this.durable);
    for (const w of this.pending) {
      const r = rng.u32() / 0x1_0000_0000;
      if (r >= keep + torn) continue;
      let data = w.data;
      if (corrupt > 0 && rng.chance(corrupt)) {
        data = Buffer.from(w.data);
        data[rng.below(data.length)]! ^= 1 << rng.below(8);
        this.corrupted++;
      }
      if (r < keep) { data.copy(img, w.off); continue; }
      // Sectors are device-aligned: a write starting mid-sector tears at the sector boundary.
      const end = w.off + data.length;
      for (let s = Math.floor(w.off / SECTOR) * SECTOR; s < end; s += SECTOR) {
        if (!rng.chance(0.5)) continue;
        const from = Math.max(s, w.off);
        const to = Math.min(s + SECTOR, end);
        data.copy(img, from, from - w.off, to - w.off);
      }
    }
    return new SimBlockDevice(img);
  }

  /** Unsynced writes that came out of a crash with a flipped bit (CrashOptions.corrupt). */
  corrupted = 0;

}
