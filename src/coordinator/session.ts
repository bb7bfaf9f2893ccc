// One client connection: handshake, then requests → validation → stripe work → replies.
// Replies may complete out of order; each is written whole, in one place (writeReply).
// Request bytes are charged before their buffers exist (a WRITE's payload when its header
// arrives) against the session's budget and the daemon's (flow.ts); a request that does not fit
// waits, and reading stops (socket.pause) while it waits, while the session holds too much, while
// the client does not read its replies, or while the daemon as a whole is over budget, so no
// client can grow our memory.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { Cmd, CmdFlag, NbdErr, Opt, Rep, cmdName } from '../nbd/constants.js';
import { OptionParser, encodeGreeting, encodeOptionReply } from '../nbd/handshake.js';
import { RequestParser, PayloadDecision, type NbdRequest } from '../nbd/transmission.js';
import { StripeOp, StripeFlag } from '../ring/layout.js';
import { Negotiation, type ExportInfo, type TlsPolicy } from './negotiate.js';
import type { TlsCredentials } from '../tls/credentials.js';
import { tlsSummary, upgradeToTls } from '../tls/upgrade.js';
import { validateRequest, type ExportState } from './validate.js';
import { splitRequest, firstSubtreeLength, stripeOf } from './router.js';
import { Io, statusReply, readReplyHeaderSize, writeReadReplyHeader, type IoWork, type ReplySink, type StatusRequest } from './io.js';
import { nbdError } from '../nbd/errors.js';
import { Errno, errnoName } from '../util/errno.js';
import type { SequentialDetector } from './sequential.js';
import type { HitReader } from './hit-reader.js';
import type { DirectHits } from './direct-hits.js';
import { receiveIntoPool } from './receive-pool.js';
import type { StripeSet } from './stripes.js';
import type { CounterBlock, CoordinatorCounter } from '../stats/counters.js';
import type { FlowBudget } from './flow.js';
import {
  MAX_DRAINABLE_WRITE, MAX_SESSION_BYTES, MAX_SESSION_REQUESTS, SMALL_PAYLOAD, WRITE_BACKLOG_LIMIT, ZERO_COPY_BACKLOG,
} from './limits.js';
import { copyBytes } from '../util/copy-bytes.js';

const HANDSHAKE_TIMEOUT_MS = 30_000;
/**
 * How long a connection we ended may keep sending before it is cut, and how long one whose
 * replies are still being flushed may go without the client taking any of them.
 */
const CLOSE_GRACE_MS = 2_000;
/** Extents one BLOCK_STATUS reply may carry (8 bytes each in the slab). */
const MAX_EXTENTS = 1024;
/**
 * Replies this small are copied into one pooled buffer rather than sent from the slab: a view
 * of the slab costs more than copying a few bytes.
 */
const COPY_REPLY_LIMIT = 4095;

const enum Pause {
  INFLIGHT = 1,
  BACKLOG = 2,
  BUDGET = 4,
  DISC = 8,
}

export interface SessionContext {
  exp: ExportInfo;
  /** STARTTLS policy, and the credentials it uses (null when off). */
  tls: TlsPolicy;
  tlsCredentials: TlsCredentials | null;
  stripes: StripeSet;
  counters: CounterBlock<CoordinatorCounter>;
  flow: FlowBudget;
  log: Logger;
  /** Shared by the cache's sessions to rate-limit failure logging. */
  failures: { lastLogged: number; suppressed: number };
  /** Write-back mode: long sequential reads are marked so the stripes do not promote them. */
  sequential: SequentialDetector | null;
  /** Read hits the page cache holds, served without a stripe (null: off, see hit-reader.ts). */
  hits: HitReader | null;
  /** Read hits on a direct-I/O cache device, read by the coordinator itself (null: off, see direct-hits.ts). */
  directHits: DirectHits | null;
  closed(session: Session): void;
}

