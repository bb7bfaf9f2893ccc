// Server side of fixed-newstyle option haggling ([proto] "Newstyle negotiation", "Fixed newstyle
// negotiation", "Option types", "Option reply types"): the greeting, an incremental parser for
// the client's flags and options, and encoders for every option reply we send.

import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, HandshakeFlag, Info, MAX_OPTION_LENGTH, MAX_STRING,
  OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE,
} from './constants.js';
import { ChunkQueue } from './chunk-queue.js';
import { BufferBuilder } from './buffer-builder.js';
import { decodeString, putU16, putU32, putU64, utf8Bounded } from './wire.js';

const IHAVEOPT_HI = Number(IHAVEOPT >> 32n);
const IHAVEOPT_LO = Number(IHAVEOPT & 0xffffffffn);
export const GREETING_SIZE = 18;
/** EXPORT_NAME reply without NO_ZEROES: size, flags, then 124 zero bytes of padding. */
const EXPORT_NAME_PADDING = 124;

/** NBDMAGIC, IHAVEOPT, u16 handshake flags. We offer FIXED_NEWSTYLE and NO_ZEROES, nothing else. */
export function encodeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(GREETING_SIZE);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  return b;
}

export type OptionEvent =
  | { kind: 'clientFlags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  | { kind: 'fatal'; reason: string };

const enum OptState { CLIENT_FLAGS, HEADER, PAYLOAD, FATAL }

/**
 * Client → server bytes during haggling: first the u32 client flags, then options framed as
 * IHAVEOPT (u64), option (u32), length (u32), data. A wrong magic or an option longer than the
 * limit cannot be skipped safely, so it is fatal (the caller closes the connection); a fatal
 * event repeats on every later next().
 */
export class OptionParser {
  readonly #queue = new ChunkQueue();
  readonly #maxOptionLength: number;
  #state = OptState.CLIENT_FLAGS;
  #option = 0;
  #length = 0;
  #fatal: OptionEvent | null = null;

  constructor(opts: { maxOptionLength?: number } = {}) {
    this.#maxOptionLength = opts.maxOptionLength ?? MAX_OPTION_LENGTH;
  }

  push(chunk: Buffer): void {
    this.#queue.push(chunk);
  }

  next(): OptionEvent | null {
    const q = this.#queue;
    switch (this.#state) {
      case OptState.FATAL:
        return this.#fatal;
      case OptState.CLIENT_FLAGS: {
        if (q.length < 4) return null;
        this.#state = OptState.HEADER;
        return { kind: 'clientFlags', flags: q.take(4).readUInt32BE(0) };
      }
      case OptState.HEADER: {
        if (q.length < OPTION_HEADER_SIZE) return null;
        const h = q.take(OPTION_HEADER_SIZE);
        if (h.readUInt32BE(0) !== IHAVEOPT_HI || h.readUInt32BE(4) !== IHAVEOPT_LO) {
          return this.#fail(`bad option magic 0x${h.subarray(0, 8).toString('hex')}`);
        }
        this.#option = h.readUInt32BE(8);
        this.#length = h.readUInt32BE(12);
        if (this.#length > this.#maxOptionLength) {
          return this.#fail(`option ${this.#option} has ${this.#length} bytes of data, over the ${this.#maxOptionLength}-byte limit`);
        }
        this.#state = OptState.PAYLOAD;
        return this.next();
      }
      case OptState.PAYLOAD: {
        if (q.length < this.#length) return null;
        this.#state = OptState.HEADER;
        // A copy: the option data is small and may be kept by the caller (export names).
        const data = Buffer.from(q.take(this.#length));
        return { kind: 'option', option: this.#option, data };
      }
    }
  }

  /** Bytes received but not parsed: after GO/EXPORT_NAME, the first transmission-phase bytes. */
  takeRemainder(): Buffer {
    return this.#queue.takeAll();
  }

  #fail(reason: string): OptionEvent {
    this.#state = OptState.FATAL;
    this.#fatal = { kind: 'fatal', reason };
    return this.#fatal;
  }
}

/** Option reply header: magic (u64), option (u32), reply type (u32), length (u32), then data. */
export function encodeOptionReply(option: number, replyType: number, data?: Uint8Array): Buffer {
  const len = data === undefined ? 0 : data.length;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data !== undefined) b.set(data, OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** Error replies (bit 31 set) may carry a human-readable UTF-8 message as their data. */
export function encodeOptionError(option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, utf8Bounded(message, MAX_STRING));
}

/** NBD_INFO_EXPORT: u16 type 0, u64 size, u16 transmission flags (12 bytes). */
export function encodeInfoExport(size: number, txFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  putU16(b, 0, Info.EXPORT);
  putU64(b, 2, size);
  putU16(b, 10, txFlags);
  return b;
}

/** NBD_INFO_NAME: u16 type 1, then the name filling the rest (no length prefix). */
export function encodeInfoName(name: string): Buffer {
  return new BufferBuilder().u16(Info.NAME).bytes(utf8Bounded(name, MAX_STRING)).build();
}

/** NBD_INFO_DESCRIPTION: u16 type 2, then the text filling the rest. */
export function encodeInfoDescription(text: string): Buffer {
  return new BufferBuilder().u16(Info.DESCRIPTION).bytes(utf8Bounded(text, MAX_STRING)).build();
}

/** NBD_INFO_BLOCK_SIZE: u16 type 3, u32 minimum, u32 preferred, u32 maximum (14 bytes). */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  putU16(b, 0, Info.BLOCK_SIZE);
  putU32(b, 2, min);
  putU32(b, 6, preferred);
  putU32(b, 10, max);
  return b;
}

/** NBD_REP_SERVER: u32 name length, name, then an optional description filling the rest. */
export function encodeServerEntry(name: string, description?: string): Buffer {
  const n = utf8Bounded(name, MAX_STRING);
  const bb = new BufferBuilder().u32(n.length).bytes(n);
  if (description !== undefined) bb.bytes(utf8Bounded(description, MAX_STRING));
  return bb.build();
}

/** NBD_REP_META_CONTEXT: u32 context id, then the context name filling the rest. */
export function encodeMetaContext(id: number, name: string): Buffer {
  return new BufferBuilder().u32(id).bytes(utf8Bounded(name, MAX_STRING)).build();
}

/**
 * The EXPORT_NAME reply is not option-framed: u64 size, u16 transmission flags, then 124 zero
 * bytes unless both sides agreed on NO_ZEROES.
 */
export function encodeExportNameReply(size: number, txFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  putU64(b, 0, size);
  putU16(b, 8, txFlags);
  return b;
}

/** INFO/GO data: u32 name length, name, u16 number of info requests, that many u16 info types. */
export function parseInfoRequest(data: Buffer): { name: string; infos: number[] } | { error: string } {
  if (data.length < 6) return { error: `option data is ${data.length} bytes, shorter than the 6-byte minimum` };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return { error: `export name length ${nameLen} overruns the option data` };
  const name = decodeString(data.subarray(4, 4 + nameLen), 'export name');
  if (typeof name !== 'string') return name;
  const count = data.readUInt16BE(4 + nameLen);
  const rest = data.length - 6 - nameLen;
  if (rest !== count * 2) return { error: `${count} info requests need ${count * 2} bytes, option has ${rest}` };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + i * 2));
  return { name, infos };
}

/**
 * LIST/SET_META_CONTEXT data: u32 export name length, name, u32 number of queries, then each
 * query as u32 length + string. Every length must stay inside the option.
 */
export function parseMetaContextRequest(data: Buffer): { exportName: string; queries: string[] } | { error: string } {
  if (data.length < 8) return { error: `option data is ${data.length} bytes, shorter than the 8-byte minimum` };
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return { error: `export name length ${nameLen} overruns the option data` };
  const exportName = decodeString(data.subarray(4, 4 + nameLen), 'export name');
  if (typeof exportName !== 'string') return exportName;
  let pos = 4 + nameLen;
  const count = data.readUInt32BE(pos);
  pos += 4;
  // Each query needs at least its 4-byte length: reject absurd counts before looping.
  if (count > (data.length - pos) / 4) return { error: `${count} queries cannot fit in ${data.length - pos} bytes` };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - pos < 4) return { error: `query ${i} length overruns the option data` };
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (len > data.length - pos) return { error: `query ${i} length ${len} overruns the option data` };
    const q = decodeString(data.subarray(pos, pos + len), `query ${i}`);
    if (typeof q !== 'string') return q;
    queries.push(q);
    pos += len;
  }
  if (pos !== data.length) return { error: `${data.length - pos} trailing bytes after the last query` };
  return { exportName, queries };
}
