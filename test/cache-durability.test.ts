// The rules of src/cache/durability.ts and the pieces that rely on them, one by one: the sync gate
// (serialized, sticky after a failure, `since` for writes made after it), lock owners, dual-slot
// records undone after a failed sync, the stripe journal's half-done appends, dirty_tail durable
// before the next epoch, replay references for keys it does not serve, generation bounds.
// (The crash property in cache-engine.test.ts drives all of it together.)

import test from 'ava';
import { Rng, SimBlockDevice } from '../src/cache/blockdev.js';
import type { BlockDevice } from '../src/cache/blockdev.js';
import { CacheShared, REC_DIRTY_TAIL } from '../src/cache/shared.js';
import { COORDINATOR_OWNER, STRIPE_OWNER, W_SYNC_LOCK, WRITEBACK_OWNER } from '../src/cache/durability.js';
import { KeyJournal } from '../src/cache/journal.js';
import { KEY_DIRTY, type CacheKey } from '../src/cache/kset.js';
import { DIRTY_TAIL_OFFSETS, dataOffset } from '../src/cache/layout.js';
import { decodeRecord, dirtyTailCodec, encodeRecord, readDualSlot, segmentGenCodec, forSegment } from '../src/cache/meta-slots.js';
import { collectLog } from '../src/cache/key-log.js';
import { Writeback } from '../src/cache/writeback.js';
import { FaultyDevice, SimCache, SimOrigin, type SimOptions } from './helpers/sim-cache.js';
import type { Done } from '../src/origin/types.js';

const shared = (): CacheShared => CacheShared.create({
  segmentCount: 8, head: { segment: 0, offset: 0, lsn: 1 }, prevCrc: 0, keyTail: { segment: 0, offset: 0, lsn: 1 },
  dirtyTail: { segment: 0, offset: 0, lsn: 1 }, gcPercent: 70, logReserve: 1,
});

/** A device whose syncs fail while `failing` is set. */
class FlakySync implements BlockDevice {
  failing = false;
  syncs = 0;
  constructor(readonly inner: BlockDevice) {}
  get size(): number { return this.inner.size; }
  pread(b: Uint8Array, o: number): void { this.inner.pread(b, o); }
  pwrite(b: Uint8Array, o: number): void { this.inner.pwrite(b, o); }
  sync(): void { this.syncs++; if (this.failing) throw new Error('EIO'); this.inner.sync(); }
  close(): void {}
}

test('the sync gate: a failed sync fails the device for good; nothing written before it is covered again, writes after it are', (t) => {
  const a = shared();
  const b = new CacheShared(a.sab, WRITEBACK_OWNER);
  const dev = new FlakySync(new SimBlockDevice(1 << 20));
  Atomics.store(a.b, 16, 5n); // head LSN 5
  t.true(a.syncCache(dev));
  t.is(a.durableLsn, 5);
  Atomics.store(a.b, 16, 9n);
  dev.failing = true;
  t.false(b.syncCache(dev));
  t.is(a.failed, 5, 'the device failed (sticky, seen from every thread)');
  dev.failing = false;
  // The next sync succeeds at the device, but proves nothing about what was written before.
  t.false(a.syncCache(dev));
  t.is(a.durableLsn, 5, 'the durable log prefix is frozen');
  // A record written after the failure is covered by a later good sync (the writeback worker's).
  const mark = b.syncMark();
  t.true(b.syncCache(dev, mark));
  dev.failing = true;
  t.false(b.syncCache(dev, b.syncMark()), 'and a failure after the mark is not');
});

test('the sync gate: group commit (a sync that started after the call covers it); a thread never waits on a gate it holds itself', (t) => {
  const a = shared();
  const b = new CacheShared(a.sab, STRIPE_OWNER);
  const dev = new FlakySync(new SimBlockDevice(1 << 20));
  t.true(a.syncCache(dev));
  t.true(b.syncCache(dev));
  t.is(dev.syncs, 2, 'each call after the last sync started needs one');
  // Held by this thread's own asynchronous sync: a synchronous call returns at once, uncovered.
  Atomics.store(a.w, W_SYNC_LOCK, STRIPE_OWNER);
  t.false(b.syncCache(dev));
  t.is(dev.syncs, 2);
  // Held by a thread that died: the coordinator frees it, then syncs go on.
  t.false(a.releaseLocksOf(COORDINATOR_OWNER));
  t.true(a.releaseLocksOf(STRIPE_OWNER));
  t.true(b.syncCache(dev));
});

