// The files a cache needs before its coordinator starts. The supervisor creates them (not the
// coordinator) so that a coordinator restart never creates anything, and so that a missing origin
// is reported once, as an operator error, before any process is forked.

import { closeSync, ftruncateSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { isNbdUri } from '../../config/schema.js';
import type { CacheConfig } from '../config/types.js';
import { PcachedError } from '../util/errors.js';
import { formatSize } from '../util/size.js';

/** Size of the origin the embedded default creates. */
export const EMBEDDED_ORIGIN_SIZE = 2 ** 30;

/** Creates `path` sparse at `size` bytes; false if it already existed (then it is left alone). */
export function createSparseFile(path: string, size: number): boolean {
  mkdirSync(dirname(path), { recursive: true });
  let fd: number;
  try {
    // 'wx': never truncate a file that appeared since we looked.
    fd = openSync(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
  try {
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
  return true;
}

function statOrUndefined(path: string) {
  try {
    return statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

export interface PreparedFiles {
  createdOrigin: boolean;
  createdCache: boolean;
}

/**
 * Checks the origin and creates what may be created: the embedded default's origin (only when
 * `createOrigin`), and the cache file sparse at cacheSize when absent.
 */
export function prepareCacheFiles(cache: CacheConfig, opts: { createOrigin: boolean }): PreparedFiles {
  let createdOrigin = false;
  if (!isNbdUri(cache.origin)) {
    const st = statOrUndefined(cache.origin);
    if (st === undefined) {
      if (!opts.createOrigin) {
        throw new PcachedError('ERR_ORIGIN', `cache "${cache.name}": origin ${cache.origin} does not exist (pcached never creates an origin you name; create it first, e.g. \`truncate -s 1G ${cache.origin}\`)`);
      }
      createdOrigin = createSparseFile(cache.origin, EMBEDDED_ORIGIN_SIZE);
    } else if (!st.isFile() && !st.isBlockDevice()) {
      throw new PcachedError('ERR_ORIGIN', `cache "${cache.name}": origin ${cache.origin} is neither a regular file nor a block device`);
    }
  }
  const st = statOrUndefined(cache.cache);
  let createdCache = false;
  if (st === undefined) {
    createdCache = createSparseFile(cache.cache, cache.cacheSize);
  } else if (!st.isFile() && !st.isBlockDevice()) {
    throw new PcachedError('ERR_CACHE_FILE', `cache "${cache.name}": cache ${cache.cache} is neither a regular file nor a block device`);
  }
  // Same file under two names (a symlink, a bind mount): the cache would overwrite the origin.
  if (!isNbdUri(cache.origin)) {
    const o = statSync(cache.origin);
    const c = statSync(cache.cache);
    if (o.dev === c.dev && o.ino === c.ino) {
      throw new PcachedError('ERR_CONFIG', `cache "${cache.name}": origin ${cache.origin} and cache ${cache.cache} are the same file`);
    }
  }
  return { createdOrigin, createdCache };
}

/** One file or device whatever names it: a block device by its device number, a file by its inode. */
function identity(path: string): string {
  const st = statSync(path, { bigint: true });
  return st.isBlockDevice() ? `block ${st.rdev}` : `file ${st.dev}:${st.ino}`;
}

/**
 * The files of all caches (they exist now): a cache file belongs to one cache, and an origin may
 * be shared only by read-only caches, whatever paths, symlinks or hard links name them. The
 * config check compares the paths as written; this one compares what they lead to, before any
 * coordinator is forked (each would refuse the other's lock, but only after one had started).
 */
export function checkDistinctFiles(caches: readonly CacheConfig[]): void {
  const users = new Map<string, { cache: CacheConfig; role: 'cache' | 'origin'; path: string }[]>();
  for (const cache of caches) {
    for (const role of ['cache', 'origin'] as const) {
      if (role === 'origin' && isNbdUri(cache.origin)) continue;
      const path = cache[role];
      const id = identity(path);
      const list = users.get(id) ?? [];
      list.push({ cache, role, path });
      users.set(id, list);
    }
  }
  const problems: string[] = [];
  for (const list of users.values()) {
    if (list.length < 2) continue;
    if (list.every((u) => u.role === 'origin' && u.cache.readOnly)) continue;
    problems.push(`${list.map((u) => `the ${u.role} of cache "${u.cache.name}" (${u.path})`).join(' and ')} are the same file`);
  }
  if (problems.length > 0) {
    throw new PcachedError('ERR_CONFIG', `invalid configuration: ${problems.join('; ')} (a cache file belongs to one cache; only read-only caches may share an origin)`);
  }
}

export function describeCreated(cache: CacheConfig, created: PreparedFiles): string[] {
  const out: string[] = [];
  if (created.createdOrigin) out.push(`created origin ${cache.origin} (${formatSize(EMBEDDED_ORIGIN_SIZE)}, sparse)`);
  if (created.createdCache) out.push(`created cache ${cache.cache} (${formatSize(cache.cacheSize)}, sparse; reserved on its filesystem with fallocate when the cache starts, if the native addon is built)`);
  return out;
}
