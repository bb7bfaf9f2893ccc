// Admission of read misses (`promotion nhit:N`): a fixed table of recent misses per stripe, keyed
// by the request's first 4 KiB block. A block is promoted on its N-th miss while its entry lives;
// an entry dies when another block takes its slot or when the table's era moves on (every
// MISS_TABLE_SLOTS misses), so "within a window" means within the last 16-32k misses.

import { BLOCK } from './data-runs.js';

/** Slots of the per-stripe table of recent read misses. */
const MISS_TABLE_SLOTS = 16_384;

export class MissTable {
  readonly #tag = new Float64Array(MISS_TABLE_SLOTS).fill(-1);
  readonly #count = new Uint8Array(MISS_TABLE_SLOTS);
  readonly #era = new Uint32Array(MISS_TABLE_SLOTS);
  #now = 1;
  #missesInEra = 0;

  /** Counts a miss of the block at `off`; true when it has now missed `need` times. */
  admit(off: number, need: number): boolean {
    const block = Math.floor(off / BLOCK);
    const slot = ((block * 2654435761) >>> 0) % MISS_TABLE_SLOTS;
    if (++this.#missesInEra >= MISS_TABLE_SLOTS) { this.#now++; this.#missesInEra = 0; }
    const live = this.#tag[slot] === block && this.#now - this.#era[slot]! <= 1;
    const count = live ? Math.min(255, this.#count[slot]! + 1) : 1;
    this.#tag[slot] = block;
    this.#count[slot] = count;
    this.#era[slot] = this.#now;
    if (count < need) return false;
    this.#tag[slot] = -1; // promoted: its next miss (after eviction) starts over
    return true;
  }
}
