// Builds a frame field by field (big-endian), for the handshake encoders and for tests that
// write golden frames. Not for the transmission hot path: those writers fill fixed offsets.

import { putU16, putU32, putU64 } from './wire.js';

export class BufferBuilder {
  #buf: Buffer;
  #len = 0;

  constructor(initial = 64) {
    this.#buf = Buffer.allocUnsafe(initial);
  }

  get length(): number {
    return this.#len;
  }

  u8(v: number): this {
    this.#reserve(1)[this.#len++] = v;
    return this;
  }

  u16(v: number): this {
    putU16(this.#reserve(2), this.#len, v);
    this.#len += 2;
    return this;
  }

  u32(v: number): this {
    putU32(this.#reserve(4), this.#len, v);
    this.#len += 4;
    return this;
  }

  /** u64 from a number (exact up to 2^53) or a bigint. */
  u64(v: number | bigint): this {
    const buf = this.#reserve(8);
    if (typeof v === 'bigint') buf.writeBigUInt64BE(v, this.#len);
    else putU64(buf, this.#len, v);
    this.#len += 8;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.#reserve(b.length).set(b, this.#len);
    this.#len += b.length;
    return this;
  }

  /** UTF-8 bytes, no length prefix. */
  string(s: string): this {
    return this.bytes(Buffer.from(s, 'utf8'));
  }

  /** u32 byte length, then the UTF-8 bytes. */
  lengthString(s: string): this {
    const b = Buffer.from(s, 'utf8');
    return this.u32(b.length).bytes(b);
  }

  zeros(n: number): this {
    this.#reserve(n).fill(0, this.#len, this.#len + n);
    this.#len += n;
    return this;
  }

  /** The bytes written so far (a copy sized exactly). */
  build(): Buffer {
    return Buffer.from(this.#buf.subarray(0, this.#len));
  }

  #reserve(n: number): Buffer {
    if (this.#len + n > this.#buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#len + n));
      this.#buf.copy(grown, 0, 0, this.#len);
      this.#buf = grown;
    }
    return this.#buf;
  }
}
