// `pcached inspect --cache PATH [--json]`: what thin_dump/cache_dump are to dm. Reads a cache
// file's superblock, dual-slot records, segment headers and key log (docs/format.md) and reports
// them, without starting anything and without writing: the file is opened O_RDONLY and the device
// handed to the format code refuses writes and syncs. Never formats, never repairs.

import { PcachedError, isPcachedError } from '../util/errors.js';
import { FileBlockDevice } from '../cache/blockdev.js';
import { inspectDevice, isBlankDevice } from '../cache/format.js';
import type { CacheState } from '../cache/format.js';
import { walkLog } from '../cache/key-log.js';
import type { ScanStopReason } from '../cache/key-log.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_INVALIDATE, KEY_TRIM, KEY_ZERO } from '../cache/kset.js';
import { DIRTY_TAIL_OFFSETS } from '../cache/layout.js';
import { NO_NEXT, dirtyTailCodec, readDualSlot } from '../cache/meta-slots.js';
import type { LogPosition, SegmentType } from '../cache/meta-slots.js';
import { SB_FLAG_DATA_CRC, SUPERBLOCK_MAGIC } from '../cache/superblock.js';
import type { CacheMode } from '../config/types.js';

export interface SlotInfo {
  /** Slot holding the winning copy, null when neither slot verifies. */
  slot: 0 | 1 | null;
  /** Sequence number of the winning copy (0 when none). */
  seq: number;
}

export interface TailReport extends LogPosition, SlotInfo {}

export interface FlagCounts { dirty: number; clean: number; trim: number; zero: number; invalidate: number }

export interface InspectReport {
  formatted: true;
  path: string;
  /** Size of the file or block device now. */
  fileSize: number;
  superblock: {
    magic: string;
    version: number;
    uuid: string;
    /** ms since the Unix epoch, and the same as ISO 8601. */
    createdAt: number;
    createdAtIso: string;
    deviceSize: number;
    segmentSize: number;
    segmentCount: number;
    originSize: number;
    flags: number;
    dataCrc: boolean;
  };
  cacheInfo: SlotInfo & {
    mode: CacheMode;
    gcPercent: number;
    flags: number;
    /** True when no slot verified and the defaults are shown. */
    defaulted: boolean;
  };
  keyTail: TailReport;
  dirtyTail: TailReport & {
    /** True when the stored dirty tail was unusable (no valid slot, or behind the key tail) and the key tail is shown. */
    fallback: boolean;
  };
  segments: {
    total: number;
    /** Counts by type among segments whose info verified. */
    free: number;
    data: number;
    log: number;
    /** Segments whose info or generation had no valid slot. */
    damaged: number[];
    /** Log segments in chain order, from the key tail's segment along `next`. */
    logChain: number[];
    /** Segments of type log not reached from the key tail. */
    logOffChain: number[];
  };
  log: {
    /** Ksets yielded by scanLog from the key tail, LAST ones included. */
    ksets: number;
    lastKsets: number;
    keys: number;
    keysByFlag: FlagCounts;
    /** Sum of key lengths (origin bytes the keys cover). */
    bytes: number;
    bytesByFlag: FlagCounts;
    /** LSN of the first and last kset yielded; null when the log is empty. */
    firstLsn: number | null;
    lastLsn: number | null;
    stop: LogPosition & { reason: ScanStopReason; detail: string };
  };
  /** Recoverable anomalies found while opening. */
  warnings: string[];
}

export interface BlankReport { formatted: false }

