// Superblock codec (docs/format.md §2). One copy, written last at format time: its presence is
// what makes the rest of the device meaningful.

import { formatBytes } from '../util/size.js';
import {
  FORMAT_VERSION, MAX_SEGMENTS, MAX_SEGMENT_SIZE, META_AREA_SIZE, MIN_SEGMENT_SIZE, SUPERBLOCK_SIZE,
  DATA_ALIGN, crc32cOf, fail, getU64, isAllZero, ok, setU64, view,
} from './layout.js';
import type { Result } from './layout.js';

export const SUPERBLOCK_MAGIC = Buffer.from('PCACHDSB', 'latin1');
export const SB_FLAG_DATA_CRC = 1;
const SB_KNOWN_FLAGS = SB_FLAG_DATA_CRC;
const CRC_AT = SUPERBLOCK_SIZE - 4;

export interface Superblock {
  version: number;
  dataCrc: boolean;
  deviceSize: number;
  segmentSize: number;
  segmentCount: number;
  originSize: number;
  createdAt: number;
  uuid: Buffer;
  /** CRC32C of the UUID: the seed of every other CRC, so records of an earlier format never verify. */
  salt: number;
}

export function segmentCountFor(deviceSize: number, segmentSize: number): number {
  return Math.max(0, Math.floor((deviceSize - META_AREA_SIZE) / segmentSize));
}

/** Why a geometry is unusable, or null; shared by format (params) and decode (untrusted bytes). */
export function checkGeometry(deviceSize: number, segmentSize: number, segmentCount: number): string | null {
  if (segmentSize < MIN_SEGMENT_SIZE || segmentSize > MAX_SEGMENT_SIZE || segmentSize % DATA_ALIGN !== 0) {
    return `segment size ${formatBytes(segmentSize)} (${segmentSize} bytes) must be a multiple of ${formatBytes(DATA_ALIGN)} from ${formatBytes(MIN_SEGMENT_SIZE)} to ${formatBytes(MAX_SEGMENT_SIZE)}`;
  }
  if (segmentCount !== segmentCountFor(deviceSize, segmentSize)) {
    return `segment count ${segmentCount} does not match device size ${formatBytes(deviceSize)} (${deviceSize} bytes)`;
  }
  // One log segment and at least one data segment.
  if (segmentCount < 2) return `device of ${formatBytes(deviceSize)} (${deviceSize} bytes) holds fewer than 2 segments of ${formatBytes(segmentSize)}: use a larger cache (cacheSize) or a smaller segmentSize`;
  if (segmentCount > MAX_SEGMENTS) return `segment count ${segmentCount} exceeds ${MAX_SEGMENTS}`;
  return null;
}

export function saltOf(uuid: Uint8Array): number {
  return crc32cOf(uuid);
}

export function encodeSuperblock(sb: Omit<Superblock, 'salt' | 'version'>, out = Buffer.alloc(SUPERBLOCK_SIZE)): Buffer {
  out.fill(0, 0, SUPERBLOCK_SIZE);
  const dv = view(out);
  SUPERBLOCK_MAGIC.copy(out, 0);
  dv.setUint32(8, FORMAT_VERSION, true);
  dv.setUint32(12, sb.dataCrc ? SB_FLAG_DATA_CRC : 0, true);
  setU64(dv, 16, sb.deviceSize);
  dv.setUint32(24, sb.segmentSize, true);
  dv.setUint32(28, sb.segmentCount, true);
  setU64(dv, 32, sb.originSize);
  setU64(dv, 40, sb.createdAt);
  Buffer.from(sb.uuid).copy(out, 48, 0, 16);
  dv.setUint32(CRC_AT, crc32cOf(out.subarray(0, CRC_AT)), true);
  return out;
}

export function decodeSuperblock(buf: Uint8Array): Result<Superblock> {
  if (buf.length < SUPERBLOCK_SIZE) return fail('ERR_BAD_SUPERBLOCK', 'superblock truncated');
  const b = Buffer.from(buf.buffer, buf.byteOffset, SUPERBLOCK_SIZE);
  if (!b.subarray(0, 8).equals(SUPERBLOCK_MAGIC)) return fail('ERR_BAD_SUPERBLOCK', 'no pcached superblock (bad magic)');
  const dv = view(b);
  const version = dv.getUint32(8, true);
  // Checked before the CRC: another version may lay out (and checksum) the rest differently.
  if (version !== FORMAT_VERSION) {
    return fail('ERR_FORMAT_VERSION', `cache device has format version ${version}; this pcached reads version ${FORMAT_VERSION}`);
  }
  if (dv.getUint32(CRC_AT, true) !== crc32cOf(b.subarray(0, CRC_AT))) return fail('ERR_BAD_SUPERBLOCK', 'superblock CRC mismatch');
  const flags = dv.getUint32(12, true);
  if ((flags & ~SB_KNOWN_FLAGS) !== 0) return fail('ERR_BAD_SUPERBLOCK', `unknown superblock flags 0x${flags.toString(16)}`);
  if (!isAllZero(b.subarray(64, CRC_AT))) return fail('ERR_BAD_SUPERBLOCK', 'superblock reserved bytes are not zero');
  const deviceSize = getU64(dv, 16);
  const originSize = getU64(dv, 32);
  const createdAt = getU64(dv, 40);
  if (deviceSize === null || originSize === null || createdAt === null) return fail('ERR_BAD_SUPERBLOCK', 'superblock size out of range');
  if (originSize === 0) return fail('ERR_BAD_SUPERBLOCK', 'superblock origin size is 0');
  const segmentSize = dv.getUint32(24, true);
  const segmentCount = dv.getUint32(28, true);
  const bad = checkGeometry(deviceSize, segmentSize, segmentCount);
  if (bad !== null) return fail('ERR_BAD_SUPERBLOCK', `superblock geometry: ${bad}`);
  const uuid = Buffer.from(b.subarray(48, 64));
  return ok({
    version, dataCrc: (flags & SB_FLAG_DATA_CRC) !== 0, deviceSize, segmentSize, segmentCount,
    originSize, createdAt, uuid, salt: saltOf(uuid),
  });
}
