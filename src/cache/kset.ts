// Key and kset codecs (docs/format.md §5-6). A kset is the atomic unit of metadata commit: its CRC
// covers header and keys, so a torn kset verifies as nothing at all.

import {
  KEY_SIZE, KSET_ALIGN, KSET_HEADER_SIZE, KSET_MAX_KEYS, DATA_ALIGN, MAX_KEY_LENGTH,
  alignUp, crc32cOf, fail, getU64, ok, setU64, view,
} from './layout.js';
import type { Result } from './layout.js';

export const KEY_DIRTY = 1;
export const KEY_CLEAN = 2;
export const KEY_TRIM = 4;
export const KEY_ZERO = 8;
/**
 * The range's cached copies are gone (a write went around the cache to the origin): replay drops
 * the range from the index; writeback has nothing to send.
 */
export const KEY_INVALIDATE = 16;
const KEY_KINDS = [KEY_DIRTY, KEY_CLEAN, KEY_TRIM, KEY_ZERO, KEY_INVALIDATE];

/** Keys writeback sends to the origin (and that count as dirty until it has). */
export function needsWriteback(flags: number): boolean {
  return flags === KEY_DIRTY || flags === KEY_TRIM || flags === KEY_ZERO;
}

export const KSET_MAGIC = 0x5445534b; // "KSET" as little-endian bytes
export const KSET_LAST = 1;
/**
 * The last kset a commit round for a FLUSH (or FUA) appended: an epoch ends here. Writeback merges
 * overwrites only inside an epoch and syncs the origin at its end (docs/cache-engine.md).
 */
export const KSET_EPOCH = 2;

export interface CacheKey {
  originOffset: number;
  length: number;
  flags: number;
  /** Data keys only; 0 for TRIM/ZERO keys, which carry no data. */
  segment: number;
  offset: number;
  generation: number;
  dataCrc: number;
}

export interface KeyLimits {
  segmentCount: number;
  dataAreaSize: number;
  originSize: number;
  dataCrc: boolean;
}

export function hasData(flags: number): boolean {
  return flags === KEY_DIRTY || flags === KEY_CLEAN;
}

export function encodeKey(k: CacheKey, dv: DataView, at: number): void {
  setU64(dv, at, k.originOffset);
  dv.setUint32(at + 8, k.length, true);
  dv.setUint32(at + 12, k.flags, true);
  dv.setUint32(at + 16, k.segment, true);
  dv.setUint32(at + 20, k.offset, true);
  setU64(dv, at + 24, k.generation);
  dv.setUint32(at + 32, k.dataCrc >>> 0, true);
  dv.setUint32(at + 36, 0, true);
}

export function decodeKey(dv: DataView, at: number, lim: KeyLimits): CacheKey | string {
  const originOffset = getU64(dv, at);
  const length = dv.getUint32(at + 8, true);
  const flags = dv.getUint32(at + 12, true);
  const segment = dv.getUint32(at + 16, true);
  const offset = dv.getUint32(at + 20, true);
  const generation = getU64(dv, at + 24);
  const dataCrc = dv.getUint32(at + 32, true);
  if (dv.getUint32(at + 36, true) !== 0) return 'reserved not zero';
  if (!KEY_KINDS.includes(flags)) return `flags 0x${flags.toString(16)} are not exactly one of DIRTY/CLEAN/TRIM/ZERO/INVALIDATE`;
  if (length === 0 || length > MAX_KEY_LENGTH) return `length ${length} out of range`;
  if (originOffset === null || originOffset + length > lim.originSize) return 'extent beyond the origin';
  if (generation === null) return 'generation out of range';
  if (hasData(flags)) {
    if (segment >= lim.segmentCount) return `segment ${segment} out of range`;
    if (offset % DATA_ALIGN !== 0 || offset + length > lim.dataAreaSize) return `data offset ${offset} invalid`;
    if (!lim.dataCrc && dataCrc !== 0) return 'data CRC present but dataCrc is off';
  } else if (segment !== 0 || offset !== 0 || generation !== 0 || dataCrc !== 0) {
    return 'key without data carries data fields';
  }
  return { originOffset, length, flags, segment, offset, generation, dataCrc };
}

export interface KsetHeader {
  lsn: number;
  /** CRC of the previous kset in the log: a stale kset left by an earlier, crashed run never chains. */
  prevCrc: number;
  keyCount: number;
  last: boolean;
  /** An epoch ends with this kset (KSET_EPOCH); never on a LAST kset. */
  epoch: boolean;
  /** LAST only: the log segment the log continues in (at data offset 0). */
  nextSegment: number;
  /** Per-run nonce of the writer, so a re-written kset never equals a stale one byte for byte. */
  writerId: number;
}

