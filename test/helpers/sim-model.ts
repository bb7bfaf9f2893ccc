// What the crash simulator (sim-cache.ts) checks against: stamped sector contents, the versions a
// sector may hold after a power cut, and the history of versions per sector with the epoch (the
// writes between two successful FLUSHes) each belongs to, for the origin's epoch-prefix check.

export const SECTOR = 512;

/** The content a version writes into a sector: recognisable, and different for every (version, sector). */
export function sectorPattern(version: number, sector: number, out: Buffer): void {
  if (version === 0) { out.fill(0); return; }
  out.writeUInt32LE(version, 0);
  out.writeUInt32LE(sector, 4);
  let x = (Math.imul(version, 0x9e3779b1) ^ sector) >>> 0;
  for (let i = 8; i < SECTOR; i += 4) {
    x = (Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) + i) >>> 0;
    out.writeUInt32LE(x, i);
  }
}

const ZEROS = Buffer.alloc(SECTOR);

/** What a sector holds, for failure messages: a stamp (version, sector it was written for), zeros, or garbage. */
export function describeSector(b: Buffer): string {
  if (b.equals(ZEROS)) return 'zeros';
  const v = b.readUInt32LE(0), sec = b.readUInt32LE(4);
  const scratch = Buffer.alloc(SECTOR);
  sectorPattern(v, sec, scratch);
  return scratch.equals(b) ? `version ${v} written for sector ${sec}` : 'bytes no version wrote';
}

/** Which of `candidates` a sector's bytes are, or -1 for bytes none of them wrote. */
export function identify(buf: Buffer, sector: number, candidates: Iterable<number>, scratch: Buffer): number {
  // The stamp names the one candidate worth generating in full.
  const stamped = buf.readUInt32LE(0);
  if (stamped === 0) {
    for (const v of candidates) if (v === 0) return buf.equals(ZEROS) ? 0 : -1;
    return -1;
  }
  for (const v of candidates) {
    if (v === 0 ? stamped !== 0 : stamped !== v || buf.readUInt32LE(4) !== sector) continue;
    sectorPattern(v, sector, scratch);
    if (scratch.equals(buf)) return v;
  }
  return -1;
}

/** Any stamped version written for this sector (or zeros): -1 for garbage. */
export function anyVersion(buf: Buffer, sector: number, scratch: Buffer): number {
  if (buf.equals(ZEROS)) return 0;
  return identify(buf, sector, [buf.readUInt32LE(0)], scratch);
}

/**
 * Per sector: the latest version acknowledged; while unflushed writes exist, every version a power
 * cut may legitimately leave there (`maybe`, version 0 is zeros); and versions of writes that
 * failed or were cut off, which may or may not have taken effect (`unresolved`: a read settles them).
 */
export class Model {
  readonly latest: Int32Array;
  readonly maybe = new Map<number, Set<number>>();
  readonly unresolved = new Map<number, Set<number>>();
  constructor(readonly sectors: number) { this.latest = new Int32Array(sectors); }

  /** A write or zero was issued (it may land even if it never completes). */
  issued(first: number, count: number, version: number): void {
    for (let s = first; s < first + count; s++) {
      let set = this.maybe.get(s);
      if (!set) { set = new Set([this.latest[s]!]); this.maybe.set(s, set); }
      set.add(version);
    }
  }
  acked(first: number, count: number, version: number, durable: boolean): void {
    for (let s = first; s < first + count; s++) {
      this.latest[s] = version;
      this.unresolved.delete(s);
      if (durable) this.maybe.delete(s);
    }
  }
  /** The write failed (EIO) or its thread died: it may still show up. */
  failed(first: number, count: number, version: number): void {
    for (let s = first; s < first + count; s++) {
      let set = this.unresolved.get(s);
      if (!set) { set = new Set(); this.unresolved.set(s, set); }
      set.add(version);
    }
  }
  flushed(): void { this.maybe.clear(); }

