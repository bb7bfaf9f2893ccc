// The coordinator's view of its stripe workers: one piscina pool of exactly one thread per
// stripe (lifecycle and control plane), one SAB ring pair per stripe (data plane), and one
// shared doorbell the stripes ring after publishing completions.

import { Piscina } from 'piscina';
import type { Logger } from 'pino';
import { DOORBELL_WORDS, BELL_COUNT, BELL_POLLING, type StripeWorkerData, type StripeCacheData } from '../ring/layout.js';
import { StripeRing, type StripeWork } from './stripe-ring.js';
import type { OriginSpec } from '../origin/types.js';
import { Errno } from '../util/errno.js';
import { maxPieceFor } from './router.js';
import { PollBudget } from './poll-budget.js';

export interface StripeSetOptions {
  stripes: number;
  /** Ring slots per stripe (power of two). */
  capacity: number;
  slabBytes: number;
  origin: OriginSpec;
  spinNs: number;
  maxSpinners: number;
  /** How long the coordinator polls for completions itself when at most POLL_MAX_INFLIGHT pieces are out (0 = never). */
  pollNs: number;
  /** The longest such poll when completions have recently taken longer than pollNs (poll-budget.ts). */
  pollMaxNs: number;
  logLevel: string;
  log: Logger;
  /** Write-back mode: what each stripe needs to serve from the cache. */
  cacheData?: (stripe: number) => StripeCacheData;
  /** A stripe thread died (before it is restarted): the cache frees the locks it held. */
  onStripeDied?: (stripe: number) => void;
}

/** Polling only pays at low queue depth: beyond this, completions come in batches anyway. */
const POLL_MAX_INFLIGHT = 2;

const WORKER_URL = new URL('../../workers/stripe.js', import.meta.url);
const yieldMacrotask = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const RESTART_BACKOFF_MS = [100, 250, 500, 1000, 2000, 5000];

export class StripeSet {
  readonly rings: StripeRing[];
  /** Longest READ/WRITE piece (router.ts maxPieceFor): at most a quarter of a slab. */
  readonly maxPiece: number;
  readonly #doorbell: Int32Array;
  readonly #doorbellSab: SharedArrayBuffer;
  readonly #pools: Piscina[] = [];
  readonly #opts: StripeSetOptions;
  readonly #log: Logger;
  #bellScheduled = false;
  readonly #pollBudget: PollBudget;
  /** When the pieces now out were issued at low depth (0n: not at low depth, or already timed). */
  #lowDepthSince = 0n;
  #closed = false;
  #restarts = 0;
  #loopDone: Promise<void> | null = null;

  private constructor(opts: StripeSetOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#pollBudget = new PollBudget(opts.pollNs, opts.pollMaxNs);
    this.#doorbellSab = new SharedArrayBuffer(DOORBELL_WORDS * 4);
    this.#doorbell = new Int32Array(this.#doorbellSab);
    this.rings = [];
    this.maxPiece = maxPieceFor(opts.slabBytes);
    for (let i = 0; i < opts.stripes; i++) this.rings.push(new StripeRing(i, opts.capacity, opts.slabBytes));
  }

