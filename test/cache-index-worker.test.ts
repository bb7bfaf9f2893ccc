import test, { type ExecutionContext } from 'ava';
import { Worker } from 'node:worker_threads';
import { ExtentFlag, ExtentIndex } from '../src/cache/index/extent-index.js';
import { META_HDR_WORDS, SUB_WORDS, S_SEQ } from '../src/cache/index/layout.js';

const SUB = 4 << 20;

// The reader runs in a real worker thread over the same SABs while this thread mutates them. Every
// extent the writer inserts has segOff == its offset inside the subtree; cuts keep that true, so
// a reader seeing anything else, or overlapping / unordered extents, saw a torn subtree.
const readerSource = `
const { parentPort, workerData } = require('node:worker_threads');
(async () => {
  const { ExtentIndex } = await import(workerData.url);
  const ix = ExtentIndex.attach(workerData.sabs);
  const stop = new Int32Array(workerData.stop);
  let snaps = 0, extents = 0, bad = 0, lookups = 0, firstBad = null;
  while (Atomics.load(stop, 0) === 0) {
    for (const sub of [0, 2]) {
      const base = sub * ${SUB};
      let end = base;
      for (const e of ix.snapshotSubtree(sub)) {
        if (e.off < end || e.len <= 0 || e.off + e.len > base + ${SUB} || e.segOff !== e.off - base) { bad++; firstBad ??= e; }
        end = e.off + e.len; extents++;
      }
      snaps++;
      // From the head (bucket 0) and from every later bucket's hinted page (layout.ts, S_HINTS).
      for (let j = 0; j < 8; j++) {
        const from = base + j * 524288 + 1000 + ((snaps * 4096) % 300000);
        let pos = from;
        ix.lookup(from, 200000, (off, len, e) => {
          if (off !== pos || (e && e.segOff !== off - base)) { bad++; firstBad ??= { off, len, e }; }
          pos = off + len;
        });
        if (pos !== from + 200000) bad++;
        const r = ix.tryLookup(from, 4096);
        if (r) {
          let at = from;
          for (const e of r) {
            if (e.off !== at || (e.flags !== -1 && e.segOff !== e.off - base)) { bad++; firstBad ??= e; }
            at = e.off + e.len;
          }
          if (at !== from + 4096) bad++;
        }
        lookups++;
      }
    }
  }
  parentPort.postMessage({ snaps, extents, bad, lookups, firstBad });
})();
`;

type Rnd = (n: number) => number;

/** Mutate subtrees 0 and 2 with `step` for 1.5 s while a worker reads them; the reader must see no tear. */
async function readerRace(t: ExecutionContext, minSnaps: number, step: (ix: ExtentIndex, rnd: Rnd) => void): Promise<void> {
  const ix = ExtentIndex.create({ originBytes: 16 * SUB, stripe: 0, stripes: 2, maxBytes: 16 << 20 });
  const stop = new SharedArrayBuffer(4);
  const url = new URL('../src/cache/index/extent-index.js', import.meta.url).href;
  const w = new Worker(readerSource, { eval: true, workerData: { sabs: ix.sabs, stop, url } });
  const done = new Promise<{ snaps: number; extents: number; bad: number; lookups: number; firstBad: unknown }>((res, rej) => {
    w.once('message', res); w.once('error', rej);
  });
  let seed = 12345;
  // The high bits: an LCG modulo 2^32 repeats its low bits with short periods.
  const rnd: Rnd = (n) => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return (seed >>> 8) % n; };
  const t0 = Date.now();
  let ops = 0;
  while (Date.now() - t0 < 1500) {
    for (let i = 0; i < 20; i++, ops++) step(ix, rnd);
    await new Promise((r) => setImmediate(r)); // let the worker start and the clock move
  }
  Atomics.store(new Int32Array(stop), 0, 1);
  const meta = new Int32Array(ix.sabs.meta);
  for (let slot = 0; slot < 8; slot++) t.is(meta[META_HDR_WORDS + slot * SUB_WORDS + S_SEQ]! % 2, 0, `slot ${slot} left odd`);
  const res = await done;
  await w.terminate();
  t.log(`writer ops ${ops}, reader snapshots ${res.snaps}, extents seen ${res.extents}, lookups ${res.lookups}, index ${ix.count} extents in ${ix.bytesUsed} bytes`);
  t.is(res.bad, 0, JSON.stringify(res.firstBad));
  t.true(res.snaps > minSnaps, `${res.snaps} snapshots`);
  t.true(res.extents > 1000);
}

test('a reader in another thread never sees a torn subtree (seqlock)', (t) => readerRace(t, 100, (ix, rnd) => {
  const base = rnd(2) * 2 * SUB;
  const s = rnd(256) * 1024, len = 1 + rnd(64 * 1024);
  const e = Math.min(SUB, s + len);
  const r = rnd(10);
  if (r < 7) ix.insert({ off: base + s, len: e - s, seg: rnd(100), segOff: s, gen: 1, flags: ExtentFlag.DIRTY });
  else if (r < 9) ix.remove(base + s, e - s);
  else ix.removeIf((x) => x.seg === 7);
}));

// 4 KiB extents keep about a thousand records (some thirty pages) per subtree, so inserts spread
// records over neighbouring pages and split windows, and trims and sweeps pack them, while the
// reader walks the chain (fewer snapshots: each copies a thousand extents).
test('a reader never sees a torn subtree while pages spread, split and pack', (t) => readerRace(t, 20, (ix, rnd) => {
  const base = rnd(2) * 2 * SUB;
  const s = rnd(1024) * 4096;
  const r = rnd(100);
  if (r < 95) ix.insert({ off: base + s, len: 4096, seg: rnd(100), segOff: s, gen: 1, flags: ExtentFlag.DIRTY });
  else if (r < 99) ix.remove(base + s, Math.min(SUB - s, 4096 * (1 + rnd(8))));
  else ix.removeIf((x) => x.seg === 7);
}));
