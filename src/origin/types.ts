// The one interface every origin implements. Origins live inside stripe worker threads
// (each stripe opens its own), so calls complete through a callback, usually later from the
// event loop (a local file through libuv's thread pool, a remote NBD export from its socket);
// a request refused before any I/O may be answered before the call returns.

/** 0 on success, otherwise a positive errno (src/util/errno.ts: EIO, ENOSPC, EROFS, ENOTSUP...). */
export type Done = (errno: number) => void;

export interface Extent {
  /** Bytes; always > 0. */
  length: number;
  /** base:allocation flags (BlockState.HOLE | BlockState.ZERO). */
  flags: number;
}

export interface ZeroFlags {
  /** Space must stay allocated: write zeros, do not punch. */
  noHole: boolean;
  /** Fail at once with ENOTSUP unless zeroing is cheap. */
  fastZero: boolean;
  fua: boolean;
}

export interface Origin {
  /** Bytes. */
  readonly size: number;
  /** Human-readable form for logs and status ("file:/path", "nbd+unix:///x?socket=..."). */
  readonly description: string;
  readonly readOnly: boolean;
  /** True when every operation finishes before the call returns (the stripe can then process synchronously). */
  readonly synchronous: boolean;
  /**
   * Requests started and not answered yet, for an origin that completes through the event loop
   * and counts them (the file origin): the stripe lets the loop in between batches while there
   * are some, and may block its thread when there are none.
   */
  readonly inflight?: number;
  /** Whether zeroing is cheaper than writing zeros (fallocate, or a remote that advertises FAST_ZERO). */
  readonly canFastZero: boolean;
  /**
   * Writes from buffers at addresses aligned to this many bytes (with offset and length aligned
   * alike) take the origin's fast path (file.ts directWrites); absent: alignment does not matter.
   */
  readonly writeAlign?: number;
  /** Writes that took that path since open (status: wb_origin_direct_writes). */
  readonly directWrites?: number;

  /** Fill dst (dst.length bytes) from offset off. */
  read(off: number, dst: Uint8Array, cb: Done): void;
  /** Durable on success with `fua`; otherwise only once a later flush succeeds. */
  write(off: number, src: Uint8Array, fua: boolean, cb: Done): void;
  /**
   * Make every write completed before this call durable; success means exactly that.
   *
   * A failure (any errno) means: writes completed since the last successful flush may be lost,
   * and a later flush may succeed without them (Linux reports a writeback error to one fsync and
   * may drop the pages; an NBD connection lost with unflushed writes takes them along). So the
   * caller must write all of them again before it trusts any later flush: retrying a failed flush
   * proves nothing. An origin reports such a loss once, to the next flush, also when it happened
   * outside one (a FUA write's sync failed; an NBD connection dropped and was re-established).
   */
  flush(cb: Done): void;
  trim(off: number, len: number, fua: boolean, cb: Done): void;
  zero(off: number, len: number, flags: ZeroFlags, cb: Done): void;
  /** Prefetch hint; must not change what reads return. */
  cache(off: number, len: number, cb: Done): void;
  /**
   * Allocation status of [off, off+len): at least one extent; extents may cover only a prefix
   * of the range (the NBD reply is allowed to be short), and never more than maxExtents.
   */
  blockStatus(off: number, len: number, maxExtents: number, cb: (errno: number, extents: Extent[]) => void): void;
  close(): Promise<void>;
}

/** How a stripe (or the coordinator's probe) is told to open the origin. Plain data: crosses threads. */
export type OriginSpec =
  /** queueDepth: operations in flight at once (default 32). */
  | {
    kind: 'file'; path: string; readOnly: boolean; direct?: boolean; queueDepth?: number;
    /**
     * Writes whose offset, length and memory are 4 KiB-aligned go through a second, O_DIRECT
     * descriptor (writeback's runs), the rest through the page cache; where O_DIRECT cannot be
     * opened (tmpfs) every write is buffered. See file.ts.
     */
    directWrites?: boolean;
  }
  | { kind: 'nbd'; uri: string; readOnly: boolean; timeoutMs: number; connections: number };
