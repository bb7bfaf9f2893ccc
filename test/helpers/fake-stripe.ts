// The stripe side of one StripeRing, played by the test itself: takes the published request
// slots, serves READ/WRITE against an in-memory volume through the slab, and publishes
// completions when told to. Lets the coordinator's slab and reply logic be driven one step at a
// time, without a thread or an origin.

import {
  REQ_HEAD, REQ_TAIL, CPL_HEAD, R_OP, R_ID, R_OFF_LO, R_OFF_HI, R_LEN, R_SLAB_OFF, R_SLAB_LEN,
  C_ID, C_ERRNO, C_RESULT, reqSlotBase, cplSlotBase, StripeOp,
} from '../../src/ring/layout.js';
import type { StripeRing } from '../../src/coordinator/stripe-ring.js';

export interface TakenRequest { id: number; op: number; offset: number; length: number; slabOff: number; slabLen: number }

export class FakeStripe {
  readonly #ring: StripeRing;
  readonly #words: Int32Array;
  readonly volume: Buffer;
  #reqTail = 0;
  #cplHead = 0;
  /** Taken from the ring, not completed yet (in the order taken). */
  readonly pending: TakenRequest[] = [];
  /** Every request taken, for assertions on how work was cut. */
  readonly log: TakenRequest[] = [];

  constructor(ring: StripeRing, volumeBytes: number) {
    this.#ring = ring;
    this.#words = new Int32Array(ring.ringSab);
    this.volume = Buffer.alloc(volumeBytes);
    ring.setDown(false);
  }

  /** Take every published request (the worker's REQ_TAIL side). */
  take(): number {
    const w = this.#words;
    const head = Atomics.load(w, REQ_HEAD);
    let n = 0;
    while (this.#reqTail !== head) {
      const b = reqSlotBase(this.#ring.capacity, this.#reqTail);
      const r: TakenRequest = {
        id: w[b + R_ID]!, op: w[b + R_OP]!, length: w[b + R_LEN]! >>> 0,
        offset: (w[b + R_OFF_HI]! >>> 0) * 0x1_0000_0000 + (w[b + R_OFF_LO]! >>> 0),
        slabOff: w[b + R_SLAB_OFF]! >>> 0, slabLen: w[b + R_SLAB_LEN]! >>> 0,
      };
      this.#reqTail = (this.#reqTail + 1) | 0;
      this.pending.push(r);
      this.log.push(r);
      n++;
    }
    Atomics.store(w, REQ_TAIL, this.#reqTail);
    return n;
  }

  /** Serve and complete pending request `index` (default: the oldest) with `errno`, then let the coordinator drain. */
  complete(index = 0, errno = 0): void {
    const [r] = this.pending.splice(index, 1);
    if (!r) throw new RangeError('nothing pending');
    const slab = this.#ring.slab;
    if (errno === 0 && r.op === StripeOp.READ) slab.set(this.volume.subarray(r.offset, r.offset + r.length), r.slabOff);
    if (errno === 0 && r.op === StripeOp.WRITE) this.volume.set(slab.subarray(r.slabOff, r.slabOff + r.length), r.offset);
    const w = this.#words;
    const b = cplSlotBase(this.#ring.capacity, this.#cplHead);
    w[b + C_ID] = r.id;
    w[b + C_ERRNO] = errno;
    w[b + C_RESULT] = 0;
    this.#cplHead = (this.#cplHead + 1) | 0;
    Atomics.store(w, CPL_HEAD, this.#cplHead);
    this.#ring.drainCompletions();
  }

  /** Take and complete everything, repeatedly, until the ring has nothing more to give. */
  runAll(): void {
    for (this.take(); this.pending.length > 0; this.take()) {
      while (this.pending.length > 0) this.complete();
    }
  }
}
