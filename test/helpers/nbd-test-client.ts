// A pipelining NBD client for tests that need thousands of requests fast (the stamped-write
// driver): the project's client codec (src/nbd/client.ts: handshake, request encoder, reply
// parser) over one Unix socket. Every request resolves with its outcome, never rejects: 0, the NBD
// error number, or LOST when the connection ended before the reply (the server died).

import { connect, type Socket } from 'node:net';
import { ClientHandshake, ReplyParser, writeRequestHeader } from '../../src/nbd/client.js';
import { Cmd, REQUEST_HEADER_SIZE } from '../../src/nbd/constants.js';

/** The reply never came: the connection closed first. */
export const LOST = -1;

interface Pending {
  resolve(r: { errno: number; data: Buffer | null }): void;
  /** READ: where the data goes. */
  dst: Buffer | null;
}

export class NbdTestClient {
  readonly size: number;
  readonly txFlags: number;
  readonly #sock: Socket;
  readonly #pending = new Map<number, Pending>();
  readonly #parser: ReplyParser;
  #cookie = 1;
  #closed = false;

  private constructor(sock: Socket, size: number, txFlags: number, remainder: Buffer) {
    this.#sock = sock;
    this.size = size;
    this.txFlags = txFlags;
    this.#parser = new ReplyParser((_hi, lo) => {
      const p = this.#pending.get(lo);
      if (p === undefined) return -1;
      return p.dst ?? 0;
    });
    sock.on('data', (chunk: Buffer) => this.#onData(chunk));
    sock.on('error', () => {});
    sock.on('close', () => this.#onClose());
    if (remainder.length > 0) this.#onData(remainder);
  }

  /** Connects to `socketPath` and negotiates `exportName`; rejects with the reason on failure. */
  static connect(socketPath: string, exportName: string, timeoutMs = 10_000): Promise<NbdTestClient> {
    return new Promise((resolve, reject) => {
      const sock = connect({ path: socketPath });
      const hs = new ClientHandshake(exportName);
      const timer = setTimeout(() => { sock.destroy(); reject(new Error(`no NBD handshake on ${socketPath} within ${timeoutMs} ms`)); }, timeoutMs);
      const fail = (why: string): void => {
        clearTimeout(timer);
        sock.destroy();
        reject(new Error(`NBD handshake on ${socketPath}: ${why}`));
      };
      const onData = (chunk: Buffer): void => {
        hs.push(chunk);
        for (let step = hs.next(); step; step = hs.next()) {
          if (step.kind === 'send') sock.write(step.bytes);
          else if (step.kind === 'fatal') return fail(step.reason);
          else {
            clearTimeout(timer);
            sock.off('data', onData).off('error', onError).off('close', onClose);
            resolve(new NbdTestClient(sock, step.export.size, step.export.txFlags, step.remainder));
            return;
          }
        }
      };
      const onError = (err: Error): void => fail(err.message);
      const onClose = (): void => fail('connection closed');
      sock.on('data', onData).on('error', onError).on('close', onClose);
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<number> {
    return this.#send(Cmd.WRITE, flags, offset, data.length, data, null).then((r) => r.errno);
  }

  flush(): Promise<number> {
    return this.#send(Cmd.FLUSH, 0, 0, 0, null, null).then((r) => r.errno);
  }

  read(offset: number, length: number): Promise<{ errno: number; data: Buffer | null }> {
    return this.#send(Cmd.READ, 0, offset, length, null, Buffer.allocUnsafe(length));
  }

  /** NBD_CMD_DISC, then wait for the server to close (at most graceMs). */
  async disconnect(graceMs = 5_000): Promise<void> {
    if (this.#closed) return;
    const closed = new Promise<void>((r) => this.#sock.once('close', () => r()));
    const disc = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
    writeRequestHeader(disc, 0, 0, Cmd.DISC, 0, 0, 0, 0);
    this.#sock.end(disc);
    const timer = setTimeout(() => this.#sock.destroy(), graceMs);
    await closed;
    clearTimeout(timer);
  }

  destroy(): void {
    this.#sock.destroy();
  }

  #send(type: number, flags: number, offset: number, length: number, payload: Uint8Array | null, dst: Buffer | null): Promise<{ errno: number; data: Buffer | null }> {
    if (this.#closed) return Promise.resolve({ errno: LOST, data: null });
    const cookie = this.#cookie;
    this.#cookie = (this.#cookie + 1) >>> 0 || 1;
    return new Promise((resolve) => {
      this.#pending.set(cookie, { resolve, dst });
      const header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
      writeRequestHeader(header, 0, flags, type, 0, cookie, offset, length);
      this.#sock.write(header);
      if (payload) this.#sock.write(payload);
    });
  }

  #onData(chunk: Buffer): void {
    this.#parser.push(chunk);
    for (let ev = this.#parser.next(); ev; ev = this.#parser.next()) {
      if (ev.kind !== 'simple') {
        // A structured reply was never negotiated, a bad magic cannot be resynchronised.
        this.#sock.destroy();
        return;
      }
      const p = this.#pending.get(ev.cookieLo);
      if (!p) continue;
      this.#pending.delete(ev.cookieLo);
      p.resolve({ errno: ev.error, data: ev.error === 0 ? p.dst : null });
    }
  }

  #onClose(): void {
    this.#closed = true;
    for (const p of this.#pending.values()) p.resolve({ errno: LOST, data: null });
    this.#pending.clear();
  }
}
