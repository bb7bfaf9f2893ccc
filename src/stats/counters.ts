// Counters live in SharedArrayBuffers as BigInt64 words bumped with Atomics.add, so the
// threads that count never stop for the ones that read (status, /metrics).

/** Counted by the coordinator (one block per cache). Gauges are marked in GAUGES. */
export const COORDINATOR_COUNTERS = [
  'reqs_read', 'reqs_write', 'reqs_flush', 'reqs_trim', 'reqs_cache', 'reqs_write_zeroes',
  'reqs_block_status', 'reqs_disc', 'reqs_unknown',
  'bytes_read', 'bytes_written', 'bytes_trimmed', 'bytes_zeroed',
  'errors', 'err_eperm', 'err_eio', 'err_enomem', 'err_einval', 'err_enospc', 'err_eoverflow',
  'err_enotsup', 'err_eshutdown',
  'connections_total', 'connections_open', 'connections_refused', 'protocol_errors',
  'inflight', 'split_pieces', 'queued_pieces', 'replies_copied', 'read_hits_inline',
  'tls_handshakes', 'tls_failures', 'connections_pooled',
] as const;

/** Counted by one stripe worker (one block per stripe). */
export const STRIPE_COUNTERS = [
  'origin_reads', 'origin_read_bytes', 'origin_writes', 'origin_write_bytes', 'origin_flushes',
  'origin_trims', 'origin_zeroes', 'origin_block_status', 'origin_errors',
  'queue_depth', 'batches', 'wakeups',
  'read_blocks', 'read_hits', 'write_blocks', 'write_bypass', 'write_blocked', 'cache_flushes',
  'discards', 'fills', 'fills_skipped', 'crc_errors', 'cache_errors', 'ksets',
  'write_hits_uncommitted', 'write_hits_committed', 'write_allocs', 'fills_deferred',
  'slab_splits',
] as const;

/** Counted by the writeback and GC workers of one cache (one block per cache). */
export const CACHE_WORKER_COUNTERS = [
  'wb_ksets', 'wb_keys', 'wb_bytes', 'wb_origin_syncs', 'wb_errors', 'wb_crc_skipped', 'wb_epochs', 'wb_retries',
  'gc_ksets', 'gc_segments_freed', 'gc_errors', 'init_bytes', 'init_segments_left', 'wb_inflight_blocks',
  'wb_origin_open_errors', 'wb_restarts', 'wb_origin_direct_writes',
] as const;

export const GAUGES: ReadonlySet<string> = new Set(['connections_open', 'inflight', 'queue_depth', 'queued_pieces', 'init_segments_left', 'wb_inflight_blocks']);

export type CoordinatorCounter = (typeof COORDINATOR_COUNTERS)[number];
export type StripeCounter = (typeof STRIPE_COUNTERS)[number];

export class CounterBlock<Name extends string> {
  readonly sab: SharedArrayBuffer;
  readonly #words: BigInt64Array;
  readonly #names: readonly Name[];
  readonly #index: Map<string, number>;

  constructor(names: readonly Name[], sab?: SharedArrayBuffer) {
    this.#names = names;
    this.sab = sab ?? new SharedArrayBuffer(names.length * 8);
    if (this.sab.byteLength < names.length * 8) throw new RangeError('counter block too small');
    this.#words = new BigInt64Array(this.sab, 0, names.length);
    this.#index = new Map(names.map((n, i) => [n, i]));
  }

  /** Index of a counter, for hot paths that add by index. */
  indexOf(name: Name): number {
    const i = this.#index.get(name);
    if (i === undefined) throw new RangeError(`unknown counter ${name}`);
    return i;
  }

  add(name: Name, n: number): void {
    Atomics.add(this.#words, this.indexOf(name), BigInt(n));
  }

  addAt(index: number, n: number): void {
    Atomics.add(this.#words, index, BigInt(n));
  }

  get(name: Name): number {
    return Number(Atomics.load(this.#words, this.indexOf(name)));
  }

  set(name: Name, n: number): void {
    Atomics.store(this.#words, this.indexOf(name), BigInt(n));
  }

  /** Reset everything except gauges (message clear_stats). */
  clear(): void {
    for (let i = 0; i < this.#names.length; i++) {
      if (!GAUGES.has(this.#names[i] as string)) Atomics.store(this.#words, i, 0n);
    }
  }

  snapshot(): Record<Name, number> {
    const out = {} as Record<Name, number>;
    for (let i = 0; i < this.#names.length; i++) out[this.#names[i] as Name] = Number(Atomics.load(this.#words, i));
    return out;
  }
}
