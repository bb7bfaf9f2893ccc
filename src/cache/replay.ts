// Opening a cache at start: format a blank device, refuse a foreign or mismatched one, then replay
// the key log from key_tail into fresh shared state and one extent index per stripe.

import type { BlockDevice } from './blockdev.js';
import { formatDevice, isBlankDevice, openDevice, updateDirtyTail } from './format.js';
import type { CacheState } from './format.js';
import { CACHE_INFO_OFFSETS, DEFAULT_SEGMENT_SIZE, DIRTY_TAIL_OFFSETS, KEY_TAIL_OFFSETS, META_AREA_SIZE, MIN_SEGMENT_SIZE, MiB, crc32cOf, dataOffset } from './layout.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_INVALIDATE, KEY_TRIM, hasData, needsWriteback } from './kset.js';
import { walkLog } from './key-log.js';
import { judgeReformat } from './dirty-survey.js';
import type { ScanStop } from './key-log.js';
import { appendKsets, geometryOf } from './log.js';
import { FAIL_REPLAY } from './durability.js';
import type { Geometry } from './log.js';
import { CACHE_DETACHED } from './meta-slots.js';
import { CacheShared, REC_CACHE_INFO, REC_DIRTY_TAIL, REC_KEY_TAIL, SEG_DATA, SEG_LOG } from './shared.js';
import { ExtentFlag, ExtentIndex } from './index/extent-index.js';
import { SUBTREE_SIZE } from '../ring/layout.js';
import type { CacheMode } from '../config/types.js';
import { BLOCK } from './engine.js';
import { Errno } from '../util/errno.js';

export interface OpenCacheParams {
  originSize: number;
  dataCrc: boolean;
  stripes: number;
  /** Reformat a device that holds something else (never needed for a blank one). */
  format: boolean;
  /** With format: erase a cache even when it holds data not yet written back. */
  discardDirty?: boolean;
  /** Named in refusals (`pcached clean NAME`). */
  cacheName?: string;
  segmentSize?: number;
  gcPercent?: number;
  mode?: CacheMode;
  /** Upper bound of each stripe's index memory (address space reserved, committed on demand). */
  indexMaxBytes?: number;
}

export interface ReplayReport {
  formatted: boolean;
  ksets: number;
  keys: number;
  staleKeys: number;
  crcErrors: number;
  dirtyKeys: number;
  stop: ScanStop['reason'];
  stopDetail: string;
  ms: number;
  warnings: string[];
}

export interface OpenedCache {
  state: CacheState;
  geometry: Geometry;
  shared: CacheShared;
  indexes: ExtentIndex[];
  blockCrc: SharedArrayBuffer | null;
  report: ReplayReport;
}

/** Segments data allocation leaves to the key log, so keys can always be committed. */
export function logReserveFor(segmentCount: number): number {
  return Math.max(1, Math.min(4, Math.floor(segmentCount / 16)));
}

export function defaultIndexMaxBytes(deviceSize: number, stripes: number): number {
  // ~40 bytes per 4 KiB cache block across all stripes, plus slack for trims and splits.
  return Math.ceil((deviceSize / BLOCK) * 40 / stripes) + 4 * 1024 * 1024;
}

/**
 * The configured segment size is an upper bound: a small cache gets smaller segments (powers of
 * two, at least 1 MiB, or 64 KiB for tiny test devices) so that it holds at least 8 of them.
 */
export function segmentSizeFor(deviceSize: number, wanted = DEFAULT_SEGMENT_SIZE): number {
  let s = wanted;
  while (s > MiB && (deviceSize - META_AREA_SIZE) / s < 8) s /= 2;
  while (s > MIN_SEGMENT_SIZE && (deviceSize - META_AREA_SIZE) / s < 2) s /= 2;
  return s;
}

