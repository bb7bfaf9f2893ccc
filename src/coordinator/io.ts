// One NBD request in flight: the pieces it was split into and how it completes. Replies are
// built here; the session only writes them.
//
// No piece keeps slab space while it waits for another piece or for the socket (stripe-ring.ts
// relies on this to never deadlock). A READ piece is done with its slab as soon as it completes:
// - with structured replies (and no DF flag) it goes out at once as its own OFFSET_DATA chunk
//   (chunks may come in any order; the last one carries DONE);
// - a reply of one piece is handed to the session, which sends it straight from the slab while
//   the socket keeps up and copies it out otherwise (ReplySink.writeSlabReply);
// - otherwise (simple replies, DF) the piece is copied into the reply buffer, sent when whole.

import { Cmd, CmdFlag, BASE_ALLOCATION_ID, SIMPLE_REPLY_SIZE, type NbdErr } from '../nbd/constants.js';
import {
  writeSimpleReply, writeReadChunkHeader, encodeErrorChunk, encodeBlockStatusChunk, encodeSimpleReply, encodeNoneChunk,
  type NbdRequest,
} from '../nbd/transmission.js';
import type { StripeWork } from './stripe-ring.js';
import type { Extent } from '../origin/types.js';
import { errnoName } from '../util/errno.js';
import { copyBytes } from '../util/copy-bytes.js';

const READ_CHUNK_HEADER = 28;

export interface IoWork extends StripeWork {
  io: Io;
  /** Offset of this piece inside the request. */
  delta: number;
}

/** What a reply without data needs to know of its request. */
export interface StatusRequest {
  type: number;
  flags: number;
  cookieHi: number;
  cookieLo: number;
  structured: boolean;
}

export interface ReplySink {
  /** Write one whole reply, or one whole structured chunk (buffers contiguous on the wire). */
  writeReply(bufs: Buffer<ArrayBufferLike>[]): void;
  /**
   * Write the reply that carries no data, for an internal errno (0: success): the one place
   * the errno becomes an NBD error value (nbdError), as a simple reply or an ERROR chunk.
   */
  writeStatus(req: StatusRequest, errno: number, what: string): void;
  /**
   * Write `header` followed by the bytes of a completed piece in its slab, and release the
   * piece's slab: at once if the bytes are copied, once the socket took them if sent from it.
   */
  writeSlabReply(header: Buffer, work: IoWork): void;
  completed(io: Io): void;
}

export class Io {
  readonly type: number;
  readonly flags: number;
  readonly cookieHi: number;
  readonly cookieLo: number;
  readonly offset: number;
  readonly length: number;
  readonly structured: boolean;
  /** Flow-control bytes charged to the session for this request. */
  readonly charge: number;
  /** Pieces not completed yet. */
  remaining = 0;
  /** Pieces the request was cut into so far (the ring may cut one further, see StripeWork.split). */
  pieces = 0;
  errno = 0;
  extents: Extent[] | null = null;
  /** READ of one piece, done: its slab is sent by finish(). */
  #only: IoWork | null = null;
  /** READ assembled from several pieces (simple replies, DF): header then data. */
  #assembled: Buffer | null = null;
  readonly #sink: ReplySink;

  constructor(req: NbdRequest, structured: boolean, charge: number, sink: ReplySink) {
    this.type = req.type;
    this.flags = req.flags;
    this.cookieHi = req.cookieHi;
    this.cookieLo = req.cookieLo;
    this.offset = req.offset;
    this.length = req.length;
    this.structured = structured;
    this.charge = charge;
    this.#sink = sink;
  }