function uuidString(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const OPEN_PROBLEM: Partial<Record<string, string>> = {
  ERR_BAD_SUPERBLOCK: 'not a pcached cache',
  ERR_FORMAT_VERSION: 'unsupported format version',
  ERR_CACHE_MISMATCH: 'cache file does not match its superblock',
  ERR_BAD_METADATA: 'damaged metadata',
  ERR_CACHE_FILE: 'cannot read',
};

function report(st: CacheState, path: string): InspectReport {
  const { sb } = st;
  const pos = (p: LogPosition): LogPosition => ({ segment: p.segment, offset: p.offset, lsn: p.lsn });
  // openDevice replaces an unusable dirty tail by the key tail; read the stored record to say so.
  const storedDirty = readDualSlot(st.dev, DIRTY_TAIL_OFFSETS, dirtyTailCodec, st.ctx);
  const dirtyFallback = storedDirty.value === null || storedDirty.value.lsn !== st.dirtyTail.value.lsn
    || storedDirty.value.segment !== st.dirtyTail.value.segment || storedDirty.value.offset !== st.dirtyTail.value.offset;

  const counts: Record<SegmentType, number> = { free: 0, data: 0, log: 0 };
  for (const seg of st.segments) if (seg.info.value !== null) counts[seg.info.value.type]++;
  const logChain: number[] = [];
  const seen = new Set<number>();
  for (let s = st.keyTail.value.segment; s !== NO_NEXT && s < sb.segmentCount && !seen.has(s);) {
    const info = st.segments[s].info.value;
    if (info === null || info.type !== 'log') break;
    seen.add(s);
    logChain.push(s);
    s = info.next;
  }
  const logOffChain = st.segments.flatMap((seg, s) => (seg.info.value?.type === 'log' && !seen.has(s) ? [s] : []));

  const keysByFlag: FlagCounts = { dirty: 0, clean: 0, trim: 0, zero: 0, invalidate: 0 };
  const bytesByFlag: FlagCounts = { dirty: 0, clean: 0, trim: 0, zero: 0, invalidate: 0 };
  let ksets = 0;
  let lastKsets = 0;
  let keys = 0;
  let bytes = 0;
  let firstLsn: number | null = null;
  let lastLsn: number | null = null;
  const stop = walkLog(st, st.keyTail.value, (k) => {
    ksets++;
    if (k.last) lastKsets++;
    firstLsn ??= k.lsn;
    lastLsn = k.lsn;
    for (const key of k.keys) {
      keys++;
      bytes += key.length;
      const f = key.flags === KEY_DIRTY ? 'dirty' : key.flags === KEY_CLEAN ? 'clean' : key.flags === KEY_TRIM ? 'trim' : key.flags === KEY_ZERO ? 'zero' : key.flags === KEY_INVALIDATE ? 'invalidate' : null;
      if (f !== null) { keysByFlag[f]++; bytesByFlag[f] += key.length; }
    }
  });

  return {
    formatted: true,
    path,
    fileSize: st.dev.size,
    superblock: {
      magic: SUPERBLOCK_MAGIC.toString('latin1'),
      version: sb.version,
      uuid: uuidString(sb.uuid),
      createdAt: sb.createdAt,
      createdAtIso: new Date(sb.createdAt).toISOString(),
      deviceSize: sb.deviceSize,
      segmentSize: sb.segmentSize,
      segmentCount: sb.segmentCount,
      originSize: sb.originSize,
      flags: sb.dataCrc ? SB_FLAG_DATA_CRC : 0,
      dataCrc: sb.dataCrc,
    },
    cacheInfo: {
      mode: st.cacheInfo.value.mode,
      gcPercent: st.cacheInfo.value.gcPercent,
      flags: st.cacheInfo.value.flags,
      slot: st.cacheInfo.newest,
      seq: st.cacheInfo.seq,
      defaulted: st.cacheInfo.newest === null,
    },
    keyTail: { ...pos(st.keyTail.value), slot: st.keyTail.newest, seq: st.keyTail.seq },
    dirtyTail: { ...pos(st.dirtyTail.value), slot: storedDirty.newest, seq: storedDirty.seq, fallback: dirtyFallback },
    segments: { total: sb.segmentCount, ...counts, damaged: [...st.damaged], logChain, logOffChain },
    log: {
      ksets, lastKsets, keys, keysByFlag, bytes, bytesByFlag, firstLsn, lastLsn,
      stop: { ...pos(stop.position), reason: stop.reason, detail: stop.detail },
    },
    warnings: [...st.warnings],
  };
}

/** Reads the cache file at `path` (read-only). Blank → `{ formatted: false }`; anything unusable throws a PcachedError. */
export function inspectCache(path: string): InspectReport | BlankReport {
  const dev = FileBlockDevice.open(path, { readOnly: true });
  try {
    if (isBlankDevice(dev)) return { formatted: false };
    let st: CacheState;
    try {
      st = inspectDevice(dev);
    } catch (err) {
      if (!isPcachedError(err)) throw err;
      const what = OPEN_PROBLEM[err.code] ?? 'cannot inspect';
      throw new PcachedError(err.code, `${path}: ${what}: ${err.message} (${err.code})`, { cause: err });
    }
    return report(st, path);
  } finally {
    dev.close();
  }
}

function size(n: number): string {
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  if (n < 1024) return `${n} B`;
  let v = n;
  let u = -1;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${n} bytes (${Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]})`;
}

const slotText = (s: SlotInfo): string => (s.slot === null ? 'no valid slot' : `slot ${s.slot}, seq ${s.seq}`);
const at = (p: LogPosition): string => `${p.segment}:${p.offset} lsn ${p.lsn}`;
const flags = (c: FlagCounts): string => `dirty ${c.dirty}, clean ${c.clean}, trim ${c.trim}, zero ${c.zero}, invalidate ${c.invalidate}`;
const list = (xs: number[]): string => (xs.length === 0 ? 'none' : xs.join(', '));

export function formatInspectReport(r: InspectReport | BlankReport): string {
  if (!r.formatted) return 'not formatted (blank)\n';
  const { superblock: sb, cacheInfo: ci, segments: sg, log } = r;
  const lines = [
    `cache file ${r.path}: ${size(r.fileSize)}`,
    'superblock',
    `  magic          ${sb.magic}, version ${sb.version}`,
    `  uuid           ${sb.uuid}`,
    `  created at     ${sb.createdAtIso} (${sb.createdAt})`,
    `  device size    ${size(sb.deviceSize)}`,
    `  segments       ${sb.segmentCount} of ${size(sb.segmentSize)}`,
    `  origin size    ${size(sb.originSize)}`,
    `  flags          0x${sb.flags.toString(16)} (dataCrc ${sb.dataCrc ? 'on' : 'off'})`,
    'cache info',
    `  mode           ${ci.mode}`,
    `  gcPercent      ${ci.gcPercent}`,
    `  flags          0x${ci.flags.toString(16)}`,
    `  record         ${ci.defaulted ? 'no valid slot (defaults shown)' : slotText(ci)}`,
    'tails',
    `  key tail       ${at(r.keyTail)} (${slotText(r.keyTail)})`,
    `  dirty tail     ${at(r.dirtyTail)} (${slotText(r.dirtyTail)}${r.dirtyTail.fallback ? '; unusable, key tail shown' : ''})`,
    'segments',
    `  by type        ${sg.total} total: ${sg.free} free, ${sg.data} data, ${sg.log} log`,
    `  log chain      ${sg.logChain.length === 0 ? 'none' : sg.logChain.join(' -> ')}`,
    ...(sg.logOffChain.length > 0 ? [`  log off chain  ${list(sg.logOffChain)}`] : []),
    `  damaged        ${list(sg.damaged)}`,
    'key log (scanned from the key tail)',
    `  ksets          ${log.ksets} (${log.lastKsets} LAST)`,
    `  lsn range      ${log.firstLsn === null ? 'empty' : `${log.firstLsn}..${log.lastLsn}`}`,
    `  keys           ${log.keys}: ${flags(log.keysByFlag)}`,
    `  bytes covered  ${log.bytes}: ${flags(log.bytesByFlag)}`,
    `  stopped at     ${at(log.stop)}: ${log.stop.reason} (${log.stop.detail})`,
    `warnings         ${r.warnings.length === 0 ? 'none' : r.warnings.join('; ')}`,
  ];
  return `${lines.join('\n')}\n`;
}
