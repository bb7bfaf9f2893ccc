// The cache-wide state every thread of one cache shares through one SharedArrayBuffer: the log
// head and tails, the segment table (state, key references, generation), the dual-slot sequence
// state of every mutable record, and the locks that order key-log appends and cache syncs.
//
// Why shared words and not messages: stripes append to one key log in one global order, the
// writeback and GC workers follow that log, and `status` reads all of it, at any moment, without
// stopping anyone. A message per append would cost ~25 µs of wake-up per kset.

import type { BlockDevice } from './blockdev.js';
import { encodeRecord, nextSlot } from './meta-slots.js';
import type { DualSlot, LogPosition, RecordCodec } from './meta-slots.js';
import {
  COORDINATOR_OWNER, W_FAILED, W_FAILED_WHY, W_LOG_LOCK, W_SYNC_LOCK, lockWord, releaseWordOf, syncCache, syncCacheAsync, syncMark, unlockWord,
} from './durability.js';
import type { GateHost } from './durability.js';
import { DEFAULT_TUNABLES, SHARED_TUNABLES, type Tunables } from '../config/tunable-descriptors.js';
import { Errno } from '../util/errno.js';

/** Segment states (the on-media segment info says the same, best effort; replay is the truth). */
export const SEG_FREE = 0;
export const SEG_DATA = 1;
export const SEG_LOG = 2;
/** Free, but held by the initializer while it writes zeros into the segment's unwritten ranges. */
export const SEG_INIT = 3;

/** Cache modes, numbered as in the cache info record (docs/format.md). */
export const MODE_WRITEBACK = 0;
export const MODE_WRITETHROUGH = 1;
export const MODE_WRITEAROUND = 2;
export const MODE_PASSTHROUGH = 3;
export const MODE_WRITEONLY = 4;
export const MODE_NAMES = ['writeback', 'writethrough', 'writearound', 'passthrough', 'writeonly'] as const;
export type CacheModeName = (typeof MODE_NAMES)[number];

export function modeCode(name: string): number {
  const i = (MODE_NAMES as readonly string[]).indexOf(name);
  if (i < 0) throw new RangeError(`unknown cache mode ${name}`);
  return i;
}

// Int32 word indices of the header (0-3 and 64-66: src/cache/durability.ts).
const W_HEAD_SEG = 4;
const W_HEAD_OFF = 5;
const W_PREV_CRC = 6;
const W_KEY_TAIL_SEG = 7;
const W_KEY_TAIL_OFF = 8;
const W_DIRTY_TAIL_SEG = 9;
const W_DIRTY_TAIL_OFF = 10;
const W_GC_PERCENT = 11;
const W_USED = 12;
const W_ALLOC_HINT = 13;
/** Bumped (and notified) when the log head moves: the writeback worker waits on it. */
export const W_KICK_WB = 14;
/** Bumped when segments are freed: writes waiting for space and the GC-sweeping stripes watch it. */
export const W_FREED = 15;
/** Bumped when the writeback worker moved dirty_tail: the GC worker waits on it. */
export const W_KICK_GC = 16;
const W_ERRORS = 17;
export const W_STOP = 18;
const W_WRITER_SEQ = 19;
const W_SEGMENTS = 20;
const W_LOG_RESERVE = 21;
const W_BYTES_PER_BLOCK = 22;
/** Bumped by the stripes once per batch that wrote: the writeback worker's sign of foreground I/O. */
export const W_FOREGROUND = 26;
/** The cache mode (MODE_*), read by the stripes per request: switching is one store. */
const W_MODE = 28;
// Words 23-25, 27, 29 and 54-59 are free (the tunables' words were there); 32-47 hold the BigInt
// words, 48-53 the records, 68-127 the tunables (below).
/** Last time (ms, modulo 2^31) a write waited for cache space: writeback then ignores pause and rate. */
const W_BLOCKED_AT = 60;
/** Set by `pcached detach`: a stripe (re)starting after it serves without the cache. */
const W_DETACHED = 61;
/** Epoch marks in the log that writeback has not passed yet. */
const W_EPOCHS_PENDING = 62;
/** Tests only (PCACHED_TEST_HOOKS=1): bit 0 fails the stripes' cache reads, bit 1 their writes. */
const W_TEST_FAULTS = 63;
/**
 * Origin flushes that failed, by any thread of this cache. A failed flush may drop writes other
 * threads sent through their own descriptors or connections, and their next flush may succeed
 * without them (a descriptor opened after the error, an NBD server that lost its cache): so each
 * stripe compares this count with its own mark before trusting a flush (errseq, shared).
 */
