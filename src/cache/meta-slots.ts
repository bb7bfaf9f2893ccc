// Dual-slot mutable records (docs/format.md §3): every update goes to the slot that does not hold
// the newest valid copy, so a torn or lost write always leaves the previous copy as the winner.

import type { BlockDevice } from './blockdev.js';
import { KSET_ALIGN, crc32cOf, fail, getU64, isAllZero, ok, setU64, view } from './layout.js';
import type { Result } from './layout.js';
import { CACHE_MODES } from '../config/types.js';
import type { CacheMode } from '../config/types.js';

export const RECORD_SIZE = 32;
const BODY_AT = 12;

export type Slot = 0 | 1;

/** What the loader learned about one record: the winning copy (if any) and where the next write goes. */
export interface DualSlot<T> {
  value: T | null;
  newest: Slot | null;
  seq: number;
}

/** Bounds that untrusted record bodies are checked against. */
export interface RecordContext {
  salt: number;
  segmentCount: number;
  dataAreaSize: number;
  /** For per-segment records: the segment whose header is being read (catches misdirected writes). */
  segment?: number;
}

export interface RecordCodec<T> {
  kind: number;
  name: string;
  bodySize: number;
  encodeBody(dv: DataView, at: number, v: T): void;
  /** Returns the value or a reason string; never throws on any bytes. */
  decodeBody(dv: DataView, at: number, ctx: RecordContext): T | string;
}

