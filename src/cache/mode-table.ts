// The cache modes as rows of one table (as OCF's engine/cache_engine.c dispatches them): what a
// mode does is read here, not decided by a comparison in every path of the engine.

import { MODE_PASSTHROUGH, MODE_WRITEAROUND, MODE_WRITEBACK, MODE_WRITEONLY, MODE_WRITETHROUGH } from './shared.js';

export interface ModeRow {
  /** Writes go to the origin first (src/cache/engine.ts "modes that write the origin first"). */
  readonly originFirst: boolean;
  /** A WRITE that reached the origin is then cached as a clean copy. */
  readonly cleanCopy: boolean;
  /** Read misses may be promoted into the cache. */
  readonly promote: boolean;
}

const ROWS: readonly ModeRow[] = (() => {
  const rows: ModeRow[] = [];
  rows[MODE_WRITEBACK] = { originFirst: false, cleanCopy: false, promote: true };
  rows[MODE_WRITEONLY] = { originFirst: false, cleanCopy: false, promote: false };
  rows[MODE_WRITETHROUGH] = { originFirst: true, cleanCopy: true, promote: true };
  rows[MODE_WRITEAROUND] = { originFirst: true, cleanCopy: false, promote: true };
  rows[MODE_PASSTHROUGH] = { originFirst: true, cleanCopy: false, promote: false };
  return rows;
})();

/** The row of mode `m` (MODE_*); a value no row names behaves as writearound, the safe side. */
export function modeRow(m: number): ModeRow {
  return ROWS[m] ?? ROWS[MODE_WRITEAROUND]!;
}
