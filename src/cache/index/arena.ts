// Fixed-size page allocator living entirely in the index SABs, so a re-attached owner continues
// with the same free list. Only the owning stripe thread allocates; readers never touch these words.
import {
  GROW_BYTES, IndexFullError, M_CAP_PAGES, M_FREE, M_HIGH, M_PAGES_USED, PAGE_BYTES, PAGE_WORDS, P_NEXT,
} from './layout.js';

export class PageArena {
  /**
   * A fixed-length view, re-made after a grow: V8 reads length-tracking views of a growable SAB
   * 3-4x slower, and the index is the hot path of every request and of replay. Readers in other
   * threads call refresh() before each read to see pages the owner added since.
   */
  w: Int32Array;

  constructor(private readonly meta: Int32Array, private readonly sab: SharedArrayBuffer) {
    this.w = new Int32Array(sab, 0, sab.byteLength >> 2);
  }

  refresh(): void {
    if (this.w.length << 2 !== this.sab.byteLength) this.w = new Int32Array(this.sab, 0, this.sab.byteLength >> 2);
  }

  get capacity(): number { return this.meta[M_CAP_PAGES]; }
  get used(): number { return this.meta[M_PAGES_USED]; }

  /** Pages obtainable right now without failing. */
  available(): number { return this.capacity - this.used; }

  /**
   * Mutations check this up front so that they never fail half-way: pcache keeps a spare key for
   * its split for the same reason. Growing here also keeps grow() outside reader-visible changes.
   */
  ensure(n: number): void {
    if (this.available() < n) throw new IndexFullError(this.capacity);
    let fromFree = 0;
    for (let p = this.meta[M_FREE]; p !== -1 && fromFree < n; p = this.w[p * PAGE_WORDS + P_NEXT]) fromFree++;
    const carveTo = this.meta[M_HIGH] + (n - fromFree);
    const need = carveTo * PAGE_BYTES;
    if (need > this.sab.byteLength) {
      const step = Math.ceil(GROW_BYTES / PAGE_BYTES) * PAGE_BYTES;
      this.sab.grow(Math.min(this.capacity * PAGE_BYTES, Math.ceil(need / step) * step));
      this.refresh();
    }
  }

  /** Callers ensure() first; this never grows. */
  alloc(): number {
    let p = this.meta[M_FREE];
    if (p !== -1) {
      this.meta[M_FREE] = this.w[p * PAGE_WORDS + P_NEXT];
    } else {
      p = this.meta[M_HIGH];
      if (p >= this.capacity || (p + 1) * PAGE_BYTES > this.sab.byteLength) throw new IndexFullError(this.capacity);
      this.meta[M_HIGH] = p + 1;
    }
    this.meta[M_PAGES_USED]++;
    return p;
  }

  free(p: number): void {
    this.w[p * PAGE_WORDS + P_NEXT] = this.meta[M_FREE];
    this.meta[M_FREE] = p;
    this.meta[M_PAGES_USED]--;
  }
}
