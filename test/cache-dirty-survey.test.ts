// The dirty survey behind --format (src/cache/dirty-survey.ts) on a simulated device with a key
// log written kset by kset: what counts as dirty (live DIRTY keys, TRIM and ZERO keys, from the
// dirty tail on), what each refusal says, and that openCache's format branch leaves a dirty cache
// untouched unless --discard-dirty is given. The daemon-level behaviour is in
// cache-format-dirty.test.ts.

import test from 'ava';
import { randomBytes } from 'node:crypto';
import { SimBlockDevice } from '../src/cache/blockdev.js';
import { binarySize, describeDirty, judgeReformat, surveyCache } from '../src/cache/dirty-survey.js';
import { formatDevice, openDevice, updateDirtyTail } from '../src/cache/format.js';
import { KsetLogWriter, collectLog } from '../src/cache/key-log.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_TRIM, KEY_ZERO } from '../src/cache/kset.js';
import type { CacheKey } from '../src/cache/kset.js';
import { KiB, MiB, SUPERBLOCK_OFFSET } from '../src/cache/layout.js';
import type { LogPosition } from '../src/cache/meta-slots.js';
import { openCache } from '../src/cache/replay.js';
import { isPcachedError } from '../src/util/errors.js';

const SEG = 64 * KiB;
const ORIGIN = 64 * MiB;
const DEV_SIZE = MiB + 8 * SEG;

const data = (flags: number, originOffset: number, length: number, generation = 0, segment = 1, offset = 0): CacheKey =>
  ({ originOffset, length, flags, segment, offset, generation, dataCrc: 0 });
const range = (flags: number, originOffset: number, length: number): CacheKey =>
  ({ originOffset, length, flags, segment: 0, offset: 0, generation: 0, dataCrc: 0 });

/**
 * A formatted device whose log holds three ksets:
 *   lsn 1: DIRTY 8 KiB (live), CLEAN 4 KiB
 *   lsn 2: TRIM 1 MiB, ZERO 4 KiB, DIRTY 4 KiB naming generation 5 (its segment is at 0: reclaimed)
 *   lsn 3: DIRTY 12 KiB (live)
 * and a dirty tail at `dirtyAt` (1, 2, 3, or 4 = past the end).
 */
function loggedDevice(dirtyAt: number): SimBlockDevice {
  const dev = new SimBlockDevice(DEV_SIZE);
  const st = formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG });
  let next = 2;
  const w = new KsetLogWriter(st, collectLog(st).stop, 1, () => (next < 8 ? next++ : null));
  const at: LogPosition[] = [];
  at.push(w.append([data(KEY_DIRTY, 0, 8 * KiB), data(KEY_CLEAN, 64 * KiB, 4 * KiB, 0, 1, 8 * KiB)]).position);
  at.push(w.append([range(KEY_TRIM, 2 * MiB, MiB), range(KEY_ZERO, 4 * MiB, 4 * KiB), data(KEY_DIRTY, 8 * MiB, 4 * KiB, 5, 1, 12 * KiB)]).position);
  at.push(w.append([data(KEY_DIRTY, 16 * MiB, 12 * KiB, 0, 1, 16 * KiB)]).position);
  at.push(w.head);
  updateDirtyTail(st, at[dirtyAt - 1]!);
  dev.sync();
  return dev;
}

function mismatch(dev: SimBlockDevice): unknown {
  try {
    openDevice(dev, { originSize: ORIGIN, dataCrc: true });
  } catch (err) {
    return err;
  }
  throw new Error('expected a dataCrc mismatch');
}

test('binary sizes and counts as the refusals print them', (t) => {
  t.is(binarySize(0), '0 B');
  t.is(binarySize(4096), '4 KiB');
  t.is(binarySize(Math.round(12.3 * MiB)), '12.3 MiB');
  t.is(binarySize(3 * 2 ** 30), '3 GiB');
  t.is(describeDirty({ dataBytes: Math.round(12.3 * MiB), dataExtents: 3104, rangeBytes: 0, rangeExtents: 0, stored: { originSize: 1, dataCrc: false, segmentSize: 1, deviceSize: 1 } }),
    '12.3 MiB of dirty data in 3,104 extents');
});

test('survey: live DIRTY, TRIM and ZERO keys from the dirty tail on; CLEAN keys and keys of a reclaimed generation are not dirty', (t) => {
  const cases: [number, number, number, number, number][] = [
    // dirty tail at lsn, data bytes, data extents, range bytes, range extents
    [1, 20 * KiB, 2, MiB + 4 * KiB, 2],
    [2, 12 * KiB, 1, MiB + 4 * KiB, 2],
    [3, 12 * KiB, 1, 0, 0],
    [4, 0, 0, 0, 0],
  ];
  for (const [at, dataBytes, dataExtents, rangeBytes, rangeExtents] of cases) {
    const s = surveyCache(loggedDevice(at));
    if (s.kind !== 'surveyed') return t.fail(`dirty tail at ${at}: ${JSON.stringify(s)}`);
    t.like(s.dirty, { dataBytes, dataExtents, rangeBytes, rangeExtents, stored: { originSize: ORIGIN, dataCrc: false, segmentSize: SEG } }, `dirty tail at lsn ${at}`);
  }
  t.is(surveyCache(new SimBlockDevice(randomBytes(DEV_SIZE))).kind, 'foreign');
});

