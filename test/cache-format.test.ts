import test from 'ava';
import fc from 'fast-check';
import { crc32c } from '@node-rs/crc32';
import { SimBlockDevice } from '../src/cache/blockdev.js';
import {
  CACHE_INFO_OFFSETS, DIRTY_TAIL_OFFSETS, KEY_TAIL_OFFSETS, KiB, MiB, SEGMENT_GEN_SLOTS, SEGMENT_INFO_SLOTS,
  SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE, segmentOffset,
} from '../src/cache/layout.js';
import { decodeSuperblock, encodeSuperblock, saltOf } from '../src/cache/superblock.js';
import {
  RECORD_SIZE, cacheInfoCodec, decodeRecord, dirtyTailCodec, encodeRecord, forSegment, keyTailCodec, nextSlot,
  pickNewest, seqAfter, segmentGenCodec, segmentInfoCodec,
} from '../src/cache/meta-slots.js';
import type { RecordCodec, RecordContext } from '../src/cache/meta-slots.js';
import {
  formatDevice, isBlankDevice, openDevice, updateCacheInfo, updateDirtyTail, updateKeyTail, updateSegmentGen,
  updateSegmentInfo,
} from '../src/cache/format.js';
import type { CacheState } from '../src/cache/format.js';
import { PcachedError, isPcachedError } from '../src/util/errors.js';

const SEG = 64 * KiB;
const DEV = MiB + 4 * SEG;
const ORIGIN = 8 * MiB;
const UUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

function fresh(): { dev: SimBlockDevice; st: CacheState } {
  const dev = new SimBlockDevice(DEV);
  const st = formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG, uuid: UUID, createdAt: 1_700_000_000_000 });
  return { dev, st };
}

function flipBit(dev: SimBlockDevice, byteOff: number, bit: number): void {
  const b = Buffer.alloc(1);
  dev.pread(b, byteOff);
  b[0] ^= 1 << bit;
  dev.pwrite(b, byteOff);
}

test('superblock golden layout (little-endian, CRC32C over bytes 0..123)', (t) => {
  const buf = encodeSuperblock({ dataCrc: true, deviceSize: DEV, segmentSize: SEG, segmentCount: 4, originSize: ORIGIN, createdAt: 1_700_000_000_000, uuid: UUID });
  const want = Buffer.alloc(SUPERBLOCK_SIZE);
  want.write('PCACHDSB', 0, 'latin1');
  want.writeUInt32LE(1, 8);
  want.writeUInt32LE(1, 12);
  want.writeBigUInt64LE(BigInt(DEV), 16);
  want.writeUInt32LE(SEG, 24);
  want.writeUInt32LE(4, 28);
  want.writeBigUInt64LE(BigInt(ORIGIN), 32);
  want.writeBigUInt64LE(1_700_000_000_000n, 40);
  UUID.copy(want, 48);
  want.writeUInt32LE(crc32c(want.subarray(0, 124)), 124);
  t.deepEqual(buf, want);
  const d = decodeSuperblock(buf);
  t.true(d.ok);
  if (d.ok) t.like(d.value, { version: 1, dataCrc: true, deviceSize: DEV, segmentSize: SEG, segmentCount: 4, originSize: ORIGIN, salt: saltOf(UUID) });
});

test('dual-slot record golden layout (crc | kind | bodyLen | seq | body), CRC seeded with the UUID salt', (t) => {
  const salt = saltOf(UUID);
  const rec = encodeRecord(keyTailCodec, 0xfffffffe, { segment: 3, offset: 8192, lsn: 42 }, salt);
  const want = Buffer.alloc(RECORD_SIZE);
  want.writeUInt16LE(2, 4);
  want.writeUInt16LE(16, 6);
  want.writeUInt32LE(0xfffffffe, 8);
  want.writeUInt32LE(3, 12);
  want.writeUInt32LE(8192, 16);
  want.writeBigUInt64LE(42n, 20);
  want.writeUInt32LE(crc32c(want.subarray(4), salt), 0);
  t.deepEqual(rec, want);
  const info = encodeRecord(cacheInfoCodec, 1, { mode: 'writethrough', gcPercent: 70, flags: 0 }, salt);
  t.is(info.subarray(4, 20).toString('hex'), '0100' + '0800' + '01000000' + '01' + '46' + '0000' + '00000000');
  const seg = encodeRecord(forSegment(segmentInfoCodec, 2), 1, { type: 'log', next: 3 }, salt);
  t.is(seg.subarray(12, 24).toString('hex'), '02000000' + '02' + '00' + '0000' + '03000000');
});

