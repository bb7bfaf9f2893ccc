// One client connection: handshake, then requests → validation → stripe work → replies.
// Replies may complete out of order; each is written whole, in one place (writeReply).
// Reading stops (socket.pause) while the session holds too much, the client does not read
// its replies, or the daemon as a whole is over budget, so no client can grow our memory.

import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { Cmd, CmdFlag, NbdErr, MAX_PAYLOAD, MAX_DRAINABLE_PAYLOAD, cmdName } from '../nbd/constants.js';
import { OptionParser, encodeGreeting } from '../nbd/handshake.js';
import { RequestParser, type NbdRequest } from '../nbd/transmission.js';
import { StripeOp, StripeFlag } from '../ring/layout.js';
import { Negotiation, type ExportInfo } from './negotiate.js';
import { validateRequest, type ExportState } from './validate.js';
import { splitRequest, firstSubtreeLength, stripeOf } from './router.js';
import { Io, errorReply, errnoName, type IoWork, type ReplySink } from './io.js';
import type { SequentialDetector } from './sequential.js';
import type { StripeSet } from './stripes.js';
import type { CounterBlock, CoordinatorCounter } from '../stats/counters.js';
import type { FlowBudget } from './flow.js';

const HANDSHAKE_TIMEOUT_MS = 30_000;
/** How long a connection we ended may keep sending before it is cut. */
const CLOSE_GRACE_MS = 2_000;
const MAX_INFLIGHT_REQUESTS = 512;
const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** Unsent reply bytes above which we stop reading requests until the client drains. */
const WRITE_BACKLOG_LIMIT = 8 * 1024 * 1024;
/** Extents one BLOCK_STATUS reply may carry (8 bytes each in the slab). */
const MAX_EXTENTS = 1024;

const enum Pause {
  INFLIGHT = 1,
  BACKLOG = 2,
  BUDGET = 4,
  DISC = 8,
}

