// The whole cache engine in one thread over simulated devices: stripes, writeback and GC run
// in-process against an in-memory origin, with a fake clock, so a seeded run reproduces exactly,
// including where it crashes and what fails. Used by the engine's property tests and
// `npm run torture`. The devices (sim-devices.ts) fail the way real ones do; the model
// (sim-model.ts) says what the client may see after each fault.

import { Rng, SimBlockDevice } from '../../src/cache/blockdev.js';
import { openCache } from '../../src/cache/replay.js';
import type { OpenedCache } from '../../src/cache/replay.js';
import { StripeEngine } from '../../src/cache/engine.js';
import { Writeback } from '../../src/cache/writeback.js';
import type { WritebackOrder } from '../../src/cache/writeback.js';
import { Gc } from '../../src/cache/gc.js';
import { META_AREA_SIZE } from '../../src/cache/layout.js';
import { CacheShared, ERR_ORIGIN_FLUSH } from '../../src/cache/shared.js';
import { GC_OWNER, STRIPE_OWNER, WRITEBACK_OWNER } from '../../src/cache/durability.js';
import { KeyJournal } from '../../src/cache/journal.js';
import { ExtentIndex } from '../../src/cache/index/extent-index.js';
import { META_HDR_WORDS, M_NSUB, SUB_WORDS, S_SEQ } from '../../src/cache/index/layout.js';
import { collectLog } from '../../src/cache/key-log.js';
import { limitsOf, readKsetAt } from '../../src/cache/log.js';
import { needsWriteback, type CacheKey } from '../../src/cache/kset.js';
import type { Done, Origin } from '../../src/origin/types.js';
import { SUBTREE_SIZE } from '../../src/ring/layout.js';
import { CrashNow, FaultyDevice, NO_FAULTS, SimOrigin, ThreadDevice, type DeviceFaults } from './sim-devices.js';
import { EpochHistory, Model, SECTOR, anyVersion, describeSector, identify, sectorPattern } from './sim-model.js';

export { SECTOR, sectorPattern, identify, describeSector, Model } from './sim-model.js';
export { CrashNow, FaultyDevice, MemOrigin, SimOrigin } from './sim-devices.js';

const EIO = 5;

export interface SimOptions {
  originSize: number;
  segmentSize: number;
  segments: number;
  stripes: number;
  dataCrc: boolean;
  gcPercent: number;
  /** Switch the cache mode (all five) at random steps, as `message NAME mode M` does. */
  modes?: boolean;
  /** Check the origin as if the cache were lost, now and then (default on). */
  epochCheck?: boolean;
  /** Fault windows on the cache device: while one is open, operations fail at these rates. */
  faults?: Partial<DeviceFaults>;
  /** Probability per step that a stripe thread dies (between operations or with a commit round in flight) and is respawned. */
  respawn?: number;
  /** The origin has a volatile write cache that a power cut hits too; its flushes fail (and drop that cache) at this rate. */
  volatileOrigin?: boolean;
  originFlushFail?: number;
  /** Unsynced cache writes that survive a power cut may come out with a flipped bit (in data, ksets and metadata slots alike). */
  corrupt?: number;
  /** The origin answers on a later microtask, as the file origin (libuv's pool) and an NBD origin do. */
  asyncOrigin?: boolean;
  /** Cache read hits complete later (as readAsync through libuv or io_uring), after GC and writes may have run. */
  asyncReads?: boolean;
  /** Data runs are written asynchronously (writevAsync, as with direct I/O), completed later and sometimes out of order. */
  asyncWrites?: boolean;
  /** Writeback's order (default epoch); strict ends an epoch every 2 ksets as well as at each mark. */
  order?: WritebackOrder;
}

/** One incarnation of the cache over a device image; a power cut makes a new one from the surviving image. */
export class SimCache {
  readonly opened: OpenedCache;
  readonly engines: StripeEngine[];
  readonly wb: Writeback;
  readonly gc: Gc;
  clock = 0;
  /** Completions of asynchronous I/O (syncs) and gate retries, run in order by runIo. */
  readonly io: (() => void)[] = [];
  respawns = 0;
  /** Index subtrees rebuilt from the log after a death mid-mutation. */
  rebuilt = 0;
  private wbRunning = false;
  private readonly threads: ThreadDevice[] = [];
  private readonly journals: KeyJournal[];
  private readonly inflight: Set<{ cb: Done; done: boolean }>[];

