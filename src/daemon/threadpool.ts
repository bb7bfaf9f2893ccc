// libuv's thread pool is one per process, shared by every thread of the coordinator (stripes,
// writeback, GC, the main thread), fixed at its first use, 4 threads by default and at most 1024.
// A file or block-device origin runs its I/O there, so the pool must hold what the stripes and
// writeback keep in flight, or requests queue inside libuv where no depth limit sees them (and a
// slow origin read occupies a thread a cache sync needs). So the supervisor sets
// UV_THREADPOOL_SIZE in the coordinator's environment, before that process starts.

import type { CacheConfig } from '../config/types.js';
import { isUri } from '../nbd/uri.js';

/** libuv's own bounds. */
export const UV_DEFAULT_THREADS = 4;
export const UV_MAX_THREADS = 1024;

/** Threads for one coordinator: every origin request the stripes and writeback may have in flight, plus libuv's default for everything else (cache syncs, file system calls). */
export function threadPoolSize(cache: ThreadPoolInputs): number {
  // Cache reads that miss the page cache (or all of them, with direct I/O) block a pool thread
  // each when io_uring is not there to take them.
  const cacheReads = cache.cacheQueueDepth === undefined ? 0 : cache.stripes * cache.cacheQueueDepth;
  if (isUri(cache.origin)) return Math.min(UV_MAX_THREADS, UV_DEFAULT_THREADS + cacheReads);
  return Math.min(UV_MAX_THREADS, cache.stripes * cache.originQueueDepth + cache.writeback.jobs + UV_DEFAULT_THREADS + cacheReads);
}

type ThreadPoolInputs = Pick<CacheConfig, 'origin' | 'stripes' | 'originQueueDepth' | 'writeback'> & Partial<Pick<CacheConfig, 'cacheQueueDepth'>>;

/** The coordinator's environment: an operator's own UV_THREADPOOL_SIZE wins. */
export function coordinatorEnv(cache: ThreadPoolInputs, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  if (env.UV_THREADPOOL_SIZE !== undefined && env.UV_THREADPOOL_SIZE !== '') return env;
  return { ...env, UV_THREADPOOL_SIZE: String(threadPoolSize(cache)) };
}
