// Coordinator side of one stripe's ring: issues pieces into request slots (payload copied into
// the stripe's slab), takes completions, and keeps a FIFO of pieces waiting for a slot or slab
// space so that per-stripe order is never broken.
//
// The slab never deadlocks: a piece holds slab pages only while the stripe works on it, or while
// a socket has not yet taken a reply sent straight from them (at most half of the slab, see
// pinForSocket). So when nothing of the stripe's own is in flight and the piece at the head of
// the FIFO still finds no contiguous run, what blocks it can only be those replies, which a
// client that stopped reading may hold for ever: the piece is then cut to the longest free run.

import assert from 'node:assert/strict';
import {
  REQ_HEAD, CPL_HEAD, CPL_TAIL, WORKER_SLEEPING, SPIN_HINT,
  R_OP, R_FLAGS, R_ID, R_OFF_LO, R_OFF_HI, R_LEN, R_SLAB_OFF, R_SLAB_LEN,
  C_ID, C_ERRNO, C_RESULT,
  reqSlotBase, cplSlotBase, ringBytes, SLAB_PAGE, type StripeOp,
} from '../ring/layout.js';
import { SlabAllocator } from '../ring/slab.js';
import { CounterBlock, STRIPE_COUNTERS } from '../stats/counters.js';
import { copyBytes } from '../util/copy-bytes.js';

/** One unit of stripe work. The owner is called back exactly once. */
export interface StripeWork {
  op: StripeOp;
  flags: number;
  offset: number;
  length: number;
  /** Slab bytes needed (payload for WRITE, destination for READ, extent space for BLOCK_STATUS). */
  slabBytes: number;
  /** WRITE payload, copied into the slab when the work is issued. */
  payload: Uint8Array | null;
  /**
   * errno: 0 on success, else a positive errno (src/util/errno.ts), never an NBD value. The
   * slab region [slabOff, slabOff+slabBytes) stays allocated until the owner calls
   * ring.releaseSlab(work), so a READ's data can be sent from it.
   */
  onDone(work: StripeWork, errno: number, result: number): void;
  /** Set by the ring when issued. */
  slabOff: number;
  ring: StripeRing | null;
  /**
   * READ and WRITE (slabBytes === length): cut the first `bytes` off into a new work of their
   * own (same owner, same stripe, issued first) and keep the rest in `work`.
   */
  split?(work: StripeWork, bytes: number): StripeWork;
}

export class StripeRing {
  readonly id: number;
  readonly capacity: number;
  readonly ringSab: SharedArrayBuffer;
  readonly slabSab: SharedArrayBuffer;
  readonly counterSab: SharedArrayBuffer;
  readonly counters: CounterBlock<(typeof STRIPE_COUNTERS)[number]>;
  readonly slab: Uint8Array;
  readonly #ring: Int32Array;
  readonly #alloc: SlabAllocator;
  readonly #pending: (StripeWork | null)[];
  readonly #freeIds: number[];
  readonly #queueDepthIdx: number;
  /** FIFO of work that could not be issued yet; #waitHead avoids O(n) shifts. */
  #waiting: StripeWork[] = [];
  #waitHead = 0;
  #reqHead: number;
  #cplTail: number;
  #inflight = 0;
  #needBell = false;
  /** Slab bytes held by replies sent from the slab that their socket has not taken yet. */
  #socketPinned = 0;
  readonly #pinCap: number;
  readonly #splitsIdx: number;
  /** While the stripe thread is being (re)started nothing is issued: the new thread starts from REQ_HEAD. */
  #down = true;

  constructor(id: number, capacity: number, slabBytes: number) {
    assert.ok(capacity > 0 && (capacity & (capacity - 1)) === 0, 'ring capacity must be a power of two');
    this.id = id;
    this.capacity = capacity;
    this.ringSab = new SharedArrayBuffer(ringBytes(capacity));
    this.slabSab = new SharedArrayBuffer(slabBytes);
    this.counterSab = new SharedArrayBuffer(STRIPE_COUNTERS.length * 8);
    this.counters = new CounterBlock(STRIPE_COUNTERS, this.counterSab);
    this.slab = new Uint8Array(this.slabSab);
    this.#ring = new Int32Array(this.ringSab);
    this.#alloc = new SlabAllocator(slabBytes);
    this.#pending = new Array<StripeWork | null>(capacity).fill(null);
    this.#freeIds = [];
    for (let i = capacity - 1; i >= 0; i--) this.#freeIds.push(i);
    this.#reqHead = 0;
    this.#cplTail = 0;
    this.#queueDepthIdx = this.counters.indexOf('queue_depth');
    this.#splitsIdx = this.counters.indexOf('slab_splits');
    this.#pinCap = Math.floor(slabBytes / 2);
  }

  get inflight(): number {
    return this.#inflight;
  }

  get waiting(): number {
    return this.#waiting.length - this.#waitHead;
  }

  get slabSize(): number {
    return this.slabSab.byteLength;
  }

