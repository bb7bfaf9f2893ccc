// Stripe worker: one thread per stripe, hosted by a piscina pool of exactly one thread.
// The data plane is the SharedArrayBuffer ring (src/ring/layout.ts), never piscina tasks;
// piscina tasks are the control plane (start, stop) and must keep getting answered, so the
// idle wait is timed and the loop yields a macrotask now and then.

import { workerData } from 'piscina';
import {
  REQ_HEAD, REQ_TAIL, CPL_HEAD, WORKER_SLEEPING, STOP, SPIN_HINT, BELL_SPINNERS,
  R_OP, R_FLAGS, R_ID, R_OFF_LO, R_OFF_HI, R_LEN, R_SLAB_OFF, R_SLAB_LEN,
  C_ID, C_ERRNO, C_RESULT,
  StripeOp, StripeFlag, reqSlotBase, cplSlotBase, BELL_COUNT, BELL_POLLING,
  type StripeWorkerData,
} from '../src/ring/layout.js';
import { CounterBlock, STRIPE_COUNTERS } from '../src/stats/counters.js';
import { openOrigin } from '../src/origin/open.js';
import type { Origin, Extent } from '../src/origin/types.js';
import { Errno } from '../src/util/errno.js';
import { createLogger } from '../src/daemon/logger.js';
import { StripeEngine, type EngineCounter } from '../src/cache/engine.js';
import { FileBlockDevice, type BlockDevice } from '../src/cache/blockdev.js';
import { openAsyncIo } from '../src/io/async-io.js';
import { native } from '../src/native/index.js';
import { CacheShared, FAULT_READS, FAULT_WRITES } from '../src/cache/shared.js';
import { STRIPE_OWNER } from '../src/cache/durability.js';
import { KeyJournal } from '../src/cache/journal.js';
import { ExtentIndex } from '../src/cache/index/extent-index.js';

const data = workerData as StripeWorkerData;
const cap = data.capacity;
const ring = new Int32Array(data.ring);
const slab = new Uint8Array(data.slab);
const slabView = new DataView(data.slab);
const doorbell = new Int32Array(data.doorbell);
const counters = new CounterBlock(STRIPE_COUNTERS, data.counters);
const log = createLogger({ level: data.logLevel as 'info', name: 'stripe', base: { stripe: data.stripe } });

const C_ORIGIN_READS = counters.indexOf('origin_reads');
const C_ORIGIN_READ_BYTES = counters.indexOf('origin_read_bytes');
const C_ORIGIN_WRITES = counters.indexOf('origin_writes');
const C_ORIGIN_WRITE_BYTES = counters.indexOf('origin_write_bytes');
const C_ORIGIN_FLUSHES = counters.indexOf('origin_flushes');
const C_ORIGIN_TRIMS = counters.indexOf('origin_trims');
const C_ORIGIN_ZEROES = counters.indexOf('origin_zeroes');
const C_ORIGIN_BLOCK_STATUS = counters.indexOf('origin_block_status');
const C_ORIGIN_ERRORS = counters.indexOf('origin_errors');
const C_QUEUE_DEPTH = counters.indexOf('queue_depth');
const C_BATCHES = counters.indexOf('batches');
const C_WAKEUPS = counters.indexOf('wakeups');

/** A timed-out idle wait lets piscina's control messages and origin timers in at least this often. */
const IDLE_WAIT_MS = 50;
/** Yield a macrotask after this many busy batches so control tasks are never starved. */
const YIELD_EVERY_BATCHES = 256;

let origin: Origin | null = null;
/** Write-back mode only: the cache engine and its device. */
let engine: StripeEngine | null = null;
let cacheDev: FileBlockDevice | null = null;
let running = false;
let stopped: Promise<void> | null = null;
let cplHead = Atomics.load(ring, CPL_HEAD);
let bellPending = false;

function ringDoorbell(): void {
  bellPending = false;
  // The coordinator is polling our completion ring: it will see them without a wake-up.
  if (Atomics.load(doorbell, BELL_POLLING) !== 0) return;
  Atomics.add(doorbell, BELL_COUNT, 1);
  Atomics.notify(doorbell, BELL_COUNT);
}

