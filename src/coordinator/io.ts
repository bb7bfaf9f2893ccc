// One NBD request in flight: the pieces it was split into and how it completes. Replies are
// built here; the session only writes them.

import { Cmd, CmdFlag, NbdErr, BASE_ALLOCATION_ID, SIMPLE_REPLY_SIZE } from '../nbd/constants.js';
import {
  writeSimpleReply, writeReadChunkHeader, encodeErrorChunk, encodeBlockStatusChunk, encodeSimpleReply, encodeNoneChunk,
  type NbdRequest,
} from '../nbd/transmission.js';
import type { StripeWork } from './stripe-ring.js';
import type { Extent } from '../origin/types.js';

/**
 * Replies that fit Node's shared buffer pool are copied into one pooled buffer; anything larger
 * is sent straight from the slab (a 4 KiB+ allocation costs more than the whole write path).
 */
export const COPY_REPLY_LIMIT = 4095;
const READ_CHUNK_HEADER = 28;

export interface IoWork extends StripeWork {
  io: Io;
  /** Offset of this piece inside the request. */
  delta: number;
}

export interface ReplySink {
  /** Write one whole reply (one or more buffers, contiguous on the wire); `done` runs once the bytes left or the socket died. */
  writeReply(bufs: Buffer<ArrayBufferLike>[], done?: () => void): void;
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
  readonly works: IoWork[] = [];
  remaining = 0;
  errno = 0;
  extents: Extent[] | null = null;
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

  static onPieceDone(work: StripeWork, errno: number, result: number): void {
    const w = work as IoWork;
    const io = w.io;
    if (errno !== 0 && io.errno === 0) io.errno = errno;
    if (io.type === Cmd.BLOCK_STATUS && errno === 0) io.extents = readExtents(w, result);
    // A READ keeps its slab until the reply is out; everything else frees at once.
    if (io.type !== Cmd.READ || errno !== 0) w.ring?.releaseSlab(w);
    if (--io.remaining === 0) io.finish();
  }

  finish(): void {
    const sink = this.#sink;
    if (this.type === Cmd.READ) {
      if (this.errno === 0) this.#sendRead(sink);
      else {
        this.#releaseAll();
        sink.writeReply([errorReply(this, this.errno, 'read failed')]);
      }
    } else if (this.type === Cmd.BLOCK_STATUS && this.errno === 0) {
      sink.writeReply([encodeBlockStatusChunk(this.cookieHi, this.cookieLo, BASE_ALLOCATION_ID, this.#clampExtents())]);
    } else {
      sink.writeReply([errorReply(this, this.errno, 'request failed')]);
    }
    sink.completed(this);
  }

  #releaseAll(): void {
    for (const w of this.works) w.ring?.releaseSlab(w);
  }

  #sendRead(sink: ReplySink): void {
    const header = this.structured ? READ_CHUNK_HEADER : SIMPLE_REPLY_SIZE;
    if (header + this.length <= COPY_REPLY_LIMIT) {
      const buf = Buffer.allocUnsafe(header + this.length);
      this.#writeReadHeader(buf);
      for (const w of this.works) {
        buf.set(w.ring!.slab.subarray(w.slabOff, w.slabOff + w.length), header + w.delta);
        w.ring!.releaseSlab(w);
      }
      sink.writeReply([buf]);
      return;
    }
    const hdr = Buffer.allocUnsafe(header);
    this.#writeReadHeader(hdr);
    const bufs: Buffer<ArrayBufferLike>[] = [hdr];
    for (const w of this.works) bufs.push(Buffer.from(w.ring!.slabSab, w.slabOff, w.length));
    // The slab stays ours until the socket has taken the bytes (or died).
    sink.writeReply(bufs, () => this.#releaseAll());
  }

  #writeReadHeader(buf: Buffer): void {
    if (this.structured) writeReadChunkHeader(buf, 0, this.cookieHi, this.cookieLo, this.offset, this.length);
    else writeSimpleReply(buf, 0, 0, this.cookieHi, this.cookieLo);
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

const ERRNO_NAMES: Record<number, string> = {
  [NbdErr.EPERM]: 'EPERM', [NbdErr.EIO]: 'EIO', [NbdErr.ENOMEM]: 'ENOMEM', [NbdErr.EINVAL]: 'EINVAL',
  [NbdErr.ENOSPC]: 'ENOSPC', [NbdErr.EOVERFLOW]: 'EOVERFLOW', [NbdErr.ENOTSUP]: 'ENOTSUP', [NbdErr.ESHUTDOWN]: 'ESHUTDOWN',
};

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}

/** The reply for a request that carries no data: simple, except READ with structured replies. */
export function errorReply(
  req: { type: number; cookieHi: number; cookieLo: number; structured: boolean; length: number },
  errno: number,
  what: string,
): Buffer {
  if (req.structured && (req.type === Cmd.READ || req.type === Cmd.BLOCK_STATUS)) {
    if (errno === 0) return encodeNoneChunk(req.cookieHi, req.cookieLo);
    return encodeErrorChunk(req.cookieHi, req.cookieLo, errno, `${what}: ${errnoName(errno)}`);
  }
  return encodeSimpleReply(errno, req.cookieHi, req.cookieLo);
}
