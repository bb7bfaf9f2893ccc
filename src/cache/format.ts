// Formatting and opening a cache device (docs/format.md §2, §7): turns untrusted media into a
// typed in-memory state, or refuses with a PcachedError whose code says why.

import { randomBytes } from 'node:crypto';
import { PcachedError } from '../util/errors.js';
import { formatBytes } from '../util/size.js';
import type { CacheMode } from '../config/types.js';
import type { BlockDevice } from './blockdev.js';
import {
  CACHE_INFO_OFFSETS, DEFAULT_SEGMENT_SIZE, DIRTY_TAIL_OFFSETS, KEY_TAIL_OFFSETS, META_AREA_SIZE,
  SEGMENT_GEN_SLOTS, SEGMENT_HEADER_READ, SEGMENT_INFO_SLOTS, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, KSET_ALIGN,
  dataAreaSize, dataOffset, isAllZero, segmentOffset,
} from './layout.js';
import {
  MAX_GC_PERCENT, NO_NEXT, RECORD_SIZE, cacheInfoCodec, decodeRecord, dirtyTailCodec, encodeRecord, forSegment, keyTailCodec,
  pickNewest, readDualSlot, segmentGenCodec, segmentInfoCodec, writeDualSlot,
} from './meta-slots.js';
import type { CacheInfo, DualSlot, LogPosition, RecordContext, SegmentInfo } from './meta-slots.js';
import type { KeyLimits } from './kset.js';
import { checkGeometry, decodeSuperblock, encodeSuperblock, saltOf, segmentCountFor } from './superblock.js';
import type { Superblock } from './superblock.js';

export const DEFAULT_GC_PERCENT = 70;

export interface SegmentState {
  /** null: neither slot verifies (damage); the engine derives usage from the log replay. */
  info: DualSlot<SegmentInfo>;
  /** null value: neither slot verifies; the engine must not trust the generation (see docs). */
  gen: DualSlot<number>;
}

export interface CacheState {
  dev: BlockDevice;
  sb: Superblock;
  ctx: RecordContext;
  limits: KeyLimits;
  cacheInfo: DualSlot<CacheInfo> & { value: CacheInfo };
  keyTail: DualSlot<LogPosition> & { value: LogPosition };
  dirtyTail: DualSlot<LogPosition> & { value: LogPosition };
  segments: SegmentState[];
  /** Segments whose info or generation had no valid slot. */
  damaged: number[];
  /** Recoverable anomalies found while opening (a record fell back to a default). */
  warnings: string[];
}

export interface OpenParams {
  /** When given, a cache formatted for another origin size is refused. */
  originSize?: number;
  /** When given, a cache formatted with the other dataCrc setting is refused. */
  dataCrc?: boolean;
}

export interface FormatParams {
  originSize: number;
  dataCrc: boolean;
  segmentSize?: number;
  mode?: CacheMode;
  gcPercent?: number;
  /** Overwrite a device that is neither blank nor free of a superblock. */
  force?: boolean;
  uuid?: Uint8Array;
  createdAt?: number;
}

/** A device is blank when its first MiB (or all of it, if smaller) is zeros. */
export function isBlankDevice(dev: BlockDevice): boolean {
  const probe = Buffer.alloc(Math.min(dev.size, META_AREA_SIZE));
  dev.pread(probe, 0);
  return isAllZero(probe);
}

function readSuperblock(dev: BlockDevice): ReturnType<typeof decodeSuperblock> | null {
  if (dev.size < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) return null;
  const buf = Buffer.alloc(SUPERBLOCK_SIZE);
  dev.pread(buf, SUPERBLOCK_OFFSET);
  return decodeSuperblock(buf);
}

