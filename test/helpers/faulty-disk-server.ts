// The NBD side of the faulty disk: one export over Unix sockets, fixed newstyle, simple replies,
// built on the project's pure codec (src/nbd/) and nothing of the coordinator. Every connection
// shares one VolatileDisk (multi-conn is advertised truthfully: a FLUSH on any connection covers
// writes completed on all of them).
//
// Latency is per request: each one waits on its own timer, so requests in flight overlap like they
// do on a disk with a queue. A client may hang up at any moment, with requests in flight, or send
// garbage: its connection ends, its owed replies are dropped, and the server keeps serving.

import { createServer, type Server, type Socket } from 'node:net';
import {
  Opt, Rep, Info, ClientFlag, TxFlag, Cmd, CmdFlag, NbdErr, MAX_PAYLOAD, MAX_DRAINABLE_PAYLOAD, MAX_OPTIONS, MIN_BLOCK, PREFERRED_BLOCK,
} from '../../src/nbd/constants.js';
import {
  OptionParser, encodeGreeting, encodeOptionReply, encodeOptionError, encodeInfoExport, encodeInfoName, encodeInfoBlockSize,
  encodeServerEntry, encodeExportNameReply, parseInfoRequest,
} from '../../src/nbd/handshake.js';
import { RequestParser, encodeSimpleReply, type NbdRequest } from '../../src/nbd/transmission.js';
import type { VolatileDisk } from './faulty-disk-store.js';

export const TX_FLAGS = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.CAN_MULTI_CONN;
/** Unsent reply bytes past which a connection stops reading until its client catches up. */
const REPLY_BACKLOG = 64 << 20;
const HANDSHAKE_TIMEOUT_MS = 30_000;

export interface ServerStats {
  connections: number;
  connectionsTotal: number;
  inFlight: number;
  maxInFlight: number;
  protocolErrors: number;
}

