// Exclusive ownership of the devices a coordinator writes: its cache file or device, and a file
// or block-device origin. Two daemons writing one cache file corrupt it; two writing one origin
// corrupt the volume. So the coordinator process claims both before anything is written and keeps
// the claims until it exits:
//
// * a regular file gets flock(LOCK_EX|LOCK_NB) on a descriptor opened for that purpose alone.
//   The lock belongs to that open file description, so the worker threads' own descriptors of the
//   same file neither take nor release it, and the kernel drops it only when the process is gone
//   (every thread with it): nothing of this process can write after another daemon got the lock.
// * a block device is opened O_EXCL (Linux refuses it with EBUSY while another exclusive opener
//   holds it or it is mounted), and flocked as well, so the holder's PID can be named.
// * a read-only origin is shared: readers take LOCK_SH, which only a writer's LOCK_EX excludes.
// * without the native addon, flock is replaced by a lock file (./lock-file.ts), which is weaker.
//
// The holder of a refused claim is found in /proc/locks (or in the lock folder) and named.

import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { CacheConfig } from '../config/types.js';
import { isUri } from '../nbd/uri.js';
import { native as loadedNative, type NativeBinding } from '../native/index.js';
import { PcachedError } from '../util/errors.js';
import { describeProcess, flockHolders, majorMinor, mountPointOf } from '../util/proc-info.js';
import { claimLockFile, lockDir, lockFileHolders, type LockMode } from './lock-file.js';

const { EWOULDBLOCK, EBUSY } = osConstants.errno;

export type DeviceRole = 'cache' | 'origin';

export interface ClaimRequest {
  role: DeviceRole;
  path: string;
  /** A read-only origin: other readers may hold it too, no writer may. */
  shared: boolean;
  /** Written into a fallback lock file, for whoever looks. */
  cacheName: string;
}

export interface DeviceClaim {
  role: DeviceRole;
  path: string;
  mode: LockMode;
  /** How the claim is held: "flock", "O_EXCL + flock", "lock file", "O_EXCL + lock file". */
  method: string;
}

export interface ClaimOptions {
  /** The addon; null forces the portable fallback (tests). */
  native?: NativeBinding | null;
  lockDir?: string;
}

/**
 * Descriptors held for the life of the process. Never closed (but by a detach, once nothing uses
 * the file): closing one would drop its lock while worker threads may still write.
 */
const held: { fd: number | null; claim: DeviceClaim; releaseLockFile: (() => void) | null }[] = [];

interface Holder { pid: number; mode: LockMode }

function what(req: ClaimRequest, block: boolean): string {
  return `${req.role === 'cache' ? 'cache' : 'origin'} ${block ? 'device' : 'file'}`;
}

function named(path: string): string {
  let real = path;
  try { real = fs.realpathSync(path); } catch { /* keep the name given */ }
  return real === path ? path : `${path} (${real})`;
}

function inUse(req: ClaimRequest, block: boolean, holder: Holder | null): PcachedError {
  const subject = `${what(req, block)} ${named(req.path)}`;
  if (holder === null) {
    return new PcachedError('ERR_IN_USE', `${subject} is locked by another process (its PID is not in /proc/locks): stop it first`);
  }
  const desc = describeProcess(holder.pid);
  const pcached = desc !== null && desc.startsWith('pcached');
  const how = holder.mode === 'shared' ? ' (read-only)' : '';
  return new PcachedError('ERR_IN_USE', `${subject} is in use${how} by PID ${holder.pid}${desc ? ` (${desc})` : ''}: stop ${pcached ? 'that daemon' : 'it'} first`);
}

function openFailed(req: ClaimRequest, err: unknown): PcachedError {
  const e = err as NodeJS.ErrnoException;
  const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message;
  return new PcachedError(req.role === 'cache' ? 'ERR_CACHE_FILE' : 'ERR_ORIGIN', `cannot open ${what(req, false).replace(/ file$/, '')} ${req.path} to lock it: ${why}`, { cause: err });
}

const conflicts = (mine: LockMode, theirs: LockMode): boolean => mine === 'exclusive' || theirs === 'exclusive';

