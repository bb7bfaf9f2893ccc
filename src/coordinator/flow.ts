// A daemon-wide cap on request bytes in flight (read buffers and write payloads), so many
// connections together cannot grow memory without bound; each session also has its own cap.

export class FlowBudget {
  readonly limit: number;
  #used = 0;
  #waiters: (() => void)[] = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  get over(): boolean {
    return this.#used > this.limit;
  }

  acquire(bytes: number): void {
    this.#used += bytes;
  }

  release(bytes: number): void {
    this.#used -= bytes;
    if (this.#used <= this.limit && this.#waiters.length > 0) {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const w of waiters) w();
    }
  }

  /** Run `resume` once the budget is back under its limit. */
  wait(resume: () => void): void {
    this.#waiters.push(resume);
  }
}
