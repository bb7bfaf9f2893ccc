// An NBD server in the test process with a volatile write cache, built from our own server codec:
// writes are visible at once but durable only after a FLUSH (or with FUA); `crash()` drops every
// connection and loses what was not flushed (a power cut of the remote); `failFlushes(n)` makes
// the next n FLUSHes fail with EIO and drop what they were to write (Linux after a writeback
// error); `holdFlushes` leaves FLUSHes unanswered until the connection goes. It logs every request
// with the number of the connection it came on. Listens on a Unix socket only.

import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Cmd, CmdFlag, NbdErr, Opt, Rep, TxFlag, cmdName } from '../../src/nbd/constants.js';
import { encodeGreeting, OptionParser, encodeOptionReply, encodeOptionError, encodeInfoExport } from '../../src/nbd/handshake.js';
import { RequestParser, encodeSimpleReply } from '../../src/nbd/transmission.js';
import { makeTempDir } from './nbdkit.js';

export const VOLATILE_TX_FLAGS = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_FUA | TxFlag.SEND_TRIM
  | TxFlag.SEND_WRITE_ZEROES | TxFlag.CAN_MULTI_CONN;

export class VolatileNbdServer {
  /** What reads return. */
  readonly visible: Buffer;
  /** What survives crash(). */
  readonly durable: Buffer;
  /** `C<n> <COMMAND>[+FUA] <offset> <length>` per request, in arrival order. */
  readonly log: string[] = [];
  /** FLUSHes are left unanswered (until the connection closes). */
  holdFlushes = false;
  /** Requests received and not yet answered because of holdFlushes. */
  held = 0;
  connections = 0;
  readonly uri: string;
  #dirty: [number, number][] = [];
  #failFlushes = 0;
  readonly #socks = new Set<Socket>();
  readonly #server: Server;
  readonly #cleanup: () => void;

  private constructor(readonly size: number, readonly txFlags: number) {
    this.visible = Buffer.alloc(size);
    this.durable = Buffer.alloc(size);
    const { dir, cleanup } = makeTempDir();
    this.#cleanup = cleanup;
    const path = join(dir, 'volatile.sock');
    this.uri = `nbd+unix:///?socket=${path}`;
    this.#server = createServer((sock) => this.#serve(sock));
    this.#server.listen(path);
  }

  static async start(size: number, txFlags = VOLATILE_TX_FLAGS): Promise<VolatileNbdServer> {
    const s = new VolatileNbdServer(size, txFlags);
    await new Promise<void>((resolve) => (s.#server.listening ? resolve() : s.#server.once('listening', () => resolve())));
    return s;
  }

  /** Power cut of the remote: every connection dropped, everything not flushed lost. */
  crash(): void {
    this.dropConnections();
    for (const [off, len] of this.#dirty) this.durable.copy(this.visible, off, off, off + len);
    this.#dirty = [];
  }

  /** The connections go (a network failure); the server and its cache stay. */
  dropConnections(): void {
    for (const s of this.#socks) s.destroy();
    this.#socks.clear();
    this.held = 0;
  }

  /** The next n FLUSHes fail with EIO, and what they were to write is lost. */
  failFlushes(n: number): void {
    this.#failFlushes = n;
  }

  /** Requests of one command (as logged: 'WRITE', 'FLUSH', ...) per connection number. */
  countsByConnection(command: string): Map<number, number> {
    const m = new Map<number, number>();
    for (const line of this.log) {
      const [conn, cmd] = line.split(' ');
      if (cmd!.replace('+FUA', '') !== command) continue;
      const n = Number(conn!.slice(1));
      m.set(n, (m.get(n) ?? 0) + 1);
    }
    return m;
  }

  async close(): Promise<void> {
    this.dropConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#cleanup();
  }

  #serve(sock: Socket): void {
    const id = ++this.connections;
    this.#socks.add(sock);
    sock.on('close', () => this.#socks.delete(sock));
    sock.on('error', () => {});
    sock.write(encodeGreeting());
    const opt = new OptionParser();
    let reqs: RequestParser | null = null;
    sock.on('data', (received: Buffer) => {
      let chunk: Buffer = received;
      if (reqs === null) {
        opt.push(chunk);
        for (let ev = opt.next(); ev !== null && reqs === null; ev = reqs === null ? opt.next() : null) {
          if (ev.kind !== 'option') continue;
          if (ev.option !== Opt.GO) {
            sock.write(encodeOptionError(ev.option, Rep.ERR_UNSUP, 'only GO'));
            continue;
          }
          sock.write(encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoExport(this.size, this.txFlags)));
          sock.write(encodeOptionReply(Opt.GO, Rep.ACK));
          reqs = new RequestParser();
          chunk = opt.takeRemainder();
        }
        if (reqs === null) return;
      }
      reqs.push(chunk);
      for (let ev = reqs.next(); ev !== null; ev = reqs.next()) {
        if (ev.kind === 'fatal') return void sock.destroy();
        const r = ev.req;
        const fua = (r.flags & CmdFlag.FUA) !== 0;
        this.log.push(`C${id} ${cmdName(r.type)}${fua ? '+FUA' : ''} ${r.offset} ${r.length}`);
        let error = 0;
        switch (r.type) {
          case Cmd.DISC:
            return void sock.end();
          case Cmd.WRITE:
            r.payload!.copy(this.visible, r.offset);
            this.#changed(r.offset, r.length, fua);
            break;
          case Cmd.TRIM:
          case Cmd.WRITE_ZEROES:
            this.visible.fill(0, r.offset, r.offset + r.length);
            this.#changed(r.offset, r.length, fua);
            break;
          case Cmd.FLUSH:
            if (this.holdFlushes) {
              this.held++;
              continue;
            }
            error = this.#flush();
            break;
          default:
            break;
        }
        sock.write(encodeSimpleReply(error, r.cookieHi, r.cookieLo));
        if (r.type === Cmd.READ) sock.write(this.visible.subarray(r.offset, r.offset + r.length));
      }
    });
  }

  #changed(off: number, len: number, fua: boolean): void {
    if (fua) this.visible.copy(this.durable, off, off, off + len);
    else this.#dirty.push([off, len]);
  }

  #flush(): number {
    const dirty = this.#dirty;
    this.#dirty = [];
    if (this.#failFlushes > 0) {
      this.#failFlushes--;
      for (const [off, len] of dirty) this.durable.copy(this.visible, off, off, off + len);
      return NbdErr.EIO;
    }
    for (const [off, len] of dirty) this.visible.copy(this.durable, off, off, off + len);
    return 0;
  }
}
