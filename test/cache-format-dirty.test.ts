// `--format` over dirty data, through the real daemon (`pcached start`). Data is written and
// FLUSHed with writeback held back (pause_writeback 600 s), so after a stop it exists in the cache
// file only. Then a start with a changed setting (--data-crc, a grown origin) is refused saying how
// much is dirty and how to write it back; --format is refused the same way (the cache file byte
// for byte unchanged); --format --discard-dirty formats and warns what it discarded. And the way
// the refusals point to: start with the old settings, `pcached clean NAME`, then --format with the
// new settings works without the discard flag and every byte is on the origin.

import test, { type ExecutionContext } from 'ava';
import { closeSync, openSync, readFileSync, truncateSync, writeSync } from 'node:fs';
import { SUPERBLOCK_OFFSET } from '../src/cache/layout.js';
import { pcachedCli, statusJson } from './helpers/lifecycle.js';
import {
  BLOCK, NAME, ORIGIN_SIZE, blocksInImage, checkBlocks, endpoint, firstBadBlock, makeScenario, refused, serve, sha256, startArgs, stop, writeBlocks,
  type Scenario,
} from './helpers/cache-scenario.js';
import { describe, needTools, skipSuffix } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.skip : test.serial;

const HOLD = { PCACHED_PAUSE_WRITEBACK_MS: '600000' };
const COUNT = 40;
/** 40 blocks of 64 KiB: the status and the refusals must both say 2.5 MiB. */
const DIRTY_TEXT = '2.5 MiB of dirty data in';

/** Writes COUNT blocks through a daemon that holds writeback back, checks they are dirty, stops it. */
async function leaveDirty(t: ExecutionContext, s: Scenario, tag: number): Promise<void> {
  const ep = endpoint(s, 'first');
  const d = await serve(t, startArgs(s, ep), ep, s.dir, HOLD);
  await writeBlocks(ep.uri, s.dir, tag, COUNT);
  const cs = (await statusJson(ep.control)).caches[0]!.cacheState!;
  t.is(cs.dirtyBlocks, (COUNT * BLOCK) / 4096, 'every block written is dirty (writeback held back)');
  await stop(t, d);
  t.true(readFileSync(s.origin).equals(s.originInit), 'the data is in the cache file only');
}

t_('a changed setting over dirty data: refused with how much and how to clean it; --format refused too; --format --discard-dirty formats and warns' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-fd-');
  await leaveDirty(t, s, 1);
  const ep = endpoint(s, 'second');
  const cacheSha = sha256(s.cache);

  const plain = await refused(t, startArgs(s, ep, ['--data-crc']), s.dir, /dataCrc off; configuration says on/, '--data-crc over dirty data');
  t.true(plain.includes(DIRTY_TEXT), plain);
  t.regex(plain, /start with the settings it was formatted with \(dataCrc off, without --data-crc\), run `pcached clean vol`, stop, then start with the new settings and --format/);
  t.regex(plain, /To erase it: --format --discard-dirty/);
  t.is(sha256(s.cache), cacheSha, 'a refused start leaves the cache file as it was');

  const formatted = await refused(t, startArgs(s, ep, ['--data-crc', '--format']), s.dir, /--format refused: it holds 2\.5 MiB of dirty data in \d+ extents/, '--format over dirty data');
  t.regex(formatted, /pcached clean vol/);
  t.regex(formatted, /add --discard-dirty/);
  t.is(sha256(s.cache), cacheSha, '--format did not touch the cache file');

  // Another origin size: the stored one is named, in bytes, as the setting to start with.
  truncateSync(s.origin, 2 * ORIGIN_SIZE);
  const grown = await refused(t, startArgs(s, ep), s.dir, /formatted for an origin of 64 MiB \(67108864 bytes\), origin has 128 MiB \(134217728 bytes\)/, 'grown origin over dirty data');
  t.regex(grown, /settings it was formatted with \(an origin of 64 MiB \(67,108,864 bytes\)\)/);
  t.true(grown.includes(DIRTY_TEXT), grown);
  truncateSync(s.origin, ORIGIN_SIZE);
  t.is(sha256(s.cache), cacheSha);

  // The explicit discard: formatted with the new setting, a warning names what was lost.
  const d = await serve(t, startArgs(s, ep, ['--data-crc', '--format', '--discard-dirty']), ep, s.dir);
  const warn = d.proc.output().split('\n').find((l) => l.includes('--format --discard-dirty: discarded'));
  t.truthy(warn, d.proc.output());
  t.true(warn!.includes(DIRTY_TEXT), warn);
  t.regex(warn!, /"level":40/, 'logged as a warning');
  const cs = (await statusJson(ep.control)).caches[0]!.cacheState!;
  t.true(cs.dataCrc);
  t.is(cs.dirtyBlocks, 0);
  t.true(cs.replay.formatted);
  // What was discarded is gone: the volume shows the origin's own bytes there.
  t.not(await checkBlocks(ep.uri, s.dir, 1, COUNT), null);
  await stop(t, d);
  t.true(readFileSync(s.origin).equals(s.originInit));
});

t_('the way out: old settings, `pcached clean`, then --format with the new settings needs no discard flag and the data is on the origin' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-fc-');
  await leaveDirty(t, s, 2);
  const ep = endpoint(s, 'second');

  const d = await serve(t, startArgs(s, ep), ep, s.dir, HOLD);
  const clean = await pcachedCli(['clean', NAME, '--control', ep.control, '--interval', '200'], { timeoutMs: 120_000 });
  t.is(clean.code, 0, describe(clean));
  t.regex(clean.stdout, /clean vol: no dirty blocks/);
  await stop(t, d);
  t.is(firstBadBlock(blocksInImage(readFileSync(s.origin), COUNT), 2, COUNT), null, 'written back to the origin file');

  // Nothing dirty now: the refusal says so, and --format alone goes ahead.
  await refused(t, startArgs(s, ep, ['--data-crc']), s.dir, /It holds no dirty data \(the origin has everything\): start with --format/, 'clean cache, changed setting');
  const d2 = await serve(t, startArgs(s, ep, ['--data-crc', '--format']), ep, s.dir);
  t.notRegex(d2.proc.output(), /discard/);
  const cs = (await statusJson(ep.control)).caches[0]!.cacheState!;
  t.true(cs.dataCrc);
  t.true(cs.replay.formatted);
  t.is(await checkBlocks(ep.uri, s.dir, 2, COUNT), null, 'every block reads back (from the origin)');
  await stop(t, d2);
});

t_('a pcached cache this pcached cannot read (another format version): --format needs --discard-dirty' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const s = makeScenario(t, 'pcached-fv-');
  await leaveDirty(t, s, 3);
  const ep = endpoint(s, 'second');
  // Format version 7 at byte 8 of the superblock (docs/format.md §2).
  const fd = openSync(s.cache, 'r+');
  writeSync(fd, Buffer.from([7, 0, 0, 0]), 0, 4, SUPERBLOCK_OFFSET + 8);
  closeSync(fd);
  const cacheSha = sha256(s.cache);
  const line = await refused(t, startArgs(s, ep, ['--format']), s.dir, /--format refused: it is a pcached cache, and whether it holds dirty data \(not yet written back\) cannot be told: .*format version 7/, 'format version 7 with --format');
  t.regex(line, /add --discard-dirty/);
  t.is(sha256(s.cache), cacheSha);
  const d = await serve(t, startArgs(s, ep, ['--format', '--discard-dirty']), ep, s.dir);
  t.regex(d.proc.output(), /formatted a pcached cache that could not be surveyed/);
  await stop(t, d);
});
