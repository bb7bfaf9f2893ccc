// Log lines on stderr: pino JSON, or the same records as human lines (./log-human.ts).
// Synchronous destination: the volume is low (never a line per I/O) and a crash must not lose
// the line that explains it.
//
// The format is chosen once by `pcached start --log-format` (default: human on a terminal, JSON
// otherwise) and travels to coordinators and worker threads in $PCACHED_LOG_FORMAT.

import { isatty } from 'node:tty';
import { pino, type Logger, type Level } from 'pino';
import { humanDestination } from './log-human.js';

export type { Logger };

export const LOG_FORMATS = ['human', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const LOG_FORMAT_ENV = 'PCACHED_LOG_FORMAT';

/** The flag's value, else the environment's, else human on a terminal and JSON otherwise. */
export function resolveLogFormat(flag?: string, env: NodeJS.ProcessEnv = process.env): LogFormat {
  const v = flag ?? env[LOG_FORMAT_ENV];
  if (v === 'human' || v === 'json') return v;
  return isatty(2) ? 'human' : 'json';
}

export function createLogger(opts: { level?: Level | 'silent'; name?: string; base?: Record<string, unknown>; format?: LogFormat } = {}): Logger {
  const format = opts.format ?? resolveLogFormat();
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'pcached',
      base: { pid: process.pid, ...opts.base },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    format === 'human' ? humanDestination(2) : pino.destination({ dest: 2, sync: true }),
  );
}
