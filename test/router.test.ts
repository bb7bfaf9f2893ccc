import test from 'ava';
import fc from 'fast-check';
import { splitRequest, stripeOf, firstSubtreeLength, maxPieceFor } from '../src/coordinator/router.js';
import { SUBTREE_SIZE } from '../src/ring/layout.js';

const GiB = 2 ** 30;
const request = fc.record({
  offset: fc.oneof(fc.integer({ min: 0, max: 64 * GiB }), fc.integer({ min: 0, max: 64 }).map((i) => i * SUBTREE_SIZE - 1).filter((x) => x >= 0)),
  length: fc.oneof(fc.integer({ min: 1, max: 32 * 2 ** 20 }), fc.integer({ min: 1, max: 2 ** 32 - 1 })),
  stripes: fc.integer({ min: 1, max: 16 }),
});

test('pieces tile the request exactly, in order, without crossing a subtree', (t) => {
  fc.assert(fc.property(request, ({ offset, length, stripes }) => {
    const pieces = splitRequest(offset, length, stripes);
    let next = offset;
    for (const p of pieces) {
      if (p.offset !== next || p.length <= 0 || p.delta !== p.offset - offset) return false;
      if (Math.floor(p.offset / SUBTREE_SIZE) !== Math.floor((p.offset + p.length - 1) / SUBTREE_SIZE)) return false;
      next = p.offset + p.length;
    }
    return next === offset + length && pieces.length === Math.floor((offset + length - 1) / SUBTREE_SIZE) - Math.floor(offset / SUBTREE_SIZE) + 1;
  }), { seed: 42, numRuns: 2000 });
  t.pass();
});

test('every byte of a subtree routes to the same stripe, and subtrees spread round-robin', (t) => {
  fc.assert(fc.property(request, ({ offset, length, stripes }) => {
    for (const p of splitRequest(offset, Math.min(length, 64 * 2 ** 20), stripes)) {
      const subtree = Math.floor(p.offset / SUBTREE_SIZE);
      if (p.stripe !== subtree % stripes) return false;
      if (stripeOf(p.offset + p.length - 1, stripes) !== p.stripe) return false;
    }
    return true;
  }), { seed: 7, numRuns: 2000 });
  t.pass();
});

test('firstSubtreeLength stops at the next boundary', (t) => {
  t.is(firstSubtreeLength(0, 10 * SUBTREE_SIZE), SUBTREE_SIZE);
  t.is(firstSubtreeLength(SUBTREE_SIZE - 1, 100), 1);
  t.is(firstSubtreeLength(5, 100), 100);
  t.is(firstSubtreeLength(SUBTREE_SIZE, SUBTREE_SIZE), SUBTREE_SIZE);
});

test('split of a request ending exactly on a boundary has no empty piece', (t) => {
  const pieces = splitRequest(SUBTREE_SIZE - 4096, 4096 + SUBTREE_SIZE, 2);
  t.deepEqual(pieces.map((p) => [p.offset, p.length, p.stripe]), [[SUBTREE_SIZE - 4096, 4096, 0], [SUBTREE_SIZE, SUBTREE_SIZE, 1]]);
});

test('maxPieceFor: a power of two, at most a subtree and a quarter of the slab; READ/WRITE pieces never exceed it', (t) => {
  t.is(maxPieceFor(32 * 2 ** 20), SUBTREE_SIZE);
  t.is(maxPieceFor(16 * 2 ** 20), SUBTREE_SIZE);
  t.is(maxPieceFor(8 * 2 ** 20), 2 * 2 ** 20);
  t.is(maxPieceFor(4 * 2 ** 20), 2 ** 20, 'the smallest slab allowed');
  t.is(maxPieceFor(2 ** 30), SUBTREE_SIZE);
  fc.assert(fc.property(request, fc.constantFrom(2 ** 20, 2 ** 21, SUBTREE_SIZE), ({ offset, length, stripes }, maxPiece) => {
    const len = Math.min(length, 64 * 2 ** 20);
    const pieces = splitRequest(offset, len, stripes, maxPiece);
    let next = offset;
    for (const p of pieces) {
      if (p.offset !== next || p.length <= 0 || p.length > maxPiece) return false;
      // Cut at multiples of the piece size: aligned requests give aligned pieces.
      if (Math.floor(p.offset / maxPiece) !== Math.floor((p.offset + p.length - 1) / maxPiece)) return false;
      if (p.stripe !== stripeOf(p.offset, stripes)) return false;
      next = p.offset + p.length;
    }
    return next === offset + len;
  }), { seed: 11, numRuns: 1000 });
});
