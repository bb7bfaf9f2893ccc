// Writeback worker: one thread per cache (a piscina pool of one), following the key log from
// dirty_tail to the origin. It wakes when the log head moves (a shared word) or once a second,
// backs off on origin errors, and stops after its current batch. An origin that cannot be opened
// at start is retried with back-off, and a loop that throws is restarted: the thread never stops
// writing back for good while the daemon runs.

import { workerData } from 'piscina';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { CacheShared, ERR_ORIGIN_IO, W_FOREGROUND, W_KICK_WB } from '../src/cache/shared.js';
import { WRITEBACK_OWNER } from '../src/cache/durability.js';
import { Writeback, WritebackHalted, OriginIoError } from '../src/cache/writeback.js';
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
const BACKOFF_MS = [100, 250, 500, 1000, 2000, 5000];
const IDLE_MS = 1000;
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
  for (const until = performance.now() + ms; !stopped() && performance.now() < until; ) {
    await sleep(Math.min(100, until - performance.now()));
  }
}

/**
 * Writeback's depth is `writeback.jobs` (live, up to 1024: Writeback never has more requests out),
 * not the stripes' originQueueDepth, so a file origin here admits up to that bound.
 * Tests only (PCACHED_TEST_HOOKS=1): this worker's own NBD origin URI, to start it while that is unreachable.
 */
function originSpec(): OriginSpec {
  if (data.origin.kind === 'file') return { ...data.origin, queueDepth: MAX_WRITEBACK_JOBS };
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
  // PCACHED_WRITEBACK_ORDER=strict: dm-pcache's one kset at a time, for comparison (npm run bench).
  const strict = process.env.PCACHED_WRITEBACK_ORDER === 'strict';
  const wb = new Writeback(dev, sh, data.geometry, origin, {
    batchKsets: strict ? 1 : data.batchKsets, order: strict ? 'strict' : 'epoch', log, onInflight: (n) => counters.set('wb_inflight_blocks', n),
    pace: async (bytes, ms) => {
      const rate = sh.writebackRate;
      if (rate <= 0 || urgency() !== null) return;
      const due = (bytes / rate) * 1000 - ms;
      if (due > 1) await sleep(Math.min(due, 5000));
    },
  });
  // Ages of dirty data: when the log head was first seen past each sequence number (sampled every
  // turn of this loop, at least every 100 ms while paused and every second idle), for maxAgeMs.
  const headSeen: { lsn: number; at: number }[] = [];
  const sampleHead = (): void => {
    const h = sh.headLsn;
    const last = headSeen[headSeen.length - 1];
    if (!last || last.lsn < h) headSeen.push({ lsn: h, at: performance.now() });
    const tail = sh.dirtyTail().lsn;
    // Drop samples the dirty tail has passed (keep the one covering it).
    while (headSeen.length > 1 && headSeen[1]!.lsn <= tail) headSeen.shift();
  };
  /** Age in ms of the oldest dirty kset: logged at or after the first sample whose head passed it. */
  const oldestDirtyAge = (): number => {
    const tail = sh.dirtyTail().lsn;
    if (tail >= sh.headLsn) return 0;
    // The first sample whose head is past the tail: the tail's kset was in the log by then.
    for (const x of headSeen) if (x.lsn > tail) return performance.now() - x.at;
    return 0;
  };
  let aboveHigh = false;
  /**
   * Why writeback must run at full speed now (no pause, no rate limit), or null: dirty blocks past
   * highWatermark (until back to lowWatermark), writes waiting for space, the cleaner, or dirty
   * data older than maxAgeMs. (A switch to a mode that does not cache writes drains at the normal
   * pace, as in bcache; the cleaner is the way to drain now.)
   */
  const urgency = (): string | null => {
    const total = data.geometry.segmentCount * (data.geometry.dataAreaSize / 4096);
    const dirtyPct = (100 * sh.dirtyBytes) / 4096 / total;
    if (dirtyPct >= sh.highWatermark) aboveHigh = true;
    else if (dirtyPct <= sh.lowWatermark) aboveHigh = false;
    if (aboveHigh) return 'high watermark';
    if (sh.writeBlockedWithin(Date.now(), 1000)) return 'writes waiting for space';
    if (sh.cleaner) return 'cleaner';
    const maxAge = sh.maxAgeMs;
    if (maxAge > 0 && oldestDirtyAge() >= maxAge) return 'max age';
    return null;
  };
  let failures = 0;
  try {
    wakeWord = Atomics.load(sh.w, W_KICK_WB);
    let fgSeen = Atomics.load(sh.w, W_FOREGROUND);
    let fgAt = 0;
    while (!stopping && !sh.stopping) {
      // dm-writecache's pause_writeback: recent foreground writes and room to spare → wait.
      const fg = Atomics.load(sh.w, W_FOREGROUND);
      if (fg !== fgSeen) { fgSeen = fg; fgAt = performance.now(); }
      sampleHead();
      const pauseMs = sh.writebackPauseMs;
      const roomy = sh.usedSegments * 100 < sh.gcPercent * data.geometry.segmentCount;
      if (pauseMs > 0 && roomy && performance.now() - fgAt < pauseMs && wb.pending && urgency() === null) {
        await sleep(Math.min(100, pauseMs));
        continue;
      }
      let bytes = 0;
      const before = { ...wb.stats };
      // Counted whether the step succeeds or not: a failed batch may have finished whole epochs.
      const count = (): void => {
        counters.add('wb_ksets', wb.stats.ksets - before.ksets);
        counters.add('wb_keys', wb.stats.keys - before.keys);
        counters.add('wb_bytes', wb.stats.bytes - before.bytes);
        counters.add('wb_origin_syncs', wb.stats.originSyncs - before.originSyncs);
        counters.add('wb_crc_skipped', wb.stats.crcSkipped - before.crcSkipped);
        counters.add('wb_epochs', wb.stats.epochs - before.epochs);
        counters.add('wb_retries', wb.stats.retries - before.retries);
      };
      try {
        bytes = await wb.step();
        count();
        failures = 0;
      } catch (err) {
        count();
        if (err instanceof WritebackHalted) {
          counters.add('wb_errors', 1);
          await idle(IDLE_MS * 5);
          continue;
        }
        counters.add('wb_errors', 1);
        sh.setError(ERR_ORIGIN_IO);
        const delay = BACKOFF_MS[Math.min(failures++, BACKOFF_MS.length - 1)]!;
        log.warn({ err: (err as Error).message, retryInMs: delay, origin: err instanceof OriginIoError }, 'writeback failed; dirty data kept, retrying');
        await sleep(delay);
        continue;
      }
      if (bytes === 0) {
        await idle(IDLE_MS);
        continue;
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
      stopped, sleep: pause, backoffMs: BACKOFF_MS, stableMs: STABLE_MS, now: () => performance.now(),
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
