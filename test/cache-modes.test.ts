// Cache modes through the real daemon: what reaches the origin file and when, what is served
// from the cache, what survives a restart, and online switches (`message NAME mode M`, SIGHUP).
//
// Each scenario has its own temp dir and a 64 MiB origin of random bytes, so "the origin's old
// content", "data written" and "stale cached data" can always be told apart. Every process
// started here is stopped by its PID in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CacheStatus } from '../src/daemon/ipc.js';
import { nbdUri } from './helpers/daemon.js';
import { startServing, stopGracefully, pcachedCli, statusJson, waitFor, writeConfig, type RunningDaemon } from './helpers/lifecycle.js';
import { describe, needTools, nbdshJson, skipSuffix } from './helpers/tools.js';

const MiB = 1 << 20;
const BLK = 4096;
const ORIGIN_SIZE = 64 * MiB;
const NAME = 'vol';

type CacheState = NonNullable<CacheStatus['cacheState']>;

interface Env { dir: string; origin: string; cache: string; originInit: Buffer }

function makeEnv(t: ExecutionContext): Env {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-modes-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  const originInit = randomBytes(ORIGIN_SIZE);
  writeFileSync(origin, originInit);
  return { dir, origin, cache: join(dir, 'cache.img'), originInit };
}

interface Running extends RunningDaemon { uri: string; dir: string }

async function start(t: ExecutionContext, e: Env, mode: string, opts: { env?: Record<string, string>; config?: boolean } = {}): Promise<Running> {
  const sock = join(e.dir, 'nbd.sock');
  const control = join(e.dir, 'control.sock');
  let args: string[];
  if (opts.config) {
    writeConfig(join(e.dir, 'pcached.json'), configOf(e, mode));
    args = ['--config', join(e.dir, 'pcached.json')];
  } else {
    args = ['--origin', e.origin, '--cache', e.cache, '--cache-size', '32M', '--segment-size', '1M', '--unix', sock, '--tcp', '',
      '--name', NAME, '--control', control, '--stripes', '2', '--mode', mode, '--log-level', 'warn'];
  }
  const base = await startServing(t, args, { cwd: e.dir, sock, control, env: opts.env });
  return Object.assign(base, { uri: nbdUri(sock, NAME), dir: e.dir });
}

function configOf(e: Env, mode: string): unknown {
  return {
    control: join(e.dir, 'control.sock'), logLevel: 'warn',
    caches: [{
      name: NAME, origin: e.origin, cache: e.cache, cacheSize: '32M', segmentSize: '1M', unix: join(e.dir, 'nbd.sock'), tcp: '',
      stripes: 2, mode,
    }],
  };
}

async function state(r: Running): Promise<CacheStatus & { cacheState: CacheState }> {
  const c = (await statusJson(r.control)).caches[0];
  if (!c?.cacheState) throw new Error(`status has no cacheState: ${JSON.stringify(c)}`);
  return c as CacheStatus & { cacheState: CacheState };
}

let fileSeq = 0;

/** One script: each [offset, data] written (in order), then FLUSH. */
async function write(r: Running, writes: [number, Buffer][]): Promise<void> {
  const ops = writes.map(([o, d]) => {
    const f = join(r.dir, `w-${fileSeq++}.bin`);
    writeFileSync(f, d);
    return `h.pwrite(open(${JSON.stringify(f)}, 'rb').read(), ${o})`;
  }).join('\n');
  await nbdshJson(`${ops}\nh.flush()\nprint('"ok"')`, { uri: r.uri, timeoutMs: 60_000 });
}

async function read(r: Running, off: number, len: number): Promise<Buffer> {
  const f = join(r.dir, `r-${fileSeq++}.bin`);
  await nbdshJson(`open(${JSON.stringify(f)}, 'wb').write(h.pread(${len}, ${off}))\nprint('"ok"')`, { uri: r.uri, timeoutMs: 60_000 });
  const data = readFileSync(f);
  rmSync(f);
  return data;
}

const originAt = (e: Env, off: number, len: number): Buffer => readFileSync(e.origin).subarray(off, off + len);

async function message(r: Running, ...words: string[]): Promise<string> {
  const res = await pcachedCli(['message', NAME, ...words, '--control', r.control]);
  if (res.code !== 0) throw new Error(`message ${words.join(' ')} failed: ${describe(res)}`);
  return res.stdout;
}

/** Read hits gained while `fn` runs. */
async function hitsDuring(r: Running, fn: () => Promise<unknown>): Promise<{ blocks: number; hits: number }> {
  const a = (await state(r)).cacheState;
  await fn();
  const b = (await state(r)).cacheState;
  return { blocks: (b.readBlocks ?? 0) - (a.readBlocks ?? 0), hits: (b.readHits ?? 0) - (a.readHits ?? 0) };
}

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;

