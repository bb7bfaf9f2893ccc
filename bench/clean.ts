// Waiting for a cache to be written back, so that a cell measures its own workload and not the
// writeback of the one before it (the growth cells, the direct-I/O QD1 cell).

import type { CellKit } from './slow-disk.js';

/** Seconds until no block is dirty. */
export async function waitClean(kit: CellKit, control: string, limitMs = 900_000): Promise<number> {
  const t0 = Date.now();
  while ((kit.pcachedStatus(control).cacheState?.dirtyBlocks ?? 0) > 0) {
    if (Date.now() - t0 > limitMs) throw new Error(`the cache was not written back in ${limitMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
  return (Date.now() - t0) / 1000;
}
