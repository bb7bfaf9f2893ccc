// A local file or block device as the origin. It runs inside a stripe worker thread (or the
// writeback worker) and issues its reads, writes and syncs asynchronously through libuv's thread
// pool, up to `queueDepth` at once: a slow origin read never holds up the cache hits queued
// behind it in the stripe. OrderedIoQueue (io-queue.ts) keeps what ordering can be observed
// (overlapping writes land in issue order; a FLUSH waits for the writes issued before it), and
// SyncGroup (sync-group.ts) runs one fdatasync at a time with group commit. A read the page
// cache holds whole is answered at once (preadv2 RWF_NOWAIT through the addon) when nothing
// admitted overlaps it: it cannot block, and the hand-off to the pool and back costs more. The pool is
// per process and sized for the stripes by the supervisor (UV_THREADPOOL_SIZE, see
// src/daemon/threadpool.ts).
//
// Hole punching, range zeroing, SEEK_DATA/SEEK_HOLE and the block-device ioctls come from the
// optional addon (src/native). They are synchronous calls in this thread, taken in their place
// in the queue. Without the addon TRIM is ignored, zeroing writes zeros and BLOCK_STATUS reports
// everything as data: slower and less informative, never wrong.

import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BlockState } from '../nbd/constants.js';
import { Errno, errnoFromError, errnoFromResult } from '../util/errno.js';
import { native as loadedNative, type NativeBinding } from '../native/index.js';
import { PcachedError } from '../util/errors.js';
import { blockDeviceSize } from '../util/block-device.js';
import { OrderedIoQueue, type QueuedIo } from './io-queue.js';
import { SyncGroup } from './sync-group.js';
import { openAsyncIo, type AsyncIo } from '../io/async-io.js';
import { isAligned, MEM_ALIGN } from '../io/aligned.js';
import type { Done, Extent, Origin, OriginSpec, ZeroFlags } from './types.js';

export type FileOriginSpec = Extract<OriginSpec, { kind: 'file' }>;

export interface FileOriginOptions {
  /** The addon to use; defaults to the loaded one. null forces the portable fallback (tests). */
  native?: NativeBinding | null;
}

/** Operations in flight when the spec does not say (the `originQueueDepth` default). */
export const DEFAULT_QUEUE_DEPTH = 32;

/** Largest single write of the zero-writing fallback. */
const ZERO_CHUNK = 1024 * 1024;
/**
 * Block-device ioctls and fallocate need logical-block-aligned ranges; 4 KiB is a multiple of
 * every logical block size in use, so aligning to it is always accepted.
 */
const DEVICE_ALIGN = 4096;
const SECTOR = 512;

const ENXIO = osConstants.errno.ENXIO;
const EOPNOTSUPP = osConstants.errno.EOPNOTSUPP;
const ENOTSUP = osConstants.errno.ENOTSUP;
const EINVAL = osConstants.errno.EINVAL;

/** Result of a cheap-zeroing attempt when the file system or device cannot do it. */
const UNSUPPORTED = -1;

let zeroChunk: Buffer | undefined;
/** One read-only buffer of zeros per thread, allocated on first use only. */
function zeros(): Buffer {
  return (zeroChunk ??= Buffer.alloc(ZERO_CHUNK));
}

