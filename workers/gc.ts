// GC worker: one thread per cache, retiring ksets behind dirty_tail when segment use reaches
// gc_percent. It wakes when dirty_tail moves or gc_percent changes (a shared word), or once a
// second. With nothing to collect, it initializes the unwritten parts of a fresh cache file
// (src/cache/initializer.ts), one segment per turn.

import { workerData } from 'piscina';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { CacheShared, W_KICK_GC } from '../src/cache/shared.js';
import { GC_OWNER } from '../src/cache/durability.js';
import { Gc } from '../src/cache/gc.js';
import { SegmentInitializer } from '../src/cache/initializer.js';
import { CounterBlock, CACHE_WORKER_COUNTERS } from '../src/stats/counters.js';
import { createLogger } from '../src/daemon/logger.js';
import type { CacheWorkerData } from './writeback.js';

const data = workerData as CacheWorkerData;
const log = createLogger({ level: data.logLevel as 'info', name: 'gc' });
const sh = new CacheShared(data.shared, GC_OWNER);
const counters = new CounterBlock(CACHE_WORKER_COUNTERS, data.counters);
const IDLE_MS = 1000;

let stopping = false;
let loopDone: Promise<void> | null = null;

async function loop(): Promise<void> {
  const dev = FileBlockDevice.open(data.path, { direct: data.direct });
  const gc = new Gc(dev, sh, data.geometry, { batchKsets: data.batchKsets, log });
  const init = new SegmentInitializer(dev, sh, data.geometry);
  const initStarted = Date.now();
  counters.set('init_segments_left', init.left);
  try {
    let seen = Atomics.load(sh.w, W_KICK_GC);
    while (!stopping && !sh.stopping) {
      let n = 0;
      try {
        const before = gc.stats.segmentsFreed;
        n = gc.step();
        counters.add('gc_ksets', n);
        counters.add('gc_segments_freed', gc.stats.segmentsFreed - before);
      } catch (err) {
        counters.add('gc_errors', 1);
        log.error({ err }, 'gc step failed');
      }
      if (n === 0 && !init.done) {
        try {
          counters.add('init_bytes', init.step());
          counters.set('init_segments_left', init.left);
        } catch (err) {
          init.done = true;
          counters.set('init_segments_left', 0);
          log.warn({ err }, 'cache file initialization stopped; writes into its unwritten parts stay slower');
        }
        if (init.done) log.info({ segments: init.segmentsZeroed, bytes: init.bytesZeroed, ms: Date.now() - initStarted }, 'cache file initialized');
        n = 1;
      }
      if (n > 0) {
        // Let the event loop breathe between batches (task messages, stop).
        await new Promise((r) => setImmediate(r));
        continue;
      }
      const w = Atomics.waitAsync(sh.w, W_KICK_GC, seen, IDLE_MS);
      if (w.async) await w.value;
      seen = Atomics.load(sh.w, W_KICK_GC);
    }
  } finally {
    dev.close();
  }
}

export default async function handle(task: { op: 'start' | 'stop' }): Promise<{ ok: true }> {
  if (task.op === 'start') {
    if (!loopDone) loopDone = loop().catch((err) => { log.fatal({ err }, 'gc worker failed'); });
    return { ok: true };
  }
  stopping = true;
  Atomics.add(sh.w, W_KICK_GC, 1);
  Atomics.notify(sh.w, W_KICK_GC);
  await loopDone;
  return { ok: true };
}
