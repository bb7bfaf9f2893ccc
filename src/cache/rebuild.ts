// Rebuilding subtrees of a stripe's index from the key log, while the cache runs: a stripe thread
// that died in the middle of an index mutation left those subtrees half edited (their seqlock odd),
// and its successor cannot trust them (ExtentIndex.attachRepairing empties them). What they held is
// exactly the logged keys of those subtrees, in log order, then the keys the stripe had accepted
// but not logged yet (its journal), as replay does at start.

import type { BlockDevice } from './blockdev.js';
import { KEY_CLEAN, KEY_DIRTY, KEY_INVALIDATE, KEY_TRIM, hasData, type CacheKey } from './kset.js';
import { limitsOf, readKsetAt, type Geometry } from './log.js';
import type { CacheShared } from './shared.js';
import { ExtentFlag, type ExtentIndex } from './index/extent-index.js';
import { SUBTREE_SIZE } from '../ring/layout.js';

/** What a key becomes in the index (null: an INVALIDATE, which removes the range). */
export function extentFlagOf(flags: number): number | null {
  if (flags === KEY_INVALIDATE) return null;
  return flags === KEY_DIRTY ? ExtentFlag.DIRTY : flags === KEY_CLEAN ? ExtentFlag.CLEAN : flags === KEY_TRIM ? ExtentFlag.TRIM : ExtentFlag.ZERO;
}

/** Puts a key into the index as replay would; false when it names a segment reused since (stale). */
export function applyKey(index: ExtentIndex, sh: CacheShared, k: CacheKey): boolean {
  if (hasData(k.flags) && k.generation !== sh.genOf(k.segment)) return false;
  const flags = extentFlagOf(k.flags);
  if (flags === null) index.remove(k.originOffset, k.length);
  else index.insert({ off: k.originOffset, len: k.length, seg: k.segment, segOff: k.offset, gen: k.generation, flags });
  return true;
}

/**
 * Re-inserts into the emptied slots of `index` every logged key of theirs from key_tail to the log
 * head, then `pending` (the journal's keys). Returns the keys applied, or why the log could not be
 * read: a kset that does not parse or a cache read that failed (the slots then stay empty: those
 * reads would go to the origin, older data; the caller makes the cache fail rather than serve that).
 */
export function rebuildSubtrees(dev: BlockDevice, sh: CacheShared, g: Geometry, index: ExtentIndex, slots: readonly number[], pending: readonly CacheKey[]): number | string {
  if (slots.length === 0) return 0;
  const wanted = new Set(slots.map((s) => index.subtreeOfSlot(s)));
  const mine = (k: CacheKey): boolean => {
    const sub = Math.floor(k.originOffset / SUBTREE_SIZE);
    return wanted.has(sub) && Math.floor((k.originOffset + k.length - 1) / SUBTREE_SIZE) === sub;
  };
  const lim = limitsOf(g);
  let applied = 0;
  // The log head is read under the log lock so no append is half visible; the walk itself reads
  // only ksets behind it, which no one rewrites before GC passes them (and GC stays behind
  // dirty_tail, which stays behind the head).
  sh.lockLog();
  const head = sh.headLsn;
  sh.unlockLog();
  let pos = sh.keyTail();
  while (pos.lsn < head) {
    let r: ReturnType<typeof readKsetAt>;
    // A cache read error here is one more reason the log cannot be read, not a crash of the
    // stripe's start (which piscina would only respawn into the same read, forever).
    try {
      r = readKsetAt(dev, g, pos, lim);
    } catch (err) {
      return `kset at sequence ${pos.lsn}: ${(err as Error).message}`;
    }
    if ('error' in r) return `kset at sequence ${pos.lsn}: ${r.error}`;
    for (const k of r.kset.keys) if (mine(k) && applyKey(index, sh, k)) applied++;
    pos = r.next;
  }
  for (const k of pending) if (mine(k) && applyKey(index, sh, k)) applied++;
  return applied;
}
