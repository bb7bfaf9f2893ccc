import test from 'ava';
import fc from 'fast-check';
import { crc32c } from '@node-rs/crc32';
import { SimBlockDevice } from '../src/cache/blockdev.js';
import { KEY_SIZE, KSET_HEADER_SIZE, KiB, MiB, dataAreaSize, dataOffset, view } from '../src/cache/layout.js';
import {
  KEY_CLEAN, KEY_DIRTY, KEY_TRIM, KEY_ZERO, decodeKey, decodeKset, encodeKey, encodeKset, ksetSize, ksetSpan,
} from '../src/cache/kset.js';
import type { CacheKey, KeyLimits } from '../src/cache/kset.js';
import { formatDevice, openDevice } from '../src/cache/format.js';
import { KsetLogWriter, collectLog, scanLog } from '../src/cache/key-log.js';
import { isPcachedError } from '../src/util/errors.js';

const SEG = 64 * KiB;
const AREA = dataAreaSize(SEG);
const ORIGIN = 64 * MiB;
const lim: KeyLimits = { segmentCount: 6, dataAreaSize: AREA, originSize: ORIGIN, dataCrc: true };
const SALT = 0x1234abcd;

const dirty = (i: number): CacheKey => ({
  originOffset: i * 8192, length: 4096 + i, flags: KEY_DIRTY, segment: 1 + (i % 5), offset: (i % 8) * 4096, generation: i, dataCrc: 0xdead0000 + i,
});

test('key golden layout: 40 bytes little-endian', (t) => {
  const buf = Buffer.alloc(KEY_SIZE);
  encodeKey({ originOffset: 2 ** 33, length: 4096, flags: KEY_DIRTY, segment: 5, offset: 12288, generation: 7, dataCrc: 0xcafebabe }, view(buf), 0);
  t.is(buf.toString('hex'),
    '0000000002000000' + '00100000' + '01000000' + '05000000' + '00300000' + '0700000000000000' + 'bebafeca' + '00000000');
});

test('kset golden layout: header then keys, CRC32C(salt) over bytes 4..end', (t) => {
  const keys = [dirty(1), dirty(2)];
  const { buf, crc } = encodeKset({ lsn: 9, prevCrc: 0x11223344, last: false, nextSegment: 0, writerId: 0xa5a5a5a5 }, keys, SALT);
  t.is(buf.length, KSET_HEADER_SIZE + 2 * KEY_SIZE);
  t.is(buf.subarray(4, 32).toString('hex'),
    '4b534554' + '0900000000000000' + '44332211' + '0200' + '0000' + '00000000' + 'a5a5a5a5');
  t.is(crc, crc32c(buf.subarray(4), SALT) >>> 0);
  t.is(buf.readUInt32LE(0), crc);
  const last = encodeKset({ lsn: 10, prevCrc: crc, last: true, nextSegment: 4, writerId: 1 }, [], SALT);
  t.is(last.buf.length, KSET_HEADER_SIZE);
  t.is(last.buf.subarray(20, 28).toString('hex'), '0000' + '0100' + '04000000');
  t.is(ksetSpan(0), 512);
  t.is(ksetSpan(128), 5632);
  t.is(ksetSize(128), 5152);
});

test('keys round-trip (property) and out-of-bounds keys are refused', (t) => {
  const key = fc.oneof(
    fc.record({
      originOffset: fc.nat({ max: ORIGIN - 4 * MiB }), length: fc.integer({ min: 1, max: 4 * MiB }),
      flags: fc.constantFrom(KEY_DIRTY, KEY_CLEAN), segment: fc.nat({ max: 5 }), offset: fc.nat({ max: 10 }).map((n) => n * 4096),
      generation: fc.nat(), dataCrc: fc.nat({ max: 0xffffffff }),
    }).filter((k) => k.offset + k.length <= AREA),
    fc.record({
      originOffset: fc.nat({ max: ORIGIN - 4 * MiB }), length: fc.integer({ min: 1, max: 4 * MiB }),
      flags: fc.constantFrom(KEY_TRIM, KEY_ZERO), segment: fc.constant(0), offset: fc.constant(0), generation: fc.constant(0), dataCrc: fc.constant(0),
    }),
  );
  fc.assert(fc.property(key, (k) => {
    const buf = Buffer.alloc(KEY_SIZE);
    encodeKey(k, view(buf), 0);
    return JSON.stringify(decodeKey(view(buf), 0, lim)) === JSON.stringify(k);
  }), { seed: 7, numRuns: 3000 });
  const bad: [string, Partial<CacheKey>][] = [
    ['segment', { segment: 6 }], ['offset', { offset: 4095 }], ['past area', { offset: AREA - 4096, length: 8192 }],
    ['length', { length: 4 * MiB + 1 }], ['zero length', { length: 0 }], ['origin', { originOffset: ORIGIN - 100 }],
    ['flags', { flags: KEY_DIRTY | KEY_CLEAN }], ['trim with data', { flags: KEY_TRIM }],
  ];
  for (const [why, patch] of bad) {
    const buf = Buffer.alloc(KEY_SIZE);
    encodeKey({ ...dirty(1), ...patch }, view(buf), 0);
    t.is(typeof decodeKey(view(buf), 0, lim), 'string', why);
  }
  const buf = Buffer.alloc(KEY_SIZE);
  encodeKey(dirty(1), view(buf), 0);
  t.is(typeof decodeKey(view(buf), 0, { ...lim, dataCrc: false }), 'string', 'data CRC with dataCrc off');
});

