// `pcached inspect`: the real bin/pcached against cache files built with the format code, checking
// the human and JSON reports, the refusals, and that the file is never written.

import test from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, openSync, closeSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { formatDevice, updateCacheInfo, updateDirtyTail, updateSegmentInfo } from '../src/cache/format.js';
import { KsetLogWriter, collectLog } from '../src/cache/key-log.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_TRIM, KEY_ZERO } from '../src/cache/kset.js';
import type { CacheKey } from '../src/cache/kset.js';
import { KiB, MiB, SUPERBLOCK_OFFSET, dataOffset, segmentOffset } from '../src/cache/layout.js';
import { NO_NEXT } from '../src/cache/meta-slots.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';

const BIN = join(import.meta.dirname, '..', '..', 'bin', 'pcached');
const SEG = 64 * KiB;
const DEV = MiB + 6 * SEG; // 6 segments of 64 KiB (data area 60 KiB)
const ORIGIN = 64 * MiB;
const UUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const CREATED = 1_700_000_000_000;
const BIG = 11; // ksets of 128 DIRTY keys: 10 fit behind the two small ones in segment 0, the 11th chains to segment 2

function pcached(args: string[], cwd?: string) {
  const dir = cwd ?? scratchDir('pcached-inspect-');
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: dir, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, cwd: dir };
}

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

function dataKey(flags: number, originOffset: number, length: number, offset: number): CacheKey {
  return { originOffset, length, flags, segment: 1, offset, generation: 0, dataCrc: 0xdeadbeef };
}

function noDataKey(flags: number, originOffset: number, length: number): CacheKey {
  return { originOffset, length, flags, segment: 0, offset: 0, generation: 0, dataCrc: 0 };
}

/** A formatted cache file with ksets of every key kind, a chained log, a data segment and moved tails. */
function makeCache(): { dir: string; file: string } {
  const dir = scratchDir('pcached-inspect-');
  const file = join(dir, 'cache.img');
  const dev = FileBlockDevice.open(file, { createSize: DEV });
  try {
    const st = formatDevice(dev, { originSize: ORIGIN, dataCrc: true, segmentSize: SEG, uuid: UUID, createdAt: CREATED });
    updateCacheInfo(st, { mode: 'writeback', gcPercent: 55, flags: 0 });
    updateSegmentInfo(st, 1, { type: 'data', next: NO_NEXT });
    const w = new KsetLogWriter(st, collectLog(st).stop, 0x1234, () => 2);
    w.append([dataKey(KEY_DIRTY, 0, 4 * KiB, 0), dataKey(KEY_DIRTY, 64 * KiB, 8 * KiB, 4 * KiB), dataKey(KEY_CLEAN, MiB, 4 * KiB, 12 * KiB)]);
    w.append([noDataKey(KEY_TRIM, 2 * MiB, 64 * KiB), noDataKey(KEY_ZERO, 3 * MiB, 12 * KiB)]);
    for (let i = 0; i < BIG; i++) {
      w.append(Array.from({ length: 128 }, (_, j) => dataKey(KEY_DIRTY, (i * 128 + j) * 4 * KiB, 4 * KiB, (j % 15) * 4 * KiB)));
    }
    updateDirtyTail(st, { segment: 0, offset: 512, lsn: 2 });
    dev.sync();
  } finally {
    dev.close();
  }
  return { dir, file };
}

function patch(file: string, off: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try { writeSync(fd, bytes, 0, bytes.length, off); } finally { closeSync(fd); }
}

function flipBit(file: string, off: number, bit: number): void {
  const b = Buffer.from([readFileSync(file)[off] ^ (1 << bit)]);
  patch(file, off, b);
}

