// What may be called durable on the cache device, for every thread of one cache (docs/cache-engine.md
// "Device errors"). Three rules, all enforced here:
//
//  1. One cache sync at a time, across every thread (stripes, writeback, GC, coordinator). A caller
//     whose writes completed before its call is covered by any sync that *started* after the call
//     (group commit). Concurrent syncs from several descriptors would let one thread's sync succeed
//     after another's failed and dropped pages (Linux after a writeback error; nbdfuse passes the
//     flush error to whichever fsync sent it), so "success" would prove nothing.
//  2. A failed sync makes the device fail for good (sticky, as dm-writecache's error flag): from then
//     on nothing written before it is ever called durable again, whatever later syncs answer. A later
//     sync still covers writes made *after* the failure (the writeback worker's own records), which a
//     caller asks for with `since` (a mark taken before those writes).
//  3. Locks carry their owner's id, so when a thread dies holding one the coordinator can release it
//     (a waiter would otherwise spin for ever).

import type { BlockDevice } from './blockdev.js';
import { Errno } from '../util/errno.js';

// Int32 word indices in the cache's shared header (src/cache/shared.ts owns the rest).
export const W_LOG_LOCK = 0;
export const W_SYNC_LOCK = 1;
/** Syncs started so far; the n-th sync has number n. */
export const W_SYNC_STARTED = 2;
/** Number of the last sync that completed (success or failure). Syncs are serialized, so this only grows. */
export const W_SYNC_DONE = 3;
/** Number of the last sync that failed (0: none). */
export const W_SYNC_LAST_FAILED = 64;
/** Sticky device failure: the errno, 0 while healthy. */
export const W_FAILED = 65;
/** What failed first (a FAIL_* code). */
export const W_FAILED_WHY = 66;

export const FAIL_SYNC = 1;
export const FAIL_DATA_WRITE = 2;
export const FAIL_LOG_WRITE = 3;
export const FAIL_META_WRITE = 4;
export const FAIL_REPLAY = 5;
export const FAIL_WHY = ['', 'a sync (fdatasync) failed', 'a data write failed', 'a key log write failed', 'a metadata write failed', 'the sync after replay failed'] as const;

/** Owner ids of the threads of one cache: stripe i is STRIPE_OWNER + i. */
export const STRIPE_OWNER = 1;
export const WRITEBACK_OWNER = 0x7000;
export const GC_OWNER = 0x7001;
export const COORDINATOR_OWNER = 0x7002;

/** A short spin, then futex waits; a holder never blocks on anything but the device. */
export function lockWord(w: Int32Array, i: number, owner: number): void {
  for (let n = 0; ; n++) {
    const cur = Atomics.compareExchange(w, i, 0, owner);
    if (cur === 0) return;
    if (n > 100) Atomics.wait(w, i, cur, 1);
  }
}

export function tryLockWord(w: Int32Array, i: number, owner: number): boolean {
  return Atomics.compareExchange(w, i, 0, owner) === 0;
}

export function unlockWord(w: Int32Array, i: number): void {
  Atomics.store(w, i, 0);
  Atomics.notify(w, i);
}

/** Releases lock word `i` if `owner` (a dead thread) holds it; true when it did. */
export function releaseWordOf(w: Int32Array, i: number, owner: number): boolean {
  if (Atomics.compareExchange(w, i, owner, 0) !== owner) return false;
  Atomics.notify(w, i);
  return true;
}

/** What the gate needs of the shared state. */
export interface GateHost {
  readonly w: Int32Array;
  readonly owner: number;
  readonly headLsn: number;
  noteDurable(lsn: number): void;
  fail(errno: number, why: number): void;
  /**
   * How an asynchronous caller waits for the gate to be free: by default Atomics.waitAsync on the
   * completion word (with a timeout, for a holder that died). The in-process simulator runs every
   * "thread" on one event loop and queues the retry deterministically instead.
   */
  gateWaiter?: ((retry: () => void) => void) | null;
}