const REQ_COUNTER: Record<number, CoordinatorCounter> = {
  [Cmd.READ]: 'reqs_read', [Cmd.WRITE]: 'reqs_write', [Cmd.FLUSH]: 'reqs_flush', [Cmd.TRIM]: 'reqs_trim',
  [Cmd.CACHE]: 'reqs_cache', [Cmd.WRITE_ZEROES]: 'reqs_write_zeroes', [Cmd.BLOCK_STATUS]: 'reqs_block_status', [Cmd.DISC]: 'reqs_disc',
};

const ERR_COUNTER: Record<number, CoordinatorCounter> = {
  [NbdErr.EPERM]: 'err_eperm', [NbdErr.EIO]: 'err_eio', [NbdErr.ENOMEM]: 'err_enomem', [NbdErr.EINVAL]: 'err_einval',
  [NbdErr.ENOSPC]: 'err_enospc', [NbdErr.EOVERFLOW]: 'err_eoverflow', [NbdErr.ENOTSUP]: 'err_enotsup', [NbdErr.ESHUTDOWN]: 'err_eshutdown',
};

export class Session implements ReplySink {
  readonly id: number;
  /** The accepted socket, or after STARTTLS the TLS socket over it. */
  #sock: Socket;
  readonly #ctx: SessionContext;
  readonly #log: Logger;
  #optParser: OptionParser | null = new OptionParser();
  #reqParser: RequestParser | null = null;
  readonly #neg: Negotiation;
  #state: ExportState;
  #paused = 0;
  #inflight = 0;
  /** Request bytes charged: requests in flight and the payload being received. */
  #inflightBytes = 0;
  /** Charged as still arriving for the WRITE whose payload is being received (0 when none, or small). */
  #receiving = 0;
  /** A READ parsed but not admitted yet (over a budget): served first once reading resumes. */
  #held: NbdRequest | null = null;
  #closed = false;
  /** drain() was called: the daemon is stopping (the one time the spec lets a reply say ESHUTDOWN). */
  #shuttingDown = false;
  #handshakeTimer: NodeJS.Timeout | null;
  #draining: (() => void) | null = null;
  #corked = false;
  /** The socket is to read into a pool and does not yet (receive-pool.ts). */
  #toPool = false;
  readonly #uncork = (): void => {
    this.#corked = false;
    this.#sock.uncork();
  };
  readonly #admitPayload = (req: NbdRequest, arrived: boolean): PayloadDecision => this.#startPayload(req, arrived);
  readonly #onDataBound = (chunk: Buffer): void => this.#onData(chunk);
  readonly #onDrain = (): void => this.#unpause(Pause.BACKLOG);

  constructor(id: number, sock: Socket, ctx: SessionContext) {
    this.id = id;
    this.#sock = sock;
    this.#ctx = ctx;
    this.#log = ctx.log.child({ conn: id });
    this.#state = { size: ctx.exp.size, readOnly: ctx.exp.readOnly, structuredReplies: false, metaContext: false };
    this.#neg = new Negotiation(ctx.exp, (buf) => this.#write(buf), { tls: ctx.tls });
    // Covers the TLS handshake too: a client that stalls inside it is cut like any other.
    this.#handshakeTimer = setTimeout(() => this.#abort('handshake timed out'), HANDSHAKE_TIMEOUT_MS);
    this.#handshakeTimer.unref();
    sock.on('data', this.#onDataBound);
    sock.on('drain', this.#onDrain);
    // A client hanging up with replies in flight is normal: drop what we still owe it.
    sock.on('error', (err) => this.#log.debug({ err }, 'connection error'));
    // Also after STARTTLS: closing the TLS socket closes this one.
    sock.on('close', () => this.#onClose());
    this.#write(encodeGreeting());
  }

  get inflight(): number {
    return this.#inflight;
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    if (this.#optParser) {
      this.#optParser.push(chunk);
      this.#handshake();
    } else if (this.#reqParser) {
      this.#reqParser.push(chunk);
      this.#requests();
    }
  }

  #handshake(): void {
    const parser = this.#optParser!;
    for (let ev = parser.next(); ev; ev = parser.next()) {
      const out = ev.kind === 'clientFlags' ? this.#neg.clientFlags(ev.flags)
        : ev.kind === 'option' ? this.#neg.option(ev.option, ev.data)
        : { next: 'close' as const, reason: ev.reason };
      if (out.next === 'starttls') {
        this.#startTls(parser);
        return;
      }
      if (out.next === 'close') {
        this.#log.debug({ reason: out.reason }, 'handshake ended');
        if (ev.kind === 'fatal') this.#ctx.counters.add('protocol_errors', 1);
        this.#finish();
        return;
      }
      if (out.next === 'transmission') {
        clearTimeout(this.#handshakeTimer!);
        this.#handshakeTimer = null;
        this.#state = { ...this.#state, structuredReplies: out.structuredReplies, metaContext: out.metaContext };
        const rest = parser.takeRemainder();
        this.#optParser = null;
        this.#reqParser = new RequestParser({ maxDrainable: MAX_DRAINABLE_WRITE, admitPayload: this.#admitPayload });
        // Not from inside this read's own callback: the switch changes who receives the next read.
        this.#toPool = process.env.PCACHED_RECEIVE_POOL !== 'off';
        if (this.#toPool) process.nextTick(() => this.#tryPool());
        if (rest.length > 0) {
          this.#reqParser.push(rest);
          this.#requests();
        }
        return;
      }
    }
  }

  /**
   * STARTTLS accepted: the ACK leaves in plaintext, then the same connection carries TLS and
   * haggling resumes inside it. Reading stops first: the client's ClientHello follows our ACK and
   * must reach node:tls, not the option parser (it stays in the paused socket's buffer).
   */
  #startTls(parser: OptionParser): void {
    // The client must wait for the reply before it starts TLS ([proto] "NBD_OPT_STARTTLS").
    if (parser.takeRemainder().length > 0) {
      this.#ctx.counters.add('protocol_errors', 1);
      this.#abort('data after STARTTLS before its reply');
      return;
    }
    const raw = this.#sock;
    raw.off('data', this.#onDataBound);
    raw.off('drain', this.#onDrain);
    raw.pause();
    raw.write(encodeOptionReply(Opt.STARTTLS, Rep.ACK), (err) => {
      if (err || this.#closed) return;
      upgradeToTls(raw, this.#ctx.tlsCredentials!, {
        secure: (tls) => this.#tlsReady(tls),
        // Logged even when the socket is closed already: a refused certificate closes it first.
        failed: (why) => {
          this.#ctx.counters.add('tls_failures', 1);
          this.#log.info({ reason: why }, 'TLS handshake failed; closing connection');
        },
      });
    });
  }

  #tlsReady(tls: TLSSocket): void {
    if (this.#closed) {
      tls.destroy();
      return;
    }
    this.#ctx.counters.add('tls_handshakes', 1);
    this.#sock = tls;
    tls.on('error', (err) => this.#log.debug({ err }, 'TLS connection error'));
    tls.on('drain', this.#onDrain);
    tls.on('data', this.#onDataBound);
    this.#neg.tlsStarted();
    this.#log.debug(tlsSummary(tls), 'TLS established');
  }

  #requests(): void {
    const parser = this.#reqParser!;
    while (this.#paused === 0 && !this.#closed) {
      let req = this.#held;
      if (req) this.#held = null;
      else {
        const ev = parser.next();
        if (!ev) return;
        if (ev.kind === 'fatal') {
          this.#ctx.counters.add('protocol_errors', 1);
          this.#abort(ev.reason);
          return;
        }
        req = ev.req;
      }
      if (!this.#request(req)) {
        this.#held = req;
        return;
      }
    }
  }

  /**
   * A WRITE header has arrived (the parser asks before it allocates the payload buffer): refused
   * ones are drained unbuffered, accepted ones are charged now, and one that does not fit waits
   * with reading paused (the parser asks again when reading resumes).
   */
  #startPayload(req: NbdRequest, arrived: boolean): PayloadDecision {
    if (validateRequest(req, this.#state) !== 0) return PayloadDecision.DROP;
    // A small payload still on its way is ordinary pipelining, not worth holding back.
    const receiving = !arrived && req.length > SMALL_PAYLOAD;
    if (!this.#admit(req.length, receiving)) return PayloadDecision.WAIT;
    if (receiving) this.#receiving = req.length;
    return PayloadDecision.ACCEPT;
  }

  /**
   * Charge `bytes` to the session and the daemon, or pause reading until they fit. A session
   * holding nothing may always take one request (up to the maximum payload).
   */
  #admit(bytes: number, receiving: boolean): boolean {
    if (this.#inflightBytes > 0 && this.#inflightBytes + bytes > MAX_SESSION_BYTES) {
      this.#pause(Pause.INFLIGHT);
      return false;
    }
    const flow = this.#ctx.flow;
    if (!flow.tryAcquire(bytes, receiving)) {
      this.#pause(Pause.BUDGET);
      flow.wait(() => this.#unpause(Pause.BUDGET), receiving);
      return false;
    }
    this.#inflightBytes += bytes;
    return true;
  }

  /** false: the request must wait (not admitted); it is offered again when reading resumes. */
  #request(req: NbdRequest): boolean {
    const c = this.#ctx.counters;
    const type = req.type;
    if (type === Cmd.WRITE && this.#receiving > 0) {
      // Its payload has all arrived: the charge no longer depends on the client.
      this.#ctx.flow.received(this.#receiving);
      this.#receiving = 0;
    }
    if (type === Cmd.DISC) {
      c.add('reqs_disc', 1);
      this.#pause(Pause.DISC);
      this.#maybeEnd();
      return true;
    }
    const st = this.#state;
    const errno = validateRequest(req, st);
    const length = req.length;
    if (errno !== 0 || (length === 0 && type !== Cmd.FLUSH)) {
      c.add(REQ_COUNTER[type] ?? 'reqs_unknown', 1);
      this.#replyNow(req, errno);
      return true;
    }
    if (type === Cmd.READ && this.#ctx.hits !== null && this.#serveHit(req)) {
      // The detector sees every read, the ones served here too, or it would lose track of streams.
      this.#ctx.sequential?.read(req.offset, length);
      return true;
    }
    // A WRITE was charged when its header arrived; a READ is charged here, before any of its buffers exist.
    if (type === Cmd.READ && !this.#admit(length, false)) return false;
    c.add(REQ_COUNTER[type] ?? 'reqs_unknown', 1);
    const charge = type === Cmd.READ || type === Cmd.WRITE ? length : 0;
    const io = new Io(req, st.structuredReplies, charge, this);
    this.#inflight++;
    const stripes = this.#ctx.stripes;
    const fua = (req.flags & CmdFlag.FUA) !== 0 ? StripeFlag.FUA : 0;
    switch (type) {
      case Cmd.FLUSH: {
        // A FLUSH covers every write already replied to on any connection: ask every stripe.
        io.remaining = io.pieces = stripes.count;
        for (let s = 0; s < stripes.count; s++) this.#submit(io, StripeOp.FLUSH, 0, 0, 0, 0, 0, null, s);
        break;
      }
      case Cmd.BLOCK_STATUS: {
        // The reply may describe a prefix of the range; one subtree at a time keeps it cheap
        // and lets the owning stripe answer for its own subtree.
        const len = firstSubtreeLength(req.offset, length);
        const maxExtents = (req.flags & CmdFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
        io.remaining = io.pieces = 1;
        this.#submit(io, StripeOp.BLOCK_STATUS, 0, req.offset, len, 0, maxExtents * 8, null, stripeOf(req.offset, stripes.count));
        break;
      }
      default: {
        const op = type === Cmd.READ ? StripeOp.READ : type === Cmd.WRITE ? StripeOp.WRITE
          : type === Cmd.TRIM ? StripeOp.TRIM : type === Cmd.CACHE ? StripeOp.CACHE : StripeOp.ZERO;
        let flags = fua;
        if (type === Cmd.READ && this.#ctx.sequential?.read(req.offset, length)) flags |= StripeFlag.NO_FILL;
        if (type === Cmd.WRITE_ZEROES) {
          if ((req.flags & CmdFlag.NO_HOLE) !== 0) flags |= StripeFlag.NO_HOLE;
          if ((req.flags & CmdFlag.FAST_ZERO) !== 0) flags |= StripeFlag.FAST_ZERO;
        }
        if (type === Cmd.READ && this.#ctx.directHits !== null) {
          const structured = st.structuredReplies;
          const started = this.#ctx.directHits.read(req.offset, length, (data) => {
            if (data === null) { this.#submitPieces(io, req, op, flags); return; }
            const hdr = Buffer.allocUnsafe(readReplyHeaderSize(structured));
            writeReadReplyHeader(hdr, structured, req.cookieHi, req.cookieLo, req.offset, length);
            this.#ctx.counters.add('read_hits_inline', 1);
            this.writeReply([hdr, data]);
            this.completed(io);
          });
          if (started) break;
        }
        this.#submitPieces(io, req, op, flags);
      }
    }
    if (this.#inflight >= MAX_SESSION_REQUESTS) this.#pause(Pause.INFLIGHT);
    return true;
  }

  /** Sends a READ, WRITE, TRIM, CACHE or WRITE_ZEROES to the stripes owning its pieces. */
  #submitPieces(io: Io, req: NbdRequest, op: StripeOp, flags: number): void {
    const stripes = this.#ctx.stripes;
    const type = req.type, length = req.length;
    const withSlab = type === Cmd.READ || type === Cmd.WRITE;
    const pieces = splitRequest(req.offset, length, stripes.count, withSlab ? stripes.maxPiece : undefined);
    io.remaining = io.pieces = pieces.length;
    if (pieces.length > 1) this.#ctx.counters.add('split_pieces', pieces.length);
    const payload = type === Cmd.WRITE ? req.payload : null;
    for (const p of pieces) {
      this.#submit(io, op, flags, p.offset, p.length, p.delta, withSlab ? p.length : 0,
        payload ? payload.subarray(p.delta, p.delta + p.length) : null, p.stripe);
    }
  }

  /** A read hit the page cache holds, answered at once (hit-reader.ts); false when a stripe must serve it. */
  #serveHit(req: NbdRequest): boolean {
    const structured = this.#state.structuredReplies;
    const header = readReplyHeaderSize(structured);
    const buf = this.#ctx.hits!.reply(req.offset, req.length, header);
    if (buf === null) return false;
    writeReadReplyHeader(buf, structured, req.cookieHi, req.cookieLo, req.offset, req.length);
    const c = this.#ctx.counters;
    c.add('reqs_read', 1);
    c.add('read_hits_inline', 1);
    c.add('bytes_read', req.length);
    this.writeReply([buf]);
    return true;
  }

  #submit(io: Io, op: StripeOp, flags: number, offset: number, length: number, delta: number,
    slabBytes: number, payload: Uint8Array | null, stripe: number): void {
    const work: IoWork = {
      op, flags, offset, length, slabBytes, payload, onDone: Io.onPieceDone, slabOff: 0, ring: null, io, delta,
      split: op === StripeOp.READ || op === StripeOp.WRITE ? Io.splitPiece : undefined,
    };
    this.#ctx.stripes.submit(work, stripe);
  }

  /** Reply without touching a stripe (validation errors, zero-length requests). */
  #replyNow(req: NbdRequest, errno: number): void {
    this.writeStatus({ ...req, structured: this.#state.structuredReplies }, errno, errno === 0 ? '' : 'request rejected');
  }

  writeStatus(req: StatusRequest, errno: number, what: string): void {
    const error = nbdError(errno, { type: req.type, flags: req.flags, structured: req.structured, shuttingDown: this.#shuttingDown });
    // Counted by what the client was told, even if it is gone and the reply is dropped.
    if (error !== 0) this.#countError(error);
    this.writeReply([statusReply(req, error, errno, what)]);
  }

  #countError(error: NbdErr): void {
    const c = this.#ctx.counters;
    c.add('errors', 1);
    const name = ERR_COUNTER[error];
    if (name) c.add(name, 1);
  }

  /** Every reply produced in this turn of the event loop (a whole completion batch) leaves in one writev. */
  #cork(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#sock.cork();
    queueMicrotask(this.#uncork);
  }

  #afterWrite(): void {
    if (this.#sock.writableLength > WRITE_BACKLOG_LIMIT) this.#pause(Pause.BACKLOG);
  }

  writeReply(bufs: Buffer<ArrayBufferLike>[]): void {
    if (this.#closed || this.#sock.destroyed) return;
    this.#cork();
    for (const b of bufs) this.#sock.write(b);
    this.#afterWrite();
  }

  /**
   * Zero-copy while the client keeps up: the slab pages go to the socket if its unsent backlog
   * stays small and the stripe's slab has room for such pages (StripeRing.pinForSocket); they
   * are released once the socket took the bytes (or died). Otherwise the bytes are copied out
   * and the slab released at once, so a client that does not read keeps no slab space.
   */
  writeSlabReply(header: Buffer, work: IoWork): void {
    const ring = work.ring!;
    const sock = this.#sock;
    if (this.#closed || sock.destroyed) {
      ring.releaseSlab(work);
      return;
    }
    const len = work.length;
    this.#cork();
    if (header.length + len > COPY_REPLY_LIMIT && sock.writableLength + len <= ZERO_COPY_BACKLOG && ring.pinForSocket(work)) {
      sock.write(header);
      sock.write(Buffer.from(ring.slabSab, work.slabOff, len), () => ring.unpinForSocket(work));
    } else {
      const buf = Buffer.allocUnsafe(header.length + len);
      buf.set(header, 0);
      copyBytes(buf, header.length, ring.slab.subarray(work.slabOff, work.slabOff + len));
      ring.releaseSlab(work);
      if (buf.length > COPY_REPLY_LIMIT) this.#ctx.counters.add('replies_copied', 1);
      sock.write(buf);
    }
    this.#afterWrite();
  }

  completed(io: Io): void {
    const c = this.#ctx.counters;
    // A failure was counted when its reply was written (writeStatus); a refused fast zero is no failure to log.
    if (io.errno !== 0) {
      if (io.errno !== Errno.ENOTSUP) this.#logFailure(io);
    } else if (io.type === Cmd.READ) c.add('bytes_read', io.length);
    else if (io.type === Cmd.WRITE) c.add('bytes_written', io.length);
    else if (io.type === Cmd.TRIM) c.add('bytes_trimmed', io.length);
    else if (io.type === Cmd.WRITE_ZEROES) c.add('bytes_zeroed', io.length);
    this.#inflight--;
    this.#inflightBytes -= io.charge;
    this.#ctx.flow.release(io.charge);
    if (this.#inflight < MAX_SESSION_REQUESTS / 2 && this.#inflightBytes < MAX_SESSION_BYTES / 2) this.#unpause(Pause.INFLIGHT);
    this.#maybeEnd();
  }

  /** A failing origin fails every request: one line a second (with how many it stands for), never one per I/O. */
  #logFailure(io: Io): void {
    const f = this.#ctx.failures;
    const now = Date.now();
    if (now - f.lastLogged < 1000) {
      f.suppressed++;
      return;
    }
    this.#log.warn({ cmd: cmdName(io.type), offset: io.offset, length: io.length, err: errnoName(io.errno), alsoFailedSinceLastLine: f.suppressed }, 'request failed');
    f.lastLogged = now;
    f.suppressed = 0;
  }

  #write(buf: Buffer): void {
    if (!this.#closed && !this.#sock.destroyed) this.#sock.write(buf);
  }

  #pause(reason: Pause): void {
    if (this.#paused === 0) this.#sock.pause();
    this.#paused |= reason;
  }

  #unpause(reason: Pause): void {
    if ((this.#paused & reason) === 0) return;
    this.#paused &= ~reason;
    if (this.#paused === 0 && !this.#closed) {
      this.#sock.resume();
      // Requests already buffered in the parser are not in the socket any more.
      if (this.#reqParser) queueMicrotask(() => this.#requests());
      if (this.#toPool) process.nextTick(() => this.#tryPool());
    }
  }

  /** Reads into a pool from now on, once the socket is flowing with nothing buffered (receive-pool.ts). */
  #tryPool(): void {
    if (!this.#toPool || this.#closed || this.#paused !== 0) return;
    const r = receiveIntoPool(this.#sock, this.#onDataBound);
    if (r === 'switched') this.#ctx.counters.add('connections_pooled', 1);
    if (r !== 'later') this.#toPool = false;
  }

  /** After DISC (or a drain for shutdown), close once every reply has been written. */
  #maybeEnd(): void {
    if ((this.#paused & Pause.DISC) !== 0 && this.#inflight === 0) this.#finish();
    if (this.#inflight === 0 && this.#draining) {
      const d = this.#draining;
      this.#draining = null;
      d();
    }
  }

  #abort(reason: string): void {
    if (this.#closed) return;
    this.#log.info({ reason }, 'closing connection');
    this.#closed = true;
    this.#sock.destroy();
  }

  /** Stop taking requests, wait for the ones in flight, then end the connection. */
  drain(): Promise<void> {
    this.#shuttingDown = true;
    this.#pause(Pause.DISC);
    return new Promise((resolve) => {
      if (this.#inflight === 0) {
        this.#finish();
        resolve();
      } else {
        this.#draining = () => {
          this.#finish();
          resolve();
        };
      }
    });
  }

  /**
   * End the connection once every owed reply has left. A paused socket (DISC, shutdown drain)
   * never reads the client's FIN, so once our end() is flushed it is destroyed rather than left
   * half-open; and if the client stops taking the replies still queued, it is destroyed when
   * CLOSE_GRACE_MS pass without progress (a shutdown must not wait for a client that does not
   * read). A reading one (the handshake ended) keeps discarding what the client still sends,
   * so the client sees a clean EOF rather than a reset, but only for a bounded grace period.
   */
  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    const sock = this.#sock;
    if (this.#paused !== 0) {
      sock.end(() => sock.destroy());
      this.#destroyIfStuck();
      return;
    }
    sock.end();
    setTimeout(() => sock.destroy(), CLOSE_GRACE_MS).unref();
  }

  #destroyIfStuck(): void {
    const sock = this.#sock;
    let unsent = sock.writableLength;
    const timer = setInterval(() => {
      const now = sock.writableLength;
      if (sock.destroyed) clearInterval(timer);
      else if (now >= unsent) {
        this.#log.info({ unsentBytes: now }, 'closing connection: the client does not read its replies');
        clearInterval(timer);
        sock.destroy();
      }
      unsent = now;
    }, CLOSE_GRACE_MS);
    timer.unref();
    sock.once('close', () => clearInterval(timer));
  }

  /** Drop the connection now (shutdown drain timed out). */
  destroy(): void {
    this.#closed = true;
    this.#sock.destroy();
  }

  #onClose(): void {
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    this.#closed = true;
    if (this.#receiving > 0) {
      // A WRITE whose payload never arrived: nothing will be submitted for it.
      this.#inflightBytes -= this.#receiving;
      this.#ctx.flow.release(this.#receiving, true);
      this.#receiving = 0;
    }
    this.#held = null;
    this.#ctx.closed(this);
  }
}