/** Sequence order modulo 2^32: `a` is newer than `b` when the signed 32-bit difference is positive. */
export function seqAfter(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

export function pickNewest<T>(a: Result<{ seq: number; value: T }>, b: Result<{ seq: number; value: T }>): DualSlot<T> {
  if (a.ok && (!b.ok || !seqAfter(b.value.seq, a.value.seq))) return { value: a.value.value, newest: 0, seq: a.value.seq };
  if (b.ok) return { value: b.value.value, newest: 1, seq: b.value.seq };
  return { value: null, newest: null, seq: 0 };
}

export function nextSlot(state: { newest: Slot | null; seq: number }): { slot: Slot; seq: number } {
  if (state.newest === null) return { slot: 0, seq: 1 };
  return { slot: state.newest === 0 ? 1 : 0, seq: (state.seq + 1) >>> 0 };
}

export function encodeRecord<T>(codec: RecordCodec<T>, seq: number, v: T, salt: number, out = Buffer.alloc(RECORD_SIZE)): Buffer {
  out.fill(0, 0, RECORD_SIZE);
  const dv = view(out);
  dv.setUint16(4, codec.kind, true);
  dv.setUint16(6, codec.bodySize, true);
  dv.setUint32(8, seq >>> 0, true);
  codec.encodeBody(dv, BODY_AT, v);
  dv.setUint32(0, crc32cOf(out.subarray(4, RECORD_SIZE), salt), true);
  return out;
}

export function decodeRecord<T>(codec: RecordCodec<T>, buf: Uint8Array, ctx: RecordContext): Result<{ seq: number; value: T }> {
  if (buf.length < RECORD_SIZE) return fail('ERR_BAD_METADATA', `${codec.name}: record truncated`);
  const dv = view(buf);
  if (dv.getUint32(0, true) !== crc32cOf(buf.subarray(4, RECORD_SIZE), ctx.salt)) {
    return fail('ERR_BAD_METADATA', `${codec.name}: CRC mismatch`);
  }
  if (dv.getUint16(4, true) !== codec.kind || dv.getUint16(6, true) !== codec.bodySize) {
    return fail('ERR_BAD_METADATA', `${codec.name}: wrong record kind or size`);
  }
  if (!isAllZero(buf.subarray(BODY_AT + codec.bodySize, RECORD_SIZE))) return fail('ERR_BAD_METADATA', `${codec.name}: padding not zero`);
  const value = codec.decodeBody(dv, BODY_AT, ctx);
  if (typeof value === 'string') return fail('ERR_BAD_METADATA', `${codec.name}: ${value}`);
  return ok({ seq: dv.getUint32(8, true), value });
}

export function readDualSlot<T>(dev: BlockDevice, offsets: readonly [number, number], codec: RecordCodec<T>, ctx: RecordContext): DualSlot<T> {
  const buf = Buffer.alloc(RECORD_SIZE);
  dev.pread(buf, offsets[0]);
  const a = decodeRecord(codec, buf, ctx);
  dev.pread(buf, offsets[1]);
  const b = decodeRecord(codec, buf, ctx);
  return pickNewest(a, b);
}

/** Writes `v` to the non-newest slot (no sync: the caller owns ordering) and returns the new state. */
export function writeDualSlot<T>(dev: BlockDevice, offsets: readonly [number, number], state: DualSlot<T>, codec: RecordCodec<T>, v: T, salt: number): DualSlot<T> {
  const { slot, seq } = nextSlot(state);
  dev.pwrite(encodeRecord(codec, seq, v, salt), offsets[slot]);
  return { value: v, newest: slot, seq };
}

// ---- the five record kinds ----

export interface CacheInfo { mode: CacheMode; gcPercent: number; flags: number }
/**
 * Cache info flag: the cache was detached clean (`pcached detach`): everything was written back
 * and the origin may have changed since, so the next start formats it afresh instead of replaying.
 */
export const CACHE_DETACHED = 1;
export const MAX_GC_PERCENT = 90;

export const cacheInfoCodec: RecordCodec<CacheInfo> = {
  kind: 1, name: 'cache info', bodySize: 8,
  encodeBody(dv, at, v) {
    dv.setUint8(at, CACHE_MODES.indexOf(v.mode));
    dv.setUint8(at + 1, v.gcPercent);
    dv.setUint32(at + 4, v.flags, true);
  },
  decodeBody(dv, at) {
    const mode = CACHE_MODES[dv.getUint8(at)];
    if (mode === undefined) return `unknown mode ${dv.getUint8(at)}`;
    const gcPercent = dv.getUint8(at + 1);
    if (gcPercent > MAX_GC_PERCENT) return `gc percent ${gcPercent} > ${MAX_GC_PERCENT}`;
    if (dv.getUint16(at + 2, true) !== 0) return 'reserved not zero';
    const flags = dv.getUint32(at + 4, true);
    // No flag is defined in version 1; a set bit means a newer writer we cannot honour.
    if ((flags & ~CACHE_DETACHED) !== 0) return `unknown flags 0x${flags.toString(16)}`;
    return { mode, gcPercent, flags };
  },
};

/** A log position: data-area offset in a log segment, and the log sequence number expected there. */
export interface LogPosition { segment: number; offset: number; lsn: number }

function posCodec(kind: number, name: string): RecordCodec<LogPosition> {
  return {
    kind, name, bodySize: 16,
    encodeBody(dv, at, v) {
      dv.setUint32(at, v.segment, true);
      dv.setUint32(at + 4, v.offset, true);
      setU64(dv, at + 8, v.lsn);
    },
    decodeBody(dv, at, ctx) {
      const segment = dv.getUint32(at, true);
      const offset = dv.getUint32(at + 4, true);
      const lsn = getU64(dv, at + 8);
      if (segment >= ctx.segmentCount) return `segment ${segment} out of range`;
      if (offset % KSET_ALIGN !== 0 || offset >= ctx.dataAreaSize) return `offset ${offset} invalid`;
      if (lsn === null || lsn === 0) return 'log sequence number out of range';
      return { segment, offset, lsn };
    },
  };
}

export const keyTailCodec = posCodec(2, 'key tail');
export const dirtyTailCodec = posCodec(3, 'dirty tail');

export const SEGMENT_TYPES = ['free', 'data', 'log'] as const;
export type SegmentType = (typeof SEGMENT_TYPES)[number];
/** `next` chains log segments (the segment the log continued into); NO_NEXT when there is none. */
export interface SegmentInfo { type: SegmentType; next: number }
export const NO_NEXT = 0xffffffff;

export const segmentInfoCodec: RecordCodec<SegmentInfo> = {
  kind: 4, name: 'segment info', bodySize: 12,
  encodeBody(dv, at, v) {
    // Bytes 0-3 (the segment id) are stamped by forSegment().
    dv.setUint8(at + 4, SEGMENT_TYPES.indexOf(v.type));
    dv.setUint32(at + 8, v.next >>> 0, true);
  },
  decodeBody(dv, at, ctx) {
    if (ctx.segment === undefined || dv.getUint32(at, true) !== ctx.segment) return 'belongs to another segment';
    const type = SEGMENT_TYPES[dv.getUint8(at + 4)];
    if (type === undefined) return `unknown segment type ${dv.getUint8(at + 4)}`;
    if (dv.getUint8(at + 5) !== 0 || dv.getUint16(at + 6, true) !== 0) return 'reserved not zero';
    const next = dv.getUint32(at + 8, true);
    if (next !== NO_NEXT && (next >= ctx.segmentCount || type !== 'log')) return `next segment ${next} invalid`;
    return { type, next };
  },
};

export const segmentGenCodec: RecordCodec<number> = {
  kind: 5, name: 'segment generation', bodySize: 16,
  encodeBody(dv, at, gen) { setU64(dv, at + 8, gen); },
  decodeBody(dv, at, ctx) {
    if (ctx.segment === undefined || dv.getUint32(at, true) !== ctx.segment) return 'belongs to another segment';
    if (dv.getUint32(at + 4, true) !== 0) return 'reserved not zero';
    const gen = getU64(dv, at + 8);
    // Held in an Int32Array while running (src/cache/shared.ts MAX_GENERATION): never written larger.
    return gen === null || gen > 0x7ffffffe ? 'generation out of range' : gen;
  },
};

/** Segment records carry their own segment id; wrap a codec so encode stamps it. */
export function forSegment<T>(codec: RecordCodec<T>, segment: number): RecordCodec<T> {
  return {
    ...codec,
    encodeBody(dv, at, v) { dv.setUint32(at, segment, true); codec.encodeBody(dv, at, v); },
  };
}
