// Requests are cut at 4 MiB subtree boundaries and each piece goes to the stripe that owns
// its subtree, so every write to a block always passes through the same stripe, in order.

import { SUBTREE_SIZE } from '../ring/layout.js';

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

/** Split [offset, offset+length) at subtree boundaries. length > 0. */
export function splitRequest(offset: number, length: number, stripes: number): Piece[] {
  const pieces: Piece[] = [];
  let off = offset;
  const end = offset + length;
  while (off < end) {
    const boundary = (Math.floor(off / SUBTREE_SIZE) + 1) * SUBTREE_SIZE;
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
