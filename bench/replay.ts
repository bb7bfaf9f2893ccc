// Replay speed: a cache file whose key log holds N keys (4 KiB extents at random origin offsets,
// 128 per kset), then the time openCache takes to verify the log and rebuild the index.
// Usage: node dist/bench/replay.js [keys=1000000] [stripes=1]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { openCache } from '../src/cache/replay.js';
import { appendKsets } from '../src/cache/log.js';
import { KEY_DIRTY } from '../src/cache/kset.js';
import type { CacheKey } from '../src/cache/kset.js';
import { KSET_MAX_KEYS } from '../src/cache/layout.js';

const N = Number(process.argv[2] ?? 1_000_000);
const stripes = Number(process.argv[3] ?? 1);
const SEG = 16 << 20;
const perSeg = (SEG - 4096) / 4096;
const logSegs = Math.ceil((N / KSET_MAX_KEYS) * 5632 / (SEG - 4096)) + 2;
const dataSegs = Math.ceil(N / perSeg);
const deviceSize = (1 << 20) + (logSegs + dataSegs + 4) * SEG;
const originSize = 64 * 2 ** 30;
const dir = mkdtempSync(join(tmpdir(), 'pcached-replay-'));
const path = join(dir, 'cache.img');
try {
  let dev = FileBlockDevice.open(path, { createSize: deviceSize });
  const built = openCache(dev, { originSize, dataCrc: false, stripes, format: false, segmentSize: SEG });
  const sh = built.shared;
  // Data segments are claimed so the log allocator keeps to the others.
  const data: number[] = [];
  for (let i = 0; i < dataSegs; i++) data.push(sh.allocSegment(1));
  let seed = 0x2545f491;
  const rnd = (): number => { seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5; return (seed >>> 0) / 2 ** 32; };
  const t0 = performance.now();
  let batch: CacheKey[][] = [];
  for (let i = 0; i < N; i += KSET_MAX_KEYS) {
    const keys: CacheKey[] = [];
    for (let j = i; j < Math.min(N, i + KSET_MAX_KEYS); j++) {
      const seg = data[Math.floor(j / perSeg)]!;
      keys.push({ originOffset: Math.floor(rnd() * (originSize / 4096)) * 4096, length: 4096, flags: KEY_DIRTY, segment: seg, offset: (j % perSeg) * 4096, generation: 0, dataCrc: 0 });
    }
    batch.push(keys);
    if (batch.length === 64) { appendKsets(dev, sh, built.geometry, batch, 1); batch = []; }
  }
  if (batch.length) appendKsets(dev, sh, built.geometry, batch, 1);
  dev.sync();
  dev.close();
  const buildMs = performance.now() - t0;
  dev = FileBlockDevice.open(path);
  const r = openCache(dev, { originSize, dataCrc: false, stripes, format: false });
  dev.close();
  const s = r.report.ms / 1000;
  console.log(JSON.stringify({ keys: r.report.keys, ksets: r.report.ksets, stop: r.report.stop, replayMs: Math.round(r.report.ms), buildMs: Math.round(buildMs), stripes }));
  console.log(`${(s / (r.report.keys / 1e6)).toFixed(3)} s per million keys`);
  if (r.report.keys !== N) { console.error(`replayed ${r.report.keys} keys, wrote ${N}`); process.exitCode = 1; }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
