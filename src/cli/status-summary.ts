// `pcached status NAME`: one cache, every value labelled and in units (sizes in binary units,
// ratios in percent), with the rates over the last minute and hour beside the totals. `--raw`
// prints dm-writecache's numeric line instead (./status-format.ts), `--json` the fields.

import type { CacheStatus, RateWindowStatus } from '../daemon/ipc.js';
import { formatBytes } from '../util/size.js';

const BLOCK = 4096;

const count = (n: number): string => n.toLocaleString('en-US');
/** "3.1 %": one decimal, and never "0.0 %" for something that is not zero. */
export function percent(part: number, whole: number): string {
  if (whole <= 0) return '-';
  const p = (100 * part) / whole;
  return `${p > 0 && p < 0.1 ? '<0.1' : p.toFixed(1)} %`;
}

function ratio(r: number | null | undefined): string {
  return r === null || r === undefined ? '-' : `${(100 * r).toFixed(1)} %`;
}

function span(w: RateWindowStatus, nominal: string): string {
  // While the cache is younger than the window, say how much it really covers.
  const full = nominal === 'minute' ? 60 : 3600;
  return w.spanSec + 1 >= full ? `last ${nominal}` : `last ${w.spanSec.toFixed(0)} s`;
}

/** "1.2 GiB; 12.0 MiB/s last minute, 1.0 MiB/s last hour". */
function withRates(c: CacheStatus, key: string, show: (n: number) => string, perSec: (n: number) => string): string {
  const r = c.rates;
  if (!r) return '-';
  const parts = [`${show(r.total[key] ?? 0)} total`];
  for (const [name, w] of windows(c)) parts.push(`${perSec(w.perSec[key] ?? 0)} ${span(w, name)}`);
  return parts.join(', ');
}

/** The windows worth showing: the hour only once it covers more than the minute does. */
function windows(c: CacheStatus): ['minute' | 'hour', RateWindowStatus][] {
  const m = c.rates?.minute, h = c.rates?.hour;
  const out: ['minute' | 'hour', RateWindowStatus][] = [];
  if (m) out.push(['minute', m]);
  if (h && (!m || h.spanSec > m.spanSec)) out.push(['hour', h]);
  return out;
}

function duration(sec: number): string {
  const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = Math.floor(sec % 60);
  return h ? `${h}h${m}m${s}s` : m ? `${m}m${s}s` : `${s}s`;
}

/** The rows, label → value, in print order (the test compares them with `--json`). */
export function summaryRows(c: CacheStatus): [string, string][] {
  const rows: [string, string][] = [
    ['state', c.condition ?? c.state],
    ['mode', c.mode],
    ['coordinator', c.pid ? `${c.state}, pid ${c.pid}, up ${duration(c.uptimeSec)}, ${c.restarts} restart${c.restarts === 1 ? '' : 's'}` : c.state],
    ['origin', c.originSize ? `${c.origin} (${formatBytes(c.originSize)})` : c.origin],
    ['cache', c.detached ? `${c.cache} (detached: served from the origin until the next start)` : c.cache],
  ];
  const cs = c.cacheState;
  const bytes = (n: number): string => formatBytes(n);
  const rate = (n: number): string => `${formatBytes(Math.round(n))}/s`;
  if (cs) {
    rows.push(
      ['capacity', `${bytes(cs.blocks * BLOCK)}, ${cs.segments} segments of ${bytes(cs.segmentSize)}`],
      ['dirty', `${bytes(cs.dirtyBlocks * BLOCK)} (${percent(cs.dirtyBlocks, cs.blocks)})`],
      ['free', `${bytes(cs.freeBlocks * BLOCK)} (${percent(cs.freeBlocks, cs.blocks)})`],
      ['under writeback', bytes((cs.writecache?.blocksUnderWriteback ?? 0) * BLOCK)],
      ['segments used', `${cs.segmentsUsed} of ${cs.segments} (${percent(cs.segmentsUsed, cs.segments)}; gc above ${cs.gcPercent} %)`],
      ['cleaner', cs.cleaner ? 'on' : 'off'],
      ['hit ratio', (cs.readBlocks ?? 0) === 0 ? '- (no reads yet)'
        : [`${ratio((cs.readHits ?? 0) / (cs.readBlocks ?? 1))} total`, ...windows(c).map(([n, w]) => `${ratio(w.hitRatio)} ${span(w, n)}`)].join(', ')],
    );
  }
  rows.push(
    ['read', withRates(c, 'bytesRead', bytes, rate)],
    ['written', withRates(c, 'bytesWritten', bytes, rate)],
  );
  if (cs) rows.push(['written back', withRates(c, 'writebackBytes', bytes, rate)]);
  rows.push(['requests', withRates(c, 'requests', count, (n) => `${n.toFixed(1)}/s`)]);
  if (cs) {
    rows.push(
      ['key_head', cs.keyHead],
      ['dirty_tail', cs.dirtyTail],
      ['key_tail', cs.keyTail],
      ['epochs pending', String(cs.epochsPending)],
      ...(cs.index ? [['index', formatIndex(cs.index)] as [string, string]] : []),
      ['errors', cs.errors.length ? cs.errors.join('; ') : 'none'],
    );
  }
  rows.push(
    ['listeners', c.listeners.length ? c.listeners.join(' ') : '-'],
    ['connections', String(c.connections)],
  );
  return rows;
}

export function formatSummary(c: CacheStatus): string {
  const rows = summaryRows(c);
  const width = Math.max(...rows.map(([k]) => k.length));
  return [`cache ${c.name}`, ...rows.map(([k, v]) => `  ${k.padEnd(width)}  ${v}`)].join('\n') + '\n';
}

/** The extent index's memory, and per extent once there are extents (the fixed tables dominate before). */
export function formatIndex(ix: { extents: number; bytes: number }): string {
  return `${ix.extents} extents in ${formatBytes(ix.bytes)}${ix.extents > 0 ? ` (${(ix.bytes / ix.extents).toFixed(1)} B per extent)` : ''}`;
}