test('the sync gate, asynchronous: callers queued behind a running sync are covered by the next one, and see its failure', async (t) => {
  const a = shared();
  const pending: (() => void)[] = [];
  const dev: BlockDevice & { fail: boolean } = {
    fail: false, size: 1 << 20,
    pread() {}, pwrite() {}, sync() {}, close() {},
    syncAsync(cb) { pending.push(() => cb(this.fail ? new Error('EIO') : null)); },
  } as BlockDevice & { fail: boolean };
  const s1 = new CacheShared(a.sab, STRIPE_OWNER);
  const s2 = new CacheShared(a.sab, STRIPE_OWNER + 1);
  const waits: (() => void)[] = [];
  s2.gateWaiter = (retry) => waits.push(retry);
  const results: string[] = [];
  s1.syncCacheAsync(dev, (ok) => results.push(`s1 ${ok}`));
  s2.syncCacheAsync(dev, (ok) => results.push(`s2 ${ok}`));
  t.is(pending.length, 1, 'one sync at a time');
  t.is(waits.length, 1);
  pending.shift()!();
  waits.shift()!();
  t.is(pending.length, 1, 's2 needs a sync that started after its call');
  dev.fail = true;
  pending.shift()!();
  t.deepEqual(results, ['s1 true', 's2 false']);
  t.is(a.failed, 5);
  dev.fail = false;
  s1.syncCacheAsync(dev, (ok) => results.push(`s1 again ${ok}`));
  pending.shift()!();
  t.is(results.at(-1), 's1 again false', 'sticky');
});

test('dual-slot records: after a failed sync the next write goes to the same slot, never over the last durable copy', (t) => {
  const sim = new SimBlockDevice(1 << 20);
  const sh = shared();
  const pos = (lsn: number) => ({ segment: 0, offset: 0, lsn });
  const ctx = { salt: 7, segmentCount: 8, dataAreaSize: 1 << 16 };
  sh.writeRecord(sim, REC_DIRTY_TAIL, DIRTY_TAIL_OFFSETS, dirtyTailCodec, pos(10), 7);
  sim.sync();
  // The next write, whose sync fails (and drops it); undone, the retry targets the same slot.
  const undo = sh.writeRecord(sim, REC_DIRTY_TAIL, DIRTY_TAIL_OFFSETS, dirtyTailCodec, pos(20), 7);
  sim.dropPending();
  sh.undoRecord(REC_DIRTY_TAIL, undo);
  sh.writeRecord(sim, REC_DIRTY_TAIL, DIRTY_TAIL_OFFSETS, dirtyTailCodec, pos(30), 7);
  // Whatever a power cut keeps of that last write, the durable copy (lsn 10) or the new one survives.
  for (let seed = 0; seed < 50; seed++) {
    const img = sim.crash(new Rng(seed), { keep: 0.3, torn: 0.4 });
    const got = readDualSlot(img, DIRTY_TAIL_OFFSETS, dirtyTailCodec, ctx).value;
    t.true(got !== null && (got.lsn === 10 || got.lsn === 30), `seed ${seed}: ${JSON.stringify(got)}`);
  }
  // Without the undo, the retry would have gone over the durable slot.
  const slot0 = decodeRecord(dirtyTailCodec, (() => { const b = Buffer.alloc(32); sim.pread(b, DIRTY_TAIL_OFFSETS[0]); return b; })(), ctx);
  t.true(slot0.ok && slot0.value.value.lsn === 10, 'slot 0 still holds the durable copy');
});

test('the stripe journal: a half-done append counts as logged only if the log head reached it', (t) => {
  const key = (i: number): CacheKey => ({ originOffset: i * 4096, length: 4096, flags: KEY_DIRTY, segment: 1, offset: i * 4096, generation: 3, dataCrc: i });
  const j = KeyJournal.create(16);
  for (let i = 0; i < 5; i++) j.push(key(i));
  t.is(j.pending, 5);
  j.beginAppend(3, 42);
  // The writer died before the head moved: all five are still pending.
  t.deepEqual(new KeyJournal(j.sab).recover(41).map((k) => k.dataCrc), [0, 1, 2, 3, 4]);
  j.beginAppend(3, 42);
  // It died after: the first three are in the log.
  t.deepEqual(new KeyJournal(j.sab).recover(42).map((k) => k.dataCrc), [3, 4]);
  t.true(j.room(14));
  t.false(j.room(15));
  for (let i = 0; i < 14; i++) j.push(key(i));
  t.throws(() => j.push(key(99)), { message: /full/ });
});

