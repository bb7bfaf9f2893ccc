// Plumbing for the ownership and --format tests (daemon-ownership.test.ts,
// cache-format-dirty.test.ts): a temp dir with a random origin, `pcached start` that must serve or
// must be refused, blocks written and read back through nbdsh. Every process is stopped by its PID
// in t.teardown; refusals must exit 1 with exactly one `pcached: ` line and leave no coordinator.

import type { ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nbdUri } from './daemon.js';
import { killPid, pidRunning, spawnPcached, startServing, stopGracefully, waitFor, within, type Proc, type RunningDaemon } from './lifecycle.js';
import { describe, nbdsh } from './tools.js';

export const MiB = 2 ** 20;
export const ORIGIN_SIZE = 64 * MiB;
export const NAME = 'vol';

export interface Scenario {
  dir: string;
  origin: string;
  /** What the origin held before any daemon ran. */
  originInit: Buffer;
  cache: string;
}

/** A temp dir (removed in teardown) with an origin of random bytes and a cache path. */
export function makeScenario(t: ExecutionContext, prefix: string, originSize = ORIGIN_SIZE): Scenario {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  const originInit = randomBytes(originSize);
  writeFileSync(origin, originInit);
  return { dir, origin, originInit, cache: join(dir, 'cache.img') };
}

export interface Endpoint {
  sock: string;
  control: string;
  uri: string;
}

/** Sockets named `tag` in the scenario's dir: two daemons with other tags never share a socket. */
export function endpoint(s: Scenario, tag: string): Endpoint {
  const sock = join(s.dir, `${tag}.sock`);
  return { sock, control: join(s.dir, `${tag}.ctl`), uri: nbdUri(sock, NAME) };
}

export function startArgs(o: { origin: string; cache: string }, ep: Endpoint, extra: string[] = []): string[] {
  return ['--origin', o.origin, '--cache', o.cache, '--cache-size', '16M', '--segment-size', '1M', '--unix', ep.sock, '--tcp', '',
    '--name', NAME, '--stripes', '1', '--control', ep.control, '--log-level', 'warn', ...extra];
}

/** `pcached start` that must come up and serve (stopped in teardown). */
export function serve(t: ExecutionContext, args: string[], ep: Endpoint, cwd: string, env: Record<string, string> = {}): Promise<RunningDaemon> {
  return startServing(t, args, { cwd, sock: ep.sock, control: ep.control, env });
}

export async function stop(t: ExecutionContext, d: RunningDaemon): Promise<void> {
  t.is(await stopGracefully(d), 0, `graceful stop:\n${d.proc.output().slice(-3000)}`);
}

export const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/**
 * `pcached start` that must be refused: exit 1 within 60 s, exactly one `pcached: ` line matching
 * `re`, no bare stack trace, every coordinator it forked gone. Resolves with that line.
 */
export async function refused(t: ExecutionContext, args: string[], cwd: string, re: RegExp, what: string, env: Record<string, string> = {}): Promise<string> {
  const proc = spawnPcached(args, { cwd, env });
  t.teardown(() => proc.stop('SIGKILL').then(() => undefined));
  return checkRefused(t, proc, re, what);
}

export async function checkRefused(t: ExecutionContext, proc: Proc, re: RegExp, what: string): Promise<string> {
  const code = await within(proc.exited, 60_000, -1);
  const out = proc.output();
  t.is(code, 1, `${what}: exit code\n${out}`);
  const lines = out.split('\n').filter((l) => l.startsWith('pcached: '));
  t.is(lines.length, 1, `${what}: exactly one "pcached: " line\n${out}`);
  t.regex(lines[0] ?? '', re, `${what}: the reason`);
  const plain = out.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
  t.deepEqual(plain.filter((l) => /^\s+at |Uncaught|node:internal|^\w*Error: /.test(l)), [], `${what}: no bare stack trace\n${out}`);
  for (const m of out.matchAll(/"childPid":(\d+)/g)) {
    const pid = Number(m[1]);
    t.teardown(() => killPid(pid));
    await waitFor(`refused coordinator ${pid} to exit`, () => !pidRunning(pid), 15_000, 50);
  }
  return lines[0] ?? '';
}

export const escapeRe = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** 64 KiB block number `i` of a test's data (distinct from any random origin content). */
export const BLOCK = 64 * 1024;
export function testBlock(tag: number, i: number): Buffer {
  const b = Buffer.alloc(BLOCK, (tag * 31 + i) % 251);
  b.write(`pcached test block ${tag}/${i}`, 0, 'latin1');
  return b;
}

/** Writes blocks `first..first+count-1` (block i at i * 2 * BLOCK: never adjacent), then FLUSH. */
export async function writeBlocks(uri: string, dir: string, tag: number, count: number): Promise<void> {
  const file = join(dir, `blocks-${tag}.bin`);
  writeFileSync(file, Buffer.concat(Array.from({ length: count }, (_, i) => testBlock(tag, i))));
  const r = await nbdsh(`
data = open(${JSON.stringify(file)}, 'rb').read()
for i in range(${count}):
    h.pwrite(data[i * ${BLOCK}:(i + 1) * ${BLOCK}], i * ${2 * BLOCK})
h.flush()
print('ok')
`, { uri, timeoutMs: 60_000 });
  rmSync(file, { force: true });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`writing through ${uri} failed: ${describe(r)}`);
}

/** The blocks writeBlocks wrote, read back through `uri`: null when all match, else the first that does not. */
export async function checkBlocks(uri: string, dir: string, tag: number, count: number): Promise<string | null> {
  const file = join(dir, `read-${tag}.bin`);
  const r = await nbdsh(`
out = open(${JSON.stringify(file)}, 'wb')
for i in range(${count}):
    out.write(h.pread(${BLOCK}, i * ${2 * BLOCK}))
out.close()
print('ok')
`, { uri, timeoutMs: 60_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`reading through ${uri} failed: ${describe(r)}`);
  const got = readFileSync(file);
  rmSync(file, { force: true });
  return firstBadBlock(got, tag, count);
}

/** Where the image (or the blocks read back, packed) differs from writeBlocks' data; null when equal. */
export function firstBadBlock(packed: Buffer, tag: number, count: number): string | null {
  for (let i = 0; i < count; i++) {
    if (!packed.subarray(i * BLOCK, (i + 1) * BLOCK).equals(testBlock(tag, i))) return `block ${i} of write ${tag} differs`;
  }
  return null;
}

/** The blocks of writeBlocks as they lie in an image of the whole volume (e.g. the origin file). */
export function blocksInImage(image: Buffer, count: number): Buffer {
  return Buffer.concat(Array.from({ length: count }, (_, i) => image.subarray(i * 2 * BLOCK, i * 2 * BLOCK + BLOCK)));
}
