// Per-stripe extent index over SharedArrayBuffers: origin ranges of the stripe's 4 MiB subtrees →
// cache locations. Layout and the reasons for it are in layout.ts.
//
// Concurrency: one writer (the owning stripe thread) and any number of readers in other threads.
// Every mutation of a subtree runs between two Atomics.add on that subtree's seqlock word (odd while
// writing). A foreign reader loads the word, copies what it needs, loads it again and retries if it
// was odd or changed; the copy is bounds-checked so a torn page chain can only cause a retry, never
// a wild loop. Atomics are sequentially consistent fences in V8, so the plain record reads cannot
// move across the two loads. The owner reads without the seqlock: nobody else writes.
// A seqlock left odd means the writer died mid-mutation; attach('writer') refuses that index so the
// caller rebuilds it from the key log instead of trusting a half-edited subtree.
import { PageArena } from './arena.js';
import {
  ExtentFlag, FLAGS_MAX, IndexStateError, M_CAP_PAGES, M_COUNT, M_F64_CACHED, M_FREE, M_HINTED, M_MAGIC, M_NSUB,
  M_PAGES_USED, M_PAGE_RECS, M_REPAIRING, M_STRIPE, M_STRIPES, M_TOKEN, M_VERSION, MAGIC, META_HDR_WORDS, PAGE_BYTES,
  PAGE_RECS, SUB_WORDS, S_HEAD, S_SEQ, VERSION, HINTS, hintBase, metaWords,
} from './layout.js';
import type { Extent, IndexSabs } from './layout.js';
import { SUBTREE_SHIFT, SUBTREE_SIZE } from '../../ring/layout.js';
import { Cursor, type Replaced } from './cursor.js';

export { ExtentFlag, IndexFullError, IndexStateError } from './layout.js';
export type { Extent, IndexSabs } from './layout.js';

export interface ExtentIndexOptions {
  originBytes: number;
  stripe: number;
  stripes: number;
  /** Upper bound of the page pool; the SAB reserves this much address space and grows on demand. */
  maxBytes: number;
}

/** Called per piece of a looked-up range, in order: `ext` is null for a gap. `ext` is reused: copy to keep. */
export type LookupCallback = (off: number, len: number, ext: Extent | null) => void;

/**
 * A foreign reader gives up after this long: a seqlock starves readers only while its writer edits
 * the same subtree continuously (stripe I/O leaves gaps), or forever if the writer died mid-edit.
 */
const READER_PATIENCE_MS = 2000;

export class ExtentIndex {
  readonly sabs: IndexSabs;
  readonly writer: boolean;
  private readonly meta: Int32Array;
  private readonly f64: Float64Array;
  private readonly arena: PageArena;
  private readonly cur: Cursor;
  private readonly stripe: number;
  private readonly stripes: number;
  private readonly nsub: number;
  private readonly scratch: Extent = { off: 0, len: 0, seg: 0, segOff: 0, gen: 0, flags: 0 };

  static create(o: ExtentIndexOptions): ExtentIndex {
    if (!(o.stripes >= 1 && o.stripe >= 0 && o.stripe < o.stripes)) throw new RangeError(`bad stripe ${o.stripe}/${o.stripes}`);
    const total = Math.ceil(o.originBytes / SUBTREE_SIZE);
    const nsub = Math.max(0, Math.ceil((total - o.stripe) / o.stripes));
    const capPages = Math.floor(o.maxBytes / PAGE_BYTES);
    if (capPages < 2) throw new RangeError(`index maxBytes ${o.maxBytes} below two pages (${2 * PAGE_BYTES})`);
    const meta = new SharedArrayBuffer(metaWords(nsub) * 4);
    const pages = new SharedArrayBuffer(0, { maxByteLength: capPages * PAGE_BYTES });
    const m = new Int32Array(meta);
    m[M_PAGE_RECS] = PAGE_RECS;
    m[M_STRIPE] = o.stripe;
    m[M_STRIPES] = o.stripes;
    m[M_NSUB] = nsub;
    m[M_CAP_PAGES] = capPages;
    m[M_FREE] = -1;
    for (let s = 0; s < nsub; s++) m[META_HDR_WORDS + s * SUB_WORDS + S_HEAD] = -1;
    m[M_VERSION] = VERSION;
    Atomics.store(m, M_MAGIC, MAGIC); // last: a reader attaching early sees no magic rather than a half-built table
    return new ExtentIndex({ meta, pages }, true);
  }

