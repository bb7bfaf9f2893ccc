// Helpers for the daemon lifecycle tests (test/daemon-*.test.ts): run `pcached start` with any
// arguments (a config file, the embedded default in a scratch cwd), the CLI, status polling,
// PID polling and a client that reports each acknowledged write as it happens.
//
// Every process started here is tracked by its PID and SIGKILLed by PID when the test worker exits
// if a test did not stop it; tests stop them themselves (t.teardown).

import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { CacheStatus } from '../../src/daemon/ipc.js';
import { PCACHED_BIN } from './daemon.js';
import { describe, nbdsh, run, TOOL_ENV, type RunResult } from './tools.js';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `promise`, or `fallback` after `ms` (the timer is cleared either way, so it never keeps the worker alive). */
export async function within<T>(promise: Promise<T>, ms: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<T>((r) => { timer = setTimeout(() => r(fallback), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

const live = new Set<number>();
process.on('exit', () => {
  for (const pid of live) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
});

/** TOOL_ENV without any PCACHED_* variable (so the developer's environment cannot leak in). */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(TOOL_ENV)) if (!k.startsWith('PCACHED_')) env[k] = v;
  return { ...env, ...extra };
}

/** A child process we started, stopped only by its PID. */
export interface Proc {
  pid: number;
  /** Resolves with the exit code (128+signo when killed by a signal). */
  exited: Promise<number>;
  exitCode(): number | null;
  alive(): boolean;
  /** stdout+stderr so far. */
  output(): string;
  /** Send `signal` by PID (if still running) and wait for the exit; SIGKILL after graceMs. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<number>;
}

const SIGNO: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15, SIGPIPE: 13, SIGABRT: 6, SIGSEGV: 11 };

export function spawnTracked(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; onOutput?: (chunk: string) => void } = {}): Proc {
  const child: ChildProcess = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const MAX = 1 << 20;
  const onData = (d: string): void => {
    out = (out + d).slice(-MAX);
    opts.onOutput?.(d);
  };
  child.stdout!.setEncoding('utf8').on('data', onData);
  child.stderr!.setEncoding('utf8').on('data', onData);
  let code: number | null = null;
  const exited = new Promise<number>((resolve) => {
    // 'close', not 'exit': only then has everything the child wrote to its pipes arrived.
    child.on('close', (c, s) => {
      code = c ?? 128 + (s ? (SIGNO[s] ?? 0) : 0);
      live.delete(pid);
      resolve(code);
    });
    child.on('error', (e) => {
      out += `\nspawn error: ${e.message}\n`;
      code = 127;
      resolve(127);
    });
  });
  const pid = child.pid ?? -1;
  if (pid > 0) live.add(pid);
  const proc: Proc = {
    pid,
    exited,
    exitCode: () => code,
    alive: () => code === null,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 20_000) {
      if (code !== null) return code;
      try { process.kill(pid, signal); } catch { /* gone */ }
      const timer = setTimeout(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
      const c = await exited;
      clearTimeout(timer);
      return c;
    },
  };
  return proc;
}

/** `node bin/pcached start ARGS` (cwd and environment as given; PCACHED_* removed from the environment). */
export function spawnPcached(args: string[], opts: { cwd: string; env?: Record<string, string> }): Proc {
  return spawnTracked(process.execPath, [PCACHED_BIN, 'start', ...args], { cwd: opts.cwd, env: cleanEnv(opts.env) });
}

/** A `pcached start` and its coordinator's PID (0 once it is known to be gone). */
export interface RunningDaemon { proc: Proc; coord: number; sock: string; control: string }

/**
 * `pcached start ARGS`; registers a teardown that stops the supervisor and the coordinator by
 * PID, and resolves once `sock` serves and status shows a running coordinator.
 */
export async function startServing(t: { teardown(fn: () => unknown): void }, args: string[],
  o: { cwd: string; sock: string; control: string; env?: Record<string, string> }): Promise<RunningDaemon> {
  const proc = spawnPcached(args, { cwd: o.cwd, env: o.env });
  const r: RunningDaemon = { proc, coord: 0, sock: o.sock, control: o.control };
  t.teardown(async () => {
    await proc.stop('SIGTERM', 30_000);
    killPid(r.coord);
  });
  await waitAccepting(o.sock, proc, 60_000);
  const st = await waitFor('a running coordinator', async () => {
    const c = (await statusJson(o.control)).caches[0];
    return c && c.state === 'running' && c.pid > 0 ? c : undefined;
  }, 30_000, 100);
  r.coord = st.pid;
  return r;
}

/** SIGKILL the coordinator and the supervisor at once (a power cut for the daemon: nobody cleans up), wait for both. */
export async function killHard(r: { proc: Proc; coord: number }): Promise<void> {
  const coord = r.coord;
  killPid(coord);
  try { process.kill(r.proc.pid, 'SIGKILL'); } catch { /* gone */ }
  await within(r.proc.exited, 30_000, -1);
  await waitFor(`coordinator ${coord} to die`, () => !pidRunning(coord), 30_000, 50);
  r.coord = 0;
}

/** SIGTERM the supervisor, wait for it and its coordinator; resolves with the exit code. */
export async function stopGracefully(r: { proc: Proc; coord: number }): Promise<number> {
  const code = await within(r.proc.stop('SIGTERM', 60_000), 90_000, -1);
  const coord = r.coord;
  await waitFor(`coordinator ${coord} to exit`, () => !pidRunning(coord), 30_000, 50);
  r.coord = 0;
  return code;
}

/** `node bin/pcached ARGS` to completion (status, message, reload). */
export function pcachedCli(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return run(process.execPath, [PCACHED_BIN, ...args], { env: cleanEnv(), cwd: opts.cwd, timeoutMs: opts.timeoutMs ?? 30_000 });
}

