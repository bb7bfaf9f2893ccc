// An origin on a remote NBD export (nbd://, nbd+unix://), spoken with the client codec in
// src/nbd/client.ts over node:net. Simple replies only: no structured replies are negotiated,
// so every reply is a 16-byte header, plus exactly the request's length of data after a
// successful READ.
//
// Requests are pipelined over `connections` sockets and matched by cookie. A lost connection
// is re-established with exponential back-off and the requests that were in flight on it are
// sent again (READ, WRITE, TRIM, WRITE_ZEROES are idempotent); a request fails with EIO only
// after it has waited timeoutMs in total.
//
// Durability is per connection: a FLUSH reply covers the writes the server completed before it
// on that connection (with CAN_MULTI_CONN on all of them, but a server that lost a connection
// may also have lost what it held for it). So each connected lifetime of a socket (an
// Incarnation) counts the writes it acknowledged without FUA and how many of them a successful
// FLUSH on it covered. Origin.flush sends a FLUSH on every connection with uncovered writes and
// succeeds only if all of them do; writes acknowledged on a connection that was then lost (or
// whose FLUSH failed) are "at risk" and make the next flush fail once, so the caller writes them
// again (the rule in types.ts).

import type { NegotiatedExport } from '../nbd/client.js';
import { Cmd, CmdFlag, TxFlag } from '../nbd/constants.js';
import { Errno } from '../util/errno.js';
import { PcachedError } from '../util/errors.js';
import { parseNbdUri, formatNbdUri as describe, type NbdTarget } from '../nbd/uri.js';
import type { Done, Extent, Origin, OriginSpec, ZeroFlags } from './types.js';
import { BACKOFF_MAX_MS, BACKOFF_MIN_MS, Connection, Group, Incarnation, isEffect, Op, type ConnectionOwner } from './nbd-connection.js';

export { parseNbdUri };
export type { NbdTarget };

export type NbdOriginSpec = Extract<OriginSpec, { kind: 'nbd' }>;

/** What the origin logs: a pino Logger fits. */
export interface OriginLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** TRIM / WRITE_ZEROES / CACHE lengths are u32 on the wire; 1 GiB pieces stay aligned. */
const EFFECT_CHUNK = 1024 * 1024 * 1024;
/** Zeroing a remote without WRITE_ZEROES writes buffers of at most this size. */
const ZERO_CHUNK = 1024 * 1024;
let zeroBuffer: Buffer | null = null;

class NbdOrigin implements Origin, ConnectionOwner {
  readonly size: number;
  readonly description: string;
  readonly readOnly: boolean;
  readonly synchronous = false;
  readonly canFastZero: boolean;
  readonly #txFlags: number;
  readonly #maxPayload: number;
  readonly #timeoutMs: number;
  readonly #conns: Connection[];
  readonly #log: () => OriginLogger;
  /** Ops waiting for a connection, in submit order; requeued ones go to the front. */
  #queue: Op[] = [];
  #queueHead = 0;
  /** Every unfinished op in submit order = deadline order (one timeout for all). */
  readonly #outstanding = new Set<Op>();
  #deadlineTimer: NodeJS.Timeout | null = null;
  #nextCookie = 1;
  /** Non-zero once the origin can no longer serve (size changed): every request fails with it. */
  #broken = 0;
  /**
   * Acknowledged writes that may be gone: their connection was lost, or a FLUSH on it failed,
   * before a FLUSH covered them. The next Origin.flush fails (once) because of them.
   */
  #atRisk = { writes: 0, bytes: 0 };
  #closing: Promise<void> | null = null;

  constructor(spec: NbdOriginSpec, conns: Connection[], exp: NegotiatedExport, description: string, log: () => OriginLogger) {
    this.size = exp.size;
    this.description = description;
    this.#txFlags = exp.txFlags;
    this.readOnly = spec.readOnly || (exp.txFlags & TxFlag.READ_ONLY) !== 0;
    this.canFastZero = (exp.txFlags & TxFlag.SEND_WRITE_ZEROES) !== 0 && (exp.txFlags & TxFlag.SEND_FAST_ZERO) !== 0;
    this.#maxPayload = exp.maxPayload;
    this.#timeoutMs = spec.timeoutMs;
    this.#conns = conns;
    this.#log = log;
  }