  /** Replies of several pieces go out chunk by chunk: structured replies without DF. */
  get #chunked(): boolean {
    return this.structured && (this.flags & CmdFlag.DF) === 0;
  }

  static onPieceDone(work: StripeWork, errno: number, result: number): void {
    const w = work as IoWork;
    const io = w.io;
    if (errno !== 0 && io.errno === 0) io.errno = errno;
    if (io.type === Cmd.READ && io.errno === 0) io.#readPieceDone(w);
    else {
      if (io.type === Cmd.BLOCK_STATUS && errno === 0) io.extents = readExtents(w, result);
      w.ring?.releaseSlab(w);
    }
    if (--io.remaining === 0) io.finish();
  }

  /** StripeWork.split for READ and WRITE pieces. */
  static splitPiece(work: StripeWork, bytes: number): StripeWork {
    const w = work as IoWork;
    if (w.slabBytes !== w.length || bytes <= 0 || bytes >= w.length) throw new RangeError(`cannot split a piece of ${w.length} at ${bytes}`);
    const head: IoWork = {
      op: w.op, flags: w.flags, offset: w.offset, length: bytes, slabBytes: bytes,
      payload: w.payload ? w.payload.subarray(0, bytes) : null,
      onDone: Io.onPieceDone, split: Io.splitPiece, slabOff: 0, ring: null, io: w.io, delta: w.delta,
    };
    w.offset += bytes;
    w.length -= bytes;
    w.slabBytes -= bytes;
    w.delta += bytes;
    if (w.payload) w.payload = w.payload.subarray(bytes);
    w.io.remaining++;
    w.io.pieces++;
    return head;
  }

  #readPieceDone(w: IoWork): void {
    const slab = w.ring!.slab;
    if (this.#chunked) {
      const hdr = Buffer.allocUnsafe(READ_CHUNK_HEADER);
      // No error can follow the last piece, so its chunk may be the final one.
      writeReadChunkHeader(hdr, 0, this.cookieHi, this.cookieLo, this.offset + w.delta, w.length, this.remaining === 1);
      this.#sink.writeSlabReply(hdr, w);
    } else if (this.pieces === 1) {
      this.#only = w;
    } else {
      const header = this.#headerSize();
      this.#assembled ??= Buffer.allocUnsafe(header + this.length);
      copyBytes(this.#assembled, header + w.delta, slab.subarray(w.slabOff, w.slabOff + w.length));
      w.ring!.releaseSlab(w);
    }
  }

  finish(): void {
    const sink = this.#sink;
    if (this.type === Cmd.READ) this.#finishRead(sink);
    else if (this.type === Cmd.BLOCK_STATUS && this.errno === 0) {
      sink.writeReply([encodeBlockStatusChunk(this.cookieHi, this.cookieLo, BASE_ALLOCATION_ID, this.#clampExtents())]);
    } else {
      sink.writeStatus(this, this.errno, 'request failed');
    }
    sink.completed(this);
  }

  #finishRead(sink: ReplySink): void {
    const only = this.#only;
    this.#only = null;
    if (this.errno !== 0) {
      if (only) only.ring!.releaseSlab(only);
      this.#assembled = null;
      // After chunks already sent this ERROR chunk (with DONE) makes the whole read failed.
      sink.writeStatus(this, this.errno, 'read failed');
    } else if (only) {
      const hdr = Buffer.allocUnsafe(this.#headerSize());
      this.#writeReadHeader(hdr);
      sink.writeSlabReply(hdr, only);
    } else if (this.#assembled) {
      const buf = this.#assembled;
      this.#assembled = null;
      this.#writeReadHeader(buf);
      sink.writeReply([buf]);
    }
    // Chunked: the last chunk, with DONE, went out with its piece.
  }

  #headerSize(): number {
    return readReplyHeaderSize(this.structured);
  }

  #writeReadHeader(buf: Buffer): void {
    writeReadReplyHeader(buf, this.structured, this.cookieHi, this.cookieLo, this.offset, this.length);
  }

  #clampExtents(): Extent[] {
    const ext = this.extents && this.extents.length > 0 ? this.extents : [{ length: this.length, flags: 0 }];
    if ((this.flags & CmdFlag.REQ_ONE) !== 0) {
      const first = ext[0]!;
      return [{ length: Math.min(first.length, this.length), flags: first.flags }];
    }
    return ext;
  }
}

function readExtents(w: IoWork, count: number): Extent[] {
  const view = new DataView(w.ring!.slabSab, w.slabOff, count * 8);
  const out: Extent[] = [];
  for (let i = 0; i < count; i++) {
    const length = view.getUint32(i * 8, true);
    if (length > 0) out.push({ length, flags: view.getUint32(i * 8 + 4, true) });
  }
  return out;
}

/**
 * The bytes of a reply without data: simple, except READ and BLOCK_STATUS with structured
 * replies. `error` is the wire value already mapped; `errno` only names the cause in the
 * ERROR chunk's message.
 */
export function statusReply(req: StatusRequest, error: NbdErr, errno: number, what: string): Buffer {
  if (req.structured && (req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS)) {
    if (error === 0) return encodeNoneChunk(req.cookieHi, req.cookieLo);
    return encodeErrorChunk(req.cookieHi, req.cookieLo, error, `${what}: ${errnoName(errno)}`);
  }
  return encodeSimpleReply(error, req.cookieHi, req.cookieLo);
}

/** Bytes before the data of a whole successful READ reply. */
export function readReplyHeaderSize(structured: boolean): number {
  return structured ? READ_CHUNK_HEADER : SIMPLE_REPLY_SIZE;
}

/** The header of a whole successful READ reply: simple, or one OFFSET_DATA chunk with DONE. */
export function writeReadReplyHeader(buf: Uint8Array, structured: boolean, cookieHi: number, cookieLo: number, offset: number, length: number): void {
  if (structured) writeReadChunkHeader(buf, 0, cookieHi, cookieLo, offset, length, true);
  else writeSimpleReply(buf, 0, 0, cookieHi, cookieLo);
}