  /** Re-attach to existing buffers (respawned owner: role 'writer'; writeback/GC/status: 'reader'). Rebuilds nothing. */
  static attach(sabs: IndexSabs, role: 'writer' | 'reader' = 'reader'): ExtentIndex {
    const m = new Int32Array(sabs.meta);
    if (Atomics.load(m, M_MAGIC) !== MAGIC || m[M_VERSION] !== VERSION || m[M_PAGE_RECS] !== PAGE_RECS) {
      throw new IndexStateError('not an extent index of this version');
    }
    if (role === 'writer') {
      for (let s = 0; s < m[M_NSUB]; s++) {
        if (Atomics.load(m, META_HDR_WORDS + s * SUB_WORDS + S_SEQ) & 1) {
          throw new IndexStateError(`subtree slot ${s} was left mid-mutation by a dead writer; rebuild the index from the key log`);
        }
      }
    }
    return new ExtentIndex(sabs, role === 'writer');
  }

  /**
   * A respawned owner's attach when its predecessor may have died mid-mutation: every subtree left
   * odd (half edited) is emptied, and its slot returned, for the caller to rebuild from the key log
   * (src/cache/rebuild.ts). Its pages are abandoned rather than walked: a torn chain cannot be
   * trusted even to be freed (a few KiB lost until restart; the counters drift by as much).
   */
  static attachRepairing(sabs: IndexSabs): { index: ExtentIndex; emptied: number[] } {
    const m = new Int32Array(sabs.meta);
    const emptied: number[] = [];
    if (Atomics.load(m, M_MAGIC) !== MAGIC || m[M_VERSION] !== VERSION || m[M_PAGE_RECS] !== PAGE_RECS) {
      throw new IndexStateError('not an extent index of this version');
    }
    for (let s = 0; s < m[M_NSUB]; s++) {
      const seq = META_HDR_WORDS + s * SUB_WORDS + S_SEQ;
      if ((Atomics.load(m, seq) & 1) === 0) continue;
      Atomics.store(m, M_REPAIRING, 1);
      // Readers retry while it is odd; once it is even again the subtree is (consistently) empty.
      Atomics.store(m, META_HDR_WORDS + s * SUB_WORDS + S_HEAD, -1);
      m.fill(0, hintBase(m[M_NSUB]!, s) + 1, hintBase(m[M_NSUB]!, s) + HINTS);
      Atomics.add(m, seq, 1);
      emptied.push(s);
    }
    return { index: new ExtentIndex(sabs, true), emptied };
  }

  /** The owner rebuilt every subtree attachRepairing emptied: other readers may trust the index again. */
  repaired(): void {
    this.assertWriter();
    Atomics.store(this.meta, M_REPAIRING, 0);
  }

  /**
   * A foreign reader's lookup that never waits: the pieces of [off, off+len) (gaps with flags -1),
   * or null when the subtree is being edited right now (after `tries` attempts) or being rebuilt.
   * For a thread that serves other work and has a slower path to fall back on.
   */
  tryLookup(off: number, len: number, tries = 2): Extent[] | null {
    const slot = this.slotOf(off, len);
    const i = META_HDR_WORDS + slot * SUB_WORDS + S_SEQ;
    const b = this.base(slot);
    const so = off - b;
    this.arena.refresh();
    for (let t = 0; t < tries; t++) {
      const s1 = Atomics.load(this.meta, i);
      if ((s1 & 1) !== 0 || Atomics.load(this.meta, M_REPAIRING) !== 0) continue;
      const r = this.cur.snapshotRange(slot, so, so + len, b);
      if (r !== null && Atomics.load(this.meta, i) === s1 && Atomics.load(this.meta, M_REPAIRING) === 0) return r;
    }
    return null;
  }

  /** Global subtree number of a stripe-local slot. */
  subtreeOfSlot(slot: number): number {
    return slot * this.stripes + this.stripe;
  }

  private constructor(sabs: IndexSabs, writer: boolean) {
    this.sabs = sabs;
    this.writer = writer;
    this.meta = new Int32Array(sabs.meta);
    this.f64 = new Float64Array(sabs.meta, 0, META_HDR_WORDS / 2);
    this.arena = new PageArena(this.meta, sabs.pages);
    this.stripe = this.meta[M_STRIPE];
    this.stripes = this.meta[M_STRIPES];
    this.nsub = this.meta[M_NSUB];
    this.cur = new Cursor(this.meta, this.arena, this.f64);
  }

