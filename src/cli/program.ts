// The command line: `pcached start|run|status|message|reload|...`. Errors are one line
// `pcached: <message>` on stderr; exit code 1, or 2 for usage errors.

import { resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import { environmentVariables } from '../config/load.js';
import { controlRequest } from '../daemon/control.js';
import type { CacheStatus } from '../daemon/ipc.js';
import { LOG_FORMAT_ENV, LOG_FORMATS } from '../daemon/logger.js';
import { runCaptive, startDaemon, type DaemonFlags } from './daemon-start.js';
import { PACKAGE_VERSION } from './version.js';
import { CACHE_MODES } from '../config/types.js';
import { LOG_LEVELS } from '../../config/schema.js';
import { formatStatus, formatWritecacheLine } from './status-format.js';
import { formatInspectReport, inspectCache } from './inspect.js';
import { formatSize } from '../util/size.js';
import { PcachedError } from '../util/errors.js';

export interface CliIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
}

const processIo: CliIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
  env: process.env,
  cwd: process.cwd(),
};

export const DEFAULT_CONTROL = './var/control.sock';

/** A failure already reported to the user, carrying the exit code. */
class Exit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** `--interval` of clean and detach. */
function parseInterval(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 50 || n > 600_000) throw new InvalidArgumentError('must be an integer 50-600000 (milliseconds)');
  return n;
}

function controlPath(io: CliIo, flag: string | undefined): string {
  return resolve(io.cwd, flag ?? io.env.PCACHED_CONTROL ?? DEFAULT_CONTROL);
}