const W_ORIGIN_FLUSH_FAILS = 67;
export const FAULT_READS = 1;
export const FAULT_WRITES = 2;

// BigInt64 indices (byte offset 128 onwards).
const B_BASE = 16;
const B_HEAD_LSN = B_BASE + 0;
const B_KEY_TAIL_LSN = B_BASE + 1;
const B_DIRTY_TAIL_LSN = B_BASE + 2;
const B_DURABLE_LSN = B_BASE + 3;
const B_DIRTY_BYTES = B_BASE + 4;
// B_BASE + 5 is free (the writeback rate was there).
/** Sequence number of the last kset appended that ends an epoch (0: none since start). */
const B_EPOCH_LSN = B_BASE + 6;

/** Dual-slot state of the three cache-wide records: [seq, newest slot or -1]. */
export const REC_CACHE_INFO = 48;
export const REC_KEY_TAIL = 50;
export const REC_DIRTY_TAIL = 52;

const HEADER_WORDS = 128;

/**
 * The tunables' words, laid out from their descriptors (src/config/tunable-descriptors.ts) in
 * table order from word 68 on: an Int32 word each, a BigInt64 one on the next even word (its index
 * in the BigInt64 view is half of it). Nothing outside one process sees this layout, so adding a
 * tunable may move the words after it.
 */
export const TUNABLE_WORDS_FIRST = 68;
export const TUNABLE_WORDS_END = HEADER_WORDS;
export const TUNABLE_WORDS: Readonly<Record<keyof Tunables, number>> = (() => {
  const out: Record<string, number> = {};
  let next = TUNABLE_WORDS_FIRST;
  for (const { shared } of SHARED_TUNABLES) {
    if (shared.kind === 'int64') next += next % 2;
    out[shared.field] = next;
    next += shared.kind === 'int64' ? 2 : 1;
  }
  if (next > TUNABLE_WORDS_END) throw new Error(`the tunables need words ${TUNABLE_WORDS_FIRST}-${next - 1}; the header ends at ${TUNABLE_WORDS_END - 1}`);
  return Object.freeze(out) as Record<keyof Tunables, number>;
})();
const TW = TUNABLE_WORDS;
/** Per-segment words, one array each: state, references, generation, info seq/newest, gen seq/newest. */
const SEG_ARRAYS = 7;

export const ERR_WRITEBACK = 1;
export const ERR_GC = 2;
export const ERR_CACHE_IO = 4;
export const ERR_ORIGIN_IO = 8;
/** A foreground origin flush failed (modes that write the origin first): FLUSH fails until restart. */
export const ERR_ORIGIN_FLUSH = 16;

export interface SharedInit {
  segmentCount: number;
  head: LogPosition;
  prevCrc: number;
  keyTail: LogPosition;
  dirtyTail: LogPosition;
  gcPercent: number;
  /** Segments data allocation leaves for the key log. */
  logReserve: number;
  tunables?: Partial<Tunables>;
}

// The tunables (their words, the Tunables fields and defaults) come from their descriptors.
export { DEFAULT_TUNABLES, type Tunables };

/** Generations live in an Int32Array: the on-media u64 is bounded to this (docs/format.md §4). */
export const MAX_GENERATION = 0x7ffffffe;

/** Dual-slot sequence state before a record write, to undo it when the write may not have reached the media. */
export interface RecordUndo { seq: number; newest: number }

// Readonly<Tunables>: a tunable's descriptor without its getter here does not compile.
export class CacheShared implements GateHost, Readonly<Tunables> {
  readonly sab: SharedArrayBuffer;
  readonly w: Int32Array;
  readonly b: BigInt64Array;
  readonly segmentCount: number;
  readonly state: Int32Array;
  readonly refs: Int32Array;
  readonly gen: Int32Array;
  private readonly infoSeq: Int32Array;
  private readonly infoNewest: Int32Array;
  private readonly genSeq: Int32Array;
  private readonly genNewest: Int32Array;

  static bytesFor(segmentCount: number): number {
    return (HEADER_WORDS + SEG_ARRAYS * segmentCount) * 4;
  }

