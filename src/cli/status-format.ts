// Human output of `pcached status`: one block per cache, the counters one per line, aligned.

import type { CacheStatus } from '../daemon/ipc.js';
import { WRITECACHE_FIELDS, type WritecacheStatus } from '../coordinator/cache-runtime.js';
import { formatBytes, formatSize } from '../util/size.js';
import { formatIndex } from './status-summary.js';

function duration(sec: number): string {
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  const s = Math.floor(sec % 60);
  if (d) return `${d}d${h}h${m}m`;
  if (h) return `${h}h${m}m${s}s`;
  if (m) return `${m}m${s}s`;
  return `${s}s`;
}

function aligned(rows: [string, string][], indent: string, rightAlignValues = false): string[] {
  const keyWidth = Math.max(0, ...rows.map(([k]) => k.length));
  const valueWidth = Math.max(0, ...rows.map(([, v]) => v.length));
  return rows.map(([k, v]) => `${indent}${k.padEnd(keyWidth)}  ${rightAlignValues ? v.padStart(valueWidth) : v}`.trimEnd());
}

/**
 * `pcached status NAME`: one line, dm-writecache's 14 status fields in their order (error,
 * blocks, free, under writeback, read blocks, read hits, write blocks, write hits uncommitted,
 * write hits committed, write bypass, write allocations, writes blocked on the free list,
 * flushes, discards), then pcached's own (mode, dirty blocks, key_head, dirty_tail, key_tail,
 * segments used, gc_percent, epochs pending, writeback bytes/s, hit ratio). `--json` names them.
 */
export function formatWritecacheLine(w: WritecacheStatus): string {
  return WRITECACHE_FIELDS.map((k) => String(w[k])).join(' ');
}

export function formatStatus(caches: CacheStatus[]): string {
  const blocks = caches.map((c) => {
    const head: [string, string][] = [
      ['state', c.state],
      ...(c.condition && c.condition !== c.state ? [['cache state', c.condition] as [string, string]] : []),
      ['mode', c.cacheState?.draining && c.mode !== 'writeback' && c.mode !== 'writeonly'
        ? `${c.mode} (switched from write-back: ${c.cacheState.dirtyBlocks} dirty blocks still being written back)` : c.mode],
      ['pid', c.pid ? String(c.pid) : '-'],
      ['origin', `${c.origin}${c.originSize ? ` (${formatSize(c.originSize)}, ${c.originSize} bytes)` : ''}`],
      ['cache', c.detached ? `${c.cache} (detached: served from the origin until the next start)` : c.cache],
      ['read-only', c.readOnly ? 'yes' : 'no'],
      ['listeners', c.listeners.length ? c.listeners.join(' ') : '-'],
      ['connections', String(c.connections)],
      ['stripes', String(c.stripes)],
      ['uptime', duration(c.uptimeSec)],
      ['restarts', String(c.restarts)],
    ];
    const counters = Object.entries(c.stats ?? {}).map(([k, v]): [string, string] => [k, String(v)]);
    const lines = [`cache ${c.name}`, ...aligned(head, '  ')];
    const cs = c.cacheState;
    if (cs) {
      const pct = (n: number, of: number): string => (of > 0 ? ` (${((100 * n) / of).toFixed(1)}%)` : '');
      const sized = (n: number, of: number): string => `${formatBytes(n * 4096)}${of > 0 ? `, ${((100 * n) / of).toFixed(1)} %` : ''}`;
      const rows: [string, string][] = [
        ['errors', cs.errors.length ? cs.errors.join('; ') : 'none'],
        ...(cs.writecache ? [['status line', formatWritecacheLine(cs.writecache)] as [string, string]] : []),
        ['cache blocks', `${cs.blocks} (${formatBytes(cs.blocks * 4096)})`],
        ['free blocks', `${cs.freeBlocks} (${sized(cs.freeBlocks, cs.blocks)})`],
        ['dirty blocks', `${cs.dirtyBlocks} (${sized(cs.dirtyBlocks, cs.blocks)})`],
        ['cleaner', cs.cleaner ? 'on (writes go to the origin; everything is being written back)' : 'off'],
        ['read blocks', String(cs.readBlocks ?? 0)],
        ['read hits', `${cs.readHits ?? 0}${pct(cs.readHits ?? 0, cs.readBlocks ?? 0)}`],
        ['write blocks', String(cs.writeBlocks ?? 0)],
        ['write bypass', String(cs.writeBypass ?? 0)],
        ['segments used', `${cs.segmentsUsed}/${cs.segments} (${formatSize(cs.segmentSize)} each)`],
        ['key_head', cs.keyHead],
        ['dirty_tail', cs.dirtyTail],
        ['key_tail', cs.keyTail],
        ['gc_percent', String(cs.gcPercent)],
        ['data crc', cs.dataCrc ? 'on' : 'off'],
        ['direct i/o', cs.directIo ? 'on' : 'off'],
        ['i/o backend', cs.ioBackendNote ? `${cs.ioBackend} (${cs.ioBackendNote})` : cs.ioBackend],
        ...(cs.index ? [['index', formatIndex(cs.index)] as [string, string]] : []),
      ];
      lines.push('  cache engine', ...aligned(rows, '    '));
    }
    if (counters.length) lines.push('  counters', ...aligned(counters, '    ', true));
    return lines.join('\n');
  });
  return blocks.join('\n\n') + (blocks.length ? '\n' : '');
}
