// The checks of the power-loss tests (test/helpers/stamp-model.ts, stamps.ts) on images built by
// hand: they must accept every state a correct device may be in and name what is wrong otherwise.

import test from 'ava';
import { Outcome, StampModel, checkDurable, checkEpochPrefix, decodeImage } from './helpers/stamp-model.js';
import { readStamp, stampBlock, STAMP_BLOCK } from './helpers/stamps.js';

const BLOCKS = 4;

/** Writes `blocks` as one epoch, all acknowledged, then a successful FLUSH (unless `flush` is false). */
function epoch(m: StampModel, blocks: number[], flush = true, outcome = Outcome.OK): number[] {
  const versions = blocks.map((b) => {
    const v = m.beginWrite(b);
    m.endWrite(b, v, outcome);
    return v;
  });
  if (flush) m.endFlush(m.beginFlush(), Outcome.OK);
  return versions;
}

/** An image holding version `versions[b]` of each block. */
function image(versions: number[]): Buffer {
  const img = Buffer.alloc(versions.length * STAMP_BLOCK);
  versions.forEach((v, b) => { if (v > 0) stampBlock(b, v, img, b * STAMP_BLOCK); });
  return img;
}

test('stamps: every version of every block decodes; torn, foreign and damaged blocks are named', (t) => {
  t.deepEqual(readStamp(stampBlock(7, 3), 7), { version: 3 });
  t.deepEqual(readStamp(Buffer.alloc(STAMP_BLOCK), 7), { version: 0 });
  const torn = stampBlock(7, 3);
  stampBlock(7, 4).copy(torn, 1024, 1024, 1536);
  t.deepEqual(readStamp(torn, 7), { bad: 'torn or foreign block (sectors: v3 v3 v4 v3 v3 v3 v3 v3)' });
  t.regex((readStamp(stampBlock(8, 3), 7) as { bad: string }).bad, /block8/);
  const flipped = stampBlock(7, 3);
  flipped[600] ^= 1;
  t.regex((readStamp(flipped, 7) as { bad: string }).bad, /v3-damaged/);
  const half = stampBlock(7, 3);
  half.fill(0, 2048);
  t.regex((readStamp(half, 7) as { bad: string }).bad, /v3 v3 v3 v3 zeros zeros zeros zeros/);
});

test('durable: what a successful FLUSH covered must be there; later and unflushed versions are fine', (t) => {
  const m = new StampModel(BLOCKS);
  epoch(m, [0, 1]); // v1 of 0 and 1, flushed
  epoch(m, [0, 2], false); // v2 of 0, v1 of 2: acknowledged, never flushed
  const covered = m.beginFlush();
  m.endFlush(covered, Outcome.FAILED);
  t.true(checkDurable(m, decodeImage(image([1, 1, 0, 0]), BLOCKS, m)).ok, 'the failed FLUSH covered nothing');
  t.true(checkDurable(m, decodeImage(image([2, 1, 1, 0]), BLOCKS, m)).ok);
  const lost = checkDurable(m, decodeImage(image([0, 1, 0, 0]), BLOCKS, m));
  t.false(lost.ok);
  t.is(lost.older, 1);
  t.regex(lost.summary, /^1 of 4 blocks older than the last successful FLUSH covering them \(the versions they miss were written in epochs 1\.\.1; 1 of these blocks read as zeros\)/);
  t.regex(lost.summary, /block 0 holds v0 \(epoch 0\), a successful FLUSH covered v1 \(epoch 1\)/);
  const never = checkDurable(m, decodeImage(image([1, 5, 0, 0]), BLOCKS, m));
  t.false(never.ok);
  t.regex(never.summary, /block 1: holds version 5, never written \(last written: 1\)/);
});

test('durable: a successful FLUSH covers only writes answered before it was sent', (t) => {
  const m = new StampModel(BLOCKS);
  const v = m.beginWrite(3);
  const covered = m.beginFlush(); // the write is still in flight
  m.endWrite(3, v, Outcome.OK);
  m.endFlush(covered, Outcome.OK);
  t.is(m.durable[3], 0);
  t.true(checkDurable(m, decodeImage(image([0, 0, 0, 0]), BLOCKS, m)).ok);
});

test('epoch prefix: whole epochs plus part of the next pass; a block of a later epoch fails, with numbers', (t) => {
  const m = new StampModel(BLOCKS);
  epoch(m, [0, 1]); // epoch 1: 0v1 1v1
  epoch(m, [0, 2]); // epoch 2: 0v2 2v1
  epoch(m, [1, 3]); // epoch 3: 1v2 3v1
  const ok = (versions: number[]): void => {
    const r = checkEpochPrefix(m, decodeImage(image(versions), BLOCKS, m));
    t.true(r.ok, `${versions.join(',')}: ${r.summary}`);
  };
  ok([0, 0, 0, 0]);
  ok([1, 0, 0, 0]); // part of epoch 1
  ok([1, 1, 1, 0]); // epoch 1 whole, part of 2
  ok([2, 1, 1, 1]); // epochs 1-2 whole, part of 3
  ok([2, 2, 1, 1]);
  const r = checkEpochPrefix(m, decodeImage(image([1, 1, 0, 1]), BLOCKS, m)); // 3's block without 2's
  t.false(r.ok);
  t.like(r, { whole: 1, epochs: 3, later: 1, beyond: 1 });
  t.regex(r.summary, /^origin holds epochs 1\.\.1 of 3 whole plus 1 blocks of later epochs: 1 blocks from epochs after 2, a state the client never saw; e\.g\. block 3 holds v1 of epoch 3/);
  const back = checkEpochPrefix(m, decodeImage(image([1, 2, 1, 1]), BLOCKS, m)); // epoch 2's block 0 went back to epoch 1
  t.false(back.ok);
  t.is(back.whole, 1);
});

test('epoch prefix: writes that failed or were lost in a crash may be there or not', (t) => {
  const m = new StampModel(BLOCKS);
  epoch(m, [0]); // epoch 1
  epoch(m, [1], true, Outcome.FAILED); // epoch 2: 1v1 got EIO
  epoch(m, [2], false); // 2v1 acknowledged, then a crash before any FLUSH
  m.crash(); // closes epoch 3
  epoch(m, [3]); // epoch 4
  for (const versions of [[1, 0, 0, 1], [1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1]]) {
    const r = checkEpochPrefix(m, decodeImage(image(versions), BLOCKS, m));
    t.true(r.ok, `${versions.join(',')}: ${r.summary}`);
    t.true(checkDurable(m, decodeImage(image(versions), BLOCKS, m)).ok);
  }
  const r = checkEpochPrefix(m, decodeImage(image([0, 0, 0, 1]), BLOCKS, m));
  t.false(r.ok, 'epoch 4 without epoch 1');
  t.is(m.counts.crashes, 1);
});