export interface SessionContext {
  exp: ExportInfo;
  stripes: StripeSet;
  counters: CounterBlock<CoordinatorCounter>;
  flow: FlowBudget;
  log: Logger;
  /** Shared by the cache's sessions to rate-limit failure logging. */
  failures: { lastLogged: number; suppressed: number };
  /** Write-back mode: long sequential reads are marked so the stripes do not promote them. */
  sequential: SequentialDetector | null;
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
  readonly #sock: Socket;
  readonly #ctx: SessionContext;
  readonly #log: Logger;
  #optParser: OptionParser | null = new OptionParser();
  #reqParser: RequestParser | null = null;
  readonly #neg: Negotiation;
  #state: ExportState;
  #paused = 0;
  #inflight = 0;
  #inflightBytes = 0;
  #closed = false;
  #handshakeTimer: NodeJS.Timeout | null;
  #draining: (() => void) | null = null;
  #corked = false;
  readonly #uncork = (): void => {
    this.#corked = false;
    this.#sock.uncork();
  };

  constructor(id: number, sock: Socket, ctx: SessionContext) {
    this.id = id;
    this.#sock = sock;
    this.#ctx = ctx;
    this.#log = ctx.log.child({ conn: id });
    this.#state = { size: ctx.exp.size, readOnly: ctx.exp.readOnly, structuredReplies: false, metaContext: false };
    this.#neg = new Negotiation(ctx.exp, (buf) => this.#write(buf));
    this.#handshakeTimer = setTimeout(() => this.#abort('handshake timed out'), HANDSHAKE_TIMEOUT_MS);
    this.#handshakeTimer.unref();
    sock.on('data', (chunk: Buffer) => this.#onData(chunk));
    sock.on('drain', () => this.#unpause(Pause.BACKLOG));
    // A client hanging up with replies in flight is normal: drop what we still owe it.
    sock.on('error', (err) => this.#log.debug({ err }, 'connection error'));
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
        this.#reqParser = new RequestParser({ maxPayload: MAX_PAYLOAD, maxDrainable: MAX_DRAINABLE_PAYLOAD });
        if (rest.length > 0) {
          this.#reqParser.push(rest);
          this.#requests();
        }
        return;
      }
    }
  }

  #requests(): void {
    const parser = this.#reqParser!;
    while (this.#paused === 0 && !this.#closed) {
      const ev = parser.next();
      if (!ev) return;
      if (ev.kind === 'fatal') {
        this.#ctx.counters.add('protocol_errors', 1);
        this.#abort(ev.reason);
        return;
      }
      this.#request(ev.req);
    }
  }

  #request(req: NbdRequest): void {
    const c = this.#ctx.counters;
    const counter = REQ_COUNTER[req.type];
    c.add(counter ?? 'reqs_unknown', 1);
    if (req.type === Cmd.DISC) {
      this.#pause(Pause.DISC);
      this.#maybeEnd();
      return;
    }
    const st = this.#state;
    const errno = validateRequest(req, st);
    if (errno !== 0) {
      this.#replyNow(req, errno);
      return;
    }
    const type = req.type;
    const length = req.length;
    if (length === 0 && type !== Cmd.FLUSH) {
      this.#replyNow(req, 0);
      return;
    }
    const charge = type === Cmd.READ || type === Cmd.WRITE ? length : 0;
    const io = new Io(req, st.structuredReplies, charge, this);
    this.#inflight++;
    this.#inflightBytes += charge;
    this.#ctx.flow.acquire(charge);
    const stripes = this.#ctx.stripes;
    const fua = (req.flags & CmdFlag.FUA) !== 0 ? StripeFlag.FUA : 0;
    switch (type) {
      case Cmd.FLUSH: {
        // A FLUSH covers every write already replied to on any connection: ask every stripe.
        io.remaining = stripes.count;
        for (let s = 0; s < stripes.count; s++) this.#submit(io, StripeOp.FLUSH, 0, 0, 0, 0, 0, null, s);
        break;
      }
      case Cmd.BLOCK_STATUS: {
        // The reply may describe a prefix of the range; one subtree at a time keeps it cheap
        // and lets the owning stripe answer for its own subtree.
        const len = firstSubtreeLength(req.offset, length);
        const maxExtents = (req.flags & CmdFlag.REQ_ONE) !== 0 ? 1 : MAX_EXTENTS;
        io.remaining = 1;
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
        const pieces = splitRequest(req.offset, length, stripes.count);
        io.remaining = pieces.length;
        if (pieces.length > 1) this.#ctx.counters.add('split_pieces', pieces.length);
        const payload = type === Cmd.WRITE ? req.payload : null;
        const withSlab = type === Cmd.READ || type === Cmd.WRITE;
        for (const p of pieces) {
          this.#submit(io, op, flags, p.offset, p.length, p.delta, withSlab ? p.length : 0,
            payload ? payload.subarray(p.delta, p.delta + p.length) : null, p.stripe);
        }
      }
    }
    if (this.#inflight >= MAX_INFLIGHT_REQUESTS || this.#inflightBytes >= MAX_INFLIGHT_BYTES) this.#pause(Pause.INFLIGHT);
    if (this.#ctx.flow.over) {
      this.#pause(Pause.BUDGET);
      this.#ctx.flow.wait(() => this.#unpause(Pause.BUDGET));
    }
  }

  #submit(io: Io, op: StripeOp, flags: number, offset: number, length: number, delta: number,
    slabBytes: number, payload: Uint8Array | null, stripe: number): void {
    const work: IoWork = { op, flags, offset, length, slabBytes, payload, onDone: Io.onPieceDone, slabOff: 0, ring: null, io, delta };
    io.works.push(work);
    this.#ctx.stripes.submit(work, stripe);
  }

  /** Reply without touching a stripe (validation errors, zero-length requests). */
  #replyNow(req: NbdRequest, errno: number): void {
    if (errno !== 0) this.#countError(errno);
    this.writeReply([errorReply({ ...req, structured: this.#state.structuredReplies }, errno, errno === 0 ? '' : 'request rejected')]);
  }

  #countError(errno: number): void {
    const c = this.#ctx.counters;
    c.add('errors', 1);
    const name = ERR_COUNTER[errno];
    if (name) c.add(name, 1);
  }

  writeReply(bufs: Buffer<ArrayBufferLike>[], done?: () => void): void {
    if (this.#closed || this.#sock.destroyed) {
      done?.();
      return;
    }
    const sock = this.#sock;
    // Every reply produced in this turn of the event loop (a whole completion batch) leaves
    // in one writev: one syscall instead of one per reply.
    if (!this.#corked) {
      this.#corked = true;
      sock.cork();
      queueMicrotask(this.#uncork);
    }
    for (let i = 0; i < bufs.length - 1; i++) sock.write(bufs[i]!);
    sock.write(bufs[bufs.length - 1]!, done);
    if (sock.writableLength > WRITE_BACKLOG_LIMIT) this.#pause(Pause.BACKLOG);
  }

  completed(io: Io): void {
    const c = this.#ctx.counters;
    if (io.errno !== 0) this.#countError(io.errno);
    else if (io.type === Cmd.READ) c.add('bytes_read', io.length);
    else if (io.type === Cmd.WRITE) c.add('bytes_written', io.length);
    else if (io.type === Cmd.TRIM) c.add('bytes_trimmed', io.length);
    else if (io.type === Cmd.WRITE_ZEROES) c.add('bytes_zeroed', io.length);
    if (io.errno !== 0 && io.errno !== NbdErr.ENOTSUP) this.#logFailure(io);
    this.#inflight--;
    this.#inflightBytes -= io.charge;
    this.#ctx.flow.release(io.charge);
    if (this.#inflight < MAX_INFLIGHT_REQUESTS / 2 && this.#inflightBytes < MAX_INFLIGHT_BYTES / 2) this.#unpause(Pause.INFLIGHT);
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
    }
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
   * half-open. A reading one (the handshake ended) keeps discarding what the client still sends,
   * so the client sees a clean EOF rather than a reset, but only for a bounded grace period.
   */
  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    const sock = this.#sock;
    if (this.#paused !== 0) {
      sock.end(() => sock.destroy());
      return;
    }
    sock.end();
    setTimeout(() => sock.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** Drop the connection now (shutdown drain timed out). */
  destroy(): void {
    this.#closed = true;
    this.#sock.destroy();
  }

  #onClose(): void {
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    this.#closed = true;
    this.#ctx.closed(this);
  }
}
