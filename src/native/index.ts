// Loader for the optional C addon (src/native/pcached_native.c). Everything that uses it must
// also work without it: a host without a compiler, or PCACHED_NO_NATIVE=1 in tests, gets null.

import { createRequire } from 'node:module';

/** Every function returns a non-negative result or -errno; only malformed arguments throw. */
export interface NativeBinding {
  fallocate(fd: number, mode: number, offset: number, length: number): number;
  /** Offset of the first data at or after offset; -ENXIO when there is none before EOF. */
  seekData(fd: number, offset: number): number;
  /** Offset of the first hole at or after offset (EOF is a hole); -ENXIO when offset ≥ EOF. */
  seekHole(fd: number, offset: number): number;
  /** Block device size in bytes; -ENOTTY on anything else. */
  blkGetSize64(fd: number): number;
  /** offset and length must be multiples of the logical block size. */
  blkDiscard(fd: number, offset: number, length: number): number;
  /** offset and length must be multiples of the logical block size. */
  blkZeroOut(fd: number, offset: number, length: number): number;
  /**
   * flock(2): LOCK_SH or LOCK_EX (| LOCK_NB), or LOCK_UN; -EWOULDBLOCK when LOCK_NB finds it held.
   * The lock belongs to the open file description, so two open()s of one file conflict even in
   * one process, and it lasts until the last descriptor of that description is closed.
   */
  flock(fd: number, op: number): number;
  /** posix_fadvise(2) over [offset, offset+length) (length 0: to the end of the file). */
  fadvise(fd: number, offset: number, length: number, advice: number): number;
  /**
   * One datagram to a $NOTIFY_SOCKET address ("/path" or "@abstract"): bytes sent or -errno.
   * Optional: an addon built from an older source lacks it and the caller falls back.
   */
  sdNotify?(socket: string, message: string): number;
  /**
   * preadv2 with RWF_NOWAIT over the whole array: bytes read, -EAGAIN when it would have to wait
   * for the device (not all in the page cache), -EOPNOTSUPP where the file system cannot say.
   * Optional: an addon built from an older source lacks it (the caller then always goes async).
   */
  preadNowait?(fd: number, view: Uint8Array, offset: number): number;
  /**
   * io_uring (src/native/uring.c), one ring per JS thread; optional like preadNowait. uringOpen
   * gives a handle or -errno (-ENOSYS, -EPERM when io_uring is disabled). onComplete gets the
   * batch size and two arrays reused for every batch: copy out before returning.
   */
  uringOpen?(entries: number, onComplete: (count: number, ids: Float64Array, res: Int32Array) => void): UringHandle | number;
  /** op 0 read, 1 write, 2 fdatasync (view ignored); 0 or -EBUSY when the SQ is full. No syscall. */
  uringPrep?(handle: UringHandle, op: 0 | 1 | 2, fd: number, view: Uint8Array | null, offset: number, id: number): number;
  /** One io_uring_enter for everything prepared: submitted count or -errno. */
  uringSubmit?(handle: UringHandle): number;
  /** Waits for everything in flight; returns [id, res, id, res, ...] of those, delivers nothing more. */
  uringClose?(handle: UringHandle): number[];
  /** (address of the view's first byte) % align, align a power of two: finds O_DIRECT-aligned windows. Optional like preadNowait. */
  addressMod?(view: Uint8Array, align: number): number;
  /**
   * memmove of all of src into dst at dstOffset (RangeError when it does not fit): bytes copied.
   * Optional like preadNowait (src/util/copy-bytes.ts falls back to TypedArray.set).
   */
  copyBytes?(dst: Uint8Array, dstOffset: number, src: Uint8Array): number;
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
  readonly LOCK_SH: number;
  readonly LOCK_EX: number;
  readonly LOCK_NB: number;
  readonly LOCK_UN: number;
  /** Drop the range's clean pages from the page cache (dirty ones are written back first only by a sync). */
  readonly POSIX_FADV_DONTNEED: number;
}

/** An opaque native ring handle. */
export type UringHandle = { readonly __uring: unique symbol };

// Relative to the compiled file, dist/src/native/index.js; the addon is built in place.
const ADDON_PATH = '../../../src/native/build/Release/pcached_native.node';

const FUNCTIONS = ['fallocate', 'seekData', 'seekHole', 'blkGetSize64', 'blkDiscard', 'blkZeroOut', 'flock', 'fadvise'] as const;
const CONSTANTS = ['FALLOC_FL_KEEP_SIZE', 'FALLOC_FL_PUNCH_HOLE', 'FALLOC_FL_ZERO_RANGE', 'LOCK_SH', 'LOCK_EX', 'LOCK_NB', 'LOCK_UN', 'POSIX_FADV_DONTNEED'] as const;

let unavailableReason: string | null = null;

function load(): NativeBinding | null {
  if (process.env.PCACHED_NO_NATIVE === '1') {
    unavailableReason = 'disabled by PCACHED_NO_NATIVE=1';
    return null;
  }
  if (process.platform !== 'linux') {
    unavailableReason = `not built on ${process.platform}`;
    return null;
  }
  let mod: unknown;
  try {
    mod = createRequire(import.meta.url)(ADDON_PATH);
  } catch (err) {
    unavailableReason = `cannot load ${ADDON_PATH}: ${err instanceof Error ? err.message : String(err)}`;
    return null;
  }
  // A stale build from an older source could lack a function; better no addon than a crash later.
  const m = mod as Record<string, unknown>;
  const missing = [
    ...FUNCTIONS.filter((name) => typeof m[name] !== 'function'),
    ...CONSTANTS.filter((name) => typeof m[name] !== 'number'),
  ];
  if (missing.length > 0) {
    unavailableReason = `addon lacks ${missing.join(', ')}; rebuild with npm install`;
    return null;
  }
  return mod as NativeBinding;
}

/** The addon, or null when it is not built, does not load, or is disabled. */
export const native: NativeBinding | null = load();

export function nativeAvailable(): boolean {
  return native !== null;
}

/** Why native is null (for a startup log line); null when it loaded. */
export function nativeUnavailableReason(): string | null {
  return unavailableReason;
}
