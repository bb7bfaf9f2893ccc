// Format version 1 of the cache device: every constant and offset of docs/format.md lives here,
// so the codecs, the format/open code and the tests cannot disagree about where a byte is.

import { crc32c } from '@node-rs/crc32';
import { PcachedError } from '../util/errors.js';
import type { PcachedErrorCode } from '../util/errors.js';

export const FORMAT_VERSION = 1;

export const KiB = 1024;
export const MiB = 1024 * KiB;

// The first MiB is the fixed metadata area; it is also the "blank device" probe window.
export const META_AREA_SIZE = MiB;
export const SUPERBLOCK_OFFSET = 4 * KiB;
export const SUPERBLOCK_SIZE = 128;
export const CACHE_INFO_OFFSETS = [8 * KiB, 12 * KiB] as const;
export const KEY_TAIL_OFFSETS = [16 * KiB, 20 * KiB] as const;
export const DIRTY_TAIL_OFFSETS = [24 * KiB, 28 * KiB] as const;

// Per-segment header: four slots, one per 512-byte sector so a torn sector never hits a sibling.
export const SEGMENT_HEADER_SIZE = 4 * KiB;
export const SEGMENT_INFO_SLOTS = [0, 512] as const;
export const SEGMENT_GEN_SLOTS = [1024, 1536] as const;
export const SEGMENT_HEADER_READ = 2048;

export const DEFAULT_SEGMENT_SIZE = 16 * MiB;
export const MIN_SEGMENT_SIZE = 64 * KiB;
export const MAX_SEGMENT_SIZE = 1024 * MiB;
export const MAX_SEGMENTS = 1 << 20;
export const DATA_ALIGN = 4 * KiB;
export const MAX_KEY_LENGTH = 4 * MiB;

export const KEY_SIZE = 40;
export const KSET_HEADER_SIZE = 32;
export const KSET_MAX_KEYS = 128;
// Ksets start on a sector so appending one never rewrites a sector of an older, committed kset.
export const KSET_ALIGN = 512;
export const KSET_MAX_SIZE = KSET_HEADER_SIZE + KSET_MAX_KEYS * KEY_SIZE;

export function segmentOffset(segment: number, segmentSize: number): number {
  return META_AREA_SIZE + segment * segmentSize;
}

/** Device byte offset of `offset` inside the data area of `segment`. */
export function dataOffset(segment: number, offset: number, segmentSize: number): number {
  return segmentOffset(segment, segmentSize) + SEGMENT_HEADER_SIZE + offset;
}

export function dataAreaSize(segmentSize: number): number {
  return segmentSize - SEGMENT_HEADER_SIZE;
}

export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** CRC32C (Castagnoli), optionally chained from `seed`; zlib.crc32 is IEEE and must not be used. */
export function crc32cOf(buf: Uint8Array, seed = 0): number {
  return crc32c(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), seed) >>> 0;
}

export type Result<T> = { ok: true; value: T } | { ok: false; error: PcachedError };

export function ok<T>(value: T): Result<T> {
  return { ok: true, value };
}

export function fail<T>(code: PcachedErrorCode, message: string): Result<T> {
  return { ok: false, error: new PcachedError(code, message) };
}

export function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

// u64 fields carry byte offsets and sequence numbers; above 2^53 they are refused, not rounded.
export function getU64(dv: DataView, at: number): number | null {
  const v = dv.getBigUint64(at, true);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(v);
}

export function setU64(dv: DataView, at: number, v: number): void {
  dv.setBigUint64(at, BigInt(v), true);
}

export function isAllZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}
