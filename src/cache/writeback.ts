// Log-ordered writeback (dm-pcache parity): walk the key log from dirty_tail, write every dirty
// extent (and every trim/zero) to the origin in log order, sync the origin, and only then move
// and persist dirty_tail. If the cache is lost at any moment, the origin holds a prefix of the
// log plus part of the batch in flight.

import type { BlockDevice } from './blockdev.js';
import { DIRTY_TAIL_OFFSETS, KSET_MAX_SIZE, crc32cOf, dataOffset } from './layout.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_TRIM } from './kset.js';
import { limitsOf, readKsetAt } from './log.js';
import type { Geometry } from './log.js';
import { dirtyTailCodec } from './meta-slots.js';
import type { LogPosition } from './meta-slots.js';
import { ERR_ORIGIN_IO, ERR_WRITEBACK, REC_DIRTY_TAIL } from './shared.js';
import type { CacheShared } from './shared.js';
import type { Origin } from '../origin/types.js';
import type { EngineLog } from './engine.js';
import { errnoName } from '../coordinator/io.js';

export interface WritebackOptions {
  /** Ksets per origin sync (dm-pcache: 1). */
  batchKsets: number;
  log?: EngineLog;
}

export interface WritebackStats {
  ksets: number;
  keys: number;
  bytes: number;
  originSyncs: number;
  errors: number;
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
  readonly stats: WritebackStats = { ksets: 0, keys: 0, bytes: 0, originSyncs: 0, errors: 0 };
  private readonly kbuf = Buffer.alloc(KSET_MAX_SIZE);
  private data = Buffer.alloc(1 << 20);
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
    let bytes = 0, ksets = 0, keys = 0, dirtyDone = 0;
    while (pos.lsn < limit && ksets < this.opts.batchKsets) {
      const r = readKsetAt(this.dev, this.g, pos, lim, this.kbuf);
      if ('error' in r) return this.halt(`kset at sequence ${pos.lsn} (segment ${pos.segment} offset ${pos.offset}) does not verify: ${r.error}`);
      ksets++;
      if (!r.kset.last) {
        for (const k of r.kset.keys) {
          if (k.flags === KEY_CLEAN) continue;
          keys++;
          dirtyDone += k.length;
          if (k.flags === KEY_DIRTY) {
            if (k.generation !== this.sh.genOf(k.segment)) {
              this.opts.log?.warn({ segment: k.segment, origin: k.originOffset }, 'writeback: key names a reclaimed segment; skipped');
              continue;
            }
            if (this.data.length < k.length) this.data = Buffer.alloc(k.length);
            const buf = this.data.subarray(0, k.length);
            this.dev.pread(buf, dataOffset(k.segment, k.offset, this.g.segmentSize));
            if (this.g.dataCrc && crc32cOf(buf) !== k.dataCrc) {
              return this.halt(`data CRC mismatch for origin ${k.originOffset}+${k.length} (segment ${k.segment} offset ${k.offset})`);
            }
            await call((cb) => this.origin.write(k.originOffset, buf, false, cb), 'write');
            bytes += k.length;
          } else if (k.flags === KEY_TRIM) {
            await call((cb) => this.origin.trim(k.originOffset, k.length, false, cb), 'trim');
          } else {
            await call((cb) => this.origin.zero(k.originOffset, k.length, { noHole: false, fastZero: false, fua: false }, cb), 'zero');
          }
        }
      }
      pos = r.next;
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

  private halt(why: string): never {
    this.halted = why;
    this.sh.setError(ERR_WRITEBACK);
    this.opts.log?.error({ why }, 'writeback halted');
    throw new WritebackHalted(why);
  }
}