export function formatDevice(dev: BlockDevice, p: FormatParams): CacheState {
  if (!p.force && !isBlankDevice(dev)) {
    const sb = readSuperblock(dev);
    if (sb?.ok) throw new PcachedError('ERR_BAD_ARGUMENT', 'device already holds a pcached cache; force is required to reformat it');
    throw new PcachedError('ERR_BAD_SUPERBLOCK', 'device is not blank and holds no pcached superblock; refusing to format it without force');
  }
  const segmentSize = p.segmentSize ?? DEFAULT_SEGMENT_SIZE;
  const segmentCount = segmentCountFor(dev.size, segmentSize);
  const bad = checkGeometry(dev.size, segmentSize, segmentCount);
  if (bad !== null) throw new PcachedError('ERR_BAD_ARGUMENT', `cannot format: ${bad}`);
  if (!Number.isSafeInteger(p.originSize) || p.originSize <= 0) throw new PcachedError('ERR_BAD_ARGUMENT', 'origin size must be positive');
  const gcPercent = p.gcPercent ?? DEFAULT_GC_PERCENT;
  if (!Number.isInteger(gcPercent) || gcPercent < 0 || gcPercent > MAX_GC_PERCENT) throw new PcachedError('ERR_BAD_ARGUMENT', `gcPercent must be 0-${MAX_GC_PERCENT}`);
  if (p.uuid !== undefined && p.uuid.length !== 16) throw new PcachedError('ERR_BAD_ARGUMENT', 'uuid must be 16 bytes');
  const uuid = Buffer.from(p.uuid ?? randomBytes(16));
  const salt = saltOf(uuid);

  // Clearing the metadata area first also removes any old superblock, so a crash from here on
  // leaves a device that is refused (not silently half-formatted) until format is run again.
  dev.pwrite(Buffer.alloc(META_AREA_SIZE), 0);
  const header = Buffer.alloc(SEGMENT_HEADER_READ);
  for (let s = 0; s < segmentCount; s++) {
    header.fill(0);
    const info: SegmentInfo = s === 0 ? { type: 'log', next: NO_NEXT } : { type: 'free', next: NO_NEXT };
    encodeRecord(forSegment(segmentInfoCodec, s), 1, info, salt).copy(header, SEGMENT_INFO_SLOTS[0]);
    encodeRecord(forSegment(segmentGenCodec, s), 1, 0, salt).copy(header, SEGMENT_GEN_SLOTS[0]);
    dev.pwrite(header, segmentOffset(s, segmentSize));
  }
  // The log starts empty: a zeroed kset header at the key tail.
  dev.pwrite(Buffer.alloc(KSET_ALIGN), dataOffset(0, 0, segmentSize));
  const info: CacheInfo = { mode: p.mode ?? 'writeback', gcPercent, flags: 0 };
  dev.pwrite(encodeRecord(cacheInfoCodec, 1, info, salt), CACHE_INFO_OFFSETS[0]);
  const start: LogPosition = { segment: 0, offset: 0, lsn: 1 };
  dev.pwrite(encodeRecord(keyTailCodec, 1, start, salt), KEY_TAIL_OFFSETS[0]);
  dev.pwrite(encodeRecord(dirtyTailCodec, 1, start, salt), DIRTY_TAIL_OFFSETS[0]);
  dev.sync();
  const sb = encodeSuperblock({
    dataCrc: p.dataCrc, deviceSize: dev.size, segmentSize, segmentCount, originSize: p.originSize,
    createdAt: p.createdAt ?? Date.now(), uuid,
  });
  dev.pwrite(sb, SUPERBLOCK_OFFSET);
  dev.sync();
  return openDevice(dev, { originSize: p.originSize, dataCrc: p.dataCrc });
}

/** "64 MiB (67108864 bytes)": binary units for people, the exact count for scripts and bug reports. */
const sized = (n: number): string => `${formatBytes(n)} (${n} bytes)`;

