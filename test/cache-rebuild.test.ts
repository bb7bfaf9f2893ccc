// A stripe thread respawned after dying inside an index mutation rebuilds the half-edited subtrees
// from the key log (src/cache/rebuild.ts). The crash property found that a cache read error during
// that walk escaped the engine's constructor: in the daemon the new stripe thread died at start,
// piscina respawned it into the same read, and the volume never came back. A read error must make
// the cache fail (durable data still served by the rest, writes refused) instead.

import test from 'ava';
import { SimBlockDevice } from '../src/cache/blockdev.js';
import { SimCache, FaultyDevice, SimOrigin, type SimOptions } from './helpers/sim-cache.js';
import { NO_FAULTS } from './helpers/sim-devices.js';
import { FAIL_REPLAY } from '../src/cache/durability.js';

const OPTS: SimOptions = { originSize: 8 << 20, segmentSize: 64 << 10, segments: 24, stripes: 1, dataCrc: false, gcPercent: 50 };

function op(cache: SimCache, start: (done: (errno: number) => void) => void): number {
  let result: number | null = null;
  start((e) => { result = e; });
  cache.runIo();
  if (result === null) throw new Error('operation did not complete');
  return result;
}

/** A cache whose log holds flushed keys for the first subtree, read back once to check. */
function cacheWithLoggedWrites(): { cache: SimCache; dev: FaultyDevice; data: Buffer } {
  const dev = new FaultyDevice(new SimBlockDevice(SimCache.deviceBytes(OPTS)), Infinity);
  const cache = new SimCache(dev, new SimOrigin(OPTS.originSize), OPTS);
  const data = Buffer.alloc(64 << 10);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  const results: number[] = [];
  for (let off = 0; off < data.length; off += 4096) cache.write(off, data.subarray(off, off + 4096), false, (e) => results.push(e));
  // The flush ends the batch: the writes are acknowledged with it.
  if (op(cache, (d) => cache.flush(d)) !== 0) throw new Error('flush failed');
  if (results.length !== data.length / 4096 || results.some((e) => e !== 0)) throw new Error(`writes: ${results.join()}`);
  return { cache, dev, data };
}

test('a respawned stripe rebuilds its half-edited subtree from the log and serves the data', (t) => {
  const { cache, data } = cacheWithLoggedWrites();
  cache.kill(0, 0);
  t.true(cache.rebuilt > 0, 'the death left a subtree to rebuild');
  t.is(cache.opened.shared.failed, 0);
  const back = Buffer.alloc(data.length);
  t.is(op(cache, (d) => cache.read(0, back, d)), 0);
  t.true(back.equals(data));
});

test('a cache read error while a respawned stripe rebuilds its index fails the cache instead of escaping', (t) => {
  const { cache, dev } = cacheWithLoggedWrites();
  dev.faults = { ...NO_FAULTS, readFail: 1 };
  t.notThrows(() => cache.kill(0, 0));
  t.true(cache.rebuilt > 0);
  t.true(dev.counts.readFails > 0, 'the walk read the device and failed');
  t.not(cache.opened.shared.failed, 0, 'the cache has failed');
  t.is(cache.opened.shared.failedWhy, FAIL_REPLAY);
  // Refused, not served from the emptied subtree (which would be the origin's older data).
  dev.faults = NO_FAULTS;
  let errno: number | null = null;
  cache.write(0, Buffer.alloc(4096, 1), false, (e) => { errno = e; });
  t.not(op(cache, (d) => cache.flush(d)), 0);
  t.true(errno !== null && errno !== 0, `the write got ${String(errno)}`);
});
