// The control socket: a Unix stream socket carrying frames of [u32 BE payload length][msgpackr
// payload]. One request frame gets one response frame with the same id; a connection may carry
// several requests, answered in any order. Anything that does not decode closes that connection
// only; the server keeps serving the others.

import { unlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { Packr } from 'msgpackr';
import type { ControlRequest, ControlResponse } from './ipc.js';
import type { Logger } from './logger.js';
import { PcachedError, isPcachedError } from '../util/errors.js';
import type { PcachedErrorCode } from '../util/errors.js';
import { claimUnixSocketPath, listenUnixSocket, type SocketAccess } from '../util/unix-socket.js';

/** Payload bytes; the length word itself is not counted. */
export const MAX_CONTROL_FRAME = 1024 * 1024;
const HEADER = 4;
/** Requests one connection may have unanswered; a client that floods gets disconnected. */
const MAX_PENDING_PER_CONNECTION = 32;

// Records would make frames depend on per-connection state; plain maps keep every frame standalone.
const packr = new Packr({ useRecords: false });

export function encodeFrame(message: unknown): Buffer {
  const payload = packr.pack(message);
  if (payload.length > MAX_CONTROL_FRAME) {
    throw new PcachedError('ERR_PROTOCOL', `control frame of ${payload.length} bytes exceeds the ${MAX_CONTROL_FRAME}-byte limit`);
  }
  const frame = Buffer.allocUnsafe(HEADER + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  payload.copy(frame, HEADER);
  return frame;
}

/**
 * Reassembles frames from stream chunks. Keeps a list of chunks instead of concatenating on every
 * push, and rejects an oversize length as soon as the header is in, before buffering any of it.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;

  /** Returns the messages completed by this chunk; throws ERR_PROTOCOL on a bad frame. */
  push(chunk: Buffer): unknown[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.#buffered < HEADER) return out;
      const length = this.#peekLength();
      if (length === 0 || length > MAX_CONTROL_FRAME) {
        throw new PcachedError('ERR_PROTOCOL', `bad control frame length ${length} (1 to ${MAX_CONTROL_FRAME} bytes)`);
      }
      if (this.#buffered < HEADER + length) return out;
      const frame = this.#take(HEADER + length);
      try {
        out.push(packr.unpack(frame.subarray(HEADER)));
      } catch (err) {
        throw new PcachedError('ERR_PROTOCOL', `undecodable control frame: ${(err as Error).message}`, { cause: err });
      }
    }
  }

  get bufferedBytes(): number {
    return this.#buffered;
  }

  #peekLength(): number {
    const first = this.#chunks[0] as Buffer;
    if (first.length >= HEADER) return first.readUInt32BE(0);
    this.#chunks = [Buffer.concat(this.#chunks)];
    return (this.#chunks[0] as Buffer).readUInt32BE(0);
  }

  #take(n: number): Buffer {
    const all = this.#chunks.length === 1 ? (this.#chunks[0] as Buffer) : Buffer.concat(this.#chunks);
    const frame = all.subarray(0, n);
    const rest = all.subarray(n);
    this.#chunks = rest.length ? [rest] : [];
    this.#buffered = rest.length;
    return frame;
  }
}

const OPS = new Set(['ping', 'status', 'table', 'message', 'reload']);

/** Checks a decoded frame is a ControlRequest; copies only the known fields. */
export function parseControlRequest(x: unknown): ControlRequest | { id: number; invalid: string } | undefined {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) return undefined;
  const r = x as Record<string, unknown>;
  if (typeof r.id !== 'number' || !Number.isSafeInteger(r.id)) return undefined;
  const id = r.id;
  if (typeof r.op !== 'string' || !OPS.has(r.op)) return { id, invalid: `unknown control operation ${JSON.stringify(r.op)}` };
  switch (r.op) {
    case 'ping':
    case 'reload':
      return { id, op: r.op };
    case 'status':
      if (r.name !== undefined && typeof r.name !== 'string') return { id, invalid: 'status: name must be a string' };
      return r.name === undefined ? { id, op: 'status' } : { id, op: 'status', name: r.name };
    case 'table':
      if (typeof r.name !== 'string') return { id, invalid: 'table: name must be a string' };
      return { id, op: 'table', name: r.name };
    default:
      if (typeof r.name !== 'string') return { id, invalid: 'message: name must be a string' };
      if (!Array.isArray(r.words) || r.words.length === 0 || !r.words.every((w) => typeof w === 'string')) {
        return { id, invalid: 'message: words must be a non-empty list of strings' };
      }
      return { id, op: 'message', name: r.name, words: r.words as string[] };
  }
}

export type ControlHandler = (request: ControlRequest) => Promise<unknown>;

export class ControlServer {
  readonly path: string;
  readonly #handler: ControlHandler;
  readonly #logger: Logger | undefined;
  readonly #access: SocketAccess;
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();

  /** `access`: the socket file's mode and group (default 0600, the process's group). */
  constructor(opts: { path: string; handler: ControlHandler; logger?: Logger; access?: SocketAccess }) {
    this.path = opts.path;
    this.#access = opts.access ?? { mode: 0o600, gid: null };
    this.#handler = opts.handler;
    this.#logger = opts.logger;
  }