const ctx: RecordContext = { salt: saltOf(UUID), segmentCount: 4, dataAreaSize: SEG - 4 * KiB, segment: 1 };
const samples: [string, RecordCodec<any>, unknown][] = [
  ['cache info', cacheInfoCodec, { mode: 'writeonly', gcPercent: 90, flags: 0 }],
  ['key tail', keyTailCodec, { segment: 1, offset: 512, lsn: 7 }],
  ['dirty tail', dirtyTailCodec, { segment: 3, offset: 0, lsn: 2 ** 40 }],
  ['segment info', forSegment(segmentInfoCodec, 1), { type: 'data', next: 0xffffffff }],
  ['segment gen', forSegment(segmentGenCodec, 1), 123456789],
];

for (const [name, codec, value] of samples) {
  test(`${name}: round trip and every single-bit flip is rejected`, (t) => {
    const buf = encodeRecord(codec, 9, value, ctx.salt);
    const d = decodeRecord(codec, buf, ctx);
    t.deepEqual(d, { ok: true, value: { seq: 9, value } });
    for (let bit = 0; bit < RECORD_SIZE * 8; bit++) {
      const bad = Buffer.from(buf);
      bad[bit >> 3] ^= 1 << (bit & 7);
      const r = decodeRecord(codec, bad, ctx);
      if (r.ok) t.fail(`bit ${bit} not detected`);
    }
    // Another format's records (different salt) never verify.
    t.false(decodeRecord(codec, buf, { ...ctx, salt: ctx.salt ^ 1 }).ok);
  });
}

test('segment records written for one segment are refused in another', (t) => {
  const buf = encodeRecord(forSegment(segmentGenCodec, 2), 1, 5, ctx.salt);
  t.false(decodeRecord(segmentGenCodec, buf, ctx).ok);
});

test('decoders never throw on random bytes', (t) => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), (bytes) => {
    decodeSuperblock(bytes);
    for (const [, codec] of samples) decodeRecord(codec, bytes, ctx);
    return true;
  }), { seed: 42, numRuns: 2000 });
  t.pass();
});

test('pickNewest / nextSlot: wrap-around order, invalid slots, empty pair', (t) => {
  const v = (seq: number, value: string) => ({ ok: true as const, value: { seq, value } });
  const bad = { ok: false as const, error: new PcachedError('ERR_BAD_METADATA', 'x') };
  t.true(seqAfter(0, 0xffffffff));
  t.true(seqAfter(5, 0xfffffffb));
  t.false(seqAfter(0xffffffff, 0));
  t.like(pickNewest(v(0xffffffff, 'old'), v(0, 'new')), { value: 'new', newest: 1, seq: 0 });
  t.like(pickNewest(v(1, 'new'), v(0xfffffff0, 'old')), { value: 'new', newest: 0 });
  t.like(pickNewest(bad, v(3, 'b')), { value: 'b', newest: 1 });
  t.like(pickNewest(v(3, 'a'), bad), { value: 'a', newest: 0 });
  t.deepEqual(pickNewest(bad, bad), { value: null, newest: null, seq: 0 });
  t.deepEqual(nextSlot({ newest: 1, seq: 0xffffffff }), { slot: 0, seq: 0 });
  t.deepEqual(nextSlot({ newest: 0, seq: 7 }), { slot: 1, seq: 8 });
  t.deepEqual(nextSlot({ newest: null, seq: 0 }), { slot: 0, seq: 1 });
});

test('format then open: defaults, tails at the log start, segment 0 is the log', (t) => {
  const { dev, st } = fresh();
  t.is(st.sb.segmentCount, 4);
  t.deepEqual(st.cacheInfo.value, { mode: 'writeback', gcPercent: 70, flags: 0 });
  t.deepEqual(st.keyTail.value, { segment: 0, offset: 0, lsn: 1 });
  t.deepEqual(st.dirtyTail.value, { segment: 0, offset: 0, lsn: 1 });
  t.deepEqual(st.segments.map((s) => [s.info.value?.type, s.gen.value]), [['log', 0], ['free', 0], ['free', 0], ['free', 0]]);
  t.deepEqual(st.warnings, []);
  t.is(dev.unsynced, 0);
});