const EXPECTED = {
  formatted: true,
  fileSize: DEV,
  superblock: {
    magic: 'PCACHDSB', version: 1, uuid: '00112233-4455-6677-8899-aabbccddeeff', createdAt: CREATED,
    createdAtIso: '2023-11-14T22:13:20.000Z', deviceSize: DEV, segmentSize: SEG, segmentCount: 6, originSize: ORIGIN,
    flags: 1, dataCrc: true,
  },
  cacheInfo: { mode: 'writeback', gcPercent: 55, flags: 0, slot: 1, seq: 2, defaulted: false },
  keyTail: { segment: 0, offset: 0, lsn: 1, slot: 0, seq: 1 },
  dirtyTail: { segment: 0, offset: 512, lsn: 2, slot: 1, seq: 2, fallback: false },
  segments: { total: 6, free: 3, data: 1, log: 2, damaged: [], logChain: [0, 2], logOffChain: [] },
  log: {
    ksets: 2 + BIG + 1, lastKsets: 1, keys: 5 + BIG * 128,
    keysByFlag: { dirty: 2 + BIG * 128, clean: 1, trim: 1, zero: 1, invalidate: 0 },
    bytes: 12 * KiB + BIG * 128 * 4 * KiB + 4 * KiB + 64 * KiB + 12 * KiB,
    bytesByFlag: { dirty: 12 * KiB + BIG * 128 * 4 * KiB, clean: 4 * KiB, trim: 64 * KiB, zero: 12 * KiB, invalidate: 0 },
    firstLsn: 1, lastLsn: 2 + BIG + 1,
    // LSNs: 1, 2 small; 3..12 big in segment 0; 13 LAST at 0:1024+10*5632; 14 big at 2:0.
    stop: { segment: 2, offset: 5632, lsn: 15, reason: 'end', detail: 'zeroed header' },
  },
  warnings: [],
};

test.after.always(removeScratchDirs);

test('--json reports every field of a formatted cache with a chained log; the file is not written', (t) => {
  const { dir, file } = makeCache();
  const before = sha256(file);
  const r = pcached(['inspect', '--cache', 'cache.img', '--json'], dir);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  t.is(r.stdout.trim().split('\n').length, 1);
  t.deepEqual(JSON.parse(r.stdout), { ...EXPECTED, path: file });
  t.is(sha256(file), before);
});

test('human report: superblock, cache info, tails, segments and log summary', (t) => {
  const { dir, file } = makeCache();
  const before = sha256(file);
  const r = pcached(['inspect', '--cache', file], dir);
  t.is(r.code, 0, r.stderr);
  t.is(r.stderr, '');
  const o = r.stdout;
  t.true(o.startsWith(`cache file ${file}: ${DEV} bytes`));
  for (const re of [
    /magic +PCACHDSB, version 1/,
    /uuid +00112233-4455-6677-8899-aabbccddeeff/,
    /created at +2023-11-14T22:13:20\.000Z \(1700000000000\)/,
    new RegExp(`device size +${DEV} bytes \\(1\\.4 MiB\\)`),
    /segments +6 of 65536 bytes \(64 KiB\)/,
    /origin size +67108864 bytes \(64 MiB\)/,
    /flags +0x1 \(dataCrc on\)/,
    /mode +writeback/, /gcPercent +55/, /record +slot 1, seq 2/,
    /key tail +0:0 lsn 1 \(slot 0, seq 1\)/,
    /dirty tail +0:512 lsn 2 \(slot 1, seq 2\)/,
    /by type +6 total: 3 free, 1 data, 2 log/,
    /log chain +0 -> 2/,
    /damaged +none/,
    /ksets +14 \(1 LAST\)/,
    /lsn range +1\.\.14/,
    /keys +1413: dirty 1410, clean 1, trim 1, zero 1, invalidate 0/,
    /bytes covered +5861376: dirty 5779456, clean 4096, trim 65536, zero 12288, invalidate 0/,
    /stopped at +2:5632 lsn 15: end \(zeroed header\)/,
    /warnings +none/,
  ]) t.regex(o, re);
  t.is(sha256(file), before);
});

test('a blank file is "not formatted (blank)", exit 0, and stays blank', (t) => {
  const dir = scratchDir('pcached-inspect-');
  const file = join(dir, 'blank.img');
  writeFileSync(file, Buffer.alloc(2 * MiB));
  const before = sha256(file);
  const h = pcached(['inspect', '--cache', file]);
  t.is(h.code, 0, h.stderr);
  t.is(h.stdout, 'not formatted (blank)\n');
  const j = pcached(['inspect', '--cache', file, '--json']);
  t.is(j.code, 0, j.stderr);
  t.deepEqual(JSON.parse(j.stdout), { formatted: false });
  t.is(sha256(file), before);
});