  static async start(opts: StripeSetOptions): Promise<StripeSet> {
    const set = new StripeSet(opts);
    set.#loopDone = set.#completionLoop();
    try {
      await Promise.all(set.rings.map((ring) => set.#startStripe(ring)));
    } catch (err) {
      await set.close();
      throw err;
    }
    return set;
  }

  get count(): number {
    return this.rings.length;
  }

  async #startStripe(ring: StripeRing): Promise<void> {
    const data: StripeWorkerData = {
      stripe: ring.id,
      stripes: this.rings.length,
      capacity: ring.capacity,
      ring: ring.ringSab,
      slab: ring.slabSab,
      doorbell: this.#doorbellSab,
      counters: ring.counterSab,
      origin: this.#opts.origin,
      spinNs: this.#opts.spinNs,
      maxSpinners: this.#opts.maxSpinners,
      logLevel: this.#opts.logLevel,
      cache: this.#opts.cacheData?.(ring.id),
    };
    const pool = new Piscina({
      filename: WORKER_URL.href,
      minThreads: 1,
      maxThreads: 1,
      idleTimeout: Infinity,
      // 'sync' would freeze the worker's timers between tasks; the ring loop needs them.
      atomics: 'disabled',
      concurrentTasksPerWorker: 4,
      workerData: data,
    });
    pool.on('error', (err: unknown) => this.#onStripeDied(ring, pool, err));
    this.#pools[ring.id] = pool;
    await pool.run({ op: 'start' });
    ring.setDown(false);
  }

  /** A stripe thread died outside a task: fail what it held and start a fresh thread on the same ring. */
  #onStripeDied(ring: StripeRing, pool: Piscina, err: unknown): void {
    if (this.#closed) return;
    this.#log.error({ err, stripe: ring.id }, 'stripe worker died; failing its in-flight requests and restarting it');
    ring.setDown(true);
    this.#opts.onStripeDied?.(ring.id);
    ring.failAll(Errno.EIO);
    const attempt = async (n: number): Promise<void> => {
      if (this.#closed) return;
      try {
        await pool.run({ op: 'start' });
        ring.setDown(false);
        this.#restarts++;
        this.#log.info({ stripe: ring.id }, 'stripe worker restarted');
      } catch (e) {
        const delay = RESTART_BACKOFF_MS[Math.min(n, RESTART_BACKOFF_MS.length - 1)]!;
        this.#log.error({ err: e, stripe: ring.id, retryInMs: delay }, 'stripe worker restart failed');
        setTimeout(() => void attempt(n + 1), delay).unref();
      }
    };
    void attempt(0);
  }

  submit(work: StripeWork, stripe: number): void {
    this.rings[stripe]!.submit(work);
    if (!this.#bellScheduled) {
      this.#bellScheduled = true;
      queueMicrotask(this.#ringBells);
    }
  }

  readonly #ringBells = (): void => {
    this.#bellScheduled = false;
    let issued = 0;
    for (const ring of this.rings) issued += ring.inflight;
    const lowDepth = issued <= POLL_MAX_INFLIGHT;
    for (const ring of this.rings) {
      ring.setSpinHint(lowDepth);
      ring.ringBell();
    }
    if (!lowDepth || issued === 0) {
      this.#lowDepthSince = 0n;
      return;
    }
    if (this.#lowDepthSince === 0n) this.#lowDepthSince = process.hrtime.bigint();
    const budget = this.#pollBudget.budgetNs;
    if (budget > 0) this.#pollCompletions(budget);
  };

  /**
   * At queue depth 1-2 the round trip is dominated by wake-ups; spinning here for about as long
   * as completions take saves the doorbell wake-up of this thread (the client is waiting for the
   * reply anyway).
   */
  #pollCompletions(budgetNs: number): void {
    const bell = this.#doorbell;
    Atomics.store(bell, BELL_POLLING, 1);
    const deadline = process.hrtime.bigint() + BigInt(Math.ceil(budgetNs));
    let got = 0;
    for (let i = 1; got === 0; i++) {
      for (const ring of this.rings) got += ring.drainCompletions();
      if ((i & 15) === 0 && process.hrtime.bigint() > deadline) break;
    }
    Atomics.store(bell, BELL_POLLING, 0);
    for (const ring of this.rings) got += ring.drainCompletions();
    if (got > 0) this.#timeLowDepth();
  }

  #timeLowDepth(): void {
    if (this.#lowDepthSince === 0n) return;
    this.#pollBudget.record(Number(process.hrtime.bigint() - this.#lowDepthSince));
    this.#lowDepthSince = 0n;
  }

  /** The recent low-depth completion time and the poll budget it gives (status). */
  get lowDepthPoll(): { averageUs: number; budgetUs: number } {
    const us = (ns: number): number => Math.round(ns / 100) / 10;
    return { averageUs: us(this.#pollBudget.averageNs), budgetUs: us(this.#pollBudget.budgetNs) };
  }

  async #completionLoop(): Promise<void> {
    const bell = this.#doorbell;
    let seen = Atomics.load(bell, BELL_COUNT);
    while (!this.#closed) {
      let got = 0;
      for (const ring of this.rings) got += ring.drainCompletions();
      if (got > 0) this.#timeLowDepth();
      const w = Atomics.waitAsync(bell, BELL_COUNT, seen);
      // More completions arrived while draining. Without a real yield this loop would never
      // let the event loop read sockets or flush the corked replies (a microtask is not enough).
      if (w.async) await w.value;
      else await yieldMacrotask();
      seen = Atomics.load(bell, BELL_COUNT);
    }
  }

  /** Release the cache in every stripe (pcached detach): they serve from the origin from then on. */
  async detachCache(): Promise<void> {
    await Promise.all(this.#pools.map((pool) => pool?.run({ op: 'detach' })));
  }

  get inflight(): number {
    let n = 0;
    for (const r of this.rings) n += r.inflight + r.waiting;
    return n;
  }

  /** Kill one stripe thread the way a bug would (tests of the respawn path; PCACHED_TEST_HOOKS=1 only). */
  async crashStripe(stripe: number): Promise<void> {
    const pool = this.#pools[stripe];
    if (!pool) throw new RangeError(`no stripe ${stripe}`);
    await pool.run({ op: 'crash' });
  }

  get restarts(): number {
    return this.#restarts;
  }

  /** Stop the stripe loops, close their origins, end the threads. In-flight work should be drained first. */
  async close(): Promise<void> {
    if (this.#closed) return;
    const stops = this.#pools.map((pool) => pool?.run({ op: 'stop' }).catch(() => undefined));
    await Promise.all(stops);
    this.#closed = true;
    Atomics.add(this.#doorbell, BELL_COUNT, 1);
    Atomics.notify(this.#doorbell, BELL_COUNT);
    await this.#loopDone;
    await Promise.all(this.#pools.map((pool) => pool?.destroy()));
  }
}
