// Garbage collection (dm-pcache parity): when segment use reaches gc_percent, retire ksets from
// key_tail up to (never past) dirty_tail, oldest first. Each retired data key drops its segment
// reference; a segment left with none gets a new generation (its stale index entries and any
// replayed key naming it die) and is freed; a log segment is freed once the tail leaves it.

import type { BlockDevice } from './blockdev.js';
import { KEY_TAIL_OFFSETS, KSET_MAX_SIZE } from './layout.js';
import { hasData } from './kset.js';
import { limitsOf, readKsetAt, writeSegmentInfo } from './log.js';
import type { Geometry } from './log.js';
import { keyTailCodec } from './meta-slots.js';
import type { LogPosition } from './meta-slots.js';
import { ERR_GC, REC_KEY_TAIL } from './shared.js';
import type { CacheShared, RecordUndo } from './shared.js';
import { FAIL_META_WRITE } from './durability.js';
import { SEGMENT_GEN_SLOTS } from './layout.js';
import { forSegment, segmentGenCodec } from './meta-slots.js';
import { segmentSlots } from './log.js';
import { MAX_GENERATION, SEG_DATA } from './shared.js';
import type { EngineLog } from './engine.js';
import { Errno } from '../util/errno.js';

export interface GcStats { ksets: number; segmentsFreed: number; runs: number }

export class Gc {
  readonly stats: GcStats = { ksets: 0, segmentsFreed: 0, runs: 0 };
  private readonly kbuf = Buffer.alloc(KSET_MAX_SIZE);
  halted: string | null = null;

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly opts: { batchKsets: number; log?: EngineLog },
  ) {}

  /** Segment use has reached gc_percent (0: reclaim whatever is written back). */
  get needed(): boolean {
    return this.neededAfter(0);
  }

  /** Whether use is still at gc_percent once `freeing` segments retired in this batch are free. */
  private neededAfter(freeing: number): boolean {
    return (this.sh.usedSegments - freeing) * 100 >= this.sh.gcPercent * this.g.segmentCount;
  }

  /**
   * Data segments no key and no stripe refers to any more (a data head given up, a fill that was
   * overwritten, a write whose data could not be written): garbage, freed here whatever the use.
   * Only this thread frees segments, and it may wait for the sync gate.
   */
  freeUnreferenced(): number {
    if (this.sh.failed !== 0) return 0;
    const sh = this.sh;
    const segs: number[] = [];
    for (let s = 0; s < sh.segmentCount; s++) {
      if (Atomics.load(sh.state, s) === SEG_DATA && Atomics.load(sh.refs, s) === 0) segs.push(s);
    }
    if (segs.length > 0) freeDataSegment(this.dev, sh, this.g, segs, this.opts.log);
    this.stats.segmentsFreed += segs.length;
    return segs.length;
  }

  /** Retires one batch of ksets; returns how many (0: nothing to do). */
  step(): number {
    // A failed device frees nothing (no generation could be made durable) and takes no new data.
    if (this.halted || this.sh.failed !== 0) return 0;
    const unreferenced = this.freeUnreferenced();
    if (!this.needed) return unreferenced > 0 ? 1 : 0;
    let pos: LogPosition = this.sh.keyTail();
    const limit = this.sh.dirtyTail().lsn;
    if (pos.lsn >= limit) return 0;
    const lim = limitsOf(this.g);
    // References to drop per segment; applied only once the new key tail is durable.
    const drops = new Map<number, number>();
    let freeing = 0;
    const freeLog: number[] = [];
    let n = 0;
    // Stop as soon as the batch frees enough: GC reclaims down to gc_percent, not below.
    while (pos.lsn < limit && n < this.opts.batchKsets && this.neededAfter(freeing + freeLog.length)) {
      const r = readKsetAt(this.dev, this.g, pos, lim, this.kbuf);
      if ('error' in r) {
        this.halted = `kset at sequence ${pos.lsn} does not verify: ${r.error}`;
        this.sh.setError(ERR_GC);
        this.opts.log?.error({ why: this.halted }, 'gc halted');
        break;
      }
      n++;
      if (r.kset.last) freeLog.push(pos.segment);
      else {
        for (const k of r.kset.keys) {
          // A key that was already stale at replay never took a reference.
          if (!hasData(k.flags) || k.generation !== this.sh.genOf(k.segment)) continue;
          const d = (drops.get(k.segment) ?? 0) + 1;
          drops.set(k.segment, d);
          if (d === Atomics.load(this.sh.refs, k.segment)) freeing++;
        }
      }
      pos = r.next;
    }
    if (n === 0) return 0;
    const { dev, sh, g } = this;
    // 1. The new key tail is durable before any retired key loses its reference: otherwise a
    //    crash could keep a segment's new generation and lose the tail, and replay would then
    //    skip the retired data keys while still replaying older trim/zero keys under them.
    const mark = sh.syncMark();
    let undo: RecordUndo | null = null;
    try {
      undo = sh.writeRecord(dev, REC_KEY_TAIL, KEY_TAIL_OFFSETS, keyTailCodec, pos, g.salt);
      for (const s of freeLog) writeSegmentInfo(dev, sh, g, s, { type: 'free', next: 0xffffffff });
    } catch (err) {
      this.opts.log?.error({ err }, 'gc: cache device write failed');
      sh.fail(Errno.EIO, FAIL_META_WRITE);
    }
    if (undo === null || !sh.syncCache(dev, mark)) {
      // Not durable: nothing is retired, and the next key tail write goes to the same slot.
      if (undo !== null) sh.undoRecord(REC_KEY_TAIL, undo);
      return 0;
    }
    sh.setKeyTail(pos);
    // 2. Drop the references; segments left with none get a new generation, persisted before
    //    they can be reused (a stripe releasing its data head may free one too, never both).
    const freeData: number[] = [];
    for (const [seg, d] of drops) if (sh.unref(seg, d) === 0) freeData.push(seg);
    if (freeData.length > 0) freeDataSegment(dev, sh, g, freeData, this.opts.log);
    for (const s of freeLog) sh.freeSegment(s);
    this.stats.ksets += n;
    this.stats.segmentsFreed += freeData.length + freeLog.length;
    this.stats.runs++;
    return n;
  }
}

