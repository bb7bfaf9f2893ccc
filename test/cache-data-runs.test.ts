// The ordering rules of asynchronous data runs (src/cache/data-runs.ts), one by one, on a device
// whose writes complete only when the test says so: runs completing out of order still take
// effect in the order they were issued; acknowledgements wait for their run and every run before
// it; a failed run gives back its own allocations and fails the writes waiting on runs; an
// in-order step (a TRIM's key) waits behind runs in flight; a run whose segment generation moved
// on while it was in flight is not indexed; the queue depth bounds what is in flight.
// (The crash property in cache-engine.test.ts drives all of it together under power cuts.)

import test from 'ava';
import { SimBlockDevice, type BlockDevice } from '../src/cache/blockdev.js';
import { CacheShared } from '../src/cache/shared.js';
import { DataRuns, RUN_STRIDE, type RunSink } from '../src/cache/data-runs.js';
import { dataAreaSize } from '../src/cache/layout.js';
import type { Geometry } from '../src/cache/log.js';

const SEG = 1 << 20;

interface Pending { bufs: readonly Uint8Array[]; off: number; cb: (err: Error | null) => void }

/** Writes asynchronously; nothing completes until complete(i) or fail(i). */
class HeldDevice implements BlockDevice {
  readonly inner = new SimBlockDevice(16 * SEG);
  readonly pending: (Pending | null)[] = [];
  syncWrites = 0;
  get size(): number { return this.inner.size; }
  pread(b: Uint8Array, o: number): void { this.inner.pread(b, o); }
  pwrite(b: Uint8Array, o: number): void { this.syncWrites++; this.inner.pwrite(b, o); }
  sync(): void { this.inner.sync(); }
  close(): void {}
  writevAsync(bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void): void {
    this.pending.push({ bufs, off, cb });
  }
  complete(i: number): void {
    const p = this.pending[i]!;
    this.pending[i] = null;
    let at = p.off;
    for (const b of p.bufs) { this.inner.pwrite(b, at); at += b.length; }
    p.cb(null);
  }
  fail(i: number): void {
    const p = this.pending[i]!;
    this.pending[i] = null;
    p.cb(Object.assign(new Error('EIO'), { code: 'EIO' }));
  }
}

interface Rig {
  dev: HeldDevice;
  sh: CacheShared;
  runs: DataRuns;
  /** What the sink saw, in order: `commit:<origin offset>`, `abort:<origin offset>`, `run`, `failed`, `acks`. */
  events: string[];
}

function rig(depth = 32, failDevice = true, idle: () => boolean = () => false): Rig {
  const sh = CacheShared.create({
    segmentCount: 8, head: { segment: 0, offset: 0, lsn: 1 }, prevCrc: 0, keyTail: { segment: 0, offset: 0, lsn: 1 },
    dirtyTail: { segment: 0, offset: 0, lsn: 1 }, gcPercent: 70, logReserve: 1,
  });
  const g: Geometry = { salt: 1, segmentSize: SEG, segmentCount: 8, dataAreaSize: dataAreaSize(SEG), originSize: 64 * SEG, dataCrc: false };
  const dev = new HeldDevice();
  const events: string[] = [];
  const sink: RunSink = {
    commit: (p, i) => { events.push(`commit:${p[i]!}`); },
    abort: (p, i) => { events.push(`abort:${p[i]!}`); },
    afterRun: () => { events.push('run'); },
    afterAcks: () => { events.push('acks'); },
    // As the engine does: a data write that failed fails the cache device.
    writeFailed: () => { events.push('failed'); if (failDevice) sh.fail(5, 1); },
  };
  return { dev, sh, runs: new DataRuns(dev, sh, g, null, sink, depth, idle), events };
}

/** One 4 KiB piece at cache segment `seg`, offset `segOff`, for origin offset `off`; one run. */
function put(r: Rig, seg: number, segOff: number, off: number): void {
  r.runs.add({ seg, segOff, len: 4096 }, Buffer.alloc(4096, off & 0xff), off, 0, 0);
  r.runs.flush();
}

test('runs completing in reverse order take effect in issue order; acknowledgements wait for every earlier run', (t) => {
  const r = rig();
  const acks: string[] = [];
  put(r, 1, 0, 0x1000);
  r.runs.ackAfterWrite((e) => acks.push(`first:${e}`));
  put(r, 1, 4096, 0x2000);
  r.runs.ackAfterWrite((e) => acks.push(`second:${e}`));
  t.is(r.runs.inFlight, 2);
  t.is(r.runs.unsettled, 2);
  t.is(r.runs.outstandingKeys, 2);
  r.dev.complete(1);
  t.deepEqual(r.events, [], 'the later run waits for the earlier one');
  t.deepEqual(acks, []);
  r.dev.complete(0);
  t.deepEqual(r.events, ['commit:4096', 'run', 'commit:8192', 'run', 'acks']);
  t.deepEqual(acks, ['first:0', 'second:0']);
  t.is(r.runs.unsettled, 0);
  t.is(r.runs.outstandingKeys, 0);
  t.is(r.dev.syncWrites, 0, 'nothing was written synchronously');
});