  // ---- statistics (safe from any thread; counters may be one mutation behind) ----
  /** Records in the index, placeholders included. */
  get count(): number { return Atomics.load(this.meta, M_COUNT); }
  /** Origin bytes mapped by non-placeholder extents. */
  get cachedBytes(): number { return this.f64[M_F64_CACHED]; }
  /** Index memory in use: the meta table plus every allocated page. */
  get bytesUsed(): number {
    // The hint table counts only for subtrees that ever had hints: the rest of it is never touched.
    const nsub = this.meta[M_NSUB]!;
    return (metaWords(nsub) - nsub * HINTS + Atomics.load(this.meta, M_HINTED) * HINTS) * 4 + Atomics.load(this.meta, M_PAGES_USED) * PAGE_BYTES;
  }
  /** Address space reserved for the page pool (capacity), and what has been committed by grow(). */
  get bytesReserved(): number { return this.sabs.meta.byteLength + this.meta[M_CAP_PAGES] * PAGE_BYTES; }
  get bytesGrown(): number { return this.sabs.meta.byteLength + this.sabs.pages.byteLength; }
  get pagesFree(): number { return this.arena.available(); }

  /** Global subtree numbers this stripe owns, in order. */
  *subtrees(): Generator<number> {
    for (let s = 0; s < this.nsub; s++) yield s * this.stripes + this.stripe;
  }

  // ---- owner operations ----

  /** Insert with six-case overlap resolution; the new extent wins everywhere it lands. */
  /** `replaced` sees each part of an existing extent the new one replaces (for statistics). */
  insert(e: Extent, replaced?: Replaced): void {
    const slot = this.slotOf(e.off, e.len);
    this.checkExtent(e);
    this.arena.ensure(2); // the new record plus a split-off tail, each possibly splitting a page
    const so = e.off - this.base(slot);
    this.beginWrite(slot);
    this.cur.locate(slot, so);
    if (!this.cur.replaceExact(so, so + e.len, e.flags, e.seg, e.segOff, e.gen, replaced)) {
      this.cur.resolveHere(slot, so, so + e.len, replaced);
      this.cur.insert(slot, so, e.len, e.flags, e.seg, e.segOff, e.gen);
      this.cur.insertPendingTail(slot, true);
    }
    this.endWrite(slot);
  }

  /** Drop every mapping of [off, off+len) (invalidation); parts of extents outside stay. */
  remove(off: number, len: number): void {
    const slot = this.slotOf(off, len);
    if (len === 0) return;
    this.assertWriter();
    this.arena.ensure(1);
    const so = off - this.base(slot);
    this.beginWrite(slot);
    this.cur.resolve(slot, so, so + len);
    this.cur.insertPendingTail(slot, false);
    this.endWrite(slot);
  }

  /**
   * Put EMPTY placeholders on the gaps of [off, off+len) (never over existing extents or other
   * readers' placeholders) and return their token for replacePlaceholder. Tokens are 32-bit and
   * wrap; a collision needs 2^32 misses to overlap in flight on one range.
   */
  insertPlaceholder(off: number, len: number): number {
    const slot = this.slotOf(off, len);
    this.assertWriter();
    let token = (this.meta[M_TOKEN] + 1) | 0;
    if (token === 0) token = 1;
    this.meta[M_TOKEN] = token;
    const so = off - this.base(slot);
    this.arena.ensure(this.cur.countGaps(slot, so, so + len));
    this.beginWrite(slot);
    this.cur.fillGaps(slot, so, so + len, token);
    this.endWrite(slot);
    return token;
  }

  /**
   * Read-miss fill: `ext` takes effect only where placeholder `token` still lies, so a write that
   * raced the origin read (and cut or replaced the placeholder) keeps its data. Returns bytes filled.
   * A placeholder sticking out of `ext` is filled through insert() piece by piece; each piece is
   * atomic, and on IndexFullError the pieces already filled are valid data.
   */
  replacePlaceholder(token: number, ext: Extent): number {
    const slot = this.slotOf(ext.off, ext.len);
    this.checkExtent(ext);
    if (ext.flags & ExtentFlag.EMPTY) throw new RangeError('a fill cannot itself be a placeholder');
    const so = ext.off - this.base(slot);
    this.beginWrite(slot);
    const { filled, partial } = this.cur.fillPlaceholder(slot, so, so + ext.len, token, ext);
    this.endWrite(slot);
    let total = filled;
    for (let i = 0; i < partial.length; i += 2) {
      const a = partial[i], b = partial[i + 1];
      this.insert({ ...ext, off: this.base(slot) + a, len: b - a, segOff: ext.segOff + (a - so) });
      total += b - a;
    }
    return total;
  }

  /** GC sweep: delete every record `pred` accepts (e.g. a stale generation). Returns records removed. */
  removeIf(pred: (e: Extent) => boolean): number {
    this.assertWriter();
    let removed = 0;
    for (let slot = 0; slot < this.nsub; slot++) {
      if (this.head(slot) === -1) continue;
      let writing = false;
      const c = this.cur;
      c.first(slot);
      while (!c.atEnd()) {
        c.read(this.base(slot), this.scratch);
        if (pred(this.scratch)) {
          if (!writing) { this.beginWrite(slot); writing = true; }
          c.delete(slot);
          removed++;
        } else c.advance();
      }
      if (writing) this.endWrite(slot);
    }
    return removed;
  }

