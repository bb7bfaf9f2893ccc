// The cache side of one coordinator in write-back mode: the cache device opened (formatted when
// blank) and replayed into shared state and per-stripe indexes, the writeback and GC worker
// threads (piscina pools of one thread each), and the cache's part of status and messages.

import fs from 'node:fs';
import { ioBackendUnavailableReason, openAsyncIo, type AsyncIo } from '../io/async-io.js';
import { Piscina } from 'piscina';
import type { Logger } from 'pino';
import type { CacheConfig, CacheMode } from '../config/types.js';
import type { OriginSpec } from '../origin/types.js';
import type { StripeCacheData } from '../ring/layout.js';
import { FileBlockDevice } from '../cache/blockdev.js';
import { openCache, type OpenedCache } from '../cache/replay.js';
import { CACHE_INFO_OFFSETS } from '../cache/layout.js';
import { CACHE_DETACHED, cacheInfoCodec, MAX_GC_PERCENT } from '../cache/meta-slots.js';
import { DEFAULT_GC_PERCENT } from '../cache/format.js';
import { REC_CACHE_INFO, ERR_WRITEBACK, ERR_GC, ERR_CACHE_IO, ERR_ORIGIN_IO, ERR_ORIGIN_FLUSH, MODE_WRITEBACK, MODE_WRITEONLY, modeCode } from '../cache/shared.js';
import { FAIL_WHY, GC_OWNER, STRIPE_OWNER, WRITEBACK_OWNER } from '../cache/durability.js';
import { KeyJournal } from '../cache/journal.js';
import { CounterBlock, CACHE_WORKER_COUNTERS } from '../stats/counters.js';
import { PcachedError } from '../util/errors.js';
import { native } from '../native/index.js';
import { HitReader, type HitReaderDeps } from './hit-reader.js';
import { DirectHits, type DirectHitsDeps } from './direct-hits.js';
import { canAlign } from '../io/aligned.js';
import type { CacheWorkerData } from '../../workers/writeback.js';
import { changedSharedKeys, tunablesOf } from '../config/tunable-descriptors.js';

const WRITEBACK_URL = new URL('../../workers/writeback.js', import.meta.url);
const GC_URL = new URL('../../workers/gc.js', import.meta.url);

/** Ksets per writeback origin sync, and per GC persist. */
const WRITEBACK_BATCH_KSETS = 64;
const GC_BATCH_KSETS = 64;
const BLOCK = 4096;

export interface CacheStatusFields {
  /** The mode does not cache writes as dirty, but dirty data written before is still draining. */
  draining: boolean;
  /** dm-writecache's cleaner is on (writes go to the origin; everything is written back). */
  cleaner: boolean;
  blocks: number;
  freeBlocks: number;
  dirtyBlocks: number;
  segments: number;
  segmentsUsed: number;
  segmentSize: number;
  keyHead: string;
  dirtyTail: string;
  keyTail: string;
  gcPercent: number;
  /** FLUSH epochs in the log that writeback has not finished. */
  epochsPending: number;
  dataCrc: boolean;
  /** The cache device is open O_DIRECT (cacheDirectIo resolved at start). */
  directIo: boolean;
  /** What the stripes' asynchronous I/O runs on (cache reads, a file origin), and why not io_uring. */
  ioBackend: 'io_uring' | 'libuv';
  ioBackendNote?: string;
  /** The extent index of every stripe (shared memory the coordinator holds): extents and bytes in use. */
  index: { extents: number; bytes: number };
  errors: string[];
  /** The cache device failed (a sync or write): sticky until restart, as dm-writecache's error state. */
  failed: boolean;
  workers: Record<string, number>;
  /** What the start-up replay found (keys dropped for a bad data CRC are counted here). */
  replay: { formatted: boolean; ksets: number; keys: number; staleKeys: number; crcErrors: number; stop: string; ms: number };
  /** Filled by the coordinator from the stripe counters. */
  readBlocks?: number;
  readHits?: number;
  writeBlocks?: number;
  writeBypass?: number;
  writeBlocked?: number;
  flushes?: number;
  discards?: number;
  fills?: number;
  crcErrors?: number;
  cacheErrors?: number;
  /** dm-writecache's status fields in their order, then pcached's own (filled by the coordinator). */
  writecache?: WritecacheStatus;
}