  static create(init: SharedInit): CacheShared {
    const s = new CacheShared(new SharedArrayBuffer(CacheShared.bytesFor(init.segmentCount)));
    const w = s.w;
    w[W_SEGMENTS] = init.segmentCount;
    w[W_LOG_RESERVE] = init.logReserve;
    w[W_BYTES_PER_BLOCK] = 4096;
    s.setHead(init.head, init.prevCrc);
    s.setKeyTail(init.keyTail);
    s.setDirtyTail(init.dirtyTail);
    w[W_GC_PERCENT] = init.gcPercent;
    s.setTunables({ ...DEFAULT_TUNABLES, ...init.tunables });
    for (let i = 0; i < init.segmentCount; i++) s.infoNewest[i] = -1, s.genNewest[i] = -1;
    w[REC_CACHE_INFO + 1] = -1;
    w[REC_KEY_TAIL + 1] = -1;
    w[REC_DIRTY_TAIL + 1] = -1;
    return s;
  }

  /** This thread's id in lock words (src/cache/durability.ts *_OWNER). */
  readonly owner: number;
  /** Tests only: see GateHost.gateWaiter. */
  gateWaiter: ((retry: () => void) => void) | null = null;

  constructor(sab: SharedArrayBuffer, owner = COORDINATOR_OWNER) {
    this.sab = sab;
    this.owner = owner;
    this.w = new Int32Array(sab);
    this.b = new BigInt64Array(sab, 0, HEADER_WORDS / 2);
    const n = this.w[W_SEGMENTS] || (sab.byteLength / 4 - HEADER_WORDS) / SEG_ARRAYS;
    this.segmentCount = n;
    const arr = (k: number): Int32Array => new Int32Array(sab, (HEADER_WORDS + k * n) * 4, n);
    this.state = arr(0);
    this.refs = arr(1);
    this.gen = arr(2);
    this.infoSeq = arr(3);
    this.infoNewest = arr(4);
    this.genSeq = arr(5);
    this.genNewest = arr(6);
  }

  // ---- log positions ----

  get headLsn(): number { return Number(Atomics.load(this.b, B_HEAD_LSN)); }
  head(): LogPosition {
    return { segment: Atomics.load(this.w, W_HEAD_SEG), offset: Atomics.load(this.w, W_HEAD_OFF), lsn: this.headLsn };
  }
  get prevCrc(): number { return this.w[W_PREV_CRC]! >>> 0; }
  /** Under the log lock only. */
  setHead(p: LogPosition, prevCrc: number): void {
    this.w[W_PREV_CRC] = prevCrc | 0;
    Atomics.store(this.w, W_HEAD_SEG, p.segment);
    Atomics.store(this.w, W_HEAD_OFF, p.offset);
    Atomics.store(this.b, B_HEAD_LSN, BigInt(p.lsn));
  }
  keyTail(): LogPosition {
    return { segment: Atomics.load(this.w, W_KEY_TAIL_SEG), offset: Atomics.load(this.w, W_KEY_TAIL_OFF), lsn: Number(Atomics.load(this.b, B_KEY_TAIL_LSN)) };
  }
  setKeyTail(p: LogPosition): void {
    Atomics.store(this.w, W_KEY_TAIL_SEG, p.segment);
    Atomics.store(this.w, W_KEY_TAIL_OFF, p.offset);
    Atomics.store(this.b, B_KEY_TAIL_LSN, BigInt(p.lsn));
  }
  dirtyTail(): LogPosition {
    return { segment: Atomics.load(this.w, W_DIRTY_TAIL_SEG), offset: Atomics.load(this.w, W_DIRTY_TAIL_OFF), lsn: Number(Atomics.load(this.b, B_DIRTY_TAIL_LSN)) };
  }
  setDirtyTail(p: LogPosition): void {
    Atomics.store(this.w, W_DIRTY_TAIL_SEG, p.segment);
    Atomics.store(this.w, W_DIRTY_TAIL_OFF, p.offset);
    Atomics.store(this.b, B_DIRTY_TAIL_LSN, BigInt(p.lsn));
    this.kick(W_KICK_GC);
  }
  /** Every kset with a smaller sequence number is known durable on the cache device. */
  get durableLsn(): number { return Number(Atomics.load(this.b, B_DURABLE_LSN)); }
  noteDurable(lsn: number): void {
    for (;;) {
      const cur = Atomics.load(this.b, B_DURABLE_LSN);
      if (cur >= BigInt(lsn) || Atomics.compareExchange(this.b, B_DURABLE_LSN, cur, BigInt(lsn)) === cur) return;
    }
  }

