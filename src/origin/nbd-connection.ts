// One socket to a remote NBD export (handshake, then pipelined requests and simple replies), and
// the records the NBD origin (nbd.ts) keeps about it: wire requests (Op), caller requests (Group),
// and each connected lifetime of a socket (Incarnation) with what it acknowledged and what a FLUSH
// on it covered: durability is per connection.

import { connect, type Socket } from 'node:net';
import { ClientHandshake, ReplyParser, writeRequestHeader, type NegotiatedExport } from '../nbd/client.js';
import { Cmd, CmdFlag, REQUEST_HEADER_SIZE } from '../nbd/constants.js';
import { errnoFromNbd } from '../nbd/errors.js';
import { PcachedError } from '../util/errors.js';
import { formatNbdUri as describe, type NbdTarget } from '../nbd/uri.js';
import type { Done } from './types.js';

export const BACKOFF_MIN_MS = 50;
export const BACKOFF_MAX_MS = 2000;

/** One connected lifetime of a Connection: the writes it acknowledged, and how many a FLUSH on it covered. */
export class Incarnation {
  /** False once its socket closed: a FLUSH pinned to it can no longer succeed. */
  alive = true;
  /** Non-FUA WRITE / TRIM / WRITE_ZEROES requests acknowledged, and their bytes. */
  acked = 0;
  ackedBytes = 0;
  /** The part of `acked` (and of its bytes) a successful FLUSH on this incarnation covered. */
  covered = 0;
  coveredBytes = 0;

  get unflushed(): number {
    return this.acked - this.covered;
  }

  get unflushedBytes(): number {
    return this.ackedBytes - this.coveredBytes;
  }

  /** A FLUSH sent when `acked` was n succeeded: it covers those n (replies may come out of order). */
  constructor(readonly conn: Connection) {}

  cover(n: number, bytes: number): void {
    if (n <= this.covered) return;
    this.covered = n;
    this.coveredBytes = bytes;
  }
}

/** Completion of one caller request, which may have been split into several wire requests. */
export class Group {
  remaining = 0;
  error = 0;
  /** FUA requested but the remote lacks SEND_FUA: flush after the writes instead. */
  flushAfter = false;
  /** For flushAfter: the incarnations that acknowledged a piece (the FLUSH must go to each). */
  carriers: Set<Incarnation> | null = null;
  /** An Origin.flush: its failure is the report of every write at risk so far. */
  originFlush = false;
  constructor(readonly cb: Done) {}
}

/** Writes that change the remote's data: what a FLUSH has to cover. */
export const isEffect = (type: number): boolean => type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;

/** One wire request. `data` is the WRITE source or the READ destination. */
export class Op {
  done = false;
  conn: Connection | null = null;
  /** A FLUSH that must run on this incarnation (it covers writes acknowledged there), never re-sent elsewhere. */
  pin: Incarnation | null = null;
  /** A FLUSH: the incarnation's `acked` (and bytes) when it was sent, i.e. what it covers. */
  coverAcked = 0;
  coverBytes = 0;
  constructor(
    readonly type: number, readonly flags: number, readonly offset: number, readonly length: number,
    readonly data: Uint8Array | null, readonly group: Group, readonly deadline: number,
  ) {}
}

export interface ConnectionOwner {
  /** A reply arrived on incarnation `inc` (null: the request failed without one). */
  complete(op: Op, errno: number, inc: Incarnation | null): void;
  lost(conn: Connection, ops: Op[], reason: string, inc: Incarnation): void;
  pump(): void;
}

/** One socket to the remote: handshake, then requests out and simple replies in. */
export class Connection {
  readonly inflight = new Map<number, Op>();
  socket: Socket | null = null;
  ready = false;
  /** The last write() returned false; wait for 'drain'. */
  blocked = false;
  backoff = BACKOFF_MIN_MS;
  reconnectTimer: NodeJS.Timeout | null = null;
  /** The current connected lifetime; a new one at every (re)connect. */
  incarnation: Incarnation = new Incarnation(this);
  #parser: ReplyParser | null = null;
  #corked = false;
  #lastError = '';
  readonly #owner: ConnectionOwner;
  readonly #target: NbdTarget;

  constructor(owner: ConnectionOwner, target: NbdTarget) {
    this.#owner = owner;
    this.#target = target;
  }

