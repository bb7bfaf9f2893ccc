// dm-writecache's controls through the real daemon: `pcached clean` and the cleaner, the
// watermarks, max_age, flush_on_suspend, autocommit_blocks, and bad values refused. Writeback is
// held back by pause_writeback (600 s) unless a control makes it run, so "it ran" is visible.
// Every process started here is stopped by its PID in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nbdUri, makeSparseFile } from './helpers/daemon.js';
import { pcachedCli, sleep, startServing, statusJson, stopGracefully, waitFor, type RunningDaemon } from './helpers/lifecycle.js';
import { describe, needTools, nbdshJson, skipSuffix } from './helpers/tools.js';
import { flockHolders } from '../src/util/proc-info.js';

const MiB = 1 << 20;
const NAME = 'vol';

interface Env { dir: string; origin: string; d: RunningDaemon; uri: string }

async function start(t: ExecutionContext, extra: string[] = [], env: Record<string, string> = {}): Promise<Env> {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-controls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const d = await startServing(t, ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--segment-size', '1M',
    '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', '2', '--log-level', 'info', ...extra],
  { cwd: dir, sock, control, env: { PCACHED_PAUSE_WRITEBACK_MS: '600000', ...env } });
  return { dir, origin, d, uri: nbdUri(sock, NAME) };
}

async function write(e: Env, off: number, data: Buffer, flush = true): Promise<void> {
  const f = join(e.dir, `w-${off}.bin`);
  writeFileSync(f, data);
  await nbdshJson(`d = open(${JSON.stringify(f)}, 'rb').read()\nfor i in range(0, len(d), ${MiB}):\n    h.pwrite(d[i:i + ${MiB}], ${off} + i)\n${flush ? 'h.flush()\n' : ''}print('"ok"')`, { uri: e.uri, timeoutMs: 60_000 });
  rmSync(f);
}

async function dirty(e: Env): Promise<number> {
  return (await statusJson(e.d.control)).caches[0]!.cacheState!.dirtyBlocks;
}

async function message(e: Env, ...words: string[]): Promise<string> {
  const r = await pcachedCli(['message', NAME, ...words, '--control', e.d.control]);
  if (r.code !== 0) throw new Error(`message ${words.join(' ')}: ${describe(r)}`);
  return r.stdout;
}

const originAt = (e: Env, off: number, len: number): Buffer => readFileSync(e.origin).subarray(off, off + len);
const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;

