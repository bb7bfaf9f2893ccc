// Word layout of the SharedArrayBuffer extent index. Every field is an Int32 word so one
// Int32Array view per buffer serves the owner, respawned owners and foreign readers alike.
//
// Why pages of inline records (a one-level B+-tree leaf chain per subtree) rather than a pool of
// records plus a per-subtree sorted array of record indices: the indirection costs 4 bytes per
// extent plus a variable-size array allocator in shared memory, and a lookup touches two places.
// Inline records in fixed pages need one fixed-size allocator (a free list of pages), keep a
// subtree's extents contiguous for the stitching walk, and a subtree holds at most a few hundred
// extents in practice (4 MiB of 4 KiB blocks is 1024), so a short chain of pages searched by their
// last key is enough; no interior nodes are needed.
//
// Size (issue 10: ≤ 24 bytes per extent, counted as pages in use × PAGE_BYTES plus the subtree
// table, over records). A page is 648 bytes for 32 records: 20.25 bytes per extent when full, so
// the target is a fill of 84 % or more. Halving a full page (after one record moved to the next
// page if it had room) left random inserts at 74 % (27.4 B/extent for 4 KiB random writes, each
// block once: the growth bench's fill; the bench measured 26.3–26.7). So the cursor spreads
// B*-style (cursor.ts): a full page shares its records with up to two pages on each side, and only
// a window of five full pages becomes six. Measured on a shuffled fill of 512 MiB and 1 GiB of
// origin: one page each side 22.8 B/extent, two 21.7, three 21.3; two was chosen, the copy per
// spread staying at five pages (the growth bench then reports 22.1–22.2). Runs keep pages full
// (20.3 B/extent ascending or descending: an insert at the end of the chain or before a page's
// first record in a full window starts a page of its own), and deletes pack a window that fits in
// one page fewer at 28 records a page. That leaves the 20-byte record as is: packing it into 16
// bytes (offset and length in 22 bits each, flags, a narrower segment offset) would gain 4 more
// bytes per extent but bound the segment size and the segment count, and it is not needed for the
// target.

/** Record: 5 Int32 words, 20 bytes. */
export const REC_WORDS = 5;
/** Offset inside the subtree (22 bits) | flags << 22 (10 bits): origin offsets never exceed 4 MiB here. */
export const R_OFF_FLAGS = 0;
export const R_LEN = 1;
/** Cache segment, or the placeholder token when the record is EMPTY (it has no cache location). */
export const R_SEG = 2;
export const R_SEGOFF = 3;
export const R_GEN = 4;

export const OFF_BITS = 22;
export const OFF_MASK = (1 << OFF_BITS) - 1;

/** Page: header then PAGE_RECS records sorted by offset, non-overlapping, never empty while linked. */
export const PAGE_RECS = 32;
export const P_NEXT = 0; // next page of the subtree, -1 at the end
export const P_COUNT = 1;
export const PAGE_HDR = 2;
export const PAGE_WORDS = PAGE_HDR + PAGE_RECS * REC_WORDS;
export const PAGE_BYTES = PAGE_WORDS * 4;

/** Meta buffer words (non-growable SAB). */
export const M_MAGIC = 0;
export const M_VERSION = 1;
export const M_PAGE_RECS = 2;
export const M_STRIPE = 3;
export const M_STRIPES = 4;
export const M_NSUB = 5; // subtrees owned by this stripe
export const M_CAP_PAGES = 6;
export const M_HIGH = 7; // pages ever carved from the pool (free list holds the returned ones)
export const M_FREE = 8; // head of the free page list, -1 when empty
export const M_PAGES_USED = 9;
export const M_COUNT = 10; // records, placeholders included
export const M_TOKEN = 11; // last placeholder token handed out
/**
 * Non-zero from the moment a respawned owner empties the subtrees its predecessor left half edited
 * until it has rebuilt them from the log: meanwhile a subtree may show an older extent whose newer
 * overwrite is not back yet, so readers other than the owner must not trust what they find.
 */