export function openCache(dev: BlockDevice, p: OpenCacheParams): OpenedCache {
  const t0 = performance.now();
  let formatted = false;
  let state: CacheState;
  if (isBlankDevice(dev)) {
    state = formatDevice(dev, { originSize: p.originSize, dataCrc: p.dataCrc, segmentSize: segmentSizeFor(dev.size, p.segmentSize), gcPercent: p.gcPercent, mode: p.mode });
    formatted = true;
  } else {
    try {
      state = openDevice(dev, { originSize: p.originSize, dataCrc: p.dataCrc });
    } catch (err) {
      // Refuses (saying what dirty data would be lost) unless formatting may go ahead.
      const discarded = judgeReformat(dev, err, { format: p.format, discardDirty: p.discardDirty === true, originSize: p.originSize, dataCrc: p.dataCrc, cacheName: p.cacheName });
      state = formatDevice(dev, { originSize: p.originSize, dataCrc: p.dataCrc, segmentSize: segmentSizeFor(dev.size, p.segmentSize), gcPercent: p.gcPercent, mode: p.mode, force: true });
      formatted = true;
      if (discarded !== null) state.warnings.push(discarded);
    }
  }
  let detachedNote: string | null = null;
  if (!formatted && ((state.cacheInfo.value?.flags ?? 0) & CACHE_DETACHED) !== 0) {
    // Written back whole before it was released; the origin may have changed since.
    state = formatDevice(dev, { originSize: p.originSize, dataCrc: p.dataCrc, segmentSize: state.sb.segmentSize, gcPercent: state.cacheInfo.value!.gcPercent, mode: p.mode, force: true });
    formatted = true;
    detachedNote = 'the cache was detached clean (everything written back): formatted afresh rather than replayed';
  }
  const g = geometryOf(state.sb);
  const warnings = [...state.warnings];
  if (detachedNote) warnings.push(detachedNote);
  const maxBytes = p.indexMaxBytes ?? defaultIndexMaxBytes(dev.size, p.stripes);
  const indexes: ExtentIndex[] = [];
  for (let i = 0; i < p.stripes; i++) indexes.push(ExtentIndex.create({ originBytes: g.originSize, stripe: i, stripes: p.stripes, maxBytes }));
  const blocksPerSeg = g.dataAreaSize / BLOCK;
  const blockCrcSab = g.dataCrc ? new SharedArrayBuffer(g.segmentCount * blocksPerSeg * 4) : null;
  const blockCrc = blockCrcSab ? new Int32Array(blockCrcSab) : null;

  // Generations: a segment whose generation record is unreadable cannot vouch for any key; give
  // it one no key can carry, so its keys are skipped, and persist it when it is next freed.
  const gens = state.segments.map((s) => s.gen.value ?? 0x3fffffff);
  const keyTail = state.keyTail.value;
  let dirtyTail = state.dirtyTail.value;
  const refs = new Int32Array(g.segmentCount);
  const logSegs = new Set<number>([keyTail.segment]);
  let ksets = 0, keys = 0, staleKeys = 0, crcErrors = 0, dirtyKeys = 0, dirtyBytes = 0;
  let lastEpochLsn = 0;
  let epochsPending = 0;
  let dataBuf = Buffer.alloc(0);
  const pending = new KeyColumns();
  const stop = walkLog(state, keyTail, (k) => {
    ksets++;
    if (k.last) { logSegs.add(k.nextSegment); return; }
    if (k.epoch) {
      lastEpochLsn = k.lsn;
      if (k.lsn >= dirtyTail.lsn) epochsPending++;
    }
    const dirtyZone = k.lsn >= dirtyTail.lsn;
    for (const key of k.keys) {
      keys++;
      // Writeback walks every key of the dirty zone, whether replay keeps it or not.
      if (dirtyZone && needsWriteback(key.flags)) { dirtyKeys++; dirtyBytes += key.length; }
      // Every data key of a live generation holds a reference on its segment, whether replay serves
      // it or not: GC drops exactly one per such key when it retires the kset, so a key skipped
      // here without its reference would free the segment while other flushed keys still use it.
      const live = hasData(key.flags) && key.generation === gens[key.segment];
      if (live) refs[key.segment]!++;
      if (Math.floor((key.originOffset + key.length - 1) / SUBTREE_SIZE) !== Math.floor(key.originOffset / SUBTREE_SIZE)) {
        staleKeys++;
        warnings.push(`key at ${key.originOffset}+${key.length} crosses a subtree; skipped`);
        continue;
      }
      if (hasData(key.flags)) {
        if (!live) { staleKeys++; continue; }
        if (g.dataCrc) {
          const padded = Math.ceil(key.length / BLOCK) * BLOCK;
          if (dataBuf.length < padded) dataBuf = Buffer.alloc(padded);
          const data = dataBuf.subarray(0, padded);
          dev.pread(data, dataOffset(key.segment, key.offset, g.segmentSize));
          if (crc32cOf(data.subarray(0, key.length)) !== key.dataCrc) {
            crcErrors++;
            warnings.push(`data CRC mismatch in segment ${key.segment} at ${key.offset} (origin ${key.originOffset}+${key.length}); key dropped`);
            continue;
          }
          const first = key.segment * blocksPerSeg + key.offset / BLOCK;
          for (let b = 0; b * BLOCK < padded; b++) blockCrc![first + b] = crc32cOf(data.subarray(b * BLOCK, b * BLOCK + BLOCK)) | 0;
        }
      }
      const flags = key.flags === KEY_DIRTY ? ExtentFlag.DIRTY : key.flags === KEY_CLEAN ? ExtentFlag.CLEAN : key.flags === KEY_TRIM ? ExtentFlag.TRIM
        : key.flags === KEY_INVALIDATE ? REMOVE : ExtentFlag.ZERO;
      pending.push(key.originOffset, key.length, key.segment, key.offset, key.generation, flags);
    }
  });
  insertGrouped(pending, indexes, p.stripes);
  if (stop.reason !== 'end') warnings.push(`key log ends at sequence ${stop.position.lsn} (${stop.reason}: ${stop.detail}); later ksets were never committed`);
  const head = stop.position;
  if (dirtyTail.lsn > head.lsn) {
    // The tail outran what survived (it is only ever advanced past durable ksets, so this is damage).
    warnings.push('dirty tail is past the end of the log; writeback restarts from the log head');
    dirtyTail = head;
    updateDirtyTail(state, dirtyTail);
    dev.sync();
  }

  const gcPercent = state.cacheInfo.value.gcPercent;
  const shared = CacheShared.create({
    segmentCount: g.segmentCount, head, prevCrc: stop.prevCrc ?? 0, keyTail, dirtyTail, gcPercent,
    logReserve: logReserveFor(g.segmentCount),
  });
  shared.loadRecordState(REC_CACHE_INFO, state.cacheInfo);
  shared.loadRecordState(REC_KEY_TAIL, state.keyTail);
  shared.loadRecordState(REC_DIRTY_TAIL, state.dirtyTail);
  for (let s = 0; s < g.segmentCount; s++) {
    shared.loadSegmentState(s, state.segments[s]!.info, state.segments[s]!.gen);
    shared.setGen(s, gens[s]!);
    if (logSegs.has(s)) shared.claimAtReplay(s, SEG_LOG);
    else if (refs[s]! > 0) shared.claimAtReplay(s, SEG_DATA);
    shared.refs[s] = logSegs.has(s) ? 0 : refs[s]!;
  }
  shared.addDirty(dirtyBytes);
  shared.noteEpoch(lastEpochLsn);
  shared.addEpochsPending(epochsPending);
  // Everything replayed is durable as far as anyone can tell.
  if (!shared.syncCache(dev)) warnings.push('the cache device failed its first sync: it refuses writes and flushes until restart (replayed data is still served and written back)');
  else closeOpenEpoch(dev, shared, g, stop, lastEpochLsn, warnings);
  return {
    state, geometry: g, shared, indexes, blockCrc: blockCrcSab,
    report: { formatted, ksets, keys, staleKeys, crcErrors, dirtyKeys, stop: stop.reason, stopDetail: stop.detail, ms: performance.now() - t0, warnings },
  };
}

