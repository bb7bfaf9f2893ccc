// Page fill of the extent index (issue 10: ≤ 24 bytes per extent, status's `index.bytes` over
// `index.extents`) under the workload that sets it, random 4 KiB writes, and with the edits
// that spread, split and pack pages checked against a sector map.
import test from 'ava';
import fc from 'fast-check';
import { ExtentFlag, ExtentIndex } from '../src/cache/index/extent-index.js';

const MiB = 1 << 20;
const SUB = 4 * MiB;
const BLK = 4096;
const SEC = 512;

/** Small deterministic PRNG (mulberry32): the fills must be the same on every run. */
const prng = (seed: number): (() => number) => {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
};

const shuffled = (n: number, rnd: () => number): Uint32Array => {
  const a = new Uint32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    const t = a[i]!; a[i] = a[j]!; a[j] = t;
  }
  return a;
};

const perExtent = (ix: ExtentIndex): number => ix.bytesUsed / ix.count;

test('a random 4 KiB fill of a 1 GiB origin takes at most 24 bytes per extent, every block where it was put', (t) => {
  const origin = 1024 * MiB, blocks = origin / BLK;
  const ix = ExtentIndex.create({ originBytes: origin, stripe: 0, stripes: 1, maxBytes: 64 * MiB });
  const order = shuffled(blocks, prng(0x1d5));
  // The i-th write lands at segment i >> 10, offset (i & 1023) blocks: the model is the order itself.
  const at = new Uint32Array(blocks);
  for (let i = 0; i < blocks; i++) {
    const b = order[i]!;
    ix.insert({ off: b * BLK, len: BLK, seg: i >>> 10, segOff: (i & 1023) * BLK, gen: 1, flags: ExtentFlag.DIRTY });
    at[b] = i;
  }
  t.is(ix.count, blocks);
  const per = perExtent(ix);
  t.log(`${blocks} extents, ${ix.bytesUsed} bytes: ${per.toFixed(2)} B/extent`);
  t.true(per <= 24, `${per} bytes per extent`);
  const reader = ExtentIndex.attach(ix.sabs);
  let bad = 0;
  for (let sub = 0; sub < origin / SUB; sub++) {
    for (const h of sub % 16 === 0 ? [ix, reader] : [ix]) {
      const got = h.snapshotSubtree(sub);
      if (got.length !== SUB / BLK) { bad++; continue; }
      for (const e of got) {
        const i = at[e.off / BLK]!;
        if (e.len !== BLK || e.seg !== i >>> 10 || e.segOff !== (i & 1023) * BLK) bad++;
      }
    }
  }
  t.is(bad, 0);
});

test('descending and ascending 4 KiB runs fill pages whole', (t) => {
  for (const dir of [1, -1]) {
    const ix = ExtentIndex.create({ originBytes: 64 * MiB, stripe: 0, stripes: 1, maxBytes: 16 * MiB });
    const n = 64 * MiB / BLK;
    for (let k = 0; k < n; k++) {
      const b = dir > 0 ? k : n - 1 - k;
      ix.insert({ off: b * BLK, len: BLK, seg: 0, segOff: 0, gen: 1, flags: ExtentFlag.DIRTY });
    }
    // 32 records a page of 648 bytes: 20.25 bytes per extent, plus the subtree table.
    t.true(perExtent(ix) < 20.5, `direction ${dir}: ${perExtent(ix)}`);
  }
});

// ---- model: a sector map of two subtrees ----

const NSEC = (2 * SUB) / SEC;

/** Per sector: segment, byte offset in it, generation; seg -1 where nothing is mapped. */
class SectorMap {
  seg = new Int32Array(NSEC).fill(-1);
  so = new Float64Array(NSEC);
  gen = new Int32Array(NSEC);
  put(off: number, len: number, seg: number, segOff: number, gen: number): void {
    for (let s = off / SEC; s < (off + len) / SEC; s++) { this.seg[s] = seg; this.so[s] = segOff + (s * SEC - off); this.gen[s] = gen; }
  }
  clear(off: number, len: number): void { this.seg.fill(-1, off / SEC, (off + len) / SEC); }
  dropGen(gen: number): void { for (let s = 0; s < NSEC; s++) if (this.gen[s] === gen) this.seg[s] = -1; }
}

