import test from 'ava';
import fc from 'fast-check';
import { ExtentFlag, ExtentIndex, IndexFullError, IndexStateError } from '../src/cache/index/extent-index.js';
import { META_HDR_WORDS, SUB_WORDS, S_SEQ } from '../src/cache/index/layout.js';
import type { Extent } from '../src/cache/index/extent-index.js';

const MiB = 1 << 20;
const SUB = 4 * MiB;
const D = ExtentFlag.DIRTY;
const E = ExtentFlag.EMPTY;

const mk = (origin = 64 * MiB, stripe = 0, stripes = 1, maxBytes = 64 * MiB): ExtentIndex =>
  ExtentIndex.create({ originBytes: origin, stripe, stripes, maxBytes });
const x = (off: number, len: number, seg: number, segOff = 0, flags: number = D, gen = 1): Extent => ({ off, len, seg, segOff, gen, flags });
const dump = (ix: ExtentIndex, sub = 0): Extent[] => ix.snapshotSubtree(sub);

test('case: new covers old deletes old', (t) => {
  const ix = mk();
  ix.insert(x(4096, 4096, 1));
  ix.insert(x(0, 16384, 2, 0));
  t.deepEqual(dump(ix), [x(0, 16384, 2, 0)]);
  t.is(ix.count, 1);
  t.is(ix.cachedBytes, 16384);
});

test('case: new overlaps head of old cuts old front and advances segOff', (t) => {
  const ix = mk();
  ix.insert(x(8192, 8192, 1, 1000));
  ix.insert(x(4096, 8192, 2, 0));
  t.deepEqual(dump(ix), [x(4096, 8192, 2, 0), x(12288, 4096, 1, 1000 + 4096)]);
  t.is(ix.cachedBytes, 12288);
});

test('case: new overlaps tail of old cuts old back', (t) => {
  const ix = mk();
  ix.insert(x(0, 8192, 1, 100));
  ix.insert(x(4096, 8192, 2, 0));
  t.deepEqual(dump(ix), [x(0, 4096, 1, 100), x(4096, 8192, 2, 0)]);
});

test('case: old covers new splits old in two with the tail segOff advanced', (t) => {
  const ix = mk();
  ix.insert(x(0, 16384, 1, 0, D, 7));
  ix.insert(x(4096, 4096, 2, 500));
  t.deepEqual(dump(ix), [x(0, 4096, 1, 0, D, 7), x(4096, 4096, 2, 500), x(8192, 8192, 1, 8192, D, 7)]);
  t.is(ix.count, 3);
  t.is(ix.cachedBytes, 16384);
});

test('case: an EMPTY placeholder covering new is cut, never split', (t) => {
  const ix = mk();
  const tok = ix.insertPlaceholder(0, 16384);
  ix.insert(x(4096, 4096, 2));
  t.deepEqual(dump(ix), [x(0, 4096, tok, 0, E, 0), x(4096, 4096, 2)]);
  t.is(ix.cachedBytes, 4096);
});

test('case: disjoint and equal', (t) => {
  const ix = mk();
  ix.insert(x(8192, 4096, 1));
  ix.insert(x(0, 4096, 2));
  t.deepEqual(dump(ix), [x(0, 4096, 2), x(8192, 4096, 1)]);
  ix.insert(x(8192, 4096, 3, 77, ExtentFlag.CLEAN, 9));
  t.deepEqual(dump(ix), [x(0, 4096, 2), x(8192, 4096, 3, 77, ExtentFlag.CLEAN, 9)]);
  t.is(ix.count, 2);
});

test('lookup yields hits clipped with segOff adjusted and gaps in order', (t) => {
  const ix = mk();
  ix.insert(x(4096, 8192, 1, 0));
  ix.insert(x(16384, 4096, 2, 0));
  const got: unknown[] = [];
  ix.lookup(6144, 16384, (off, len, e) => got.push(e ? [off, len, e.seg, e.segOff] : [off, len]));
  t.deepEqual(got, [[6144, 6144, 1, 2048], [12288, 4096], [16384, 4096, 2, 0], [20480, 2048]]);
});

