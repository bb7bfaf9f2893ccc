// Reads a plain socket straight into windows of a large pool. By default Node gives every read a
// fresh 64 KiB allocation, then copies what arrived into a second, zero-filled one of its own
// length: under QD32 4 KiB writes (about 37 KiB per read) that is a memset, a memcpy and two
// mallocs per read, and an external backing store each time that drives V8's mark-compact
// collections. node:net's `onread` option reads into memory we give it, but only for sockets
// we construct; Node 20 keeps its slots on every Socket as own symbol properties, so an accepted
// socket is switched the same way. Each read gets a window of the pool that is never reused
// (views the parser keeps — a WRITE payload waiting for a ring slot — stay valid), and a pool is
// dropped by the GC once nothing cut from it is referenced. When the slots are not found (another
// Node) nothing changes and 'data' goes on delivering.

import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

// Small enough that a pool is usually used up and dropped between two scavenges: one that lives
// longer is promoted, and only a mark-compact frees it (4 MiB pools made the coordinator run one
// every 170 ms under QD32 writes). Memory is touched only as bytes arrive, so an idle connection
// holds what it last received, at most this.
const POOL_BYTES = 512 << 10;
/** Node's own read size: one window is offered per read. */
const WINDOW = 64 << 10;

interface Slots { buffer: symbol; cb: symbol; gen: symbol }

function slotsOf(sock: Socket): Slots | null {
  const by = new Map<string, symbol>();
  for (const s of Object.getOwnPropertySymbols(sock)) if (s.description) by.set(s.description, s);
  const buffer = by.get('kBuffer'), cb = by.get('kBufferCb'), gen = by.get('kBufferGen');
  return buffer && cb && gen ? { buffer, cb, gen } : null;
}

interface UserBufferHandle { useUserBuffer?: (buf: Uint8Array) => void; reading?: boolean }

/**
 * From now on the socket's bytes reach `onData` as views of a pool, in order, instead of through
 * 'data'. 'never' (nothing changed) for a TLS socket (node:tls decrypts its records), a socket
 * without a handle, or Node internals other than the ones expected; 'later' while the socket is
 * paused or bytes sit in its stream buffer: delivering new ones first would reorder them, and
 * a socket paused the stream's way keeps reading, which a switch would make unbounded.
 */
export function receiveIntoPool(sock: Socket, onData: (chunk: Buffer) => void): 'switched' | 'later' | 'never' {
  if (sock instanceof TLSSocket || sock.destroyed) return 'never';
  const slots = slotsOf(sock);
  const handle = (sock as unknown as { _handle: UserBufferHandle | null })._handle;
  if (slots === null || handle === null || typeof handle.useUserBuffer !== 'function') return 'never';
  const s = sock as unknown as Record<symbol, unknown>;
  if (s[slots.buffer] !== null) return 'never';
  if (sock.isPaused() || sock.readableLength !== 0) return 'later';
  let pool = Buffer.allocUnsafeSlow(POOL_BYTES);
  let at = 0;
  let window = pool.subarray(0, WINDOW);
  s[slots.buffer] = window;
  s[slots.cb] = (n: number, buf: Buffer): void => {
    // 8-byte steps keep the next window's start aligned for the payload copies that care.
    at += (n + 7) & ~7;
    onData(buf.subarray(0, n));
  };
  s[slots.gen] = (): Buffer => {
    if (POOL_BYTES - at < WINDOW) {
      pool = Buffer.allocUnsafeSlow(POOL_BYTES);
      at = 0;
    }
    window = pool.subarray(at, at + WINDOW);
    return window;
  };
  handle.useUserBuffer(window);
  return 'switched';
}