/**
 * Frees data segments whose last key reference is gone: bump and persist each generation (stale
 * index entries and replayed keys then ignore the old contents), sync, and only then hand the
 * segments back to the allocator, so new data can never be read through an old key.
 */
export function freeDataSegment(dev: BlockDevice, sh: CacheShared, g: Geometry, segs: readonly number[], log?: EngineLog): void {
  // A failed device frees nothing: a new generation could not be made durable, and nothing new
  // is written into it anyway.
  if (sh.failed !== 0) return;
  const freeing: number[] = [];
  try {
    for (const s of segs) {
      const gen = sh.genOf(s) + 1;
      if (gen > MAX_GENERATION) {
        // Out of generations (2^31 reuses): retired, never reused, so no old key can name new data.
        // It keeps one reference for ever, so nothing tries to free it again.
        log?.warn({ segment: s }, 'segment generation exhausted: segment retired');
        sh.ref(s);
        continue;
      }
      sh.writeSegmentRecord(dev, s, 'gen', segmentSlots(g, s, SEGMENT_GEN_SLOTS), forSegment(segmentGenCodec, s), gen, g.salt);
      sh.setGen(s, gen);
      writeSegmentInfo(dev, sh, g, s, { type: 'free', next: 0xffffffff });
      freeing.push(s);
    }
  } catch (err) {
    log?.error({ err }, 'cache device write failed while freeing segments');
    sh.fail(Errno.EIO, FAIL_META_WRITE);
    return;
  }
  if (!sh.syncCache(dev)) return;
  for (const s of freeing) sh.freeSegment(s);
}