test('a write racing a read miss wins over the fill', (t) => {
  const ix = mk();
  ix.insert(x(8192, 4096, 1));
  const tok = ix.insertPlaceholder(0, 16384); // gaps [0,8192) and [12288,16384)
  t.deepEqual(dump(ix).map((e) => [e.off, e.len, e.flags]), [[0, 8192, E], [8192, 4096, D], [12288, 4096, E]]);
  ix.insert(x(4096, 2048, 5)); // racing write lands inside the first placeholder
  const filled = ix.replacePlaceholder(tok, x(0, 16384, 9, 0, ExtentFlag.CLEAN, 3));
  t.is(filled, 4096 + 4096);
  t.deepEqual(dump(ix), [x(0, 4096, 9, 0, ExtentFlag.CLEAN, 3), x(4096, 2048, 5), x(8192, 4096, 1), x(12288, 4096, 9, 12288, ExtentFlag.CLEAN, 3)]);
  // A second fill with the same token finds nothing left to fill.
  t.is(ix.replacePlaceholder(tok, x(0, 16384, 10, 0, ExtentFlag.CLEAN, 3)), 0);
  // Another read's placeholder is not taken by this token.
  const tok2 = ix.insertPlaceholder(6144, 2048);
  t.is(ix.replacePlaceholder(tok, x(6144, 2048, 11, 0, ExtentFlag.CLEAN, 3)), 0);
  t.is(ix.replacePlaceholder(tok2, x(6144, 2048, 11, 0, ExtentFlag.CLEAN, 3)), 2048);
});

test('remove and removeIf', (t) => {
  const ix = mk(64 * MiB, 1, 2);
  ix.insert(x(SUB, 16384, 1, 0, D, 1));
  ix.insert(x(3 * SUB + 4096, 4096, 2, 0, D, 2));
  ix.remove(SUB + 4096, 4096);
  t.deepEqual(dump(ix, 1), [x(SUB, 4096, 1, 0, D, 1), x(SUB + 8192, 8192, 1, 8192, D, 1)]);
  t.is(ix.removeIf((e) => e.gen === 1), 2);
  t.deepEqual(dump(ix, 1), []);
  t.deepEqual(dump(ix, 3), [x(3 * SUB + 4096, 4096, 2, 0, D, 2)]);
  t.deepEqual([...ix.subtrees()].slice(0, 3), [1, 3, 5]);
  t.throws(() => ix.insert(x(0, 4096, 1)), { instanceOf: RangeError, message: /stripe 0/ });
  t.throws(() => ix.insert(x(SUB - 4096, 8192, 1)), { instanceOf: RangeError });
});

test('attach from a second handle sees the same contents; reader handles cannot write', (t) => {
  const ix = mk();
  for (let i = 0; i < 500; i++) ix.insert(x(((i * 37) % 1024) * 4096, 4096, i, i * 4096));
  const r = ExtentIndex.attach(ix.sabs);
  t.deepEqual(r.snapshotSubtree(0), ix.snapshotSubtree(0));
  t.is(r.count, ix.count);
  t.is(r.bytesUsed, ix.bytesUsed);
  t.throws(() => r.insert(x(0, 4096, 1)), { instanceOf: IndexStateError });
  const w2 = ExtentIndex.attach(ix.sabs, 'writer'); // respawned owner continues where the old one stopped
  w2.insert(x(0, SUB, 99));
  t.deepEqual(ix.snapshotSubtree(0), [x(0, SUB, 99)]);
  t.is(ix.pagesFree, w2.pagesFree);
});

test('attach as writer refuses a subtree left mid-mutation', (t) => {
  const ix = mk();
  ix.insert(x(0, 4096, 1));
  new Int32Array(ix.sabs.meta)[32] |= 1; // seqlock word of slot 0, as a dead writer leaves it
  t.throws(() => ExtentIndex.attach(ix.sabs, 'writer'), { instanceOf: IndexStateError, message: /rebuild/ });
  t.notThrows(() => ExtentIndex.attach(ix.sabs, 'reader'));
});

test('capacity exhaustion is a clear error and leaves the index intact', (t) => {
  const ix = mk(64 * MiB, 0, 1, 4 * 648);
  let n = 0;
  const err = t.throws(() => { for (;; n++) ix.insert(x(n * 8192, 4096, n)); }, { instanceOf: IndexFullError });
  t.is((err as IndexFullError).code, 'EINDEXFULL');
  t.regex(err!.message, /index full/);
  t.is(ix.count, n);
  const got = dump(ix);
  t.is(got.length, n);
  t.true(got.every((e, i) => e.off === i * 8192 && e.seg === i));
  // Mutations keep two pages of headroom so they never fail half-way: at the limit even an
  // overwrite is refused up front, cleanly; GC then frees pages for new inserts.
  t.throws(() => ix.insert(x(0, 4096, 500)), { instanceOf: IndexFullError });
  t.is(ix.removeIf((e) => e.seg < 40), 40);
  t.notThrows(() => ix.insert(x(n * 8192, 4096, n)));
});