function refused(t: import('ava').ExecutionContext, file: string, re: RegExp): void {
  const before = sha256(file);
  for (const extra of [[], ['--json']]) {
    const r = pcached(['inspect', '--cache', file, ...extra]);
    t.is(r.code, 1, `${r.stdout}${r.stderr}`);
    t.is(r.stdout, '');
    t.is(r.stderr.split('\n').length, 2, r.stderr); // one line plus its newline
    t.regex(r.stderr, /^pcached: /);
    t.regex(r.stderr, re);
  }
  t.is(sha256(file), before);
}

test('garbage is refused as not a pcached cache', (t) => {
  const dir = scratchDir('pcached-inspect-');
  const file = join(dir, 'garbage.img');
  writeFileSync(file, randomBytes(2 * MiB));
  refused(t, file, /not a pcached cache: no pcached superblock \(bad magic\) \(ERR_BAD_SUPERBLOCK\)/);
});

test('a truncated cache file is refused', (t) => {
  const { file } = makeCache();
  truncateSync(file, MiB + 2 * SEG);
  refused(t, file, new RegExp(`cache device is truncated: [\\d.]+ MiB \\(${MiB + 2 * SEG} bytes\\), formatted for [\\d.]+ MiB \\(${DEV} bytes\\) \\(ERR_CACHE_MISMATCH\\)`));
  const dir = scratchDir('pcached-inspect-');
  const tiny = join(dir, 'tiny.img');
  copyFileSync(file, tiny);
  truncateSync(tiny, 4 * KiB + 64); // cut inside the superblock
  refused(t, tiny, /too small to hold a superblock \(ERR_BAD_SUPERBLOCK\)/);
});

test('a flipped superblock bit is a CRC mismatch; another version is named', (t) => {
  const { file } = makeCache();
  flipBit(file, SUPERBLOCK_OFFSET + 20, 3);
  refused(t, file, /not a pcached cache: superblock CRC mismatch \(ERR_BAD_SUPERBLOCK\)/);
  const other = makeCache().file;
  patch(other, SUPERBLOCK_OFFSET + 8, Buffer.from([2, 0, 0, 0]));
  refused(t, other, /unsupported format version: cache device has format version 2; this pcached reads version 1 \(ERR_FORMAT_VERSION\)/);
});

test('both key tail slots damaged: ERR_BAD_METADATA', (t) => {
  const { file } = makeCache();
  flipBit(file, 16 * KiB + 12, 0);
  refused(t, file, /damaged metadata: key tail: no valid slot.*\(ERR_BAD_METADATA\)/);
});

test('a flipped bit in a kset stops the scan there; a damaged segment header is listed', (t) => {
  const { file } = makeCache();
  flipBit(file, dataOffset(0, 512, SEG) + 40, 1); // inside the second kset's first key
  flipBit(file, segmentOffset(4, SEG) + 12, 0); // segment 4's info, its only valid slot
  const before = sha256(file);
  const r = pcached(['inspect', '--cache', file, '--json']);
  t.is(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  t.is(j.log.ksets, 1);
  t.deepEqual(j.log.keysByFlag, { dirty: 2, clean: 1, trim: 0, zero: 0, invalidate: 0 });
  t.is(j.log.lastLsn, 1);
  t.like(j.log.stop, { segment: 0, offset: 512, lsn: 2, reason: 'bad-crc' });
  t.deepEqual(j.segments.damaged, [4]);
  t.is(j.segments.free, 2);
  t.is(j.warnings.length, 1);
  t.regex(j.warnings[0], /segment header/);
  const h = pcached(['inspect', '--cache', file]);
  t.regex(h.stdout, /stopped at +0:512 lsn 2: bad-crc/);
  t.regex(h.stdout, /damaged +4/);
  t.is(sha256(file), before);
});

test('a missing file is an error and is not created; --cache is required', (t) => {
  const r = pcached(['inspect', '--cache', 'nope.img']);
  t.is(r.code, 1);
  t.is(r.stdout, '');
  t.is(r.stderr, `pcached: cannot open cache file ${join(r.cwd, 'nope.img')}: no such file\n`);
  t.throws(() => readFileSync(join(r.cwd, 'nope.img')));
  const u = pcached(['inspect']);
  t.is(u.code, 2);
  t.regex(u.stderr, /^pcached: required option '--cache <path>' not specified\n$/);
  t.is(pcached(['inspect', '--help']).code, 0);
});