  constructor(readonly dev: FaultyDevice, readonly origin: SimOrigin | (Origin & { handle?: undefined }), readonly opts: SimOptions) {
    this.opened = openCache(dev, { originSize: opts.originSize, dataCrc: opts.dataCrc, stripes: opts.stripes, format: false, segmentSize: opts.segmentSize, gcPercent: opts.gcPercent, indexMaxBytes: 4 << 20 });
    const sh = this.opened.shared;
    sh.setTunables({ autocommitMs: 1000, cacheFullWaitMs: 50, cacheFullMaxWaitMs: 100_000 });
    sh.gcPercent = opts.gcPercent;
    // Small journals: their "full" path (a commit round before more keys) runs too.
    this.journals = this.opened.indexes.map(() => KeyJournal.create(1 << 11));
    this.inflight = this.opened.indexes.map(() => new Set());
    this.engines = this.opened.indexes.map((_, i) => this.makeEngine(i, false));
    this.wb = new Writeback(dev, this.threadShared(WRITEBACK_OWNER, null), this.opened.geometry, this.originHandle(), { batchKsets: 2, order: opts.order });
    this.gc = new Gc(dev, this.threadShared(GC_OWNER, null), this.opened.geometry, { batchKsets: 4 });
  }

  /** Each thread's own descriptor on the origin (a plain test origin is shared); a dead stripe thread's never answers. */
  private originHandle(thread: ThreadDevice | null = null): Origin {
    if (!this.origin.handle) return this.origin;
    return this.origin.handle({ later: this.opts.asyncOrigin === true, alive: () => !thread?.dead });
  }

  static deviceBytes(o: SimOptions): number {
    return META_AREA_SIZE + o.segments * o.segmentSize;
  }

  /** A thread's own view of the shared state (its lock owner id); its gate retries die with it. */
  private threadShared(owner: number, thread: ThreadDevice | null): CacheShared {
    const sh = new CacheShared(this.opened.shared.sab, owner);
    sh.gateWaiter = (retry) => this.io.push(() => { if (!thread?.dead) retry(); });
    return sh;
  }

  private makeEngine(i: number, respawned: boolean): StripeEngine {
    const thread = new ThreadDevice(this.dev, this.io, this.opts.asyncReads === true, this.opts.asyncWrites ? new Rng(0x77a1 + i * 131 + this.respawns) : null);
    this.threads[i] = thread;
    const repaired = respawned ? ExtentIndex.attachRepairing(this.opened.indexes[i]!.sabs) : { index: this.opened.indexes[i]!, emptied: [] };
    this.rebuilt += repaired.emptied.length;
    const index = repaired.index;
    return new StripeEngine({
      rebuild: repaired.emptied,
      dev: thread, shared: this.threadShared(STRIPE_OWNER + i, thread), index, geometry: this.opened.geometry, origin: this.originHandle(thread),
      blockCrc: this.opened.blockCrc ? new Int32Array(this.opened.blockCrc) : null, now: () => this.clock, journal: this.journals[i],
    });
  }

  /**
   * Stripe thread i dies: what it had in flight never calls back (the coordinator fails those
   * requests with EIO), the locks it held are freed, and a new engine takes over its index and
   * journal, as the stripe worker does after a piscina respawn.
   */
  kill(i: number, midMutation = -1): void {
    this.threads[i]!.dead = true;
    // A death inside an index mutation leaves that subtree's seqlock odd (its pages half edited).
    if (midMutation >= 0) {
      const meta = new Int32Array(this.opened.indexes[i]!.sabs.meta);
      const nsub = meta[M_NSUB]!;
      if (nsub > 0) Atomics.add(meta, META_HDR_WORDS + (midMutation % nsub) * SUB_WORDS + S_SEQ, 1);
    }
    this.opened.shared.releaseLocksOf(STRIPE_OWNER + i);
    const lost = [...this.inflight[i]!];
    this.inflight[i]!.clear();
    this.engines[i] = this.makeEngine(i, true);
    this.respawns++;
    for (const p of lost) { p.done = true; p.cb(EIO); }
  }