/** Publish one completion; the coordinator is woken once per batch (or per event-loop turn for async origins). */
function complete(id: number, errno: number, result: number, deferBell: boolean): void {
  const base = cplSlotBase(cap, cplHead);
  ring[base + C_ID] = id;
  ring[base + C_ERRNO] = errno;
  ring[base + C_RESULT] = result;
  cplHead = (cplHead + 1) | 0;
  Atomics.store(ring, CPL_HEAD, cplHead);
  counters.addAt(C_QUEUE_DEPTH, -1);
  if (errno !== 0) counters.addAt(C_ORIGIN_ERRORS, 1);
  if (!deferBell && !bellPending) {
    bellPending = true;
    queueMicrotask(ringDoorbell);
  }
}

/** True while a synchronous batch runs: completions then ring the bell once at the end. */
let inBatch = false;

function writeExtents(slabOff: number, capacityBytes: number, extents: Extent[]): number {
  const max = Math.floor(capacityBytes / 8);
  const n = Math.min(max, extents.length);
  for (let i = 0; i < n; i++) {
    const e = extents[i]!;
    slabView.setUint32(slabOff + i * 8, e.length, true);
    slabView.setUint32(slabOff + i * 8 + 4, e.flags, true);
  }
  return n;
}

function dispatch(o: Origin, base: number): void {
  const op = ring[base + R_OP]!;
  const flags = ring[base + R_FLAGS]!;
  const id = ring[base + R_ID]!;
  const off = (ring[base + R_OFF_HI]! >>> 0) * 0x100000000 + (ring[base + R_OFF_LO]! >>> 0);
  const len = ring[base + R_LEN]! >>> 0;
  const slabOff = ring[base + R_SLAB_OFF]! >>> 0;
  const fua = (flags & StripeFlag.FUA) !== 0;
  const done = (errno: number): void => complete(id, errno, 0, inBatch);
  if (engine !== null && dispatchCache(engine, o, op, flags, id, off, len, slabOff, base, done)) return;
  switch (op) {
    case StripeOp.READ:
      counters.addAt(C_ORIGIN_READS, 1);
      counters.addAt(C_ORIGIN_READ_BYTES, len);
      o.read(off, slab.subarray(slabOff, slabOff + len), done);
      return;
    case StripeOp.WRITE:
      counters.addAt(C_ORIGIN_WRITES, 1);
      counters.addAt(C_ORIGIN_WRITE_BYTES, len);
      o.write(off, slab.subarray(slabOff, slabOff + len), fua, done);
      return;
    case StripeOp.FLUSH:
      counters.addAt(C_ORIGIN_FLUSHES, 1);
      o.flush(done);
      return;
    case StripeOp.TRIM:
      counters.addAt(C_ORIGIN_TRIMS, 1);
      o.trim(off, len, fua, done);
      return;
    case StripeOp.ZERO:
      counters.addAt(C_ORIGIN_ZEROES, 1);
      o.zero(off, len, { noHole: (flags & StripeFlag.NO_HOLE) !== 0, fastZero: (flags & StripeFlag.FAST_ZERO) !== 0, fua }, done);
      return;
    case StripeOp.CACHE:
      o.cache(off, len, done);
      return;
    case StripeOp.BLOCK_STATUS: {
      counters.addAt(C_ORIGIN_BLOCK_STATUS, 1);
      const slabLen = ring[base + R_SLAB_LEN]! >>> 0;
      o.blockStatus(off, len, Math.floor(slabLen / 8), (errno, extents) => {
        complete(id, errno, errno === 0 ? writeExtents(slabOff, slabLen, extents) : 0, inBatch);
      });
      return;
    }
    default:
      complete(id, Errno.EINVAL, 0, inBatch);
  }
}

