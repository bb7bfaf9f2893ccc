// A local file or block device as the origin. It runs inside a stripe worker thread and does
// synchronous positional I/O: one stripe thread is one outstanding I/O, with no hand-off to the
// libuv pool (see reference/ecosystem.md §6). Every callback runs before the method returns.
//
// Hole punching, range zeroing, SEEK_DATA/SEEK_HOLE and the block-device ioctls come from the
// optional addon (src/native). Without it TRIM is ignored, zeroing writes zeros and
// BLOCK_STATUS reports everything as data: slower and less informative, never wrong.

import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { BlockState, NbdErr } from '../nbd/constants.js';
import { native as loadedNative, type NativeBinding } from '../native/index.js';
import { PcachedError } from '../util/errors.js';
import { blockDeviceSize } from '../util/block-device.js';
import { nbdErrFromErrno, nbdErrFromError } from './errno.js';
import type { Done, Extent, Origin, OriginSpec, ZeroFlags } from './types.js';

export type FileOriginSpec = Extract<OriginSpec, { kind: 'file' }>;

export interface FileOriginOptions {
  /** The addon to use; defaults to the loaded one. null forces the portable fallback (tests). */
  native?: NativeBinding | null;
}

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
  const native = options.native === undefined ? loadedNative : options.native;
  const readOnly = spec.readOnly === true;
  let fd: number;
  try {
    fd = fs.openSync(spec.path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
  } catch (err) {
    throw new PcachedError('ERR_ORIGIN', `cannot open origin ${spec.path}: ${message(err)}`, { cause: err });
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (st.isFile()) {
      return new FileOrigin(fd, spec.path, 'file', Number(st.size), readOnly, native);
    }
    if (st.isBlockDevice()) {
      return new FileOrigin(fd, spec.path, 'device', deviceSize(fd, st.rdev, spec.path, native), readOnly, native);
    }
    throw new PcachedError('ERR_ORIGIN', `origin ${spec.path} is neither a regular file nor a block device`);
  } catch (err) {
    fs.closeSync(fd);
    if (err instanceof PcachedError) throw err;
    throw new PcachedError('ERR_ORIGIN', `cannot use origin ${spec.path}: ${message(err)}`, { cause: err });
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
  readonly synchronous = true;

  #fd: number;
  readonly #kind: 'file' | 'device';
  readonly #native: NativeBinding | null;
  // What the file system or device turned out to support; cleared on the first EOPNOTSUPP so
  // an unsupported call is not retried on every request.
  #punch: boolean;
  #zeroRange: boolean;
  #zeroOut: boolean;
  #discard: boolean;
  /** A sync failed (a FUA write's, or a flush's) and no flush has reported it yet. */
  #syncFailed = false;

  constructor(fd: number, path: string, kind: 'file' | 'device', size: number, readOnly: boolean, native: NativeBinding | null) {
    this.#fd = fd;
    this.#kind = kind;
    this.#native = native;
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

  read(off: number, dst: Uint8Array, cb: Done): void {
    cb(this.#check(off, dst.length, false) || this.#readFully(off, dst));
  }

  write(off: number, src: Uint8Array, fua: boolean, cb: Done): void {
    cb(this.#check(off, src.length, true) || this.#writeFully(off, src, 0, src.length) || this.#syncIf(fua));
  }

  flush(cb: Done): void {
    if (this.#fd < 0) return cb(NbdErr.ESHUTDOWN);
    if (this.readOnly) return cb(NbdErr.OK);
    const err = this.#sync();
    const lost = this.#syncFailed;
    this.#syncFailed = false;
    cb(err || (lost ? NbdErr.EIO : NbdErr.OK));
  }

  trim(off: number, len: number, fua: boolean, cb: Done): void {
    cb(this.#check(off, len, true) || this.#trim(off, len) || this.#syncIf(fua));
  }

  zero(off: number, len: number, flags: ZeroFlags, cb: Done): void {
    cb(this.#check(off, len, true) || this.#zero(off, len, flags.noHole, flags.fastZero) || this.#syncIf(flags.fua));
  }

  cache(off: number, len: number, cb: Done): void {
    // Node has no posix_fadvise, and the page cache fills on the read that follows anyway.
    cb(this.#check(off, len, false));
  }

  blockStatus(off: number, len: number, maxExtents: number, cb: (errno: number, extents: Extent[]) => void): void {
    let err = this.#check(off, len, false);
    if (!err && (len === 0 || !Number.isSafeInteger(maxExtents) || maxExtents < 1)) err = NbdErr.EINVAL;
    if (err) return cb(err, []);
    if (this.#kind === 'device' || this.#native === null) return cb(NbdErr.OK, [{ length: len, flags: 0 }]);
    const result = this.#walkExtents(this.#native, off, off + len, maxExtents);
    if (typeof result === 'number') cb(result, []);
    else cb(NbdErr.OK, result);
  }

  async close(): Promise<void> {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    // Marked closed first: the fd number may be reused at once, and a late request must not
    // write into whatever file gets it.
    this.#fd = -1;
    try {
      fs.closeSync(fd);
    } catch (err) {
      throw new PcachedError('ERR_ORIGIN', `closing origin ${this.description}: ${message(err)}`, { cause: err });
    }
  }

  /** 0, or the NBD error for a request that must not reach the file. */
  #check(off: number, len: number, writing: boolean): number {
    if (this.#fd < 0) return NbdErr.ESHUTDOWN;
    if (writing && this.readOnly) return NbdErr.EPERM;
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0) return NbdErr.EINVAL;
    // A write past the end would silently grow a regular file.
    if (off + len > this.size) return writing ? NbdErr.ENOSPC : NbdErr.EINVAL;
    return NbdErr.OK;
  }

  #readFully(off: number, dst: Uint8Array): number {
    try {
      for (let done = 0; done < dst.length; ) {
        const n = fs.readSync(this.#fd, dst, done, dst.length - done, off + done);
        if (n === 0) return NbdErr.EIO; // the file shrank under us
        done += n;
      }
      return NbdErr.OK;
    } catch (err) {
      return nbdErrFromError(err);
    }
  }

  #writeFully(off: number, src: Uint8Array, start: number, len: number): number {
    try {
      for (let done = 0; done < len; ) {
        const n = fs.writeSync(this.#fd, src, start + done, len - done, off + done);
        if (n === 0) return NbdErr.EIO; // would loop forever otherwise
        done += n;
      }
      return NbdErr.OK;
    } catch (err) {
      return nbdErrFromError(err);
    }
  }

  #writeZeros(off: number, len: number): number {
    const chunk = zeros();
    for (let done = 0; done < len; done += ZERO_CHUNK) {
      const err = this.#writeFully(off + done, chunk, 0, Math.min(ZERO_CHUNK, len - done));
      if (err) return err;
    }
    return NbdErr.OK;
  }

  /**
   * fdatasync. Any failure is EIO: whatever the errno (ENOSPC on NFS, EIO from the disk), writes
   * since the last good sync may be gone (the rule on Origin.flush), and the next flush() reports
   * it even if its own fdatasync succeeds, because the kernel tells only one caller.
   */
  #sync(): number {
    try {
      fs.fdatasyncSync(this.#fd);
      return NbdErr.OK;
    } catch {
      this.#syncFailed = true;
      return NbdErr.EIO;
    }
  }

  #syncIf(fua: boolean): number {
    return fua ? this.#sync() : NbdErr.OK;
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
    if (native === null || len === 0) return NbdErr.OK;
    if (this.#kind === 'file') {
      if (!this.#punch) return NbdErr.OK;
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return NbdErr.OK;
      if (!isUnsupported(r)) return nbdErrFromErrno(r);
      this.#punch = false;
      return NbdErr.OK;
    }
    // Discarding less than asked is always allowed, so shrink to whole blocks.
    const start = alignUp(off);
    const end = alignDown(off + len);
    if (!this.#discard || start >= end) return NbdErr.OK;
    const r = native.blkDiscard(this.#fd, start, end - start);
    if (r >= 0) return NbdErr.OK;
    if (!isUnsupported(r) && r !== -EINVAL) return nbdErrFromErrno(r);
    // EINVAL: a logical block larger than DEVICE_ALIGN, or a device with odd discard limits.
    if (isUnsupported(r)) this.#discard = false;
    return NbdErr.OK;
  }

  #zero(off: number, len: number, noHole: boolean, fastZero: boolean): number {
    // Decided before touching anything: a refused fast zero must leave no side effect.
    let r = UNSUPPORTED;
    if (this.#native !== null && this.canFastZero) {
      if (len === 0) r = NbdErr.OK;
      else if (this.#kind === 'file') r = this.#zeroFileRange(this.#native, off, len, noHole);
      else r = this.#zeroDeviceRange(this.#native, off, len, noHole);
    }
    if (r !== UNSUPPORTED) return r;
    return fastZero ? NbdErr.ENOTSUP : this.#writeZeros(off, len);
  }

  #zeroFileRange(native: NativeBinding, off: number, len: number, noHole: boolean): number {
    if (!noHole && this.#punch) {
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return NbdErr.OK;
      if (!isUnsupported(r)) return nbdErrFromErrno(r);
      this.#punch = false;
    }
    if (this.#zeroRange) {
      const r = native.fallocate(this.#fd, native.FALLOC_FL_ZERO_RANGE | native.FALLOC_FL_KEEP_SIZE, off, len);
      if (r >= 0) return NbdErr.OK;
      if (!isUnsupported(r)) return nbdErrFromErrno(r);
      this.#zeroRange = false;
    }
    return UNSUPPORTED;
  }

  /** The aligned middle goes to the device; the partial blocks at either end get written zeros. */
  #zeroDeviceRange(native: NativeBinding, off: number, len: number, noHole: boolean): number {
    const end = off + len;
    const midStart = alignUp(off);
    const midEnd = alignDown(end);
    if (midStart >= midEnd) return this.#writeZeros(off, len); // under two blocks: writing is as cheap
    let done = false;
    if (!noHole && this.#punch) {
      // On a block device this never falls back to writing zeros in the kernel.
      const r = native.fallocate(this.#fd, native.FALLOC_FL_PUNCH_HOLE | native.FALLOC_FL_KEEP_SIZE, midStart, midEnd - midStart);
      if (r >= 0) done = true;
      else if (isUnsupported(r)) this.#punch = false;
      else return nbdErrFromErrno(r);
    }
    if (!done && this.#zeroOut) {
      // Without hardware WRITE_ZEROES the kernel writes the zeros itself; that still saves
      // moving them through userspace, so it counts as cheap.
      const r = native.blkZeroOut(this.#fd, midStart, midEnd - midStart);
      if (r >= 0) done = true;
      else if (isUnsupported(r)) this.#zeroOut = false;
      else return nbdErrFromErrno(r);
    }
    if (!done) return UNSUPPORTED;
    return this.#writeZeros(off, midStart - off) || this.#writeZeros(midEnd, end - midEnd);
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
        return nbdErrFromErrno(data);
      } else if (data > pos) {
        next = Math.min(data, end);
        flags = BlockState.HOLE | BlockState.ZERO;
      } else {
        const hole = native.seekHole(this.#fd, pos);
        if (hole < 0 && hole !== -ENXIO) return nbdErrFromErrno(hole);
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
