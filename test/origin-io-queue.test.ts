// The ordering and depth rules of the asynchronous file origin, with operations the test finishes
// by hand (src/origin/io-queue.ts), and the group commit of its syncs (src/origin/sync-group.ts).
// The file origin itself with many requests in flight is at the end, on a real file.

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OrderedIoQueue, type QueuedIo } from '../src/origin/io-queue.js';
import { SyncGroup } from '../src/origin/sync-group.js';
import { openFileOrigin } from '../src/origin/file.js';
import { native } from '../src/native/index.js';

const OK = 0, EIO = 5, ESHUTDOWN = 108;

interface Op extends QueuedIo {
  name: string;
  started: boolean;
  cancelled: boolean;
  finish(): void;
}

/** A queue whose operations log their start and wait until `finish()`. */
function harness(depth: number) {
  const q = new OrderedIoQueue(depth);
  const order: string[] = [];
  const op = (name: string, kind: QueuedIo['kind'], off = 0, len = 0): Op => {
    let finished: (() => void) | null = null;
    const o: Op = {
      name, kind, off, len, started: false, cancelled: false,
      start(f) { o.started = true; order.push(name); finished = f; },
      cancel() { o.cancelled = true; },
      finish() {
        if (!finished) throw new Error(`${name} has not started`);
        finished();
      },
    };
    q.submit(o);
    return o;
  };
  return { q, order, op };
}

test('up to the depth start at once; the rest start as slots free up, in arrival order', (t) => {
  const { q, op } = harness(3);
  const ops = Array.from({ length: 6 }, (_, i) => op(`r${i}`, 'read', i * 4096, 4096));
  t.deepEqual(ops.map((o) => o.started), [true, true, true, false, false, false]);
  t.is(q.inflight, 3);
  t.is(q.waiting, 3);
  ops[1]!.finish();
  t.deepEqual(ops.map((o) => o.started), [true, true, true, true, false, false]);
  ops[0]!.finish();
  ops[2]!.finish();
  t.deepEqual(ops.map((o) => o.started), [true, true, true, true, true, true]);
});

test('overlapping writes, and a read and a write of one block, never run together; disjoint ones do', (t) => {
  const { op } = harness(32);
  const w1 = op('w1', 'write', 0, 8192);
  const w2 = op('w2', 'write', 4096, 4096); // overlaps w1
  const r1 = op('r1', 'read', 6000, 10); // overlaps w1 and w2
  const w3 = op('w3', 'write', 65536, 4096); // disjoint: starts at once
  const r2 = op('r2', 'read', 12288, 4096); // disjoint
  const r3 = op('r3', 'read', 65536, 1); // behind w3
  t.deepEqual([w1, w2, r1, w3, r2, r3].map((o) => o.started), [true, false, false, true, true, false]);
  w1.finish();
  t.true(w2.started);
  t.false(r1.started, 'the read waits for the second write too: it was issued after it');
  w2.finish();
  t.true(r1.started);
  w3.finish();
  t.true(r3.started);
});

test('reads of one range run together, and a write issued after them waits for all', (t) => {
  const { op } = harness(32);
  const a = op('a', 'read', 0, 4096);
  const b = op('b', 'read', 0, 4096);
  const w = op('w', 'write', 1000, 10);
  const c = op('c', 'read', 0, 4096); // issued after the write: must see it
  t.deepEqual([a, b, w, c].map((o) => o.started), [true, true, false, false]);
  a.finish();
  t.false(w.started);
  b.finish();
  t.true(w.started);
  t.false(c.started);
  w.finish();
  t.true(c.started);
});

test('a barrier waits for every write issued before it, not for reads or later writes', (t) => {
  const { op } = harness(32);
  const w1 = op('w1', 'write', 0, 4096);
  const r = op('r', 'read', 1 << 20, 4096);
  const w2 = op('w2', 'write', 1 << 21, 4096);
  const f = op('f', 'barrier');
  const w3 = op('w3', 'write', 1 << 22, 4096); // after the flush: it promises nothing about w3
  t.false(f.started);
  t.true(w3.started, 'a later write is not held up by the waiting flush');
  w1.finish();
  t.false(f.started);
  w2.finish();
  t.true(f.started, 'every earlier write is done, the read still runs');
  t.false(r.cancelled);
  const w4 = op('w4', 'write', 0, 4096);
  t.true(w4.started, 'nothing waits for a barrier in flight');
});

test('the depth counts everything; an op that finishes at once inside start does not stall the rest', (t) => {
  const q = new OrderedIoQueue(1);
  const ran: number[] = [];
  let held: (() => void) | null = null;
  q.submit({ off: 0, len: 1, kind: 'read', start: (f) => { ran.push(0); held = f; }, cancel() {} });
  for (let i = 1; i <= 4; i++) q.submit({ off: i * 10, len: 1, kind: 'write', start: (f) => { ran.push(i); f(); }, cancel() {} });
  t.deepEqual(ran, [0]);
  held!();
  t.deepEqual(ran, [0, 1, 2, 3, 4]);
  t.is(q.inflight + q.waiting, 0);
});

test('close cancels what has not started and resolves once the rest has finished', async (t) => {
  const { q, op } = harness(1);
  const a = op('a', 'read', 0, 1);
  const b = op('b', 'read', 10, 1);
  let closed = false;
  const p = q.close().then(() => { closed = true; });
  t.true(b.cancelled);
  t.false(b.started);
  await Promise.resolve();
  t.false(closed, 'a is still running');
  a.finish();
  await p;
  t.true(closed);
  const late = op('late', 'read', 0, 1);
  t.true(late.cancelled);
  t.throws(() => new OrderedIoQueue(0), { instanceOf: RangeError });
});

