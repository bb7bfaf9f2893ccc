// The one key log of a cache, as the running engine uses it: appends from any stripe thread under
// the shared log lock (so the log order is one global order), and single-kset reads for the
// writeback and GC workers, which follow the log behind the head.

import { KSET_HEADER_SIZE, KSET_MAX_SIZE, SEGMENT_INFO_SLOTS, dataAreaSize, dataOffset, isAllZero, segmentOffset } from './layout.js';
import { decodeKset, encodeKset, ksetSize, ksetSpan, parseKsetHeader } from './kset.js';
import type { CacheKey, Kset, KeyLimits } from './kset.js';
import { NO_NEXT, forSegment, segmentInfoCodec } from './meta-slots.js';
import type { LogPosition, SegmentInfo } from './meta-slots.js';
import type { BlockDevice } from './blockdev.js';
import { SEG_LOG, W_KICK_WB, type CacheShared } from './shared.js';
import type { Superblock } from './superblock.js';
import type { KeyJournal } from './journal.js';

/** What every thread needs to know about the cache device's geometry. Plain data: crosses threads. */
export interface Geometry {
  salt: number;
  segmentSize: number;
  segmentCount: number;
  dataAreaSize: number;
  originSize: number;
  dataCrc: boolean;
}

export function geometryOf(sb: Superblock): Geometry {
  return {
    salt: sb.salt, segmentSize: sb.segmentSize, segmentCount: sb.segmentCount,
    dataAreaSize: dataAreaSize(sb.segmentSize), originSize: sb.originSize, dataCrc: sb.dataCrc,
  };
}

export function limitsOf(g: Geometry): KeyLimits {
  return { segmentCount: g.segmentCount, dataAreaSize: g.dataAreaSize, originSize: g.originSize, dataCrc: g.dataCrc };
}

export function segmentSlots(g: Geometry, s: number, slots: readonly [number, number]): [number, number] {
  const base = segmentOffset(s, g.segmentSize);
  return [base + slots[0], base + slots[1]];
}

export function writeSegmentInfo(dev: BlockDevice, sh: CacheShared, g: Geometry, s: number, v: SegmentInfo): void {
  sh.writeSegmentRecord(dev, s, 'info', segmentSlots(g, s, SEGMENT_INFO_SLOTS), forSegment(segmentInfoCodec, s), v, g.salt);
}

/**
 * Appends ksets at the shared log head, in order, and returns the sequence number after the last
 * one. The caller has made the data its keys point at durable first. No sync here: the caller
 * decides whether the ksets must be durable before it replies. When the log needs a segment and
 * none is free, it stops early: the caller keeps ksets[appended..] and retries after GC.
 */
/**
 * Appends ksets to the log in the global order (under the log lock). `epochAt`: the index of the
 * kset that ends an epoch (a commit round for FLUSH/FUA marks its last one), -1 for none.
 */
