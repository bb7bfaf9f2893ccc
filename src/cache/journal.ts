// The keys a stripe has accepted but not yet put in the key log, kept in a SharedArrayBuffer so
// that a stripe thread that dies does not take acknowledged writes with it: the respawned thread
// finds them here and commits them, so the next FLUSH covers them truthfully. Without this, the
// index (also shared) still served those writes while their keys were gone, and a FLUSH after the
// respawn succeeded for data a restart would not bring back.
//
// One writer (the owning stripe thread), read by its successor. A FIFO in push order: ksets are
// appended in the same order, so "appended" is always a prefix. An append in progress is recorded
// (how many keys, which log sequence number it reaches) before the log head moves, so a successor
// can tell whether a half-finished append made it into the log.

import type { CacheKey } from './kset.js';

const HEAD = 0;
const TAIL = 1;
const APPEND_N = 2;
const CAPACITY = 3;
const HEAD_SEG = 4;
const HEAD_OFF = 5;
/** Engines that have attached to this journal: more than one means a predecessor died. */
const INCARNATION = 6;
/** Bit 0: writes went to the origin first since its last flush; bit 1: such a flush failed (see engine.ts flush). */
const ORIGIN_STATE = 7;
/** The shared count of failed origin flushes when this stripe's unflushed origin writes began. */
const ORIGIN_MARK = 12;
/** Float64 indices (byte offset / 8). */
const F_APPEND_LSN = 4;
const F_UNPUBLISHED_DIRTY = 5;
const HEADER_WORDS = 16;
const REC_WORDS = 8;

/** Default capacity in keys (a power of two): 4 MiB of shared memory, committed as it is touched. */
export const JOURNAL_KEYS = 1 << 17;

export class KeyJournal {
  readonly sab: SharedArrayBuffer;
  readonly #w: Int32Array;
  readonly #f: Float64Array;
  readonly capacity: number;

  static create(capacity = JOURNAL_KEYS): KeyJournal {
    if (capacity <= 0 || (capacity & (capacity - 1)) !== 0) throw new RangeError(`journal capacity ${capacity} must be a power of two`);
    const sab = new SharedArrayBuffer((HEADER_WORDS + capacity * REC_WORDS) * 4);
    const w = new Int32Array(sab);
    w[CAPACITY] = capacity;
    w[HEAD_SEG] = -1;
    return new KeyJournal(sab);
  }

  constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.#w = new Int32Array(sab);
    this.#f = new Float64Array(sab, 0, HEADER_WORDS / 2);
    this.capacity = this.#w[CAPACITY]!;
  }

  /** Keys accepted and not yet in the log. */
  get pending(): number {
    return (Atomics.load(this.#w, HEAD) - Atomics.load(this.#w, TAIL)) | 0;
  }

  /** Room for `n` more keys. */
  room(n: number): boolean {
    return this.pending + n <= this.capacity;
  }

  push(k: CacheKey): void {
    const w = this.#w;
    const head = w[HEAD]!;
    if (((head - w[TAIL]!) | 0) >= this.capacity) throw new RangeError('key journal full (the caller checks room() first)');
    const at = HEADER_WORDS + (head & (this.capacity - 1)) * REC_WORDS;
    w[at] = k.originOffset % 0x1_0000_0000;
    w[at + 1] = Math.floor(k.originOffset / 0x1_0000_0000);
    w[at + 2] = k.length;
    w[at + 3] = k.flags;
    w[at + 4] = k.segment;
    w[at + 5] = k.offset;
    w[at + 6] = k.generation;
    w[at + 7] = k.dataCrc;
    Atomics.store(w, HEAD, (head + 1) | 0);
  }

  /**
   * Under the log lock, before the log head moves: the next `keys` keys are in ksets that end at
   * sequence number `lsnAfter`. (Called again with the final numbers when an append stops early.)
   */
  beginAppend(keys: number, lsnAfter: number): void {
    Atomics.store(this.#w, APPEND_N, 0);
    this.#f[F_APPEND_LSN] = lsnAfter;
    Atomics.store(this.#w, APPEND_N, keys);
  }

  /** Under the log lock, after the head moved past them. */
  endAppend(): void {
    const w = this.#w;
    Atomics.store(w, TAIL, (w[TAIL]! + w[APPEND_N]!) | 0);
    Atomics.store(w, APPEND_N, 0);
  }

  /** The append failed before the head moved: the keys are still pending. */
  abortAppend(): void {
    Atomics.store(this.#w, APPEND_N, 0);
  }

  /**
   * A successor's view (under the log lock, `headLsn` read there): an append the dead thread left
   * half-done counts as logged when the log head reached it; returns the keys still pending, in order.
   */
  recover(headLsn: number): CacheKey[] {
    const w = this.#w;
    if (w[APPEND_N]! !== 0) {
      if (headLsn >= this.#f[F_APPEND_LSN]!) this.endAppend();
      else this.abortAppend();
    }
    const out: CacheKey[] = [];
    for (let i = w[TAIL]!; i !== w[HEAD]!; i = (i + 1) | 0) {
      const at = HEADER_WORDS + (i & (this.capacity - 1)) * REC_WORDS;
      out.push({
        originOffset: (w[at + 1]! >>> 0) * 0x1_0000_0000 + (w[at]! >>> 0), length: w[at + 2]! >>> 0, flags: w[at + 3]!,
        segment: w[at + 4]! >>> 0, offset: w[at + 5]! >>> 0, generation: w[at + 6]!, dataCrc: w[at + 7]! >>> 0,
      });
    }
    return out;
  }

  /** The stripe's data head (segment -1: none), so a successor keeps filling it instead of leaking its reference. */
  get headSeg(): number { return this.#w[HEAD_SEG]!; }
  get headOff(): number { return this.#w[HEAD_OFF]!; }
  setHead(seg: number, off: number): void {
    this.#w[HEAD_SEG] = seg;
    this.#w[HEAD_OFF] = off;
  }

  get originMark(): number { return this.#w[ORIGIN_MARK]!; }
  set originMark(v: number) { this.#w[ORIGIN_MARK] = v; }
  get originState(): number { return this.#w[ORIGIN_STATE]!; }
  set originState(v: number) { this.#w[ORIGIN_STATE] = v; }

  get incarnation(): number { return this.#w[INCARNATION]!; }
  set incarnation(v: number) { this.#w[INCARNATION] = v; }

  /** Dirty bytes the stripe counted but has not published to the shared total yet. */
  get unpublishedDirty(): number { return this.#f[F_UNPUBLISHED_DIRTY]!; }
  set unpublishedDirty(v: number) { this.#f[F_UNPUBLISHED_DIRTY] = v; }
}
