// Text answers of `pcached message` and `pcached table` (the daemon answers with data; `--json`
// prints that data as it is).

import { formatBytes } from '../util/size.js';
import { TUNABLE_MESSAGES } from '../coordinator/tunables.js';

const BLOCK = 4096;
const dirty = (blocks: unknown): string => `${formatBytes(Number(blocks) * BLOCK)} dirty`;

/** One line for the answer to `pcached message NAME WORDS...`. */
export function formatMessageReply(name: string, words: string[], r: unknown): string {
  if (r === null || r === undefined || r === true) return `${name}: ${words[0]}: done`;
  if (typeof r === 'string') return r;
  const o = r as Record<string, unknown>;
  switch (words[0]) {
    case 'flush':
      return `${name}: flushed: every write acknowledged before this message is durable`;
    case 'clear_stats':
      return `${name}: statistics cleared (the rates start again from now)`;
    case 'mode':
      return o.from === o.mode
        ? `${name}: mode ${String(o.mode)} (unchanged; ${dirty(o.dirtyBlocks)})`
        : `${name}: mode ${String(o.mode)} (was ${String(o.from)}; ${dirty(o.dirtyBlocks)}${o.mode !== 'writeback' && o.mode !== 'writeonly' && Number(o.dirtyBlocks) > 0 ? ', still served from the cache and written back' : ''})`;
    case 'cleaner':
      return o.cleaner
        ? `${name}: cleaner on: writes go to the origin and everything is written back (${dirty(o.dirtyBlocks)}); \`pcached message ${name} cleaner off\` caches writes again`
        : `${name}: cleaner off: writes are cached again (${dirty(o.dirtyBlocks)})`;
    case 'detach':
      return `${name}: detached: the cache file ${String(o.cache)} is released; served from the origin until the next start`;
    case 'flush_on_suspend':
      return `${name}: flush_on_suspend: the next stop writes everything back first`;
    case 'gc_percent':
      return `${name}: gc_percent ${String(o.gcPercent)} (stored in the cache file)`;
    case 'promotion':
      return `${name}: promotion ${String(o.promotion)} (until a reload changes it in the config file, or a restart)`;
    default: {
      const values = Object.values(o);
      // A tunable (high_watermark N ...): the daemon echoes the value it now runs with.
      if (Object.hasOwn(TUNABLE_MESSAGES, words[0] ?? '') && words.length === 2 && values.length === 1) return `${name}: ${words[0]} ${String(values[0])} (until a reload changes it in the config file, or a restart)`;
      return `${name}: ${words.join(' ')}: ${Object.entries(o).map(([k, v]) => `${k} ${String(v)}`).join(', ')}`;
    }
  }
}

export interface TableReply {
  name: string;
  tunables: { key: string; message: string | null; value: unknown; shown: string; source: string }[];
}

/** `pcached table NAME`: one row per running tunable, aligned in columns. */
export function formatTable(t: TableReply): string {
  const head = ['KEY', 'MESSAGE', 'VALUE', 'SOURCE'];
  const rows = t.tunables.map((r) => [r.key, r.message ?? '-', r.shown, r.source]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [`cache ${t.name}`, line(head), ...rows.map(line)].join('\n') + '\n';
}
