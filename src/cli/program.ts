// The command line: `pcached start|run|status|message|reload|...`. Errors are one line
// `pcached: <message>` on stderr; exit code 1, or 2 for usage errors.

import { resolve } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import cliProgress from 'cli-progress';
import { environmentVariables, loadConfig, type StartFlags } from '../config/load.js';
import { controlRequest } from '../daemon/control.js';
import type { CacheStatus } from '../daemon/ipc.js';
import { LOG_FORMAT_ENV, LOG_FORMATS } from '../daemon/logger.js';
import { runCaptive, startDaemon, type DaemonFlags } from './daemon-start.js';
import { PACKAGE_VERSION } from './version.js';
import { CACHE_MODES } from '../config/types.js';
import { LOG_LEVELS } from '../../config/schema.js';
import { formatStatus, formatWritecacheLine } from './status-format.js';
import { formatSummary } from './status-summary.js';
import { renderBashCompletion } from './completion.js';
import { formatMessageReply, formatTable, type TableReply } from './message-format.js';
import { formatInspectReport, inspectCache } from './inspect.js';
import { cleanCache, isDetached } from './clean.js';
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

export function buildProgram(io: CliIo = processIo): Command {
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
    .option('--tcp <host:port>', 'TCP address to serve NBD on ("" for none; beyond loopback only with --tls require or allowRemotePlaintext)')
    .addOption(new Option('--tls <mode>', 'NBD STARTTLS: off (refused), on (offered), require (nothing else before it), as nbdkit').choices(['off', 'on', 'require']))
    .option('--tls-certificates <dir>', 'X.509 folder as nbdkit\'s: server-cert.pem, server-key.pem, optional ca-cert.pem and ca-crl.pem')
    .option('--tls-psk <file>', 'pre-shared keys in psktool format (username:hexkey lines), instead of certificates')
    .option('--tls-verify-peer', 'require a client certificate signed by the folder\'s ca-cert.pem')
    .option('--name <name>', 'export name')
    .addOption(new Option('--mode <mode>', 'cache mode, switchable online (docs/cache-engine.md#modes)').choices(CACHE_MODES))
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
    .description("Print each cache's state, listeners and counters; with NAME, that cache's status labelled with units and rates (docs/operations.md)")
    .argument('[name]', 'only this cache')
    .option('--json', 'print {"caches":[...]} as JSON')
    .option('--raw', "with NAME: one line, dm-writecache's 14 status fields then pcached's own, as numbers")
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (name: string | undefined, opts: { json?: boolean; raw?: boolean; control?: string }) => {
      if (opts.raw && name === undefined) {
        io.stderr('pcached: --raw needs a cache NAME (pcached status NAME --raw)\n');
        throw new Exit(2);
      }
      const result = (await controlRequest(controlPath(io, opts.control), name === undefined ? { op: 'status' } : { op: 'status', name })) as { caches: CacheStatus[] };
      const one = name !== undefined ? result.caches[0] : undefined;
      if (opts.json) io.stdout(`${JSON.stringify({ caches: result.caches })}\n`);
      else if (one && opts.raw) {
        const line = one.cacheState?.writecache;
        if (!line) throw new PcachedError('ERR_NOT_RUNNING', `cache ${JSON.stringify(name)} has no status line (${one.condition ?? one.state}): see pcached status ${name}`);
        io.stdout(`${formatWritecacheLine(line)}\n`);
      } else if (one) io.stdout(formatSummary(one));
      else io.stdout(formatStatus(result.caches));
    });

  program
    .command('table')
    .description('Print every running tunable of a cache and where its value came from (config file, flag, environment, message, default), like `dmsetup table`')
    .argument('<name>', 'cache name')
    .option('--json', 'print {"name", "tunables": [{"key", "message", "value", "shown", "source"}]}')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (name: string, opts: { json?: boolean; control?: string }) => {
      const result = (await controlRequest(controlPath(io, opts.control), { op: 'table', name })) as TableReply;
      io.stdout(opts.json ? `${JSON.stringify(result)}\n` : formatTable(result));
    });

  program
    .command('message')
    .description('Send a message to one cache and print its answer: flush, clear_stats, mode M, cleaner [on|off], gc_percent N, promotion always|nhit:N, flush_on_suspend, detach, and the dm-writecache tunables high_watermark, low_watermark, writeback_jobs, autocommit_blocks, autocommit_time, max_age, pause_writeback N; a value set so holds until a reload changes that key in the config file, or a restart (docs/operations.md)')
    .argument('<name>', 'cache name')
    .argument('<words...>', 'the message and its arguments')
    .option('--json', 'print the answer as JSON')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .action(async (name: string, words: string[], opts: { json?: boolean; control?: string }) => {
      const result = await controlRequest(controlPath(io, opts.control), { op: 'message', name, words }, { timeoutMs: 600_000 });
      io.stdout(opts.json ? `${JSON.stringify(result ?? null)}\n` : `${formatMessageReply(name, words, result)}\n`);
    });

  program
    .command('clean')
    .description('Write everything back: turn the cleaner on (writes go to the origin, nothing new is cached), report progress until no block is dirty, then put the cleaner back as it was')
    .argument('<name>', 'cache name')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .option('--interval <ms>', 'how often to poll and, without a terminal, to print a progress line', parseInterval, 2000)
    .action(async (name: string, opts: { control?: string; interval: number }) => {
      await cleanCache(io, controlPath(io, opts.control), name, opts.interval, { restore: true, terminal: io === processIo });
    });

  program
    .command('detach')
    .description('Write everything back (as clean), then release the cache file: the volume is served from the origin until the next start, which attaches the cache again (formatted afresh)')
    .argument('<name>', 'cache name')
    .option('--control <path>', `control socket (default $PCACHED_CONTROL or ${DEFAULT_CONTROL})`)
    .option('--interval <ms>', 'how often to poll and, without a terminal, to print a progress line', parseInterval, 2000)
    .action(async (name: string, opts: { control?: string; interval: number }) => {
      const control = controlPath(io, opts.control);
      if (await isDetached(control, name)) throw new PcachedError('ERR_BAD_ARGUMENT', `cache ${JSON.stringify(name)} is already detached (served from its origin until the next start); restart pcached to attach it again`);
      await cleanCache(io, control, name, opts.interval, { restore: false, terminal: io === processIo });
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

  program
    .command('completion')
    .description('Print the bash completion script (pcached completion bash > /usr/share/bash-completion/completions/pcached)')
    .argument('[shell]', 'the shell: bash', 'bash')
    .action((shell: string) => {
      if (shell !== 'bash') throw new PcachedError('ERR_BAD_ARGUMENT', `no completion for ${JSON.stringify(shell)} yet: only bash (pcached completion bash)`);
      io.stdout(renderBashCompletion(program));
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
