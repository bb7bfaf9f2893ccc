// A stripe's data head: where its next cache data goes. Allocation is log-structured: 4 KiB
// aligned pieces from the head segment, a fresh segment (its info record written first) when the
// head is full. Every piece holds one reference on its segment until its key is retired by GC or
// the piece is given up; a segment left without any is the GC worker's to free.

import type { BlockDevice } from './blockdev.js';
import { DATA_ALIGN, alignUp } from './layout.js';
import { writeSegmentInfo } from './log.js';
import type { Geometry } from './log.js';
import type { KeyJournal } from './journal.js';
import { SEG_DATA, W_KICK_GC } from './shared.js';
import type { CacheShared } from './shared.js';
import { FAIL_META_WRITE } from './durability.js';

export interface Alloc { seg: number; segOff: number; len: number }

export type WriteFailed = (err: unknown, what: string, why: number) => void;

export class DataHead {
  #seg = -1;
  #off = 0;
  /** Segment -> first offset allocated there since the last commit round took its keys. */
  readonly #uncommitted = new Map<number, number>();

  constructor(
    private readonly dev: BlockDevice,
    private readonly sh: CacheShared,
    private readonly g: Geometry,
    private readonly journal: KeyJournal,
    private readonly writeFailed: WriteFailed,
  ) {}

  get segment(): number { return this.#seg; }

  /** A respawned stripe carries on from its predecessor's head (and the reference it holds). */
  resume(seg: number, off: number): void {
    this.#seg = seg;
    this.#off = off;
  }

  /**
   * One piece of at most `maxLen` bytes, or null when no segment is free. `keepReserve` (fills and
   * write-through copies, which may simply not be cached) never takes the last free segments from
   * writes and the key log. Throws (the device has failed) when the new segment's info cannot be written.
   */
  alloc(maxLen: number, keepReserve: boolean): Alloc | null {
    const area = this.g.dataAreaSize;
    if (this.#seg < 0 || this.#off >= area) {
      if (keepReserve && this.sh.freeSegments <= this.sh.logReserve + 1) return null;
      const s = this.sh.allocSegment(SEG_DATA);
      if (s < 0) return null;
      // allocSegment took the head's own reference.
      if (this.#seg >= 0) this.release(this.#seg);
      this.#seg = -1;
      this.journal.setHead(-1, 0);
      try {
        writeSegmentInfo(this.dev, this.sh, this.g, s, { type: 'data', next: 0xffffffff });
      } catch (err) {
        this.release(s);
        this.writeFailed(err, 'segment info', FAIL_META_WRITE);
        throw err;
      }
      this.#seg = s;
      this.#off = 0;
    }
    const len = Math.min(maxLen, area - this.#off);
    const a = { seg: this.#seg, segOff: this.#off, len };
    if (!this.#uncommitted.has(a.seg)) this.#uncommitted.set(a.seg, a.segOff);
    this.#off += alignUp(len, DATA_ALIGN);
    this.journal.setHead(this.#seg, this.#off);
    this.sh.ref(a.seg);
    return a;
  }

  /** Pieces for all `len` bytes (split across segments), or null with nothing held. */
  allocAll(len: number, keepReserve: boolean): Alloc[] | null {
    const allocs: Alloc[] = [];
    for (let pos = 0; pos < len;) {
      const a = this.alloc(len - pos, keepReserve);
      if (a === null) {
        for (const x of allocs) this.release(x.seg);
        return null;
      }
      allocs.push(a);
      pos += a.len;
    }
    return allocs;
  }

  /**
   * Drops one reference. A segment left without any is garbage the GC worker frees (a stripe never
   * syncs synchronously: its own commit round may hold the sync gate while it waits here).
   */
  release(seg: number): void {
    if (this.sh.unref(seg) === 0) this.sh.kick(W_KICK_GC);
  }

  /** True when the bytes at `segOff` of `seg` were allocated after the last commit round took its keys. */
  sinceCommit(seg: number, segOff: number): boolean {
    const from = this.#uncommitted.get(seg);
    return from !== undefined && segOff >= from;
  }

  /** A commit round took every key allocated so far. */
  committed(): void {
    this.#uncommitted.clear();
  }

  /** An allocation whose key a round did not take (its data still being written) counts as uncommitted again. */
  noteUncommitted(seg: number, segOff: number): void {
    const from = this.#uncommitted.get(seg);
    if (from === undefined || segOff < from) this.#uncommitted.set(seg, segOff);
  }
}
