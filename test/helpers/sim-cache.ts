// The whole cache engine in one thread over a simulated device: stripes, writeback and GC run
// in-process against an in-memory origin, with a fake clock, so a seeded run reproduces exactly,
// including where it crashes. Used by the engine's property tests and `npm run torture`.

import { Rng, SimBlockDevice } from '../../src/cache/blockdev.js';
import type { BlockDevice } from '../../src/cache/blockdev.js';
import { openCache } from '../../src/cache/replay.js';
import type { OpenedCache } from '../../src/cache/replay.js';
import { StripeEngine } from '../../src/cache/engine.js';
import { Writeback } from '../../src/cache/writeback.js';
import { Gc } from '../../src/cache/gc.js';
import { META_AREA_SIZE } from '../../src/cache/layout.js';
import { collectLog } from '../../src/cache/key-log.js';
import type { Origin, Done, Extent, ZeroFlags } from '../../src/origin/types.js';
import { SUBTREE_SIZE } from '../../src/ring/layout.js';

export const SECTOR = 512;

/** A durable, synchronous origin in memory. */
export class MemOrigin implements Origin {
  readonly data: Buffer;
  readonly description = 'memory';
  readonly readOnly = false;
  readonly synchronous = true;
  readonly canFastZero = true;
  writes = 0;
  constructor(readonly size: number) { this.data = Buffer.alloc(size); }
  read(off: number, dst: Uint8Array, cb: Done): void { this.data.copy(dst, 0, off, off + dst.length); cb(0); }
  /** Called after every write, trim and zero: the crash property checks the origin mid-writeback here. */
  afterWrite: (() => void) | null = null;
  write(off: number, src: Uint8Array, _fua: boolean, cb: Done): void { this.data.set(src, off); this.writes++; this.afterWrite?.(); cb(0); }
  flush(cb: Done): void { cb(0); }
  trim(off: number, len: number, _fua: boolean, cb: Done): void { this.data.fill(0, off, off + len); this.afterWrite?.(); cb(0); }
  zero(off: number, len: number, _f: ZeroFlags, cb: Done): void { this.data.fill(0, off, off + len); this.afterWrite?.(); cb(0); }
  cache(_off: number, _len: number, cb: Done): void { cb(0); }
  blockStatus(_off: number, len: number, _max: number, cb: (errno: number, e: Extent[]) => void): void { cb(0, [{ length: len, flags: 0 }]); }
  async close(): Promise<void> {}
}

export class CrashNow extends Error {}

/** Passes I/O to a simulated device until its budget of writes and syncs runs out, then fails everything. */
export class FaultyDevice implements BlockDevice {
  constructor(readonly inner: SimBlockDevice, public budget: number) {}
  get size(): number { return this.inner.size; }
  private spend(): void { if (this.budget-- <= 0) throw new CrashNow('simulated power cut'); }
  pread(buf: Uint8Array, off: number): void { if (this.budget <= 0) throw new CrashNow('simulated power cut'); this.inner.pread(buf, off); }
  pwrite(buf: Uint8Array, off: number): void { this.spend(); this.inner.pwrite(buf, off); }
  sync(): void { this.spend(); this.inner.sync(); }
  close(): void {}
  get dead(): boolean { return this.budget <= 0; }
}

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
}

/** One incarnation of the cache over a device image; a crash makes a new one from the surviving image. */
export class SimCache {
  readonly opened: OpenedCache;
  readonly engines: StripeEngine[];
  readonly wb: Writeback;
  readonly gc: Gc;
  clock = 0;

  constructor(readonly dev: FaultyDevice, readonly origin: MemOrigin, readonly opts: SimOptions) {
    this.opened = openCache(dev, { originSize: opts.originSize, dataCrc: opts.dataCrc, stripes: opts.stripes, format: false, segmentSize: opts.segmentSize, gcPercent: opts.gcPercent, indexMaxBytes: 4 << 20 });
    const sh = this.opened.shared;
    sh.setTunables({ autocommitMs: 1000, cacheFullWaitMs: 50, cacheFullMaxWaitMs: 100_000 });
    sh.gcPercent = opts.gcPercent;
    this.engines = this.opened.indexes.map((index) => new StripeEngine({
      dev, shared: sh, index, geometry: this.opened.geometry, origin,
      blockCrc: this.opened.blockCrc ? new Int32Array(this.opened.blockCrc) : null,
      now: () => this.clock,
    }));
    this.wb = new Writeback(dev, sh, this.opened.geometry, origin, { batchKsets: 2 });
    this.gc = new Gc(dev, sh, this.opened.geometry, { batchKsets: 4 });
  }

