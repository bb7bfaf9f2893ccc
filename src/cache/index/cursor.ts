// Position-based editing of one subtree's page chain: the six-case overlap resolution and the
// placeholder passes are written against a cursor (page, index) so each touches only the pages it
// walks. Only the owner thread edits; snapshotRange is the one routine meant for foreign readers,
// and it validates everything it reads because it may be looking at a half-edited chain.
import type { PageArena } from './arena.js';
import {
  ExtentFlag, M_CAP_PAGES, M_COUNT, M_F64_CACHED, META_HDR_WORDS, OFF_BITS, OFF_MASK, PAGE_HDR, PAGE_RECS,
  PAGE_WORDS, P_COUNT, P_NEXT, REC_WORDS, R_GEN, R_LEN, R_OFF_FLAGS, R_SEG, R_SEGOFF, SUB_WORDS, S_HEAD,
  HINTS, HINT_SHIFT, M_HINTED, M_NSUB, hintBase,
} from './layout.js';
import type { Extent } from './layout.js';

const EMPTY = ExtentFlag.EMPTY;
/**
 * Pages on each side of a full page that an insert spreads records over before it adds a page
 * (B*-style: a window of up to 2·SPREAD+1 full pages becomes one page more). Wider windows fill
 * pages better under random inserts, at the price of copying the window; layout.ts has the figures.
 */
const SPREAD = 2;
const WINDOW = 2 * SPREAD + 1;
/**
 * A delete packs its window into one page fewer when the records fit at this fill. Below a full
 * page so that the next insert there does not split right away.
 */
const MERGE_FILL = PAGE_RECS - 4;

const rec = (p: number, i: number): number => p * PAGE_WORDS + PAGE_HDR + i * REC_WORDS;
/** `prev` after a walk that started at a hinted page: the page before it is found when needed. */
const PREV_UNKNOWN = -3;

/** Sees a part of an extent that an insert replaces: length, flags, segment, segment offset, generation. */
export type Replaced = (len: number, flags: number, seg: number, segOff: number, gen: number) => void;

export class Cursor {
  page = -1;
  idx = 0;
  /**
   * Page before `page`, -1 when `page` is the head; unknown at the end of the chain (-2) and when
   * a walk started at a hinted page (PREV_UNKNOWN).
   */
  prev = -1;
  private tail = false;
  private readonly t = { off: 0, len: 0, flags: 0, seg: 0, segOff: 0, gen: 0 };
  /** Owner-local state of window() and respread(): the subtree's chain, the window, its records. */
  private readonly chain: number[] = [];
  private winLo = 0;
  private winHi = 0;
  private winTotal = 0;
  private winAt = 0;
  private winK = 0;
  private readonly spill = new Int32Array(WINDOW * PAGE_RECS * REC_WORDS);

  constructor(private readonly meta: Int32Array, private readonly arena: PageArena, private readonly f64: Float64Array) {}

  /** The arena's current view (it is replaced when the pool grows). */
  private get w(): Int32Array { return this.arena.w; }

  private headWord(slot: number): number { return META_HDR_WORDS + slot * SUB_WORDS + S_HEAD; }
  private count(p: number): number { return this.w[p * PAGE_WORDS + P_COUNT]; }
  private next(p: number): number { return this.w[p * PAGE_WORDS + P_NEXT]; }

  private hintBase(slot: number): number { return hintBase(this.meta[M_NSUB]!, slot); }

  /** A page leaves the chain: hints may name it no more (layout.ts, HINTS). */
  private clearHints(slot: number): void {
    const b = this.hintBase(slot), m = this.meta;
    // Reading leaves untouched memory untouched; only a subtree that has hints is written.
    for (let j = 1; j < HINTS; j++) if (m[b + j] !== 0) { m.fill(0, b + 1, b + HINTS); return; }
  }

  /** Hint every bucket boundary in [lo, hi) at page p: p is the last page starting at or before it. */
  private noteHints(slot: number, lo: number, hi: number, p: number): void {
    let j = ((lo + (1 << HINT_SHIFT) - 1) >>> HINT_SHIFT) || 1;
    if (j >= HINTS || j << HINT_SHIFT >= hi) return;
    const b = this.hintBase(slot), m = this.meta;
    if (m[b] === 0) { m[b] = 1; Atomics.add(m, M_HINTED, 1); }
    for (; j < HINTS && j << HINT_SHIFT < hi; j++) if (m[b + j] !== p + 1) m[b + j] = p + 1;
  }