test('updates alternate slots, survive reopen, and wrap the sequence number', (t) => {
  const { dev } = fresh();
  // Pretend a long history so the updates below cross 2^32.
  dev.pwrite(encodeRecord(cacheInfoCodec, 0xfffffffd, { mode: 'writeback', gcPercent: 1, flags: 0 }, saltOf(UUID)), CACHE_INFO_OFFSETS[0]);
  const st = openDevice(dev);
  t.is(st.cacheInfo.seq, 0xfffffffd);
  for (let i = 0; i < 6; i++) {
    const before = st.cacheInfo.newest;
    updateCacheInfo(st, { mode: 'writeback', gcPercent: 10 + i, flags: 0 });
    t.not(st.cacheInfo.newest, before);
    const re = openDevice(dev);
    t.is(re.cacheInfo.value.gcPercent, 10 + i);
    t.is(re.cacheInfo.seq, st.cacheInfo.seq);
  }
  t.is(st.cacheInfo.seq, 3);
  updateKeyTail(st, { segment: 0, offset: 1024, lsn: 3 });
  updateDirtyTail(st, { segment: 0, offset: 2048, lsn: 5 });
  updateSegmentInfo(st, 2, { type: 'data', next: 0xffffffff });
  updateSegmentGen(st, 2, 9);
  const re = openDevice(dev);
  t.deepEqual(re.keyTail.value, { segment: 0, offset: 1024, lsn: 3 });
  t.deepEqual(re.dirtyTail.value, { segment: 0, offset: 2048, lsn: 5 });
  t.deepEqual(re.segments[2].info.value, { type: 'data', next: 0xffffffff });
  t.is(re.segments[2].gen.value, 9);
});

// Each record at its two device offsets, an update producing a distinguishable newer value, and a reader.
const deviceRecords: [string, (s: CacheState) => void, (s: CacheState) => unknown, [number, number]][] = [
  ['cache info', (s) => updateCacheInfo(s, { mode: 'writearound', gcPercent: 33, flags: 0 }), (s) => s.cacheInfo.value, [...CACHE_INFO_OFFSETS]],
  ['key tail', (s) => updateKeyTail(s, { segment: 0, offset: 512, lsn: 2 }), (s) => s.keyTail.value, [...KEY_TAIL_OFFSETS]],
  ['dirty tail', (s) => updateDirtyTail(s, { segment: 0, offset: 512, lsn: 2 }), (s) => s.dirtyTail.value, [...DIRTY_TAIL_OFFSETS]],
  ['segment info', (s) => updateSegmentInfo(s, 1, { type: 'data', next: 0xffffffff }), (s) => s.segments[1].info.value,
    [segmentOffset(1, SEG) + SEGMENT_INFO_SLOTS[0], segmentOffset(1, SEG) + SEGMENT_INFO_SLOTS[1]]],
  ['segment gen', (s) => updateSegmentGen(s, 1, 77), (s) => s.segments[1].gen.value,
    [segmentOffset(1, SEG) + SEGMENT_GEN_SLOTS[0], segmentOffset(1, SEG) + SEGMENT_GEN_SLOTS[1]]],
];

for (const [name, update, read, offsets] of deviceRecords) {
  test(`${name} on the device: any bit flip in the newest slot falls back to the older copy`, (t) => {
    const { dev, st } = fresh();
    const older = read(st);
    update(st);
    const newer = read(st);
    t.notDeepEqual(older, newer);
    t.is(st.ctx.salt, saltOf(UUID));
    const newestOff = offsets[1]; // format wrote slot 0, the update went to slot 1
    for (let bit = 0; bit < RECORD_SIZE * 8; bit++) {
      flipBit(dev, newestOff + (bit >> 3), bit & 7);
      const got = read(openDevice(dev));
      if (JSON.stringify(got) !== JSON.stringify(older)) t.fail(`bit ${bit}: got ${JSON.stringify(got)}`);
      flipBit(dev, newestOff + (bit >> 3), bit & 7);
    }
    t.deepEqual(read(openDevice(dev)), newer);
  });
}

test('no valid slot: defined outcome per record', (t) => {
  const { dev } = fresh();
  const zero = Buffer.alloc(RECORD_SIZE);
  for (const o of [...CACHE_INFO_OFFSETS, ...DIRTY_TAIL_OFFSETS]) dev.pwrite(zero, o);
  dev.pwrite(zero, segmentOffset(2, SEG) + SEGMENT_GEN_SLOTS[0]);
  const st = openDevice(dev);
  t.deepEqual(st.cacheInfo.value, { mode: 'writeback', gcPercent: 70, flags: 0 });
  t.deepEqual(st.dirtyTail.value, st.keyTail.value);
  t.is(st.segments[2].gen.value, null);
  t.deepEqual(st.damaged, [2]);
  t.is(st.warnings.length, 3);
  for (const o of KEY_TAIL_OFFSETS) dev.pwrite(zero, o);
  t.throws(() => openDevice(dev), { instanceOf: PcachedError, message: /key tail/ });
});