/** A sync the test completes by hand. */
function manualSync() {
  const pending: ((err: unknown) => void)[] = [];
  const group = new SyncGroup((cb) => pending.push(cb));
  return { group, pending };
}

test('sync group: one sync at a time; callers during a sync share the next one', (t) => {
  const { group, pending } = manualSync();
  const got: string[] = [];
  group.request(true, (e) => got.push(`a${e}`));
  group.request(true, (e) => got.push(`b${e}`));
  t.is(pending.length, 1, 'a is covered by the first sync; b arrived while it ran');
  group.request(false, (e) => got.push(`c${e}`));
  pending.shift()!(null);
  t.deepEqual(got, [`a${OK}`]);
  t.is(pending.length, 1, 'b and c share the second sync');
  pending.shift()!(null);
  t.deepEqual(got, [`a${OK}`, `b${OK}`, `c${OK}`]);
  t.is(pending.length, 0);
});

test('sync group: a failure is EIO; one no FLUSH heard of fails the next FLUSH once', (t) => {
  const { group, pending } = manualSync();
  const results: number[] = [];
  const step = (flush: boolean, err: unknown): void => {
    group.request(flush, (e) => results.push(e));
    pending.shift()!(err);
  };
  step(true, Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' }));
  step(true, null);
  step(false, new Error('EIO')); // a FUA write's sync failed
  step(false, null); // another FUA write: its own sync is fine
  step(true, null); // the flush after them reports the FUA failure ...
  step(true, null); // ... once
  t.deepEqual(results, [EIO, OK, EIO, OK, EIO, OK]);
});

test('file origin: callbacks come later, many requests are in flight at once, order holds per range', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-ioq-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'origin');
  fs.writeFileSync(file, Buffer.alloc(1 << 20));
  // Without the addon: every read goes through the pool (with it, a read the page cache holds may be answered at once).
  const o = openFileOrigin({ kind: 'file', path: file, readOnly: false, queueDepth: 8 }, { native: null });
  let closed = false;
  t.teardown(() => (closed ? undefined : o.close()));
  t.false(o.synchronous);

  const done: Promise<number>[] = [];
  const call = (fn: (cb: (e: number) => void) => void): Promise<number> => {
    const p = new Promise<number>((resolve) => fn(resolve));
    done.push(p);
    return p;
  };
  let syncAnswer = -1;
  o.read(0, Buffer.alloc(4096), (e) => { syncAnswer = e; });
  t.is(syncAnswer, -1, 'a read is answered from the event loop, never inside the call');
  // 20 versions of one block, with a read after each: every read sees the write before it.
  const reads: Buffer[] = [];
  for (let v = 1; v <= 20; v++) {
    void call((cb) => o.write(8192, Buffer.alloc(4096, v), false, cb));
    const r = Buffer.alloc(4096);
    reads.push(r);
    void call((cb) => o.read(8192, r, cb));
  }
  for (let i = 0; i < 40; i++) void call((cb) => o.read(65536 + i * 4096, Buffer.alloc(4096), cb));
  t.is(o.inflight, 81, 'everything is admitted at once (in flight or waiting in order)');
  void call((cb) => o.flush(cb));
  const results = await Promise.all(done);
  t.true(results.every((e) => e === OK));
  t.deepEqual(reads.map((r) => r[0]), Array.from({ length: 20 }, (_, i) => i + 1));
  t.true(reads.every((r) => r.every((b) => b === r[0])));
  t.is(o.inflight, 0);

  // close() waits for what is in flight; what comes after is refused.
  const last = call((cb) => o.write(0, Buffer.alloc(4096, 0xee), false, cb));
  closed = true;
  await o.close();
  t.is(await last, OK);
  t.is(fs.readFileSync(file)[0], 0xee);
  t.is(await new Promise<number>((resolve) => o.read(0, Buffer.alloc(1), resolve)), ESHUTDOWN);
});

(native?.preadNowait ? test : test.skip)('file origin with the addon: a read the page cache holds is answered at once, but never ahead of an overlapping write', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-ioq-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'origin');
  fs.writeFileSync(file, Buffer.alloc(1 << 20, 3)); // written just now: in the page cache
  const o = openFileOrigin({ kind: 'file', path: file, readOnly: false });
  t.teardown(() => o.close());
  const a = Buffer.alloc(4096);
  let answer = -1;
  o.read(4096, a, (e) => { answer = e; });
  if (answer === -1) {
    // This file system cannot tell (preadv2 RWF_NOWAIT unsupported): everything goes through the pool.
    t.log('RWF_NOWAIT reads unsupported here; the read went through the pool');
    await new Promise<void>((resolve) => { const poll = (): void => { if (answer >= 0) resolve(); else setImmediate(poll); }; poll(); });
    t.is(answer, OK);
    return;
  }
  t.is(answer, OK);
  t.true(a.every((b) => b === 3));
  // A write in flight over the range: the read behind it must wait for it and see its data.
  const w = new Promise<number>((resolve) => o.write(4096, Buffer.alloc(4096, 9), false, resolve));
  const b = Buffer.alloc(4096);
  let second = -1;
  o.read(4096, b, (e) => { second = e; });
  t.is(second, -1, 'not answered from the page cache ahead of the write');
  t.is(await w, OK);
  await new Promise<void>((resolve) => { const poll = (): void => { if (second >= 0) resolve(); else setImmediate(poll); }; poll(); });
  t.is(second, OK);
  t.true(b.every((x) => x === 9));
});