/** Write-back mode: the cache engine serves data requests; returns false for what the origin serves directly. */
function dispatchCache(e: StripeEngine, o: Origin, op: number, flags: number, id: number, off: number, len: number,
  slabOff: number, base: number, done: (errno: number) => void): boolean {
  const fua = (flags & StripeFlag.FUA) !== 0;
  switch (op) {
    case StripeOp.READ:
      e.read(off, slab.subarray(slabOff, slabOff + len), (flags & StripeFlag.NO_FILL) !== 0, done);
      return true;
    case StripeOp.WRITE:
      e.write(off, slab.subarray(slabOff, slabOff + len), fua, done);
      return true;
    case StripeOp.FLUSH:
      e.flush(done);
      return true;
    case StripeOp.TRIM:
      e.trim(off, len, fua, done);
      return true;
    case StripeOp.ZERO:
      e.zero(off, len, fua, done);
      return true;
    case StripeOp.CACHE:
      // A prefetch hint: the next read of the range fills the cache anyway.
      done(0);
      return true;
    case StripeOp.BLOCK_STATUS: {
      const slabLen = ring[base + R_SLAB_LEN]! >>> 0;
      e.blockStatus(off, len, Math.floor(slabLen / 8), (errno, extents) => {
        complete(id, errno, errno === 0 ? writeExtents(slabOff, slabLen, extents) : 0, inBatch);
      });
      return true;
    }
    default:
      void o;
      return false;
  }
}

let reqTail = Atomics.load(ring, REQ_TAIL);

/** Take every request published so far; returns how many. */
function runBatch(o: Origin): number {
  const head = Atomics.load(ring, REQ_HEAD);
  if (head === reqTail) return 0;
  let n = 0;
  inBatch = true;
  try {
    while (reqTail !== head) {
      const base = reqSlotBase(cap, reqTail);
      reqTail = (reqTail + 1) | 0;
      n++;
      try {
        dispatch(o, base);
      } catch (err) {
        // An origin must report errors through its callback; a throw is a bug, but it must
        // cost this request only, not the stripe.
        log.error({ err }, 'origin threw');
        complete(ring[base + R_ID]!, Errno.EIO, 0, true);
      }
    }
    // FLUSHes of this batch share one commit, and their completions this batch's doorbell.
    engine?.endBatch();
  } finally {
    inBatch = false;
    Atomics.store(ring, REQ_TAIL, reqTail);
  }
  counters.addAt(C_BATCHES, 1);
  // Completions made during the batch (synchronous origins) share one doorbell.
  if (Atomics.load(ring, CPL_HEAD) !== lastBellHead) {
    lastBellHead = Atomics.load(ring, CPL_HEAD);
    ringDoorbell();
  }
  return n;
}
let lastBellHead = cplHead;

/**
 * Spin for new requests only as long as recent idle gaps suggest one is about to arrive: at
 * high queue depth a few microseconds of polling replace a futex sleep and wake-up on both
 * sides; at low depth (gaps longer than the budget) the thread sleeps at once and leaves the
 * core to the client and the coordinator.
 */
let avgGapNs = Number.MAX_SAFE_INTEGER;

function noteGap(ns: number): void {
  avgGapNs = avgGapNs === Number.MAX_SAFE_INTEGER ? ns : (avgGapNs * 7 + ns) / 8;
}

/** Completions this thread's event loop must deliver before the work in flight can finish. */
function completionsPending(o: Origin): boolean {
  return (o.inflight ?? 0) > 0 || (engine !== null && (engine.committing || engine.cacheReadsInFlight > 0 || engine.cacheWritesInFlight > 0));
}

function spinForWork(capNs: number, idleSince: bigint): boolean {
  if (capNs <= 0 || avgGapNs >= capNs || Atomics.load(ring, SPIN_HINT) === 0) return false;
  if (Atomics.add(doorbell, BELL_SPINNERS, 1) >= data.maxSpinners) {
    Atomics.sub(doorbell, BELL_SPINNERS, 1);
    return false;
  }
  const deadline = idleSince + BigInt(Math.ceil(Math.min(capNs, 2 * avgGapNs)));
  let i = 0;
  let found = false;
  for (;;) {
    if (Atomics.load(ring, REQ_HEAD) !== reqTail || Atomics.load(ring, STOP) !== 0) {
      found = true;
      break;
    }
    if ((++i & 15) === 0 && (process.hrtime.bigint() > deadline || Atomics.load(ring, SPIN_HINT) === 0)) break;
  }
  Atomics.sub(doorbell, BELL_SPINNERS, 1);
  return found;
}

function engineTick(e: StripeEngine): void {
  const before = Atomics.load(ring, CPL_HEAD);
  try {
    e.tick();
  } catch (err) {
    log.error({ err }, 'cache engine housekeeping failed');
  }
  if (Atomics.load(ring, CPL_HEAD) !== before) ringDoorbell();
}

const yieldMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A cache device whose reads or writes fail with EIO while the shared test-faults word says so. */
function withTestFaults(dev: FileBlockDevice, sh: CacheShared): BlockDevice {
  const eio = (what: string): Error => Object.assign(new Error(`injected cache ${what} error (test hook)`), { code: 'EIO' });
  return {
    get size() { return dev.size; },
    pread(buf, off) { if (sh.testFaults & FAULT_READS) throw eio('read'); dev.pread(buf, off); },
    ...(dev.readAsync ? {
      readAsync(buf: Uint8Array, off: number, cb: (err: Error | null) => void) {
        if (sh.testFaults & FAULT_READS) { const e = eio('read'); setImmediate(() => cb(e)); return; }
        dev.readAsync!(buf, off, cb);
      },
    } : {}),
    ...(dev.writevAsync ? {
      writevAsync(bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void) {
        if (sh.testFaults & FAULT_WRITES) { const e = eio('write'); setImmediate(() => cb(e)); return; }
        dev.writevAsync!(bufs, off, cb);
      },
    } : {}),
    pwrite(buf, off) { if (sh.testFaults & FAULT_WRITES) throw eio('write'); dev.pwrite(buf, off); },
    pwritev(bufs, off) { if (sh.testFaults & FAULT_WRITES) throw eio('write'); dev.pwritev(bufs, off); },
    sync() { dev.sync(); },
    syncAsync(cb) { dev.syncAsync(cb); },
    close() { dev.close(); },
  };
}

async function loop(o: Origin): Promise<void> {
  let batches = 0;
  while (Atomics.load(ring, STOP) === 0) {
    if (engine !== null) engineTick(engine);
    if (runBatch(o) > 0) {
      // A commit round's fdatasync and origin I/O in libuv's pool complete through the event
      // loop: let them in, or a miss would wait behind every hit that keeps arriving.
      if (++batches % YIELD_EVERY_BATCHES === 0 || engine?.committing || (o.inflight ?? 0) > 0 || (engine?.cacheReadsInFlight ?? 0) > 0 || (engine?.cacheWritesInFlight ?? 0) > 0) await yieldMacrotask();
      continue;
    }
    const idleSince = process.hrtime.bigint();
    // A spin holds the event loop: I/O in flight (a cache read or data run through the ring, a
    // file origin's request, a round's sync) would complete only after it, so at queue depth 1
    // every request paid the whole spin on top of its device wait.
    if (!completionsPending(o) && spinForWork(data.spinNs, idleSince)) {
      noteGap(Number(process.hrtime.bigint() - idleSince));
      continue;
    }
    Atomics.store(ring, WORKER_SLEEPING, 1);
    let result: string = 'not-equal';
    if (Atomics.load(ring, REQ_HEAD) === reqTail && Atomics.load(ring, STOP) === 0) {
      // With nothing pending in the event loop (a synchronous origin, or a file origin with no
      // I/O in flight) block the thread (cheapest wake-up); otherwise keep the loop serviced
      // (an NBD origin's sockets, libuv pool completions).
      const waitMs = engine === null ? IDLE_WAIT_MS : Math.max(1, Math.min(IDLE_WAIT_MS, engine.nextTickIn()));
      if ((o.synchronous || o.inflight === 0) && !engine?.committing && (engine?.cacheReadsInFlight ?? 0) === 0 && (engine?.cacheWritesInFlight ?? 0) === 0) {
        result = Atomics.wait(ring, REQ_HEAD, reqTail, waitMs);
      } else {
        const w = Atomics.waitAsync(ring, REQ_HEAD, reqTail, waitMs);
        result = w.async ? await w.value : w.value;
      }
    }
    Atomics.store(ring, WORKER_SLEEPING, 0);
    counters.addAt(C_WAKEUPS, 1);
    noteGap(Number(process.hrtime.bigint() - idleSince));
    if (result === 'timed-out') await yieldMacrotask();
  }
}

export interface StripeTask {
  /** 'crash' exists for tests of the respawn path and only with PCACHED_TEST_HOOKS=1. */
  op: 'start' | 'stop' | 'crash' | 'detach';
}

