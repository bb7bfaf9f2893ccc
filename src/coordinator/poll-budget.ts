// How long the coordinator busy-polls for a completion at queue depth 1-2 (stripes.ts).
//
// A fixed 30 µs poll catches only what the stripe answers from memory. A cache-device write with
// O_DIRECT takes 80-200 µs on these VMs, so the poll ran out and every such request also paid the
// doorbell wake-up of the coordinator (25-70 µs) and, because the stripe then saw a long idle gap,
// the stripe's own wake-up for the next request. Polling for about as long as completions have
// recently taken removes both; a completion that usually takes far longer than the cap (a slow
// origin's miss) is not polled for beyond the floor, since the poll would only burn the core.

/** Weight of the newest sample in the moving average (1/8, as TCP's srtt). */
const ALPHA = 0.125;
/** Poll a little past the average, so the half of completions slower than it are still caught. */
const HEADROOM = 1.5;

export class PollBudget {
  #avgNs = 0;
  readonly #floorNs: number;
  readonly #capNs: number;

  /**
   * floorNs: always poll this long (the fixed poll of before; 0 = never poll).
   * capNs: never poll longer; an average beyond twice it polls only the floor.
   */
  constructor(floorNs: number, capNs: number) {
    this.#floorNs = Math.max(0, floorNs);
    this.#capNs = Math.max(this.#floorNs, capNs);
  }

  /** How long to poll for the next low-depth completion, in ns. */
  get budgetNs(): number {
    if (this.#floorNs === 0) return 0;
    // Beyond twice the cap the completions are of another kind (a slow origin's misses), not
    // polled for. Between the cap and twice it the cap is polled: a completion the poll misses
    // is timed with the doorbell's wake-up on top, and without that margin those inflated
    // samples would hold the average over the cap and the poll at the floor for good.
    if (this.#avgNs > 2 * this.#capNs) return this.#floorNs;
    return Math.min(this.#capNs, Math.max(this.#floorNs, this.#avgNs * HEADROOM));
  }

  get averageNs(): number {
    return this.#avgNs;
  }

  /** A low-depth completion took ns from submission (polled for or woken by the doorbell). */
  record(ns: number): void {
    if (!(ns >= 0)) return;
    // One outlier (the sync of a FLUSH, a client's last request before it hangs up) moves the
    // average by at most half the cap.
    const x = Math.min(ns, 4 * this.#capNs);
    this.#avgNs = this.#avgNs === 0 ? x : this.#avgNs + ALPHA * (x - this.#avgNs);
  }
}
