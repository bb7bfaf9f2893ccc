// Index memory and speed: 1 M random 4 KiB extents into one stripe's ExtentIndex.
// Usage: node dist/bench/index-memory.js [extents=1000000] [originGiB=64]
import { ExtentFlag, ExtentIndex } from '../src/cache/index/extent-index.js';

const N = Number(process.argv[2] ?? 1_000_000);
const originGiB = Number(process.argv[3] ?? 64);
const origin = originGiB * 2 ** 30;
const blocks = origin / 4096;

let seed = 0x9e3779b9;
const rnd = (): number => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) / 2 ** 32; };

const ix = ExtentIndex.create({ originBytes: origin, stripe: 0, stripes: 1, maxBytes: 2 ** 30 });
const offs = new Float64Array(N);
for (let i = 0; i < N; i++) offs[i] = Math.floor(rnd() * blocks) * 4096;

let t0 = performance.now();
const e = { off: 0, len: 4096, seg: 0, segOff: 0, gen: 1, flags: ExtentFlag.DIRTY };
for (let i = 0; i < N; i++) { e.off = offs[i]; e.seg = i >>> 12; e.segOff = (i & 4095) * 4096; ix.insert(e); }
const insMs = performance.now() - t0;

let hits = 0;
const cb = (_o: number, _l: number, x: unknown): void => { if (x) hits++; };
t0 = performance.now();
for (let i = 0; i < N; i++) ix.lookup(offs[(i * 7919) % N], 4096, cb);
const lookMs = performance.now() - t0;

const rows = {
  extents: ix.count,
  originGiB,
  extentsPerSubtree: +(ix.count / (origin / 2 ** 22)).toFixed(1),
  bytesUsed: ix.bytesUsed,
  bytesPerExtent: +(ix.bytesUsed / ix.count).toFixed(2),
  bytesGrown: ix.bytesGrown,
  insertsPerSec: Math.round(N / (insMs / 1000)),
  lookupsPerSec: Math.round(N / (lookMs / 1000)),
  lookupHitRate: +(hits / N).toFixed(3),
};
console.log(JSON.stringify(rows));