  /** Stripes that have a commit round or replies waiting on one. */
  committing(): number[] {
    return this.engines.map((e, i) => (e.committing ? i : -1)).filter((i) => i >= 0);
  }

  runIo(): void {
    for (let n = 0; this.io.length > 0; n++) {
      if (n > 1_000_000) throw new Error('runaway I/O queue');
      this.io.shift()!();
    }
  }

  private stripeOf(off: number): number {
    return Math.floor(off / SUBTREE_SIZE) % this.engines.length;
  }

  private tracked(i: number, cb: Done): Done {
    const p = { cb, done: false };
    this.inflight[i]!.add(p);
    return (e) => {
      if (p.done) return;
      p.done = true;
      this.inflight[i]!.delete(p);
      cb(e);
    };
  }

  /** Splits at subtree boundaries like the coordinator; calls `done` once with the first error. */
  private split(off: number, len: number, each: (e: StripeEngine, o: number, l: number, delta: number, done: Done) => void, done: Done): void {
    const pieces: [number, number, number][] = [];
    for (let o = off; o < off + len;) {
      const end = Math.min(off + len, (Math.floor(o / SUBTREE_SIZE) + 1) * SUBTREE_SIZE);
      pieces.push([o, end - o, o - off]);
      o = end;
    }
    let left = pieces.length;
    let first = 0;
    for (const [o, l, d] of pieces) {
      const i = this.stripeOf(o);
      each(this.engines[i]!, o, l, d, this.tracked(i, (e) => { if (e && !first) first = e; if (--left === 0) done(first); }));
    }
  }

  write(off: number, data: Buffer, fua: boolean, done: Done): void {
    this.split(off, data.length, (e, o, l, d, cb) => e.write(o, data.subarray(d, d + l), fua, cb), done);
  }
  trim(off: number, len: number, done: Done): void { this.split(off, len, (e, o, l, _d, cb) => e.trim(o, l, false, cb), done); }
  zero(off: number, len: number, done: Done): void { this.split(off, len, (e, o, l, _d, cb) => e.zero(o, l, false, cb), done); }
  read(off: number, buf: Buffer, done: Done): void {
    this.split(off, buf.length, (e, o, l, d, cb) => e.read(o, buf.subarray(d, d + l), false, cb), done);
  }
  flush(done: Done): void {
    let left = this.engines.length;
    let first = 0;
    this.engines.forEach((e, i) => e.flush(this.tracked(i, (x) => { if (x && !first) first = x; if (--left === 0) done(first); })));
    for (const e of this.engines) e.endBatch();
  }

  /**
   * Background work for one step of simulated time: autocommit, queued writes, writeback, GC.
   * The asynchronous completions run before writeback and GC, which sync synchronously: in a real
   * process they are other threads, here they must not wait on a gate a queued sync holds.
   * `writeback` false: time passes but writeback does not run.
   */
  async background(ms: number, writeback = true): Promise<void> {
    this.clock += ms;
    for (const e of this.engines) e.tick();
    this.runIo();
    // One writeback step at a time, as its worker thread runs them (a background operation and an
    // operation waiting for space may both ask for one).
    if (writeback && !this.wbRunning) {
      this.wbRunning = true;
      try {
        await this.wb.step();
      } catch (err) {
        if (err instanceof CrashNow) throw err;
      } finally {
        this.wbRunning = false;
      }
    }
    this.runIo();
    try {
      this.gc.step();
    } catch (err) {
      // The GC worker logs a failed step and tries again later (workers/gc.ts).
      if (err instanceof CrashNow) throw err;
    }
    for (const e of this.engines) e.tick();
    this.runIo();
  }