export interface Kset extends KsetHeader {
  crc: number;
  keys: CacheKey[];
}

export function ksetSize(keyCount: number): number {
  return KSET_HEADER_SIZE + keyCount * KEY_SIZE;
}

/** Bytes of log a kset occupies: the next kset (or zeroed header) starts on the next sector. */
export function ksetSpan(keyCount: number): number {
  return alignUp(ksetSize(keyCount), KSET_ALIGN);
}

export function encodeKset(h: Omit<KsetHeader, 'keyCount' | 'epoch'> & { epoch?: boolean }, keys: readonly CacheKey[], salt: number): { buf: Buffer; crc: number } {
  if (keys.length > KSET_MAX_KEYS || (h.last && keys.length !== 0)) throw new RangeError('kset key count');
  const buf = Buffer.alloc(ksetSize(keys.length));
  const dv = view(buf);
  dv.setUint32(4, KSET_MAGIC, true);
  setU64(dv, 8, h.lsn);
  dv.setUint32(16, h.prevCrc >>> 0, true);
  dv.setUint16(20, keys.length, true);
  if (h.last && h.epoch) throw new RangeError('a LAST kset cannot end an epoch');
  dv.setUint16(22, h.last ? KSET_LAST : h.epoch ? KSET_EPOCH : 0, true);
  dv.setUint32(24, h.last ? h.nextSegment : 0, true);
  dv.setUint32(28, h.writerId >>> 0, true);
  for (let i = 0; i < keys.length; i++) encodeKey(keys[i], dv, KSET_HEADER_SIZE + i * KEY_SIZE);
  const crc = crc32cOf(buf.subarray(4), salt);
  dv.setUint32(0, crc, true);
  return { buf, crc };
}

/** Header sanity before trusting keyCount to size the next read; the CRC is checked by decodeKset. */
export function parseKsetHeader(buf: Uint8Array, segmentCount: number): Result<KsetHeader> {
  if (buf.length < KSET_HEADER_SIZE) return fail('ERR_BAD_KSET', 'kset header truncated');
  const dv = view(buf);
  if (dv.getUint32(4, true) !== KSET_MAGIC) return fail('ERR_BAD_KSET', 'bad kset magic');
  const lsn = getU64(dv, 8);
  const keyCount = dv.getUint16(20, true);
  const flags = dv.getUint16(22, true);
  const nextSegment = dv.getUint32(24, true);
  if (lsn === null || lsn === 0) return fail('ERR_BAD_KSET', 'kset sequence number out of range');
  if ((flags & ~(KSET_LAST | KSET_EPOCH)) !== 0 || flags === (KSET_LAST | KSET_EPOCH)) return fail('ERR_BAD_KSET', `unknown kset flags 0x${flags.toString(16)}`);
  const last = flags === KSET_LAST;
  const epoch = flags === KSET_EPOCH;
  if (keyCount > KSET_MAX_KEYS) return fail('ERR_BAD_KSET', `kset key count ${keyCount} > ${KSET_MAX_KEYS}`);
  if (last && (keyCount !== 0 || nextSegment >= segmentCount)) return fail('ERR_BAD_KSET', 'LAST kset malformed');
  if (!last && nextSegment !== 0) return fail('ERR_BAD_KSET', 'next segment set on a non-LAST kset');
  return ok({ lsn, prevCrc: dv.getUint32(16, true), keyCount, last, epoch, nextSegment, writerId: dv.getUint32(28, true) });
}

/** `buf` holds at least ksetSize(keyCount) bytes starting at the header. */
export function decodeKset(buf: Uint8Array, salt: number, lim: KeyLimits): Result<Kset> {
  const h = parseKsetHeader(buf, lim.segmentCount);
  if (!h.ok) return h;
  const size = ksetSize(h.value.keyCount);
  if (buf.length < size) return fail('ERR_BAD_KSET', 'kset truncated');
  const dv = view(buf);
  const crc = dv.getUint32(0, true);
  if (crc !== crc32cOf(buf.subarray(4, size), salt)) return fail('ERR_BAD_KSET', 'kset CRC mismatch');
  const keys: CacheKey[] = [];
  for (let i = 0; i < h.value.keyCount; i++) {
    const k = decodeKey(dv, KSET_HEADER_SIZE + i * KEY_SIZE, lim);
    if (typeof k === 'string') return fail('ERR_BAD_KEY', `kset ${h.value.lsn} key ${i}: ${k}`);
    keys.push(k);
  }
  return ok({ ...h.value, crc, keys });
}
