// A WRITE, TRIM or WRITE_ZEROES as the engine holds it while it waits (for cache space, for an
// overlapping write on the origin) or travels a path (cache, origin first, bypass).

import type { Done } from './data-runs.js';

export interface Queued {
  kind: 'write' | 'trim' | 'zero';
  off: number;
  len: number;
  data: Uint8Array | null;
  fua: boolean;
  done: Done;
  since: number;
  /** Goes to the origin first (writethrough, writearound, passthrough): see src/cache/write-through.ts. */
  through: boolean;
}