  read(off: number, dst: Uint8Array, cb: Done): void {
    this.#submitSplit(Cmd.READ, 0, off, dst.length, dst, this.#maxPayload, cb, false);
  }

  write(off: number, src: Uint8Array, fua: boolean, cb: Done): void {
    if (this.readOnly) return this.#later(cb, Errno.EPERM);
    this.#submitSplit(Cmd.WRITE, 0, off, src.length, src, this.#maxPayload, cb, fua);
  }

  flush(cb: Done): void {
    // Without FLUSH the remote has no volatile cache to lose: a completed write is durable.
    if (!this.#has(TxFlag.SEND_FLUSH)) return this.#later(cb, 0);
    if (this.#closing !== null) return this.#later(cb, Errno.ESHUTDOWN);
    if (this.#broken !== 0) return this.#later(cb, this.#broken);
    if (this.#atRisk.writes > 0) {
      this.#reportAtRisk();
      return this.#later(cb, Errno.EIO);
    }
    const g = new Group(cb);
    g.originFlush = true;
    const uncovered = this.#conns.filter((c) => c.ready && c.incarnation.unflushed > 0);
    if (uncovered.length === 0) {
      // Nothing to cover; one FLUSH wherever it can go still asks the remote for durability.
      this.#enqueue(Cmd.FLUSH, 0, 0, 0, null, g);
      this.pump();
      return;
    }
    for (const c of uncovered) this.#flushOn(c.incarnation, g);
  }

  trim(off: number, len: number, fua: boolean, cb: Done): void {
    if (this.readOnly) return this.#later(cb, Errno.EPERM);
    // TRIM is a hint: a remote without it loses nothing by our skipping it.
    if (!this.#has(TxFlag.SEND_TRIM)) return this.#later(cb, 0);
    this.#submitSplit(Cmd.TRIM, 0, off, len, null, EFFECT_CHUNK, cb, fua);
  }

  zero(off: number, len: number, flags: ZeroFlags, cb: Done): void {
    if (this.readOnly) return this.#later(cb, Errno.EPERM);
    if (flags.fastZero && !this.canFastZero) return this.#later(cb, Errno.ENOTSUP);
    if (this.#has(TxFlag.SEND_WRITE_ZEROES)) {
      const wf = (flags.noHole ? CmdFlag.NO_HOLE : 0) | (flags.fastZero ? CmdFlag.FAST_ZERO : 0);
      this.#submitSplit(Cmd.WRITE_ZEROES, wf, off, len, null, EFFECT_CHUNK, cb, flags.fua);
      return;
    }
    zeroBuffer ??= Buffer.alloc(ZERO_CHUNK);
    this.#submitSplit(Cmd.WRITE, 0, off, len, zeroBuffer, Math.min(ZERO_CHUNK, this.#maxPayload), cb, flags.fua);
  }

  cache(off: number, len: number, cb: Done): void {
    if (!this.#has(TxFlag.SEND_CACHE)) return this.#later(cb, 0);
    this.#submitSplit(Cmd.CACHE, 0, off, len, null, EFFECT_CHUNK, cb, false);
  }

  blockStatus(off: number, len: number, _maxExtents: number, cb: (errno: number, extents: Extent[]) => void): void {
    // Without structured replies the remote cannot tell; "allocated, contents unknown" is always true.
    const errno = this.#closing !== null ? Errno.ESHUTDOWN : this.#broken !== 0 ? this.#broken : len <= 0 || off < 0 ? Errno.EINVAL : 0;
    process.nextTick(cb, errno, errno === 0 ? [{ length: len, flags: 0 }] : []);
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  // ---- ConnectionOwner ----

  complete(op: Op, errno: number, inc: Incarnation | null): void {
    if (op.type === Cmd.FLUSH && inc !== null) {
      if (errno === 0) inc.cover(op.coverAcked, op.coverBytes);
      // A failed FLUSH may have dropped what it was to make durable (reference/devices.md).
      else this.#endanger(inc);
    }
    if (op.done) return;
    op.done = true;
    this.#outstanding.delete(op);
    const g = op.group;
    if (errno !== 0 && g.error === 0) g.error = errno;
    if (errno === 0 && inc !== null && g.carriers !== null && isEffect(op.type)) g.carriers.add(inc);
    if (--g.remaining > 0) return;
    if (g.error === 0 && g.flushAfter) {
      g.flushAfter = false;
      for (const carrier of g.carriers!) this.#flushOn(carrier, g);
      if (g.remaining > 0) return;
    }
    // A failed Origin.flush tells the caller that everything since its last good flush may be
    // lost, which includes every write at risk so far: that is their one report.
    if (g.error !== 0 && g.originFlush) this.#reportAtRisk();
    g.cb(g.error);
  }

  lost(conn: Connection, ops: Op[], reason: string, inc: Incarnation): void {
    if (this.#closing !== null || this.#broken !== 0) return;
    const unflushed = { writes: inc.unflushed, bytes: inc.unflushedBytes };
    if (this.#has(TxFlag.SEND_FLUSH)) this.#endanger(inc);
    const live = ops.filter((op) => !op.done);
    this.#log().warn({ origin: this.description, inFlight: live.length, unflushedWrites: unflushed.writes, unflushedBytes: unflushed.bytes, reason },
      'NBD origin connection lost; reconnecting');
    // A FLUSH covers only its own connection's writes: re-sent on another one it would prove nothing.
    const resend = live.filter((op) => op.pin === null);
    if (resend.length > 0) {
      this.#queue = resend.concat(this.#queue.slice(this.#queueHead));
      this.#queueHead = 0;
    }
    this.#scheduleReconnect(conn);
    for (const op of live) if (op.pin !== null) this.complete(op, Errno.EIO, null);
  }

  pump(): void {
    const q = this.#queue;
    while (this.#queueHead < q.length) {
      const conn = this.#pickConnection();
      if (conn === null) {
        if (this.#queueHead > 1024 && this.#queueHead * 2 > q.length) {
          this.#queue = q.slice(this.#queueHead);
          this.#queueHead = 0;
        }
        return;
      }
      const op = q[this.#queueHead++];
      if (op.done) continue;
      conn.send(op, this.#takeCookie());
    }
    q.length = 0;
    this.#queueHead = 0;
  }

  // ---- internals ----

  #takeCookie(): number {
    const c = this.#nextCookie;
    this.#nextCookie = (c + 1) >>> 0 || 1;
    return c;
  }

  /** A FLUSH for `g` on incarnation `inc` only: EIO if that connection is gone (never moved to another). */
  #flushOn(inc: Incarnation, g: Group): void {
    const op = new Op(Cmd.FLUSH, 0, 0, 0, null, g, Date.now() + this.#timeoutMs);
    op.pin = inc;
    g.remaining++;
    this.#outstanding.add(op);
    if (this.#deadlineTimer === null) this.#armDeadline(op.deadline);
    const conn = inc.conn;
    if (!inc.alive || !conn.ready || conn.incarnation !== inc) {
      process.nextTick(() => this.complete(op, Errno.EIO, null));
      return;
    }
    conn.send(op, this.#takeCookie());
  }

  /** What `inc` acknowledged and no FLUSH covered may be gone: at risk until the next flush reports it. */
  #endanger(inc: Incarnation): void {
    this.#atRisk.writes += inc.unflushed;
    this.#atRisk.bytes += inc.unflushedBytes;
    inc.cover(inc.acked, inc.ackedBytes);
  }

  #reportAtRisk(): void {
    const { writes, bytes } = this.#atRisk;
    if (writes === 0) return;
    this.#atRisk = { writes: 0, bytes: 0 };
    this.#log().error({ origin: this.description, writes, bytes },
      'NBD origin may have lost acknowledged writes no FLUSH had covered (connection lost or FLUSH failed): this flush fails; they must be written again');
  }

  #has(flag: TxFlag): boolean {
    return (this.#txFlags & flag) !== 0;
  }

  #later(cb: Done, errno: number): void {
    process.nextTick(cb, errno);
  }

  /** Split [off, off+len) into wire requests of at most `max` bytes, completing cb once. */
  #submitSplit(type: Cmd, flags: number, off: number, len: number, data: Uint8Array | null, max: number, cb: Done, fua: boolean): void {
    if (this.#closing !== null) return this.#later(cb, Errno.ESHUTDOWN);
    if (this.#broken !== 0) return this.#later(cb, this.#broken);
    if (len === 0 && type !== Cmd.FLUSH) return this.#later(cb, 0);
    const g = new Group(cb);
    if (fua) {
      if (this.#has(TxFlag.SEND_FUA)) flags |= CmdFlag.FUA;
      else if (this.#has(TxFlag.SEND_FLUSH)) {
        g.flushAfter = true;
        g.carriers = new Set();
      }
    }
    // The zero buffer is reused for every piece; other data is cut into views.
    const shared = data === zeroBuffer;
    for (let pos = 0; pos < len || (len === 0 && pos === 0); pos += max) {
      const n = Math.min(max, len - pos);
      const piece = data === null ? null : shared ? data.subarray(0, n) : data.subarray(pos, pos + n);
      this.#enqueue(type, flags, off + pos, n, piece, g);
      if (len === 0) break;
    }
    this.pump();
  }

  #enqueue(type: number, flags: number, off: number, len: number, data: Uint8Array | null, g: Group): void {
    const op = new Op(type, flags, off, len, data, g, Date.now() + this.#timeoutMs);
    g.remaining++;
    this.#queue.push(op);
    this.#outstanding.add(op);
    if (this.#deadlineTimer === null) this.#armDeadline(op.deadline);
  }

  #pickConnection(): Connection | null {
    let best: Connection | null = null;
    for (const c of this.#conns) {
      if (c.ready && !c.blocked && (best === null || c.inflight.size < best.inflight.size)) best = c;
    }
    return best;
  }

  #armDeadline(at: number): void {
    this.#deadlineTimer = setTimeout(this.#onDeadline, Math.max(0, at - Date.now()) + 1);
  }

  readonly #onDeadline = (): void => {
    this.#deadlineTimer = null;
    const now = Date.now();
    const expired: Op[] = [];
    for (const op of this.#outstanding) {
      if (op.deadline > now) break;
      expired.push(op);
    }
    const stuck = new Set<Connection>();
    for (const op of expired) {
      if (op.conn !== null) stuck.add(op.conn);
      this.complete(op, Errno.EIO, null);
    }
    // A remote that sits on a request this long is treated as dead. Closing the socket also
    // drops any queued write whose caller has just been told it failed and may reuse its buffer.
    for (const conn of stuck) {
      this.#log().warn({ origin: this.description, timeoutMs: this.#timeoutMs }, 'NBD origin request timed out; dropping the connection');
      conn.destroy(`request timed out after ${this.#timeoutMs} ms`);
    }
    if (this.#deadlineTimer === null && this.#closing === null) {
      for (const op of this.#outstanding) {
        this.#armDeadline(op.deadline);
        break;
      }
    }
  };

  #scheduleReconnect(conn: Connection): void {
    if (this.#closing !== null || this.#broken !== 0 || conn.reconnectTimer !== null) return;
    const delay = conn.backoff;
    conn.backoff = Math.min(conn.backoff * 2, BACKOFF_MAX_MS);
    conn.reconnectTimer = setTimeout(() => {
      conn.reconnectTimer = null;
      if (this.#closing !== null) return;
      conn.open(this.#timeoutMs).then(
        (exp) => this.#reconnected(conn, exp),
        () => this.#scheduleReconnect(conn),
      );
    }, delay);
  }

  #reconnected(conn: Connection, exp: NegotiatedExport): void {
    if (this.#closing !== null || this.#broken !== 0) {
      void conn.disconnect(1000);
      return;
    }
    if (exp.size !== this.size) {
      this.#log().error({ origin: this.description, size: this.size, newSize: exp.size }, 'NBD origin changed size across a reconnect; failing all requests');
      this.#broken = Errno.EIO;
      this.#failAll(Errno.EIO);
      for (const c of this.#conns) void c.disconnect(1000);
      return;
    }
    if (exp.txFlags !== this.#txFlags) {
      this.#log().warn({ origin: this.description, txFlags: this.#txFlags, newTxFlags: exp.txFlags }, 'NBD origin transmission flags changed across a reconnect');
    }
    conn.backoff = BACKOFF_MIN_MS;
    this.#log().info({ origin: this.description }, 'NBD origin reconnected');
    this.pump();
  }

  #failAll(errno: number): void {
    for (const op of [...this.#outstanding]) this.complete(op, errno, null);
    this.#queue = [];
    this.#queueHead = 0;
  }

  async #shutdown(): Promise<void> {
    if (this.#deadlineTimer !== null) clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = null;
    for (const c of this.#conns) {
      if (c.reconnectTimer !== null) clearTimeout(c.reconnectTimer);
      c.reconnectTimer = null;
    }
    this.#failAll(Errno.ESHUTDOWN);
    await Promise.all(this.#conns.map((c) => c.disconnect(1000)));
  }
}

let defaultLogger: OriginLogger | null = null;
async function loadDefaultLogger(): Promise<OriginLogger> {
  if (defaultLogger === null) {
    const { createLogger } = await import('../daemon/logger.js');
    defaultLogger = createLogger({ name: 'origin-nbd' });
  }
  return defaultLogger;
}

/**
 * Connect `connections` sockets (one if the remote lacks CAN_MULTI_CONN) and negotiate; rejects
 * with ERR_ORIGIN / ERR_ORIGIN_TIMEOUT if any fails (no retry at open: a wrong URI fails fast).
 */
export async function openNbdOrigin(spec: NbdOriginSpec, opts: { logger?: OriginLogger } = {}): Promise<Origin> {
  const target = parseNbdUri(spec.uri);
  const logger = opts.logger ?? (await loadDefaultLogger());
  const count = Math.max(1, Math.floor(spec.connections || 1));
  // The owner is only known once the first handshake told us the size; route through a holder.
  let origin: NbdOrigin | null = null;
  const owner: ConnectionOwner = {
    complete: (op, errno, inc) => origin?.complete(op, errno, inc),
    lost: (conn, ops, reason, inc) => origin?.lost(conn, ops, reason, inc),
    pump: () => origin?.pump(),
  };
  const first = new Connection(owner, target);
  const exp = await first.open(spec.timeoutMs);
  let extra = count - 1;
  if (extra > 0 && (exp.txFlags & TxFlag.CAN_MULTI_CONN) === 0) {
    // Without CAN_MULTI_CONN a FLUSH on one connection need not cover writes made on another
    // ([proto] "Ordering of messages and writes"): stay on one.
    logger.warn({ origin: describe(target), connections: count }, 'NBD origin lacks CAN_MULTI_CONN; using one connection');
    extra = 0;
  }
  const rest = Array.from({ length: extra }, () => new Connection(owner, target));
  const conns = [first, ...rest];
  const results = await Promise.allSettled(rest.map((c) => c.open(spec.timeoutMs)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  const mismatch = results.some((r) => r.status === 'fulfilled' && r.value.size !== exp.size);
  if (failed !== undefined || mismatch) {
    await Promise.all(conns.map((c) => c.disconnect(1000)));
    if (failed !== undefined) throw failed.reason;
    throw new PcachedError('ERR_ORIGIN', `${describe(target)}: connections disagree on the export size`);
  }
  origin = new NbdOrigin(spec, conns, exp, describe(target), () => logger);
  return origin;
}

/** Connect once, negotiate, send DISC and close: what the coordinator needs to know up front. */
export async function probeNbdOrigin(uri: string, timeoutMs: number): Promise<{ size: number; readOnly: boolean; canFastZero: boolean; txFlags: number }> {
  const target = parseNbdUri(uri);
  const noop: ConnectionOwner = { complete() {}, lost() {}, pump() {} };
  const conn = new Connection(noop, target);
  const exp = await conn.open(timeoutMs);
  await conn.disconnect(1000);
  const f = exp.txFlags;
  return {
    size: exp.size,
    readOnly: (f & TxFlag.READ_ONLY) !== 0,
    canFastZero: (f & TxFlag.SEND_WRITE_ZEROES) !== 0 && (f & TxFlag.SEND_FAST_ZERO) !== 0,
    txFlags: f,
  };
}
