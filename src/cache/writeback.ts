// Log-ordered writeback (dm-pcache parity): walk the key log from dirty_tail, write every dirty
// extent (and every trim/zero) to the origin in log order, sync the origin, and only then move
// and persist dirty_tail. If the cache is lost at any moment, the origin holds a prefix of the
// log plus part of the batch in flight.

import type { BlockDevice } from './blockdev.js';
import { DIRTY_TAIL_OFFSETS, KSET_MAX_SIZE, crc32cOf, dataOffset } from './layout.js';
import { KEY_DIRTY, KEY_TRIM, needsWriteback } from './kset.js';
import type { CacheKey } from './kset.js';
import { limitsOf, readKsetAt } from './log.js';
import type { Geometry } from './log.js';
import { dirtyTailCodec } from './meta-slots.js';
import type { LogPosition } from './meta-slots.js';
import { ERR_ORIGIN_IO, ERR_WRITEBACK, REC_DIRTY_TAIL } from './shared.js';
import type { CacheShared } from './shared.js';
import type { Origin } from '../origin/types.js';
import type { EngineLog } from './engine.js';
import { errnoName } from '../coordinator/io.js';

/** Keys per batch: bounds the memory of one batch and the work a failed batch repeats. */
const MAX_BATCH_KEYS = 8192;

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
  /** Origin requests in flight at once inside a batch. */
  concurrency?: number;
  /** Ksets per origin sync (dm-pcache: 1). */
  batchKsets: number;
  log?: EngineLog;
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
}

/** A latched structural error (bad kset, data CRC mismatch): writeback stops until restart. */
export class WritebackHalted extends Error {}

export class OriginIoError extends Error {
  constructor(readonly errno: number, what: string) { super(`origin ${what} failed: ${errnoName(errno)}`); }
}

function call(fn: (cb: (errno: number) => void) => void, what: string): Promise<void> {
  return new Promise((resolve, reject) => fn((errno) => (errno === 0 ? resolve() : reject(new OriginIoError(errno, what)))));
}

export class Writeback {
  readonly stats: WritebackStats = { ksets: 0, keys: 0, bytes: 0, originSyncs: 0, errors: 0, crcSkipped: 0 };
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
    let pos: LogPosition = this.sh.dirtyTail();
    if (pos.lsn >= head) return 0;
    // The origin must never hold data a crash could take back from the cache: only durable ksets go.
    if (this.sh.durableLsn < head) this.sh.syncCache(this.dev);
    const limit = Math.min(head, this.sh.durableLsn);
    const lim = limitsOf(this.g);
    let ksets = 0, keys = 0, dirtyDone = 0;
    const batch: CacheKey[] = [];
    while (pos.lsn < limit && ksets < this.opts.batchKsets && batch.length < MAX_BATCH_KEYS) {
      const r = readKsetAt(this.dev, this.g, pos, lim, this.kbuf);
      if ('error' in r) return this.halt(`kset at sequence ${pos.lsn} (segment ${pos.segment} offset ${pos.offset}) does not verify: ${r.error}`);
      ksets++;
      if (!r.kset.last) {
        for (const k of r.kset.keys) {
          if (!needsWriteback(k.flags)) continue;
          keys++;
          dirtyDone += k.length;
          if (k.flags === KEY_DIRTY && k.generation !== this.sh.genOf(k.segment)) {
            this.opts.log?.warn({ segment: k.segment, origin: k.originOffset }, 'writeback: key names a reclaimed segment; skipped');
            continue;
          }
          batch.push(k);
        }
      }
      pos = r.next;
    }
    let inflight = 0;
    for (const k of batch) if (k.flags === KEY_DIRTY) inflight += Math.ceil(k.length / 4096);
    this.opts.onInflight?.(inflight);
    let bytes: number;
    try {
      bytes = await this.writeBatch(batch);
    } finally {
      this.opts.onInflight?.(0);
    }
    await call((cb) => this.origin.flush(cb), 'flush');
    this.stats.originSyncs++;
    this.sh.clearError(ERR_ORIGIN_IO);
    // No sync of the record: if it is lost, writeback repeats this batch, which is idempotent.
    this.sh.writeRecord(this.dev, REC_DIRTY_TAIL, DIRTY_TAIL_OFFSETS, dirtyTailCodec, pos, this.g.salt);
    this.sh.setDirtyTail(pos);
    this.sh.addDirty(-dirtyDone);
    this.stats.ksets += ksets;
    this.stats.keys += keys;
    this.stats.bytes += bytes;
    return Math.max(bytes, 1);
  }

  /**
   * Writes one batch to the origin: overlaps resolved newest-first (as dm-pcache's per-kset
   * writeback tree does, so superseded bytes inside the batch are not written twice), then up to
   * `concurrency` origin requests in flight. The batch is all-or-nothing for dirty_tail.
   */
  private async writeBatch(batch: readonly CacheKey[]): Promise<number> {
    const pieces = resolveNewestFirst(batch);
    let next = 0;
    let bytes = 0;
    const cache = new Map<CacheKey, Buffer>();
    const run = async (): Promise<void> => {
      while (next < pieces.length) {
        const p = pieces[next++]!;
        const k = p.key;
        if (k.flags === KEY_DIRTY) {
          let data = cache.get(k);
          if (!data) {
            data = Buffer.allocUnsafe(k.length);
            this.dev.pread(data, dataOffset(k.segment, k.offset, this.g.segmentSize));
            if (this.g.dataCrc && crc32cOf(data) !== k.dataCrc) {
              // Never write corrupt data back, and never stop all writeback for one extent (replay
              // already dropped such a key from the index, so the volume serves the origin there).
              // Counted (wb_crc_skipped), not flagged: replay already reported a key it dropped.
              this.stats.crcSkipped++;
              this.opts.log?.error({ origin: k.originOffset, length: k.length, segment: k.segment, offset: k.offset }, 'writeback: data CRC mismatch; extent not written back');
              continue;
            }
            if (p.shared) cache.set(k, data);
          }
          const from = p.off - k.originOffset;
          const src = data.subarray(from, from + p.len);
          await call((cb) => this.origin.write(p.off, src, false, cb), 'write');
          bytes += p.len;
        } else if (k.flags === KEY_TRIM) {
          await call((cb) => this.origin.trim(p.off, p.len, false, cb), 'trim');
        } else {
          await call((cb) => this.origin.zero(p.off, p.len, { noHole: false, fastZero: false, fua: false }, cb), 'zero');
        }
      }
    };
    const workers: Promise<void>[] = [];
    for (let i = 0; i < Math.min(this.opts.concurrency ?? 16, pieces.length); i++) workers.push(run());
    const results = await Promise.allSettled(workers);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    return bytes;
  }

  private halt(why: string): never {
    this.halted = why;
    this.sh.setError(ERR_WRITEBACK);
    this.opts.log?.error({ why }, 'writeback halted');
    throw new WritebackHalted(why);
  }
}