export class FaultyNbdServer {
  readonly stats: ServerStats = { connections: 0, connectionsTotal: 0, inFlight: 0, maxInFlight: 0, protocolErrors: 0 };
  readonly #disk: VolatileDisk;
  readonly #exportName: string;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  constructor(disk: VolatileDisk, exportName: string) {
    this.#disk = disk;
    this.#exportName = exportName;
    this.#server = createServer((sock) => this.#accept(sock));
  }

  listen(path: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(path, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #accept(sock: Socket): void {
    this.stats.connections++;
    this.stats.connectionsTotal++;
    this.#sockets.add(sock);
    sock.on('close', () => {
      this.stats.connections--;
      this.#sockets.delete(sock);
    });
    new Connection(sock, this.#disk, this.#exportName, this.stats);
  }
}

class Connection {
  readonly #sock: Socket;
  readonly #disk: VolatileDisk;
  readonly #exportName: string;
  readonly #stats: ServerStats;
  #options: OptionParser | null = new OptionParser();
  #requests: RequestParser | null = null;
  #fixed = false;
  #noZeroes = false;
  #optionCount = 0;
  #inFlight = 0;
  #disconnecting = false;
  #closed = false;
  #handshakeTimer: NodeJS.Timeout | null;

  constructor(sock: Socket, disk: VolatileDisk, exportName: string, stats: ServerStats) {
    this.#sock = sock;
    this.#disk = disk;
    this.#exportName = exportName;
    this.#stats = stats;
    // A client that hangs up is normal here (a power cut of the client): nothing to report.
    sock.on('error', () => {});
    sock.on('close', () => { this.#closed = true; });
    sock.on('data', (chunk: Buffer) => this.#onData(chunk));
    sock.on('drain', () => sock.resume());
    this.#handshakeTimer = setTimeout(() => sock.destroy(), HANDSHAKE_TIMEOUT_MS);
    this.#handshakeTimer.unref();
    sock.write(encodeGreeting());
  }

  #onData(chunk: Buffer): void {
    if (this.#closed) return;
    if (this.#options) {
      this.#options.push(chunk);
      this.#haggle();
    } else if (this.#requests) {
      this.#requests.push(chunk);
      this.#transmit();
    }
  }

  #end(reason: 'protocol' | 'normal'): void {
    if (reason === 'protocol') this.#stats.protocolErrors++;
    this.#closed = true;
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    this.#sock.destroy();
  }

  #haggle(): void {
    const parser = this.#options!;
    for (let ev = parser.next(); ev; ev = parser.next()) {
      if (ev.kind === 'fatal') return this.#end('protocol');
      if (ev.kind === 'clientFlags') {
        if ((ev.flags & ~(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)) !== 0) return this.#end('protocol');
        this.#fixed = (ev.flags & ClientFlag.C_FIXED_NEWSTYLE) !== 0;
        this.#noZeroes = (ev.flags & ClientFlag.C_NO_ZEROES) !== 0;
        continue;
      }
      if (++this.#optionCount > MAX_OPTIONS) return this.#end('protocol');
      if (this.#option(ev.option, ev.data) === 'transmission') {
        if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
        this.#handshakeTimer = null;
        const rest = parser.takeRemainder();
        this.#options = null;
        this.#requests = new RequestParser({ maxPayload: MAX_PAYLOAD, maxDrainable: MAX_DRAINABLE_PAYLOAD });
        if (rest.length > 0) {
          this.#requests.push(rest);
          this.#transmit();
        }
        return;
      }
      if (this.#closed) return;
    }
  }

  #ours(name: string): boolean {
    return name === '' || name === this.#exportName;
  }

  #option(option: number, data: Buffer): 'continue' | 'transmission' {
    const send = (b: Buffer): void => { this.#sock.write(b); };
    if (option === Opt.EXPORT_NAME) {
      // No error reply exists for EXPORT_NAME: an unknown name is answered by hanging up.
      if (!this.#ours(data.toString('utf8'))) {
        this.#end('normal');
        return 'continue';
      }
      send(encodeExportNameReply(this.#disk.size, TX_FLAGS, this.#noZeroes));
      return 'transmission';
    }
    if (!this.#fixed) {
      send(encodeOptionError(option, Rep.ERR_INVALID, 'fixed newstyle was not negotiated'));
      return 'continue';
    }
    switch (option) {
      case Opt.ABORT:
        send(encodeOptionReply(option, Rep.ACK));
        this.#sock.end();
        this.#closed = true;
        return 'continue';
      case Opt.LIST:
        send(encodeOptionReply(option, Rep.SERVER, encodeServerEntry(this.#exportName, 'faulty test disk')));
        send(encodeOptionReply(option, Rep.ACK));
        return 'continue';
      case Opt.INFO:
      case Opt.GO: {
        const req = parseInfoRequest(data);
        if ('error' in req) {
          send(encodeOptionError(option, Rep.ERR_INVALID, req.error));
          return 'continue';
        }
        if (!this.#ours(req.name)) {
          send(encodeOptionError(option, Rep.ERR_UNKNOWN, `no export named ${JSON.stringify(req.name)}`));
          return 'continue';
        }
        send(encodeOptionReply(option, Rep.INFO, encodeInfoExport(this.#disk.size, TX_FLAGS)));
        if (req.infos.includes(Info.NAME)) send(encodeOptionReply(option, Rep.INFO, encodeInfoName(this.#exportName)));
        if (req.infos.includes(Info.BLOCK_SIZE)) send(encodeOptionReply(option, Rep.INFO, encodeInfoBlockSize(MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD)));
        send(encodeOptionReply(option, Rep.ACK));
        return option === Opt.GO ? 'transmission' : 'continue';
      }
      default:
        // Structured replies, meta contexts, TLS: a simple disk does without (clients fall back).
        send(encodeOptionError(option, Rep.ERR_UNSUP, `option ${option} is not supported by the faulty disk`));
        return 'continue';
    }
  }

  #transmit(): void {
    const parser = this.#requests!;
    while (!this.#closed && !this.#disconnecting) {
      const ev = parser.next();
      if (!ev) return;
      if (ev.kind === 'fatal') return this.#end('protocol');
      this.#request(ev.req);
    }
  }

  /** nbdkit's order: command, flags, range, size; errors are replied at once. */
  #validate(req: NbdRequest): number {
    const { type, flags, offset, length } = req;
    const known = type === Cmd.READ || type === Cmd.WRITE || type === Cmd.FLUSH || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
    if (!known) return NbdErr.EINVAL;
    const allowed = type === Cmd.WRITE || type === Cmd.TRIM ? CmdFlag.FUA : type === Cmd.WRITE_ZEROES ? CmdFlag.FUA | CmdFlag.NO_HOLE : 0;
    if ((flags & ~allowed) !== 0) return NbdErr.EINVAL;
    if (type === Cmd.FLUSH) return offset === 0 && length === 0 ? 0 : NbdErr.EINVAL;
    if (offset + length > this.#disk.size) return type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? NbdErr.ENOSPC : NbdErr.EINVAL;
    if (req.payloadDropped || (type === Cmd.READ && length > MAX_PAYLOAD)) return NbdErr.EINVAL;
    return 0;
  }

  #request(req: NbdRequest): void {
    if (req.type === Cmd.DISC) {
      this.#disconnecting = true;
      this.#maybeFinishDisc();
      return;
    }
    const errno = this.#validate(req);
    if (errno !== 0) return this.#reply(req, errno, null);
    const delay = req.type === Cmd.READ ? this.#disk.faults.readLatencyMs : this.#disk.faults.writeLatencyMs;
    this.#inFlight++;
    const st = this.#stats;
    st.inFlight++;
    if (st.inFlight > st.maxInFlight) st.maxInFlight = st.inFlight;
    // The payload may be a view of a socket chunk: keep our own copy while we wait.
    const payload = delay > 0 && req.payload ? Buffer.from(req.payload) : req.payload;
    if (delay > 0) setTimeout(() => this.#execute(req, payload), delay);
    else this.#execute(req, payload);
  }

  #execute(req: NbdRequest, payload: Buffer | null): void {
    const disk = this.#disk;
    const fua = (req.flags & CmdFlag.FUA) !== 0;
    let errno = 0;
    let data: Buffer | null = null;
    // A request the client will never see answered still reaches the disk: it was sent.
    switch (req.type) {
      case Cmd.READ: {
        const r = disk.read(req.offset, req.length);
        errno = r.errno;
        data = r.data ?? null;
        break;
      }
      case Cmd.WRITE:
        errno = disk.write(req.offset, payload ?? Buffer.alloc(0), fua);
        break;
      case Cmd.FLUSH:
        errno = disk.flush();
        break;
      case Cmd.TRIM:
        errno = disk.zero(req.offset, req.length, fua, 'trim');
        break;
      case Cmd.WRITE_ZEROES:
        errno = disk.zero(req.offset, req.length, fua, 'zero');
        break;
    }
    this.#inFlight--;
    this.#stats.inFlight--;
    this.#reply(req, errno, data);
    this.#maybeFinishDisc();
  }

  #reply(req: NbdRequest, errno: number, data: Buffer | null): void {
    if (this.#closed || this.#sock.destroyed) return;
    const header = encodeSimpleReply(errno, req.cookieHi, req.cookieLo);
    this.#sock.write(errno === 0 && data ? Buffer.concat([header, data]) : header);
    if (this.#sock.writableLength > REPLY_BACKLOG) this.#sock.pause();
  }

  #maybeFinishDisc(): void {
    if (this.#disconnecting && this.#inFlight === 0 && !this.#closed) {
      this.#closed = true;
      this.#sock.end();
    }
  }
}
