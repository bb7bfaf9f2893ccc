// Client side of the protocol, for talking to a remote NBD export (the NBD origin) and for
// re-parsing what our server encoders produce in tests: option and request encoders, a parser
// for the server's handshake messages, a sans-IO handshake (GO with a BLOCK_SIZE request,
// EXPORT_NAME fallback on ERR_UNSUP), and a parser for replies.

import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, REQUEST_MAGIC,
  HandshakeFlag, ClientFlag, Opt, Rep, Info, TxFlag, MAX_PAYLOAD, MAX_DRAINABLE_PAYLOAD,
  OPTION_HEADER_SIZE, OPTION_REPLY_HEADER_SIZE, REQUEST_HEADER_SIZE,
} from './constants.js';
import { ChunkQueue } from './chunk-queue.js';
import { BufferBuilder } from './buffer-builder.js';
import { GREETING_SIZE } from './handshake.js';
import { decodeString, putU16, putU32, putU64, readU64 } from './wire.js';

const NBDMAGIC_HI = Number(NBDMAGIC >> 32n);
const NBDMAGIC_LO = Number(NBDMAGIC & 0xffffffffn);
const IHAVEOPT_HI = Number(IHAVEOPT >> 32n);
const IHAVEOPT_LO = Number(IHAVEOPT & 0xffffffffn);
const OPT_REPLY_HI = Number(OPTION_REPLY_MAGIC >> 32n);
const OPT_REPLY_LO = Number(OPTION_REPLY_MAGIC & 0xffffffffn);
/** No legitimate option reply comes close (strings are <= 4096 bytes). */
const MAX_OPTION_REPLY = 1024 * 1024;

// ---- encoders ----------------------------------------------------------------------------

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** IHAVEOPT (u64), option (u32), length (u32), data. */
export function encodeOption(option: number, data?: Uint8Array): Buffer {
  const len = data === undefined ? 0 : data.length;
  const b = Buffer.allocUnsafe(OPTION_HEADER_SIZE + len);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(len, 12);
  if (data !== undefined) b.set(data, OPTION_HEADER_SIZE);
  return b;
}

