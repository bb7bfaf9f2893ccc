// Client side of the transmission phase: replies from the server. A simple reply (16 bytes) is
// followed by data only when it answers a READ without error, and nothing in the reply says
// how much: the parser asks the caller (by cookie) how many bytes follow, or where to put them.
// Structured chunks (20-byte header + length-framed payload) are returned whole.

import { SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, MAX_DRAINABLE_PAYLOAD, SIMPLE_REPLY_SIZE, STRUCTURED_HEADER_SIZE } from './constants.js';
import { ChunkQueue } from './chunk-queue.js';

export type ReplyEvent =
  | { kind: 'simple'; error: number; cookieHi: number; cookieLo: number; data: Uint8Array | null }
  | { kind: 'chunk'; flags: number; type: number; cookieHi: number; cookieLo: number; payload: Buffer }
  | { kind: 'fatal'; reason: string };

/**
 * Called for each error-free simple reply. Return the destination to fill (its whole length is
 * read into it), a byte count to read into a buffer handed back as `data` (0: no data), or a
 * negative number when the cookie is unknown (fatal: the stream can no longer be framed).
 */
export type ReadSink = (cookieHi: number, cookieLo: number) => Uint8Array | number;

const enum RepState { HEADER, FILL, FATAL }

export class ReplyParser {
  readonly #queue = new ChunkQueue();
  readonly #scratch = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  readonly #sink: ReadSink;
  readonly #maxChunk: number;
  #state = RepState.HEADER;
  #pending: ReplyEvent | null = null;
  #fill: Uint8Array | null = null;
  #filled = 0;
  #fatal: ReplyEvent | null = null;

  constructor(sink: ReadSink, opts: { maxChunkPayload?: number } = {}) {
    this.#sink = sink;
    this.#maxChunk = opts.maxChunkPayload ?? MAX_DRAINABLE_PAYLOAD + 8;
  }

  get buffered(): number {
    return this.#queue.length;
  }

  push(chunk: Buffer): void {
    this.#queue.push(chunk);
  }

  next(): ReplyEvent | null {
    const q = this.#queue;
    if (this.#state === RepState.FATAL) return this.#fatal;
    if (this.#state === RepState.FILL) {
      const dst = this.#fill!;
      this.#filled += q.copyInto(dst, this.#filled, dst.length - this.#filled);
      if (this.#filled < dst.length) return null;
      const ev = this.#pending!;
      this.#pending = null;
      this.#fill = null;
      this.#state = RepState.HEADER;
      return ev;
    }

    if (q.length < 4) return null;
    // Both headers start with the magic: peek at it, then wait for the whole header.
    const magic = q.peekU32();
    if (magic === SIMPLE_REPLY_MAGIC) {
      if (q.length < SIMPLE_REPLY_SIZE) return null;
      const h = q.take(SIMPLE_REPLY_SIZE, this.#scratch);
      const error = h.readUInt32BE(4);
      const cookieHi = h.readUInt32BE(8);
      const cookieLo = h.readUInt32BE(12);
      if (error !== 0) return { kind: 'simple', error, cookieHi, cookieLo, data: null };
      const where = this.#sink(cookieHi, cookieLo);
      if (typeof where === 'number') {
        if (where < 0) return this.#fail(`reply for unknown cookie ${cookieHi}:${cookieLo}`);
        if (where === 0) return { kind: 'simple', error, cookieHi, cookieLo, data: null };
        if (q.length >= where) return { kind: 'simple', error, cookieHi, cookieLo, data: q.take(where) };
        return this.#startFill({ kind: 'simple', error, cookieHi, cookieLo, data: null }, Buffer.allocUnsafe(where));
      }
      const ev: ReplyEvent = { kind: 'simple', error, cookieHi, cookieLo, data: where };
      if (where.length === 0) return ev;
      return this.#startFill(ev, where);
    }
    if (magic === STRUCTURED_REPLY_MAGIC) {
      if (q.length < STRUCTURED_HEADER_SIZE) return null;
      const h = q.take(STRUCTURED_HEADER_SIZE, this.#scratch);
      const len = h.readUInt32BE(16);
      if (len > this.#maxChunk) return this.#fail(`structured reply chunk of ${len} bytes is too long`);
      const ev: { kind: 'chunk'; flags: number; type: number; cookieHi: number; cookieLo: number; payload: Buffer } = { kind: 'chunk', flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookieHi: h.readUInt32BE(8), cookieLo: h.readUInt32BE(12), payload: EMPTY };
      if (len === 0) return ev;
      if (q.length >= len) {
        ev.payload = q.take(len);
        return ev;
      }
      ev.payload = Buffer.allocUnsafe(len);
      return this.#startFill(ev, ev.payload);
    }
    return this.#fail(`bad reply magic 0x${magic.toString(16)}`);
  }

  #startFill(ev: ReplyEvent, dst: Uint8Array): ReplyEvent | null {
    if (ev.kind === 'simple' && ev.data === null) ev.data = dst;
    this.#pending = ev;
    this.#fill = dst;
    this.#filled = 0;
    this.#state = RepState.FILL;
    return this.next();
  }

  #fail(reason: string): ReplyEvent {
    this.#state = RepState.FATAL;
    this.#fatal = { kind: 'fatal', reason };
    return this.#fatal;
  }
}

const EMPTY = Buffer.alloc(0);