export function appendKsets(dev: BlockDevice, sh: CacheShared, g: Geometry, ksets: readonly (readonly CacheKey[])[], writerId: number, epochAt = -1,
  journal: KeyJournal | null = null): { appended: number; headLsn: number } {
  sh.lockLog();
  let journaling = false;
  try {
    let head = sh.head();
    let prevCrc = sh.prevCrc;
    // Consecutive ksets in one segment go out in one pwrite, each followed by the next's header.
    let batch: Buffer[] = [];
    let batchAt = head;
    const flushBatch = (): void => {
      if (batch.length === 0) return;
      batch.push(Buffer.alloc(KSET_HEADER_SIZE));
      dev.pwrite(Buffer.concat(batch), dataOffset(batchAt.segment, batchAt.offset, g.segmentSize));
      batch = [];
    };
    let appended = 0;
    let epochLsn = -1;
    for (const keys of ksets) {
      const span = ksetSpan(keys.length);
      if (head.offset + span + KSET_HEADER_SIZE > g.dataAreaSize) {
        flushBatch();
        const next = sh.allocSegment(SEG_LOG);
        if (next < 0) break;
        // The next segment's first header is zeroed before the LAST kset can point at it; a stale
        // kset left there by an earlier lap would not chain anyway (sequence number and prevCrc).
        dev.pwrite(Buffer.alloc(KSET_HEADER_SIZE), dataOffset(next, 0, g.segmentSize));
        writeSegmentInfo(dev, sh, g, next, { type: 'log', next: NO_NEXT });
        writeSegmentInfo(dev, sh, g, head.segment, { type: 'log', next });
        const last = encodeKset({ lsn: head.lsn, prevCrc, last: true, nextSegment: next, writerId }, [], g.salt);
        dev.pwrite(last.buf, dataOffset(head.segment, head.offset, g.segmentSize));
        prevCrc = last.crc;
        head = { segment: next, offset: 0, lsn: head.lsn + 1 };
      }
      if (batch.length === 0) batchAt = head;
      const epoch = appended === epochAt;
      const { buf, crc } = encodeKset({ lsn: head.lsn, prevCrc, last: false, epoch, nextSegment: 0, writerId }, keys, g.salt);
      if (epoch) epochLsn = head.lsn;
      batch.push(buf);
      const pad = span - buf.length;
      if (pad > 0) batch.push(Buffer.alloc(pad));
      prevCrc = crc;
      head = { segment: head.segment, offset: head.offset + span, lsn: head.lsn + 1 };
      appended++;
    }
    flushBatch();
    if (epochLsn >= 0) {
      sh.noteEpoch(epochLsn);
      sh.addEpochsPending(1);
    }
    if (journal && appended > 0) {
      // The head moves now: a successor thread must know these keys are in the log.
      let keys = 0;
      for (let i = 0; i < appended; i++) keys += ksets[i]!.length;
      journal.beginAppend(keys, head.lsn);
      journaling = true;
    }
    sh.setHead(head, prevCrc);
    if (journaling) journal!.endAppend();
    journaling = false;
    if (appended > 0) sh.kick(W_KICK_WB);
    return { appended, headLsn: head.lsn };
  } finally {
    if (journaling) journal!.abortAppend();
    sh.unlockLog();
  }
}

export type ReadKset = { kset: Kset; next: LogPosition; span: number } | { error: string };

/** Reads and verifies the kset at `pos` (which must precede the head); the workers never read past it. */
export function readKsetAt(dev: BlockDevice, g: Geometry, pos: LogPosition, lim: KeyLimits, buf = Buffer.alloc(KSET_MAX_SIZE)): ReadKset {
  if (pos.offset + KSET_HEADER_SIZE > g.dataAreaSize) return { error: 'no room for a kset header' };
  const at = dataOffset(pos.segment, pos.offset, g.segmentSize);
  const head = buf.subarray(0, KSET_HEADER_SIZE);
  dev.pread(head, at);
  if (isAllZero(head)) return { error: 'zeroed header' };
  const h = parseKsetHeader(head, g.segmentCount);
  if (!h.ok) return { error: h.error.message };
  const size = ksetSize(h.value.keyCount);
  if (pos.offset + size > g.dataAreaSize) return { error: 'kset runs past the segment' };
  if (h.value.keyCount > 0) dev.pread(buf.subarray(KSET_HEADER_SIZE, size), at + KSET_HEADER_SIZE);
  const k = decodeKset(buf.subarray(0, size), g.salt, lim);
  if (!k.ok) return { error: k.error.message };
  if (k.value.lsn !== pos.lsn) return { error: `found sequence ${k.value.lsn}, expected ${pos.lsn}` };
  const span = ksetSpan(k.value.keyCount);
  const next = k.value.last
    ? { segment: k.value.nextSegment, offset: 0, lsn: pos.lsn + 1 }
    : { segment: pos.segment, offset: pos.offset + span, lsn: pos.lsn + 1 };
  return { kset: k.value, next, span };
}
