// Start nbdkit in the foreground on a Unix socket in a temp dir, wait until it accepts, and
// stop it by PID. Generic: the caller passes plugin, filter and parameter arguments.

import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NBDKIT = '/usr/bin/nbdkit';

export interface NbdkitServer {
  /** Unix socket path. */
  socket: string;
  /** nbd+unix:///?socket=... (default export). */
  uri: string;
  pid: number;
  /** SIGTERM by PID, then SIGKILL if it is still alive after a moment; resolves when it exited. */
  stop(): Promise<void>;
  /** SIGKILL by PID (a crash), resolves when it exited. */
  kill(): Promise<void>;
  /** stderr so far (for failure messages). */
  stderr(): string;
}

/** A fresh temp dir for sockets; removed by the returned cleanup. */
export function makeTempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

function waitAccepting(path: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`nbdkit exited early (${child.exitCode ?? child.signalCode})`));
        return;
      }
      const s = connect({ path });
      s.once('connect', () => { s.destroy(); resolve(); });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > until) reject(new Error(`nbdkit did not accept on ${path} within ${timeoutMs} ms`));
        else setTimeout(attempt, 20);
      });
    };
    attempt();
  });
}

/**
 * `nbdkit -f -U socket ...args`. A probe connection is made to know it accepts; nbdkit sees a
 * client that hangs up during the greeting, which it handles without trouble.
 */
export async function startNbdkit(socket: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<NbdkitServer> {
  const child = spawn(NBDKIT, ['-f', '-U', socket, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const pid = child.pid!;
  const signal = async (sig: NodeJS.Signals, graceMs: number): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    try { process.kill(pid, sig); } catch { return; }
    const timer = setTimeout(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }, graceMs);
    await exited;
    clearTimeout(timer);
  };
  try {
    await waitAccepting(socket, child, opts.timeoutMs ?? 10_000);
  } catch (e) {
    await signal('SIGKILL', 0);
    throw new Error(`${(e as Error).message}\n${err}`);
  }
  return {
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    pid,
    stop: () => signal('SIGTERM', 2000),
    kill: () => signal('SIGKILL', 0),
    stderr: () => err,
  };
}
