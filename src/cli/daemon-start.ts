// `pcached start` and `pcached run`: the daemon in the foreground, with what a service manager
// expects around it (sd_notify, socket activation, --pidfile, --log-format). `run` is nbdkit's
// captive mode: start, run COMMAND with $uri set once every cache serves, stop, exit with
// COMMAND's status.

import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { resolve } from 'node:path';
import { loadConfig, type StartFlags } from '../config/load.js';
import { createLogger, LOG_FORMAT_ENV, resolveLogFormat, type Logger } from '../daemon/logger.js';
import { PidFile } from '../daemon/pidfile.js';
import { SdNotifier } from '../daemon/sd-notify.js';
import { listenFds } from '../daemon/socket-activation.js';
import { Supervisor, type ServedUri } from '../daemon/supervisor.js';
import { PcachedError } from '../util/errors.js';

export interface DaemonFlags extends StartFlags {
  pidfile?: string;
  logFormat?: string;
}

export interface DaemonIo {
  env: Readonly<Record<string, string | undefined>>;
  cwd: string;
}

interface Started {
  supervisor: Supervisor;
  logger: Logger;
  uninstall: () => void;
}

async function startSupervisor(io: DaemonIo, flags: DaemonFlags): Promise<Started> {
  const envFormat = io.env[LOG_FORMAT_ENV];
  if (flags.logFormat === undefined && envFormat !== undefined && envFormat !== 'human' && envFormat !== 'json') {
    throw new PcachedError('ERR_CONFIG', `${LOG_FORMAT_ENV}=${JSON.stringify(envFormat)}: must be human or json (or unset: human on a terminal, json otherwise)`);
  }
  const loaded = loadConfig({ env: io.env, flags, cwd: io.cwd });
  const format = resolveLogFormat(flags.logFormat, io.env as NodeJS.ProcessEnv);
  // Coordinators and their worker threads inherit it and log the same way.
  process.env[LOG_FORMAT_ENV] = format;
  const logger = createLogger({ level: loaded.config.logLevel, name: 'pcached', format });
  // Read (and scrubbed from the environment) before anything forks.
  const listenSockets = listenFds(process.env);
  const notifier = new SdNotifier(process.env, logger);
  const supervisor = new Supervisor({
    loaded, logger, notifier, listenSockets,
    pidFile: flags.pidfile !== undefined ? new PidFile(resolve(io.cwd, flags.pidfile)) : undefined,
  });
  // Handlers go in before the coordinators exist: a signal during start-up must not kill us
  // and orphan them.
  const uninstall = supervisor.installSignalHandlers();
  try {
    await supervisor.start();
  } catch (err) {
    uninstall();
    notifier.notify({ STATUS: `failed: ${(err as Error).message}` });
    throw err;
  }
  return { supervisor, logger, uninstall };
}

/** `pcached start`: resolves with the exit code once the daemon has stopped. */
export async function startDaemon(io: DaemonIo, flags: DaemonFlags): Promise<number> {
  const { supervisor, uninstall } = await startSupervisor(io, flags);
  const code = await supervisor.stopped;
  uninstall();
  return code;
}

/** nbdkit's captive-mode variables: $uri (the first listener's), $unixsocket, $port, $exportname. */
export function captiveEnv(uris: ServedUri[]): Record<string, string> {
  const env: Record<string, string> = {};
  const first = uris[0];
  if (first) {
    env.uri = first.uri;
    env.exportname = first.cache;
  }
  const unix = uris.find((u) => u.target.socketPath !== undefined);
  const tcp = uris.find((u) => u.target.socketPath === undefined);
  if (unix) env.unixsocket = unix.target.socketPath!;
  if (tcp) env.port = String(tcp.target.port);
  return env;
}

const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * `pcached run [start options] -- COMMAND [ARGS]`: resolves with COMMAND's exit status
 * (128+n when a signal ended it). SIGINT/SIGTERM/SIGHUP go to COMMAND; the daemon stops when it
 * has exited.
 */
export async function runCaptive(io: DaemonIo, flags: DaemonFlags, command: string[]): Promise<number> {
  if (command.length === 0) throw new PcachedError('ERR_BAD_ARGUMENT', 'pcached run: no command given (pcached run [options] -- COMMAND [ARGS])');
  const { supervisor, logger, uninstall } = await startSupervisor(io, flags);
  if (supervisor.stopRequested) {
    // A signal during start-up: the daemon stopped instead of becoming ready.
    uninstall();
    await supervisor.stopped;
    throw new PcachedError('ERR_SHUTDOWN', `pcached run: stopped by a signal before ${command[0]} could run`);
  }
  // From here on a stop signal is COMMAND's business; the daemon stops when COMMAND has gone.
  // The forwarders go in before the supervisor's handlers come out: in between, a SIGTERM
  // would find no handler and kill us, orphaning the coordinators.
  let child: ChildProcess | undefined;
  let early: NodeJS.Signals | undefined;
  const forward = (sig: NodeJS.Signals): void => {
    if (child) child.kill(sig);
    else early ??= sig;
  };
  for (const sig of FORWARDED) process.on(sig, forward);
  uninstall();
  let status: number;
  try {
    status = await new Promise<number>((res) => {
      child = spawn(command[0]!, command.slice(1), {
        cwd: io.cwd,
        env: { ...process.env, ...captiveEnv(supervisor.uris()) },
        stdio: 'inherit',
      });
      if (early) child.kill(early);
      child.once('error', (err) => {
        logger.error({ command: command[0] }, `pcached run: cannot run ${command[0]}: ${err.message}`);
        res(127);
      });
      child.once('exit', (code, signal) => res(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0)));
    });
  } finally {
    await supervisor.stop('the captive command exited');
    for (const sig of FORWARDED) process.off(sig, forward);
  }
  const code = await supervisor.stopped;
  if (code !== 0) logger.warn({ code }, 'pcached run: the daemon did not stop cleanly');
  return status;
}
