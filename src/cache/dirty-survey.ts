// What a cache holds that the origin does not have yet, asked before anything may erase it. A cache
// refused for a changed setting (another origin size, --data-crc) is opened here the way
// `pcached inspect` opens it, ignoring the configuration, and its key log is walked from the
// dirty tail: DIRTY keys whose segment generation is live, and TRIM and ZERO keys, are data that
// was flushed (or committed) and never written back. --format then refuses to erase such a cache
// unless --discard-dirty says so, and every refusal says how much there is and how to keep it.

import { PcachedError } from '../util/errors.js';
import type { BlockDevice } from './blockdev.js';
import { inspectDevice } from './format.js';
import type { CacheState } from './format.js';
import { walkLog } from './key-log.js';
import { KEY_DIRTY, needsWriteback } from './kset.js';
import { SUPERBLOCK_OFFSET } from './layout.js';
import { SUPERBLOCK_MAGIC } from './superblock.js';

export interface DirtySurvey {
  /** DIRTY extents: data in the cache only. */
  dataBytes: number;
  dataExtents: number;
  /** TRIM and ZERO ranges the origin has not seen. */
  rangeBytes: number;
  rangeExtents: number;
  /** What the cache was formatted for. */
  stored: { originSize: number; dataCrc: boolean; segmentSize: number; deviceSize: number };
}

export type CacheSurvey =
  | { kind: 'surveyed'; dirty: DirtySurvey }
  /** A pcached superblock this pcached cannot read (damaged, another format version, truncated). */
  | { kind: 'unreadable'; why: string }
  /** No pcached superblock at all. */
  | { kind: 'foreign' };

function hasPcachedMagic(dev: BlockDevice): boolean {
  if (dev.size < SUPERBLOCK_OFFSET + SUPERBLOCK_MAGIC.length) return false;
  const magic = Buffer.alloc(SUPERBLOCK_MAGIC.length);
  dev.pread(magic, SUPERBLOCK_OFFSET);
  return magic.equals(SUPERBLOCK_MAGIC);
}

/** Walks the log from the key tail and counts what lies at or past the dirty tail. */
export function surveyState(st: CacheState): DirtySurvey {
  const gens = st.segments.map((s) => s.gen.value);
  const dirtyLsn = st.dirtyTail.value.lsn;
  const out: DirtySurvey = {
    dataBytes: 0, dataExtents: 0, rangeBytes: 0, rangeExtents: 0,
    stored: { originSize: st.sb.originSize, dataCrc: st.sb.dataCrc, segmentSize: st.sb.segmentSize, deviceSize: st.sb.deviceSize },
  };
  walkLog(st, st.keyTail.value, (k) => {
    if (k.lsn < dirtyLsn) return;
    for (const key of k.keys) {
      if (!needsWriteback(key.flags)) continue;
      if (key.flags === KEY_DIRTY) {
        // A key naming a reclaimed (or unreadable) segment generation has no data to write back.
        if (gens[key.segment] !== key.generation) continue;
        out.dataBytes += key.length;
        out.dataExtents++;
      } else {
        out.rangeBytes += key.length;
        out.rangeExtents++;
      }
    }
  });
  return out;
}

/** Never writes. A device without a pcached superblock is `foreign`; one this pcached cannot read, `unreadable`. */
export function surveyCache(dev: BlockDevice): CacheSurvey {
  try {
    if (!hasPcachedMagic(dev)) return { kind: 'foreign' };
    return { kind: 'surveyed', dirty: surveyState(inspectDevice(dev)) };
  } catch (err) {
    return { kind: 'unreadable', why: (err as Error).message };
  }
}

export function isClean(d: DirtySurvey): boolean {
  return d.dataExtents === 0 && d.rangeExtents === 0;
}

