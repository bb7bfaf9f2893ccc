// pino JSON lines on stderr. Synchronous destination: the volume is low (never a line per I/O)
// and a crash must not lose the line that explains it.

import { pino, type Logger, type Level } from 'pino';

export type { Logger };

export function createLogger(opts: { level?: Level | 'silent'; name?: string; base?: Record<string, unknown> } = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'pcached',
      base: { pid: process.pid, ...opts.base },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ dest: 2, sync: true }),
  );
}