// ---- model test ----

type Cell = { seg: number; so: number; gen: number; flags: number } | { piece: number; token: number } | null;
const W = 3000; // window at the start of each owned subtree, byte-granular

class Model {
  cells = [new Array<Cell>(W).fill(null), new Array<Cell>(W).fill(null)];
  nextPiece = 1;
  /** Placeholder covering [s,e) strictly on both sides loses its tail from e (never split). */
  private cutCovering(c: Cell[], s: number, e: number): void {
    const l = s > 0 ? c[s - 1] : null, r = e < W ? c[e] : null;
    if (l && r && 'piece' in l && 'piece' in r && l.piece === r.piece) {
      for (let i = e; i < W && c[i] && 'piece' in c[i]! && (c[i] as { piece: number }).piece === l.piece; i++) c[i] = null;
    }
  }
  insert(k: number, s: number, e: number, v: (b: number) => Cell): void {
    const c = this.cells[k];
    this.cutCovering(c, s, e);
    for (let b = s; b < e; b++) c[b] = v(b);
  }
  placeholder(k: number, s: number, e: number, token: number): void {
    const c = this.cells[k];
    for (let b = s; b < e;) {
      if (c[b]) { b++; continue; }
      const piece = this.nextPiece++;
      while (b < e && !c[b]) c[b++] = { piece, token };
    }
  }
  fill(k: number, s: number, e: number, token: number, v: (b: number) => Cell): void {
    const c = this.cells[k];
    for (let b = s; b < e;) {
      const cb = c[b];
      if (!cb || !('piece' in cb) || cb.token !== token) { b++; continue; }
      let a = b; while (a > 0 && c[a - 1] && 'piece' in c[a - 1]! && (c[a - 1] as { piece: number }).piece === cb.piece) a--;
      let z = b; while (z < W && c[z] && 'piece' in c[z]! && (c[z] as { piece: number }).piece === cb.piece) z++;
      const ze = Math.min(z, e);
      if (a >= s && z <= e) for (let i = b; i < z; i++) c[i] = v(i);
      else this.insert(k, b, ze, v);
      b = ze;
    }
  }
}