export function openDevice(dev: BlockDevice, p: OpenParams = {}): CacheState {
  const read = readSuperblock(dev);
  if (read === null || !read.ok) {
    if (isBlankDevice(dev)) throw new PcachedError('ERR_CACHE_BLANK', 'cache device is blank (not formatted)');
    if (read === null) throw new PcachedError('ERR_BAD_SUPERBLOCK', `device of ${sized(dev.size)} is too small to hold a superblock`);
    throw read.error;
  }
  const sb = read.value;
  if (dev.size < sb.deviceSize) {
    throw new PcachedError('ERR_CACHE_MISMATCH', `cache device is truncated: ${sized(dev.size)}, formatted for ${sized(sb.deviceSize)}`);
  }
  if (p.originSize !== undefined && p.originSize !== sb.originSize) {
    throw new PcachedError('ERR_CACHE_MISMATCH', `cache was formatted for an origin of ${sized(sb.originSize)}, origin has ${sized(p.originSize)}`);
  }
  if (p.dataCrc !== undefined && p.dataCrc !== sb.dataCrc) {
    throw new PcachedError('ERR_CACHE_MISMATCH', `cache was formatted with dataCrc ${sb.dataCrc ? 'on' : 'off'}; configuration says ${p.dataCrc ? 'on' : 'off'}`);
  }
  const area = dataAreaSize(sb.segmentSize);
  const ctx: RecordContext = { salt: sb.salt, segmentCount: sb.segmentCount, dataAreaSize: area };
  const limits: KeyLimits = { segmentCount: sb.segmentCount, dataAreaSize: area, originSize: sb.originSize, dataCrc: sb.dataCrc };
  const warnings: string[] = [];

  const ci = readDualSlot(dev, CACHE_INFO_OFFSETS, cacheInfoCodec, ctx);
  if (ci.value === null) warnings.push('cache info: no valid slot, using defaults');
  const cacheInfo = { ...ci, value: ci.value ?? { mode: 'writeback' as const, gcPercent: DEFAULT_GC_PERCENT, flags: 0 } };

  const kt = readDualSlot(dev, KEY_TAIL_OFFSETS, keyTailCodec, ctx);
  if (kt.value === null) throw new PcachedError('ERR_BAD_METADATA', 'key tail: no valid slot; the key log cannot be located');
  const keyTail = { ...kt, value: kt.value };
  const dt = readDualSlot(dev, DIRTY_TAIL_OFFSETS, dirtyTailCodec, ctx);
  let dirtyValue = dt.value;
  // Falling back to the key tail only makes writeback repeat work; it never skips dirty data.
  if (dirtyValue === null) {
    warnings.push('dirty tail: no valid slot, restarting writeback from the key tail');
    dirtyValue = keyTail.value;
  } else if (dirtyValue.lsn < keyTail.value.lsn) {
    warnings.push('dirty tail is behind the key tail, using the key tail');
    dirtyValue = keyTail.value;
  }
  const dirtyTail = { ...dt, value: dirtyValue };

  const segments: SegmentState[] = [];
  const damaged: number[] = [];
  const header = Buffer.alloc(SEGMENT_HEADER_READ);
  for (let s = 0; s < sb.segmentCount; s++) {
    dev.pread(header, segmentOffset(s, sb.segmentSize));
    const sctx = { ...ctx, segment: s };
    const slot = (at: number) => header.subarray(at, at + RECORD_SIZE);
    const info = pickNewest(
      decodeRecord(segmentInfoCodec, slot(SEGMENT_INFO_SLOTS[0]), sctx),
      decodeRecord(segmentInfoCodec, slot(SEGMENT_INFO_SLOTS[1]), sctx));
    const gen = pickNewest(
      decodeRecord(segmentGenCodec, slot(SEGMENT_GEN_SLOTS[0]), sctx),
      decodeRecord(segmentGenCodec, slot(SEGMENT_GEN_SLOTS[1]), sctx));
    if (info.value === null || gen.value === null) damaged.push(s);
    segments.push({ info, gen });
  }
  if (damaged.length > 0) warnings.push(`${damaged.length} segment header(s) without a valid slot: ${damaged.slice(0, 8).join(', ')}`);
  return { dev, sb, ctx, limits, cacheInfo, keyTail, dirtyTail, segments, damaged, warnings };
}

/**
 * The inspection open (`pcached inspect`, the dirty survey before --format): what the device says
 * it is, whatever this start is configured for. Still refuses what cannot be read at all.
 */
export function inspectDevice(dev: BlockDevice): CacheState {
  return openDevice(dev);
}

// ---- updates: each writes the non-newest slot; ordering and sync belong to the caller ----

export function updateCacheInfo(st: CacheState, v: CacheInfo): void {
  st.cacheInfo = { ...writeDualSlot(st.dev, CACHE_INFO_OFFSETS, st.cacheInfo, cacheInfoCodec, v, st.sb.salt), value: v };
}

export function updateKeyTail(st: CacheState, v: LogPosition): void {
  st.keyTail = { ...writeDualSlot(st.dev, KEY_TAIL_OFFSETS, st.keyTail, keyTailCodec, v, st.sb.salt), value: v };
}

export function updateDirtyTail(st: CacheState, v: LogPosition): void {
  st.dirtyTail = { ...writeDualSlot(st.dev, DIRTY_TAIL_OFFSETS, st.dirtyTail, dirtyTailCodec, v, st.sb.salt), value: v };
}

function segmentSlots(st: CacheState, s: number, slots: readonly [number, number]): [number, number] {
  const base = segmentOffset(s, st.sb.segmentSize);
  return [base + slots[0], base + slots[1]];
}

export function updateSegmentInfo(st: CacheState, s: number, v: SegmentInfo): void {
  const seg = st.segments[s];
  seg.info = writeDualSlot(st.dev, segmentSlots(st, s, SEGMENT_INFO_SLOTS), seg.info, forSegment(segmentInfoCodec, s), v, st.sb.salt);
}

export function updateSegmentGen(st: CacheState, s: number, gen: number): void {
  const seg = st.segments[s];
  seg.gen = writeDualSlot(st.dev, segmentSlots(st, s, SEGMENT_GEN_SLOTS), seg.gen, forSegment(segmentGenCodec, s), gen, st.sb.salt);
}