test('every single-bit flip in the superblock is refused with a typed error', (t) => {
  const { dev } = fresh();
  for (let bit = 0; bit < SUPERBLOCK_SIZE * 8; bit++) {
    flipBit(dev, SUPERBLOCK_OFFSET + (bit >> 3), bit & 7);
    try {
      openDevice(dev);
      t.fail(`bit ${bit} accepted`);
    } catch (err) {
      if (!isPcachedError(err, 'ERR_BAD_SUPERBLOCK') && !isPcachedError(err, 'ERR_FORMAT_VERSION')) t.fail(`bit ${bit}: ${String(err)}`);
    }
    flipBit(dev, SUPERBLOCK_OFFSET + (bit >> 3), bit & 7);
  }
  t.notThrows(() => openDevice(dev));
});

test('superblock of another format version is a clear version error', (t) => {
  const { dev } = fresh();
  const sb = Buffer.alloc(SUPERBLOCK_SIZE);
  dev.pread(sb, SUPERBLOCK_OFFSET);
  sb.writeUInt32LE(2, 8);
  sb.writeUInt32LE(crc32c(sb.subarray(0, 124)), 124);
  dev.pwrite(sb, SUPERBLOCK_OFFSET);
  t.throws(() => openDevice(dev), { instanceOf: PcachedError, message: /format version 2/ });
});

test('blank device: open says blank, format succeeds; a small blank device is refused', (t) => {
  const dev = new SimBlockDevice(DEV);
  t.true(isBlankDevice(dev));
  t.throws(() => openDevice(dev), { instanceOf: PcachedError, message: /blank/ });
  t.notThrows(() => formatDevice(dev, { originSize: ORIGIN, dataCrc: true, segmentSize: SEG }));
  t.true(openDevice(dev, { dataCrc: true }).sb.dataCrc);
  const tiny = new SimBlockDevice(MiB + SEG);
  t.throws(() => formatDevice(tiny, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG }), { message: /fewer than 2 segments/ });
});

test('non-blank garbage is refused unless forced; a formatted cache is not reformatted silently', (t) => {
  const dev = new SimBlockDevice(DEV);
  dev.pwrite(Buffer.from('ext4 or something else'), 512 * KiB);
  t.throws(() => openDevice(dev), { instanceOf: PcachedError, message: /magic/ });
  t.throws(() => formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG }), { instanceOf: PcachedError, message: /not blank/ });
  t.notThrows(() => formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG, force: true }));
  t.notThrows(() => openDevice(dev));
  t.throws(() => formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG }), { message: /already holds a pcached cache/ });
});

test('origin size, dataCrc mismatch and truncation are refused', (t) => {
  const { dev } = fresh();
  t.throws(() => openDevice(dev, { originSize: ORIGIN * 2 }), { instanceOf: PcachedError, message: /origin of/ });
  t.throws(() => openDevice(dev, { dataCrc: true }), { instanceOf: PcachedError, message: /dataCrc/ });
  const short = new SimBlockDevice(dev.image().subarray(0, DEV - 4096));
  const err = t.throws(() => openDevice(short));
  t.true(isPcachedError(err, 'ERR_CACHE_MISMATCH'));
  const stub = new SimBlockDevice(dev.image().subarray(0, 4100));
  t.true(isPcachedError(t.throws(() => openDevice(stub)), 'ERR_BAD_SUPERBLOCK'));
});

test('a crash during format leaves a device that is refused, not half-open', (t) => {
  const dev = new SimBlockDevice(DEV);
  dev.pwrite(Buffer.alloc(4096, 1), 600 * KiB); // previous contents
  dev.sync();
  const real = dev.sync.bind(dev);
  let syncs = 0;
  dev.sync = () => { if (++syncs === 2) throw new Error('power cut'); real(); };
  t.throws(() => formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG, force: true }), { message: 'power cut' });
  const after = dev.crash({ u32: () => 0xffffffff, chance: () => false } as never); // every unsynced write lost
  t.true(isPcachedError(t.throws(() => openDevice(after)), 'ERR_BAD_SUPERBLOCK'));
});
