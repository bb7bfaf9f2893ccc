// The human log format: pino's JSON line rewritten as
//   2026-12-02T17:30:01.123Z INFO  pcached[vol]: listening listener=unix:/run/vol.sock
// (time, level, who, message, then key=value). Written synchronously, like the JSON lines.

import { writeSync } from 'node:fs';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Fields already shown in the line's head, or noise on a terminal. */
const HEAD = new Set(['time', 'level', 'msg', 'name', 'cache', 'pid', 'hostname']);

function formatValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v !== null && typeof v === 'object' && 'message' in v && 'stack' in v) {
    // A serialized Error: its message (and code) says it; the stack is in the JSON format.
    const e = v as { message: unknown; code?: unknown };
    return JSON.stringify(e.code !== undefined ? `${String(e.code)}: ${String(e.message)}` : String(e.message));
  }
  return JSON.stringify(v) ?? String(v);
}

export function formatHumanLine(json: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const level = (LEVELS[rec.level as number] ?? String(rec.level)).padEnd(5);
  const who = `${String(rec.name ?? 'pcached')}${rec.cache !== undefined ? `[${String(rec.cache)}]` : ''}`;
  const rest = Object.entries(rec).filter(([k]) => !HEAD.has(k)).map(([k, v]) => `${k}=${formatValue(v)}`);
  return `${String(rec.time ?? '')} ${level} ${who}: ${String(rec.msg ?? '')}${rest.length ? ` ${rest.join(' ')}` : ''}\n`;
}

/** A pino destination writing human lines to fd synchronously. */
export function humanDestination(fd: number): { write(line: string): void } {
  return {
    write(chunk: string) {
      for (const line of chunk.split('\n')) if (line !== '') writeSync(fd, formatHumanLine(line));
    },
  };
}