  /** Writeback everything and reclaim (gc_percent 0): the origin then holds the whole volume. */
  async drain(): Promise<void> {
    let done = -1;
    this.flush((e) => { done = e; });
    for (let i = 0; done < 0 && i < 1000; i++) await this.background(10, false);
    if (done) throw new Error(`flush failed ${done}`);
    this.opened.shared.gcPercent = 0;
    for (let i = 0; i < 100_000 && this.wb.pending; i++) await this.background(1);
    if (this.wb.pending) throw new Error('writeback did not drain');
    // A failed origin flush leaves the last writes unconfirmed; writeback repeats them until a flush holds.
    let flushed = -1;
    this.origin.flush((e: number) => { flushed = e; });
    if (flushed !== 0) throw new Error('the origin refused its final flush');
  }
}

/** Failure forensics (PCACHED_SIM_DEBUG=1): the log keys covering a sector, the tails, where the scan stopped. */
function forensics(cache: SimCache, sector: number): string {
  const off = sector * SECTOR;
  const out: string[] = [];
  const st = cache.opened.state;
  const sh = cache.opened.shared;
  out.push(`key tail ${JSON.stringify(sh.keyTail())} dirty tail ${JSON.stringify(sh.dirtyTail())} head ${JSON.stringify(sh.head())} replay ${JSON.stringify(cache.opened.report)}`);
  const { ksets, stop } = collectLog(st);
  for (const k of ksets) for (const key of k.keys) if (key.originOffset <= off && off < key.originOffset + key.length) out.push(`log lsn ${k.lsn}: ${JSON.stringify(key)} gen now ${sh.genOf(key.segment)}`);
  out.push(`scan stop ${JSON.stringify(stop)}`);
  const e = cache.opened.indexes[Math.floor(off / SUBTREE_SIZE) % cache.opened.indexes.length]!;
  e.lookup(off, SECTOR, (o, l, x) => out.push(`index ${o}+${l}: ${JSON.stringify(x)}`));
  if (cache.origin instanceof SimOrigin) out.push(`origin holds ${describeSector(cache.origin.data.subarray(off, off + SECTOR))}`);
  return out.join('\n');
}

/** Debug invariant: the dirty byte count is the sum of the keys writeback still owes (log from dirty_tail, plus pending keys). */
function dirtyAccounting(cache: SimCache): string | null {
  const sh = cache.opened.shared;
  const g = cache.opened.geometry;
  let logged = 0;
  let pos = sh.dirtyTail();
  const lim = limitsOf(g);
  while (pos.lsn < sh.headLsn) {
    const r = readKsetAt(cache.dev.inner, g, pos, lim); // (not through the faults: the check must not change the run)
    if ('error' in r) return `log unreadable at ${pos.lsn}: ${r.error}`;
    for (const k of r.kset.keys) if (needsWriteback(k.flags)) logged += k.length;
    pos = r.next;
  }
  let pending = 0;
  let delta = 0;
  for (const e of cache.engines) {
    const x = e as unknown as { open: CacheKey[]; ready: CacheKey[][]; round: { batch: CacheKey[][] } | null; dirtyDelta: number };
    for (const ks of [x.open, ...x.ready, ...(x.round?.batch ?? [])]) for (const k of ks) if (needsWriteback(k.flags)) pending += k.length;
    delta += x.dirtyDelta;
  }
  const counted = sh.dirtyBytes + delta;
  return counted === logged + pending ? null : `counted ${counted} (shared ${sh.dirtyBytes}, unpublished ${delta}), owed ${logged + pending} (logged ${logged}, pending ${pending})`;
}

export interface RunResult {
  crashes: number; ops: number; flushes: number; bypasses: number; segmentsFreed: number;
  /** Fault trials: cache syncs, writes and reads failed; the device failing (sticky); stripes killed; origin flushes failed; writes corrupted at a power cut; pages evicted after a failed sync. */
  syncFails: number; writeFails: number; readFails: number; deviceFailures: number; respawns: number; originFlushFails: number; corrupted: number; evictions: number;
  /** Index subtrees a stripe died in the middle of editing, rebuilt from the log by its successor. */
  rebuilds: number;
  /** Origin operations answered on a later microtask (asyncOrigin). */
  lateAnswers: number;
}