  /**
   * Where a walk for `so` may start: a page named by the hint of so's bucket whose first record
   * still starts at or before so, or -1 for the head. The caller checks the page as far as it
   * must: the owner's hints name pages of the chain; a foreign reader validates under the seqlock.
   */
  private hinted(slot: number, so: number): number {
    const j = so >>> HINT_SHIFT;
    if (j === 0 || j >= HINTS) return -1;
    const h = this.meta[this.hintBase(slot) + j]! - 1;
    if (h < 0 || h >= this.meta[M_CAP_PAGES]!) return -1;
    const w = this.w, n = w[h * PAGE_WORDS + P_COUNT]! | 0;
    if (n < 1 || n > PAGE_RECS || (w[rec(h, 0) + R_OFF_FLAGS]! & OFF_MASK) > so) return -1;
    return h;
  }

  /** Index of the first of page p's n records ending after so (n - 1 when none does), by bisection. */
  private firstEndingAfter(p: number, n: number, so: number): number {
    const w = this.w;
    let lo = 0, hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1, b = rec(p, mid);
      if ((w[b + R_OFF_FLAGS] & OFF_MASK) + (w[b + R_LEN] | 0) > so) hi = mid; else lo = mid + 1;
    }
    return lo;
  }

  /** The page before p in the slot's chain (-1 when p is the head). */
  private predecessor(slot: number, p: number): number {
    let prev = -1;
    for (let q = this.meta[this.headWord(slot)]!; q !== p; q = this.next(q)) prev = q;
    return prev;
  }

  first(slot: number): void { this.page = this.meta[this.headWord(slot)]; this.idx = 0; this.prev = -1; }

  atEnd(): boolean { return this.page === -1 || this.idx >= this.count(this.page); }

  advance(): void {
    this.idx++;
    if (this.idx >= this.count(this.page)) {
      const n = this.next(this.page);
      if (n !== -1) { this.prev = this.page; this.page = n; this.idx = 0; }
    }
  }

  read(base: number, e: Extent): void {
    const b = rec(this.page, this.idx), w = this.w;
    e.off = base + (w[b + R_OFF_FLAGS] & OFF_MASK);
    e.flags = w[b + R_OFF_FLAGS] >>> OFF_BITS;
    e.len = w[b + R_LEN];
    e.seg = w[b + R_SEG] >>> 0;
    e.segOff = w[b + R_SEGOFF] >>> 0;
    e.gen = w[b + R_GEN] >>> 0;
  }

  /** Cursor to the first record ending after `so` (records are disjoint, so ends are sorted too). */
  locate(slot: number, so: number): void {
    const w = this.w, h = this.hinted(slot, so);
    let prev = h === -1 ? -1 : PREV_UNKNOWN, p = h === -1 ? this.meta[this.headWord(slot)] : h;
    let pp = -1, pe = 0;
    while (p !== -1) {
      const n = this.count(p);
      const lb = rec(p, n - 1), f = w[rec(p, 0) + R_OFF_FLAGS] & OFF_MASK, e = (w[lb + R_OFF_FLAGS] & OFF_MASK) + w[lb + R_LEN];
      // A chain of one page needs no hints (and its subtree's hint memory stays untouched).
      if (pp !== -1) this.noteHints(slot, pe, f, pp);
      if (pp !== -1 || prev !== -1 || this.next(p) !== -1) this.noteHints(slot, f, e, p);
      if (e > so) {
        this.page = p; this.idx = this.firstEndingAfter(p, n, so); this.prev = prev;
        return;
      }
      const nx = this.next(p);
      if (nx === -1) { this.page = p; this.idx = n; this.prev = prev; return; }
      prev = p; pp = p; pe = e; p = nx;
    }
    this.page = -1; this.idx = 0; this.prev = -1;
  }

  private account(flags: number, dLen: number, dCount: number): void {
    if (!(flags & EMPTY)) this.f64[M_F64_CACHED] += dLen;
    if (dCount) Atomics.add(this.meta, M_COUNT, dCount);
  }

  /**
   * Make room for [so, se): cut, split or delete what overlaps, and leave the cursor where a record
   * starting at `so` belongs. A split's tail is remembered for insertPendingTail. `replaced` sees
   * each overlapped part (length, flags, segment, its segment offset, generation) before it goes.
   */
  resolve(slot: number, so: number, se: number, replaced?: Replaced): void {
    this.locate(slot, so);
    this.resolveHere(slot, so, se, replaced);
  }

  /** resolve() with the cursor already located at `so`. */
  resolveHere(slot: number, so: number, se: number, replaced?: Replaced): void {
    const w = this.w;
    this.tail = false;
    if (!this.atEnd()) {
      const b = rec(this.page, this.idx);
      const os = w[b + R_OFF_FLAGS] & OFF_MASK, oe = os + w[b + R_LEN], fl = w[b + R_OFF_FLAGS] >>> OFF_BITS;
      if (os < so) {
        replaced?.(Math.min(oe, se) - so, fl, w[b + R_SEG]!, (w[b + R_SEGOFF]! + (so - os)) | 0, w[b + R_GEN]!);
        // Old covers new: split, except that a placeholder is only cut (its fill then covers less).
        if (oe > se && !(fl & EMPTY)) {
          const t = this.t;
          t.off = se; t.len = oe - se; t.flags = fl; t.seg = w[b + R_SEG];
          t.segOff = (w[b + R_SEGOFF] + (se - os)) | 0; t.gen = w[b + R_GEN];
          this.tail = true;
        }
        // New overlaps old's tail (or the split's first half): cut old back to so.
        w[b + R_LEN] = so - os;
        this.account(fl, (so - os) - (oe - os), 0);
        this.advance();
      }
    }
    while (!this.atEnd()) {
      const b = rec(this.page, this.idx);
      const os = w[b + R_OFF_FLAGS] & OFF_MASK, oe = os + w[b + R_LEN], fl = w[b + R_OFF_FLAGS] >>> OFF_BITS;
      if (os >= se) break; // disjoint from here on
      replaced?.(Math.min(oe, se) - os, fl, w[b + R_SEG]!, w[b + R_SEGOFF]!, w[b + R_GEN]!);
      if (oe <= se) { this.delete(slot); continue; } // new covers (or equals) old
      // New overlaps old's head: cut old's front, moving its cache position with it.
      w[b + R_OFF_FLAGS] = se | (fl << OFF_BITS);
      w[b + R_LEN] = oe - se;
      w[b + R_SEGOFF] = (w[b + R_SEGOFF] + (se - os)) | 0;
      this.account(fl, -(se - os), 0);
      break;
    }
  }

  /**
   * With the cursor located at `so`: when its record spans exactly [so, se), overwrite it in place
   * and return true. A rewrite of the same blocks is the commonest overwrite (a filesystem's
   * metadata, a database page, fio's randwrite), and delete-then-insert shifts the page twice
   * and may pack or spread pages to end where it began. False, changing nothing, otherwise.
   */
  replaceExact(so: number, se: number, flags: number, seg: number, segOff: number, gen: number, replaced?: Replaced): boolean {
    if (this.atEnd()) return false;
    const w = this.w, b = rec(this.page, this.idx);
    if ((w[b + R_OFF_FLAGS] & OFF_MASK) !== so || w[b + R_LEN] !== se - so) return false;
    const fl = w[b + R_OFF_FLAGS] >>> OFF_BITS;
    replaced?.(se - so, fl, w[b + R_SEG]!, w[b + R_SEGOFF]!, w[b + R_GEN]!);
    this.account(fl, so - se, 0);
    w[b + R_OFF_FLAGS] = so | (flags << OFF_BITS);
    w[b + R_SEG] = seg;
    w[b + R_SEGOFF] = segOff;
    w[b + R_GEN] = gen;
    this.account(flags, se - so, 0);
    return true;
  }

  insertPendingTail(slot: number, afterCursor: boolean): void {
    if (!this.tail) return;
    this.tail = false;
    if (afterCursor) this.advance();
    const t = this.t;
    this.insert(slot, t.off, t.len, t.flags, t.seg, t.segOff, t.gen);
  }

  /** Delete the record under the cursor; the cursor moves to the record that followed it. */
  delete(slot: number): void {
    const w = this.w, p = this.page, n = this.count(p), b = rec(p, this.idx);
    const fl = w[b + R_OFF_FLAGS] >>> OFF_BITS;
    this.account(fl, -w[b + R_LEN], -1);
    w.copyWithin(b, b + REC_WORDS, rec(p, n));
    w[p * PAGE_WORDS + P_COUNT] = n - 1;
    const nx = this.next(p);
    if (n - 1 === 0) {
      // Pages are never left empty in the chain: readers and locate rely on every page having a last record.
      if (this.prev === PREV_UNKNOWN) this.prev = this.predecessor(slot, p);
      this.clearHints(slot);
      if (this.prev === -1) this.meta[this.headWord(slot)] = nx;
      else w[this.prev * PAGE_WORDS + P_NEXT] = nx;
      this.arena.free(p);
      if (nx !== -1) { this.page = nx; this.idx = 0; }
      else if (this.prev === -1) { this.page = -1; this.idx = 0; }
      else { this.page = this.prev; this.idx = this.count(this.prev); this.prev = -2; }
      return;
    }
    // Deletes (GC sweeps, trims, overwrites by longer extents) would otherwise leave sparse pages
    // behind: a window that fits in one page fewer at MERGE_FILL is packed into it.
    let pages = 0;
    if (n - 1 < MERGE_FILL && (pages = this.window(slot)) > 1 && this.winTotal <= (pages - 1) * MERGE_FILL) {
      this.respread(slot, pages - 1, false);
    } else if (this.idx >= n - 1 && nx !== -1) {
      this.prev = p; this.page = nx; this.idx = 0;
    }
  }

  private newPageAfter(slot: number, p: number): number {
    const q = this.arena.alloc(), w = this.w;
    if (p === -1) {
      w[q * PAGE_WORDS + P_NEXT] = this.meta[this.headWord(slot)];
      this.meta[this.headWord(slot)] = q;
    } else {
      w[q * PAGE_WORDS + P_NEXT] = this.next(p);
      w[p * PAGE_WORDS + P_NEXT] = q;
    }
    w[q * PAGE_WORDS + P_COUNT] = 0;
    return q;
  }

  /**
   * The window around the cursor's page: up to SPREAD pages on each side (winLo..winHi in
   * `chain`), their record count, and the cursor's position counted from the window's first
   * record. Returns the number of pages in the window.
   */
  private window(slot: number): number {
    const ch = this.chain;
    ch.length = 0;
    let k = -1;
    for (let q = this.meta[this.headWord(slot)]; q !== -1 && (k === -1 || ch.length <= k + SPREAD); q = this.next(q)) {
      if (q === this.page) k = ch.length;
      ch.push(q);
    }
    this.winK = k;
    this.winLo = Math.max(0, k - SPREAD);
    this.winHi = Math.min(ch.length - 1, k + SPREAD);
    this.winTotal = 0;
    for (let i = this.winLo; i <= this.winHi; i++) {
      if (i === k) this.winAt = this.winTotal + this.idx;
      this.winTotal += this.count(ch[i]!);
    }
    return this.winHi - this.winLo + 1;
  }

  /**
   * Re-lay the window's records evenly over `pages` pages (at most one more or one fewer than it
   * has: the new page goes after its last, the freed one is its last), leaving a free slot at the
   * cursor's position when `hole` (an insert follows) and keeping the cursor on its record
   * otherwise. Readers never look mid-way: the caller holds the subtree's seqlock, and a reader
   * that raced the copy retries.
   */
  private respread(slot: number, pages: number, hole: boolean): void {
    const w = this.w, ch = this.chain, sp = this.spill, lo = this.winLo, at = this.winAt;
    let hi = this.winHi, total = 0;
    for (let i = lo; i <= hi; i++) {
      const q = ch[i]!, n = this.count(q);
      sp.set(w.subarray(rec(q, 0), rec(q, n)), total * REC_WORDS);
      total += n;
    }
    if (pages > hi - lo + 1) {
      ch.splice(hi + 1, 0, this.newPageAfter(slot, ch[hi]!));
      hi++;
    } else if (pages < hi - lo + 1) {
      const q = ch[hi]!;
      w[ch[hi - 1]! * PAGE_WORDS + P_NEXT] = this.next(q);
      this.clearHints(slot);
      this.arena.free(q);
      ch.splice(hi, 1);
      hi--;
    }
    // The records (and the hole) over the pages, as evenly as integers allow.
    const slots = hole ? total + 1 : total;
    let from = 0;
    for (let i = 0; i < pages; i++) {
      const q = ch[lo + i]!, a = Math.floor((slots * i) / pages), z = Math.floor((slots * (i + 1)) / pages);
      const holeHere = hole && at >= a && at < z, n = holeHere ? z - a - 1 : z - a;
      w.set(sp.subarray(from * REC_WORDS, (from + n) * REC_WORDS), rec(q, 0));
      w[q * PAGE_WORDS + P_COUNT] = n;
      from += n;
      if (at >= a && at < z) { this.page = q; this.idx = at - a; this.prev = lo + i > 0 ? ch[lo + i - 1]! : -1; }
    }
    if (at === slots) {
      // The record that followed the deleted one lies beyond the window (or there is none).
      const last = ch[hi]!, nx = this.next(last);
      if (nx !== -1) { this.page = nx; this.idx = 0; this.prev = last; }
      else { this.page = last; this.idx = this.count(last); this.prev = hi > 0 ? ch[hi - 1]! : -1; }
    }
  }

  /** Insert before the cursor; afterwards the cursor points at the new record. Callers ensure() pages first. */
  insert(slot: number, off: number, len: number, flags: number, seg: number, segOff: number, gen: number): void {
    const w = this.w;
    if (this.page === -1) { this.page = this.newPageAfter(slot, -1); this.idx = 0; this.prev = -1; }
    if (this.count(this.page) === PAGE_RECS) {
      const p = this.page, nx = this.next(p);
      if (this.idx === PAGE_RECS && nx === -1) {
        // Appending past the last page: start a new one instead of spreading, so sequential fills
        // leave full pages behind.
        this.prev = p; this.page = this.newPageAfter(slot, p); this.idx = 0;
      } else {
        const pages = this.window(slot);
        if (this.winTotal < pages * PAGE_RECS) this.respread(slot, pages, true);
        else if (this.idx === 0) {
          // All full, and the insert goes before a page's first record (descending runs do this
          // every time): a page of its own keeps the full ones full.
          const before = this.winK > 0 ? this.chain[this.winK - 1]! : -1;
          this.page = this.newPageAfter(slot, before); this.prev = before;
        } else this.respread(slot, pages + 1, true);
      }
    }
    const p = this.page, n = this.count(p), b = rec(p, this.idx);
    w.copyWithin(b + REC_WORDS, b, rec(p, n));
    w[b + R_OFF_FLAGS] = off | (flags << OFF_BITS);
    w[b + R_LEN] = len;
    w[b + R_SEG] = seg;
    w[b + R_SEGOFF] = segOff;
    w[b + R_GEN] = gen;
    w[p * PAGE_WORDS + P_COUNT] = n + 1;
    this.account(flags, len, 1);
  }

  countGaps(slot: number, so: number, se: number): number {
    let pos = so, gaps = 0;
    this.locate(slot, so);
    for (; !this.atEnd(); this.advance()) {
      const b = rec(this.page, this.idx), os = this.w[b + R_OFF_FLAGS] & OFF_MASK;
      if (os >= se) break;
      if (os > pos) gaps++;
      pos = os + this.w[b + R_LEN];
    }
    return pos < se ? gaps + 1 : gaps;
  }

  fillGaps(slot: number, so: number, se: number, token: number): void {
    let pos = so;
    this.locate(slot, so);
    while (!this.atEnd()) {
      const b = rec(this.page, this.idx), os = this.w[b + R_OFF_FLAGS] & OFF_MASK, oe = os + this.w[b + R_LEN];
      if (os >= se) break;
      if (os > pos) { this.insert(slot, pos, os - pos, EMPTY, token, 0, 0); this.advance(); }
      pos = oe;
      this.advance();
    }
    if (pos < se) this.insert(slot, pos, se - pos, EMPTY, token, 0, 0);
  }

  /** Turn the placeholder's records inside [so, se) into `e` in place; report pieces sticking out. */
  fillPlaceholder(slot: number, so: number, se: number, token: number, e: Extent): { filled: number; partial: number[] } {
    const w = this.w, partial: number[] = [];
    let filled = 0;
    this.locate(slot, so);
    for (; !this.atEnd(); this.advance()) {
      const b = rec(this.page, this.idx), os = w[b + R_OFF_FLAGS] & OFF_MASK, oe = os + w[b + R_LEN];
      if (os >= se) break;
      if (!((w[b + R_OFF_FLAGS] >>> OFF_BITS) & EMPTY) || (w[b + R_SEG] >>> 0) !== (token >>> 0)) continue;
      if (os >= so && oe <= se) {
        w[b + R_OFF_FLAGS] = os | (e.flags << OFF_BITS);
        w[b + R_SEG] = e.seg;
        w[b + R_SEGOFF] = e.segOff + (os - so);
        w[b + R_GEN] = e.gen;
        this.account(e.flags, oe - os, 0);
        filled += oe - os;
      } else partial.push(Math.max(os, so), Math.min(oe, se));
    }
    return { filled, partial };
  }

  /** Owner-side ordered walk of [so, se): hits clipped to the range, gaps as null. */
  walk(slot: number, so: number, se: number, base: number, e: Extent,
    cb: (off: number, len: number, ext: Extent | null) => void): void {
    let pos = so;
    this.locate(slot, so);
    for (; !this.atEnd(); this.advance()) {
      this.read(0, e);
      const os = e.off, oe = os + e.len;
      if (os >= se) break;
      const a = Math.max(os, so), z = Math.min(oe, se);
      if (a > pos) cb(base + pos, a - pos, null);
      e.off = base + a; e.len = z - a; e.segOff = (e.segOff + (a - os)) >>> 0;
      cb(e.off, e.len, e);
      pos = z;
    }
    if (pos < se) cb(base + pos, se - pos, null);
  }

  /**
   * Copy of [so, se) as pieces (gaps have flags -1), safe on a chain being edited by another
   * thread: returns null instead of looping or emitting garbage when what it reads is inconsistent.
   */
  snapshotRange(slot: number, so: number, se: number, base: number): Extent[] | null {
    const w = this.w, cap = this.meta[M_CAP_PAGES], out: Extent[] = [], h = this.hinted(slot, so);
    let p = h === -1 ? this.meta[this.headWord(slot)] : h, pos = so, lastEnd = 0, steps = 0;
    const gap = (a: number, z: number): void => { out.push({ off: base + a, len: z - a, seg: 0, segOff: 0, gen: 0, flags: -1 }); };
    outer: while (p !== -1) {
      if (!(p >= 0 && p < cap) || ++steps > cap) return null;
      const n = w[p * PAGE_WORDS + P_COUNT] | 0;
      if (n < 1 || n > PAGE_RECS) return null;
      // A page wholly before the range is judged by its last record alone: one cache line
      // instead of all of them, which is most of a lookup once the index outgrows the CPU cache.
      const lb = rec(p, n - 1), lend = (w[lb + R_OFF_FLAGS] & OFF_MASK) + (w[lb + R_LEN] | 0);
      if (lend <= so) {
        if (lend <= lastEnd) return null;
        lastEnd = lend;
        p = w[p * PAGE_WORDS + P_NEXT] | 0;
        continue;
      }
      // Records before the first ending after so are not looked at (a torn page can only
      // mislead the bisection into a result the seqlock check then throws away).
      for (let i = pos === so ? this.firstEndingAfter(p, n, so) : 0; i < n; i++) {
        const b = rec(p, i), ofl = w[b + R_OFF_FLAGS] | 0, os = ofl & OFF_MASK, len = w[b + R_LEN] | 0, oe = os + len;
        if (os < lastEnd || len <= 0 || oe > OFF_MASK + 1) return null;
        lastEnd = oe;
        if (oe <= so) continue;
        if (os >= se) break outer;
        const a = Math.max(os, so), z = Math.min(oe, se);
        if (a > pos) gap(pos, a);
        out.push({ off: base + a, len: z - a, seg: w[b + R_SEG] >>> 0, segOff: ((w[b + R_SEGOFF] >>> 0) + (a - os)) >>> 0, gen: w[b + R_GEN] >>> 0, flags: ofl >>> OFF_BITS });
        pos = z;
      }
      p = w[p * PAGE_WORDS + P_NEXT] | 0;
    }
    if (pos < se) gap(pos, se);
    return out;
  }
}
