// Admission of asynchronous origin I/O: at most `depth` operations in flight, and the order a
// synchronous disk would give wherever it can be observed. An operation waits while it conflicts
// with an earlier one that has not finished (in flight or still waiting):
//  * a write (WRITE, TRIM, WRITE_ZEROES) and any other operation on an overlapping range: two
//    writes of one block must land in the order they were issued, and a read issued after a write
//    (or before it) must see the write (or not), as it would have with pread/pwrite in turn;
//  * a barrier (FLUSH) and every write issued before it, whatever its range: fdatasync covers
//    only writes that have completed, and a FLUSH must cover every write issued before it.
// Reads never wait for reads, and nothing waits for a barrier: a write issued after a FLUSH may
// run while its fdatasync does (the FLUSH promises nothing about it).
// Everything else starts at once, in any order, up to the depth.

export interface QueuedIo {
  /** Byte range; len 0 overlaps nothing. */
  readonly off: number;
  readonly len: number;
  readonly kind: 'read' | 'write' | 'barrier';
  /** Runs the operation; it must call `finished` exactly once, from a later turn or this one. */
  start(finished: () => void): void;
  /** The queue is closing before this operation started. */
  cancel(): void;
}

function conflicts(earlier: QueuedIo, later: QueuedIo): boolean {
  if (later.kind === 'barrier') return earlier.kind === 'write';
  if (earlier.kind === 'barrier') return false;
  if (earlier.kind === 'read' && later.kind === 'read') return false;
  return later.off < earlier.off + earlier.len && earlier.off < later.off + later.len;
}

export class OrderedIoQueue {
  readonly #depth: number;
  /** With its arrival number: only earlier operations can hold one back. */
  readonly #inflight = new Map<QueuedIo, number>();
  /** In arrival order, with their arrival numbers. */
  #waiting: { io: QueuedIo; seq: number }[] = [];
  #arrivals = 0;
  #idle: (() => void)[] = [];
  #closed = false;
  /** #admit is running: an op that finishes synchronously inside it asks for another pass instead. */
  #admitting = false;
  #again = false;

  constructor(depth: number) {
    if (!Number.isSafeInteger(depth) || depth < 1) throw new RangeError(`queue depth must be a positive integer, got ${depth}`);
    this.#depth = depth;
  }

  get depth(): number {
    return this.#depth;
  }

  /** Operations started and not yet finished. */
  get inflight(): number {
    return this.#inflight.size;
  }

  /** Operations admitted but not started (over the depth, or behind a conflict). */
  get waiting(): number {
    return this.#waiting.length;
  }

  submit(io: QueuedIo): void {
    if (this.#closed) {
      io.cancel();
      return;
    }
    const seq = this.#arrivals++;
    if (this.#waiting.length === 0 && this.#inflight.size < this.#depth && !this.#blockedByInflight(io, seq)) {
      this.#start(io, seq);
      return;
    }
    this.#waiting.push({ io, seq });
    // Behind waiting ops but with room: it goes now if it conflicts with none of them.
    if (this.#inflight.size < this.#depth) this.#admit();
  }

  /** Whether an operation issued now would have to wait for one already admitted (it may run at once, outside the queue, if not). */
  blocks(off: number, len: number, kind: QueuedIo['kind']): boolean {
    const io = { off, len, kind } as QueuedIo;
    for (const f of this.#inflight.keys()) if (conflicts(f, io)) return true;
    for (const w of this.#waiting) if (conflicts(w.io, io)) return true;
    return false;
  }

  /** Cancels what has not started; resolves once everything started has finished. */
  close(): Promise<void> {
    this.#closed = true;
    const cancelled = this.#waiting;
    this.#waiting = [];
    for (const { io } of cancelled) io.cancel();
    if (this.#inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #blockedByInflight(io: QueuedIo, seq: number): boolean {
    for (const [f, fseq] of this.#inflight) if (fseq < seq && conflicts(f, io)) return true;
    return false;
  }

  #start(io: QueuedIo, seq: number): void {
    this.#inflight.set(io, seq);
    let done = false;
    io.start(() => {
      if (done) throw new Error('origin I/O finished twice');
      done = true;
      this.#inflight.delete(io);
      this.#admit();
      if (this.#inflight.size === 0 && this.#waiting.length === 0) {
        const idle = this.#idle;
        this.#idle = [];
        for (const resolve of idle) resolve();
      }
    });
  }

  /** Starts, in arrival order, every waiting op that conflicts with nothing earlier, while there is room. */
  #admit(): void {
    if (this.#admitting) {
      this.#again = true;
      return;
    }
    this.#admitting = true;
    try {
      do {
        this.#again = false;
        this.#admitPass();
      } while (this.#again);
    } finally {
      this.#admitting = false;
    }
  }

  #admitPass(): void {
    for (let i = 0; i < this.#waiting.length && this.#inflight.size < this.#depth; ) {
      const { io, seq } = this.#waiting[i]!;
      let blocked = this.#blockedByInflight(io, seq);
      for (let j = 0; !blocked && j < i; j++) blocked = conflicts(this.#waiting[j]!.io, io);
      if (blocked) {
        i++;
        continue;
      }
      this.#waiting.splice(i, 1);
      this.#start(io, seq);
      // It may have finished at once and changed the list: look again from the front.
      if (this.#again) return;
    }
  }
}
