// The key log on the media (docs/format.md §6-7): scanning it in log order from the key tail, and
// the append discipline (kset + zeroed next header; LAST kset to chain segments) that makes the
// scan's stopping point the exact end of what was committed.

import { PcachedError } from '../util/errors.js';
import { KSET_HEADER_SIZE, KSET_MAX_SIZE, dataOffset, isAllZero } from './layout.js';
import { decodeKset, encodeKset, ksetSize, ksetSpan, parseKsetHeader } from './kset.js';
import type { CacheKey, Kset } from './kset.js';
import { NO_NEXT } from './meta-slots.js';
import type { LogPosition } from './meta-slots.js';
import { updateSegmentInfo } from './format.js';
import type { CacheState } from './format.js';

export interface ScannedKset extends Kset {
  segment: number;
  offset: number;
}

export type ScanStopReason =
  | 'end' // a zeroed header: the normal end of the log
  | 'bad-header' // magic, flags, count or bounds do not verify
  | 'bad-crc'
  | 'bad-key' // CRC verified but a key is out of bounds: written by something we do not trust
  | 'bad-lsn' // not the next log sequence number: a stale kset from an earlier lap
  | 'bad-chain' // prevCrc does not name the kset before it: a stale kset from a crashed run
  | 'no-room'; // the position leaves no room for a header (the writer never does this)

export interface ScanStop {
  reason: ScanStopReason;
  detail: string;
  /** Where the next kset must be written, and the sequence number it must carry. */
  position: LogPosition;
  /** CRC of the last kset yielded (the next kset's prevCrc); null when none was. */
  prevCrc: number | null;
  ksets: number;
}

/** Yields ksets (LAST ones included) in log order; the generator's return value says where and why it stopped. */
export function* scanLog(st: CacheState, from: LogPosition = st.keyTail.value): Generator<ScannedKset, ScanStop, void> {
  const { dev, sb, ctx, limits } = st;
  const buf = Buffer.alloc(KSET_MAX_SIZE);
  const head = buf.subarray(0, KSET_HEADER_SIZE);
  let pos: LogPosition = { ...from };
  let prevCrc: number | null = null;
  let ksets = 0;
  const stop = (reason: ScanStopReason, detail: string): ScanStop => ({ reason, detail, position: pos, prevCrc, ksets });
  for (;;) {
    if (pos.offset + KSET_HEADER_SIZE > ctx.dataAreaSize) return stop('no-room', 'no room for a kset header');
    const at = dataOffset(pos.segment, pos.offset, sb.segmentSize);
    dev.pread(head, at);
    if (isAllZero(head)) return stop('end', 'zeroed header');
    const h = parseKsetHeader(head, sb.segmentCount);
    if (!h.ok) return stop('bad-header', h.error.message);
    const size = ksetSize(h.value.keyCount);
    if (pos.offset + size > ctx.dataAreaSize) return stop('bad-header', 'kset runs past the segment');
    if (h.value.keyCount > 0) dev.pread(buf.subarray(KSET_HEADER_SIZE, size), at + KSET_HEADER_SIZE);
    const k = decodeKset(buf.subarray(0, size), sb.salt, limits);
    if (!k.ok) return stop(k.error.code === 'ERR_BAD_KEY' ? 'bad-key' : 'bad-crc', k.error.message);
    if (k.value.lsn !== pos.lsn) return stop('bad-lsn', `found sequence ${k.value.lsn}, expected ${pos.lsn}`);
    if (prevCrc !== null && k.value.prevCrc !== prevCrc) return stop('bad-chain', 'kset does not chain to its predecessor');
    yield { ...k.value, segment: pos.segment, offset: pos.offset };
    ksets++;
    prevCrc = k.value.crc;
    pos = k.value.last
      ? { segment: k.value.nextSegment, offset: 0, lsn: pos.lsn + 1 }
      : { segment: pos.segment, offset: pos.offset + ksetSpan(k.value.keyCount), lsn: pos.lsn + 1 };
  }
}

/** Visits every kset of a scan in order, without keeping them; returns the stop report. */
export function walkLog(st: CacheState, from: LogPosition, visit: (k: ScannedKset) => void): ScanStop {
  const it = scanLog(st, from);
  for (;;) {
    const r = it.next();
    if (r.done) return r.value;
    visit(r.value);
  }
}

/** Runs a scan to its end: every kset and the stop report. */
export function collectLog(st: CacheState, from?: LogPosition): { ksets: ScannedKset[]; stop: ScanStop } {
  const ksets: ScannedKset[] = [];
  const it = scanLog(st, from);
  for (;;) {
    const r = it.next();
    if (r.done) return { ksets, stop: r.value };
    ksets.push(r.value);
  }
}

/**
 * Appends ksets at the log head. The engine orders data, ksets and tails with its own barriers;
 * the writer syncs only when it moves the log to a new segment (see chainNewSegment).
 * A new log segment comes from `allocLogSegment` (null: none free).
 */
export class KsetLogWriter {
  head: LogPosition;
  private prevCrc: number;

  constructor(
    private readonly st: CacheState,
    after: ScanStop,
    private readonly writerId: number,
    private readonly allocLogSegment: () => number | null,
  ) {
    this.head = { ...after.position };
    this.prevCrc = after.prevCrc ?? 0;
  }

  /** Appends one kset; returns where it went and its CRC. Throws ERR_LOG_FULL when no segment is free. */
  append(keys: readonly CacheKey[]): { position: LogPosition; crc: number } {
    const area = this.st.ctx.dataAreaSize;
    // Always leave room after a kset for the header that follows it (zeroed now, LAST later).
    if (this.head.offset + ksetSpan(keys.length) + KSET_HEADER_SIZE > area) this.chainNewSegment();
    const position = { ...this.head };
    const { buf, crc } = encodeKset({ lsn: position.lsn, prevCrc: this.prevCrc, last: false, nextSegment: 0, writerId: this.writerId }, keys, this.st.sb.salt);
    const span = ksetSpan(keys.length);
    const out = Buffer.alloc(span + KSET_HEADER_SIZE);
    buf.copy(out, 0);
    this.st.dev.pwrite(out, dataOffset(position.segment, position.offset, this.st.sb.segmentSize));
    this.prevCrc = crc;
    this.head = { segment: position.segment, offset: position.offset + span, lsn: position.lsn + 1 };
    return { position, crc };
  }

  private chainNewSegment(): void {
    const next = this.allocLogSegment();
    if (next === null) throw new PcachedError('ERR_LOG_FULL', 'no free segment for the key log');
    const { dev, sb } = this.st;
    // The current segment's info was last written when it joined the log, maybe in this very sync
    // window; a barrier first keeps the dual-slot rule (never two unsynced writes of one record).
    dev.sync();
    updateSegmentInfo(this.st, next, { type: 'log', next: NO_NEXT });
    dev.pwrite(Buffer.alloc(KSET_HEADER_SIZE), dataOffset(next, 0, sb.segmentSize));
    const cur = this.head;
    updateSegmentInfo(this.st, cur.segment, { type: 'log', next });
    const { buf, crc } = encodeKset({ lsn: cur.lsn, prevCrc: this.prevCrc, last: true, nextSegment: next, writerId: this.writerId }, [], sb.salt);
    dev.pwrite(buf, dataOffset(cur.segment, cur.offset, sb.segmentSize));
    this.prevCrc = crc;
    this.head = { segment: next, offset: 0, lsn: cur.lsn + 1 };
  }
}
