// A daemon-wide cap on request bytes held (WRITE payloads, READ reply data), so many connections
// together cannot grow memory without bound; each session also has its own cap (limits.ts).
// Bytes are charged before their buffer exists, and a request that does not fit waits (its
// session stops reading) rather than allocating.
//
// Payloads still arriving may hold at most half of the budget. Their release depends on a client
// that may trickle or stall, while every other charge is released by the stripes on their own;
// so clients that send slowly can never take the budget that everyone else needs.

export class FlowBudget {
  readonly limit: number;
  #used = 0;
  #receiving = 0;
  #waiters: (() => void)[] = [];
  #receivingWaiters: (() => void)[] = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  /** The part of `used` charged for payloads still arriving from their clients. */
  get receiving(): number {
    return this.#receiving;
  }

  /**
   * Charge `bytes` if they fit (`receiving`: for a payload still to arrive). A charge larger than
   * the budget (or than its receiving half) fits only when nothing else holds it, so no request
   * is refused for ever.
   */
  tryAcquire(bytes: number, receiving = false): boolean {
    if (this.#used > 0 && this.#used + bytes > this.limit) return false;
    if (receiving) {
      if (this.#receiving > 0 && this.#receiving + bytes > this.limit / 2) return false;
      this.#receiving += bytes;
    }
    this.#used += bytes;
    return true;
  }

  /** A receiving charge's payload has arrived: it is ordinary request data from now on. */
  received(bytes: number): void {
    this.#receiving -= bytes;
    this.#wake();
  }

  release(bytes: number, receiving = false): void {
    this.#used -= bytes;
    if (receiving) this.#receiving -= bytes;
    this.#wake();
  }

  /** Run `resume` once there is room again (for a receiving charge: room in that half); the caller then tries again. */
  wait(resume: () => void, receiving = false): void {
    (receiving ? this.#receivingWaiters : this.#waiters).push(resume);
  }

  /**
   * Waiters are woken with a quarter of the budget (of its receiving half) free, not on every
   * release: a woken request then fits unless others took the room first, and a session that
   * waits does not retry once per I/O of everyone else.
   */
  #wake(): void {
    if (this.#used > (this.limit * 3) / 4) return;
    const all = this.#waiters;
    if (all.length > 0) this.#waiters = [];
    let recv: (() => void)[] = [];
    if (this.#receivingWaiters.length > 0 && this.#receiving <= (this.limit * 3) / 8) {
      recv = this.#receivingWaiters;
      this.#receivingWaiters = [];
    }
    for (const w of all) w();
    for (const w of recv) w();
  }
}
