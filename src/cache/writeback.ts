// Writeback: the key log from dirty_tail to the origin, then dirty_tail moves (and is persisted).
//
// Epoch order (the default, beyond dm-pcache): every acknowledged FLUSH (and FUA) ends an epoch
// in the log (a KSET_EPOCH kset). Inside an epoch the order of writes does not matter to any
// client, so writeback merges overwrites (a byte goes out once, in its newest version), sorts by
// origin offset, coalesces adjacent extents into large writes and keeps `writeback.jobs` of them
// in flight; at the end of the epoch it syncs the origin and only then moves dirty_tail past it.
// An epoch larger than a window is written in several windows, each synced before the next. So
// if the cache is lost at any moment, the origin holds every epoch up to some point plus part of
// the next one, and nothing later.
//
// Strict order (dm-pcache's, PCACHED_WRITEBACK_ORDER=strict, kept to compare): one kset at a
// time, in log order, each followed by an origin sync. It is the same walk with more epoch
// boundaries: every `batchKsets` ksets (1: every kset) end an epoch as well as the marks do.
// Merging newest-first inside an epoch writes what applying its keys in log order would leave, so
// sorting and coalescing there keep dm-pcache's result and its syncs.
//
// When to step, and how fast, is the policy's (writeback-policy.ts); this file only does it.

import { alignedBuffer } from '../io/aligned.js';
import type { BlockDevice } from './blockdev.js';
import { DIRTY_TAIL_OFFSETS, KSET_MAX_SIZE, crc32cOf, dataOffset } from './layout.js';
import { KEY_DIRTY, KEY_TRIM, KEY_ZERO, needsWriteback } from './kset.js';
import type { CacheKey } from './kset.js';
import { limitsOf, readKsetAt } from './log.js';
import type { Geometry } from './log.js';
import { dirtyTailCodec } from './meta-slots.js';
import type { LogPosition } from './meta-slots.js';
import { ERR_ORIGIN_IO, ERR_WRITEBACK, REC_DIRTY_TAIL } from './shared.js';
import type { CacheShared, RecordUndo } from './shared.js';
import type { Origin } from '../origin/types.js';
import type { EngineLog } from './engine.js';
import { errnoName } from '../util/errno.js';
import type { Clock } from './writeback-policy.js';

/** Keys and ksets one window reads at most: bounds its memory (keys, not data). */
const WINDOW_KEYS = 65_536;
const WINDOW_KSETS = 4096;
/** Back-off (ms) between in-place retries of one failed origin request. */
const REQUEST_RETRIES = [20, 50, 100, 250, 500];
/** A coalesced origin write is at most this long. */
const RUN_MAX_BYTES = 1 << 20;

export type WritebackOrder = 'epoch' | 'strict';

interface Piece { key: CacheKey; off: number; len: number; shared: boolean }

/**
 * The parts of each key that no later key in the batch overwrites, in log order. Walks the keys
 * newest first with a sorted list of covered intervals (a batch is at most a few thousand keys).
 */
export function resolveNewestFirst(keys: readonly CacheKey[]): Piece[] {
  const covered: [number, number][] = []; // sorted, disjoint, merged
  const out: Piece[][] = [];
  for (let i = keys.length - 1; i >= 0; i--) {
    const k = keys[i]!;
    const a = k.originOffset, b = a + k.length;
    const mine: Piece[] = [];
    let cur = a;
    let j = lowerBound(covered, a);
    for (; j < covered.length && covered[j]![0] < b; j++) {
      const [ca, cb] = covered[j]!;
      if (ca > cur) mine.push({ key: k, off: cur, len: ca - cur, shared: false });
      cur = Math.max(cur, cb);
    }
    if (cur < b) mine.push({ key: k, off: cur, len: b - cur, shared: false });
    if (mine.length > 1) for (const p of mine) p.shared = true;
    out.push(mine);
    insertInterval(covered, a, b);
  }
  return out.reverse().flat();
}

/** First interval whose end is past `x`. */
function lowerBound(iv: [number, number][], x: number): number {
  let lo = 0, hi = iv.length;
  while (lo < hi) {
    const m = (lo + hi) >> 1;
    if (iv[m]![1] <= x) lo = m + 1; else hi = m;
  }
  return lo;
}

function insertInterval(iv: [number, number][], a: number, b: number): void {
  let i = lowerBound(iv, a);
  // Merge with every interval touching [a, b).
  if (i > 0 && iv[i - 1]![1] === a) i--;
  let j = i;
  while (j < iv.length && iv[j]![0] <= b) {
    a = Math.min(a, iv[j]![0]);
    b = Math.max(b, iv[j]![1]);
    j++;
  }
  iv.splice(i, j - i, [a, b]);
}