/** Claims one device for the life of this process; throws ERR_IN_USE naming the holder when another has it. */
export function claimDevice(req: ClaimRequest, opts: ClaimOptions = {}): DeviceClaim {
  const native = opts.native === undefined ? loadedNative : opts.native;
  const dir = opts.lockDir ?? lockDir();
  const mode: LockMode = req.shared ? 'shared' : 'exclusive';
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(req.path, { bigint: true });
  } catch (err) {
    throw openFailed(req, err);
  }
  const block = st.isBlockDevice();
  const { major, minor } = majorMinor(st.rdev);
  // A block device is one device whatever node names it; a file is one inode whatever links name it.
  const key = block ? `b${major}-${minor}` : `f${st.dev}-${st.ino}`;
  const excl = block && !req.shared;
  let fd: number;
  try {
    fd = fs.openSync(req.path, fs.constants.O_RDONLY | (excl ? fs.constants.O_EXCL : 0));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).errno !== -EBUSY && (err as NodeJS.ErrnoException).code !== 'EBUSY') throw openFailed(req, err);
    const holder = flockHolders(st.dev, st.ino)[0] ?? lockFileHolders(dir, key)[0] ?? null;
    if (holder) throw inUse(req, block, holder);
    const mount = mountPointOf(st.rdev);
    throw new PcachedError('ERR_IN_USE', `${what(req, block)} ${named(req.path)} is busy: ${mount !== null ? `it is mounted on ${mount}` : 'opened exclusively by another program, or in use by the kernel (a mount, swap, RAID or device-mapper member)'}; release it first`);
  }
  try {
    return holdClaim(req, { fd, st, block, key, mode, excl, native, dir });
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

function holdClaim(req: ClaimRequest, c: { fd: number; st: fs.BigIntStats; block: boolean; key: string; mode: LockMode; excl: boolean; native: NativeBinding | null; dir: string }): DeviceClaim {
  const { fd, st, block, key, mode, native, dir } = c;
  const prefix = c.excl ? 'O_EXCL + ' : '';
  // A daemon without the addon keeps lock files, one with it flocks: each also looks for the other kind.
  const otherKind = (): Holder | undefined => (native
    ? lockFileHolders(dir, key).find((h) => conflicts(mode, h.mode))
    : flockHolders(st.dev, st.ino).find((h) => h.pid !== process.pid && conflicts(mode, h.mode)));
  if (native) {
    for (let attempt = 0; ; attempt++) {
      const r = native.flock(fd, (mode === 'exclusive' ? native.LOCK_EX : native.LOCK_SH) | native.LOCK_NB);
      if (r === 0) break;
      if (r !== -EWOULDBLOCK) throw new PcachedError(req.role === 'cache' ? 'ERR_CACHE_FILE' : 'ERR_ORIGIN', `cannot lock ${req.path}: flock failed (errno ${-r})`);
      const holder = flockHolders(st.dev, st.ino).find((h) => conflicts(mode, h.mode));
      // The holder may have exited between our flock and the look at /proc/locks: try again.
      if (holder) throw inUse(req, block, holder);
      if (attempt >= 2) throw inUse(req, block, null);
    }
    const other = otherKind();
    if (other) throw inUse(req, block, other);
    const claim: DeviceClaim = { role: req.role, path: req.path, mode, method: `${prefix}flock` };
    held.push({ fd, claim, releaseLockFile: null });
    return claim;
  }
  const other = otherKind();
  if (other) throw inUse(req, block, other);
  let r: ReturnType<typeof claimLockFile>;
  try {
    r = claimLockFile(dir, key, mode, { path: req.path, role: req.role, cache: req.cacheName });
  } catch (err) {
    throw new PcachedError(req.role === 'cache' ? 'ERR_CACHE_FILE' : 'ERR_ORIGIN',
      `cannot lock ${req.path}: without the native addon a lock file in ${dir} stands in for flock, and it cannot be written (${(err as Error).message}); set PCACHED_LOCK_DIR to a writable folder`, { cause: err });
  }
  if ('holder' in r) throw inUse(req, block, r.holder);
  const claim: DeviceClaim = { role: req.role, path: req.path, mode, method: `${prefix}lock file ${r.file}` };
  held.push({ fd: c.excl ? fd : null, claim, releaseLockFile: r.release });
  if (!c.excl) fs.closeSync(fd);
  return claim;
}

/** The devices of one cache, cache first; the origin only when it is local. */
export function claimCacheDevices(cache: Pick<CacheConfig, 'name' | 'cache' | 'origin' | 'readOnly'>, opts: ClaimOptions = {}): DeviceClaim[] {
  const claims = [claimDevice({ role: 'cache', path: cache.cache, shared: false, cacheName: cache.name }, opts)];
  if (!isUri(cache.origin)) claims.push(claimDevice({ role: 'origin', path: cache.origin, shared: cache.readOnly, cacheName: cache.name }, opts));
  return claims;
}

/**
 * `pcached detach`, once every thread has let go of the cache file: its claim is dropped, so the
 * device can be reused at once (mkfs, another cache) while the volume is served from the origin.
 */
export function releaseDevice(role: DeviceRole): void {
  for (let i = held.length - 1; i >= 0; i--) {
    const h = held[i]!;
    if (h.claim.role !== role) continue;
    h.releaseLockFile?.();
    if (h.fd !== null) fs.closeSync(h.fd);
    held.splice(i, 1);
  }
}

/**
 * After a complete shutdown (every thread that could write has stopped): the fallback's lock
 * files go. flock descriptors stay open until the process exits, which drops them.
 */
export function releaseLockFiles(): void {
  for (const h of held) {
    h.releaseLockFile?.();
    h.releaseLockFile = null;
  }
}

export function heldClaims(): DeviceClaim[] {
  return held.map((h) => h.claim);
}