/** The 14 dm-writecache status fields in their order, then pcached's own, as `pcached status NAME` prints them. */
export interface WritecacheStatus {
  error: number;
  blocks: number;
  freeBlocks: number;
  blocksUnderWriteback: number;
  readBlocks: number;
  readHits: number;
  writeBlocks: number;
  writeHitsUncommitted: number;
  writeHitsCommitted: number;
  writeBypass: number;
  writeAllocations: number;
  writesBlockedOnFreelist: number;
  flushes: number;
  discards: number;
  mode: string;
  dirtyBlocks: number;
  keyHead: string;
  dirtyTail: string;
  keyTail: string;
  segmentsUsed: number;
  gcPercent: number;
  epochsPending: number;
  writebackBytesPerSec: number;
  hitRatio: number;
}

export const WRITECACHE_FIELDS: readonly (keyof WritecacheStatus)[] = [
  'error', 'blocks', 'freeBlocks', 'blocksUnderWriteback', 'readBlocks', 'readHits', 'writeBlocks', 'writeHitsUncommitted',
  'writeHitsCommitted', 'writeBypass', 'writeAllocations', 'writesBlockedOnFreelist', 'flushes', 'discards',
  'mode', 'dirtyBlocks', 'keyHead', 'dirtyTail', 'keyTail', 'segmentsUsed', 'gcPercent', 'epochsPending', 'writebackBytesPerSec', 'hitRatio',
];

/**
 * Every thread picks its backend the same way (openAsyncIo), so one probe here says what the
 * stripes run on; PCACHED_IO_BACKEND=io_uring where it cannot run fails the start here too.
 */
let IO_BACKEND: { backend: 'io_uring' | 'libuv'; why: string | null } = { backend: 'libuv', why: 'not probed' };
function probeIoBackend(): void {
  let io;
  try {
    io = openAsyncIo();
  } catch (err) {
    throw new PcachedError('ERR_CONFIG', `${(err as Error).message} (PCACHED_IO_BACKEND)`, { cause: err });
  }
  IO_BACKEND = { backend: io.backend, why: ioBackendUnavailableReason() };
  io.close();
}

/**
 * The cache device with the I/O cacheDirectIo asks for. `auto` takes direct I/O for a block device
 * (its page cache would only hold a second copy) and buffered for a file, and falls back to
 * buffered, with a warning, where direct I/O is refused; `on` fails instead.
 */
function openCacheDevice(cache: CacheConfig, log: Logger): FileBlockDevice {
  if (cache.cacheDirectIo === 'off') return FileBlockDevice.open(cache.cache);
  if (cache.cacheDirectIo === 'on') return FileBlockDevice.open(cache.cache, { direct: true });
  let isBlock = false;
  try { isBlock = fs.statSync(cache.cache).isBlockDevice(); } catch { /* open reports it */ }
  if (!isBlock) return FileBlockDevice.open(cache.cache);
  try {
    return FileBlockDevice.open(cache.cache, { direct: true });
  } catch (err) {
    log.warn({ cacheFile: cache.cache, err: (err as Error).message }, 'direct I/O refused on the cache device; using buffered I/O');
    return FileBlockDevice.open(cache.cache);
  }
}

export class CacheRuntime {
  readonly #dev: FileBlockDevice;
  readonly #opened: OpenedCache;
  readonly #pools: Piscina[] = [];
  readonly counters: CounterBlock<(typeof CACHE_WORKER_COUNTERS)[number]>;
  readonly #path: string;
  readonly #log: Logger;
  #queueDepth = 32;

  private constructor(dev: FileBlockDevice, opened: OpenedCache, path: string, log: Logger) {
    this.#dev = dev;
    this.#opened = opened;
    this.#path = path;
    this.#log = log;
    this.counters = new CounterBlock(CACHE_WORKER_COUNTERS);
  }

