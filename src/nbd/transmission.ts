// Server side of the transmission phase ([proto] "Transmission", "Request message", "Simple reply
// message", "Structured reply chunk message"): the request parser and the reply writers. This
// is the hot path: no closures per request, no concatenation of everything buffered, and a
// WRITE payload inside one received chunk is returned as a view, not copied.

import {
  REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, Cmd, ReplyFlag, ChunkType,
  MAX_PAYLOAD, MAX_DRAINABLE_PAYLOAD, REQUEST_HEADER_SIZE, SIMPLE_REPLY_SIZE, STRUCTURED_HEADER_SIZE,
  EXTENDED_REQUEST_MAGIC,
} from './constants.js';
import { ChunkQueue } from './chunk-queue.js';
import { putU16, putU32, putU64, utf8Bounded } from './wire.js';

export interface NbdRequest {
  flags: number;
  type: number;
  cookieHi: number;
  cookieLo: number;
  /** u64 as a JS number: hi*2^32+lo; values >= 2^53 are approximate, still larger than any size. */
  offset: number;
  length: number;
  /** WRITE payload when it was accepted (see PayloadDecision); null otherwise. */
  payload: Buffer | null;
  /** A WRITE whose payload was refused: it was read and discarded, so the stream stays framed. */
  payloadDropped: boolean;
}

export type RequestEvent = { kind: 'request'; req: NbdRequest } | { kind: 'fatal'; reason: string };

/** What to do with the payload of a WRITE whose header has just been parsed. */
export const enum PayloadDecision {
  /** Buffer it: the request is returned with its payload once every byte has arrived. */
  ACCEPT,
  /** Read and discard it: the request is returned with payloadDropped set. */
  DROP,
  /** Not now (no memory for it yet): next() returns null and asks again on the next call. */
  WAIT,
}

/**
 * Called once a WRITE header is parsed, before any payload buffer exists, and again after each
 * WAIT. `arrived` is true when the whole payload is already received (no buffer is allocated for
 * it: the payload is a view of what came in, or one copy of it).
 */
export type AdmitPayload = (req: NbdRequest, arrived: boolean) => PayloadDecision;

const enum ReqState { HEADER, ADMIT, FILL, DRAIN, FATAL }

/** Error chunk messages are u16-length framed; keep them short anyway. */
const MAX_ERROR_MESSAGE = 4096;

/**
 * Compact 28-byte requests: magic (u32), flags (u16), type (u16), cookie (u64), offset (u64),
 * length (u32), then `length` payload bytes for WRITE only. A bad magic means the stream is
 * desynchronised and a WRITE payload over maxDrainable cannot be skipped cheaply: both are
 * fatal, and the fatal event repeats on every later next(). Below that, `admitPayload` decides
 * per WRITE whether its payload is buffered, dropped, or waited for (the default accepts up to
 * maxPayload and drops larger ones).
 */
export class RequestParser {
  readonly #queue = new ChunkQueue();
  readonly #scratch = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  readonly #maxPayload: number;
  readonly #maxDrainable: number;
  readonly #admit: AdmitPayload;
  #state = ReqState.HEADER;
  /** The WRITE waiting for admission, or whose payload is being filled or drained. */
  #pending: NbdRequest | null = null;
  /** Payload bytes still to fill or drain. */
  #remaining = 0;
  #fatal: RequestEvent | null = null;

  constructor(opts: { maxPayload?: number; maxDrainable?: number; admitPayload?: AdmitPayload } = {}) {
    this.#maxPayload = opts.maxPayload ?? MAX_PAYLOAD;
    this.#maxDrainable = opts.maxDrainable ?? MAX_DRAINABLE_PAYLOAD;
    const max = this.#maxPayload;
    this.#admit = opts.admitPayload ?? ((req) => (req.length <= max ? PayloadDecision.ACCEPT : PayloadDecision.DROP));
  }

  /**
   * Bytes received and not yet handed out as requests. Once next() has returned null this is
   * less than one header, or a WRITE is waiting for admission (its payload bytes count here): a
   * payload being filled or drained counts as consumed, so pausing the socket on this number can
   * never stall a request that still needs bytes.
   */
  get buffered(): number {
    return this.#queue.length;
  }

  push(chunk: Buffer): void {
    this.#queue.push(chunk);
  }