test('every single-bit flip in a kset is detected; decode never throws on random bytes', (t) => {
  const { buf } = encodeKset({ lsn: 3, prevCrc: 5, last: false, nextSegment: 0, writerId: 9 }, [dirty(1), dirty(2), dirty(3)], SALT);
  t.true(decodeKset(buf, SALT, lim).ok);
  for (let bit = 0; bit < buf.length * 8; bit++) {
    const bad = Buffer.from(buf);
    bad[bit >> 3] ^= 1 << (bit & 7);
    if (decodeKset(bad, SALT, lim).ok) t.fail(`bit ${bit} not detected`);
  }
  fc.assert(fc.property(fc.uint8Array({ maxLength: 6000 }), (bytes) => { decodeKset(bytes, SALT, lim); return true; }), { seed: 3, numRuns: 1000 });
});

function setup() {
  const dev = new SimBlockDevice(MiB + 6 * SEG);
  const st = formatDevice(dev, { originSize: ORIGIN, dataCrc: true, segmentSize: SEG });
  const start = collectLog(st);
  let nextFree = 1;
  const w = new KsetLogWriter(st, start.stop, 77, () => (nextFree < 6 ? nextFree++ : null));
  return { dev, st, w };
}

test('empty log scans to a zeroed header at the key tail', (t) => {
  const { st } = setup();
  const { ksets, stop } = collectLog(st);
  t.deepEqual(ksets, []);
  t.like(stop, { reason: 'end', position: { segment: 0, offset: 0, lsn: 1 }, prevCrc: null });
});

test('appends scan back in order, chaining through LAST ksets into new segments', (t) => {
  const { dev, st, w } = setup();
  const written: CacheKey[][] = [];
  for (let i = 0; i < 30; i++) {
    const keys = Array.from({ length: (i * 37) % 129 }, (_, j) => dirty(j));
    written.push(keys);
    w.append(keys);
  }
  const re = openDevice(dev);
  const { ksets, stop } = collectLog(re);
  const data = ksets.filter((k) => !k.last);
  t.deepEqual(data.map((k) => k.keys), written);
  t.true(ksets.some((k) => k.last));
  t.deepEqual(ksets.map((k) => k.lsn), ksets.map((_, i) => i + 1));
  t.is(stop.reason, 'end');
  t.deepEqual(stop.position, w.head);
  t.like(re.segments[0].info.value, { type: 'log' });
  t.not(re.segments[0].info.value?.next, 0xffffffff);
});

test('log full is a typed error', (t) => {
  const { w } = setup();
  const keys = Array.from({ length: 128 }, (_, j) => dirty(j));
  const err = t.throws(() => { for (;;) w.append(keys); });
  t.true(isPcachedError(err, 'ERR_LOG_FULL'));
});

test('a bit flip anywhere in a logged kset stops the scan exactly there', (t) => {
  const { dev, st, w } = setup();
  const pos = [];
  for (let i = 0; i < 4; i++) pos.push(w.append([dirty(i), dirty(i + 1)]).position);
  const target = dataOffset(pos[2].segment, pos[2].offset, SEG);
  const one = Buffer.alloc(1);
  for (let bit = 0; bit < ksetSize(2) * 8; bit++) {
    dev.pread(one, target + (bit >> 3));
    one[0] ^= 1 << (bit & 7);
    dev.pwrite(one, target + (bit >> 3));
    const { ksets, stop } = collectLog(st);
    if (ksets.length !== 2 || stop.position.offset !== pos[2].offset || stop.reason === 'end') {
      t.fail(`bit ${bit}: ${ksets.length} ksets, stop ${JSON.stringify(stop)}`);
    }
    one[0] ^= 1 << (bit & 7);
    dev.pwrite(one, target + (bit >> 3));
  }
  t.is(collectLog(st).ksets.length, 4);
});

test('stale ksets are refused: wrong sequence number, broken chain', (t) => {
  const { dev, st, w } = setup();
  const a = w.append([dirty(1)]);
  const b = w.append([dirty(2)]);
  // Replace the kset at b with a CRC-valid one from another run that does not chain to a.
  const stale = encodeKset({ lsn: b.position.lsn, prevCrc: 999, last: false, nextSegment: 0, writerId: 1 }, [dirty(2)], st.sb.salt);
  dev.pwrite(stale.buf, dataOffset(0, b.position.offset, SEG));
  t.like(collectLog(st).stop, { reason: 'bad-chain', ksets: 1 });
  const old = encodeKset({ lsn: 1, prevCrc: a.crc, last: false, nextSegment: 0, writerId: 77 }, [dirty(2)], st.sb.salt);
  dev.pwrite(old.buf, dataOffset(0, b.position.offset, SEG));
  t.like(collectLog(st).stop, { reason: 'bad-lsn', ksets: 1 });
  // A kset whose CRC verifies but whose key is out of bounds is never trusted.
  const k = { ...dirty(2), segment: 99 };
  const badKey = encodeKset({ lsn: 2, prevCrc: a.crc, last: false, nextSegment: 0, writerId: 77 }, [k], st.sb.salt);
  dev.pwrite(badKey.buf, dataOffset(0, b.position.offset, SEG));
  t.like(collectLog(st).stop, { reason: 'bad-key', ksets: 1 });
});

test('scanLog is lazy: a consumer can stop early', (t) => {
  const { st, w } = setup();
  for (let i = 0; i < 5; i++) w.append([dirty(i)]);
  const it = scanLog(st);
  const first = it.next();
  const second = it.next();
  t.false(first.done);
  t.like(first.value, { lsn: 1 });
  t.like(second.value, { lsn: 2 });
});