  static async open(cache: CacheConfig, originSize: number, stripes: number, origin: OriginSpec, log: Logger, logLevel: string): Promise<CacheRuntime> {
    probeIoBackend();
    let dev: FileBlockDevice;
    try {
      dev = openCacheDevice(cache, log);
    } catch (err) {
      // The supervisor names the cache in front of this message.
      throw new PcachedError('ERR_CACHE_FILE', (err as Error).message, { cause: err });
    }
    let opened: OpenedCache;
    try {
      // Replay must read what is on the device, not what the page cache remembers of a run whose
      // sync failed.
      if (!dev.dropPageCache()) log.warn({ cacheFile: cache.cache }, 'could not drop the page cache of the cache file before replay (no native addon)');
      const why = dev.preallocate();
      if (why) log.warn({ cacheFile: cache.cache }, why);
      opened = openCache(dev, {
        originSize, dataCrc: cache.dataCrc, stripes, format: cache.format, discardDirty: cache.discardDirty, cacheName: cache.name, segmentSize: cache.segmentSize, gcPercent: cache.gcPercent, mode: cache.mode,
      });
    } catch (err) {
      dev.close();
      const e = err as PcachedError;
      throw new PcachedError(e.code ?? 'ERR_CACHE_FILE', `${cache.cache}: ${e.message}`, { cause: err });
    }
    const r = opened.report;
    for (const w of r.warnings) log.warn({ cacheFile: cache.cache }, w);
    log.info({
      cacheFile: cache.cache, formatted: r.formatted, ksets: r.ksets, keys: r.keys, staleKeys: r.staleKeys, dirtyKeys: r.dirtyKeys,
      crcErrors: r.crcErrors, stop: r.stop, ms: Math.round(r.ms), segments: opened.geometry.segmentCount, segmentSize: opened.geometry.segmentSize,
    }, r.formatted ? 'cache formatted' : 'cache replayed');
    opened.shared.setTunables(tunablesOf(cache));
    const rt = new CacheRuntime(dev, opened, cache.cache, log);
    rt.#queueDepth = cache.cacheQueueDepth;
    // The configured mode applies at every start (a `message mode` lasts until restart or reload).
    rt.setMode(cache.mode);
    // The stored gc_percent (set at format time or by `message gc_percent`) wins over the default;
    // a value configured explicitly (anything but the default) is applied and persisted.
    if (cache.gcPercent !== DEFAULT_GC_PERCENT && cache.gcPercent !== opened.shared.gcPercent) rt.setGcPercent(cache.gcPercent);
    try {
      await rt.#startWorkers(origin, logLevel);
    } catch (err) {
      await rt.close();
      throw err;
    }
    return rt;
  }

