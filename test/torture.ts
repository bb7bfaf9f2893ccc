// `npm run torture [-- RUNS [STEPS]]`: the engine's crash property over many more seeds than
// `npm test` runs, in every variant. Prints the seed of any failure so it replays exactly.

import { simRun, type SimOptions } from './helpers/sim-cache.js';

const runs = Number(process.argv[2] ?? 200);
const steps = Number(process.argv[3] ?? 600);
const start = Number(process.env.TORTURE_SEED ?? Date.now() % 1_000_000);
const BASE: SimOptions = { originSize: 12 << 20, segmentSize: 64 << 10, segments: 24, stripes: 2, dataCrc: false, gcPercent: 50 };
const FAULTS = { syncFail: 0.4, writeFail: 0.06, readFail: 0.06 };
const variants: Partial<SimOptions>[] = [{}, { stripes: 1, gcPercent: 0 }, { stripes: 3, gcPercent: 90, segments: 12 }, { dataCrc: true }, { segments: 64, gcPercent: 70 }, { modes: true }, { modes: true, stripes: 1, gcPercent: 0 }, { modes: true, stripes: 3, gcPercent: 90, segments: 12 },
  { faults: FAULTS }, { respawn: 0.1 }, { volatileOrigin: true, originFlushFail: 0.5 }, { corrupt: 0.8, dataCrc: true },
  { modes: true, stripes: 3, respawn: 0.05, faults: FAULTS, volatileOrigin: true, originFlushFail: 0.3, corrupt: 0.4 },
  { stripes: 1, gcPercent: 0, respawn: 0.05, faults: FAULTS, volatileOrigin: true, originFlushFail: 0.3, dataCrc: true, corrupt: 0.4 }];

let crashes = 0;
let faults = 0;
const t0 = Date.now();
for (let i = 0; i < runs; i++) {
  const seed = start + i;
  const v = variants[i % variants.length]!;
  try {
    const r = await simRun(seed, { ...BASE, ...v }, steps, 10);
    crashes += r.crashes;
    faults += r.syncFails + r.writeFails + r.readFails + r.respawns + r.originFlushFails + r.corrupted;
  } catch (err) {
    console.error(`FAILED: seed ${seed} variant ${JSON.stringify(v)}: ${(err as Error).message}`);
    process.exit(1);
  }
  if ((i + 1) % 20 === 0) console.log(`${i + 1}/${runs} runs, ${crashes} simulated power cuts, ${faults} injected faults, ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}
console.log(`ok: ${runs} runs from seed ${start}, ${crashes} simulated power cuts, ${faults} injected faults, no violation`);