test('segment generations beyond what the Int32 array holds are refused as damaged', (t) => {
  const codec = forSegment(segmentGenCodec, 3);
  const ctx = { salt: 1, segmentCount: 8, dataAreaSize: 1 << 16, segment: 3 };
  t.true(decodeRecord(codec, encodeRecord(codec, 1, 0x7ffffffe, 1), ctx).ok);
  const r = decodeRecord(codec, encodeRecord(codec, 1, 0x80000000, 1), ctx);
  t.false(r.ok);
});

const OPTS: SimOptions = { originSize: 4 << 20, segmentSize: 64 << 10, segments: 24, stripes: 1, dataCrc: true, gcPercent: 90 };

async function settle(cache: SimCache, fn: (done: Done) => void): Promise<number> {
  let result = -1;
  fn((e) => { result = e; });
  for (let i = 0; result < 0 && i < 1000; i++) await cache.background(10, false);
  return result;
}

test('writeback: dirty_tail is durable on the cache device before the next epoch reaches the origin', async (t) => {
  const sim = new SimBlockDevice(SimCache.deviceBytes(OPTS));
  const origin = new SimOrigin(OPTS.originSize);
  const cache = new SimCache(new FaultyDevice(sim, Infinity), origin, OPTS);
  for (let e = 1; e <= 5; e++) {
    for (let b = 0; b < 8; b++) t.is(await settle(cache, (d) => cache.write((e * 3 + b) * 4096, Buffer.alloc(4096, e), false, d)), 0);
    t.is(await settle(cache, (d) => cache.flush(d)), 0);
  }
  const sh = cache.opened.shared;
  const wb = new Writeback(cache.dev, sh, cache.opened.geometry, origin, { batchKsets: 64 });
  // After each epoch of a window, a power cut that keeps nothing unsynced still finds the tail there.
  let checked = 0;
  origin.afterWrite = () => {
    const img = sim.crash(new Rng(checked++), { keep: 0, torn: 0 });
    const ctx = { salt: cache.opened.geometry.salt, segmentCount: cache.opened.geometry.segmentCount, dataAreaSize: cache.opened.geometry.dataAreaSize };
    const onMedia = readDualSlot(img, DIRTY_TAIL_OFFSETS, dirtyTailCodec, ctx).value!;
    // The origin is being written past dirty_tail in memory: the media may not be behind it.
    if (onMedia.lsn < sh.dirtyTail().lsn) t.fail(`dirty tail on the media ${onMedia.lsn}, in memory ${sh.dirtyTail().lsn}`);
  };
  await wb.step();
  t.true(checked > 4);
  t.false(wb.pending);
});

test('replay: a data key dropped for a bad data CRC still holds its reference, so GC does not free the segment under the other keys', async (t) => {
  const sim = new SimBlockDevice(SimCache.deviceBytes(OPTS));
  const cache = new SimCache(new FaultyDevice(sim, Infinity), new SimOrigin(OPTS.originSize), OPTS);
  for (let b = 0; b < 4; b++) t.is(await settle(cache, (d) => cache.write(b * 4096, Buffer.alloc(4096, b + 1), false, d)), 0);
  t.is(await settle(cache, (d) => cache.flush(d)), 0);
  const keys = collectLog(cache.opened.state).ksets.flatMap((k) => k.keys);
  t.is(keys.length, 4);
  const seg = keys[0]!.segment;
  t.true(keys.every((k) => k.segment === seg));
  // Bit rot in the first key's data, at rest.
  const at = dataOffset(seg, keys[0]!.offset, OPTS.segmentSize);
  const buf = Buffer.alloc(1);
  sim.pread(buf, at);
  sim.pwrite(Buffer.from([buf[0]! ^ 1]), at);
  sim.sync();
  const again = new SimCache(new FaultyDevice(sim.crash(new Rng(1), { keep: 1 }), Infinity), new SimOrigin(OPTS.originSize), OPTS);
  t.is(again.opened.report.crcErrors, 1);
  t.is(Atomics.load(again.opened.shared.refs, seg), 4, 'one reference per live key, served or not');
});
