// Human output of `pcached status`: one block per cache, the counters one per line, aligned.

import type { CacheStatus } from '../daemon/ipc.js';
import { formatSize } from '../util/size.js';

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

export function formatStatus(caches: CacheStatus[]): string {
  const blocks = caches.map((c) => {
    const head: [string, string][] = [
      ['state', c.state],
      ['mode', c.mode],
      ['pid', c.pid ? String(c.pid) : '-'],
      ['origin', `${c.origin}${c.originSize ? ` (${formatSize(c.originSize)}, ${c.originSize} bytes)` : ''}`],
      ['cache', c.cache],
      ['read-only', c.readOnly ? 'yes' : 'no'],
      ['listeners', c.listeners.length ? c.listeners.join(' ') : '-'],
      ['connections', String(c.connections)],
      ['stripes', String(c.stripes)],
      ['uptime', duration(c.uptimeSec)],
      ['restarts', String(c.restarts)],
    ];
    const counters = Object.entries(c.stats ?? {}).map(([k, v]): [string, string] => [k, String(v)]);
    const lines = [`cache ${c.name}`, ...aligned(head, '  ')];
    if (counters.length) lines.push('  counters', ...aligned(counters, '    ', true));
    return lines.join('\n');
  });
  return blocks.join('\n\n') + (blocks.length ? '\n' : '');
}