function buildProgram(io: CliIo): Command {
  const program = new Command('pcached')
    .description('Userspace block cache daemon serving a cached volume over NBD')
    .version(PACKAGE_VERSION, '-V, --version', 'print the version and exit')
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({
      writeOut: io.stdout,
      writeErr: io.stderr,
      // Commander says "error: unknown option '--x'"; we say "pcached: unknown option '--x'".
      outputError: (str, write) => write(`pcached: ${str.replace(/^error: /, '').trimEnd()}\n`),
    })
    .showSuggestionAfterError(true);

  const start = program
    .command('start')
    .description('Run the daemon in the foreground (supervisor + one coordinator per cache)')
    .option('--config <file>', 'JSON config file (daemon keys and a "caches" array); also $PCACHED_CONFIG')
    .option('--origin <path|uri>', 'origin file, block device or NBD URI (single-cache form)')
    .option('--cache <path>', 'cache file or block device; created sparse when absent')
    .option('--cache-size <size>', 'size of a cache file pcached creates (e.g. 256M, 1G)')
    .option('--unix <path>', 'Unix socket to serve NBD on ("" for none)')
    .option('--tcp <host:port>', 'TCP address to serve NBD on ("" for none)')
    .option('--name <name>', 'export name')
    .addOption(new Option('--mode <mode>', 'cache mode (writeback or passthrough; the others are not implemented yet)').choices(CACHE_MODES))
    .option('--stripes <n>', 'stripe worker threads (0 = cores - 1, at least 1)')
    .option('--control <path>', 'control socket')
    .option('--read-only', 'serve the export read-only')
    .option('--format', 'allow formatting a cache device that holds something else or was formatted for other settings (refused while it holds dirty data)')
    .option('--discard-dirty', 'with --format: format even a cache holding dirty data (it is lost; write it back first with its old settings and `pcached clean NAME`)')
    .option('--data-crc', 'keep a CRC32C of cached data (when formatting a new cache)')
    .option('--segment-size <size>', 'segment size when formatting a new cache (1M-1G, a multiple of 64K)')
    .option('--gc-percent <n>', 'garbage collection runs above this percentage of segments in use (0-90)')
    .option('--sequential-cutoff <size>', 'sequential read runs longer than this bypass the cache (0 = off)')
    .addOption(new Option('--log-level <level>', 'log level').choices(LOG_LEVELS))
    .option('--pidfile <file>', 'write the daemon PID to FILE once every cache serves (removed on exit; refused while a running pcached holds it)')
    .addOption(new Option('--log-format <format>', `log lines: human or json (default: $${LOG_FORMAT_ENV}, else human on a terminal, json otherwise)`).choices(LOG_FORMATS))
    .addHelpText('after', `\nEnvironment: ${environmentVariables().join(', ')}.\nPrecedence: flags > environment > config file > defaults. See docs/configuration.md.\n`
      + 'The cache file and a local origin are locked while the daemon runs (flock; O_EXCL on block devices): a second daemon on them is refused, naming the PID that holds them.\n'
      + 'Without the native addon the locks are lock files in $PCACHED_LOCK_DIR (default /run/lock/pcached, or $TMPDIR/pcached-locks).\n'
      + 'Under systemd (Type=notify) the daemon sends READY=1 once every cache serves and STOPPING=1 when it drains; with socket activation (LISTEN_FDS) the passed sockets replace the configured listeners. See docs/service.md.')
    .action(async (opts: DaemonFlags) => {
      const code = await startDaemon(io, opts);
      if (code !== 0) throw new Exit(code);
    });

  const captive = program
    .command('run')
    .description("Captive mode, as nbdkit's: start the daemon, run COMMAND once every cache serves (with $uri, $exportname, $unixsocket, $port set), stop the daemon, exit with COMMAND's status")
    .argument('<command...>', 'the command and its arguments, after --')
    .passThroughOptions();
  // Every option of start, so the two never drift apart.
  for (const option of start.options) captive.addOption(option);
  captive
    .addHelpText('after', '\nExample: pcached run --origin disk.img --cache cache.img -- sh -c \'nbdinfo "$uri"\'\n'
      + 'A signal (SIGINT, SIGTERM, SIGHUP) goes to COMMAND; the daemon stops once COMMAND has exited. A COMMAND killed by signal N exits 128+N.\n')
    .action(async (command: string[], opts: DaemonFlags) => {
      const code = await runCaptive(io, opts, command);
      if (code !== 0) throw new Exit(code);
    });

  program
    .command('status')
    .description("Print each cache's state, listeners and counters; with NAME, its one-line dm-writecache style status")
    .argument('[name]', 'only this cache: one line, the 14 dm-writecache status fields then pcached\'s own (docs/operations.md)')
    .option('--json', 'print {"caches":[...]} as JSON')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (name: string | undefined, opts: { json?: boolean; control?: string }) => {
      const result = (await controlRequest(controlPath(io, opts.control), name === undefined ? { op: 'status' } : { op: 'status', name })) as { caches: CacheStatus[] };
      const one = name !== undefined ? result.caches[0]?.cacheState?.writecache : undefined;
      if (opts.json) io.stdout(`${JSON.stringify({ caches: result.caches })}\n`);
      else if (one) io.stdout(`${formatWritecacheLine(one)}\n`);
      else io.stdout(formatStatus(result.caches));
    });

  program
    .command('message')
    .description('Send a message to one cache (e.g. flush, clear_stats)')
    .argument('<name>', 'cache name')
    .argument('<words...>', 'the message and its arguments')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (name: string, words: string[], opts: { control?: string }) => {
      const result = await controlRequest(controlPath(io, opts.control), { op: 'message', name, words }, { timeoutMs: 600_000 });
      if (typeof result === 'string') io.stdout(result.endsWith('\n') ? result : `${result}\n`);
      else if (result !== null && result !== undefined && result !== true) io.stdout(`${JSON.stringify(result, null, 2)}\n`);
    });

  program
    .command('clean')
    .description('Write everything back: turn the cleaner on (writes go to the origin, nothing new is cached) and report progress until no block is dirty')
    .argument('<name>', 'cache name')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .option('--interval <ms>', 'how often to poll and, without a terminal, to print a progress line', parseInterval, 2000)
    .action(async (name: string, opts: { control?: string; interval: number }) => {
      await cleanCache(io, controlPath(io, opts.control), name, opts.interval);
    });

  program
    .command('detach')
    .description('Write everything back (as clean), then release the cache file: the volume is served from the origin until the next start, which attaches the cache again (formatted afresh)')
    .argument('<name>', 'cache name')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .option('--interval <ms>', 'how often to poll and, without a terminal, to print a progress line', parseInterval, 2000)
    .action(async (name: string, opts: { control?: string; interval: number }) => {
      const control = controlPath(io, opts.control);
      await cleanCache(io, control, name, opts.interval);
      const r = (await controlRequest(control, { op: 'message', name, words: ['detach'] }, { timeoutMs: 600_000 })) as { cache: string };
      io.stdout(`detach ${name}: the cache file ${r.cache} is released and marked clean; ${name} is served from its origin until the next start\n`);
    });

  program
    .command('inspect')
    .description("Print a cache file's superblock, cache info, tails, segment use and key log summary (read-only: never formats, never repairs)")
    .requiredOption('--cache <path>', 'cache file or block device')
    .option('--json', 'print one JSON object (fields: docs/format.md, "Inspecting a cache file"); {"formatted":false} when blank')
    .action((opts: { cache: string; json?: boolean }) => {
      const r = inspectCache(resolve(io.cwd, opts.cache));
      io.stdout(opts.json ? `${JSON.stringify(r)}\n` : formatInspectReport(r));
    });

  program
    .command('reload')
    .description('Re-read the config file (like SIGHUP); fails if a changed key needs a restart')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (opts: { control?: string }) => {
      const result = (await controlRequest(controlPath(io, opts.control), { op: 'reload' })) as { reloaded: boolean; changed: string[] };
      if (!result.reloaded) io.stdout('nothing to reload: the daemon runs without a config file\n');
      else io.stdout(result.changed.length ? `reloaded: ${result.changed.join(', ')}\n` : 'reloaded: no change\n');
    });

  return program;
}