/** 12.3 MiB: binary units, one decimal unless whole. */
export function binarySize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${u === 0 || Number.isInteger(v) ? v : v.toFixed(1)} ${units[u]}`;
}

const count = (n: number): string => n.toLocaleString('en-US');

/** "12.3 MiB of dirty data in 3,104 extents (and 2 trim/zero ranges of 1 GiB)". */
export function describeDirty(d: DirtySurvey): string {
  const data = `${binarySize(d.dataBytes)} of dirty data in ${count(d.dataExtents)} extent${d.dataExtents === 1 ? '' : 's'}`;
  if (d.rangeExtents === 0) return data;
  return `${data} (and ${count(d.rangeExtents)} trim/zero range${d.rangeExtents === 1 ? '' : 's'} of ${binarySize(d.rangeBytes)})`;
}

export interface ReformatRequest {
  /** --format was given. */
  format: boolean;
  /** --discard-dirty was given. */
  discardDirty: boolean;
  /** What this start wants (the cause of the refusal, when it differs from what is stored). */
  originSize: number;
  dataCrc: boolean;
  /** For `pcached clean NAME`. */
  cacheName?: string;
}

/** The stored settings that differ from `want` (all of them without `want`, or when none differs). */
function storedSettings(d: DirtySurvey, want: ReformatRequest | null): string {
  const { originSize, dataCrc } = d.stored;
  const size = `an origin of ${binarySize(originSize)} (${count(originSize)} bytes)`;
  const crc = dataCrc ? 'dataCrc on, with --data-crc' : 'dataCrc off, without --data-crc';
  const changed = want === null ? [] : [originSize !== want.originSize ? size : null, dataCrc !== want.dataCrc ? crc : null].filter((x) => x !== null);
  return (changed.length > 0 ? changed : [size, crc]).join('; ');
}

/**
 * The format branch of opening a cache: `openError` is why the device cannot be used as it is.
 * Throws the refusal (naming the dirty data and how to write it back), or returns the warning to
 * log when formatting goes ahead and discards something (null when nothing is lost).
 */
export function judgeReformat(dev: BlockDevice, openError: unknown, want: ReformatRequest): string | null {
  const e = openError as PcachedError;
  const code = e.code ?? 'ERR_BAD_SUPERBLOCK';
  const survey = surveyCache(dev);
  const name = want.cacheName ?? 'NAME';
  if (survey.kind === 'foreign') {
    if (want.format) return null;
    throw new PcachedError(code, `${e.message} (start with --format to erase it and format a new cache)`, { cause: openError });
  }
  if (survey.kind === 'unreadable') {
    const unknown = `it is a pcached cache, and whether it holds dirty data (not yet written back) cannot be told: ${survey.why}`;
    if (want.format && want.discardDirty) return `--format --discard-dirty: formatted a pcached cache that could not be surveyed (${survey.why}); whatever it held that was not written back is gone`;
    const keep = `To keep its data, start it with the pcached and the settings that wrote it and run \`pcached clean ${name}\``;
    if (want.format) throw new PcachedError('ERR_CACHE_DIRTY', `--format refused: ${unknown}. ${keep}; to erase it anyway, add --discard-dirty`, { cause: openError });
    const why = survey.why === e.message ? '' : ` (${survey.why})`;
    throw new PcachedError(code, `${e.message}. Whether this pcached cache holds dirty data (not yet written back) cannot be told${why}. ${keep}; to erase it: --format --discard-dirty`, { cause: openError });
  }
  const d = survey.dirty;
  if (isClean(d)) {
    if (want.format) return null;
    throw new PcachedError(code, `${e.message}. It holds no dirty data (the origin has everything): start with --format to erase it and format a new cache`, { cause: openError });
  }
  const amount = `${describeDirty(d)} that the origin does not have yet`;
  const keep = `To keep it: start with the settings it was formatted with (${storedSettings(d, want)}), run \`pcached clean ${name}\`, stop, then start with the new settings and --format`;
  if (want.format && want.discardDirty) return `--format --discard-dirty: discarded ${amount} (the cache was formatted for ${storedSettings(d, null)})`;
  if (want.format) throw new PcachedError('ERR_CACHE_DIRTY', `--format refused: it holds ${amount} (${e.message}). ${keep}. To erase it anyway, add --discard-dirty`, { cause: openError });
  throw new PcachedError(code, `${e.message}. It holds ${amount}. ${keep}. To erase it: --format --discard-dirty`, { cause: openError });
}
