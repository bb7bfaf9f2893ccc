// The engine's crash-consistency property, in-process over simulated devices (see
// test/helpers/sim-cache.ts): random write/trim/zero/read/flush/FUA/background sequences with
// power cuts between and inside operations, and devices that fail the way real ones do: cache
// syncs that fail and drop what was not synced (Linux after a writeback error), cache reads and
// writes that fail, stripe threads that die (with commit rounds in flight) and are respawned, an
// origin with a volatile write cache that the same power cut hits and whose flushes fail, and
// unsynced writes that come out of a power cut corrupted. After every power cut the whole volume
// must hold only versions the model allows (every flushed write there, nothing torn or never
// written) and the origin alone must be epoch-prefix consistent; while running, every
// acknowledged write reads back; a final drain must leave the origin equal to the volume.

import test from 'ava';
import { simRun, type RunResult, type SimOptions } from './helpers/sim-cache.js';
import { simCounters } from './helpers/sim-devices.js';

const BASE: SimOptions = { originSize: 8 << 20, segmentSize: 64 << 10, segments: 24, stripes: 2, dataCrc: false, gcPercent: 50 };
const FAULTS = { syncFail: 0.4, writeFail: 0.06, readFail: 0.06 };

const variants: [string, Partial<SimOptions>, number][] = [
  ['two stripes', {}, 3],
  ['one stripe, gc 0', { stripes: 1, gcPercent: 0 }, 3],
  ['three stripes, gc 90, tiny cache', { stripes: 3, gcPercent: 90, segments: 12, originSize: 12 << 20 }, 4],
  ['dataCrc', { dataCrc: true }, 3],
  ['modes switched online', { modes: true }, 4],
  ['modes switched online, one stripe, gc 0', { modes: true, stripes: 1, gcPercent: 0 }, 4],
  ['cache device faults: failed syncs drop unsynced writes, failed reads and writes', { faults: FAULTS }, 4],
  ['stripe threads die and are respawned', { respawn: 0.1 }, 4],
  ['one power cut hits a volatile origin too; origin flushes fail', { volatileOrigin: true, originFlushFail: 0.5 }, 4],
  ['unsynced writes corrupted by power cuts, dataCrc', { corrupt: 0.8, dataCrc: true }, 3],
  ['asynchronous origin (answers later, as the file origin does)', { asyncOrigin: true }, 3],
  ['asynchronous origin, modes switched online, volatile origin whose flushes fail, stripe deaths', { asyncOrigin: true, modes: true, volatileOrigin: true, originFlushFail: 0.3, respawn: 0.05 }, 4],
  ['cache read hits answered later (direct I/O through the async seam), GC at 0', { asyncReads: true, gcPercent: 0 }, 3],
  ['cache read hits answered later, asynchronous origin, cache device faults, modes switched, stripe deaths', { asyncReads: true, asyncOrigin: true, faults: FAULTS, modes: true, respawn: 0.05 }, 4],
  ['data runs written asynchronously (direct I/O), completions out of order', { asyncWrites: true }, 3],
  ['data runs written asynchronously, cache device faults, gc 0', { asyncWrites: true, faults: FAULTS, gcPercent: 0 }, 4],
  ['asynchronous data runs and read hits, asynchronous origin, modes switched, stripe deaths', { asyncWrites: true, asyncReads: true, asyncOrigin: true, modes: true, respawn: 0.05 }, 4],
  ['asynchronous data runs and read hits, faults, volatile origin, three stripes', { asyncWrites: true, asyncReads: true, faults: FAULTS, volatileOrigin: true, originFlushFail: 0.3, stripes: 3 }, 4],
  ['strict writeback order (an epoch every 2 ksets too), volatile origin whose flushes fail', { order: 'strict', volatileOrigin: true, originFlushFail: 0.3 }, 3],
  ['everything at once, modes switched, three stripes', { modes: true, stripes: 3, respawn: 0.05, faults: FAULTS, volatileOrigin: true, originFlushFail: 0.3, corrupt: 0.4 }, 4],
];

