// Option haggling for one connection (fixed newstyle only). The codec turns bytes into
// options; this decides what each option means for our single export.

import {
  Opt, Rep, Info, ClientFlag, TxFlag,
  BASE_ALLOCATION, BASE_ALLOCATION_ID, MIN_BLOCK, PREFERRED_BLOCK, MAX_OPTIONS,
} from '../nbd/constants.js';
import { MAX_REQUEST_PAYLOAD } from './limits.js';
import {
  encodeOptionReply, encodeOptionError, encodeInfoExport, encodeInfoName, encodeInfoDescription,
  encodeInfoBlockSize, encodeServerEntry, encodeMetaContext, encodeExportNameReply,
  parseInfoRequest, parseMetaContextRequest,
} from '../nbd/handshake.js';

export interface ExportInfo {
  name: string;
  description: string;
  size: number;
  readOnly: boolean;
}

/** NBD STARTTLS policy (the cache's `tls` key). */
export type TlsPolicy = 'off' | 'on' | 'require';

/**
 * Result of one option: keep haggling, close the connection, start transmission, or acknowledge
 * STARTTLS and hand the socket to TLS (the caller sends the ACK: it must leave in plaintext,
 * before the upgrade, and nothing else may be read meanwhile).
 */
export type OptionOutcome =
  | { next: 'continue' }
  | { next: 'close'; reason: string }
  | { next: 'starttls' }
  | { next: 'transmission'; structuredReplies: boolean; metaContext: boolean };

const MAX_META_QUERIES = 128;

export function transmissionFlags(exp: ExportInfo, structuredReplies: boolean): number {
  let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.CAN_MULTI_CONN | TxFlag.SEND_CACHE;
  if (exp.readOnly) flags |= TxFlag.READ_ONLY;
  else flags |= TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
  // DF only means something with structured replies (libnbd drops it otherwise).
  if (structuredReplies) flags |= TxFlag.SEND_DF;
  return flags;
}

export class Negotiation {
  readonly #exp: ExportInfo;
  readonly #send: (buf: Buffer) => void;
  readonly #tls: TlsPolicy;
  /** STARTTLS has completed: the connection is encrypted. */
  #secure = false;
  #fixed = false;
  #noZeroes = false;
  #options = 0;
  #structured = false;
  /** base:allocation selected by SET_META_CONTEXT, and for which export name. */
  #metaSelected = false;

  constructor(exp: ExportInfo, send: (buf: Buffer) => void, opts: { tls?: TlsPolicy } = {}) {
    this.#exp = exp;
    this.#send = send;
    this.#tls = opts.tls ?? 'off';
  }

  get secure(): boolean {
    return this.#secure;
  }

  /**
   * The TLS handshake succeeded. Whatever was negotiated in plaintext is forgotten ([proto]
   * "NBD_OPT_STARTTLS": a man in the middle could have chosen it).
   */
  tlsStarted(): void {
    this.#secure = true;
    this.#structured = false;
    this.#metaSelected = false;
  }

  /** The 4 client-flag bytes. Unknown flags end the connection (proto "Client flags"). */
  clientFlags(flags: number): OptionOutcome {
    if ((flags & ~(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)) !== 0) {
      return { next: 'close', reason: `unknown client flags 0x${flags.toString(16)}` };
    }
    this.#fixed = (flags & ClientFlag.C_FIXED_NEWSTYLE) !== 0;
    this.#noZeroes = (flags & ClientFlag.C_NO_ZEROES) !== 0;
    return { next: 'continue' };
  }