  /** While running: what a read of sector s may return. */
  readable(s: number): number[] {
    const u = this.unresolved.get(s);
    return u ? [this.latest[s]!, ...u] : [this.latest[s]!];
  }
  /** After a power cut: which versions sector s may hold. */
  allowed(s: number): Set<number> {
    const m = this.maybe.get(s) ?? new Set([this.latest[s]!]);
    const u = this.unresolved.get(s);
    if (u) for (const v of u) m.add(v);
    return m;
  }
  settle(s: number, v: number): void {
    this.latest[s] = v;
    this.maybe.delete(s);
    this.unresolved.delete(s);
  }
}

/** One version of a sector in its history: `sure` once acknowledged (or seen). */
export interface Entry { v: number; e: number; sure: boolean }

/**
 * Epochs as the client sees them: a successful FLUSH ends one. Per sector, the versions issued in
 * order with the epoch they were issued in; versions a power cut took back are dropped when the
 * volume is checked after the restart. `check` is the promise of epoch-ordered writeback: the
 * origin alone must hold every epoch before some M whole, part of M, and nothing later.
 */
export class EpochHistory {
  epoch = 1;
  readonly hist = new Map<number, Entry[]>();

  private list(s: number): Entry[] {
    let h = this.hist.get(s);
    if (!h) { h = []; this.hist.set(s, h); }
    return h;
  }

  issued(first: number, count: number, v: number): void {
    for (let s = first; s < first + count; s++) this.list(s).push({ v, e: this.epoch, sure: false });
  }

  acked(first: number, count: number, v: number): void {
    for (let s = first; s < first + count; s++) for (const x of this.list(s)) if (x.v === v) x.sure = true;
  }

  /** A read or a restart found version v in sector s: it is sure, and anything issued after it that is not sure is gone. */
  seen(s: number, v: number, afterCrash: boolean): void {
    const h = this.list(s);
    let i = h.length - 1;
    while (i >= 0 && h[i]!.v !== v) i--;
    if (i < 0) {
      // Zeros where nothing was ever written: the initial state.
      if (v === 0) { if (afterCrash) h.length = 0; return; }
      throw new Error(`history: sector ${s} holds version ${v}, never issued there`);
    }
    h[i]!.sure = true;
    // A power cut takes back everything after what survived. A read while running resolves doubt:
    // writes after the version found that were never confirmed did not take effect.
    if (afterCrash) h.length = i + 1;
    else for (let j = h.length - 1; j > i; j--) if (!h[j]!.sure) h.splice(j, 1);
  }

  /** Returns null when the origin is explained by some epoch cut, else what breaks it. */
  check(read: (sector: number) => Buffer, scratch: Buffer): string | null {
    const found = new Map<number, number>();
    let low = 1;
    let lowAt = '';
    for (const [sec, h] of this.hist) {
      const bytes = read(sec);
      const v = identify(bytes, sec, [0, ...h.map((x) => x.v)], scratch);
      if (v < 0) return `origin sector ${sec} holds bytes no issued write left there (${describeSector(bytes)})`;
      found.set(sec, v);
      if (v !== 0) for (const x of h) if (x.v === v && x.e > low) { low = x.e; lowAt = `sector ${sec} version ${v}`; }
    }
    const fits = (m: number, sec: number): boolean => {
      const v = found.get(sec)!;
      // Before epoch m: the last sure version, or a later unsure one (it may have landed).
      const before = new Set<number>([0]);
      for (const x of this.hist.get(sec)!) {
        if (x.e >= m) {
          if (x.e === m && x.v === v) return true;
          continue;
        }
        if (x.sure) before.clear();
        before.add(x.v);
      }
      return before.has(v);
    };
    let firstBad = -1;
    for (let m = low; m <= this.epoch; m++) {
      let bad = -1;
      for (const sec of this.hist.keys()) if (!fits(m, sec)) { bad = sec; break; }
      if (bad < 0) return null;
      if (firstBad < 0) firstBad = bad;
    }
    const h = this.hist.get(firstBad) ?? [];
    return `no epoch cut explains the origin (from epoch ${low}: ${lowAt}); sector ${firstBad} holds version ${found.get(firstBad)} ` +
      `(history ${h.map((x) => `v${x.v}@e${x.e}${x.sure ? '' : '?'}`).join(' ')})`;
  }
}