/** INFO/GO data: u32 name length, name, u16 count, count × u16 info type. */
export function encodeInfoRequestData(exportName: string, infos: number[]): Buffer {
  const bb = new BufferBuilder().lengthString(exportName).u16(infos.length);
  for (const i of infos) bb.u16(i);
  return bb.build();
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count × (u32 length, query). */
export function encodeMetaContextRequestData(exportName: string, queries: string[]): Buffer {
  const bb = new BufferBuilder().lengthString(exportName).u32(queries.length);
  for (const q of queries) bb.lengthString(q);
  return bb.build();
}

export function encodeGoOption(exportName: string, infos: number[]): Buffer {
  return encodeOption(Opt.GO, encodeInfoRequestData(exportName, infos));
}

/** EXPORT_NAME data is the whole name, no length prefix. */
export function encodeExportNameOption(exportName: string): Buffer {
  return encodeOption(Opt.EXPORT_NAME, Buffer.from(exportName, 'utf8'));
}

/** Request header: magic, flags (u16), type (u16), cookie (2 × u32), offset (u64), length (u32). */
export function writeRequestHeader(buf: Uint8Array, off: number, flags: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
  putU32(buf, off, REQUEST_MAGIC);
  putU16(buf, off + 4, flags);
  putU16(buf, off + 6, type);
  putU32(buf, off + 8, cookieHi);
  putU32(buf, off + 12, cookieLo);
  putU64(buf, off + 16, offset);
  putU32(buf, off + 24, length);
}

/** One request; a WRITE payload, when given, is appended. */
export function encodeRequest(flags: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number, payload?: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(REQUEST_HEADER_SIZE + (payload?.length ?? 0));
  writeRequestHeader(b, 0, flags, type, cookieHi, cookieLo, offset, length);
  if (payload !== undefined) b.set(payload, REQUEST_HEADER_SIZE);
  return b;
}

// ---- option reply payloads ---------------------------------------------------------------

export type InfoReply =
  | { info: Info.EXPORT; size: number; txFlags: number }
  | { info: Info.NAME; name: string }
  | { info: Info.DESCRIPTION; text: string }
  | { info: Info.BLOCK_SIZE; min: number; preferred: number; max: number }
  | { info: number; raw: Buffer };

/** NBD_REP_INFO data: u16 info type, then a type-specific body of fixed or filling length. */
export function parseInfoReply(data: Buffer): InfoReply | { error: string } {
  if (data.length < 2) return { error: 'NBD_REP_INFO shorter than its type' };
  const info = data.readUInt16BE(0);
  switch (info) {
    case Info.EXPORT:
      if (data.length !== 12) return { error: `NBD_INFO_EXPORT is ${data.length} bytes, not 12` };
      return { info, size: readU64(data, 2), txFlags: data.readUInt16BE(10) };
    case Info.NAME:
    case Info.DESCRIPTION: {
      const s = decodeString(data.subarray(2), info === Info.NAME ? 'export name' : 'description');
      if (typeof s !== 'string') return s;
      return info === Info.NAME ? { info, name: s } : { info, text: s };
    }
    case Info.BLOCK_SIZE:
      if (data.length !== 14) return { error: `NBD_INFO_BLOCK_SIZE is ${data.length} bytes, not 14` };
      return { info, min: data.readUInt32BE(2), preferred: data.readUInt32BE(6), max: data.readUInt32BE(10) };
    default:
      return { info, raw: data.subarray(2) };
  }
}

/** NBD_REP_SERVER data: u32 name length, name, description filling the rest. */
export function parseServerEntry(data: Buffer): { name: string; description: string } | { error: string } {
  if (data.length < 4) return { error: 'NBD_REP_SERVER shorter than its name length' };
  const len = data.readUInt32BE(0);
  if (len > data.length - 4) return { error: `name length ${len} overruns the reply` };
  const name = decodeString(data.subarray(4, 4 + len), 'export name');
  if (typeof name !== 'string') return name;
  const description = decodeString(data.subarray(4 + len), 'description');
  if (typeof description !== 'string') return description;
  return { name, description };
}

/** NBD_REP_META_CONTEXT data: u32 context id, name filling the rest. */
export function parseMetaContextReply(data: Buffer): { id: number; name: string } | { error: string } {
  if (data.length < 4) return { error: 'NBD_REP_META_CONTEXT shorter than its id' };
  const name = decodeString(data.subarray(4), 'context name');
  if (typeof name !== 'string') return name;
  return { id: data.readUInt32BE(0), name };
}

// ---- server handshake messages -----------------------------------------------------------

export type ServerHandshakeEvent =
  | { kind: 'greeting'; flags: number }
  | { kind: 'optionReply'; option: number; replyType: number; data: Buffer }
  | { kind: 'exportName'; size: number; txFlags: number }
  | { kind: 'fatal'; reason: string };

const enum HsState { GREETING, REPLY_HEADER, REPLY_DATA, EXPORT_NAME, FATAL }

/**
 * What the server sends during haggling: the 18-byte greeting, then option replies (magic u64,
 * option u32, type u32, length u32, data), or after EXPORT_NAME the unframed u64 size + u16
 * flags (+ 124 zero bytes without NO_ZEROES). Call expectExportNameReply() after sending
 * EXPORT_NAME.
 */
export class ServerHandshakeParser {
  readonly #queue = new ChunkQueue();
  #state = HsState.GREETING;
  #option = 0;
  #replyType = 0;
  #length = 0;
  #exportReplySize = 0;
  #afterGreeting = HsState.REPLY_HEADER;
  #fatal: ServerHandshakeEvent | null = null;

  push(chunk: Buffer): void {
    this.#queue.push(chunk);
  }

  /** The next message (after the greeting, if that is still to come) is the EXPORT_NAME reply. */
  expectExportNameReply(noZeroes: boolean): void {
    this.#exportReplySize = noZeroes ? 10 : 134;
    if (this.#state === HsState.GREETING) this.#afterGreeting = HsState.EXPORT_NAME;
    else if (this.#state !== HsState.FATAL) this.#state = HsState.EXPORT_NAME;
  }

  next(): ServerHandshakeEvent | null {
    const q = this.#queue;
    switch (this.#state) {
      case HsState.FATAL:
        return this.#fatal;
      case HsState.GREETING: {
        if (q.length < GREETING_SIZE) return null;
        const g = q.take(GREETING_SIZE);
        if (g.readUInt32BE(0) !== NBDMAGIC_HI || g.readUInt32BE(4) !== NBDMAGIC_LO) return this.#fail('not an NBD server (no NBDMAGIC)');
        if (g.readUInt32BE(8) !== IHAVEOPT_HI || g.readUInt32BE(12) !== IHAVEOPT_LO) return this.#fail('oldstyle NBD server (not supported)');
        this.#state = this.#afterGreeting;
        return { kind: 'greeting', flags: g.readUInt16BE(16) };
      }
      case HsState.REPLY_HEADER: {
        if (q.length < OPTION_REPLY_HEADER_SIZE) return null;
        const h = q.take(OPTION_REPLY_HEADER_SIZE);
        if (h.readUInt32BE(0) !== OPT_REPLY_HI || h.readUInt32BE(4) !== OPT_REPLY_LO) return this.#fail('bad option reply magic');
        this.#option = h.readUInt32BE(8);
        this.#replyType = h.readUInt32BE(12);
        this.#length = h.readUInt32BE(16);
        if (this.#length > MAX_OPTION_REPLY) return this.#fail(`option reply of ${this.#length} bytes is too long`);
        this.#state = HsState.REPLY_DATA;
        return this.next();
      }
      case HsState.REPLY_DATA: {
        if (q.length < this.#length) return null;
        this.#state = HsState.REPLY_HEADER;
        return { kind: 'optionReply', option: this.#option, replyType: this.#replyType, data: Buffer.from(q.take(this.#length)) };
      }
      case HsState.EXPORT_NAME: {
        if (q.length < this.#exportReplySize) return null;
        const r = q.take(this.#exportReplySize);
        this.#state = HsState.REPLY_HEADER;
        return { kind: 'exportName', size: readU64(r, 0), txFlags: r.readUInt16BE(8) };
      }
    }
  }

  /** Bytes after the last parsed message (the start of the transmission phase). */
  takeRemainder(): Buffer {
    return this.#queue.takeAll();
  }

  #fail(reason: string): ServerHandshakeEvent {
    this.#state = HsState.FATAL;
    this.#fatal = { kind: 'fatal', reason };
    return this.#fatal;
  }
}

// ---- sans-IO client handshake ------------------------------------------------------------

export interface NegotiatedExport {
  size: number;
  txFlags: number;
  /** From NBD_INFO_BLOCK_SIZE, else the protocol defaults (1, 4096, 32 MiB). */
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

export type ClientHandshakeStep =
  | { kind: 'send'; bytes: Buffer }
  | { kind: 'done'; export: NegotiatedExport; remainder: Buffer }
  | { kind: 'fatal'; reason: string };

const enum ChState { GREETING, GO, EXPORT_NAME, DONE }

/**
 * Drives one connection through haggling: greeting → client flags → GO(name, [BLOCK_SIZE]) →
 * INFO replies → ACK; on ERR_UNSUP (or a server without FIXED_NEWSTYLE) EXPORT_NAME instead.
 * Feed received bytes with push(); call next() until null and act on each step.
 */
export class ClientHandshake {
  readonly #parser = new ServerHandshakeParser();
  readonly #exportName: string;
  #state = ChState.GREETING;
  #noZeroes = false;
  #size = -1;
  #txFlags = 0;
  #minBlock = 1;
  #preferredBlock = 4096;
  #maxPayload = MAX_PAYLOAD;

  constructor(exportName: string) {
    this.#exportName = exportName;
  }

  push(chunk: Buffer): void {
    this.#parser.push(chunk);
  }

  next(): ClientHandshakeStep | null {
    if (this.#state === ChState.DONE) return null;
    const ev = this.#parser.next();
    if (ev === null) return null;
    if (ev.kind === 'fatal') return this.#fatal(ev.reason);
    switch (this.#state) {
      case ChState.GREETING: {
        if (ev.kind !== 'greeting') return this.#fatal('expected the greeting');
        const fixed = (ev.flags & HandshakeFlag.FIXED_NEWSTYLE) !== 0;
        this.#noZeroes = (ev.flags & HandshakeFlag.NO_ZEROES) !== 0;
        const flags = (fixed ? ClientFlag.C_FIXED_NEWSTYLE : 0) | (this.#noZeroes ? ClientFlag.C_NO_ZEROES : 0);
        // Without fixed newstyle only EXPORT_NAME is safe ([proto] "Newstyle negotiation").
        if (!fixed) return this.#sendExportName(encodeClientFlags(flags));
        this.#state = ChState.GO;
        return { kind: 'send', bytes: Buffer.concat([encodeClientFlags(flags), encodeGoOption(this.#exportName, [Info.BLOCK_SIZE])]) };
      }
      case ChState.GO:
        if (ev.kind !== 'optionReply' || ev.option !== Opt.GO) return this.#fatal('unexpected message in reply to NBD_OPT_GO');
        return this.#onGoReply(ev.replyType, ev.data);
      case ChState.EXPORT_NAME:
        if (ev.kind !== 'exportName') return this.#fatal('unexpected message in reply to NBD_OPT_EXPORT_NAME');
        this.#size = ev.size;
        this.#txFlags = ev.txFlags;
        return this.#done();
    }
    return null;
  }

  #onGoReply(replyType: number, data: Buffer): ClientHandshakeStep | null {
    switch (replyType) {
      case Rep.INFO: {
        const info = parseInfoReply(data);
        if ('error' in info) return this.#fatal(info.error);
        if (info.info === Info.EXPORT && 'size' in info) {
          this.#size = info.size;
          this.#txFlags = info.txFlags;
        } else if (info.info === Info.BLOCK_SIZE && 'max' in info) {
          this.#minBlock = info.min;
          this.#preferredBlock = info.preferred;
          // A server may advertise more than we would ever send in one request.
          this.#maxPayload = Math.min(Math.max(info.max, info.min, 1), MAX_DRAINABLE_PAYLOAD);
        }
        return this.next();
      }
      case Rep.ACK:
        if (this.#size < 0) return this.#fatal('server ended NBD_OPT_GO without NBD_INFO_EXPORT');
        return this.#done();
      case Rep.ERR_UNSUP:
        return this.#sendExportName(Buffer.alloc(0));
      default: {
        const msg = data.length > 0 ? `: ${data.toString('utf8')}` : '';
        return this.#fatal(`server refused export "${this.#exportName}" (${repName(replyType)})${msg}`);
      }
    }
  }

  #sendExportName(prefix: Buffer): ClientHandshakeStep {
    this.#state = ChState.EXPORT_NAME;
    this.#parser.expectExportNameReply(this.#noZeroes);
    return { kind: 'send', bytes: Buffer.concat([prefix, encodeExportNameOption(this.#exportName)]) };
  }

  #done(): ClientHandshakeStep {
    this.#state = ChState.DONE;
    if ((this.#txFlags & TxFlag.HAS_FLAGS) === 0) this.#txFlags = TxFlag.HAS_FLAGS;
    return {
      kind: 'done',
      export: { size: this.#size, txFlags: this.#txFlags, minBlock: this.#minBlock, preferredBlock: this.#preferredBlock, maxPayload: this.#maxPayload },
      remainder: this.#parser.takeRemainder(),
    };
  }

  #fatal(reason: string): ClientHandshakeStep {
    this.#state = ChState.DONE;
    return { kind: 'fatal', reason };
  }
}

export function repName(rep: number): string {
  switch (rep) {
    case Rep.ACK: return 'ACK';
    case Rep.SERVER: return 'SERVER';
    case Rep.INFO: return 'INFO';
    case Rep.META_CONTEXT: return 'META_CONTEXT';
    case Rep.ERR_UNSUP: return 'ERR_UNSUP';
    case Rep.ERR_POLICY: return 'ERR_POLICY';
    case Rep.ERR_INVALID: return 'ERR_INVALID';
    case Rep.ERR_PLATFORM: return 'ERR_PLATFORM';
    case Rep.ERR_TLS_REQD: return 'ERR_TLS_REQD';
    case Rep.ERR_UNKNOWN: return 'ERR_UNKNOWN';
    case Rep.ERR_SHUTDOWN: return 'ERR_SHUTDOWN';
    case Rep.ERR_BLOCK_SIZE_REQD: return 'ERR_BLOCK_SIZE_REQD';
    case Rep.ERR_TOO_BIG: return 'ERR_TOO_BIG';
    default: return `REP_0x${(rep >>> 0).toString(16)}`;
  }
}

export { ReplyParser } from './reply-parser.js';
export type { ReplyEvent, ReadSink } from './reply-parser.js';