  /** Under the log lock (appendKsets). */
  noteEpoch(lsn: number): void { Atomics.store(this.b, B_EPOCH_LSN, BigInt(lsn)); }
  /** True when the newest kset in the log already ends an epoch (a FLUSH with nothing new needs no marker). */
  get epochClosed(): boolean { return Number(Atomics.load(this.b, B_EPOCH_LSN)) === this.headLsn - 1; }
  /** Sequence number of the newest kset that ends an epoch (0: none in the log). */
  get lastEpochLsn(): number { return Number(Atomics.load(this.b, B_EPOCH_LSN)); }

  get dirtyBytes(): number { return Number(Atomics.load(this.b, B_DIRTY_BYTES)); }
  addDirty(n: number): void { Atomics.add(this.b, B_DIRTY_BYTES, BigInt(n)); }

  get gcPercent(): number { return Atomics.load(this.w, W_GC_PERCENT); }
  set gcPercent(v: number) { Atomics.store(this.w, W_GC_PERCENT, v); this.kick(W_KICK_GC); }
  // The tunables (descriptors: src/config/tunable-descriptors.ts).
  get autocommitMs(): number { return Atomics.load(this.w, TW.autocommitMs); }
  get cacheFullWaitMs(): number { return Atomics.load(this.w, TW.cacheFullWaitMs); }
  get cacheFullMaxWaitMs(): number { return Atomics.load(this.w, TW.cacheFullMaxWaitMs); }
  get writebackRate(): number { return Number(Atomics.load(this.b, TW.writebackRate / 2)); }
  get writebackPauseMs(): number { return Atomics.load(this.w, TW.writebackPauseMs); }
  get writebackJobs(): number { return Atomics.load(this.w, TW.writebackJobs); }
  get highWatermark(): number { return Atomics.load(this.w, TW.highWatermark); }
  get lowWatermark(): number { return Atomics.load(this.w, TW.lowWatermark); }
  get maxAgeMs(): number { return Atomics.load(this.w, TW.maxAgeMs); }
  get cleaner(): boolean { return Atomics.load(this.w, TW.cleaner) !== 0; }
  get autocommitBlocks(): number { return Atomics.load(this.w, TW.autocommitBlocks); }
  get promoteHits(): number { return Atomics.load(this.w, TW.promoteHits); }
  get epochsPending(): number { return Atomics.load(this.w, W_EPOCHS_PENDING); }
  addEpochsPending(n: number): void { Atomics.add(this.w, W_EPOCHS_PENDING, n); }
  get originFlushFails(): number { return Atomics.load(this.w, W_ORIGIN_FLUSH_FAILS); }
  noteOriginFlushFailed(): void { Atomics.add(this.w, W_ORIGIN_FLUSH_FAILS, 1); }
  get testFaults(): number { return Atomics.load(this.w, W_TEST_FAULTS); }
  setTestFaults(bits: number): void { Atomics.store(this.w, W_TEST_FAULTS, bits); }
  get detached(): boolean { return Atomics.load(this.w, W_DETACHED) !== 0; }
  markDetached(): void { Atomics.store(this.w, W_DETACHED, 1); }
  noteWriteBlocked(nowMs: number): void { Atomics.store(this.w, W_BLOCKED_AT, (nowMs % 0x7fffffff) | 0); }
  /** A write waited for cache space within the last `ms` milliseconds. */
  writeBlockedWithin(nowMs: number, ms: number): boolean {
    const at = Atomics.load(this.w, W_BLOCKED_AT);
    if (at === 0) return false;
    const age = ((nowMs % 0x7fffffff) - at + 0x7fffffff) % 0x7fffffff;
    return age < ms;
  }
  setTunables(t: Partial<Tunables>): void {
    for (const { shared } of SHARED_TUNABLES) {
      const v = t[shared.field];
      if (v === undefined) continue;
      const word = TW[shared.field];
      if (shared.kind === 'int64') Atomics.store(this.b, word / 2, BigInt(v));
      else Atomics.store(this.w, word, typeof v === 'boolean' ? Number(v) : v);
      if (shared.kickWriteback) this.kick(W_KICK_WB);
    }
  }

  get mode(): number { return Atomics.load(this.w, W_MODE); }
  set mode(m: number) { Atomics.store(this.w, W_MODE, m); }