  next(): RequestEvent | null {
    const q = this.#queue;
    switch (this.#state) {
      case ReqState.HEADER:
        break;
      case ReqState.ADMIT:
        return this.#admitPending();
      case ReqState.FILL: {
        const payload = this.#pending!.payload!;
        this.#remaining -= q.copyInto(payload, payload.length - this.#remaining, this.#remaining);
        return this.#remaining === 0 ? this.#complete() : null;
      }
      case ReqState.DRAIN:
        this.#remaining -= q.skip(this.#remaining);
        return this.#remaining === 0 ? this.#complete() : null;
      case ReqState.FATAL:
        return this.#fatal;
    }

    if (q.length < REQUEST_HEADER_SIZE) return null;
    const h = q.take(REQUEST_HEADER_SIZE, this.#scratch);
    const magic = h.readUInt32BE(0);
    if (magic !== REQUEST_MAGIC) {
      const what = magic === EXTENDED_REQUEST_MAGIC ? 'extended-header request (not negotiated)' : `bad request magic 0x${magic.toString(16)}`;
      return this.#fail(what);
    }
    const req: NbdRequest = {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      cookieHi: h.readUInt32BE(8),
      cookieLo: h.readUInt32BE(12),
      offset: h.readUInt32BE(16) * 0x1_0000_0000 + h.readUInt32BE(20),
      length: h.readUInt32BE(24),
      payload: null,
      payloadDropped: false,
    };
    if (req.type !== Cmd.WRITE || req.length === 0) return { kind: 'request', req };
    if (req.length > this.#maxDrainable) {
      return this.#fail(`WRITE payload of ${req.length} bytes exceeds ${this.#maxDrainable}; cannot resynchronise`);
    }
    this.#pending = req;
    this.#state = ReqState.ADMIT;
    return this.#admitPending();
  }

  #admitPending(): RequestEvent | null {
    const req = this.#pending!;
    const q = this.#queue;
    const len = req.length;
    const arrived = q.length >= len;
    switch (this.#admit(req, arrived)) {
      case PayloadDecision.WAIT:
        return null;
      case PayloadDecision.DROP:
        req.payloadDropped = true;
        this.#remaining = len;
        this.#state = ReqState.DRAIN;
        return this.next();
      case PayloadDecision.ACCEPT:
        break;
    }
    if (arrived) {
      // A view when the payload sits in one chunk, else exactly one copy of `len` bytes.
      req.payload = q.take(len);
      return this.#complete();
    }
    const payload = Buffer.allocUnsafe(len);
    req.payload = payload;
    this.#remaining = len - q.copyInto(payload, 0, len);
    this.#state = ReqState.FILL;
    return null;
  }

  #complete(): RequestEvent {
    const req = this.#pending!;
    this.#pending = null;
    this.#state = ReqState.HEADER;
    return { kind: 'request', req };
  }

  #fail(reason: string): RequestEvent {
    this.#state = ReqState.FATAL;
    this.#fatal = { kind: 'fatal', reason };
    return this.#fatal;
  }
}

/** Simple reply: magic (u32), error (u32), cookie (u64) — 16 bytes, READ data follows on success. */
export function writeSimpleReply(buf: Uint8Array, off: number, error: number, cookieHi: number, cookieLo: number): void {
  putU32(buf, off, SIMPLE_REPLY_MAGIC);
  putU32(buf, off + 4, error);
  putU32(buf, off + 8, cookieHi);
  putU32(buf, off + 12, cookieLo);
}

export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  writeSimpleReply(b, 0, error, cookieHi, cookieLo);
  return b;
}

/** Structured chunk header: magic (u32), flags (u16), type (u16), cookie (u64), payload length (u32). */
function writeChunkHeader(buf: Uint8Array, off: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  putU32(buf, off, STRUCTURED_REPLY_MAGIC);
  putU16(buf, off + 4, flags);
  putU16(buf, off + 6, type);
  putU32(buf, off + 8, cookieHi);
  putU32(buf, off + 12, cookieLo);
  putU32(buf, off + 16, length);
}

/**
 * 28 bytes: an OFFSET_DATA chunk header (payload = u64 offset + data), then the u64 offset; the
 * data follows. `done`: the final chunk of its reply.
 */
export function writeReadChunkHeader(buf: Uint8Array, off: number, cookieHi: number, cookieLo: number, offset: number, dataLength: number, done = true): void {
  writeChunkHeader(buf, off, done ? ReplyFlag.DONE : 0, ChunkType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  putU64(buf, off + STRUCTURED_HEADER_SIZE, offset);
}

/** ERROR chunk with DONE: u32 error, u16 message length, message. */
export function encodeErrorChunk(cookieHi: number, cookieLo: number, error: number, message: string): Buffer {
  const msg = utf8Bounded(message, MAX_ERROR_MESSAGE);
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + 6 + msg.length);
  writeChunkHeader(b, 0, ReplyFlag.DONE, ChunkType.ERROR, cookieHi, cookieLo, 6 + msg.length);
  putU32(b, STRUCTURED_HEADER_SIZE, error);
  putU16(b, STRUCTURED_HEADER_SIZE + 4, msg.length);
  b.set(msg, STRUCTURED_HEADER_SIZE + 6);
  return b;
}

/** BLOCK_STATUS chunk with DONE: u32 context id, then (u32 length, u32 flags) per extent. */
export function encodeBlockStatusChunk(cookieHi: number, cookieLo: number, contextId: number, extents: { length: number; flags: number }[]): Buffer {
  const payloadLen = 4 + extents.length * 8;
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + payloadLen);
  writeChunkHeader(b, 0, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, cookieHi, cookieLo, payloadLen);
  putU32(b, STRUCTURED_HEADER_SIZE, contextId);
  let pos = STRUCTURED_HEADER_SIZE + 4;
  for (const e of extents) {
    putU32(b, pos, e.length);
    putU32(b, pos + 4, e.flags);
    pos += 8;
  }
  return b;
}

/** NONE chunk: no payload, must carry DONE. */
export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE);
  writeChunkHeader(b, 0, ReplyFlag.DONE, ChunkType.NONE, cookieHi, cookieLo, 0);
  return b;
}