/** First sector that differs between the map and what `ix` looks up, or -1. */
const firstDiff = (ix: ExtentIndex, m: SectorMap): number => {
  let diff = -1;
  for (let sub = 0; sub < 2 && diff === -1; sub++) {
    let pos = sub * SUB;
    ix.lookup(sub * SUB, SUB, (off, len, e) => {
      if (off !== pos) diff = pos / SEC;
      pos = off + len;
      for (let s = off / SEC; s < (off + len) / SEC && diff === -1; s++) {
        if (e === null ? m.seg[s] !== -1 : m.seg[s] !== e.seg || m.gen[s] !== e.gen || m.so[s] !== e.segOff + (s * SEC - off)) diff = s;
      }
    });
    if (diff === -1 && pos !== (sub + 1) * SUB) diff = pos / SEC;
  }
  return diff;
};

test('model: fills, overwrites, partial overlaps, trims and GC sweeps over many pages match a sector map', (t) => {
  const op = fc.record({
    kind: fc.constantFrom('over', 'over', 'part', 'part', 'trim', 'gc'),
    at: fc.nat({ max: NSEC - 1 }),
    secs: fc.integer({ min: 1, max: 64 }),
    gen: fc.integer({ min: 0, max: 3 }),
  });
  fc.assert(fc.property(fc.integer({ min: 1, max: 2 ** 30 }), fc.double({ min: 0.5, max: 1, noNaN: true }), fc.array(op, { maxLength: 300 }), (seed, frac, ops) => {
    const ix = ExtentIndex.create({ originBytes: 2 * SUB, stripe: 0, stripes: 1, maxBytes: 4 * MiB });
    const m = new SectorMap();
    const rnd = prng(seed);
    let seg = 0;
    const put = (off: number, len: number, gen: number): void => {
      const segOff = Math.floor(rnd() * 1024) * BLK;
      ix.insert({ off, len, seg, segOff, gen, flags: ExtentFlag.DIRTY });
      m.put(off, len, seg, segOff, gen);
      seg++;
    };
    // Fill: a random part of the blocks, each once (the growth bench's shape).
    const order = shuffled((2 * SUB) / BLK, rnd);
    for (let i = 0; i < Math.floor(order.length * frac); i++) put(order[i]! * BLK, BLK, 1);
    if (!(perExtent(ix) <= 24)) throw new Error(`fill of ${ix.count}: ${perExtent(ix)} bytes per extent`);
    for (const o of ops) {
      const sub = o.at * SEC >= SUB ? 1 : 0, end = (sub + 1) * SUB;
      if (o.kind === 'over') {
        const b = Math.floor((o.at * SEC) / BLK) * BLK;
        put(b, BLK, o.gen);
      } else if (o.kind === 'part') {
        const off = o.at * SEC;
        put(off, Math.min(end, off + o.secs * SEC) - off, o.gen);
      } else if (o.kind === 'trim') {
        const off = o.at * SEC, len = Math.min(end, off + o.secs * 8 * SEC) - off;
        ix.remove(off, len);
        m.clear(off, len);
      } else {
        ix.removeIf((e) => e.gen === o.gen);
        m.dropGen(o.gen);
      }
    }
    const reader = ExtentIndex.attach(ix.sabs);
    const d = firstDiff(ix, m), dr = firstDiff(reader, m);
    if (d !== -1 || dr !== -1) throw new Error(`sector ${d} (owner) / ${dr} (reader) differs from the map`);
    let mapped = 0;
    for (let s = 0; s < NSEC; s++) if (m.seg[s] !== -1) mapped += SEC;
    if (ix.cachedBytes !== mapped) throw new Error(`cachedBytes ${ix.cachedBytes}, map ${mapped}`);
    // Whatever the history, overwriting every block again in random order packs it back.
    for (const b of shuffled((2 * SUB) / BLK, rnd)) put(b * BLK, BLK, 0);
    if (ix.count !== (2 * SUB) / BLK) throw new Error(`${ix.count} extents after the overwrite`);
    if (!(perExtent(ix) <= 24)) throw new Error(`after the overwrite: ${perExtent(ix)} bytes per extent`);
    return firstDiff(ix, m) === -1;
  }), { seed: 0x1d5, numRuns: 60 });
  t.pass();
});
