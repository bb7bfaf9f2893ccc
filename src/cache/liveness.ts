// Whether an index entry still names the data it was written with. GC frees a segment by giving it
// a new generation, and never tells the stripes one by one: every reader compares the generation
// its entry recorded with the segment's current one, before and (for reads) after touching it.

import { ExtentFlag, IndexFullError } from './index/extent-index.js';
import type { Extent, ExtentIndex } from './index/extent-index.js';
import type { Replaced } from './index/cursor.js';

interface Located { flags: number; seg: number; gen: number }

/** True while segment `seg` still has generation `gen` (GC has not freed it since). */
export function segmentLive(gens: Int32Array, seg: number, gen: number): boolean {
  return Atomics.load(gens, seg) === gen;
}

/** A DIRTY or CLEAN entry whose segment GC has freed: it names bytes that are no longer its own. */
export function staleData(gens: Int32Array, e: Located): boolean {
  return (e.flags & (ExtentFlag.DIRTY | ExtentFlag.CLEAN)) !== 0 && !segmentLive(gens, e.seg, e.gen);
}

/** A DIRTY or CLEAN entry whose segment still holds its data. */
export function liveData(gens: Int32Array, e: Located): boolean {
  return (e.flags & (ExtentFlag.DIRTY | ExtentFlag.CLEAN)) !== 0 && segmentLive(gens, e.seg, e.gen);
}

/** Drops the index entries whose segment GC has freed. */
export function sweepStale(index: ExtentIndex, gens: Int32Array): void {
  index.removeIf((e) => staleData(gens, e));
}

/** Index inserts never fail for lack of memory while stale entries can be swept. */
export function insertSweeping(index: ExtentIndex, gens: Int32Array, e: Extent, replaced?: Replaced): void {
  try {
    index.insert(e, replaced);
  } catch (err) {
    if (!(err instanceof IndexFullError)) throw err;
    sweepStale(index, gens);
    index.insert(e, replaced);
  }
}