export const M_REPAIRING = 12;
/** Subtrees whose hint words were ever written (their hint memory is in use: bytesUsed counts it). */
export const M_HINTED = 13;
/** Float64 index (not word index) of the sum of lengths of non-EMPTY records. */
export const M_F64_CACHED = 8; // bytes 64..71 = words 16..17
export const META_HDR_WORDS = 32;
/** Per owned subtree: [seqlock, head page]. The seqlock is odd while the owner mutates the subtree. */
export const S_SEQ = 0;
export const S_HEAD = 1;
export const SUB_WORDS = 2;
/**
 * After the subtree table, HINTS words per subtree. Word 0 is set once the subtree has had hints
 * (for M_HINTED); hint j ≥ 1 (page + 1, 0 for none) names a page of
 * that subtree's chain whose first record started at or before j << HINT_SHIFT when the owner
 * last walked past it, so a walk for an offset in bucket j may start there instead of at the
 * head: records are sorted and disjoint, so none before that page can reach past its first
 * record. A 4 MiB subtree of 4 KiB extents is a chain of about 36 pages; walking it from the head
 * costs two cache misses a page once the index outgrows the CPU cache, which made a foreign
 * read-hit lookup at 4 GiB of cache 2.6× its cost at 256 MiB. The owner clears a subtree's hints
 * whenever a page leaves its chain (inside the seqlock), and whoever follows a hint checks the
 * page's first record again. The hints are a table of their own, zero meaning none, and only
 * chains of two pages or more get any: the memory of a subtree that never needed hints is never
 * touched, so a large, sparsely cached origin pays 8 bytes per subtree as before, not 136.
 */
export const HINTS = 32;
/** Bytes of subtree offset per hint: 4 MiB / 32, about one page of 4 KiB extents. */
export const HINT_SHIFT = OFF_BITS - 5;
/** Meta words for nsub subtrees: header, subtree table, hint table. */
export const metaWords = (nsub: number): number => META_HDR_WORDS + nsub * (SUB_WORDS + HINTS);
/** First hint word of a subtree slot. */
export const hintBase = (nsub: number, slot: number): number => META_HDR_WORDS + nsub * SUB_WORDS + slot * HINTS;

export const MAGIC = 0x58444950; // "PIDX"
export const VERSION = 2;

/** The pool grows its SAB in steps of this many bytes (whole pages). */
export const GROW_BYTES = 1 << 20;

export const enum ExtentFlag {
  DIRTY = 1 << 0,
  CLEAN = 1 << 1,
  TRIM = 1 << 2,
  ZERO = 1 << 3,
  /** Read-miss placeholder: no cache location; R_SEG holds its token. */
  EMPTY = 1 << 4,
  /**
   * Data whose copy on the cache device cannot be vouched for (the device failed before it was
   * durable): reads of it fail with EIO rather than return whatever the device holds there.
   */
  POISON = 1 << 5,
}
export const FLAGS_MAX = (1 << (32 - OFF_BITS)) - 1;

export interface Extent {
  /** Origin byte offset. */
  off: number;
  len: number;
  seg: number;
  segOff: number;
  gen: number;
  flags: number;
}

export interface IndexSabs {
  meta: SharedArrayBuffer;
  /** Growable: the page pool grows in place up to its maxByteLength; length-tracking views follow. */
  pages: SharedArrayBuffer;
}

export class IndexFullError extends Error {
  readonly code = 'EINDEXFULL';
  constructor(capPages: number) {
    super(`extent index full: all ${capPages} pages (${capPages * PAGE_BYTES} bytes) in use; raise the index capacity or let GC reclaim`);
    this.name = 'IndexFullError';
  }
}

export class IndexStateError extends Error {
  readonly code = 'EINDEXSTATE';
  constructor(msg: string) {
    super(msg);
    this.name = 'IndexStateError';
  }
}