  /** Queue work behind anything already waiting, or issue it now. */
  submit(work: StripeWork): void {
    assert.ok(work.slabBytes <= this.slabSab.byteLength, 'piece larger than the slab');
    if (this.#waitHead === this.#waiting.length && this.#issue(work)) return;
    this.#waiting.push(work);
  }

  #issue(work: StripeWork): boolean {
    if (this.#down || this.#inflight === this.capacity) return false;
    let slabOff = 0;
    if (work.slabBytes > 0) {
      slabOff = this.#alloc.alloc(work.slabBytes);
      if (slabOff < 0) {
        if (this.#inflight === 0 && work.split) this.#issuePrefix(work);
        return false;
      }
      if (work.payload) copyBytes(this.slab, slabOff, work.payload);
    }
    work.payload = null;
    work.slabOff = slabOff;
    work.ring = this;
    const id = this.#freeIds.pop()!;
    this.#pending[id] = work;
    const r = this.#ring;
    const base = reqSlotBase(this.capacity, this.#reqHead);
    r[base + R_OP] = work.op;
    r[base + R_FLAGS] = work.flags;
    r[base + R_ID] = id;
    r[base + R_OFF_LO] = work.offset % 0x100000000;
    r[base + R_OFF_HI] = Math.floor(work.offset / 0x100000000);
    r[base + R_LEN] = work.length;
    r[base + R_SLAB_OFF] = slabOff;
    r[base + R_SLAB_LEN] = work.slabBytes;
    this.#reqHead = (this.#reqHead + 1) | 0;
    // Published at once so a spinning stripe can start; the wake-up is batched (ringBell).
    Atomics.store(r, REQ_HEAD, this.#reqHead);
    this.#inflight++;
    this.counters.addAt(this.#queueDepthIdx, 1);
    this.#needBell = true;
    return true;
  }

  /** The slab is too fragmented for `work` while the stripe is idle: issue as much of it as fits. */
  #issuePrefix(work: StripeWork): void {
    const run = this.#alloc.largestFreeRun();
    if (run === 0) return;
    assert.ok(run < work.slabBytes, 'a free run this long would have been allocated');
    const head = work.split!(work, run);
    this.counters.addAt(this.#splitsIdx, 1);
    assert.ok(this.#issue(head), 'the prefix fits the longest free run');
  }

  /**
   * A completed piece's reply is to be sent straight from its slab pages: allowed while all such
   * pages of this slab add up to half of it at most. The pages stay allocated until
   * unpinForSocket (the socket took the bytes or died).
   */
  pinForSocket(work: StripeWork): boolean {
    const bytes = SlabAllocator.pagesFor(work.slabBytes) * SLAB_PAGE;
    if (this.#socketPinned + bytes > this.#pinCap) return false;
    this.#socketPinned += bytes;
    return true;
  }

  unpinForSocket(work: StripeWork): void {
    this.#socketPinned -= SlabAllocator.pagesFor(work.slabBytes) * SLAB_PAGE;
    this.releaseSlab(work);
  }

  /** Slab bytes held by replies their sockets have not taken yet. */
  get socketPinned(): number {
    return this.#socketPinned;
  }

  /** Tell the stripe whether busy-polling for the next request is worth it (see SPIN_HINT). */
  setSpinHint(on: boolean): void {
    const v = on ? 1 : 0;
    if (this.#ring[SPIN_HINT] !== v) Atomics.store(this.#ring, SPIN_HINT, v);
  }

  /** Wake the stripe if it sleeps; called once per event-loop turn, not per piece. */
  ringBell(): void {
    if (!this.#needBell) return;
    this.#needBell = false;
    if (Atomics.load(this.#ring, WORKER_SLEEPING) !== 0) Atomics.notify(this.#ring, REQ_HEAD, 1);
  }

  /** Take every published completion; returns how many. */
  drainCompletions(): number {
    const r = this.#ring;
    const head = Atomics.load(r, CPL_HEAD);
    let n = 0;
    while (this.#cplTail !== head) {
      const base = cplSlotBase(this.capacity, this.#cplTail);
      const id = r[base + C_ID]!;
      const errno = r[base + C_ERRNO]!;
      const result = r[base + C_RESULT]!;
      this.#cplTail = (this.#cplTail + 1) | 0;
      const work = this.#pending[id];
      assert.ok(work, `completion for an idle ring id ${id} on stripe ${this.id}`);
      this.#pending[id] = null;
      this.#freeIds.push(id);
      this.#inflight--;
      n++;
      work.onDone(work, errno, result);
    }
    if (n > 0) {
      Atomics.store(r, CPL_TAIL, this.#cplTail);
      this.#pump();
    }
    return n;
  }

  setDown(down: boolean): void {
    this.#down = down;
    if (!down) this.#pump();
  }

  releaseSlab(work: StripeWork): void {
    if (work.slabBytes > 0 && work.ring === this) {
      this.#alloc.free(work.slabOff, work.slabBytes);
      work.slabBytes = 0;
      this.#pump();
    }
  }

  #pump(): void {
    while (this.#waitHead < this.#waiting.length) {
      const next = this.#waiting[this.#waitHead]!;
      if (!this.#issue(next)) break;
      this.#waiting[this.#waitHead++] = undefined as unknown as StripeWork;
    }
    if (this.#waitHead === this.#waiting.length) {
      this.#waiting = [];
      this.#waitHead = 0;
    } else if (this.#waitHead > 1024 && this.#waitHead * 2 > this.#waiting.length) {
      this.#waiting = this.#waiting.slice(this.#waitHead);
      this.#waitHead = 0;
    }
  }

  /**
   * The stripe thread died: everything it held is lost. Fail it all (the client sees EIO for
   * those requests) and reset the ring so a respawned thread starts clean.
   */
  failAll(errno: number): void {
    const lost: StripeWork[] = [];
    for (let id = 0; id < this.capacity; id++) {
      const w = this.#pending[id];
      if (w) {
        lost.push(w);
        this.#pending[id] = null;
      }
    }
    this.#freeIds.length = 0;
    for (let i = this.capacity - 1; i >= 0; i--) this.#freeIds.push(i);
    this.#inflight = 0;
    this.counters.set('queue_depth', 0);
    const r = this.#ring;
    this.#cplTail = Atomics.load(r, CPL_HEAD);
    Atomics.store(r, CPL_TAIL, this.#cplTail);
    for (const w of lost) w.onDone(w, errno, 0);
    this.#pump();
  }
}