  /** Connect and negotiate; resolves once in transmission phase. */
  open(timeoutMs: number): Promise<NegotiatedExport> {
    return new Promise((resolve, reject) => {
      const t = this.#target;
      const sock = t.socketPath !== undefined ? connect({ path: t.socketPath }) : connect({ host: t.host, port: t.port });
      if (t.socketPath === undefined) sock.setNoDelay(true);
      const hs = new ClientHandshake(t.exportName);
      let settled = false;
      const fail = (code: 'ERR_ORIGIN' | 'ERR_ORIGIN_TIMEOUT', reason: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        reject(new PcachedError(code, `${describe(t)}: ${reason}`));
      };
      const timer = setTimeout(() => fail('ERR_ORIGIN_TIMEOUT', `no NBD handshake within ${timeoutMs} ms`), timeoutMs);
      const onData = (chunk: Buffer): void => {
        hs.push(chunk);
        for (let step = hs.next(); step !== null; step = hs.next()) {
          if (step.kind === 'send') {
            sock.write(step.bytes);
          } else if (step.kind === 'fatal') {
            fail('ERR_ORIGIN', step.reason);
            return;
          } else {
            settled = true;
            clearTimeout(timer);
            sock.off('data', onData).off('error', onError).off('close', onClose);
            this.#attach(sock, step.remainder);
            resolve(step.export);
            return;
          }
        }
      };
      const onError = (err: Error): void => fail('ERR_ORIGIN', err.message);
      const onClose = (): void => fail('ERR_ORIGIN', 'connection closed during the NBD handshake');
      sock.on('data', onData).on('error', onError).on('close', onClose);
    });
  }

  /** Queue one request on the socket; writes of one tick go out together (cork/uncork). */
  send(op: Op, cookie: number): void {
    const sock = this.socket!;
    if (!this.#corked) {
      this.#corked = true;
      sock.cork();
      process.nextTick(this.#uncork);
    }
    const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
    writeRequestHeader(header, 0, op.flags, op.type, 0, cookie, op.offset, op.length);
    let ok = sock.write(header);
    if (op.type === Cmd.WRITE) ok = sock.write(op.data!);
    if (op.type === Cmd.FLUSH) {
      op.coverAcked = this.incarnation.acked;
      op.coverBytes = this.incarnation.ackedBytes;
    }
    op.conn = this;
    this.inflight.set(cookie, op);
    if (!ok) this.blocked = true;
  }

  /** Orderly end: DISC, then close; forced after graceMs. */
  disconnect(graceMs: number): Promise<void> {
    const sock = this.socket;
    if (sock === null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => sock.destroy(), graceMs);
      sock.once('close', () => { clearTimeout(timer); resolve(); });
      if (this.ready && !sock.destroyed) {
        const disc = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
        writeRequestHeader(disc, 0, 0, Cmd.DISC, 0, 0, 0, 0);
        sock.end(disc);
      } else {
        sock.destroy();
      }
    });
  }

  destroy(reason: string): void {
    this.#lastError = reason;
    this.socket?.destroy();
  }

  #attach(sock: Socket, remainder: Buffer): void {
    this.socket = sock;
    this.ready = true;
    this.blocked = false;
    this.incarnation = new Incarnation(this);
    this.#lastError = '';
    this.#parser = new ReplyParser(this.#sink);
    sock.on('data', this.#onData).on('error', this.#onError).on('close', this.#onClose).on('drain', this.#onDrain);
    if (remainder.length > 0) this.#onData(remainder);
  }

  readonly #sink = (_cookieHi: number, cookieLo: number): Uint8Array | number => {
    const op = this.inflight.get(cookieLo);
    if (op === undefined) return -1;
    if (op.type !== Cmd.READ) return 0;
    // A request that already failed (timeout, close) no longer owns its buffer: discard.
    return op.done ? op.length : op.data!;
  };

  readonly #onData = (chunk: Buffer): void => {
    const parser = this.#parser!;
    parser.push(chunk);
    for (let ev = parser.next(); ev !== null; ev = parser.next()) {
      if (ev.kind !== 'simple') {
        this.destroy(ev.kind === 'fatal' ? ev.reason : 'unexpected structured reply');
        return;
      }
      const op = this.inflight.get(ev.cookieLo)!;
      if (op === undefined) {
        this.destroy(`reply for unknown cookie ${ev.cookieLo}`);
        return;
      }
      this.inflight.delete(ev.cookieLo);
      op.conn = null;
      const inc = this.incarnation;
      // Counted even if the caller already gave up on it (timed out): the remote holds it unflushed.
      if (ev.error === 0 && isEffect(op.type) && (op.flags & CmdFlag.FUA) === 0) {
        inc.acked++;
        inc.ackedBytes += op.length;
      }
      this.#owner.complete(op, errnoFromNbd(ev.error), inc);
    }
  };

  readonly #onError = (err: Error): void => {
    this.#lastError = err.message;
  };

  readonly #onClose = (): void => {
    this.socket = null;
    this.ready = false;
    this.blocked = false;
    this.#corked = false;
    this.#parser = null;
    const ops = [...this.inflight.values()];
    this.inflight.clear();
    for (const op of ops) op.conn = null;
    this.incarnation.alive = false;
    this.#owner.lost(this, ops, this.#lastError || 'connection closed by the remote', this.incarnation);
  };

  readonly #onDrain = (): void => {
    this.blocked = false;
    this.#owner.pump();
  };

  readonly #uncork = (): void => {
    this.#corked = false;
    this.socket?.uncork();
  };
}