t_('pcached clean: progress lines, then nothing dirty and the origin holds the data; the cleaner is put back as it was (off: writes are cached again; on: it stays on)' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  // The cleaner writes back at full speed: enough data for a few progress lines.
  const e = await start(t, ['--cache-size', '96M']);
  const data = randomBytes(40 * MiB);
  await write(e, 8 * MiB, data);
  t.true((await dirty(e)) >= 10240);
  const r = await pcachedCli(['clean', NAME, '--control', e.d.control, '--interval', '50'], { timeoutMs: 120_000 });
  t.is(r.code, 0, describe(r));
  const lines = r.stdout.trim().split('\n');
  t.regex(lines[0]!, /^clean vol: \d+ dirty blocks \(.*\) to write back$/);
  t.true(lines.some((l) => /^clean vol: \d+ dirty blocks left \(\d+% done, \d+ s\)$/.test(l)), `a progress line: ${r.stdout}`);
  t.regex(lines[lines.length - 1]!, /^clean vol: no dirty blocks \(\d+ written back in [\d.]+ s\); the cleaner is off again, as it was: writes are cached$/);
  t.is(await dirty(e), 0);
  t.true(originAt(e, 8 * MiB, data.length).equals(data));
  const st = (await statusJson(e.d.control)).caches[0]!.cacheState!;
  t.false(st.cleaner, 'the cleaner is off again, as before the clean');
  const table = JSON.parse((await pcachedCli(['table', NAME, '--json', '--control', e.d.control])).stdout) as { tunables: { key: string; value: unknown; source: string }[] };
  t.like(table.tunables.find((r) => r.key === 'cleaner'), { value: false, source: 'default' }, 'and its value comes from the config again');
  // Cleaner off again: writes are cached (writeback paused).
  const more = randomBytes(256 * 1024);
  await write(e, 24 * MiB, more);
  t.true((await dirty(e)) >= 64, 'writes are cached again after the clean');
  // Turned on before: clean leaves it on. A write then goes to the origin at once, nothing dirty.
  await message(e, 'cleaner', 'on');
  const again = await pcachedCli(['clean', NAME, '--control', e.d.control, '--interval', '50'], { timeoutMs: 120_000 });
  t.is(again.code, 0, describe(again));
  t.regex(again.stdout, /the cleaner was on before and stays on\n$/);
  t.true((await statusJson(e.d.control)).caches[0]!.cacheState!.cleaner);
  await write(e, 20 * MiB, more);
  t.true(originAt(e, 20 * MiB, more.length).equals(more));
  t.is(await dirty(e), 0);
  const bad = await pcachedCli(['clean', NAME, '--control', e.d.control, '--interval', '5']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /interval.*must be an integer 50-600000/);
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('watermarks: below high_watermark dirty data waits (pause_writeback); past it writeback runs until low_watermark' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = await start(t);
  const total = (await statusJson(e.d.control)).caches[0]!.cacheState!.blocks;
  await message(e, 'low_watermark', '5');
  await message(e, 'high_watermark', '10');
  // About 6 % of the blocks: below high, so writeback stays paused.
  const small = Math.floor(total * 0.06) * 4096;
  await write(e, 0, randomBytes(small));
  await sleep(1500);
  t.true((await dirty(e)) >= small / 4096, 'below the high watermark nothing is written back');
  // Past 10 %: full speed until at most 5 %.
  await write(e, 16 * MiB, randomBytes(Math.floor(total * 0.08) * 4096));
  const after = await waitFor('writeback down to the low watermark', async () => {
    const n = await dirty(e);
    return n <= total * 0.05 ? n : undefined;
  }, 60_000, 100);
  t.log(`${total} blocks; dirty after the high watermark: ${after}`);
  t.true(after <= total * 0.05);
  const refused = await pcachedCli(['message', NAME, 'low_watermark', '50', '--control', e.d.control]);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /low_watermark 50 is above high_watermark 10/);
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('max_age: dirty data older than max_age is written back although writeback is paused' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = await start(t);
  // Writeback paused far longer than max_age: only max_age can start it (the 1 s default pause
  // ends on its own before max_age on a loaded machine, where the client alone takes that long;
  // for the same reason max_age leaves seconds between the write and the first check).
  await message(e, 'pause_writeback', '60000');
  await message(e, 'max_age', '6000');
  const data = randomBytes(MiB);
  await write(e, 4 * MiB, data);
  const t0 = Date.now();
  await sleep(700);
  t.true((await dirty(e)) >= 256, 'still dirty before max_age');
  await waitFor('max_age writeback', async () => (await dirty(e)) === 0, 45_000, 100);
  const took = Date.now() - t0;
  t.log(`written back ${took} ms after the write (max_age 6000)`);
  t.true(took >= 5000, `not before its age: ${took} ms`);
  t.true(took < 50_000, `long before the pause would have ended: ${took} ms`);
  t.true(originAt(e, 4 * MiB, data.length).equals(data));
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('flush_on_suspend: the next stop writes everything back first; autocommit_blocks commits without a FLUSH; bad values are refused' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = await start(t);
  await message(e, 'autocommit_time', '3600000');
  await message(e, 'autocommit_blocks', '64');
  const head0 = (await statusJson(e.d.control)).caches[0]!.cacheState!.keyHead;
  await write(e, 0, randomBytes(MiB), false);
  const head1 = await waitFor('a commit without FLUSH', async () => {
    const h = (await statusJson(e.d.control)).caches[0]!.cacheState!.keyHead;
    return h !== head0 ? h : undefined;
  }, 10_000, 100);
  t.not(head1, head0);
  const data = randomBytes(2 * MiB);
  await write(e, 8 * MiB, data);
  t.true((await dirty(e)) >= 512);
  t.true(originAt(e, 8 * MiB, data.length).every((x) => x === 0));
  for (const [words, msg] of [
    [['high_watermark', '0'], /usage: high_watermark N \(an integer 1-100\)/],
    [['writeback_jobs', '5000'], /usage: writeback_jobs N \(an integer 1-1024\)/],
    [['max_age', '-1'], /usage: max_age N/],
    [['cleaner', 'maybe'], /usage: cleaner \[on\|off\]/],
    [['autocommit_blocks'], /usage: autocommit_blocks N/],
  ] as const) {
    const r = await pcachedCli(['message', NAME, ...words, '--control', e.d.control]);
    t.not(r.code, 0, words.join(' '));
    t.regex(r.stderr, msg);
  }
  await message(e, 'flush_on_suspend');
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
  t.true(originAt(e, 8 * MiB, data.length).equals(data), 'written back at the stop');
  t.regex(e.d.proc.output(), /flush_on_suspend: everything written back/);
});

t_('promotion nhit:2: a block is promoted on its second miss, not its first; `always` again promotes at once' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = await start(t, [], { PCACHED_PROMOTION: 'nhit:2' });
  const hits = async (): Promise<[number, number]> => {
    const cs = (await statusJson(e.d.control)).caches[0]!.cacheState!;
    return [cs.readBlocks ?? 0, cs.readHits ?? 0];
  };
  // Scattered 4 KiB reads (no sequential run), each block read three times in turn.
  const offs = Array.from({ length: 64 }, (_, i) => (i * 37 % 64) * 65536 + 12 * MiB);
  const pass = `for o in ${JSON.stringify(offs)}:\n    h.pread(4096, o)\nprint('"ok"')`;
  const rounds: number[] = [];
  for (let i = 0; i < 3; i++) {
    const [b0, h0] = await hits();
    await nbdshJson(pass, { uri: e.uri });
    const [b1, h1] = await hits();
    t.is(b1 - b0, 64);
    rounds.push(h1 - h0);
  }
  t.deepEqual(rounds, [0, 0, 64], 'first miss counted, second miss promotes, third read hits');
  await message(e, 'promotion', 'always');
  const fresh = offs.map((o) => o + 4096);
  const pass2 = `for o in ${JSON.stringify(fresh)}:\n    h.pread(4096, o)\nprint('"ok"')`;
  await nbdshJson(pass2, { uri: e.uri });
  const [b2, h2] = await hits();
  await nbdshJson(pass2, { uri: e.uri });
  const [b3, h3] = await hits();
  t.is(b3 - b2, 64);
  t.is(h3 - h2, 64, 'always: promoted on the first miss');
  const bad = await pcachedCli(['message', NAME, 'promotion', 'nhit:99', '--control', e.d.control]);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /usage: promotion always\|nhit:N \(N 2-16\)/);
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});