export interface StatusJson { caches: CacheStatus[] }

/** `pcached status --json --control PATH`, parsed; throws with the output when it fails. */
export async function statusJson(control: string): Promise<StatusJson> {
  const r = await pcachedCli(['status', '--json', '--control', control]);
  if (r.code !== 0) throw new Error(`pcached status failed (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusJson;
}

/** Poll `fn` until it returns a value other than undefined/false; throws with `what` on timeout. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`);
    }
    await sleep(intervalMs);
  }
}

/** Alive and not a zombie (an orphan's zombie may linger until its new parent reaps it). */
export function pidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // The leader turns zombie as soon as it exits, while its other threads may still be leaving (and
  // still hold its files and locks): the process is gone only once every thread is.
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  return tasks.some((tid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      return state !== 'Z' && state !== 'X';
    } catch {
      return false;
    }
  });
}

/** SIGKILL a PID we know we started (a coordinator forked by our daemon), if it still runs. */
export function killPid(pid: number | undefined): void {
  if (!pid || pid <= 0) return;
  if (!pidRunning(pid)) return;
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** Does a Unix socket accept a connection now? */
export function socketAccepts(path: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const timer = setTimeout(() => { s.destroy(); resolve(false); }, timeoutMs);
    s.once('connect', () => { clearTimeout(timer); s.destroy(); resolve(true); });
    s.once('error', () => { clearTimeout(timer); s.destroy(); resolve(false); });
  });
}

/** Wait until `path` accepts, failing early (with the output) if `proc` exits. */
export async function waitAccepting(path: string, proc: Proc, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.alive()) throw new Error(`process ${proc.pid} exited with ${proc.exitCode()} before ${path} accepted:\n${proc.output()}`);
    if (await socketAccepts(path)) return;
    if (Date.now() > deadline) throw new Error(`${path} did not accept within ${timeoutMs} ms:\n${proc.output()}`);
    await sleep(50);
  }
}

/** Can we bind 127.0.0.1:port right now? (Closed again at once.) */
export function tcpPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/** Write a JSON config file. */
export function writeConfig(path: string, config: unknown): void {
  writeFileSync(path, `${JSON.stringify(config, null, 2)}\n`);
}

/** The coordinator PID of cache `index` as `pcached status --json` reports it (0 when none). */
export async function coordinatorPid(control: string, index = 0): Promise<number> {
  const s = await statusJson(control);
  return s.caches[index]?.pid ?? 0;
}

/**
 * A deterministic 64 KiB block for write number `i` (the first 8 bytes carry i, the rest a byte
 * derived from i), the same in Python (nbdsh) and here.
 */
export const BLOCK = 65536;
export function blockPattern(i: number): Buffer {
  const b = Buffer.alloc(BLOCK, (i * 7 + 1) % 251);
  b.writeBigUInt64LE(BigInt(i), 0);
  return b;
}
export const PY_BLOCK_PATTERN = `
import struct
def block(i):
    return struct.pack('<Q', i) + bytes([(i * 7 + 1) % 251]) * (${BLOCK} - 8)
`;

/**
 * An nbdsh client writing, one request at a time, write number i (pattern blockPattern(i)) at block
 * i mod `blocks` for i = 0..maxWrites-1, printing `ack i` after each reply and stopping at the
 * first error. The newest acknowledged write of each block is what must be on the origin; the one
 * write after the last ack may or may not have been done.
 */
export function startWriter(uri: string, blocks: number, maxWrites = 1_000_000): Proc & { acked(): number[] } {
  const acked: number[] = [];
  let partial = '';
  const script = `${PY_BLOCK_PATTERN}
import sys
for i in range(${maxWrites}):
    try:
        h.pwrite(block(i), (i % ${blocks}) * ${BLOCK})
    except Exception as e:
        print('error', i, e, flush=True)
        sys.exit(0)
    print('ack', i, flush=True)
print('done', flush=True)
`;
  const proc = spawnTracked('nbdsh', ['-u', uri, '-c', script], {
    env: TOOL_ENV,
    onOutput: (chunk) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) {
        const m = /^ack (\d+)$/.exec(l.trim());
        if (m) acked.push(Number(m[1]));
      }
    },
  });
  return Object.assign(proc, { acked: () => acked });
}

/**
 * Check `origin` against the writes of startWriter: for every block, the newest acknowledged write,
 * or the single write that may have followed the last ack. Returns a description of the first
 * mismatch, or null.
 */
export function checkWriterResult(origin: Buffer, blocks: number, acked: number[]): string | null {
  const last = acked.length ? acked[acked.length - 1]! : -1;
  const newest = new Map<number, number>();
  for (const i of acked) newest.set(i % blocks, i);
  for (const [k, i] of newest) {
    const got = origin.subarray(k * BLOCK, (k + 1) * BLOCK);
    if (got.equals(blockPattern(i))) continue;
    if ((last + 1) % blocks === k && got.equals(blockPattern(last + 1))) continue;
    const at = got.length >= 8 ? got.readBigUInt64LE(0) : -1n;
    return `block ${k}: expected acknowledged write ${i}${(last + 1) % blocks === k ? ` (or the unacknowledged ${last + 1})` : ''}, found a block starting with ${at}`;
  }
  return null;
}

/** Write `size` bytes of `tag` at `offset` through the daemon, FLUSH, read them back; throws with the output. */
export async function writeRead(uri: string, offset: number, tag: number, size = 4096): Promise<void> {
  const r = await nbdsh(`
buf = bytes([${tag}]) * ${size}
h.pwrite(buf, ${offset})
h.flush()
assert h.pread(${size}, ${offset}) == buf
print('ok')
`, { uri, timeoutMs: 30_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`write/read through ${uri} failed: ${describe(r)}`);
}