test('a failed run gives back its allocations, fails the device, and the writes waiting on runs get EIO', (t) => {
  const r = rig();
  const acks: string[] = [];
  put(r, 1, 0, 0x1000);
  r.runs.ackAfterWrite((e) => acks.push(`first:${e}`));
  put(r, 1, 4096, 0x2000);
  r.runs.ackAfterWrite((e) => acks.push(`second:${e}`));
  r.dev.complete(1);
  r.dev.fail(0);
  // The device failed with the first run: what the second wrote may never reach the media.
  t.deepEqual(r.events, ['failed', 'abort:4096', 'abort:8192', 'acks']);
  t.deepEqual(acks, ['first:5', 'second:5']);
  t.not(r.sh.failed, 0);
  // Later runs are not even tried on a failed device.
  put(r, 2, 0, 0x3000);
  t.is(r.dev.pending.length, 2);
  t.deepEqual(r.events.slice(4), ['abort:12288']);
});

test('a failed run whose failure leaves the device up: only its own pieces are undone, the later run takes effect', (t) => {
  const r = rig(32, false);
  const acks: string[] = [];
  put(r, 1, 0, 0x1000);
  put(r, 1, 4096, 0x2000);
  r.runs.ackAfterWrite((e) => acks.push(`second:${e}`));
  r.dev.fail(0);
  t.deepEqual(r.events, ['failed', 'abort:4096']);
  r.dev.complete(1);
  t.deepEqual(r.events, ['failed', 'abort:4096', 'commit:8192', 'run', 'acks']);
  // A run failed since the FIFO was last empty: the waiting write cannot be vouched for.
  t.deepEqual(acks, ['second:5']);
  // With the FIFO empty again, a new write is acknowledged cleanly.
  put(r, 1, 8192, 0x3000);
  r.runs.ackAfterWrite((e) => acks.push(`third:${e}`));
  r.dev.complete(2);
  t.deepEqual(acks, ['second:5', 'third:0']);
});

test('an in-order step (a TRIM key) waits behind the runs in flight, and runs at once when none is', (t) => {
  const r = rig();
  const steps: string[] = [];
  r.runs.inOrder((ok) => steps.push(`now:${ok}`), 1);
  t.deepEqual(steps, ['now:true']);
  put(r, 1, 0, 0x1000);
  r.runs.inOrder((ok) => { steps.push(`trim:${ok}`); r.events.push('trim'); }, 1);
  t.is(r.runs.outstandingKeys, 2, 'the step\'s key has journal room reserved');
  put(r, 1, 4096, 0x2000);
  r.dev.complete(1);
  t.deepEqual(steps, ['now:true']);
  r.dev.complete(0);
  t.deepEqual(r.events, ['commit:4096', 'run', 'trim', 'commit:8192', 'run']);
  t.is(r.runs.outstandingKeys, 0);
});

test('a run whose segment generation moved on while it was in flight is not indexed', (t) => {
  const r = rig();
  put(r, 1, 0, 0x1000);
  r.sh.setGen(1, r.sh.genOf(1) + 1);
  r.dev.complete(0);
  t.deepEqual(r.events, ['abort:4096', 'run']);
});

test('the queue depth bounds the runs in flight; beyond it runs are written synchronously, still in order', (t) => {
  const r = rig(2);
  put(r, 1, 0, 0x1000);
  put(r, 1, 4096, 0x2000);
  put(r, 1, 8192, 0x3000);
  t.is(r.runs.inFlight, 2);
  t.is(r.dev.syncWrites, 1);
  t.is(r.runs.unsettled, 3, 'the synchronous run waits behind the two in flight');
  t.deepEqual(r.events, []);
  r.dev.complete(0);
  r.dev.complete(1);
  t.deepEqual(r.events.filter((e) => e.startsWith('commit')), ['commit:4096', 'commit:8192', 'commit:12288']);
  const seen: number[] = [];
  r.runs.forEachUnsettled((seg, segOff) => seen.push(seg, segOff));
  t.deepEqual(seen, []);
});

test('forEachUnsettled names the allocations of runs in flight and of the gathered run', (t) => {
  const r = rig();
  put(r, 1, 0, 0x1000);
  r.runs.add({ seg: 2, segOff: 4096, len: 4096 }, Buffer.alloc(4096), 0x5000, 0, 0);
  const seen: number[] = [];
  r.runs.forEachUnsettled((seg, segOff) => seen.push(seg, segOff));
  t.deepEqual(seen, [1, 0, 2, 4096]);
  t.is(RUN_STRIDE, 8);
});

test('with nothing else waiting for the thread (idle) a run is written synchronously; behind a run in flight it still goes asynchronous', (t) => {
  let idle = false;
  const r = rig(32, true, () => idle);
  put(r, 1, 0, 0x1000);
  t.is(r.runs.inFlight, 1);
  idle = true;
  // Behind the run in flight: asynchronous, so the two stay in order without blocking.
  put(r, 1, 4096, 0x2000);
  t.is(r.runs.inFlight, 2);
  t.is(r.dev.syncWrites, 0);
  r.dev.complete(0);
  r.dev.complete(1);
  // Nothing in flight and idle: written at once, in effect before flush returns.
  put(r, 1, 8192, 0x3000);
  t.is(r.runs.inFlight, 0);
  t.is(r.dev.syncWrites, 1);
  t.deepEqual(r.events.filter((e) => e.startsWith('commit')), ['commit:4096', 'commit:8192', 'commit:12288']);
});