  get usedSegments(): number { return Atomics.load(this.w, W_USED); }
  get logReserve(): number { return this.w[W_LOG_RESERVE]!; }
  get errors(): number { return Atomics.load(this.w, W_ERRORS); }
  setError(bit: number): void { Atomics.or(this.w, W_ERRORS, bit); }
  clearError(bit: number): void { Atomics.and(this.w, W_ERRORS, ~bit); }
  get stopping(): boolean { return Atomics.load(this.w, W_STOP) !== 0; }
  stop(): void {
    Atomics.store(this.w, W_STOP, 1);
    for (const k of [W_KICK_WB, W_KICK_GC, W_FREED]) this.kick(k);
  }
  /** A fresh nonce per kset writer, so a re-written kset never equals a stale one. */
  nextWriterId(): number { return (Atomics.add(this.w, W_WRITER_SEQ, 1) * 0x9e3779b1 + Date.now()) >>> 0; }

  kick(word: number): void {
    Atomics.add(this.w, word, 1);
    Atomics.notify(this.w, word);
  }
  word(i: number): number { return Atomics.load(this.w, i); }

  // ---- locks, group commit and the sticky failure (src/cache/durability.ts) ----

  lockLog(): void { lockWord(this.w, W_LOG_LOCK, this.owner); }
  unlockLog(): void { unlockWord(this.w, W_LOG_LOCK); }

  /** A thread died: free the locks it held (true when it held one). */
  releaseLocksOf(owner: number): boolean {
    const a = releaseWordOf(this.w, W_LOG_LOCK, owner);
    const b = releaseWordOf(this.w, W_SYNC_LOCK, owner);
    return a || b;
  }

  /** Group commit across threads; false when the device failed (see durability.ts for `since`). */
  syncCache(dev: BlockDevice, since = 0): boolean { return syncCache(this, dev, since); }
  syncCacheAsync(dev: BlockDevice, cb: (ok: boolean) => void, since = 0): void { syncCacheAsync(this, dev, cb, since); }
  syncMark(): number { return syncMark(this.w); }

  /** The sticky device failure: its errno, 0 while healthy. */
  get failed(): number { return Atomics.load(this.w, W_FAILED); }
  get failedWhy(): number { return Atomics.load(this.w, W_FAILED_WHY); }
  /** The first failure wins; every thread that waits on a shared word is woken to notice it. */
  fail(errno: number = Errno.EIO, why = 0): void {
    if (Atomics.compareExchange(this.w, W_FAILED, 0, errno) === 0) Atomics.store(this.w, W_FAILED_WHY, why);
    this.setError(ERR_CACHE_IO);
    for (const k of [W_KICK_WB, W_KICK_GC, W_FREED]) this.kick(k);
  }

  // ---- segments ----

  get freeSegments(): number { return this.segmentCount - this.usedSegments; }

  /**
   * Claims a free segment (data allocations leave `logReserve` segments to the key log); -1 if
   * none. A data segment comes with one reference (its taker's, as a data head), taken while it is
   * still free: the GC worker frees any data segment without references, and must never see a
   * fresh one in between.
   */
  allocSegment(type: typeof SEG_DATA | typeof SEG_LOG): number {
    const n = this.segmentCount;
    if (type === SEG_DATA && this.freeSegments <= this.logReserve) return -1;
    const start = Atomics.load(this.w, W_ALLOC_HINT) % n;
    for (let i = 0; i < n; i++) {
      const s = (start + i) % n;
      if (Atomics.load(this.state, s) !== SEG_FREE) continue;
      if (type === SEG_DATA) Atomics.add(this.refs, s, 1);
      if (Atomics.compareExchange(this.state, s, SEG_FREE, type) === SEG_FREE) {
        Atomics.add(this.w, W_USED, 1);
        Atomics.store(this.w, W_ALLOC_HINT, s + 1);
        return s;
      }
      if (type === SEG_DATA) Atomics.sub(this.refs, s, 1);
    }
    return -1;
  }

  /**
   * Holds a free segment away from allocation (SEG_INIT) without counting it used; only while
   * more than `spare` segments beyond the log reserve are free, so allocation never starves.
   */
  holdFree(s: number, spare: number): boolean {
    if (this.freeSegments <= this.logReserve + spare) return false;
    return Atomics.compareExchange(this.state, s, SEG_FREE, SEG_INIT) === SEG_FREE;
  }