/** True when no sync failed at or after sync number `since` (0: none ever). */
function covered(w: Int32Array, since: number): boolean {
  const f = Atomics.load(w, W_SYNC_LAST_FAILED);
  return f === 0 || f < since;
}

/**
 * Take this before writes whose durability you will ask about, and pass it as `since`: syncs that
 * had not completed yet (a sync in progress may still drop pages written now) are the ones whose
 * failure counts. A caller that retries takes a fresh mark each time.
 */
export function syncMark(w: Int32Array): number {
  return Atomics.load(w, W_SYNC_DONE) + 1;
}

function startSync(h: GateHost): { n: number; head: number } {
  return { n: Atomics.add(h.w, W_SYNC_STARTED, 1) + 1, head: h.headLsn };
}

function endSync(h: GateHost, n: number, head: number, err: unknown): void {
  const w = h.w;
  if (err) {
    Atomics.store(w, W_SYNC_LAST_FAILED, n);
    h.fail(Errno.EIO, FAIL_SYNC);
  } else if (Atomics.load(w, W_FAILED) === 0) {
    // The log prefix is only ever extended while the device is healthy: after a failure the ksets
    // appended before it may be the very pages that were dropped.
    h.noteDurable(head);
  }
  Atomics.store(w, W_SYNC_DONE, n);
  Atomics.notify(w, W_SYNC_DONE);
}

/**
 * Synchronous group commit (worker threads). True when every write the caller completed before the
 * call is durable: a sync that started after the call succeeded, and no sync failed at or after
 * `since` (default 0: no sync ever failed).
 */
export function syncCache(h: GateHost, dev: BlockDevice, since = 0): boolean {
  const w = h.w;
  // This thread's own asynchronous sync holds the gate: waiting here would wait for ever (its
  // completion needs this thread's event loop). Not covered; the caller tries again later.
  if (Atomics.load(w, W_SYNC_LOCK) === h.owner) return false;
  const mark = Atomics.load(w, W_SYNC_STARTED);
  lockWord(w, W_SYNC_LOCK, h.owner);
  try {
    if (Atomics.load(w, W_SYNC_DONE) <= mark) {
      const { n, head } = startSync(h);
      let err: unknown = null;
      try { dev.sync(); } catch (e) { err = e ?? new Error('sync failed'); }
      endSync(h, n, head, err);
    }
    return covered(w, since);
  } finally {
    unlockWord(w, W_SYNC_LOCK);
  }
}

/** The same off-thread (stripes: fdatasync in libuv's pool, the stripe keeps serving meanwhile). */
export function syncCacheAsync(h: GateHost, dev: BlockDevice, cb: (ok: boolean) => void, since = 0): void {
  const w = h.w;
  const mark = Atomics.load(w, W_SYNC_STARTED);
  const attempt = (): void => {
    if (Atomics.load(w, W_SYNC_DONE) > mark) { cb(covered(w, since)); return; }
    if (!tryLockWord(w, W_SYNC_LOCK, h.owner)) {
      // Someone syncs now: when it ends, either it started after our call (we are covered) or we
      // take the lock next. The timeout re-checks a lock a dead thread may still hold.
      if (h.gateWaiter) { h.gateWaiter(attempt); return; }
      const r = Atomics.waitAsync(w, W_SYNC_DONE, Atomics.load(w, W_SYNC_DONE), 20);
      if (r.async) void r.value.then(attempt);
      else queueMicrotask(attempt);
      return;
    }
    if (Atomics.load(w, W_SYNC_DONE) > mark) {
      unlockWord(w, W_SYNC_LOCK);
      cb(covered(w, since));
      return;
    }
    const { n, head } = startSync(h);
    const finish = (err: unknown): void => {
      endSync(h, n, head, err);
      unlockWord(w, W_SYNC_LOCK);
      cb(covered(w, since));
    };
    if (dev.syncAsync) {
      try {
        dev.syncAsync((err) => finish(err));
      } catch (e) {
        finish(e ?? new Error('sync failed'));
      }
    } else {
      let err: unknown = null;
      try { dev.sync(); } catch (e) { err = e ?? new Error('sync failed'); }
      finish(err);
    }
  };
  attempt();
}