test('model: random insert/remove/placeholder/fill/removeIf match a byte map', (t) => {
  const op = fc.record({
    kind: fc.constantFrom('ins', 'ins', 'ins', 'rm', 'ph', 'fill', 'gc'),
    k: fc.integer({ min: 0, max: 1 }),
    s: fc.integer({ min: 0, max: W - 1 }),
    len: fc.integer({ min: 1, max: 400 }),
    seg: fc.integer({ min: 0, max: 0xffffffff }),
    so: fc.integer({ min: 0, max: 1 << 30 }),
    gen: fc.integer({ min: 0, max: 3 }),
    pick: fc.nat(),
    sub: fc.boolean(),
  });
  fc.assert(fc.property(fc.array(op, { minLength: 20, maxLength: 150 }), (ops) => {
    // Stripe 1 of 2 owns subtrees 1 and 3: exercises slot mapping too.
    const ix = mk(16 * MiB, 1, 2, 8 * MiB);
    const base = [SUB, 3 * SUB];
    const m = new Model();
    const tokens: { k: number; s: number; e: number; token: number }[] = [];
    for (const o of ops) {
      const s = o.s, e = Math.min(W, s + o.len), off = base[o.k] + s;
      const v = (b: number): Cell => ({ seg: o.seg, so: (o.so + b - s) >>> 0, gen: o.gen, flags: D });
      if (o.kind === 'ins') { ix.insert(x(off, e - s, o.seg, o.so, D, o.gen)); m.insert(o.k, s, e, v); }
      else if (o.kind === 'rm') { ix.remove(off, e - s); m.insert(o.k, s, e, () => null); }
      else if (o.kind === 'ph') { const token = ix.insertPlaceholder(off, e - s); m.placeholder(o.k, s, e, token); tokens.push({ k: o.k, s, e, token }); }
      else if (o.kind === 'fill' && tokens.length) {
        const p = tokens[o.pick % tokens.length];
        // Sometimes fill only a sub-range, so placeholders stick out of the fill.
        const fs = o.sub ? p.s + ((p.e - p.s) >> 2) : p.s, fe = o.sub ? p.e - ((p.e - p.s) >> 2) : p.e;
        if (fe <= fs) continue;
        const fv = (b: number): Cell => ({ seg: o.seg, so: (o.so + b - fs) >>> 0, gen: o.gen, flags: ExtentFlag.CLEAN });
        ix.replacePlaceholder(p.token, x(base[p.k] + fs, fe - fs, o.seg, o.so, ExtentFlag.CLEAN, o.gen));
        m.fill(p.k, fs, fe, p.token, fv);
      } else if (o.kind === 'gc') {
        ix.removeIf((ex) => !(ex.flags & E) && ex.gen === o.gen);
        for (const c of m.cells) for (let b = 0; b < W; b++) { const cb = c[b]; if (cb && 'gen' in cb && cb.gen === o.gen) c[b] = null; }
      }
    }
    const reader = ExtentIndex.attach(ix.sabs);
    let data = 0;
    for (let k = 0; k < 2; k++) {
      const got = new Array<Cell>(W).fill(null);
      let pos = base[k];
      for (const h of [ix, reader]) {
        pos = base[k];
        h.lookup(base[k], W, (poff, plen, pe) => {
          if (poff !== pos) throw new Error(`piece out of order at ${poff}, expected ${pos}`);
          pos += plen;
          for (let b = poff - base[k]; b < poff - base[k] + plen; b++) {
            got[b] = pe === null ? null : pe.flags & E ? { piece: 0, token: pe.seg } : { seg: pe.seg, so: (pe.segOff + b - (poff - base[k])) >>> 0, gen: pe.gen, flags: pe.flags };
          }
        });
        if (pos !== base[k] + W) return false;
        for (let b = 0; b < W; b++) {
          const a = got[b], want = m.cells[k][b];
          const norm = (c: Cell): Cell => (c && 'piece' in c ? { piece: 0, token: c.token } : c);
          if (JSON.stringify(a) !== JSON.stringify(norm(want))) return false;
        }
      }
      for (const c of m.cells[k]) if (c && 'gen' in c) data++;
    }
    if (ix.cachedBytes !== data) return false;
    return true;
  }), { seed: 0x5eed, numRuns: 500 });
  t.pass();
});

test('tryLookup (a foreign reader that never waits): null while the subtree is mid-edit or a respawned owner rebuilds, the pieces otherwise', (t) => {
  const owner = mk(64 * MiB);
  owner.insert({ off: 4096, len: 8192, seg: 3, segOff: 0, gen: 1, flags: ExtentFlag.DIRTY });
  const reader = ExtentIndex.attach(owner.sabs, 'reader');
  const got = reader.tryLookup(0, 16384)!;
  t.deepEqual(got.map((p) => [p.off, p.len, p.flags]), [[0, 4096, -1], [4096, 8192, ExtentFlag.DIRTY], [12288, 4096, -1]]);
  // An owner that died mid-edit left subtree 0's seqlock odd.
  const meta = new Int32Array(owner.sabs.meta);
  const seq = META_HDR_WORDS + 0 * SUB_WORDS + S_SEQ;
  Atomics.add(meta, seq, 1);
  t.is(reader.tryLookup(0, 16384), null, 'mid-edit: gives up at once');
  t.not(reader.tryLookup(SUB, 4096), null, 'other subtrees still answer');
  // Its successor empties that subtree and rebuilds it: until it says so, no reader trusts any subtree.
  const { index: successor, emptied } = ExtentIndex.attachRepairing(owner.sabs);
  t.deepEqual(emptied, [0]);
  t.is(reader.tryLookup(0, 16384), null, 'being rebuilt');
  t.is(reader.tryLookup(SUB, 4096), null, 'being rebuilt: another subtree may hold older data than the log says');
  successor.insert({ off: 4096, len: 8192, seg: 3, segOff: 0, gen: 1, flags: ExtentFlag.DIRTY });
  successor.repaired();
  t.deepEqual(reader.tryLookup(0, 16384)!.map((p) => [p.off, p.len, p.flags]), [[0, 4096, -1], [4096, 8192, ExtentFlag.DIRTY], [12288, 4096, -1]]);
});