t_('writethrough: a write is on the origin when acknowledged, is served from the cache, nothing is dirty; after a restart still a hit' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const d = await start(t, e, 'writethrough');
  const a = randomBytes(256 * 1024);
  await write(d, [[8 * MiB, a]]);
  t.true(originAt(e, 8 * MiB, a.length).equals(a), 'the origin has the write as soon as it is acknowledged');
  const s = await state(d);
  t.is(s.mode, 'writethrough');
  t.is(s.cacheState.dirtyBlocks, 0, 'writethrough leaves nothing dirty');
  const h = await hitsDuring(d, async () => t.true((await read(d, 8 * MiB, a.length)).equals(a)));
  t.is(h.hits, h.blocks, `served from the cache: ${JSON.stringify(h)}`);
  t.is(await stopGracefully(d), 0, d.proc.output());
  const d2 = await start(t, e, 'writethrough');
  const h2 = await hitsDuring(d2, async () => t.true((await read(d2, 8 * MiB, a.length)).equals(a)));
  t.is(h2.hits, h2.blocks, `still cached after the restart: ${JSON.stringify(h2)}`);
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

t_('writearound: writes go to the origin and drop the cached copy, which a restart does not bring back; reads are cached' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const d = await start(t, e, 'writearound');
  const off = 12 * MiB;
  const len = 64 * 1024;
  // Promote the origin's data, then check it is a hit.
  t.true((await read(d, off, len)).equals(e.originInit.subarray(off, off + len)));
  const h1 = await hitsDuring(d, () => read(d, off, len));
  t.is(h1.hits, h1.blocks, `a read is promoted in writearound: ${JSON.stringify(h1)}`);
  const b = randomBytes(len);
  await write(d, [[off, b]]);
  t.true(originAt(e, off, len).equals(b), 'the write is on the origin');
  t.is((await state(d)).cacheState.dirtyBlocks, 0);
  const h2 = await hitsDuring(d, async () => t.true((await read(d, off, len)).equals(b), 'the new data is read, not the old cached copy'));
  t.is(h2.hits, 0, `the cached copy was dropped: ${JSON.stringify(h2)}`);
  t.is(await stopGracefully(d), 0, d.proc.output());
  // Replay must not bring the old clean copy back (an INVALIDATE key is in the log).
  const d2 = await start(t, e, 'writearound');
  t.true((await read(d2, off, len)).equals(b), 'after a restart the new data, not the old cached copy');
  const r = await pcachedCli(['inspect', '--cache', e.cache, '--json']);
  t.is(r.code, 0, describe(r));
  t.true((JSON.parse(r.stdout) as { log: { keysByFlag: { invalidate: number } } }).log.keysByFlag.invalidate >= 1);
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

t_('writeonly caches writes (dirty) and does not promote reads; passthrough promotes nothing' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const d = await start(t, e, 'writeonly', { env: { PCACHED_PAUSE_WRITEBACK_MS: '600000' } });
  const w = randomBytes(128 * 1024);
  await write(d, [[20 * MiB, w]]);
  t.true(originAt(e, 20 * MiB, w.length).equals(e.originInit.subarray(20 * MiB, 20 * MiB + w.length)), 'write-back: the origin does not have it yet');
  t.true((await state(d)).cacheState.dirtyBlocks >= w.length / BLK);
  const off = 30 * MiB;
  for (let i = 0; i < 2; i++) {
    const h = await hitsDuring(d, async () => t.true((await read(d, off, 64 * 1024)).equals(e.originInit.subarray(off, off + 64 * 1024))));
    t.is(h.hits, 0, `writeonly does not promote reads (pass ${i}): ${JSON.stringify(h)}`);
  }
  await message(d, 'mode', 'passthrough');
  for (let i = 0; i < 2; i++) {
    const h = await hitsDuring(d, async () => t.true((await read(d, off + MiB, 64 * 1024)).equals(e.originInit.subarray(off + MiB, off + MiB + 64 * 1024))));
    t.is(h.hits, 0, `passthrough does not promote reads (pass ${i}): ${JSON.stringify(h)}`);
  }
  // The dirty data is still served from the cache in passthrough.
  t.true((await read(d, 20 * MiB, w.length)).equals(w));
  t.is(await stopGracefully(d), 0, d.proc.output());
});

t_('leaving write-back online: dirty data still served, writes over it stay ordered, status shows the drain, the origin ends up equal to the volume' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const e = makeEnv(t);
  // Writeback held back so the data is still dirty when the mode changes.
  const d = await start(t, e, 'writeback', { config: true, env: { PCACHED_PAUSE_WRITEBACK_MS: '600000' } });
  const base = 40 * MiB;
  const first = randomBytes(512 * 1024);
  await write(d, [[base, first]]);
  const s0 = await state(d);
  t.true(s0.cacheState.dirtyBlocks >= first.length / BLK, JSON.stringify(s0.cacheState));
  t.true(originAt(e, base, first.length).equals(e.originInit.subarray(base, base + first.length)), 'not written back yet');

  const out = await message(d, 'mode', 'passthrough');
  t.regex(out, /passthrough/);
  const s1 = await state(d);
  t.is(s1.mode, 'passthrough');
  t.true(s1.cacheState.draining, 'status shows the drain');
  const human = await pcachedCli(['status', '--control', d.control]);
  t.regex(human.stdout, /mode\s+passthrough \(switched from write-back: \d+ dirty blocks still being written back\)/);

  // Passthrough writes: one over the dirty range (must also go into the cache, after the dirty
  // data), one elsewhere (origin only).
  const over = randomBytes(64 * 1024);
  const elsewhere = randomBytes(64 * 1024);
  await write(d, [[base + 128 * 1024, over], [base + 4 * MiB, elsewhere]]);
  const expected = Buffer.from(first);
  over.copy(expected, 128 * 1024);
  t.true((await read(d, base, first.length)).equals(expected), 'the dirty data and the newer write over it are both served');
  t.true(originAt(e, base + 4 * MiB, elsewhere.length).equals(elsewhere), 'a passthrough write elsewhere is on the origin at once');

  // SIGHUP with mode writethrough in the config: the mode switches online.
  writeConfig(join(e.dir, 'pcached.json'), configOf(e, 'writethrough'));
  process.kill(d.proc.pid, 'SIGHUP');
  await waitFor('mode writethrough after the reload', async () => (await state(d)).mode === 'writethrough', 30_000, 200);

  // Let writeback run: everything drains and the origin equals what the volume serves.
  await message(d, 'pause_writeback_ms', '0');
  const done = await waitFor('the drain', async () => {
    const s = await state(d);
    return s.cacheState.dirtyBlocks === 0 ? s : undefined;
  }, 120_000, 250);
  t.false(done.cacheState.draining);
  t.true(originAt(e, base, first.length).equals(expected), 'the origin holds the newest data, in order');
  const vol = await read(d, base, first.length);
  t.true(vol.equals(expected));
  const bad = await pcachedCli(['message', NAME, 'mode', 'turbo', '--control', d.control]);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /usage: mode M \(one of writeback, writethrough, writearound, passthrough, writeonly\)/);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

t_('`pcached status NAME`: the dm-writecache fields in order, then pcached\'s; write hits on uncommitted and committed blocks; clear_stats' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const d = await start(t, e, 'writeback', { env: { PCACHED_PAUSE_WRITEBACK_MS: '600000' } });
  const one = randomBytes(BLK);
  // Two writes of one block in one script, no FLUSH between (autocommit is 1 s): the second hits
  // an uncommitted block. Then FLUSH, and a third write hits a committed one.
  await nbdshJson(`h.pwrite(bytes(${BLK}), ${MiB})\nh.pwrite(bytes(${BLK}), ${MiB})\nh.flush()\nprint('"ok"')`, { uri: d.uri });
  await write(d, [[MiB, one]]);
  await write(d, [[2 * MiB, randomBytes(8 * BLK)]]);
  await nbdshJson(`h.trim(${16 * BLK}, ${4 * MiB})\nh.flush()\nprint('"ok"')`, { uri: d.uri });
  await read(d, MiB, BLK);
  const r = await pcachedCli(['status', NAME, '--raw', '--control', d.control]);
  t.is(r.code, 0, describe(r));
  const f = r.stdout.trim().split(' ');
  t.is(f.length, 24, r.stdout);
  const [error, blocks, free, underWb, readBlocks, readHits, writeBlocks, hitsUncommitted, hitsCommitted, bypass, allocs, blocked, flushes, discards] = f.slice(0, 14).map(Number);
  t.is(error, 0);
  t.true(blocks! > 0 && free! > 0 && free! < blocks!);
  t.is(underWb, 0, 'writeback is paused');
  t.is(readBlocks, 1);
  t.is(readHits, 1);
  t.is(writeBlocks, 11);
  t.is(hitsUncommitted, 1, 'the second write of the block before any commit');
  t.is(hitsCommitted, 1, 'the write after the FLUSH');
  t.is(bypass, 0);
  t.is(allocs, 11);
  t.is(blocked, 0);
  t.is(flushes, 4);
  t.is(discards, 16);
  t.is(f[14], 'writeback');
  t.true(Number(f[15]) >= 9 + 16, `dirty blocks ${f[15]}`);
  t.regex(f[16]!, /^\d+:\d+#\d+$/);
  t.is(f[20], '70');
  t.is(f[21], '4', 'epochs pending: four FLUSHes, writeback paused');
  t.is(f[23], '1');
  const j = (await state(d)).cacheState.writecache!;
  t.is(j.writeHitsUncommitted, 1);
  t.is(j.hitRatio, 1);
  // The index holds the written block and the trimmed range at least; the labelled status says the same.
  const ix = (await state(d)).cacheState.index;
  t.true(ix.extents >= 2 && ix.bytes > 0, JSON.stringify(ix));
  const labelled = await pcachedCli(['status', NAME, '--control', d.control]);
  t.regex(labelled.stdout, new RegExp(`\\n\\s*index\\s+${ix.extents} extents in \\S+ \\S+ \\([\\d.]+ B per extent\\)`), labelled.stdout);
  await message(d, 'clear_stats');
  const after = (await pcachedCli(['status', NAME, '--raw', '--control', d.control])).stdout.trim().split(' ').map((x) => Number(x));
  t.deepEqual([after[4], after[5], after[6], after[7], after[8], after[12], after[13]], [0, 0, 0, 0, 0, 0, 0]);
  t.is(await stopGracefully(d), 0, d.proc.output());
});