  releaseHeld(s: number): void {
    Atomics.compareExchange(this.state, s, SEG_INIT, SEG_FREE);
    this.kick(W_FREED);
  }

  /** Where allocation looks next (the initializer works ahead of it). */
  get allocHint(): number { return Atomics.load(this.w, W_ALLOC_HINT) % this.segmentCount; }

  /** Marks a segment in use at replay (no allocation race: the workers have not started). */
  claimAtReplay(s: number, type: typeof SEG_DATA | typeof SEG_LOG): void {
    if (this.state[s] === SEG_FREE) this.w[W_USED]!++;
    this.state[s] = type;
  }

  /** The caller has bumped and persisted the generation (data) or retired the segment (log). */
  freeSegment(s: number): void {
    if (Atomics.exchange(this.state, s, SEG_FREE) !== SEG_FREE) Atomics.sub(this.w, W_USED, 1);
    this.kick(W_FREED);
  }

  ref(s: number, n = 1): void { Atomics.add(this.refs, s, n); }
  /** Returns the references left. */
  unref(s: number, n = 1): number { return Atomics.sub(this.refs, s, n) - n; }
  genOf(s: number): number { return Atomics.load(this.gen, s); }
  setGen(s: number, g: number): void { Atomics.store(this.gen, s, g); }

  // ---- dual-slot records: the sequence state is shared, so whichever thread writes next picks the right slot ----

  private slotState(seq: Int32Array | null, newest: Int32Array | null, i: number): DualSlot<unknown> {
    const sq = seq ? seq[i]! : this.w[i]!;
    const nw = newest ? newest[i]! : this.w[i + 1]!;
    return { value: null, newest: nw < 0 ? null : (nw as 0 | 1), seq: sq >>> 0 };
  }

  loadRecordState(rec: number, st: DualSlot<unknown>): void {
    this.w[rec] = st.seq | 0;
    this.w[rec + 1] = st.newest ?? -1;
  }
  loadSegmentState(s: number, info: DualSlot<unknown>, gen: DualSlot<unknown>): void {
    this.infoSeq[s] = info.seq | 0;
    this.infoNewest[s] = info.newest ?? -1;
    this.genSeq[s] = gen.seq | 0;
    this.genNewest[s] = gen.newest ?? -1;
  }

  /**
   * Writes a cache-wide record to its non-newest slot (no sync). One writer per record kind, and at
   * most one write between two successful syncs: the next write goes to the other slot, which holds
   * the last durable copy. When the sync after it fails, `undoRecord` makes the next write target
   * the same (unsure) slot again, so the durable copy is never the one overwritten.
   */
  writeRecord<T>(dev: BlockDevice, rec: number, offsets: readonly [number, number], codec: RecordCodec<T>, v: T, salt: number): RecordUndo {
    const undo = { seq: this.w[rec]!, newest: this.w[rec + 1]! };
    const { slot, seq } = nextSlot(this.slotState(null, null, rec));
    dev.pwrite(encodeRecord(codec, seq, v, salt), offsets[slot]);
    this.w[rec] = seq | 0;
    this.w[rec + 1] = slot;
    return undo;
  }

  undoRecord(rec: number, undo: RecordUndo): void {
    this.w[rec] = undo.seq;
    this.w[rec + 1] = undo.newest;
  }

  /** Segment info or generation record: the segment's current owner is its only writer. */
  writeSegmentRecord<T>(dev: BlockDevice, s: number, kind: 'info' | 'gen', offsets: readonly [number, number], codec: RecordCodec<T>, v: T, salt: number): RecordUndo {
    const seqArr = kind === 'info' ? this.infoSeq : this.genSeq;
    const newArr = kind === 'info' ? this.infoNewest : this.genNewest;
    const undo = { seq: seqArr[s]!, newest: newArr[s]! };
    const { slot, seq } = nextSlot(this.slotState(seqArr, newArr, s));
    dev.pwrite(encodeRecord(codec, seq, v, salt), offsets[slot]);
    seqArr[s] = seq | 0;
    newArr[s] = slot;
    return undo;
  }

  undoSegmentRecord(s: number, kind: 'info' | 'gen', undo: RecordUndo): void {
    (kind === 'info' ? this.infoSeq : this.genSeq)[s] = undo.seq;
    (kind === 'info' ? this.infoNewest : this.genNewest)[s] = undo.newest;
  }
}