  static deviceBytes(o: SimOptions): number {
    return META_AREA_SIZE + o.segments * o.segmentSize;
  }

  private engineFor(off: number): StripeEngine {
    return this.engines[Math.floor(off / SUBTREE_SIZE) % this.engines.length]!;
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
    for (const [o, l, d] of pieces) each(this.engineFor(o), o, l, d, (e) => { if (e && !first) first = e; if (--left === 0) done(first); });
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
    for (const e of this.engines) e.flush((x) => { if (x && !first) first = x; if (--left === 0) done(first); });
    for (const e of this.engines) e.endBatch();
  }

  /** Background work for one step of simulated time: autocommit, queued writes, writeback, GC. */
  /** `writeback` false: time passes (autocommit, queued writes, GC) but writeback does not run. */
  async background(ms: number, writeback = true): Promise<void> {
    this.clock += ms;
    for (const e of this.engines) e.tick();
    try {
      if (writeback) await this.wb.step();
    } catch (err) {
      if (err instanceof CrashNow) throw err;
    }
    this.gc.step();
    for (const e of this.engines) e.tick();
  }

  /** Writeback everything and reclaim (gc_percent 0): the origin then holds the whole volume. */
  async drain(): Promise<void> {
    const done = await new Promise<number>((r) => this.flush(r));
    if (done) throw new Error(`flush failed ${done}`);
    this.opened.shared.gcPercent = 0;
    for (let i = 0; i < 100_000 && this.wb.pending; i++) await this.background(1);
    if (this.wb.pending) throw new Error('writeback did not drain');
  }
}

/** Failure forensics: the index pieces over a sector and every replayable key covering it. */
function debugSector(cache: SimCache, sector: number): string {
  const off = sector * SECTOR;
  const out: string[] = [];
  const e = cache.engines[Math.floor(off / SUBTREE_SIZE) % cache.engines.length]!;
  (e as unknown as { index: { lookup(o: number, l: number, cb: (o: number, l: number, x: unknown) => void): void } }).index.lookup(off, SECTOR, (o, l, x) => out.push(`index ${o}+${l}: ${JSON.stringify(x)}`));
  const st = cache.opened.state;
  for (const k of collectLog(st).ksets) {
    for (const key of k.keys) {
      if (key.originOffset <= off && off < key.originOffset + key.length) out.push(`log lsn ${k.lsn}: ${JSON.stringify(key)}`);
    }
  }
  out.push(`gens: ${[...cache.opened.shared.gen].join(',')}`);
  return out.join('\n');
}

/** The content a version writes into a sector: recognisable, and different for every (version, sector). */
export function sectorPattern(version: number, sector: number, out: Buffer): void {
  if (version === 0) { out.fill(0); return; }
  out.writeUInt32LE(version, 0);
  out.writeUInt32LE(sector, 4);
  let x = (Math.imul(version, 0x9e3779b1) ^ sector) >>> 0;
  for (let i = 8; i < SECTOR; i += 4) {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + i) >>> 0;
    out.writeUInt32LE(x, i);
  }
}

/**
 * Reference model: per sector, the latest version acknowledged, and while unflushed writes
 * exist, every version a crash may legitimately leave there (version 0 is zeros).
 */
export class Model {
  readonly latest: Int32Array;
  readonly maybe = new Map<number, Set<number>>();
  constructor(readonly sectors: number) { this.latest = new Int32Array(sectors); }

  /** A write or zero was issued (it may land even if it never completes). */
  issued(first: number, count: number, version: number): void {
    for (let s = first; s < first + count; s++) {
      let set = this.maybe.get(s);
      if (!set) { set = new Set([this.latest[s]!]); this.maybe.set(s, set); }
      set.add(version);
    }
  }
  acked(first: number, count: number, version: number, durable: boolean): void {
    for (let s = first; s < first + count; s++) {
      this.latest[s] = version;
      if (durable) this.maybe.delete(s);
    }
  }
  flushed(): void { this.maybe.clear(); }