const ZERO: RunResult = { crashes: 0, ops: 0, flushes: 0, bypasses: 0, segmentsFreed: 0, syncFails: 0, writeFails: 0, readFails: 0, deviceFailures: 0, respawns: 0, originFlushFails: 0, corrupted: 0, evictions: 0, rebuilds: 0, lateAnswers: 0 };
const total: RunResult = { ...ZERO };
const faultsOf = (r: RunResult): number => r.syncFails + r.writeFails + r.readFails + r.respawns + r.originFlushFails + r.corrupted;

for (const [name, v, seeds] of variants) {
  // Serial: each finishes on its own (the runs are CPU-bound; run together, none would finish for minutes).
  test.serial(`crash property: ${name}`, async (t) => {
    const opts = { ...BASE, ...v };
    const sum: RunResult = { ...ZERO };
    const lateReads0 = simCounters.lateReads;
    const lateWrites0 = simCounters.lateWrites;
    const reordered0 = simCounters.reorderedWrites;
    for (let i = 0; i < seeds; i++) {
      const seed = (0x5eed0000 + name.length * 1000 + i) >>> 0;
      const r = await simRun(seed, opts, 300, 8);
      for (const k of Object.keys(sum) as (keyof RunResult)[]) sum[k] += r[k];
    }
    for (const k of Object.keys(total) as (keyof RunResult)[]) total[k] += sum[k];
    t.log(`${sum.crashes} power cuts; faults: ${sum.syncFails} failed syncs, ${sum.writeFails} failed writes, ${sum.readFails} failed reads, ` +
      `${sum.deviceFailures} device failures, ${sum.respawns} stripe deaths (${sum.rebuilds} mid-mutation, index rebuilt), ${sum.originFlushFails} failed origin flushes, ${sum.corrupted} corrupted writes, ${sum.evictions} evictions${v.asyncOrigin ? `, ${sum.lateAnswers} origin operations answered later` : ''}`);
    t.true(sum.crashes > 100);
    // A faulty variant that injected nothing would test nothing.
    if (v.faults) t.true(sum.syncFails > 0 && sum.writeFails > 0 && sum.readFails > 0 && sum.deviceFailures > 0 && sum.evictions > 0);
    if (v.respawn) t.true(sum.respawns > 20 && sum.rebuilds > 5);
    if (v.originFlushFail) t.true(sum.originFlushFails > 10);
    if (v.corrupt) t.true(sum.corrupted > 50);
    if (v.asyncReads) t.true(simCounters.lateReads - lateReads0 > 20, `${simCounters.lateReads - lateReads0} cache reads answered later`);
    if (v.asyncWrites) {
      t.true(simCounters.lateWrites - lateWrites0 > 20, `${simCounters.lateWrites - lateWrites0} data runs written later`);
      t.true(simCounters.reorderedWrites - reordered0 > 5, `${simCounters.reorderedWrites - reordered0} data runs completed out of order`);
    }
    if (v.asyncOrigin) t.true(sum.lateAnswers > 1000, `${sum.lateAnswers} origin operations answered later`);
  });
}

test.after('at least 1000 power cuts and 1000 injected faults in all', () => {
  // ava's after hooks cannot assert; a shortfall fails the run loudly instead.
  if (total.crashes < 1000) throw new Error(`only ${total.crashes} simulated power cuts; the bar is 1000`);
  if (faultsOf(total) < 1000) throw new Error(`only ${faultsOf(total)} injected faults; the bar is 1000`);
  console.log(`# crash property: ${total.crashes} power cuts, ${faultsOf(total)} injected faults (${total.syncFails} failed syncs, ${total.writeFails} failed writes, ` +
    `${total.readFails} failed reads, ${total.respawns} stripe deaths, ${total.originFlushFails} failed origin flushes, ${total.corrupted} corrupted writes), ${total.ops} operations`);
});