  /**
   * Pieces of [off, off+len) in order: hits (clipped, segOff adjusted) and gaps (ext null).
   * From the owner this reads directly; from any other thread it copies under the seqlock first.
   */
  lookup(off: number, len: number, cb: LookupCallback): void {
    const slot = this.slotOf(off, len);
    if (len === 0) return;
    const b = this.base(slot);
    const so = off - b;
    if (this.writer) { this.cur.walk(slot, so, so + len, b, this.scratch, cb); return; }
    this.arena.refresh();
    const pieces = this.readStable(slot, () => this.cur.snapshotRange(slot, so, so + len, b));
    for (const p of pieces) cb(p.off, p.len, p.flags === -1 ? null : p);
  }

  /** Every extent of a subtree (global subtree number), copied consistently: for writeback and status. */
  snapshotSubtree(subtree: number): Extent[] {
    const slot = this.slotOf(subtree * SUBTREE_SIZE, 0);
    const b = this.base(slot);
    if (this.writer) return this.cur.snapshotRange(slot, 0, SUBTREE_SIZE, b)!.filter((p) => p.flags !== -1);
    this.arena.refresh();
    return this.readStable(slot, () => this.cur.snapshotRange(slot, 0, SUBTREE_SIZE, b)).filter((p) => p.flags !== -1);
  }

  // ---- internals ----

  private readStable(slot: number, copy: () => Extent[] | null): Extent[] {
    const i = META_HDR_WORDS + slot * SUB_WORDS + S_SEQ;
    let deadline = 0;
    for (let tries = 0; ; tries++) {
      const s1 = Atomics.load(this.meta, i);
      if (!(s1 & 1)) {
        const r = copy();
        if (r !== null && Atomics.load(this.meta, i) === s1) return r;
      }
      if ((tries & 1023) === 1023) {
        const now = performance.now();
        if (deadline === 0) deadline = now + READER_PATIENCE_MS;
        else if (now > deadline) throw new IndexStateError(`subtree slot ${slot} stayed busy for ${READER_PATIENCE_MS} ms (writer dead mid-mutation?)`);
      }
    }
  }

  private beginWrite(slot: number): void { Atomics.add(this.meta, META_HDR_WORDS + slot * SUB_WORDS + S_SEQ, 1); }
  private endWrite(slot: number): void { Atomics.add(this.meta, META_HDR_WORDS + slot * SUB_WORDS + S_SEQ, 1); }
  private head(slot: number): number { return this.meta[META_HDR_WORDS + slot * SUB_WORDS + S_HEAD]; }

  private base(slot: number): number { return (slot * this.stripes + this.stripe) * SUBTREE_SIZE; }

  /** Stripe-local slot of the subtree holding [off, off+len); the range must stay inside it. */
  private slotOf(off: number, len: number): number {
    if (!Number.isSafeInteger(off) || off < 0 || !Number.isInteger(len) || len < 0) throw new RangeError(`bad range ${off}+${len}`);
    const sub = off < 2 ** 31 ? off >> SUBTREE_SHIFT : Math.floor(off / SUBTREE_SIZE);
    if (len > 0 && Math.floor((off + len - 1) / SUBTREE_SIZE) !== sub) throw new RangeError(`range ${off}+${len} crosses a subtree boundary`);
    if (sub % this.stripes !== this.stripe) throw new RangeError(`subtree ${sub} belongs to stripe ${sub % this.stripes}, not ${this.stripe}`);
    const slot = (sub - this.stripe) / this.stripes;
    if (slot >= this.nsub) throw new RangeError(`offset ${off} beyond the origin`);
    return slot;
  }

  private checkExtent(e: Extent): void {
    this.assertWriter();
    if (e.len <= 0) throw new RangeError('extent length must be positive');
    if (!(e.flags >= 0 && e.flags <= FLAGS_MAX && Number.isInteger(e.flags))) throw new RangeError(`bad flags ${e.flags}`);
    for (const k of ['seg', 'segOff', 'gen'] as const) {
      if (!(Number.isInteger(e[k]) && e[k] >= 0 && e[k] <= 0xffffffff)) throw new RangeError(`bad ${k} ${e[k]}`);
    }
  }

  private assertWriter(): void {
    if (!this.writer) throw new IndexStateError('this handle is a reader; only the owning stripe thread mutates the index');
  }
}

