// A disk that really fails, for tests: runs test/helpers/faulty-disk-main.ts (an NBD server on a
// Unix socket over a durable image and a volatile write cache; see faulty-disk-store.ts for what
// it does) as a child process, and drives it.
//
//   const disk = await startFaultyDisk({ t, dir, size: 64 << 20 });
//   await disk.control('flush fail');     // FLUSH/FUA get EIO and drop the volatile cache
//   await disk.powerCut();                // SIGKILL: the image holds exactly what was flushed
//   await disk.restart();                 // same image, same sockets, empty cache, start-up faults
//
// With readLatencyMs/writeLatencyMs (and a mount from fuse.ts) it is also a slow local disk: each
// request waits its own delay, several in flight overlap, as on a disk with a queue.
//
// The process is started with spawnTracked (killed by PID when the test worker exits, whatever
// happens) and, when `t` is given, stopped by PID in t.teardown.

import { join } from 'node:path';
import { connect } from 'node:net';
import { REPO_ROOT, nbdUri } from './daemon.js';
import { spawnTracked, type Proc } from './lifecycle.js';
import type { DiskStats } from './faulty-disk-control.js';
import type { PowerCutMode } from './faulty-disk-store.js';

export type { DiskStats };

export const FAULTY_DISK_MAIN = join(REPO_ROOT, 'dist', 'test', 'helpers', 'faulty-disk-main.js');

export interface FaultyDiskOptions {
  /** Where the image and the sockets live (the caller removes it). */
  dir: string;
  size: number;
  /** File names inside dir: `${name}.img`, `${name}.sock`, `${name}.ctl` (default `disk`). */
  name?: string;
  /** What survives a power cut: only flushed data (`drop`, default), everything (`keep`), or flushed data plus random sectors (`tear`). */
  powerCut?: PowerCutMode;
  seed?: number;
  failFlushPct?: number;
  failWritePct?: number;
  failReadPct?: number;
  readLatencyMs?: number;
  writeLatencyMs?: number;
  /** Teardown owner: the disk is stopped (SIGKILL, by PID) when the test ends. */
  t?: { teardown(fn: () => unknown): void };
}

export interface FaultyDisk {
  readonly pid: number;
  readonly image: string;
  readonly socket: string;
  readonly controlSocket: string;
  /** nbd+unix:///disk?socket=... */
  readonly uri: string;
  /** One control command (see faulty-disk-control.ts); resolves with the text after `ok`, rejects on `err`. */
  control(cmd: string): Promise<string>;
  stats(): Promise<DiskStats>;
  /** SIGKILL by PID; resolves once the process is gone. */
  powerCut(): Promise<void>;
  /** Start again on the same image and sockets (a power cut first if it still runs). */
  restart(): Promise<void>;
  /** Orderly power-down (SIGTERM: the volatile cache is written first), SIGKILL after 10 s. */
  stop(): Promise<void>;
  alive(): boolean;
  /** stdout and stderr of the current process. */
  output(): string;
}

const READY_TIMEOUT_MS = 20_000;

function argsOf(o: FaultyDiskOptions, image: string, socket: string, control: string): string[] {
  const a = [FAULTY_DISK_MAIN, '--image', image, '--size', String(o.size), '--socket', socket, '--control', control,
    '--power-cut', o.powerCut ?? 'drop', '--seed', String(o.seed ?? 1)];
  const opt = (flag: string, v: number | undefined): void => { if (v !== undefined) a.push(flag, String(v)); };
  opt('--fail-flush', o.failFlushPct);
  opt('--fail-write', o.failWritePct);
  opt('--fail-read', o.failReadPct);
  opt('--read-latency', o.readLatencyMs);
  opt('--write-latency', o.writeLatencyMs);
  return a;
}

/** Resolves when `proc` printed its ready line; rejects with its output if it exits or takes too long. */
function waitReady(proc: Proc, seen: () => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    const poll = (): void => {
      if (seen()) return resolve();
      if (!proc.alive()) return reject(new Error(`faulty disk exited with ${proc.exitCode()} before it was ready:\n${proc.output()}`));
      if (Date.now() > deadline) return reject(new Error(`faulty disk not ready within ${READY_TIMEOUT_MS} ms:\n${proc.output()}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

/** Send one line on a fresh connection to the control socket; the reply line. */
export function controlLine(path: string, line: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ path });
    let got = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no reply to "${line}" on ${path} within ${timeoutMs} ms`)); }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${line}\n`));
    s.on('data', (d: string) => {
      got += d;
      const nl = got.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.destroy();
      resolve(got.slice(0, nl));
    });
    s.on('error', (err) => { clearTimeout(timer); reject(new Error(`control ${path}: ${err.message}`)); });
  });
}

export async function startFaultyDisk(o: FaultyDiskOptions): Promise<FaultyDisk> {
  const name = o.name ?? 'disk';
  const image = join(o.dir, `${name}.img`);
  const socket = join(o.dir, `${name}.sock`);
  const controlSocket = join(o.dir, `${name}.ctl`);
  let proc: Proc;
  const launch = async (): Promise<void> => {
    const p = spawnTracked(process.execPath, argsOf(o, image, socket, controlSocket));
    proc = p;
    await waitReady(p, () => /^ready \{/m.test(p.output()));
  };
  await launch();
  const disk: FaultyDisk = {
    get pid() { return proc.pid; },
    image,
    socket,
    controlSocket,
    uri: nbdUri(socket, 'disk'),
    async control(cmd) {
      const reply = await controlLine(controlSocket, cmd);
      if (reply.startsWith('ok')) return reply.slice(3);
      throw new Error(`faulty disk refused "${cmd}": ${reply}`);
    },
    async stats() {
      return JSON.parse(await disk.control('stats')) as DiskStats;
    },
    async powerCut() {
      await proc.stop('SIGKILL');
    },
    async restart() {
      await proc.stop('SIGKILL');
      await launch();
    },
    async stop() {
      await proc.stop('SIGTERM', 10_000);
    },
    alive: () => proc.alive(),
    output: () => proc.output(),
  };
  o.t?.teardown(() => proc.stop('SIGKILL'));
  return disk;
}