t_('pcached detach: everything written back, the cache file released and marked clean, the volume still served (from the origin); a restart attaches it again, formatted afresh' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = await start(t);
  const data = randomBytes(4 * MiB);
  await write(e, 4 * MiB, data);
  t.true((await dirty(e)) >= 1024);
  const r = await pcachedCli(['detach', NAME, '--control', e.d.control, '--interval', '100'], { timeoutMs: 120_000 });
  t.is(r.code, 0, describe(r));
  t.regex(r.stdout, /detach vol: the cache file .*cache\.img is released and marked clean/);
  t.true(originAt(e, 4 * MiB, data.length).equals(data), 'written back before the release');
  const st = (await statusJson(e.d.control)).caches[0]!;
  t.true(st.detached);
  t.is(st.cacheState, undefined);
  t.is(st.mode, 'passthrough');
  // Released: no thread of the coordinator holds the cache file open.
  const { readdirSync, readlinkSync } = await import('node:fs');
  const open = readdirSync(`/proc/${e.d.coord}/fd`).map((fd) => { try { return readlinkSync(`/proc/${e.d.coord}/fd/${fd}`); } catch { return ''; } });
  t.false(open.some((p) => p.endsWith('cache.img')), `the cache file is closed: ${open.filter((p) => p.includes('cache')).join(' ')}`);
  const cst = statSync(join(e.dir, 'cache.img'), { bigint: true });
  t.deepEqual(flockHolders(cst.dev, cst.ino), [], 'and its lock is released (another daemon may take the file)');
  const inspect = await pcachedCli(['inspect', '--cache', join(e.dir, 'cache.img'), '--json']);
  t.is((JSON.parse(inspect.stdout) as { cacheInfo: { flags: number } }).cacheInfo.flags, 1, 'marked detached');
  // Still serving: reads and writes go to the origin.
  const more = randomBytes(MiB);
  await write(e, 16 * MiB, more);
  t.true(originAt(e, 16 * MiB, more.length).equals(more));
  const back = await nbdshJson<string>(`import hashlib, json\nprint(json.dumps(hashlib.sha256(h.pread(${4 * MiB}, ${4 * MiB})).hexdigest()))`, { uri: e.uri });
  const { createHash } = await import('node:crypto');
  t.is(back, createHash('sha256').update(data).digest('hex'));
  const again = await pcachedCli(['message', NAME, 'detach', '--control', e.d.control]);
  t.not(again.code, 0);
  t.regex(again.stderr, /already detached/);
  // detach and clean agree: nothing is dirty, and the cache messages say why they do nothing.
  const clean = await pcachedCli(['clean', NAME, '--control', e.d.control]);
  t.is(clean.code, 0, describe(clean));
  t.is(clean.stdout, 'clean vol: nothing to do: the cache is detached (everything was written back; served from the origin until the next start)\n');
  for (const words of [['cleaner'], ['cleaner', 'off'], ['mode', 'writeback'], ['gc_percent', '10']]) {
    const m = await pcachedCli(['message', NAME, ...words, '--control', e.d.control]);
    t.is(m.code, 1, describe(m));
    t.regex(m.stderr, new RegExp(`^pcached: cache vol is detached \\(served from its origin until the next start; nothing is dirty\\): ${words[0]} has nothing to act on; restart pcached to attach the cache again\n$`));
  }
  const summary = await pcachedCli(['status', NAME, '--control', e.d.control]);
  t.regex(summary.stdout, /^ {2}state +detached$/m);
  const detachAgain = await pcachedCli(['detach', NAME, '--control', e.d.control]);
  t.is(detachAgain.code, 1);
  t.regex(detachAgain.stderr, /^pcached: cache "vol" is already detached \(served from its origin until the next start\); restart pcached to attach it again$/m);
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());

  // Attach again by starting on the same file: formatted afresh (its contents are not replayed).
  const d2 = await startServing(t, ['--origin', e.origin, '--cache', join(e.dir, 'cache.img'), '--segment-size', '1M', '--unix', join(e.dir, 'nbd.sock'),
    '--tcp', '', '--name', NAME, '--control', e.d.control, '--stripes', '2', '--log-level', 'info'], { cwd: e.dir, sock: join(e.dir, 'nbd.sock'), control: e.d.control });
  const cs = (await statusJson(e.d.control)).caches[0]!.cacheState!;
  t.true(cs.replay.formatted, 'the detached cache was formatted afresh');
  t.regex(d2.proc.output(), /detached clean/);
  t.true(originAt(e, 16 * MiB, more.length).equals(more));
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

t_('detach refuses while data is dirty (without clean first) and says how' + skipSuffix(why), async (t) => {
  t.timeout(60_000);
  const e = await start(t);
  await write(e, 0, randomBytes(MiB));
  const r = await pcachedCli(['message', NAME, 'detach', '--control', e.d.control]);
  t.not(r.code, 0);
  t.regex(r.stderr, /\d+ blocks are still dirty; the cleaner is on now: write them back first \(pcached clean vol; pcached detach vol does both\)/);
  t.is(await stopGracefully(e.d), 0, e.d.proc.output());
});
