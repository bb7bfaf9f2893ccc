// Start the NBD server under test in a fresh temp dir and hand back its coordinates.
//
// The server is pcached by default; PCACHED_TEST_SERVER=nbdkit runs nbdkit's file (or nbd) plugin
// with the exportname filter instead, so every client test can be developed and cross-checked
// against a reference server. Tests must stop every daemon they start (t.teardown / after.always);
// as a last resort, daemons still alive when the test worker exits are SIGKILLed by PID.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, ftruncateSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TOOL_ENV } from './tools.js';

export type ServerKind = 'pcached' | 'nbdkit' | 'qemu-nbd';

/**
 * PCACHED_TEST_SERVER: `pcached` (default), `nbdkit` (the reference used to develop the tests), or
 * `qemu-nbd` (a second reference; only useful for the robustness tests — it differs from pcached
 * on several error codes and does not advertise multi-conn for writable exports).
 */
export const SERVER: ServerKind = ((): ServerKind => {
  const v = process.env.PCACHED_TEST_SERVER;
  return v === 'nbdkit' || v === 'qemu-nbd' ? v : 'pcached';
})();
/** True when the server under test is a reference server rather than pcached. */
export const isNbdkit = SERVER !== 'pcached';

/** Repository root (this file runs from dist/test/helpers/ or test/helpers/). */
export const REPO_ROOT = (() => {
  const here = dirname(fileURLToPath(import.meta.url));
  const up = here.includes(`${'/'}dist${'/'}`) ? '../../..' : '../..';
  return resolve(here, up);
})();

export const PCACHED_BIN = join(REPO_ROOT, 'bin', 'pcached');

export interface DaemonOptions {
  /** Export name (default `vol`). */
  name?: string;
  /** Size of the sparse origin file created in the temp dir (default 64 MiB). Ignored with `originUri`. */
  originSize?: number;
  /** Serve this NBD URI as the origin instead of a file. */
  originUri?: string;
  /** Use this existing origin file instead of creating one (the caller owns and removes it). */
  originFile?: string;
  /** Called with the path of the fresh sparse origin file before the server starts (to seed data). */
  prepareOrigin?: (path: string) => void;
  readOnly?: boolean;
  /** Also listen on TCP, `127.0.0.1:PORT`. */
  tcp?: string;
  stripes?: number;
  cacheSize?: string;
  logLevel?: string;
  /** Extra arguments for `pcached start` (ignored for nbdkit). */
  extraArgs?: string[];
  /** How long to wait for the socket to accept a connection (default 30 s). */
  readyTimeoutMs?: number;
  /** Reuse this directory (e.g. a restart on the same cache) instead of a fresh temp dir. */
  dir?: string;
  /** Extra environment for the server process (e.g. PCACHED_TEST_HOOKS=1). */
  env?: Record<string, string>;
  /** Start the server under this umask (octal, e.g. "000"): a shell sets it and execs the server, keeping the PID. */
  umask?: string;
}

export interface Daemon {
  kind: ServerKind;
  pid: number;
  dir: string;
  name: string;
  sock: string;
  /** nbd+unix:///NAME?socket=SOCK */
  uri: string;
  /** Control socket path (pcached only; a path that does not exist under nbdkit). */
  control: string;
  origin: string | undefined;
  size: number | undefined;
  /** Send `signal` (by PID) and resolve with the exit code (128+signo when killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number>;
  kill9(): Promise<number>;
  alive(): boolean;
  stderr(): string;
  /** Stop (SIGTERM, then SIGKILL after 20 s) if still running, and remove the temp dir. */
  dispose(): Promise<void>;
}