function isUnsupported(negErrno: number): boolean {
  return negErrno === -EOPNOTSUPP || negErrno === -ENOTSUP;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Opens spec.path; throws PcachedError('ERR_ORIGIN') with the reason when it cannot be used. */
export function openFileOrigin(spec: FileOriginSpec, options: FileOriginOptions = {}): Origin {
  if (typeof spec?.path !== 'string' || spec.path === '') {
    throw new PcachedError('ERR_ORIGIN', 'file origin: path must be a non-empty string');
  }
  if (spec.direct === true) {
    // O_DIRECT needs aligned buffers and aligned ranges; callers hand us neither.
    throw new PcachedError('ERR_ORIGIN', `origin ${spec.path}: O_DIRECT is not supported for file origins`);
  }
  const depth = spec.queueDepth ?? DEFAULT_QUEUE_DEPTH;
  if (!Number.isSafeInteger(depth) || depth < 1) {
    throw new PcachedError('ERR_ORIGIN', `file origin: queueDepth must be a positive integer, got ${String(depth)}`);
  }
  const native = options.native === undefined ? loadedNative : options.native;
  const readOnly = spec.readOnly === true;
  let fd: number;
  try {
    fd = fs.openSync(spec.path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  } catch (err) {
    throw new PcachedError('ERR_ORIGIN', `cannot open origin ${spec.path}: ${message(err)}`, { cause: err });
  }
  let directFd: number | null = null;
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    directFd = spec.directWrites === true && !readOnly ? openDirect(spec.path, native) : null;
    if (st.isFile()) {
      return new FileOrigin(fd, spec.path, 'file', Number(st.size), readOnly, native, depth, directFd);
    }
    if (st.isBlockDevice()) {
      return new FileOrigin(fd, spec.path, 'device', deviceSize(fd, st.rdev, spec.path, native), readOnly, native, depth, directFd);
    }
    throw new PcachedError('ERR_ORIGIN', `origin ${spec.path} is neither a regular file nor a block device`);
  } catch (err) {
    if (directFd !== null) fs.closeSync(directFd);
    fs.closeSync(fd);
    if (err instanceof PcachedError) throw err;
    throw new PcachedError('ERR_ORIGIN', `cannot use origin ${spec.path}: ${message(err)}`, { cause: err });
  }
}

/**
 * The O_DIRECT descriptor for aligned writes, or null: no addon (no way to find aligned memory),
 * or a file system that refuses O_DIRECT (tmpfs: EINVAL). A slow local disk reached through a
 * file system that serializes buffered writes (FUSE takes the inode lock for each one, and
 * io_uring hashes buffered writes of one file onto one worker) then still takes writeback's runs
 * in parallel: measured on an nbdfuse file over a 2 ms disk, 4 KiB QD32 writes ran at 2,087/s
 * with O_DIRECT through io_uring against 371/s buffered from 32 threads.
 */
function openDirect(path: string, native: NativeBinding | null): number | null {
  if (native?.addressMod === undefined) return null;
  try {
    return fs.openSync(path, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  } catch {
    return null;
  }
}

function deviceSize(fd: number, rdev: bigint, path: string, native: NativeBinding | null): number {
  try {
    return blockDeviceSize(fd, rdev, native);
  } catch (err) {
    throw new PcachedError('ERR_ORIGIN', `origin ${path}: ${message(err)}`, { cause: err });
  }
}

const alignUp = (n: number): number => Math.ceil(n / DEVICE_ALIGN) * DEVICE_ALIGN;
const alignDown = (n: number): number => Math.floor(n / DEVICE_ALIGN) * DEVICE_ALIGN;

class FileOrigin implements Origin {
  readonly size: number;
  readonly description: string;
  readonly readOnly: boolean;
  readonly synchronous = false;

  /** Stays open until every operation started has finished (see close()). */
  readonly #fd: number;
  /** O_DIRECT descriptor of the same file for aligned writes (openDirect), or null. */
  readonly #directFd: number | null;
  directWrites = 0;
  get writeAlign(): number | undefined { return this.#directFd === null ? undefined : MEM_ALIGN; }
  /** Reads, writes and syncs: io_uring where it runs, libuv's pool otherwise (src/io/async-io.ts). */
  readonly #io: AsyncIo;
  get ioBackend(): AsyncIo['backend'] { return this.#io.backend; }
  #open = true;
  readonly #kind: 'file' | 'device';
  readonly #native: NativeBinding | null;
  readonly #queue: OrderedIoQueue;
  readonly #syncs: SyncGroup;
  // What the file system or device turned out to support; cleared on the first EOPNOTSUPP so
  // an unsupported call is not retried on every request.
  #punch: boolean;
  #zeroRange: boolean;
  #zeroOut: boolean;
  #discard: boolean;
  #nowaitReads = true;

  constructor(fd: number, path: string, kind: 'file' | 'device', size: number, readOnly: boolean, native: NativeBinding | null, depth: number, directFd: number | null = null) {
    this.#fd = fd;
    this.#directFd = directFd;
    this.#kind = kind;
    this.#native = native;
    this.#queue = new OrderedIoQueue(depth);
    this.#io = openAsyncIo();
    this.#syncs = new SyncGroup((cb) => this.#io.fdatasync(fd, cb));
    this.size = size;
    this.description = `file:${path}`;
    this.readOnly = readOnly;
    const writable = native !== null && !readOnly;
    this.#punch = writable && (kind === 'device' || this.#probePunch());
    this.#zeroRange = writable && kind === 'file';
    this.#zeroOut = writable && kind === 'device';
    this.#discard = writable && kind === 'device';
  }

  get canFastZero(): boolean {
    return this.#punch || this.#zeroRange || this.#zeroOut;
  }

  /** Operations started and not finished, and those waiting for room or for an earlier overlapping one. */
  get inflight(): number {
    return this.#queue.inflight + this.#queue.waiting;
  }

  read(off: number, dst: Uint8Array, cb: Done): void {
    const err = this.#check(off, dst.length, false);
    if (err) return cb(err);
    if (this.#readCached(off, dst)) return cb(Errno.OK);
    this.#submit(off, dst.length, 'read', cb, (done) => this.#readFully(off, dst, done));
  }

  write(off: number, src: Uint8Array, fua: boolean, cb: Done): void {
    const err = this.#check(off, src.length, true);
    if (err) return cb(err);
    // Ordering holds across the two descriptors: the queue starts an overlapping write only once
    // the one before it finished, and a direct write first writes back and drops the page-cache
    // pages of its range. fdatasync on either descriptor covers both (one inode).
    const fd = this.#directFd !== null && off % MEM_ALIGN === 0 && src.length % MEM_ALIGN === 0 && isAligned(src) ? this.#directFd : this.#fd;
    if (fd !== this.#fd) this.directWrites++;
    this.#submit(off, src.length, 'write', cb, (done) => this.#writeFully(off, src, 0, src.length, this.#thenSyncIf(fua, done), fd));
  }

  flush(cb: Done): void {
    if (!this.#open) return cb(Errno.ESHUTDOWN);
    if (this.readOnly) return cb(Errno.OK);
    this.#submit(0, 0, 'barrier', cb, (done) => this.#syncs.request(true, done));
  }

  trim(off: number, len: number, fua: boolean, cb: Done): void {
    const err = this.#check(off, len, true);
    if (err) return cb(err);
    this.#submit(off, len, 'write', cb, (done) => this.#thenSyncIf(fua, done)(this.#trim(off, len)));
  }

  zero(off: number, len: number, flags: ZeroFlags, cb: Done): void {
    const err = this.#check(off, len, true);
    if (err) return cb(err);
    this.#submit(off, len, 'write', cb, (done) => this.#zero(off, len, flags.noHole, flags.fastZero, this.#thenSyncIf(flags.fua, done)));
  }

  cache(off: number, len: number, cb: Done): void {
    // Node has no posix_fadvise, and the page cache fills on the read that follows anyway.
    cb(this.#check(off, len, false));
  }

  blockStatus(off: number, len: number, maxExtents: number, cb: (errno: number, extents: Extent[]) => void): void {
    let err = this.#check(off, len, false);
    if (!err && (len === 0 || !Number.isSafeInteger(maxExtents) || maxExtents < 1)) err = Errno.EINVAL;
    if (err) return cb(err, []);
    if (this.#kind === 'device' || this.#native === null) return cb(Errno.OK, [{ length: len, flags: 0 }]);
    const native = this.#native;
    let extents: Extent[] = [];
    // In the queue like a read: a write in flight over the range is in the answer, or not issued yet.
    this.#submit(off, len, 'read', (errno) => cb(errno, extents), (done) => {
      const result = this.#walkExtents(native, off, off + len, maxExtents);
      if (typeof result === 'number') return done(result);
      extents = result;
      done(Errno.OK);
    });
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    // Marked closed first (new requests get ESHUTDOWN), but the descriptor stays open until the
    // operations already started have finished: its number may be reused at once after close,
    // and a late pwrite must not land in whatever file gets it.
    this.#open = false;
    await this.#queue.close();
    // An io_uring instance waits here for whatever it still has in the kernel.
    this.#io.close();
    try {
      if (this.#directFd !== null) fs.closeSync(this.#directFd);
      fs.closeSync(this.#fd);
    } catch (err) {
      throw new PcachedError('ERR_ORIGIN', `closing origin ${this.description}: ${message(err)}`, { cause: err });
    }
  }

  #submit(off: number, len: number, kind: QueuedIo['kind'], cb: Done, run: (done: Done) => void): void {
    this.#queue.submit({
      off, len, kind,
      start: (finished) => run((errno) => {
        // The slot is free before the caller hears back, so what it issues next may start at once.
        finished();
        cb(errno);
      }),
      cancel: () => cb(Errno.ESHUTDOWN),
    });
  }

  /**
   * Serves a read from the page cache synchronously when all of it is there (preadv2 RWF_NOWAIT):
   * cheaper than a hand-off to the pool and back, and it cannot block. Only when nothing admitted
   * overlaps it, so it never overtakes a write. False: issue it asynchronously.
   */
  #readCached(off: number, dst: Uint8Array): boolean {
    const native = this.#native;
    if (!this.#nowaitReads || native?.preadNowait === undefined || dst.length === 0 || this.#queue.blocks(off, dst.length, 'read')) return false;
    const n = native.preadNowait(this.#fd, dst, off);
    if (n === dst.length) return true;
    // The file system cannot tell (FUSE, NFS...): ask no more. A short count or EAGAIN: not all cached.
    if (n === -EOPNOTSUPP || n === -ENOTSUP || n === -EINVAL) this.#nowaitReads = false;
    return false;
  }

  /** 0, or the errno for a request that must not reach the file. */
  #check(off: number, len: number, writing: boolean): number {
    if (!this.#open) return Errno.ESHUTDOWN;
    if (writing && this.readOnly) return Errno.EPERM;
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0) return Errno.EINVAL;
    // A write past the end would silently grow a regular file.
    if (off + len > this.size) return writing ? Errno.ENOSPC : Errno.EINVAL;
    return Errno.OK;
  }

  #readFully(off: number, dst: Uint8Array, done: Done): void {
    const step = (got: number): void => {
      if (got === dst.length) return done(Errno.OK);
      this.#io.read(this.#fd, got === 0 ? dst : dst.subarray(got), off + got, (err, n) => {
        if (err) return done(errnoFromError(err));
        if (n === 0) return done(Errno.EIO); // the file shrank under us
        step(got + n);
      });
    };
    step(0);
  }

  #writeFully(off: number, src: Uint8Array, start: number, len: number, done: Done, fd = this.#fd): void {
    let use = fd;
    const step = (put: number): void => {
      if (put === len) return done(Errno.OK);
      this.#io.write(use, src.subarray(start + put, start + len), off + put, (err, n) => {
        if (err) return done(errnoFromError(err));
        if (n === 0) return done(Errno.EIO); // would loop forever otherwise
        // The rest of a short direct write is no longer aligned: it goes through the page cache.
        if (n % MEM_ALIGN !== 0) use = this.#fd;
        step(put + n);
      });
    };
    step(0);
  }

  /** Writes zeros over each [off, len) in turn, ZERO_CHUNK at a time. */
  #writeZeros(ranges: ReadonlyArray<readonly [number, number]>, done: Done): void {
    const chunk = zeros();
    const pieces: [number, number][] = [];
    for (const [off, len] of ranges) {
      for (let d = 0; d < len; d += ZERO_CHUNK) pieces.push([off + d, Math.min(ZERO_CHUNK, len - d)]);
    }
    const step = (i: number): void => {
      if (i === pieces.length) return done(Errno.OK);
      const [off, len] = pieces[i]!;
      this.#writeFully(off, chunk, 0, len, (err) => (err ? done(err) : step(i + 1)));
    };
    step(0);
  }

  /**
   * fdatasync, through the sync group, after an operation that succeeded and carried FUA. Any
   * failure is EIO and is also reported to the next flush (the rule on Origin.flush).
   */
  #thenSyncIf(fua: boolean, done: Done): Done {
    if (!fua) return done;
    return (errno) => (errno ? done(errno) : this.#syncs.request(false, done));
  }

  /**
   * Whether the file system can punch holes, asked where it cannot change anything: past EOF,
   * where there is no data to deallocate. Only a definite "unsupported" answer counts.
   */
  #probePunch(): boolean {
    const mode = this.#native!.FALLOC_FL_PUNCH_HOLE | this.#native!.FALLOC_FL_KEEP_SIZE;
    return !isUnsupported(this.#native!.fallocate(this.#fd, mode, alignUp(this.size), DEVICE_ALIGN));
  }

  // TRIM is a hint: whatever cannot be discarded is left as it is and the request succeeds.
  #trim(off: number, len: number): number {
    const native = this.#native;
    if (native === null || len === 0) return Errno.OK;
    if (this.#kind === 'file') {
      if (!this.#punch) return Errno.OK;
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return Errno.OK;
      if (!isUnsupported(r)) return errnoFromResult(r);
      this.#punch = false;
      return Errno.OK;
    }
    // Discarding less than asked is always allowed, so shrink to whole blocks.
    const start = alignUp(off);
    const end = alignDown(off + len);
    if (!this.#discard || start >= end) return Errno.OK;
    const r = native.blkDiscard(this.#fd, start, end - start);
    if (r >= 0) return Errno.OK;
    if (!isUnsupported(r) && r !== -EINVAL) return errnoFromResult(r);
    // EINVAL: a logical block larger than DEVICE_ALIGN, or a device with odd discard limits.
    if (isUnsupported(r)) this.#discard = false;
    return Errno.OK;
  }

  #zero(off: number, len: number, noHole: boolean, fastZero: boolean, done: Done): void {
    // Decided before touching anything: a refused fast zero must leave no side effect.
    let r = UNSUPPORTED;
    let edges: [number, number][] = [];
    if (this.#native !== null && this.canFastZero) {
      if (len === 0) r = Errno.OK;
      else if (this.#kind === 'file') r = this.#zeroFileRange(this.#native, off, len, noHole);
      else {
        const end = off + len;
        const midStart = alignUp(off);
        const midEnd = alignDown(end);
        // Under two blocks writing is as cheap, so it counts as a cheap zero too.
        if (midStart >= midEnd) return this.#writeZeros([[off, len]], done);
        r = this.#zeroDeviceMiddle(this.#native, midStart, midEnd, noHole);
        edges = [[off, midStart - off], [midEnd, end - midEnd]];
      }
    }
    if (r === Errno.OK && edges.length > 0) return this.#writeZeros(edges, done);
    if (r !== UNSUPPORTED) return done(r);
    if (fastZero) return done(Errno.ENOTSUP);
    this.#writeZeros([[off, len]], done);
  }

  #zeroFileRange(native: NativeBinding, off: number, len: number, noHole: boolean): number {
    if (!noHole && this.#punch) {
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return Errno.OK;
      if (!isUnsupported(r)) return errnoFromResult(r);
      this.#punch = false;
    }
    if (this.#zeroRange) {
      const r = native.fallocate(this.#fd, native.FALLOC_FL_ZERO_RANGE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return Errno.OK;
      if (!isUnsupported(r)) return errnoFromResult(r);
      this.#zeroRange = false;
    }
    return UNSUPPORTED;
  }

  /** The aligned middle of a device range; the caller writes zeros over the partial blocks at either end. */
  #zeroDeviceMiddle(native: NativeBinding, midStart: number, midEnd: number, noHole: boolean): number {
    if (!noHole && this.#punch) {
      // On a block device this never falls back to writing zeros in the kernel.
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, midStart, midEnd - midStart);
      if (r >= 0) return Errno.OK;
      if (!isUnsupported(r)) return errnoFromResult(r);
      this.#punch = false;
    }
    if (this.#zeroOut) {
      // Without hardware WRITE_ZEROES the kernel writes the zeros itself; that still saves
      // moving them through userspace, so it counts as cheap.
      const r = native.blkZeroOut(this.#fd, midStart, midEnd - midStart);
      if (r >= 0) return Errno.OK;
      if (!isUnsupported(r)) return errnoFromResult(r);
      this.#zeroOut = false;
    }
    return UNSUPPORTED;
  }

  /** SEEK_DATA/SEEK_HOLE walk of [off, end): holes read as zeros, data is reported as is. */
  #walkExtents(native: NativeBinding, off: number, end: number, maxExtents: number): Extent[] | number {
    const extents: Extent[] = [];
    for (let pos = off; pos < end; ) {
      let next: number;
      let flags: number;
      const data = native.seekData(this.#fd, pos);
      if (data === -ENXIO) {
        // No data from pos to EOF; a file shorter than the origin size reads as zeros there too.
        next = end;
        flags = BlockState.HOLE | BlockState.ZERO;
      } else if (data < 0) {
        return errnoFromResult(data);
      } else if (data > pos) {
        next = Math.min(data, end);
        flags = BlockState.HOLE | BlockState.ZERO;
      } else {
        const hole = native.seekHole(this.#fd, pos);
        if (hole < 0 && hole !== -ENXIO) return errnoFromResult(hole);
        // A hole at or before pos (or ENXIO) means the file changed between the two seeks;
        // calling the rest data is always a correct answer.
        next = hole > pos ? Math.min(hole, end) : end;
        flags = 0;
      }
      const last = extents.at(-1);
      if (last !== undefined && last.flags === flags) last.length += next - pos;
      else if (extents.length === maxExtents) break;
      else extents.push({ length: next - pos, flags });
      pos = next;
    }
    return extents;
  }
}