/**
 * Writes that survived a crash without their FLUSH are what the volume shows from now on: they get
 * an epoch of their own, closed before anything written after the restart, so writeback never
 * puts a later write on the origin without the survivors it was written on top of.
 */
function closeOpenEpoch(dev: BlockDevice, shared: CacheShared, g: Geometry, stop: ScanStop, lastEpochLsn: number, warnings: string[]): void {
  if (stop.ksets === 0 || shared.epochClosed || lastEpochLsn === stop.position.lsn - 1) return;
  try {
    const r = appendKsets(dev, shared, g, [[]], shared.nextWriterId(), 0);
    if (r.appended === 0) { warnings.push('no log space to close the epoch of the writes that survived without a FLUSH'); return; }
  } catch (err) {
    shared.fail(Errno.EIO, FAIL_REPLAY);
    warnings.push(`closing the epoch of the surviving writes failed: ${(err as Error).message}`);
    return;
  }
  if (!shared.syncCache(dev)) warnings.push('the cache device failed a sync after replay: it refuses writes and flushes until restart');
}

/** Replayed keys as columns (six numbers per key): a million keys without a million objects. */
/** An INVALIDATE key in the replay columns: remove the range rather than insert. */
const REMOVE = -1;

class KeyColumns {
  data = new Float64Array(6 * 4096);
  n = 0;
  push(off: number, len: number, seg: number, segOff: number, gen: number, flags: number): void {
    if ((this.n + 1) * 6 > this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    const d = this.data, i = this.n++ * 6;
    d[i] = off; d[i + 1] = len; d[i + 2] = seg; d[i + 3] = segOff; d[i + 4] = gen; d[i + 5] = flags;
  }
}

/**
 * Inserts the replayed keys subtree by subtree, each subtree's keys in log order (so later keys
 * still win): a stable counting sort by subtree. Random log order would touch a different part of
 * the index on every insert; grouped, each subtree's pages stay in the CPU cache.
 */
function insertGrouped(k: KeyColumns, indexes: ExtentIndex[], stripes: number): void {
  const n = k.n, d = k.data;
  if (n === 0) return;
  const sub = new Int32Array(n);
  let maxSub = 0;
  for (let i = 0; i < n; i++) {
    const s = Math.floor(d[i * 6]! / SUBTREE_SIZE);
    sub[i] = s;
    if (s > maxSub) maxSub = s;
  }
  const start = new Int32Array(maxSub + 2);
  for (let i = 0; i < n; i++) start[sub[i]! + 1]!++;
  for (let s = 1; s < start.length; s++) start[s]! += start[s - 1]!;
  const order = new Int32Array(n);
  for (let i = 0; i < n; i++) order[start[sub[i]!]!++] = i;
  const e = { off: 0, len: 0, seg: 0, segOff: 0, gen: 0, flags: 0 };
  for (let j = 0; j < n; j++) {
    const i = order[j]! * 6;
    e.off = d[i]!; e.len = d[i + 1]!; e.seg = d[i + 2]!; e.segOff = d[i + 3]!; e.gen = d[i + 4]!; e.flags = d[i + 5]!;
    const index = indexes[sub[order[j]!]! % stripes]!;
    if (e.flags === REMOVE) index.remove(e.off, e.len);
    else index.insert(e);
  }
}

export { CACHE_INFO_OFFSETS, KEY_TAIL_OFFSETS, DIRTY_TAIL_OFFSETS };
