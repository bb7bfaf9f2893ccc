// A tiny raw-socket NBD client for hostile-client tests: exact bytes, no library second-guessing.
// Deliberately independent of src/nbd/ so it checks the daemon against the spec, not against itself.

import { connect, type Socket } from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_GO = 7;
export const REP_ACK = 1;
export const REP_INFO = 3;
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;

/** A connected socket with an exact-length reader. */
export class RawConn {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | null = null;
  closed = false;
  error: Error | null = null;

  private constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.wake();
    });
    sock.on('error', (e) => { this.error = e; this.wake(); });
    sock.on('close', () => { this.closed = true; this.wake(); });
  }

  static open(path: string, timeoutMs = 10_000): Promise<RawConn> {
    return new Promise((res, rej) => {
      const s = connect({ path });
      const timer = setTimeout(() => { s.destroy(); rej(new Error(`connect ${path}: timeout`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(timer); res(new RawConn(s)); });
      s.once('error', (e) => { clearTimeout(timer); rej(e); });
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Read exactly n bytes; rejects on close/error/timeout. */
  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.closed || this.error) {
        throw new Error(`connection ${this.error ? `error (${this.error.message})` : 'closed'} ` +
          `with ${this.buffered}/${n} bytes read`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.buffered})`);
      await new Promise<void>((res) => {
        const timer = setTimeout(res, left);
        this.waiter = () => { clearTimeout(timer); res(); };
      });
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.buffered = all.length - n;
    return all.subarray(0, n);
  }

  write(b: Buffer | Uint8Array): Promise<void> {
    return new Promise((res) => {
      if (this.sock.destroyed) return res();
      this.sock.write(b, () => res());
    });
  }

  /** Resolves when the peer closes the connection (true) or after timeoutMs (false). */
  waitClosed(timeoutMs = 10_000): Promise<boolean> {
    if (this.closed) return Promise.resolve(true);
    return new Promise((res) => {
      const timer = setTimeout(() => res(false), timeoutMs);
      this.sock.once('close', () => { clearTimeout(timer); res(true); });
    });
  }

  destroy(): void {
    this.sock.destroy();
  }
}

export function u16(v: number): Buffer { const b = Buffer.alloc(2); b.writeUInt16BE(v); return b; }
export function u32(v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; }
export function u64(v: bigint | number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); return b; }

/** Read the 18-byte greeting; returns the handshake flags. */
export async function readGreeting(c: RawConn): Promise<number> {
  const g = await c.read(18);
  if (g.readBigUInt64BE(0) !== NBDMAGIC) throw new Error(`bad greeting magic ${g.toString('hex')}`);
  if (g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error(`server is not newstyle: ${g.toString('hex')}`);
  return g.readUInt16BE(16);
}

export function option(opt: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([u64(IHAVEOPT), u32(opt), u32(payload.length), payload]);
}

export interface OptReply { opt: number; type: number; data: Buffer }

export async function readOptReply(c: RawConn, timeoutMs = 10_000): Promise<OptReply> {
  const h = await c.read(20, timeoutMs);
  if (h.readBigUInt64BE(0) !== OPT_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
  const len = h.readUInt32BE(16);
  if (len > 1 << 20) throw new Error(`absurd option reply length ${len}`);
  const data = len ? await c.read(len, timeoutMs) : Buffer.alloc(0);
  return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
}

export interface Export { size: bigint; flags: number }

/** Fixed-newstyle handshake with NBD_OPT_GO (no structured replies): simple replies only. */
export async function handshake(c: RawConn, name: string): Promise<Export> {
  await readGreeting(c);
  await c.write(u32(1 | 2)); // C_FIXED_NEWSTYLE | C_NO_ZEROES
  const nb = Buffer.from(name, 'utf8');
  await c.write(option(OPT_GO, Buffer.concat([u32(nb.length), nb, u16(0)])));
  let exp: Export | null = null;
  for (;;) {
    const r = await readOptReply(c);
    if (r.type === REP_INFO && r.data.length >= 12 && r.data.readUInt16BE(0) === 0) {
      exp = { size: r.data.readBigUInt64BE(2), flags: r.data.readUInt16BE(10) };
    } else if (r.type === REP_ACK) {
      if (!exp) throw new Error('NBD_OPT_GO acked without NBD_INFO_EXPORT');
      return exp;
    } else if (r.type & 0x80000000) {
      throw new Error(`NBD_OPT_GO failed: reply type 0x${r.type.toString(16)} ${r.data.toString('utf8')}`);
    }
  }
}

export function request(cmd: number, cookie: bigint, offset: bigint | number, length: number, flags = 0): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(cmd, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeBigUInt64BE(BigInt(offset), 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}

export interface SimpleReply { error: number; cookie: bigint }

export async function readSimpleReply(c: RawConn, timeoutMs = 10_000): Promise<SimpleReply> {
  const h = await c.read(16, timeoutMs);
  if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic ${h.toString('hex')}`);
  return { error: h.readUInt32BE(4), cookie: h.readBigUInt64BE(8) };
}

/** One READ on a negotiated connection; returns the data (throws on an error reply). */
export async function readAt(c: RawConn, offset: number, length: number, cookie = 1n): Promise<Buffer> {
  await c.write(request(CMD_READ, cookie, offset, length));
  const r = await readSimpleReply(c);
  if (r.cookie !== cookie) throw new Error(`reply cookie ${r.cookie} != ${cookie}`);
  if (r.error !== 0) throw new Error(`READ error ${r.error}`);
  return c.read(length);
}

/**
 * Open a fresh connection, negotiate, read `length` bytes at `offset`, disconnect cleanly.
 * This is the "daemon still serves correctly" probe used after every hostile exchange.
 */
export async function freshRead(sockPath: string, name: string, offset = 0, length = 4096): Promise<Buffer> {
  const c = await RawConn.open(sockPath);
  try {
    await handshake(c, name);
    const data = await readAt(c, offset, length, 0xfeedn);
    await c.write(request(CMD_DISC, 0xdeadn, 0, 0));
    return data;
  } finally {
    c.destroy();
  }
}

/** Write `data` at `offset` on a fresh connection, FLUSH, disconnect. */
export async function freshWrite(sockPath: string, name: string, offset: number, data: Buffer): Promise<void> {
  const c = await RawConn.open(sockPath);
  try {
    await handshake(c, name);
    await c.write(Buffer.concat([request(CMD_WRITE, 7n, offset, data.length), data]));
    const r = await readSimpleReply(c);
    if (r.error !== 0) throw new Error(`WRITE error ${r.error}`);
    await c.write(request(CMD_FLUSH, 8n, 0, 0));
    const f = await readSimpleReply(c);
    if (f.error !== 0) throw new Error(`FLUSH error ${f.error}`);
    await c.write(request(CMD_DISC, 9n, 0, 0));
  } finally {
    c.destroy();
  }
}