  /** After a crash: which versions sector s may hold. */
  allowed(s: number): Set<number> { return this.maybe.get(s) ?? new Set([this.latest[s]!]); }
  settle(s: number, v: number): void { this.latest[s] = v; this.maybe.delete(s); }
}

/** Identifies which version a sector's bytes are, or -1 for bytes no version ever wrote. */
const ZEROS = Buffer.alloc(SECTOR);

/** What a sector holds, for failure messages: a stamp (version, sector it was written for), zeros, or garbage. */
export function describeSector(b: Buffer): string {
  if (b.equals(ZEROS)) return 'zeros';
  const v = b.readUInt32LE(0), sec = b.readUInt32LE(4);
  const scratch = Buffer.alloc(SECTOR);
  sectorPattern(v, sec, scratch);
  return scratch.equals(b) ? `version ${v} written for sector ${sec}` : 'bytes no version wrote';
}

export function identify(buf: Buffer, sector: number, candidates: Iterable<number>, scratch: Buffer): number {
  // The stamp names the one candidate worth generating in full.
  const stamped = buf.readUInt32LE(0);
  if (stamped === 0) {
    for (const v of candidates) if (v === 0) return buf.equals(ZEROS) ? 0 : -1;
    return -1;
  }
  for (const v of candidates) {
    if (v === 0 ? stamped !== 0 : stamped !== v || buf.readUInt32LE(4) !== sector) continue;
    sectorPattern(v, sector, scratch);
    if (scratch.equals(buf)) return v;
  }
  return -1;
}

export interface RunResult { crashes: number; ops: number; flushes: number; bypasses: number; segmentsFreed: number }

/**
 * One seeded run: random writes, trims, zeroes, reads, flushes, FUA writes, background work and
 * crashes (between operations and inside them), each crash followed by a restart and a check of
 * the whole volume against the model; at the end, a drain and a byte comparison of the origin.
 */
