// Writeback worker: one thread per cache (a piscina pool of one), following the key log from
// dirty_tail to the origin. A thin loop: it reads the shared state, asks the policy
// (src/cache/writeback-policy.ts: pause, rate, urgency, idle and back-off) what to do, steps
// writeback (src/cache/writeback.ts) or sleeps, and stops after the epoch in progress. An origin
// that cannot be opened at start is retried with back-off, and a loop that throws is restarted:
// the thread never stops writing back for good while the daemon runs.

import { workerData } from 'piscina';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { CacheShared, ERR_ORIGIN_IO, W_FOREGROUND, W_KICK_WB } from '../src/cache/shared.js';
import { WRITEBACK_OWNER } from '../src/cache/durability.js';
import { Writeback, WritebackHalted, OriginIoError } from '../src/cache/writeback.js';
import { BACKOFF_MS, WRITES_WAITING_MS, WritebackPolicy } from '../src/cache/writeback-policy.js';
import type { Clock, WritebackState } from '../src/cache/writeback-policy.js';
import type { Geometry } from '../src/cache/log.js';
import { openOrigin } from '../src/origin/open.js';
import type { Origin, OriginSpec } from '../src/origin/types.js';
import { keepRunning, retryUntilOpen } from '../src/util/retry.js';
import { CounterBlock, CACHE_WORKER_COUNTERS } from '../src/stats/counters.js';
import { createLogger } from '../src/daemon/logger.js';

export interface CacheWorkerData {
  path: string;
  direct: boolean;
  shared: SharedArrayBuffer;
  geometry: Geometry;
  origin: OriginSpec;
  counters: SharedArrayBuffer;
  logLevel: string;
  batchKsets: number;
}

const data = workerData as CacheWorkerData;
const log = createLogger({ level: data.logLevel as 'info', name: 'writeback' });
const sh = new CacheShared(data.shared, WRITEBACK_OWNER);
const counters = new CounterBlock(CACHE_WORKER_COUNTERS, data.counters);
const clock: Clock = { now: () => performance.now() };
/** The upper bound of `writeback.jobs` (config/schema.ts, `message NAME writeback_jobs`). */
const MAX_WRITEBACK_JOBS = 1024;
/** A loop that ran this long before it threw starts its restart back-off afresh. */
const STABLE_MS = 60_000;

let stopping = false;
let loopDone: Promise<void> | null = null;
let wakeWord = 0;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function idle(ms: number): Promise<void> {
  const w = Atomics.waitAsync(sh.w, W_KICK_WB, wakeWord, ms);
  if (w.async) await w.value;
  wakeWord = Atomics.load(sh.w, W_KICK_WB);
}

const stopped = (): boolean => stopping || sh.stopping;

/** sleep(), cut short by a stop (checked every 100 ms). */
async function pause(ms: number): Promise<void> {
  for (const until = clock.now() + ms; !stopped() && clock.now() < until; ) {
    await sleep(Math.min(100, until - clock.now()));
  }
}

/**
 * Writeback's depth is `writeback.jobs` (live, up to 1024: Writeback never has more requests out),
 * not the stripes' originQueueDepth, so a file origin here admits up to that bound.
 * Tests only (PCACHED_TEST_HOOKS=1): this worker's own NBD origin URI, to start it while that is unreachable.
 */
function originSpec(): OriginSpec {
  if (data.origin.kind === 'file') return { ...data.origin, queueDepth: MAX_WRITEBACK_JOBS, directWrites: true };
  const uri = process.env.PCACHED_TEST_HOOKS === '1' ? process.env.PCACHED_TEST_WRITEBACK_ORIGIN : undefined;
  return uri ? { ...data.origin, uri } : data.origin;
}

/** The origin, retried with back-off while it cannot be opened (export unreachable, file missing); null if stopped first. */
async function openOriginPatiently(): Promise<Origin | null> {
  let failed = false;
  const origin = await retryUntilOpen(() => openOrigin(originSpec()), {
    stopped, sleep: pause, backoffMs: BACKOFF_MS,
    onFailure: (err, failures, retryInMs) => {
      failed = true;
      counters.add('wb_origin_open_errors', 1);
      sh.setError(ERR_ORIGIN_IO);
      log.warn({ err: (err as Error).message, failures, retryInMs }, 'writeback cannot open the origin; dirty data kept, retrying');
    },
  });
  if (origin !== null && failed) {
    sh.clearError(ERR_ORIGIN_IO);
    log.info({ origin: origin.description }, 'writeback opened the origin');
  }
  return origin;
}