const live = new Set<number>();
process.on('exit', () => {
  for (const pid of live) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

export function makeSparseFile(path: string, size: number): void {
  const fd = openSync(path, 'w');
  try { ftruncateSync(fd, size); } finally { closeSync(fd); }
}

export function freshDir(): string {
  return mkdtempSync(join(tmpdir(), 'pcached-t-'));
}

export function nbdUri(sock: string, name: string): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`;
}

/** Resolve when a Unix socket accepts a connection (the connection is closed at once). */
function tryConnect(path: string): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ path });
    const done = (ok: boolean) => { s.destroy(); res(ok); };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    setTimeout(() => done(false), 2000).unref();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const dir = opts.dir ?? freshDir();
  const name = opts.name ?? 'vol';
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  let origin: string | undefined;
  let size: number | undefined;
  if (opts.originUri === undefined) {
    origin = opts.originFile ?? join(dir, 'origin.img');
    size = opts.originSize ?? 64 * 1024 * 1024;
    if (opts.originFile === undefined) {
      makeSparseFile(origin, size);
      opts.prepareOrigin?.(origin);
    }
  }
  const originArg = opts.originUri ?? origin!;

  let cmd: string;
  let args: string[];
  if (SERVER === 'qemu-nbd') {
    if (opts.originUri !== undefined) throw new Error('qemu-nbd mode does not support an NBD origin');
    cmd = 'qemu-nbd';
    args = ['-k', sock, '-x', name, '-D', 'pcached test volume', '-e', '64', '-t', '-f', 'raw',
      '--cache=writeback', '--discard=unmap', ...(opts.readOnly ? ['-r'] : []), origin!];
  } else if (SERVER === 'nbdkit') {
    cmd = 'nbdkit';
    args = ['-f', '-U', sock];
    if (opts.tcp) {
      const [host, port] = splitHostPort(opts.tcp);
      args.push('-i', host, '-p', port);
    }
    if (opts.readOnly) args.push('-r');
    args.push('--filter=exportname');
    if (opts.originUri !== undefined) args.push('nbd', `uri=${opts.originUri}`);
    else args.push('file', origin!);
    args.push(`exportname=${name}`, 'exportname=', `default-export=${name}`, 'exportname-list=explicit', 'exportname-strict=true',
      'exportdesc=fixed:pcached test volume');
  } else {
    cmd = process.execPath;
    args = [PCACHED_BIN, 'start',
      '--origin', originArg,
      '--cache', join(dir, 'cache.img'),
      '--cache-size', opts.cacheSize ?? '64M',
      '--unix', sock,
      '--tcp', opts.tcp ?? '',
      '--name', name,
      '--stripes', String(opts.stripes ?? 2),
      '--control', control,
      '--log-level', opts.logLevel ?? 'warn'];
    if (opts.readOnly) args.push('--read-only');
    if (opts.extraArgs) args.push(...opts.extraArgs);
  }

  if (opts.umask !== undefined) {
    if (!/^[0-7]{3,4}$/.test(opts.umask)) throw new Error(`bad umask ${opts.umask}`);
    args = ['-c', `umask ${opts.umask} && exec "$0" "$@"`, cmd, ...args];
    cmd = '/bin/sh';
  }
  const child: ChildProcess = spawn(cmd, args, {
    cwd: dir,
    env: opts.env ? { ...TOOL_ENV, ...opts.env } : TOOL_ENV,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  const MAX = 1 << 20;
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { err = (err + d).slice(-MAX); });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err = (err + d).slice(-MAX); });
  let exitCode: number | null = null;
  const exited = new Promise<number>((res) => {
    // 'close', not 'exit': only then has all of the daemon's output arrived.
    child.on('close', (code, signal) => {
      exitCode = code ?? 128 + signalNumber(signal);
      if (child.pid !== undefined) live.delete(child.pid);
      res(exitCode);
    });
  });
  const spawnError = new Promise<Error>((res) => child.on('error', res));
  if (child.pid === undefined) {
    throw new Error(`cannot start ${cmd}: ${(await spawnError).message}`);
  }
  const pid = child.pid;
  live.add(pid);

  const daemon: Daemon = {
    kind: SERVER,
    pid,
    dir,
    name,
    sock,
    uri: nbdUri(sock, name),
    control,
    origin,
    size,
    alive: () => exitCode === null,
    stderr: () => err,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (exitCode !== null) return exitCode;
      try { process.kill(pid, signal); } catch { /* already gone */ }
      return exited;
    },
    async kill9() {
      return daemon.stop('SIGKILL');
    },
    async dispose() {
      if (exitCode === null) {
        try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
        const t = setTimeout(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }, 20_000);
        await exited;
        clearTimeout(t);
      }
      if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };

  // Wait until the Unix socket accepts a connection.
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
  for (;;) {
    if (exitCode !== null) {
      throw new Error(`${SERVER} exited with ${exitCode} before listening on ${sock}\n` +
        `command: ${cmd} ${args.join(' ')}\nstderr:\n${err}`);
    }
    if (await tryConnect(sock)) break;
    if (Date.now() > deadline) {
      await daemon.kill9();
      throw new Error(`${SERVER} (pid ${pid}) did not accept connections on ${sock} within ` +
        `${opts.readyTimeoutMs ?? 30_000} ms\ncommand: ${cmd} ${args.join(' ')}\nstderr:\n${err}`);
    }
    await sleep(50);
  }
  return daemon;
}

function splitHostPort(hp: string): [string, string] {
  const i = hp.lastIndexOf(':');
  return [hp.slice(0, i).replace(/^\[|\]$/g, ''), hp.slice(i + 1)];
}

function signalNumber(sig: NodeJS.Signals | null): number {
  const table: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGABRT: 6, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };
  return sig ? (table[sig] ?? 0) : 0;
}

/** Is a process with this PID alive (signal 0)? */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