export async function simRun(seed: number, opts: SimOptions, steps: number, crashEvery: number, trace?: (msg: string) => void): Promise<RunResult> {
  const rng = new Rng(seed);
  const sectors = opts.originSize / SECTOR;
  const model = new Model(sectors);
  const origin = new MemOrigin(opts.originSize);
  let sim = new SimBlockDevice(SimCache.deviceBytes(opts));
  let cache = new SimCache(new FaultyDevice(sim, Infinity), origin, opts);
  let version = 0;
  let mode = 0;
  let wentThrough = false;
  const res: RunResult = { crashes: 0, ops: 0, flushes: 0, bypasses: 0, segmentsFreed: 0 };
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

  // Epochs as the client sees them: a FLUSH ends one. Per sector, the acknowledged versions and
  // the epoch each was acknowledged in (versions a crash took back are dropped at the restart).
  let epoch = 1;
  const hist = new Map<number, { v: number; e: number }[]>();
  const noteAcked = (s: number, n: number, v: number): void => {
    for (let i = s; i < s + n; i++) {
      let h = hist.get(i);
      if (!h) { h = []; hist.set(i, h); }
      h.push({ v, e: epoch });
    }
  };
  // The operation a crash cut short: its version may have survived without an acknowledgement.
  let cut: { s: number; n: number; v: number } | null = null;
  let inFlight: { s: number; n: number; v: number } | null = null;
  const noteSettled = (s: number, v: number): void => {
    let h = hist.get(s);
    if (!h) { h = []; hist.set(s, h); }
    if (h.length > 0 && h[h.length - 1]!.v === v) return;
    if (cut && s >= cut.s && s < cut.s + cut.n && v === cut.v) {
      h.push({ v, e: epoch });
      return;
    }
    // An older version: the newer ones were taken back by the crash.
    let i = h.length - 1;
    while (i >= 0 && h[i]!.v !== v) i--;
    h.length = i + 1;
  };
  /**
   * The cache is lost now: the origin must hold every epoch before some epoch M whole, part of M,
   * nothing later. Non-zero versions are unique, so they bound M from below; zeros (TRIM, ZERO,
   * never written) fit several epochs, so every M from there up is tried.
   */
  const checkEpochPrefix = (where: string): void => {
    const found = new Map<number, number>();
    let low = 0;
    let lowAt = '';
    // The write in flight may land on the origin before its acknowledgement: it belongs to this epoch.
    if (inFlight) for (let i = inFlight.s; i < inFlight.s + inFlight.n; i++) if (!hist.has(i)) hist.set(i, []);
    const cand = (sec: number, h: { v: number; e: number }[]): { v: number; e: number }[] =>
      inFlight && sec >= inFlight.s && sec < inFlight.s + inFlight.n ? [...h, { v: inFlight.v, e: epoch }] : h;
    for (const [sec, h0] of hist) {
      const h = cand(sec, h0);
      const bytes = origin.data.subarray(sec * SECTOR, (sec + 1) * SECTOR);
      const v = identify(bytes, sec, [0, ...h.map((x) => x.v)], scratch);
      if (v < 0) fail(`${where}: origin sector ${sec} holds bytes no acknowledged write left there (${describeSector(bytes)})`);
      found.set(sec, v);
      if (v !== 0) for (const x of h) if (x.v === v && x.e > low) { low = x.e; lowAt = `sector ${sec} version ${v}`; }
    }
    const fits = (m: number, sec: number): boolean => {
      const v = found.get(sec)!;
      let prev = 0;
      for (const x of cand(sec, hist.get(sec)!)) {
        if (x.e < m) prev = x.v;
        else if (x.e === m && x.v === v) return true;
      }
      return v === prev;
    };
    let firstBad = -1;
    for (let m = Math.max(low, 1); m <= epoch; m++) {
      let bad = -1;
      for (const sec of hist.keys()) if (!fits(m, sec)) { bad = sec; break; }
      if (bad < 0) return;
      if (firstBad < 0) firstBad = bad;
    }
    const h = hist.get(firstBad) ?? [];
    fail(`${where}: no epoch cut explains the origin (from epoch ${low}: ${lowAt}); sector ${firstBad} holds version ${found.get(firstBad)} (epoch-prefix broken; history ${h.map((x) => `v${x.v}@e${x.e}`).join(' ')})`);
  };

  // The cache lost in the middle of writeback: after every origin write (writes are coalesced,
  // so there are only a few hundred per run).
  // (Writeback runs under SimCache.background, which tolerates writeback errors: a violation is
  // kept here and raised after the step.)
  let violation: Error | null = null;
  origin.afterWrite = () => {
    if (opts.epochCheck === false || wentThrough || violation) return;
    try {
      checkEpochPrefix('mid-writeback, the cache lost');
    } catch (err) {
      violation = err as Error;
    }
  };

  const crashAndRestart = async (): Promise<void> => {
    res.crashes++;
    res.segmentsFreed += cache.gc.stats.segmentsFreed;
    sim = sim.crash(rng, { keep: rng.below(100) / 100, torn: rng.below(50) / 100 });
    cache = new SimCache(new FaultyDevice(sim, Infinity), origin, opts);
    cache.opened.shared.mode = mode;
    // Every sector must hold a version the model allows; then the model adopts what it found.
    const buf = Buffer.alloc(1 << 20);
    for (let off = 0; off < opts.originSize; off += buf.length) {
      const errno = await new Promise<number>((r) => cache.read(off, buf, r));
      if (errno) fail(`read after restart failed (${errno})`);
      for (let i = 0; i < buf.length / SECTOR; i++) {
        const s = off / SECTOR + i;
        const bytes = buf.subarray(i * SECTOR, (i + 1) * SECTOR);
        const maybe = model.maybe.get(s);
        if (maybe === undefined) {
          // The common case, kept cheap: one allowed version.
          const want = model.latest[s]!;
          if (identify(bytes, s, [want], scratch) !== want && process.env.PCACHED_SIM_DEBUG) console.log(debugSector(cache, s));
          if (identify(bytes, s, [want], scratch) !== want) fail(`after crash ${res.crashes}, sector ${s} does not hold its flushed version ${want} but ${describeSector(bytes)}`);
          continue;
        }
        const got = identify(bytes, s, maybe, scratch);
        if (got < 0) fail(`after crash ${res.crashes}, sector ${s} holds bytes of none of the versions ${[...maybe].join(',')}`);
        model.settle(s, got);
        noteSettled(s, got);
      }
    }
  };

  /** Runs an operation; with `midCrash`, the device dies after a random number of writes/syncs. */
  const op = async (fn: (done: Done) => void, midCrash: boolean): Promise<number | 'crashed'> => {
    if (midCrash) cache.dev.budget = rng.below(6);
    let result = -1;
    try {
      fn((e) => { result = e; });
      // Writeback runs in the background steps (so its windows span several epochs), and here
      // only once an operation waits long (a full cache needs it to free space).
      for (let i = 0; result < 0 && i < 10_000; i++) await cache.background(10, i > 20);
    } catch (err) {
      if (!(err instanceof CrashNow)) throw err;
    }
    if (cache.dev.dead) return 'crashed';
    cache.dev.budget = Infinity;
    if (result < 0) fail('an operation never completed (deadlock)');
    return result;
  };

  for (let step = 0; step < steps; step++) {
    res.ops++;
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
      trace?.(`step ${step} write v${v} sectors ${s}+${n}${fua ? ' fua' : ''}${midCrash ? ' midcrash' : ''}`);
      inFlight = { s, n, v };
      outcome = await op((d) => cache.write(s * SECTOR, data, fua, d), midCrash);
      inFlight = null;
      if (outcome === 0) { model.acked(s, n, v, fua); noteAcked(s, n, v); }
      cut = { s, n, v };
    } else if (r < 52) {
      const [s, n] = pickRange();
      model.issued(s, n, 0);
      const trim = rng.chance(0.5);
      trace?.(`step ${step} ${trim ? 'trim' : 'zero'} sectors ${s}+${n}${midCrash ? ' midcrash' : ''}`);
      inFlight = { s, n, v: 0 };
      outcome = await op((d) => (trim ? cache.trim(s * SECTOR, n * SECTOR, d) : cache.zero(s * SECTOR, n * SECTOR, d)), midCrash);
      inFlight = null;
      if (outcome === 0) { model.acked(s, n, 0, false); noteAcked(s, n, 0); }
      cut = { s, n, v: 0 };
    } else if (r < 75) {
      const [s, n] = pickRange();
      const buf = Buffer.alloc(n * SECTOR);
      outcome = await op((d) => cache.read(s * SECTOR, buf, d), midCrash);
      if (outcome === 0) {
        for (let i = 0; i < n; i++) {
          const want = model.latest[s + i]!;
          if (identify(buf.subarray(i * SECTOR, (i + 1) * SECTOR), s + i, [want], scratch) !== want) {
            fail(`step ${step}: read of sector ${s + i} does not return version ${want}`);
          }
        }
      }
    } else if (opts.modes && r >= 97) {
      mode = rng.below(5);
      trace?.(`step ${step} mode ${mode}`);
      cache.opened.shared.mode = mode;
      outcome = 0;
    } else if (r < 85) {
      res.flushes++;
      trace?.(`step ${step} flush${midCrash ? ' midcrash' : ''}`);
      outcome = await op((d) => cache.flush(d), midCrash);
      if (outcome === 0) { model.flushed(); epoch++; }
    } else {
      outcome = await op((d) => { void cache.background(100 + rng.below(1500)).then(() => d(0), (e) => { if (e instanceof CrashNow) d(0); else throw e; }); }, midCrash);
    }
    if (outcome !== 'crashed' && outcome !== 0) fail(`step ${step}: operation failed with errno ${outcome}`);
    // A write in a mode that writes the origin first reaches it ahead of older dirty data still
    // draining (as in bcache): the epoch guarantee is writeback's, and holds until then.
    if (mode !== 0 && mode !== 4) wentThrough = true;
    if (violation) throw violation;
    if (opts.epochCheck !== false && !wentThrough && rng.chance(1 / 12)) checkEpochPrefix(`step ${step}, the cache lost`);
    if (outcome === 'crashed' || rng.chance(1 / crashEvery)) {
      trace?.(`step ${step} crash (${outcome === 'crashed' ? 'inside the operation' : 'between operations'})`);
      await crashAndRestart();
      cut = null;
    }
  }
  for (const e of cache.engines) res.bypasses += 0 * e.queuedWrites;
  await cache.drain();
  if (violation) throw violation;
  for (let s = 0; s < sectors; s++) {
    if (identify(origin.data.subarray(s * SECTOR, (s + 1) * SECTOR), s, [model.latest[s]!], scratch) < 0) {
      fail(`after the final drain, origin sector ${s} does not hold version ${model.latest[s]}`);
    }
  }
  return res;
}
