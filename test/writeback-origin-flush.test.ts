// Writeback's rule for an origin flush that fails: never retried in place (a retry succeeds
// without the data the failed flush dropped), so the group fails, dirty_tail stays, and the next
// step writes everything since dirty_tail again before it flushes again. In-process: the engine
// over the simulated cache device (test/helpers/sim-cache.ts) and an origin with a volatile write
// cache whose flushes can fail and drop what they were to make durable (Linux after a writeback
// error, reference/devices.md).

import test from 'ava';
import { SimBlockDevice } from '../src/cache/blockdev.js';
import { Writeback, OriginIoError, type WritebackOptions, type WritebackOrder } from '../src/cache/writeback.js';
import { NbdErr } from '../src/nbd/constants.js';
import type { Done, ZeroFlags } from '../src/origin/types.js';
import { FaultyDevice, MemOrigin, SimCache, type SimOptions } from './helpers/sim-cache.js';

const KiB = 1024;

/** `data` is what the origin shows; `durable` what a power cut would leave. */
class ForgetfulOrigin extends MemOrigin {
  readonly durable: Buffer;
  /** Flushes (numbered from 1) that fail with EIO and drop every write not yet flushed. */
  readonly failOn = new Set<number>();
  flushes = 0;
  failedFlushes = 0;
  #unflushed: [number, number][] = [];

  constructor(size: number) {
    super(size);
    this.durable = Buffer.alloc(size);
  }

