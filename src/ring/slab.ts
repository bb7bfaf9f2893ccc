// Page allocator over one stripe's payload slab. Only the coordinator thread allocates and
// frees, so no atomics. Frees arrive out of order (replies complete out of order); next-fit
// over a page map keeps the common 4 KiB case O(1) amortised.

import { SLAB_PAGE } from './layout.js';

export class SlabAllocator {
  readonly pages: number;
  /** 1 per page in use. */
  readonly #used: Uint8Array;
  #hint = 0;
  #freePages: number;

  constructor(bytes: number) {
    if (bytes % SLAB_PAGE !== 0 || bytes <= 0) throw new RangeError(`slab size ${bytes} must be a positive multiple of ${SLAB_PAGE}`);
    this.pages = bytes / SLAB_PAGE;
    this.#used = new Uint8Array(this.pages);
    this.#freePages = this.pages;
  }

  get freeBytes(): number {
    return this.#freePages * SLAB_PAGE;
  }

  static pagesFor(bytes: number): number {
    return Math.max(1, Math.ceil(bytes / SLAB_PAGE));
  }

  /** Byte offset of a contiguous run of `bytes`, or -1 when none is free now. */
  alloc(bytes: number): number {
    const need = SlabAllocator.pagesFor(bytes);
    if (need > this.#freePages) return -1;
    const used = this.#used;
    const n = this.pages;
    // Next-fit from the hint, wrapping once; a run never wraps past the end of the slab.
    let i = this.#hint;
    let scanned = 0;
    while (scanned <= n) {
      if (i + need > n) {
        scanned += n - i;
        i = 0;
        continue;
      }
      let j = 0;
      while (j < need && used[i + j] === 0) j++;
      if (j === need) {
        used.fill(1, i, i + need);
        this.#freePages -= need;
        this.#hint = i + need === n ? 0 : i + need;
        return i * SLAB_PAGE;
      }
      scanned += j + 1;
      i += j + 1;
    }
    return -1;
  }

  /** Bytes in the longest run of free pages (a full scan: only for the rare fragmented case). */
  largestFreeRun(): number {
    const used = this.#used;
    let best = 0;
    let run = 0;
    for (let i = 0; i < this.pages; i++) {
      run = used[i] === 0 ? run + 1 : 0;
      if (run > best) best = run;
    }
    return best * SLAB_PAGE;
  }

  free(offset: number, bytes: number): void {
    const first = offset / SLAB_PAGE;
    const count = SlabAllocator.pagesFor(bytes);
    if (!Number.isInteger(first) || first < 0 || first + count > this.pages) throw new RangeError(`bad slab free ${offset}+${bytes}`);
    this.#used.fill(0, first, first + count);
    this.#freePages += count;
  }
}