export interface WritebackOptions {
  /** Origin requests in flight at once inside a batch (default: the shared `writeback.jobs` word). */
  concurrency?: number;
  /** Default 'epoch'. */
  order?: WritebackOrder;
  /** Ksets per origin sync in strict order (dm-pcache: 1). */
  batchKsets: number;
  log?: EngineLog;
  /** Times the epochs for `pace` (default performance.now()). */
  clock?: Clock;
  /**
   * Called after each epoch (or strict batch) with the bytes it wrote and the milliseconds it took:
   * `writeback.rate` sleeps here, so a window of many epochs is paced epoch by epoch.
   */
  pace?: (bytes: number, ms: number) => Promise<void>;
  /** Blocks of the batch being written to the origin (dm-writecache's "blocks under writeback"); 0 between batches. */
  onInflight?: (blocks: number) => void;
}

export interface WritebackStats {
  ksets: number;
  keys: number;
  bytes: number;
  originSyncs: number;
  errors: number;
  /** Extents whose data failed its CRC: skipped, never written to the origin. */
  crcSkipped: number;
  /** Epochs (or windows of one; strict order: batches) written back and synced. */
  epochs: number;
  /** Origin requests that failed and were retried in place. */
  retries: number;
}

/** A latched structural error (bad kset, data CRC mismatch): writeback stops until restart. */
export class WritebackHalted extends Error {}

/** The cache device could not make writeback's progress durable: retried later, dirty_tail unmoved. */
export class CacheDeviceError extends Error {}

export class OriginIoError extends Error {
  constructor(readonly errno: number, what: string) { super(`origin ${what} failed: ${errnoName(errno)}`); }
}

function call(fn: (cb: (errno: number) => void) => void, what: string): Promise<void> {
  return new Promise((resolve, reject) => fn((errno) => (errno === 0 ? resolve() : reject(new OriginIoError(errno, what)))));
}

