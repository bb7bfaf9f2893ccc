// `pcached clean NAME` (and the cleaning part of `pcached detach NAME`): the cleaner on, progress
// until nothing is dirty, the cleaner back as it was, also when interrupted.

import cliProgress from 'cli-progress';
import { controlRequest } from '../daemon/control.js';
import type { CacheStatus } from '../daemon/ipc.js';
import { formatBytes } from '../util/size.js';
import { PcachedError } from '../util/errors.js';
import type { CliIo } from './program.js';

/** The cache part of one cache's status; throws when it has none. */
async function cacheStateOf(control: string, name: string): Promise<NonNullable<CacheStatus['cacheState']>> {
  const r = (await controlRequest(control, { op: 'status', name })) as { caches: CacheStatus[] };
  const cs = r.caches[0]?.cacheState;
  if (!cs) throw new PcachedError('ERR_NOT_RUNNING', `cache ${JSON.stringify(name)} is ${r.caches[0]?.state ?? 'not running'}: it has no cache state now; try again once pcached status ${name} shows it running`);
  return cs;
}

export async function isDetached(control: string, name: string): Promise<boolean> {
  const r = (await controlRequest(control, { op: 'status', name })) as { caches: CacheStatus[] };
  return r.caches[0]?.detached === true;
}

/**
 * `pcached clean NAME`: cleaner on, then progress until dirty reaches 0: a bar on a terminal,
 * a line every interval otherwise (logs, CI); then the cleaner goes back to what it was (detach
 * keeps it on). Interrupted by SIGINT or SIGTERM, it is put back too before the command exits.
 */
export async function cleanCache(io: CliIo, control: string, name: string, interval: number, opts: { restore: boolean; terminal: boolean }): Promise<void> {
  if (await isDetached(control, name)) {
    io.stdout(`clean ${name}: nothing to do: the cache is detached (everything was written back; served from the origin until the next start)\n`);
    return;
  }
  const wasOn = (await cacheStateOf(control, name)).cleaner;
  await controlRequest(control, { op: 'message', name, words: ['cleaner', 'on'] });
  const dirtyOf = async (): Promise<number> => (await cacheStateOf(control, name)).dirtyBlocks;
  const first = await dirtyOf();
  const tty = opts.terminal && process.stderr.isTTY === true;
  const t0 = Date.now();
  let dirty = first;
  const bar = tty && first > 0
    ? new cliProgress.SingleBar({ format: `clean ${name} [{bar}] {percentage}% | {left} dirty blocks left | {duration_formatted}`, stream: process.stderr, hideCursor: true },
      cliProgress.Presets.shades_classic)
    : null;
  bar?.start(first, 0, { left: first });
  if (!bar) io.stdout(`clean ${name}: ${first} dirty blocks (${formatBytes(first * 4096)}) to write back\n`);
  const putBack = opts.restore && !wasOn;
  const interrupted = (signal: NodeJS.Signals): void => {
    bar?.stop();
    const restored = putBack ? controlRequest(control, { op: 'message', name, words: ['cleaner', 'off'] }) : Promise.resolve();
    restored.then(
      () => io.stderr(`clean ${name}: interrupted with ${dirty} dirty blocks left; the cleaner is ${putBack ? 'off again, as it was' : 'on (as it was before, or for detach)'}\n`),
      (err: Error) => io.stderr(`clean ${name}: interrupted; the cleaner could not be turned off again (${err.message}): run pcached message ${name} cleaner off\n`),
    ).finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  const signals = opts.terminal ? (['SIGINT', 'SIGTERM'] as const) : [];
  for (const sig of signals) process.once(sig, interrupted);
  try {
    while (dirty > 0) {
      await new Promise((r) => setTimeout(r, bar ? Math.min(interval, 250) : interval));
      dirty = await dirtyOf();
      const done = Math.max(0, first - dirty);
      if (bar) {
        // New writes over dirty data can add to the total while cleaning.
        if (dirty > first) bar.setTotal(done + dirty);
        bar.update(done, { left: dirty });
      } else if (dirty > 0) {
        io.stdout(`clean ${name}: ${dirty} dirty blocks left (${first > 0 ? Math.min(100, Math.round((100 * done) / first)) : 100}% done, ${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
      }
    }
  } finally {
    for (const sig of signals) process.off(sig, interrupted);
  }
  bar?.stop();
  const took = `${first} written back in ${((Date.now() - t0) / 1000).toFixed(1)} s`;
  if (!opts.restore) {
    io.stdout(`clean ${name}: no dirty blocks (${took})\n`);
  } else if (wasOn) {
    io.stdout(`clean ${name}: no dirty blocks (${took}); the cleaner was on before and stays on\n`);
  } else {
    await controlRequest(control, { op: 'message', name, words: ['cleaner', 'off'] });
    io.stdout(`clean ${name}: no dirty blocks (${took}); the cleaner is off again, as it was: writes are cached\n`);
  }
}