  async listen(): Promise<void> {
    await claimUnixSocketPath(this.path);
    const server = createServer((socket) => this.#serve(socket));
    // The socket controls the daemon: it appears with its final mode (only the owner, by default).
    await listenUnixSocket(server, this.path, this.#access);
    server.on('error', (err) => this.#logger?.error({ err }, 'control socket error'));
    this.#server = server;
  }

  /** Stops accepting, drops open connections, removes the socket file. */
  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone (net.Server removes it on close on some platforms).
    }
  }

  #serve(socket: Socket): void {
    this.#sockets.add(socket);
    const decoder = new FrameDecoder();
    let pending = 0;
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const reply = (response: ControlResponse): void => {
      if (socket.destroyed) return;
      let frame: Buffer;
      try {
        frame = encodeFrame(response);
      } catch (err) {
        frame = encodeFrame({ id: response.id, ok: false, error: errorPayload(err) });
      }
      socket.write(frame);
    };
    socket.on('data', (chunk: Buffer) => {
      let messages: unknown[];
      try {
        messages = decoder.push(chunk);
      } catch (err) {
        this.#logger?.warn({ err: (err as Error).message }, 'control connection closed: bad frame');
        socket.destroy();
        return;
      }
      for (const m of messages) {
        const request = parseControlRequest(m);
        if (request === undefined) {
          this.#logger?.warn('control connection closed: frame is not a request');
          socket.destroy();
          return;
        }
        if ('invalid' in request) {
          reply({ id: request.id, ok: false, error: { code: 'ERR_PROTOCOL', message: request.invalid } });
          continue;
        }
        if (++pending > MAX_PENDING_PER_CONNECTION) {
          this.#logger?.warn('control connection closed: too many requests in flight');
          socket.destroy();
          return;
        }
        this.#handler(request).then(
          (result) => reply({ id: request.id, ok: true, result: result ?? null }),
          (err: unknown) => reply({ id: request.id, ok: false, error: errorPayload(err) }),
        ).finally(() => pending--);
      }
    });
  }
}

function errorPayload(err: unknown): { code: string; message: string } {
  if (isPcachedError(err)) return { code: err.code, message: err.message };
  return { code: 'ERR_CONTROL', message: err instanceof Error ? err.message : String(err) };
}

const KNOWN_CODES = new Set<string>([
  'ERR_CONFIG', 'ERR_CONFIG_RELOAD_REJECTED', 'ERR_ORIGIN', 'ERR_ORIGIN_TIMEOUT', 'ERR_CACHE_FILE', 'ERR_LISTEN',
  'ERR_SOCKET_IN_USE', 'ERR_UNKNOWN_CACHE', 'ERR_UNKNOWN_MESSAGE', 'ERR_BAD_ARGUMENT', 'ERR_CONTROL',
  'ERR_NOT_RUNNING', 'ERR_PROTOCOL', 'ERR_SHUTDOWN', 'ERR_COORDINATOR', 'ERR_IN_USE', 'ERR_CACHE_DIRTY',
] satisfies PcachedErrorCode[]);

/** Turns a code that crossed a process boundary back into a PcachedError. */
export function toPcachedError(error: { code: string; message: string }): PcachedError {
  const code = (KNOWN_CODES.has(error.code) ? error.code : 'ERR_CONTROL') as PcachedErrorCode;
  return new PcachedError(code, error.message);
}

let nextRequestId = 1;

/** Request body without the id; the client numbers its requests. */
export type ControlCall =
  | { op: 'ping' }
  | { op: 'status'; name?: string }
  | { op: 'table'; name: string }
  | { op: 'message'; name: string; words: string[] }
  | { op: 'reload' };

/**
 * One request over a fresh connection. Resolves with the result; rejects with the daemon's error
 * code, or ERR_NOT_RUNNING when nothing listens on `path`.
 */
export function controlRequest(path: string, call: ControlCall, opts: { timeoutMs?: number } = {}): Promise<unknown> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const id = nextRequestId++;
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    const decoder = new FrameDecoder();
    let settled = false;
    const finish = (err: Error | undefined, value?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => finish(new PcachedError('ERR_CONTROL', `no answer from the daemon on ${path} within ${timeoutMs} ms`)), timeoutMs);
    socket.once('connect', () => socket.write(encodeFrame({ id, ...call })));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED' || err.code === 'ENOTSOCK') {
        finish(new PcachedError('ERR_NOT_RUNNING', `no daemon listening on ${path} (is \`pcached start\` running?)`, { cause: err }));
      } else {
        finish(new PcachedError('ERR_CONTROL', `control socket ${path}: ${err.message}`, { cause: err }));
      }
    });
    socket.on('data', (chunk: Buffer) => {
      let messages: unknown[];
      try {
        messages = decoder.push(chunk);
      } catch (err) {
        finish(err as Error);
        return;
      }
      for (const m of messages) {
        const r = m as ControlResponse;
        if (typeof r !== 'object' || r === null || r.id !== id) continue;
        if (r.ok) finish(undefined, r.result);
        else finish(toPcachedError(r.error ?? { code: 'ERR_CONTROL', message: 'malformed error response' }));
      }
    });
    socket.on('close', () => finish(new PcachedError('ERR_CONTROL', `the daemon closed the control connection on ${path} without an answer`)));
  });
}