export class Writeback {
  readonly stats: WritebackStats = { ksets: 0, keys: 0, bytes: 0, originSyncs: 0, errors: 0, crcSkipped: 0, epochs: 0, retries: 0 };
  private readonly kbuf = Buffer.alloc(KSET_MAX_SIZE);
  halted: string | null = null;

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly origin: Origin,
    private readonly opts: WritebackOptions,
  ) {}

  /** True while there is committed log the origin has not seen. */
  get pending(): boolean {
    return this.sh.dirtyTail().lsn < this.sh.headLsn;
  }

  /**
   * One batch; resolves to the bytes written back (0: nothing to do). Rejects with OriginIoError
   * (retry later: dirty_tail did not move) or WritebackHalted.
   */
  async step(): Promise<number> {
    if (this.halted) throw new WritebackHalted(this.halted);
    const head = this.sh.headLsn;
    const pos: LogPosition = this.sh.dirtyTail();
    if (pos.lsn >= head) return 0;
    // The origin must never hold data a crash could take back from the cache: only durable ksets go.
    if (this.sh.durableLsn < head) this.sh.syncCache(this.dev);
    const limit = Math.min(head, this.sh.durableLsn);
    return this.stepEpochs(pos, limit);
  }

  /**
   * One origin request, retried in place a few times with a short back-off before the batch is
   * given up (and retried whole by the worker, with a longer one): an origin that fails a share of
   * its writes at random (nbdkit's error filter at 10 %) would otherwise fail every batch of a few
   * hundred requests, for ever. Order inside an epoch is free, so retrying one request is safe.
   */
  private async retry(fn: (cb: (errno: number) => void) => void, what: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await call(fn, what);
        return;
      } catch (err) {
        if (!(err instanceof OriginIoError) || attempt >= REQUEST_RETRIES.length) throw err;
        this.stats.retries++;
        this.sh.setError(ERR_ORIGIN_IO);
        await new Promise((r) => setTimeout(r, REQUEST_RETRIES[attempt]));
      }
    }
  }

  private get jobs(): number {
    return this.opts.concurrency ?? Math.max(1, this.sh.writebackJobs);
  }

  /** One window: the epochs (or the part of one) it holds, each written, synced and then passed by dirty_tail. */
  private async stepEpochs(start: LogPosition, limit: number): Promise<number> {
    const lim = limitsOf(this.g);
    const strict = this.opts.order === 'strict';
    const batch = Math.max(1, this.opts.batchKsets);
    // The one difference between the orders: where an epoch ends. A mark always ends one (so the
    // origin stays an epoch prefix in both); strict order also ends one every `batchKsets` ksets.
    const endsEpoch = (epochMark: boolean, g: Group): boolean => epochMark || (strict && g.ksets >= batch);
    interface Group { keys: CacheKey[]; end: LogPosition; ksets: number; keyCount: number; dirty: number; marked: boolean }
    const groups: Group[] = [];
    let cur: Group = { keys: [], end: start, ksets: 0, keyCount: 0, dirty: 0, marked: false };
    let pos = start;
    let keys = 0, ksets = 0;
    while (pos.lsn < limit && keys < WINDOW_KEYS && ksets < WINDOW_KSETS) {
      const r = readKsetAt(this.dev, this.g, pos, lim, this.kbuf);
      if ('error' in r) {
        if (ksets > 0) break; // write what verified; the next step halts here
        return this.halt(`kset at sequence ${pos.lsn} (segment ${pos.segment} offset ${pos.offset}) does not verify: ${r.error}`);
      }
      ksets++;
      cur.ksets++;
      for (const k of r.kset.keys) {
        if (!needsWriteback(k.flags)) continue;
        keys++;
        cur.keyCount++;
        cur.dirty += k.length;
        if (k.flags === KEY_DIRTY && k.generation !== this.sh.genOf(k.segment)) {
          this.opts.log?.warn({ segment: k.segment, origin: k.originOffset }, 'writeback: key names a reclaimed segment; skipped');
          continue;
        }
        cur.keys.push(k);
      }
      pos = r.next;
      cur.end = pos;
      cur.marked = r.kset.epoch;
      if (endsEpoch(r.kset.epoch, cur)) {
        groups.push(cur);
        cur = { keys: [], end: pos, ksets: 0, keyCount: 0, dirty: 0, marked: false };
      }
    }
    if (cur.ksets > 0) groups.push(cur);
    const now = (): number => (this.opts.clock ? this.opts.clock.now() : performance.now());
    let bytes = 0;
    for (const g of groups) {
      // A stop waits for the epoch in progress, not for the window (thousands of them, strict).
      if (this.sh.stopping) break;
      const t0 = now();
      const before = bytes;
      let blocks = 0;
      for (const k of g.keys) if (k.flags === KEY_DIRTY) blocks += Math.ceil(k.length / 4096);
      this.opts.onInflight?.(blocks);
      try {
        if (g.keys.length > 0) {
          const mark = this.sh.originFlushFails;
          bytes += await this.writeEpoch(g.keys);
          // Never retried in place: a flush that failed may have dropped the writes it should have
          // made durable, and a second one would succeed without them. The group fails, dirty_tail
          // stays, and the next step writes everything from dirty_tail again before flushing.
          await this.flushOrigin(mark);
          this.stats.originSyncs++;
        }
      } finally {
        this.opts.onInflight?.(0);
      }
      this.sh.clearError(ERR_ORIGIN_IO);
      this.persistDirtyTail(g.end);
      this.sh.addDirty(-g.dirty);
      if (g.marked) this.sh.addEpochsPending(-1);
      this.stats.ksets += g.ksets;
      this.stats.keys += g.keyCount;
      this.stats.epochs++;
      if (bytes > before) await this.opts.pace?.(bytes - before, now() - t0);
    }
    this.stats.bytes += bytes;
    return Math.max(bytes, 1);
  }

  /**
   * One epoch (or a window of one): overlaps merged newest-first, the pieces sorted by origin
   * offset and adjacent ones of a kind coalesced (up to 1 MiB), then up to `jobs` origin requests
   * in flight. Order inside an epoch is free; the caller syncs the origin after it.
   */
  private async writeEpoch(keys: readonly CacheKey[]): Promise<number> {
    const pieces = resolveNewestFirst(keys).sort((a, b) => a.off - b.off);
    const runs: Piece[][] = [];
    let run: Piece[] = [];
    let runLen = 0;
    for (const p of pieces) {
      const prev = run[run.length - 1];
      if (prev && (prev.key.flags !== p.key.flags || prev.off + prev.len !== p.off || runLen + p.len > RUN_MAX_BYTES)) {
        runs.push(run);
        run = [];
        runLen = 0;
      }
      run.push(p);
      runLen += p.len;
    }
    if (run.length > 0) runs.push(run);
    const verified = new Map<CacheKey, Buffer | null>();
    let next = 0;
    let bytes = 0;
    const worker = async (): Promise<void> => {
      while (next < runs.length) {
        const r = runs[next++]!;
        const first = r[0]!;
        const off = first.off;
        let len = 0;
        for (const p of r) len += p.len;
        const flags = first.key.flags;
        if (flags === KEY_TRIM) {
          await this.retry((cb) => this.origin.trim(off, len, false, cb), 'trim');
          continue;
        }
        if (flags === KEY_ZERO) {
          await this.retry((cb) => this.origin.zero(off, len, { noHole: false, fastZero: false, fua: false }, cb), 'zero');
          continue;
        }
        // DIRTY: gather the run's data; a key whose data fails its CRC splits the run around it.
        // An origin with a direct path for aligned writes (file.ts directWrites) gets aligned memory.
        const buf = this.origin.writeAlign !== undefined ? alignedBuffer(len, false) : Buffer.allocUnsafe(len);
        const good: [number, number][] = [];
        let at = 0;
        for (const p of r) {
          const into = buf.subarray(at, at + p.len);
          if (this.readPiece(p, into, verified)) {
            const lastGood = good[good.length - 1];
            if (lastGood && lastGood[0] + lastGood[1] === at) lastGood[1] += p.len;
            else good.push([at, p.len]);
          }
          at += p.len;
        }
        for (const [from, n] of good) {
          await this.retry((cb) => this.origin.write(off + from, buf.subarray(from, from + n), false, cb), 'write');
          bytes += n;
        }
      }
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < Math.min(this.jobs, runs.length); i++) workers.push(worker());
    const results = await Promise.allSettled(workers);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    return bytes;
  }

  /** Reads one piece of a dirty key from the cache; false (logged, counted) when the key's data fails its CRC. */
  private readPiece(p: Piece, into: Buffer, verified: Map<CacheKey, Buffer | null>): boolean {
    const k = p.key;
    const from = p.off - k.originOffset;
    if (!this.g.dataCrc) {
      this.dev.pread(into, dataOffset(k.segment, k.offset + from, this.g.segmentSize));
      return true;
    }
    // The CRC covers the whole key: read and check it once, then copy the pieces out of it.
    let data = verified.get(k);
    if (data === undefined) {
      data = Buffer.allocUnsafe(k.length);
      this.dev.pread(data, dataOffset(k.segment, k.offset, this.g.segmentSize));
      if (crc32cOf(data) !== k.dataCrc) {
        this.stats.crcSkipped++;
        this.opts.log?.error({ origin: k.originOffset, length: k.length, segment: k.segment, offset: k.offset }, 'writeback: data CRC mismatch; extent not written back');
        data = null;
      }
      if (!p.shared && data !== null) {
        data.copy(into, 0, from, from + p.len);
        return true;
      }
      verified.set(k, data);
    }
    if (data === null) return false;
    data.copy(into, 0, from, from + p.len);
    return true;
  }

  /**
   * dirty_tail moves past an epoch only once that is durable on the cache device, and before any
   * origin write of the next epoch: replaying from an older tail after a power cut would write
   * older epochs again over newer ones already on the origin (a state the client never saw). One
   * epoch back is harmless: rewriting the epoch in progress leaves a prefix plus part of it.
   * (A record written after the device failed is still made durable by a later good sync; one
   * written before is not trusted: `since`.)
   */
  private persistDirtyTail(pos: LogPosition): void {
    const sh = this.sh;
    const mark = sh.syncMark();
    let undo: RecordUndo;
    try {
      undo = sh.writeRecord(this.dev, REC_DIRTY_TAIL, DIRTY_TAIL_OFFSETS, dirtyTailCodec, pos, this.g.salt);
    } catch (err) {
      throw new CacheDeviceError(`dirty tail write failed: ${(err as Error).message}`);
    }
    if (!sh.syncCache(this.dev, mark)) {
      // Maybe not on the device: the next attempt rewrites the same slot, never the durable one.
      sh.undoRecord(REC_DIRTY_TAIL, undo);
      throw new CacheDeviceError('the cache device sync after the dirty tail failed');
    }
    sh.setDirtyTail(pos);
  }

  /**
   * One origin flush covering what was written since `mark` (the shared count of failed origin
   * flushes when the writes began). A failure is counted where the stripes see it; a flush that
   * failed anywhere since the mark may have dropped these writes, so this one proves nothing.
   */
  private async flushOrigin(mark: number): Promise<void> {
    try {
      await call((cb) => this.origin.flush(cb), 'flush');
    } catch (err) {
      this.sh.noteOriginFlushFailed();
      throw err;
    }
    if (this.sh.originFlushFails !== mark) throw new OriginIoError(5, 'flush (another origin flush failed meanwhile)');
  }

  private halt(why: string): never {
    this.halted = why;
    this.sh.setError(ERR_WRITEBACK);
    this.opts.log?.error({ why }, 'writeback halted');
    throw new WritebackHalted(why);
  }
}