async function loop(): Promise<void> {
  const dev = FileBlockDevice.open(data.path, { direct: data.direct });
  const origin = await openOriginPatiently().catch((err: unknown) => { dev.close(); throw err; });
  if (origin === null) {
    dev.close();
    return;
  }
  const policy = new WritebackPolicy(clock);
  const total = data.geometry.segmentCount * data.geometry.dataAreaSize;
  const state = (): WritebackState => ({
    headLsn: sh.headLsn, tailLsn: sh.dirtyTail().lsn, dirtyBytes: sh.dirtyBytes, cacheBytes: total,
    highWatermark: sh.highWatermark, lowWatermark: sh.lowWatermark, cleaner: sh.cleaner,
    // The stripes stamp it with Date.now(): a wall clock is the only one threads share.
    writesWaiting: sh.writeBlockedWithin(Date.now(), WRITES_WAITING_MS),
    maxAgeMs: sh.maxAgeMs, foreground: Atomics.load(sh.w, W_FOREGROUND), pauseMs: sh.writebackPauseMs,
    roomy: sh.usedSegments * 100 < sh.gcPercent * data.geometry.segmentCount, rate: sh.writebackRate,
  });
  // PCACHED_WRITEBACK_ORDER=strict: dm-pcache's one kset at a time, for comparison (npm run bench).
  const strict = process.env.PCACHED_WRITEBACK_ORDER === 'strict';
  const wb = new Writeback(dev, sh, data.geometry, origin, {
    batchKsets: strict ? 1 : data.batchKsets, order: strict ? 'strict' : 'epoch', log, clock,
    onInflight: (n) => counters.set('wb_inflight_blocks', n),
    pace: async (bytes, ms) => {
      const due = policy.paceMs(bytes, ms, state());
      if (due > 0) await pause(due); // cut short by a stop: the step then ends after this epoch
    },
  });
  try {
    wakeWord = Atomics.load(sh.w, W_KICK_WB);
    while (!stopped()) {
      const d = policy.next(state());
      if (d.act === 'sleep') {
        // Back-off and pause are not cut short by the log head moving: it moves with every commit.
        await (d.wake ? idle(d.ms) : pause(d.ms));
        continue;
      }
      const before = { ...wb.stats };
      const directBefore = origin.directWrites ?? 0;
      // Counted whether the step succeeds or not: a failed batch may have finished whole epochs.
      const count = (): void => {
        counters.add('wb_ksets', wb.stats.ksets - before.ksets);
        counters.add('wb_keys', wb.stats.keys - before.keys);
        counters.add('wb_bytes', wb.stats.bytes - before.bytes);
        counters.add('wb_origin_syncs', wb.stats.originSyncs - before.originSyncs);
        counters.add('wb_crc_skipped', wb.stats.crcSkipped - before.crcSkipped);
        counters.add('wb_epochs', wb.stats.epochs - before.epochs);
        counters.add('wb_retries', wb.stats.retries - before.retries);
        counters.add('wb_origin_direct_writes', (origin.directWrites ?? 0) - directBefore);
      };
      try {
        const bytes = await wb.step();
        count();
        policy.stepDone(bytes);
      } catch (err) {
        count();
        counters.add('wb_errors', 1);
        if (err instanceof WritebackHalted) {
          policy.stepFailed(true);
          continue;
        }
        sh.setError(ERR_ORIGIN_IO);
        const delay = policy.stepFailed(false);
        log.warn({ err: (err as Error).message, retryInMs: delay, origin: err instanceof OriginIoError }, 'writeback failed; dirty data kept, retrying');
      }
    }
  } finally {
    dev.close();
    await origin.close();
  }
}

export default async function handle(task: { op: 'start' | 'stop' }): Promise<{ ok: true }> {
  if (task.op === 'start') {
    loopDone ??= keepRunning(loop, {
      stopped, sleep: pause, backoffMs: BACKOFF_MS, stableMs: STABLE_MS, now: clock.now,
      onCrash: (err, crashes, retryInMs) => {
        counters.add('wb_restarts', 1);
        log.fatal({ err, crashes, retryInMs }, 'writeback loop failed; restarting it');
      },
    });
    return { ok: true };
  }
  stopping = true;
  Atomics.add(sh.w, W_KICK_WB, 1);
  Atomics.notify(sh.w, W_KICK_WB);
  await loopDone;
  return { ok: true };
}
