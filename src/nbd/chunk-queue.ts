// Bytes received from a stream, kept as the chunks they arrived in. Parsers read whole frames
// out of it without concatenating everything buffered: a frame that lies inside one chunk is
// returned as a view (no copy); only a frame that spans chunks is copied, once.

const EMPTY = Buffer.alloc(0);

export class ChunkQueue {
  #chunks: Buffer[] = [];
  /** Index of the first chunk still holding unread bytes. */
  #head = 0;
  /** Read position inside #chunks[#head]. */
  #off = 0;
  #length = 0;

  /** Unread bytes. */
  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** Bytes readable from the first chunk without crossing into the next one. */
  get contiguous(): number {
    return this.#length === 0 ? 0 : this.#chunks[this.#head].length - this.#off;
  }

  /** The next 4 bytes as a big-endian u32, not consumed (length must be >= 4). */
  peekU32(): number {
    const first = this.#chunks[this.#head];
    if (first.length - this.#off >= 4) return first.readUInt32BE(this.#off);
    let v = 0;
    let i = this.#head;
    let off = this.#off;
    for (let n = 0; n < 4; n++) {
      while (off >= this.#chunks[i].length) { i++; off = 0; }
      v = v * 256 + this.#chunks[i][off++];
    }
    return v;
  }

  /**
   * Consume the next n bytes (n <= length). A view when they lie in one chunk; otherwise they
   * are copied into `scratch` (which must hold n bytes) or into a new buffer of exactly n.
   */
  take(n: number, scratch?: Buffer): Buffer {
    if (n > this.#length) throw new RangeError(`take(${n}) with ${this.#length} buffered`);
    if (n === 0) return EMPTY;
    const first = this.#chunks[this.#head];
    if (n <= first.length - this.#off) {
      const view = first.subarray(this.#off, this.#off + n);
      this.#advance(n);
      return view;
    }
    const out = scratch !== undefined ? scratch.subarray(0, n) : Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Consume up to n bytes into dst[dstOff..]; returns how many were copied. */
  copyInto(dst: Uint8Array, dstOff: number, n: number): number {
    let copied = 0;
    while (copied < n && this.#length > 0) {
      const chunk = this.#chunks[this.#head];
      const step = Math.min(n - copied, chunk.length - this.#off);
      dst.set(chunk.subarray(this.#off, this.#off + step), dstOff + copied);
      copied += step;
      this.#advance(step);
    }
    return copied;
  }

  /** Consume and drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.#length > 0) {
      const step = Math.min(n - dropped, this.#chunks[this.#head].length - this.#off);
      dropped += step;
      this.#advance(step);
    }
    return dropped;
  }

  /** Consume everything buffered (one view when it is a single chunk). */
  takeAll(): Buffer {
    if (this.#length === 0) return Buffer.alloc(0);
    return this.take(this.#length);
  }

  #advance(n: number): void {
    this.#length -= n;
    this.#off += n;
    if (this.#off < this.#chunks[this.#head].length) return;
    this.#off = 0;
    // Drop the reference so a consumed chunk can be collected before the array is compacted.
    this.#chunks[this.#head] = EMPTY;
    this.#head++;
    if (this.#head === this.#chunks.length) {
      this.#chunks.length = 0;
      this.#head = 0;
    } else if (this.#head >= 64) {
      // Reclaim the array slots of consumed chunks now and then, not on every frame.
      this.#chunks.splice(0, this.#head);
      this.#head = 0;
    }
  }
}
