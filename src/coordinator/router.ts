// Requests are cut at 4 MiB subtree boundaries and each piece goes to the stripe that owns
// its subtree, so every write to a block always passes through the same stripe, in order.
// READ and WRITE are also cut at multiples of a smaller piece size when the slab is small, so
// that no piece needs more than a quarter of its stripe's slab in one run.

import { SLAB_PAGE, SUBTREE_SIZE } from '../ring/layout.js';

export interface Piece {
  offset: number;
  length: number;
  stripe: number;
  /** Offset of this piece inside the original request. */
  delta: number;
}

export function stripeOf(offset: number, stripes: number): number {
  return Math.floor(offset / SUBTREE_SIZE) % stripes;
}

/** The largest power of two up to a subtree and a quarter of the slab (at least one page). */
export function maxPieceFor(slabBytes: number): number {
  let piece = SUBTREE_SIZE;
  while (piece > SLAB_PAGE && piece > slabBytes / 4) piece /= 2;
  return piece;
}

/**
 * Split [offset, offset+length) at multiples of `maxPiece` (a power of two dividing the subtree
 * size, so subtree boundaries are among them). length > 0.
 */
export function splitRequest(offset: number, length: number, stripes: number, maxPiece = SUBTREE_SIZE): Piece[] {
  const pieces: Piece[] = [];
  let off = offset;
  const end = offset + length;
  while (off < end) {
    const boundary = (Math.floor(off / maxPiece) + 1) * maxPiece;
    const pieceEnd = Math.min(end, boundary);
    pieces.push({ offset: off, length: pieceEnd - off, stripe: stripeOf(off, stripes), delta: off - offset });
    off = pieceEnd;
  }
  return pieces;
}

/** Length of the part of [offset, offset+length) that lies in offset's subtree. */
export function firstSubtreeLength(offset: number, length: number): number {
  const boundary = (Math.floor(offset / SUBTREE_SIZE) + 1) * SUBTREE_SIZE;
  return Math.min(length, boundary - offset);
}