  async #startWorkers(origin: OriginSpec, logLevel: string): Promise<void> {
    const base: Omit<CacheWorkerData, 'batchKsets'> = {
      path: this.#path, direct: this.#dev.isDirect, shared: this.#opened.shared.sab, geometry: this.#opened.geometry, origin, counters: this.counters.sab, logLevel,
    };
    for (const [url, batchKsets, owner, what] of [[WRITEBACK_URL, WRITEBACK_BATCH_KSETS, WRITEBACK_OWNER, 'writeback'], [GC_URL, GC_BATCH_KSETS, GC_OWNER, 'gc']] as const) {
      const pool = new Piscina({
        filename: url.href, minThreads: 1, maxThreads: 1, idleTimeout: Infinity, atomics: 'disabled', concurrentTasksPerWorker: 2,
        workerData: { ...base, batchKsets } satisfies CacheWorkerData,
      });
      // A worker thread that dies (a bug) must not take writeback or GC with it for the rest of the
      // daemon's life, nor leave a lock held: free its locks, start a new thread.
      pool.on('error', (err: unknown) => {
        if (this.#opened.shared.stopping) return;
        this.#opened.shared.releaseLocksOf(owner);
        this.#log.error({ err, worker: what }, 'cache worker thread died; restarting it');
        setTimeout(() => { if (!this.#opened.shared.stopping) pool.run({ op: 'start' }).catch((e: unknown) => this.#log.error({ err: e, worker: what }, 'cache worker restart failed')); }, 250).unref();
      });
      this.#pools.push(pool);
      await pool.run({ op: 'start' });
    }
  }

  readonly #journals: KeyJournal[] = [];

  stripeData(stripe: number): StripeCacheData {
    const o = this.#opened;
    this.#journals[stripe] ??= KeyJournal.create();
    return { path: this.#path, direct: this.#dev.isDirect, queueDepth: this.#queueDepth, shared: o.shared.sab, index: o.indexes[stripe]!.sabs, blockCrc: o.blockCrc, geometry: o.geometry, journal: this.#journals[stripe]!.sab };
  }

  /** A stripe thread died: locks it held are freed before its successor (or anyone) waits on them. */
  stripeDied(stripe: number): void {
    if (this.#opened.shared.releaseLocksOf(STRIPE_OWNER + stripe)) this.#log.warn({ stripe }, 'released the cache locks a dead stripe thread held');
  }

  get shared() {
    return this.#opened.shared;
  }

  /** `message NAME gc_percent N`: applied at once and persisted in the cache info record. */
  setGcPercent(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > MAX_GC_PERCENT) {
      throw new PcachedError('ERR_BAD_ARGUMENT', `gc_percent must be an integer 0-${MAX_GC_PERCENT}`);
    }
    const sh = this.#opened.shared;
    const info = { ...this.#opened.state.cacheInfo.value, gcPercent: n };
    sh.writeRecord(this.#dev, REC_CACHE_INFO, CACHE_INFO_OFFSETS, cacheInfoCodec, info, this.#opened.geometry.salt);
    this.#dev.sync();
    this.#opened.state.cacheInfo.value = info;
    sh.gcPercent = n;
  }

  /** The stripes read the mode word per request; the cache info record keeps it for `inspect`. */
  setMode(mode: CacheMode): void {
    const sh = this.#opened.shared;
    sh.mode = modeCode(mode);
    if (this.#opened.state.cacheInfo.value.mode === mode) return;
    const info = { ...this.#opened.state.cacheInfo.value, mode };
    sh.writeRecord(this.#dev, REC_CACHE_INFO, CACHE_INFO_OFFSETS, cacheInfoCodec, info, this.#opened.geometry.salt);
    this.#dev.sync();
    this.#opened.state.cacheInfo.value = info;
  }

  /**
   * pcached detach, last step (the stripes and workers have let go): the cache info record says
   * "detached clean", so the next attach formats it afresh instead of replaying data the origin
   * may have changed since.
   */
  markDetached(): void {
    const sh = this.#opened.shared;
    const info = { ...this.#opened.state.cacheInfo.value, flags: this.#opened.state.cacheInfo.value.flags | CACHE_DETACHED };
    sh.writeRecord(this.#dev, REC_CACHE_INFO, CACHE_INFO_OFFSETS, cacheInfoCodec, info, this.#opened.geometry.salt);
    this.#dev.sync();
    this.#opened.state.cacheInfo.value = info;
  }

  /** A message changed a tunable of the running config: the workers and stripes see it at once. */
  applyTunables(cache: CacheConfig): void {
    this.#opened.shared.setTunables(tunablesOf(cache));
  }

  /** SIGHUP: the reloadable cache keys this runtime owns (both configs are running ones, ./tunables.ts). */
  reconfigure(prev: CacheConfig, next: CacheConfig): string[] {
    const changed: string[] = [];
    if (next.gcPercent !== prev.gcPercent) {
      this.setGcPercent(next.gcPercent);
      changed.push('gcPercent');
    }
    changed.push(...changedSharedKeys(prev, next));
    this.#opened.shared.setTunables(tunablesOf(next));
    return changed;
  }

  status(): CacheStatusFields {
    const sh = this.#opened.shared;
    const g = this.#opened.geometry;
    const perSeg = g.dataAreaSize / BLOCK;
    const pos = (p: { segment: number; offset: number; lsn: number }) => `${p.segment}:${p.offset}#${p.lsn}`;
    const errs = sh.errors;
    const errors: string[] = [];
    if (errs & ERR_WRITEBACK) errors.push('writeback halted');
    if (errs & ERR_GC) errors.push('gc halted');
    if (sh.failed !== 0) errors.push(`cache device failed (${FAIL_WHY[sh.failedWhy] || 'I/O error'}): writes, FLUSH and FUA get EIO until restart; durable data is still read and written back`);
    else if (errs & ERR_CACHE_IO) errors.push('cache device read error');
    if (errs & ERR_ORIGIN_FLUSH) errors.push('origin flush failed after writes that went to the origin first: FLUSH fails until restart');
    if (errs & ERR_ORIGIN_IO) errors.push('origin I/O error (writeback retrying)');
    const dirtyBlocks = Math.ceil(sh.dirtyBytes / BLOCK);
    return {
      draining: dirtyBlocks > 0 && (sh.cleaner || (sh.mode !== MODE_WRITEBACK && sh.mode !== MODE_WRITEONLY)),
      cleaner: sh.cleaner,
      blocks: g.segmentCount * perSeg,
      freeBlocks: sh.freeSegments * perSeg,
      dirtyBlocks,
      segments: g.segmentCount,
      segmentsUsed: sh.usedSegments,
      segmentSize: g.segmentSize,
      keyHead: pos(sh.head()),
      dirtyTail: pos(sh.dirtyTail()),
      keyTail: pos(sh.keyTail()),
      gcPercent: sh.gcPercent,
      epochsPending: sh.epochsPending,
      dataCrc: g.dataCrc,
      directIo: this.#dev.isDirect,
      ioBackend: IO_BACKEND.backend,
      ...(IO_BACKEND.why ? { ioBackendNote: IO_BACKEND.why } : {}),
      index: this.#opened.indexes.reduce((a, ix) => ({ extents: a.extents + ix.count, bytes: a.bytes + ix.bytesUsed }), { extents: 0, bytes: 0 }),
      errors,
      failed: sh.failed !== 0,
      workers: this.counters.snapshot(),
      replay: (({ formatted, ksets, keys, staleKeys, crcErrors, stop, ms }) => ({ formatted, ksets, keys, staleKeys, crcErrors, stop, ms: Math.round(ms) }))(this.#opened.report),
    };
  }

  /** Stop the writeback and GC threads (after their current batch); stripes commit on their own stop. */
  async stopWorkers(): Promise<void> {
    this.#opened.shared.stop();
    await Promise.all(this.#pools.map((p) => p.run({ op: 'stop' }).catch(() => undefined)));
    await Promise.all(this.#pools.map((p) => p.destroy()));
    this.#pools.length = 0;
  }

  /**
   * The coordinator's own path for read hits the page cache holds (hit-reader.ts), or null where
   * it cannot be used: direct I/O, dataCrc, no RWF_NOWAIT read in the addon, or
   * PCACHED_COORDINATOR_HITS=off (to compare, and for tests of the stripes' own hit path).
   */
  hitReader(origin: OriginSpec, count: HitReaderDeps['count']): HitReader | null {
    const nowait = native?.preadNowait;
    if (this.#dev.isDirect || this.#opened.blockCrc !== null || nowait === undefined || process.env.PCACHED_COORDINATOR_HITS === 'off') return null;
    const fd = fs.openSync(this.#path, 'r');
    let originFd: number | null = null;
    if (origin.kind === 'file' && !origin.direct) {
      try {
        originFd = fs.openSync(origin.path, 'r');
      } catch {
        // The stripes have it open; their path serves these reads.
      }
    }
    const reader = new HitReader({
      fd, originFd, preadNowait: (f, v, o) => nowait.call(native, f, v, o), sh: this.#opened.shared, geometry: this.#opened.geometry, indexes: this.#opened.indexes, count,
    });
    this.#hits = { fds: originFd === null ? [fd] : [fd, originFd], reader };
    return reader;
  }

  #hits: { fds: number[]; reader: HitReader } | null = null;

  /**
   * The coordinator's own asynchronous read of hits on a direct-I/O cache device (direct-hits.ts),
   * or null: buffered I/O (hitReader serves those), dataCrc, no aligned buffers, or
   * PCACHED_COORDINATOR_HITS=off.
   */
  directHits(count: DirectHitsDeps['count']): DirectHits | null {
    if (!this.#dev.isDirect || this.#opened.blockCrc !== null || !canAlign() || process.env.PCACHED_COORDINATOR_HITS === 'off') return null;
    const fd = fs.openSync(this.#path, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
    const io = openAsyncIo();
    const reader = new DirectHits({ io, fd, sh: this.#opened.shared, geometry: this.#opened.geometry, indexes: this.#opened.indexes, count });
    this.#direct = { fd, io, reader };
    return reader;
  }

  #direct: { fd: number; io: AsyncIo; reader: DirectHits } | null = null;

  async close(): Promise<void> {
    await this.stopWorkers();
    if (this.#hits) {
      // Off before the descriptor goes: its number may be reused by the next open.
      this.#hits.reader.disable();
      for (const fd of this.#hits.fds) fs.closeSync(fd);
      this.#hits = null;
    }
    if (this.#direct) {
      this.#direct.reader.disable();
      // Completes every read in flight (they answer null: their requests go to the stripes, or die with them).
      this.#direct.io.close();
      fs.closeSync(this.#direct.fd);
      this.#direct = null;
    }
    this.#dev.close();
  }
}