test('a mismatched start with dirty data: refused with and without --format, naming the amount, the stored settings and the way out', (t) => {
  const dev = loggedDevice(1);
  const want = { originSize: ORIGIN, dataCrc: true, cacheName: 'vol' };
  const plain = t.throws(() => judgeReformat(dev, mismatch(dev), { ...want, format: false, discardDirty: false }));
  t.true(isPcachedError(plain, 'ERR_CACHE_MISMATCH'));
  t.regex(plain!.message, /^cache was formatted with dataCrc off; configuration says on\. It holds 20 KiB of dirty data in 2 extents \(and 2 trim\/zero ranges of 1\.0 MiB\) that the origin does not have yet\./);
  t.regex(plain!.message, /start with the settings it was formatted with \(dataCrc off, without --data-crc\), run `pcached clean vol`, stop, then start with the new settings and --format/);
  t.notRegex(plain!.message, /an origin of/, 'only the setting that differs is named');
  t.regex(plain!.message, /--format --discard-dirty/);

  const formatted = t.throws(() => judgeReformat(dev, mismatch(dev), { ...want, format: true, discardDirty: false }));
  t.true(isPcachedError(formatted, 'ERR_CACHE_DIRTY'));
  t.regex(formatted!.message, /^--format refused: it holds 20 KiB of dirty data in 2 extents .*pcached clean vol.*add --discard-dirty/);

  const warning = judgeReformat(dev, mismatch(dev), { ...want, format: true, discardDirty: true });
  t.regex(warning ?? '', /^--format --discard-dirty: discarded 20 KiB of dirty data in 2 extents .*an origin of 64 MiB \(67,108,864 bytes\); dataCrc off/);
});

test('a mismatched start without dirty data says so, and --format needs nothing more', (t) => {
  const dev = loggedDevice(4);
  const err = t.throws(() => judgeReformat(dev, mismatch(dev), { originSize: ORIGIN, dataCrc: true, format: false, discardDirty: false }));
  t.regex(err!.message, /It holds no dirty data \(the origin has everything\): start with --format/);
  t.is(judgeReformat(dev, mismatch(dev), { originSize: ORIGIN, dataCrc: true, format: true, discardDirty: false }), null);
});

test('a pcached superblock this pcached cannot read: --format needs --discard-dirty; a foreign device formats as before', (t) => {
  const dev = loggedDevice(1);
  dev.pwrite(Buffer.from([7, 0, 0, 0]), SUPERBLOCK_OFFSET + 8);
  let openErr: unknown;
  try { openDevice(dev); } catch (err) { openErr = err; }
  t.regex((openErr as Error).message, /format version 7/);
  const refused = t.throws(() => judgeReformat(dev, openErr, { originSize: ORIGIN, dataCrc: false, format: true, discardDirty: false }));
  t.true(isPcachedError(refused, 'ERR_CACHE_DIRTY'));
  t.regex(refused!.message, /cannot be told: .*format version 7/);
  t.regex(judgeReformat(dev, openErr, { originSize: ORIGIN, dataCrc: false, format: true, discardDirty: true }) ?? '', /could not be surveyed/);

  const foreign = new SimBlockDevice(randomBytes(DEV_SIZE));
  let foreignErr: unknown;
  try { openDevice(foreign); } catch (err) { foreignErr = err; }
  t.is(judgeReformat(foreign, foreignErr, { originSize: ORIGIN, dataCrc: false, format: true, discardDirty: false }), null);
  t.throws(() => judgeReformat(foreign, foreignErr, { originSize: ORIGIN, dataCrc: false, format: false, discardDirty: false }), { message: /start with --format to erase it/ });
});

test('openCache: --format over dirty data leaves the device byte for byte as it was; --discard-dirty formats it and warns', (t) => {
  const dev = loggedDevice(1);
  const before = dev.image();
  const params = { originSize: ORIGIN, dataCrc: true, stripes: 1, format: true, segmentSize: SEG, cacheName: 'vol' };
  t.throws(() => openCache(dev, params), { code: 'ERR_CACHE_DIRTY' } as never);
  t.true(dev.image().equals(before), 'nothing written');
  const opened = openCache(dev, { ...params, discardDirty: true });
  t.true(opened.report.formatted);
  t.true(opened.report.warnings.some((w) => /discarded 20 KiB of dirty data in 2 extents/.test(w)), opened.report.warnings.join('\n'));
  t.true(opened.geometry.dataCrc);
  t.is(opened.report.keys, 0, 'a new, empty log');
});