  #isOurs(name: string): boolean {
    return name === '' || name === this.#exp.name;
  }

  #error(option: number, rep: number, message: string): OptionOutcome {
    this.#send(encodeOptionError(option, rep, message));
    return { next: 'continue' };
  }

  option(option: number, data: Buffer): OptionOutcome {
    if (++this.#options > MAX_OPTIONS) return { next: 'close', reason: 'too many options' };
    const tlsRequired = this.#tls === 'require' && !this.#secure;
    if (option === Opt.EXPORT_NAME) {
      // EXPORT_NAME has no error reply: under required TLS the only refusal is to hang up.
      if (tlsRequired) return { next: 'close', reason: 'EXPORT_NAME before STARTTLS, and TLS is required' };
      return this.#exportName(data);
    }
    if (!this.#fixed) {
      // Only EXPORT_NAME is defined for a client that did not accept fixed newstyle.
      return this.#error(option, Rep.ERR_INVALID, 'client did not negotiate fixed newstyle');
    }
    if (tlsRequired && option !== Opt.STARTTLS && option !== Opt.ABORT) {
      return this.#error(option, Rep.ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
    }
    switch (option) {
      case Opt.ABORT:
        this.#send(encodeOptionReply(option, Rep.ACK));
        return { next: 'close', reason: 'client sent ABORT' };
      case Opt.LIST:
        if (data.length !== 0) return this.#error(option, Rep.ERR_INVALID, 'LIST takes no data');
        this.#send(encodeOptionReply(option, Rep.SERVER, encodeServerEntry(this.#exp.name, this.#exp.description || undefined)));
        this.#send(encodeOptionReply(option, Rep.ACK));
        return { next: 'continue' };
      case Opt.STARTTLS:
        if (data.length !== 0) return this.#error(option, Rep.ERR_INVALID, 'STARTTLS takes no data');
        if (this.#tls === 'off') return this.#error(option, Rep.ERR_POLICY, 'TLS is not configured on this server');
        if (this.#secure) return this.#error(option, Rep.ERR_INVALID, 'TLS is already active on this connection');
        return { next: 'starttls' };
      case Opt.INFO:
      case Opt.GO:
        return this.#infoGo(option, data);
      case Opt.STRUCTURED_REPLY:
        if (data.length !== 0) return this.#error(option, Rep.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.#structured = true;
        this.#send(encodeOptionReply(option, Rep.ACK));
        return { next: 'continue' };
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.#metaContext(option, data);
      default:
        return this.#error(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  #exportName(data: Buffer): OptionOutcome {
    const name = data.toString('utf8');
    if (data.includes(0) || Buffer.byteLength(name) !== data.length || !this.#isOurs(name)) {
      // EXPORT_NAME has no error reply: the only answer to an unknown export is to hang up.
      return { next: 'close', reason: `unknown export ${JSON.stringify(name)}` };
    }
    const flags = transmissionFlags(this.#exp, this.#structured);
    this.#send(encodeExportNameReply(this.#exp.size, flags, this.#noZeroes));
    return { next: 'transmission', structuredReplies: this.#structured, metaContext: this.#metaSelected };
  }

  #infoGo(option: number, data: Buffer): OptionOutcome {
    const req = parseInfoRequest(data);
    if ('error' in req) return this.#error(option, Rep.ERR_INVALID, req.error);
    if (!this.#isOurs(req.name)) return this.#error(option, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.name)}`);
    const flags = transmissionFlags(this.#exp, this.#structured);
    // NBD_INFO_EXPORT is mandatory even when not requested (qemu refuses a GO without it).
    this.#send(encodeOptionReply(option, Rep.INFO, encodeInfoExport(this.#exp.size, flags)));
    const asked = new Set(req.infos);
    if (asked.has(Info.NAME)) this.#send(encodeOptionReply(option, Rep.INFO, encodeInfoName(this.#exp.name)));
    if (asked.has(Info.DESCRIPTION) && this.#exp.description) {
      this.#send(encodeOptionReply(option, Rep.INFO, encodeInfoDescription(this.#exp.description)));
    }
    if (asked.has(Info.BLOCK_SIZE)) {
      this.#send(encodeOptionReply(option, Rep.INFO, encodeInfoBlockSize(MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST_PAYLOAD)));
    }
    this.#send(encodeOptionReply(option, Rep.ACK));
    if (option === Opt.INFO) return { next: 'continue' };
    return { next: 'transmission', structuredReplies: this.#structured, metaContext: this.#metaSelected };
  }

  #metaContext(option: number, data: Buffer): OptionOutcome {
    const set = option === Opt.SET_META_CONTEXT;
    const req = parseMetaContextRequest(data);
    if (set) this.#metaSelected = false; // SET replaces earlier selections even when it fails
    if ('error' in req) return this.#error(option, Rep.ERR_INVALID, req.error);
    if (set && !this.#structured) return this.#error(option, Rep.ERR_INVALID, 'SET_META_CONTEXT needs structured replies first');
    if (!this.#isOurs(req.exportName)) return this.#error(option, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.exportName)}`);
    if (req.queries.length > MAX_META_QUERIES) return this.#error(option, Rep.ERR_TOO_BIG, 'too many meta context queries');
    let match: boolean;
    if (req.queries.length === 0) {
      match = !set; // LIST with no query lists everything; SET with none selects nothing
    } else {
      // Unknown namespaces and leaves are ignored, not errors; "base:" is a wildcard in LIST.
      match = req.queries.some((q) => q === BASE_ALLOCATION || (!set && q === 'base:'));
    }
    if (match) this.#send(encodeOptionReply(option, Rep.META_CONTEXT, encodeMetaContext(BASE_ALLOCATION_ID, BASE_ALLOCATION)));
    if (set) this.#metaSelected = match;
    this.#send(encodeOptionReply(option, Rep.ACK));
    return { next: 'continue' };
  }
}
