// Small big-endian helpers shared by the encoders and parsers, plus the protocol's string rules.

import { isUtf8 } from 'node:buffer';
import { MAX_STRING } from './constants.js';

const TWO32 = 0x1_0000_0000;

/** Store a u32 big-endian into any Uint8Array (including views of a SharedArrayBuffer). */
export function putU32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 24;
  buf[off + 1] = v >>> 16;
  buf[off + 2] = v >>> 8;
  buf[off + 3] = v;
}

export function putU16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = v >>> 8;
  buf[off + 1] = v;
}

/** Store a non-negative integer as u64 (exact up to 2^53). */
export function putU64(buf: Uint8Array, off: number, v: number): void {
  putU32(buf, off, Math.floor(v / TWO32));
  putU32(buf, off + 4, v >>> 0);
}

/** Read a u64 as a JS number: exact below 2^53, approximate (but still huge) above. */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off) * TWO32 + buf.readUInt32BE(off + 4);
}

/**
 * Decode a protocol string: valid UTF-8, no NUL, at most MAX_STRING bytes ([proto]
 * "Conventions"). Returns the string, or an error message.
 */
export function decodeString(bytes: Buffer, what: string): string | { error: string } {
  if (bytes.length > MAX_STRING) return { error: `${what} is ${bytes.length} bytes, over the ${MAX_STRING}-byte limit` };
  if (bytes.includes(0)) return { error: `${what} contains a NUL byte` };
  if (!isUtf8(bytes)) return { error: `${what} is not valid UTF-8` };
  return bytes.toString('utf8');
}

/** UTF-8 bytes of s, cut at a character boundary so they fit in maxBytes. */
export function utf8Bounded(s: string, maxBytes: number): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= maxBytes) return b;
  let end = maxBytes;
  // Back up over continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}
