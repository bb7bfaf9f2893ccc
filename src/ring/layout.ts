// Layout of the SharedArrayBuffer rings between the coordinator and one stripe worker.
// One request ring (coordinator → stripe) and one completion ring (stripe → coordinator),
// both single-producer single-consumer, with free-running Int32 counters (wrap at 2^32;
// only equality and differences are used). Words written by different threads sit on
// different 64-byte lines so the two sides do not fight over one cache line.

/** Header words (Int32 indices). */
export const REQ_HEAD = 0; // written by the coordinator: next request slot to fill
export const REQ_TAIL = 16; // written by the stripe: next request slot to take
export const CPL_HEAD = 32; // written by the stripe: next completion slot to fill
export const CPL_TAIL = 48; // written by the coordinator: next completion slot to take
export const WORKER_SLEEPING = 64; // 1 while the stripe is (about to be) blocked waiting for requests
export const STOP = 80; // set by the coordinator to end the stripe loop
/**
 * Set by the coordinator while few requests are in flight (latency-bound, cores idle): the
 * stripe may then busy-poll for the next request instead of sleeping. At high queue depth the
 * cores are busy and a spinning stripe would only steal them, so it sleeps between batches.
 */
export const SPIN_HINT = 96;
export const HEADER_WORDS = 128;

export const REQ_SLOT_WORDS = 8;
export const CPL_SLOT_WORDS = 4;

/** Request slot fields. */
export const R_OP = 0;
export const R_FLAGS = 1;
export const R_ID = 2;
export const R_OFF_LO = 3;
export const R_OFF_HI = 4;
export const R_LEN = 5;
export const R_SLAB_OFF = 6;
export const R_SLAB_LEN = 7;

/** Completion slot fields. */
export const C_ID = 0;
/** 0 or a positive errno (src/util/errno.ts): the stripe never sees NBD values either. */
export const C_ERRNO = 1;
/** BLOCK_STATUS: number of (length, flags) u32 pairs written at the request's slab offset. */
export const C_RESULT = 2;

/** Operations a stripe performs (not NBD command numbers: the stripe never sees NBD). */
export const enum StripeOp {
  READ = 0,
  WRITE = 1,
  FLUSH = 2,
  TRIM = 3,
  ZERO = 4,
  CACHE = 5,
  BLOCK_STATUS = 6,
}

export const enum StripeFlag {
  FUA = 1 << 0,
  NO_HOLE = 1 << 1,
  FAST_ZERO = 1 << 2,
  /** READ: part of a long sequential run (sequentialCutoff): serve it without promoting it. */
  NO_FILL = 1 << 3,
}

/** The shared doorbell every stripe rings after publishing completions; the coordinator waits on word 0. */
export const DOORBELL_WORDS = 32;
export const BELL_COUNT = 0;
/**
 * 1 while the coordinator polls the completion rings itself (low queue depth): stripes then
 * skip the doorbell, saving the coordinator a wake-up. Dekker-safe: a stripe stores CPL_HEAD
 * before it reads this; the coordinator clears this before its last look at CPL_HEAD.
 */
export const BELL_POLLING = 16;
/** Stripes busy-polling right now, shared by all stripes: at most StripeWorkerData.maxSpinners. */
export const BELL_SPINNERS = 24;

/** The origin's address space is cut into subtrees of this size; a subtree belongs to one stripe. */
export const SUBTREE_SHIFT = 22;
export const SUBTREE_SIZE = 1 << SUBTREE_SHIFT; // 4 MiB

/** Slab allocation granule. */
export const SLAB_PAGE = 4096;

export function ringBytes(capacity: number): number {
  return (HEADER_WORDS + capacity * (REQ_SLOT_WORDS + CPL_SLOT_WORDS)) * 4;
}

export function reqSlotBase(capacity: number, counter: number): number {
  return HEADER_WORDS + (counter & (capacity - 1)) * REQ_SLOT_WORDS;
}

export function cplSlotBase(capacity: number, counter: number): number {
  return HEADER_WORDS + capacity * REQ_SLOT_WORDS + (counter & (capacity - 1)) * CPL_SLOT_WORDS;
}

/** Everything a stripe worker needs, handed over through piscina's workerData (plain data + SABs). */
export interface StripeWorkerData {
  stripe: number;
  stripes: number;
  capacity: number;
  ring: SharedArrayBuffer;
  slab: SharedArrayBuffer;
  doorbell: SharedArrayBuffer;
  counters: SharedArrayBuffer;
  origin: import('../origin/types.js').OriginSpec;
  /** Longest busy-poll before sleeping, in nanoseconds (0 = never spin). */
  spinNs: number;
  /** Stripes allowed to busy-poll at once (leave cores for the client and the coordinator). */
  maxSpinners: number;
  logLevel: string;
  /** Write-back mode: the cache this stripe serves from (absent in pass-through). */
  cache?: StripeCacheData;
}

export interface StripeCacheData {
  path: string;
  /** Open the cache device O_DIRECT (the coordinator resolved cacheDirectIo). */
  direct: boolean;
  /** Read hits kept in flight on the cache device (cacheQueueDepth). */
  queueDepth: number;
  shared: SharedArrayBuffer;
  index: import('../cache/index/layout.js').IndexSabs;
  blockCrc: SharedArrayBuffer | null;
  geometry: import('../cache/log.js').Geometry;
  /** The stripe's pending keys (src/cache/journal.ts): a respawned stripe takes them over. */
  journal: SharedArrayBuffer;
}