  override write(off: number, src: Uint8Array, fua: boolean, cb: Done): void {
    super.write(off, src, fua, (e) => { if (e === 0) this.#changed(off, src.length, fua); cb(e); });
  }

  override trim(off: number, len: number, fua: boolean, cb: Done): void {
    super.trim(off, len, fua, (e) => { if (e === 0) this.#changed(off, len, fua); cb(e); });
  }

  override zero(off: number, len: number, f: ZeroFlags, cb: Done): void {
    super.zero(off, len, f, (e) => { if (e === 0) this.#changed(off, len, f.fua); cb(e); });
  }

  override flush(cb: Done): void {
    this.flushes++;
    const pending = this.#unflushed;
    this.#unflushed = [];
    if (this.failOn.has(this.flushes)) {
      this.failedFlushes++;
      for (const [off, len] of pending) this.durable.copy(this.data, off, off, off + len);
      cb(NbdErr.EIO);
      return;
    }
    for (const [off, len] of pending) this.data.copy(this.durable, off, off, off + len);
    cb(0);
  }

  #changed(off: number, len: number, fua: boolean): void {
    if (fua) this.data.copy(this.durable, off, off, off + len);
    else this.#unflushed.push([off, len]);
  }
}

const OPTS: SimOptions = { originSize: 4 << 20, segmentSize: 64 << 10, segments: 24, stripes: 2, dataCrc: false, gcPercent: 90 };

function stamp(epoch: number, block: number): Buffer {
  const b = Buffer.alloc(4 * KiB, (epoch * 37 + block) & 0xff);
  b.writeUInt32LE(epoch, 0);
  b.writeUInt32LE(block, 4);
  return b;
}

async function scenario(order: WritebackOrder, failOn: number[], extra: (sh: SimCache['opened']['shared']) => Partial<WritebackOptions> = () => ({})) {
  const origin = new ForgetfulOrigin(OPTS.originSize);
  for (const n of failOn) origin.failOn.add(n);
  const cache = new SimCache(new FaultyDevice(new SimBlockDevice(SimCache.deviceBytes(OPTS)), Infinity), origin, OPTS);
  const sh = cache.opened.shared;
  const wb = new Writeback(cache.dev, sh, cache.opened.geometry, origin, { batchKsets: order === 'strict' ? 1 : 64, order, concurrency: 4, ...extra(sh) });
  const settle = async (fn: (done: Done) => void): Promise<number> => {
    let result = -1;
    fn((e) => { result = e; });
    for (let i = 0; result < 0 && i < 1000; i++) await cache.background(10, false);
    if (result < 0) throw new Error('operation did not complete');
    return result;
  };

  // Six epochs of 16 blocks each, the later ones overwriting half of the one before; the log
  // position after each epoch's FLUSH says when dirty_tail has passed it.
  const expected = Buffer.alloc(OPTS.originSize);
  const epochEnds: { lsn: number; image: Buffer }[] = [];
  for (let e = 1; e <= 6; e++) {
    for (let i = 0; i < 16; i++) {
      const block = (e - 1) * 8 + i;
      const data = stamp(e, block);
      if (await settle((d) => cache.write(block * 4 * KiB, data, false, d))) throw new Error('write failed');
      data.copy(expected, block * 4 * KiB);
    }
    if (await settle((d) => cache.flush(d))) throw new Error('flush failed');
    epochEnds.push({ lsn: sh.headLsn, image: Buffer.from(expected) });
  }

  // Whenever dirty_tail has passed an epoch, the origin's durable image must hold it: every
  // block as of that epoch or a later one (never older, never missing).
  const violations: string[] = [];
  const blockOf = (img: Buffer, b: number): Buffer => img.subarray(b * 4 * KiB, (b + 1) * 4 * KiB);
  const check = (): void => {
    const tail = sh.dirtyTail().lsn;
    for (const [e, end] of epochEnds.entries()) {
      if (tail < end.lsn) break;
      for (let b = 0; b < 6 * 8 + 8; b++) {
        const got = blockOf(origin.durable, b);
        if (!epochEnds.slice(e).some((later) => got.equals(blockOf(later.image, b)))) violations.push(`dirty_tail passed epoch ${e + 1}, block ${b} not durable`);
      }
    }
  };
  let failures = 0;
  for (let steps = 0; wb.pending && steps < 100; steps++) {
    try {
      await wb.step();
    } catch (err) {
      if (!(err instanceof OriginIoError)) throw err;
      failures++;
    }
    check();
  }
  return { origin, expected, violations, failures, pending: wb.pending, stats: wb.stats };
}

for (const order of ['epoch', 'strict'] as const) {
  test(`${order} order: a failed origin flush fails the group; the data is written again and dirty_tail never passes what is not durable`, async (t) => {
    // The first flush fails, and one in the middle.
    const r = await scenario(order, [1, 4]);
    t.deepEqual(r.violations.slice(0, 5), []);
    t.true(r.origin.durable.equals(r.expected), 'the durable origin holds every block in its newest version');
    t.is(r.origin.failedFlushes, 2, 'both injected flush failures happened');
    t.is(r.failures, 2, 'each failed its step');
    t.false(r.pending, 'everything written back in the end');
    t.is(r.stats.retries, 0, 'no origin request (flush or write) was retried in place');
  });
}

test('without failures the same scenario needs no rewrite (the check itself holds)', async (t) => {
  const r = await scenario('epoch', []);
  t.is(r.failures, 0);
  t.deepEqual(r.violations, []);
  t.true(r.origin.durable.equals(r.expected));
});

test('one walk, two boundaries: epoch order syncs the origin once per FLUSH epoch, strict order once per kset', async (t) => {
  // A commit every 4 blocks: several ksets per epoch.
  const small = (sh: SimCache['opened']['shared']): Partial<WritebackOptions> => { sh.setTunables({ autocommitBlocks: 4 }); return {}; };
  const epoch = await scenario('epoch', [], small);
  const strict = await scenario('strict', [], small);
  t.true(epoch.origin.durable.equals(epoch.expected) && strict.origin.durable.equals(strict.expected));
  t.deepEqual(strict.violations, []);
  t.is(epoch.stats.originSyncs, 6, 'six FLUSHes, six epochs');
  t.true(strict.stats.ksets > 6, `${strict.stats.ksets} ksets`);
  t.is(strict.stats.epochs, strict.stats.ksets, 'strict: every kset its own epoch');
  t.is(strict.origin.flushes, strict.stats.originSyncs);
  t.true(strict.stats.originSyncs > epoch.stats.originSyncs);
});

test('a stop ends the step after the epoch in progress, not after the window', async (t) => {
  let paced = 0;
  // pace runs after each epoch: the stop comes while the first window has more to do.
  const r = await scenario('epoch', [], (sh) => ({ pace: async () => { if (++paced === 2) sh.stop(); } }));
  t.is(paced, 2);
  t.is(r.stats.epochs, 2, 'the step ended after the second epoch');
  t.true(r.pending, 'the rest stays dirty for the next start');
  t.deepEqual(r.violations, []);
});