/**
 * One seeded run: random writes, trims, zeroes, reads, flushes, FUA writes, background work, power
 * cuts (between operations and inside them), fault windows on the devices and stripe deaths. After
 * every power cut: the whole volume holds only versions the model allows (every flushed write,
 * nothing torn or never written), and the origin alone is epoch-prefix consistent; after a
 * respawn every acknowledged write is still read back; at the end, a drain leaves the origin equal
 * to the volume.
 */
export async function simRun(seed: number, opts: SimOptions, steps: number, crashEvery: number, trace?: (msg: string) => void): Promise<RunResult> {
  const rng = new Rng(seed);
  const sectors = opts.originSize / SECTOR;
  const model = new Model(sectors);
  const hist = new EpochHistory();
  let origin = new SimOrigin(opts.originSize, { volatile: opts.volatileOrigin, rng: new Rng(seed ^ 0x5a5a) });
  origin.flushFail = opts.originFlushFail ?? 0;
  const faults: DeviceFaults = { ...NO_FAULTS, ...opts.faults };
  const faulty = faults.syncFail > 0 || faults.writeFail > 0 || faults.readFail > 0 || (opts.originFlushFail ?? 0) > 0;
  const devRng = new Rng(seed ^ 0x3c3c);
  let sim = new SimBlockDevice(SimCache.deviceBytes(opts));
  let cache = new SimCache(new FaultyDevice(sim, Infinity, devRng), origin, opts);
  let version = 0;
  let mode = 0;
  let wentThrough = false;
  let faultWindow = 0;
  let failedFor = 0;
  const res: RunResult = { crashes: 0, ops: 0, flushes: 0, bypasses: 0, segmentsFreed: 0, syncFails: 0, writeFails: 0, readFails: 0, deviceFailures: 0, respawns: 0, originFlushFails: 0, corrupted: 0, evictions: 0, rebuilds: 0, lateAnswers: 0 };
  const scratch = Buffer.alloc(SECTOR);
  const fail = (msg: string): never => { throw new Error(`seed ${seed}: ${msg}`); };
  // Hot spots make overwrites and partial overlaps common.
  const pickRange = (): [number, number] => {
    const count = 1 + rng.below(rng.chance(0.2) ? 96 : 16);
    const hot = rng.chance(0.7);
    const first = hot ? rng.below(Math.min(sectors, 2048)) : rng.below(sectors);
    const s = Math.min(first, sectors - count);
    return [s, count];
  };
  const collect = (): void => {
    const d = cache.dev;
    res.syncFails += d.counts.syncFails; res.writeFails += d.counts.writeFails; res.readFails += d.counts.readFails;
    res.respawns += cache.respawns;
    res.rebuilds += cache.rebuilt;
    res.segmentsFreed += cache.gc.stats.segmentsFreed;
    // (A power cut inside an operation also fails the device; only a real fault counts here.)
    if (cache.opened.shared.failed !== 0 && !d.dead) res.deviceFailures++;
  };

  const checkOrigin = (where: string, o: SimOrigin): void => {
    if (opts.epochCheck === false || wentThrough) return;
    const why = hist.check((sec) => o.data.subarray(sec * SECTOR, (sec + 1) * SECTOR), scratch);
    if (why) fail(`${where}: ${why}`);
  };

  // The cache lost in the middle of writeback: after every origin write (writes are coalesced, so
  // there are only a few hundred per run). Writeback runs under SimCache.background, which
  // tolerates writeback errors: a violation is kept here and raised after the step.
  let violation: Error | null = null;
  const watch = (o: SimOrigin): void => {
    o.afterWrite = () => {
      if (violation) return;
      try { checkOrigin('mid-writeback, the cache lost', o); } catch (err) { violation = err as Error; }
    };
  };
  watch(origin);

  const powerCut = async (): Promise<void> => {
    res.crashes++;
    collect();
    // Every device loses power at once: the origin keeps what it had flushed (and some of the rest).
    res.originFlushFails += origin.flushFails;
    origin.flushFails = 0;
    res.lateAnswers += origin.lateAnswers;
    origin.lateAnswers = 0;
    if (opts.volatileOrigin) {
      origin = origin.crash(rng);
      checkOrigin(`power cut ${res.crashes}, the origin alone`, origin);
      watch(origin);
    }
    const corruptedBefore = sim.corrupted;
    const survivor = sim.crash(rng, { keep: rng.below(100) / 100, torn: rng.below(50) / 100, corrupt: opts.corrupt ?? 0 });
    res.corrupted += sim.corrupted - corruptedBefore;
    sim = survivor;
    faultWindow = 0;
    failedFor = 0;
    cache = new SimCache(new FaultyDevice(sim, Infinity, devRng), origin, opts);
    cache.opened.shared.mode = mode;
    // Every sector must hold a version the model allows; then the model adopts what it found.
    const buf = Buffer.alloc(1 << 20);
    for (let off = 0; off < opts.originSize; off += buf.length) {
      const errno = await new Promise<number>((r) => cache.read(off, buf, r));
      if (errno) fail(`read after restart failed (${errno})`);
      for (let i = 0; i < buf.length / SECTOR; i++) {
        const s = off / SECTOR + i;
        const bytes = buf.subarray(i * SECTOR, (i + 1) * SECTOR);
        const allowed = model.allowed(s);
        const got = identify(bytes, s, allowed, scratch);
        if (got < 0) {
          const flushed = model.maybe.has(s) ? `one of ${[...allowed].join(',')}` : `its flushed version ${model.latest[s]}`;
          fail(`after power cut ${res.crashes}, sector ${s} does not hold ${flushed} but ${describeSector(bytes)}${process.env.PCACHED_SIM_DEBUG ? `\n${forensics(cache, s)}` : ''}`);
        }
        model.settle(s, got);
        hist.seen(s, got, true);
      }
    }
    // What survived is what the volume shows now: a FLUSH-less epoch of its own (replay closes it).
    hist.epoch++;
  };

  /** While running: every sector reads as a version the model allows (the latest acknowledged, or an unresolved one). */
  const verifyVolume = async (where: string): Promise<void> => {
    const buf = Buffer.alloc(1 << 20);
    for (let off = 0; off < opts.originSize; off += buf.length) {
      const errno = await op((d) => cache.read(off, buf, d), false);
      if (errno === 'crashed') return;
      if (errno !== 0) { if (errorsAllowed()) return; fail(`${where}: read failed (${errno})`); }
      for (let i = 0; i < buf.length / SECTOR; i++) {
        const sec = off / SECTOR + i;
        const bytes = buf.subarray(i * SECTOR, (i + 1) * SECTOR);
        if (identify(bytes, sec, model.readable(sec), scratch) < 0) fail(`${where}: sector ${sec} does not read as version ${model.latest[sec]} but ${describeSector(bytes)}`);
      }
    }
  };

  /** Runs an operation; with `midCrash`, the cache device dies after a random number of writes/syncs. */
  const op = async (fn: (done: Done) => void, midCrash: boolean): Promise<number | 'crashed'> => {
    if (midCrash) cache.dev.budget = rng.below(6);
    let result = -1;
    opKilled = false;
    const killMidRound = opts.respawn !== undefined && rng.chance(opts.respawn * 4);
    try {
      fn((e) => { result = e; });
      // Writeback runs in the background steps (so its windows span several epochs), and here
      // only once an operation waits long (a full cache needs it to free space).
      for (let i = 0; result < 0 && i < 10_000; i++) {
        if (i === 1 && killMidRound) {
          const busy = cache.committing();
          if (busy.length > 0) {
            const k = busy[rng.below(busy.length)]!;
            trace?.(`kill stripe ${k} with a commit round in flight`);
            cache.kill(k);
            opKilled = true;
          }
        }
        await cache.background(10, i > 20);
      }
    } catch (err) {
      if (!(err instanceof CrashNow)) throw err;
    }
    if (cache.dev.dead) return 'crashed';
    cache.dev.budget = Infinity;
    if (result < 0) fail('an operation never completed (deadlock)');
    return result;
  };

  /** Errors the client may see now: the device failed (sticky), a fault window is open, or a stripe died under the request. */
  let opKilled = false;
  // (In the modes that write the origin first, a failed origin flush fails every later FLUSH of the stripe.)
  const errorsAllowed = (): boolean => cache.opened.shared.failed !== 0 || faultWindow > 0 || opKilled || (wentThrough && (opts.originFlushFail ?? 0) > 0);

  for (let step = 0; step < steps; step++) {
    res.ops++;
    // (Once the device failed, keys logged but never durable are owed no more.)
    if (process.env.PCACHED_SIM_DEBUG && cache.opened.shared.failed === 0) {
      const why = dirtyAccounting(cache);
      if (why) fail(`step ${step}: dirty accounting: ${why}`);
    }
    // Fault windows: the cache device (and the origin's flushes) fail for a few steps.
    if (faulty) {
      if (faultWindow > 0 && --faultWindow === 0) { cache.dev.faults = NO_FAULTS; trace?.(`step ${step} faults off`); }
      else if (faultWindow === 0 && rng.chance(1 / 20)) {
        faultWindow = 2 + rng.below(8);
        cache.dev.faults = faults;
        trace?.(`step ${step} faults on for ${faultWindow} steps`);
      }
    }
    // A failed device stays failed until a restart; meanwhile the page cache may let go of
    // what a failed sync dropped, so a read of it would show the media.
    if (cache.opened.shared.failed !== 0) {
      if (rng.chance(0.3)) res.evictions += sim.evictDropped();
      if (++failedFor > 6) {
        trace?.(`step ${step} restart after the device failed`);
        await powerCut();
        continue;
      }
    }
    if (opts.respawn !== undefined && rng.chance(opts.respawn)) {
      const k = rng.below(cache.engines.length);
      const mid = rng.chance(0.5) ? rng.below(1 << 16) : -1;
      trace?.(`step ${step} kill stripe ${k}${mid >= 0 ? ' in the middle of an index mutation' : ''}`);
      cache.kill(k, mid);
      // The successor serves every acknowledged write at once (from the journal and a rebuilt index).
      if (mid >= 0) await verifyVolume(`after stripe ${k} died mid-mutation at step ${step}`);
    }
    const midCrash = rng.chance(1 / (crashEvery * 2));
    const r = rng.below(100);
    let outcome: number | 'crashed';
    if (r < 45) {
      const [s, n] = pickRange();
      const v = ++version;
      const data = Buffer.alloc(n * SECTOR);
      for (let i = 0; i < n; i++) sectorPattern(v, s + i, data.subarray(i * SECTOR, (i + 1) * SECTOR));
      const fua = rng.chance(0.1);
      model.issued(s, n, v);
      hist.issued(s, n, v);
      trace?.(`step ${step} write v${v} sectors ${s}+${n}${fua ? ' fua' : ''}${midCrash ? ' midcrash' : ''}`);
      outcome = await op((d) => cache.write(s * SECTOR, data, fua, d), midCrash);
      if (outcome === 0) { model.acked(s, n, v, fua); hist.acked(s, n, v); }
      else if (outcome !== 'crashed') {
        if (!errorsAllowed()) fail(`step ${step}: write failed with errno ${outcome}`);
        model.failed(s, n, v);
        outcome = 0;
      }
    } else if (r < 52) {
      const [s, n] = pickRange();
      model.issued(s, n, 0);
      hist.issued(s, n, 0);
      const trim = rng.chance(0.5);
      trace?.(`step ${step} ${trim ? 'trim' : 'zero'} sectors ${s}+${n}${midCrash ? ' midcrash' : ''}`);
      outcome = await op((d) => (trim ? cache.trim(s * SECTOR, n * SECTOR, d) : cache.zero(s * SECTOR, n * SECTOR, d)), midCrash);
      if (outcome === 0) { model.acked(s, n, 0, false); hist.acked(s, n, 0); }
      else if (outcome !== 'crashed') {
        if (!errorsAllowed()) fail(`step ${step}: ${trim ? 'trim' : 'zero'} failed with errno ${outcome}`);
        model.failed(s, n, 0);
        outcome = 0;
      }
    } else if (r < 75) {
      const [s, n] = pickRange();
      const buf = Buffer.alloc(n * SECTOR);
      outcome = await op((d) => cache.read(s * SECTOR, buf, d), midCrash);
      if (outcome === 0) {
        for (let i = 0; i < n; i++) {
          const sec = s + i;
          const bytes = buf.subarray(i * SECTOR, (i + 1) * SECTOR);
          const got = identify(bytes, sec, model.readable(sec), scratch);
          if (got < 0) fail(`step ${step}: read of sector ${sec} does not return version ${model.latest[sec]} but ${describeSector(bytes)}${anyVersion(bytes, sec, scratch) >= 0 ? '' : ' (garbage)'}`);
          if (got !== model.latest[sec] || model.unresolved.has(sec)) {
            // A write that failed (or whose stripe died) took effect after all: it is the version now.
            model.latest[sec] = got;
            model.unresolved.delete(sec);
            hist.seen(sec, got, false);
          }
        }
      } else if (outcome !== 'crashed' && !errorsAllowed()) fail(`step ${step}: read failed with errno ${outcome}`);
      outcome = outcome === 'crashed' ? outcome : 0;
    } else if (opts.modes && r >= 97) {
      mode = rng.below(5);
      trace?.(`step ${step} mode ${mode}`);
      cache.opened.shared.mode = mode;
      outcome = 0;
    } else if (r < 85) {
      res.flushes++;
      trace?.(`step ${step} flush${midCrash ? ' midcrash' : ''}`);
      outcome = await op((d) => cache.flush(d), midCrash);
      if (outcome === 0) { model.flushed(); hist.epoch++; }
      else if (outcome !== 'crashed') {
        if (!errorsAllowed()) fail(`step ${step}: flush failed with errno ${outcome}`);
        outcome = 0;
      }
    } else {
      outcome = await op((d) => { void cache.background(100 + rng.below(1500)).then(() => d(0), (e) => { if (e instanceof CrashNow) d(0); else throw e; }); }, midCrash);
    }
    if (outcome !== 'crashed' && outcome !== 0) fail(`step ${step}: operation failed with errno ${outcome}`);
    // A write in a mode that writes the origin first reaches it ahead of older dirty data still
    // draining (as in bcache): the epoch guarantee is writeback's, and holds until then.
    if (mode !== 0 && mode !== 4) wentThrough = true;
    if (violation) throw violation;
    if (opts.epochCheck !== false && !wentThrough && rng.chance(1 / 12)) checkOrigin(`step ${step}, the cache lost`, origin);
    if (outcome === 'crashed' || rng.chance(1 / crashEvery)) {
      trace?.(`step ${step} power cut (${outcome === 'crashed' ? 'inside the operation' : 'between operations'})`);
      await powerCut();
    }
  }
  // The end: a healthy device and origin, everything written back.
  cache.dev.faults = NO_FAULTS;
  origin.flushFail = 0;
  // (A stripe whose origin flush failed after writes that went to the origin first refuses FLUSH until a restart.)
  if (cache.opened.shared.failed !== 0 || (cache.opened.shared.errors & ERR_ORIGIN_FLUSH) !== 0) await powerCut();
  collect();
  // The drain's FLUSH itself may be the first to find a failed origin flush: restart and drain again.
  for (let attempt = 0; ; attempt++) {
    try {
      await cache.drain();
      break;
    } catch (err) {
      if (attempt > 2 || (cache.opened.shared.errors & ERR_ORIGIN_FLUSH) === 0) throw err;
      await powerCut();
    }
  }
  if (violation) throw violation;
  for (let s = 0; s < sectors; s++) {
    const bytes = origin.media.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (identify(bytes, s, [model.latest[s]!], scratch) < 0) {
      fail(`after the final drain, origin sector ${s} does not hold version ${model.latest[s]} but ${describeSector(bytes)}`);
    }
  }
  res.originFlushFails += origin.flushFails;
  res.lateAnswers += origin.lateAnswers;
  return res;
}