/** piscina task handler: the control plane of this stripe. */
export default async function handle(task: StripeTask): Promise<{ ok: true; size?: number }> {
  switch (task.op) {
    case 'start': {
      if (running) return { ok: true, size: origin?.size ?? 0 };
      origin = await openOrigin(data.origin);
      if (data.cache && !new CacheShared(data.cache.shared).detached) {
        const c = data.cache;
        cacheDev = FileBlockDevice.open(c.path, { direct: c.direct });
        // Direct I/O always waits for the device; buffered reads go asynchronous only when the
        // page cache cannot answer at once, which needs the addon's RWF_NOWAIT read.
        if (c.direct || native?.preadNowait !== undefined) cacheDev.useAsyncIo(openAsyncIo());
        const sharedState = new CacheShared(c.shared, STRIPE_OWNER + data.stripe);
        // A predecessor that died mid-mutation left subtrees half edited: emptied here, rebuilt by the engine.
        const repaired = ExtentIndex.attachRepairing(c.index);
        const names = new Set<string>(STRIPE_COUNTERS);
        engine = new StripeEngine({
          // Tests of cache device errors inject them here (PCACHED_TEST_HOOKS=1 only).
          dev: process.env.PCACHED_TEST_HOOKS === '1' ? withTestFaults(cacheDev, sharedState) : cacheDev,
          shared: sharedState,
          index: repaired.index,
          rebuild: repaired.emptied,
          geometry: c.geometry,
          origin,
          blockCrc: c.blockCrc ? new Int32Array(c.blockCrc) : null,
          stats: { add: (name: EngineCounter, n: number) => { if (names.has(name)) counters.addAt(counters.indexOf(name as never), n); } },
          log,
          journal: new KeyJournal(c.journal),
          queueDepth: c.queueDepth,
          // The coordinator's low-depth hint, and no request published behind this one.
          idle: () => Atomics.load(ring, SPIN_HINT) !== 0 && Atomics.load(ring, REQ_HEAD) === reqTail,
        });
      }
      running = true;
      // Requests left in the ring by a previous incarnation of this thread were failed by the
      // coordinator; start from where the coordinator says the ring is.
      reqTail = Atomics.load(ring, REQ_HEAD);
      Atomics.store(ring, REQ_TAIL, reqTail);
      cplHead = Atomics.load(ring, CPL_HEAD);
      lastBellHead = cplHead;
      const o = origin;
      stopped = new Promise<void>((resolve) => setImmediate(() => {
        loop(o).then(resolve, (err) => { log.fatal({ err }, 'stripe loop failed'); resolve(); });
      }));
      log.debug({ origin: o.description }, 'stripe started');
      return { ok: true, size: o.size };
    }
    case 'crash': {
      if (process.env.PCACHED_TEST_HOOKS !== '1') throw new Error('test hooks are disabled');
      // Outside the task, like a real bug in the loop: the thread dies with work in its ring.
      setImmediate(() => { throw new Error('stripe crash requested by a test hook'); });
      return { ok: true };
    }
    case 'detach': {
      // The cache is being released (pcached detach): new requests go to the origin from now on;
      // the engine finishes what it has in motion, commits its last keys and closes the device.
      const e = engine;
      if (!e) return { ok: true };
      engine = null;
      for (let i = 0; e.busy && i < 12_000; i++) {
        e.tick();
        await new Promise((r) => setTimeout(r, 5));
      }
      try {
        e.drain();
      } catch (err) {
        log.error({ err }, 'stripe detach: committing the last keys failed');
      }
      cacheDev?.close();
      cacheDev = null;
      return { ok: true };
    }
    case 'stop': {
      Atomics.store(ring, STOP, 1);
      Atomics.notify(ring, REQ_HEAD);
      if (stopped) await stopped;
      if (engine) {
        // A round in flight appends its ksets when its sync returns, and data runs in flight give
        // their keys when they complete; the last keys go after them.
        for (let i = 0; (engine.committing || engine.cacheWritesInFlight > 0) && i < 2000; i++) await new Promise((r) => setTimeout(r, 5));
        try {
          engine.drain();
        } catch (err) {
          log.error({ err }, 'stripe stop: committing the last keys failed');
        }
        engine = null;
      }
      cacheDev?.close();
      cacheDev = null;
      if (origin) await origin.close();
      origin = null;
      running = false;
      return { ok: true };
    }
    default:
      throw new Error(`unknown stripe task ${(task as { op: string }).op}`);
  }
}