/** Runs the command line; resolves with the exit code. */
export async function runCli(args: string[], io: CliIo = processIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(args, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof Exit) return err.code;
    if (err instanceof CommanderError) {
      // Help and version are not errors; everything else commander reports is a usage error.
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? 0 : 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    io.stderr(`pcached: ${message.replace(/\s*\n\s*/g, '; ')}\n`);
    return 1;
  }
}

/** The dirty blocks of one cache, from status. */
async function dirtyOf(control: string, name: string): Promise<number> {
  const r = (await controlRequest(control, { op: 'status', name })) as { caches: CacheStatus[] };
  const cs = r.caches[0]?.cacheState;
  if (!cs) throw new PcachedError('ERR_NOT_RUNNING', `cache ${JSON.stringify(name)} is not running (no cache state in status)`);
  return cs.dirtyBlocks;
}

/**
 * `pcached clean NAME`: cleaner on, then progress until dirty reaches 0: a bar on a terminal,
 * a line every interval otherwise (logs, CI). The cleaner stays on afterwards (as dm-writecache's
 * does): `pcached message NAME cleaner off` caches writes again.
 */
async function cleanCache(io: CliIo, control: string, name: string, interval: number): Promise<void> {
  await controlRequest(control, { op: 'message', name, words: ['cleaner'] });
  const first = await dirtyOf(control, name);
  const tty = io === processIo && process.stderr.isTTY === true;
  const t0 = Date.now();
  let dirty = first;
  const bar = tty && first > 0
    ? new cliProgress.SingleBar({ format: `clean ${name} [{bar}] {percentage}% | {left} dirty blocks left | {duration_formatted}`, stream: process.stderr, hideCursor: true },
      cliProgress.Presets.shades_classic)
    : null;
  bar?.start(first, 0, { left: first });
  if (!bar) io.stdout(`clean ${name}: ${first} dirty blocks (${formatSize(first * 4096)}) to write back\n`);
  while (dirty > 0) {
    await new Promise((r) => setTimeout(r, bar ? Math.min(interval, 250) : interval));
    dirty = await dirtyOf(control, name);
    const done = Math.max(0, first - dirty);
    if (bar) {
      // New writes over dirty data can add to the total while cleaning.
      if (dirty > first) bar.setTotal(done + dirty);
      bar.update(done, { left: dirty });
    } else if (dirty > 0) {
      io.stdout(`clean ${name}: ${dirty} dirty blocks left (${first > 0 ? Math.min(100, Math.round((100 * done) / first)) : 100}% done, ${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    }
  }
  bar?.stop();
  io.stdout(`clean ${name}: no dirty blocks (${first} written back in ${((Date.now() - t0) / 1000).toFixed(1)} s); the cleaner stays on: \`pcached message ${name} cleaner off\` caches writes again\n`);
}
