// Pieces every benchmark script shares: tool environment, fio runs, pre-filled files, medians.

import { spawn, spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, HERE.includes('/dist/') ? '../..' : '..');
export const TOOL_ENV = { ...process.env, PATH: `/usr/bin:/usr/sbin:/bin:/sbin:${process.env.PATH ?? ''}`, LC_ALL: 'C' };

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function canConnect(path: string): Promise<boolean> {
  return new Promise((res) => {
    const s = connect({ path });
    s.once('connect', () => { s.destroy(); res(true); });
    s.once('error', () => { s.destroy(); res(false); });
  });
}



/** One direction of a fio job's JSON result. */
export interface FioDir { iops: number; bw_bytes: number; lat_ns: { mean: number; percentile?: Record<string, number> } }

export interface Sample { iops: number; mbps: number; p50us: number; p99us: number; meanus: number }

/** Run fio asynchronously (servers' pipes keep draining), kill it by PID on timeout. */
export function fio(args: string[], outFile: string, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((res, rej) => {
    const child = spawn('fio', [...args, '--output-format=json', `--output=${outFile}`], { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-16384); });
    child.stderr!.on('data', (b: Buffer) => { out = (out + b.toString()).slice(-16384); });
    const timer = setTimeout(() => { try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    child.on('error', (e) => { clearTimeout(timer); rej(e); });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      if (code !== 0) return rej(new Error(`fio ${args.join(' ')} failed (${code ?? sig}):\n${out}`));
      try {
        res(JSON.parse(readFileSync(outFile, 'utf8')) as Record<string, unknown>);
      } catch (e) {
        rej(new Error(`fio wrote no JSON (${(e as Error).message}):\n${out}`));
      }
    });
  });
}


export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---------------------------------------------------------------------------------------------
// Data files: identical deterministic non-zero content, fully allocated (sparse, then pre-filled).

export function prefillFile(path: string, size: number): void {
  // Deterministic: a seeded xorshift MiB, stamped with its offset, so the files are identical.
  const base = Buffer.alloc(1 << 20);
  const words = new Uint32Array(base.buffer, base.byteOffset, base.length / 4);
  let x = 0x2545f491;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size); // sparse first
    for (let off = 0; off < size; off += base.length) {
      base.writeBigUInt64BE(BigInt(off), 0);
      writeSync(fd, base, 0, Math.min(base.length, size - off), off);
    }
  } finally {
    closeSync(fd);
  }
}

export function toolVersion(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { env: TOOL_ENV, encoding: 'utf8' });
  return (r.stdout || r.stderr || '').split('\n')[0]?.trim() ?? '';
}


export interface Proc { label: string; pid: number; sock: string; exited: Promise<number>; log: () => string; alive: () => boolean }
const procs = new Set<Proc>();

export function killAllProcs(): void {
  for (const p of procs) {
    try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ }
  }
}

/** Starts a server that listens on the Unix socket `sock`; resolves once it accepts. Stopped by PID. */
export async function startProc(label: string, cmd: string, args: string[], sock: string, cwd: string, env: Record<string, string> = {}): Promise<Proc> {
  // A server stopped in an earlier repetition may have left its socket file behind.
  rmSync(sock, { force: true });
  const child = spawn(cmd, args, { cwd, env: { ...TOOL_ENV, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-65536); });
  child.stderr!.on('data', (b: Buffer) => { log = (log + b.toString()).slice(-65536); });
  let code: number | null = null;
  const exited = new Promise<number>((res) => child.on('exit', (c, sig) => { code = c ?? (sig ? 128 : -1); res(code); }));
  await new Promise<void>((res, rej) => { child.once('spawn', () => res()); child.once('error', rej); });
  const p: Proc = { label, pid: child.pid!, sock, exited, log: () => log, alive: () => code === null };
  procs.add(p);
  const deadline = Date.now() + 60_000;
  while (!(await canConnect(sock))) {
    if (code !== null) throw new Error(`${label} exited (${code}) before listening:\n${cmd} ${args.join(' ')}\n${log}`);
    if (Date.now() > deadline) throw new Error(`${label} did not listen on ${sock} within 60 s:\n${log}`);
    await sleep(50);
  }
  return p;
}

export async function stopProc(p: Proc): Promise<void> {
  try { process.kill(p.pid, 'SIGTERM'); } catch { /* gone */ }
  const t = setTimeout(() => { try { process.kill(p.pid, 'SIGKILL'); } catch { /* gone */ } }, 30_000);
  await p.exited;
  clearTimeout(t);
  procs.delete(p);
}

process.on('exit', killAllProcs);
