// The engine's crash-consistency property, in-process over the simulated device (see
// test/helpers/sim-cache.ts): random write/trim/zero/read/flush/FUA/background sequences with
// power cuts between and inside operations; after every cut the whole volume must hold only
// versions the model allows (every flushed write there, nothing torn or never written), and a
// final drain must leave the origin equal to the volume.

import test from 'ava';
import { simRun, type SimOptions } from './helpers/sim-cache.js';

const BASE: SimOptions = { originSize: 8 << 20, segmentSize: 64 << 10, segments: 24, stripes: 2, dataCrc: false, gcPercent: 50 };

const variants: [string, Partial<SimOptions>][] = [
  ['two stripes', {}],
  ['one stripe, gc 0', { stripes: 1, gcPercent: 0 }],
  ['three stripes, gc 90, tiny cache', { stripes: 3, gcPercent: 90, segments: 12, originSize: 12 << 20 }],
  ['dataCrc', { dataCrc: true }],
  ['modes switched online', { modes: true }],
  ['modes switched online, one stripe, gc 0', { modes: true, stripes: 1, gcPercent: 0 }],
];

let totalCrashes = 0;
const SEEDS_PER_VARIANT = 6;

for (const [name, v] of variants) {
  test(`crash property: ${name}`, async (t) => {
    const opts = { ...BASE, ...v };
    let crashes = 0;
    for (let i = 0; i < SEEDS_PER_VARIANT; i++) {
      const seed = (0x5eed0000 + name.length * 1000 + i) >>> 0;
      const r = await simRun(seed, opts, 300, 8);
      crashes += r.crashes;
    }
    totalCrashes += crashes;
    t.log(`${crashes} simulated crashes`);
    t.true(crashes > 200);
  });
}

test.after('at least 1000 simulated crashes in all', () => {
  // ava's after hooks cannot assert; a shortfall fails the run loudly instead.
  if (totalCrashes < 1000) throw new Error(`only ${totalCrashes} simulated crashes; the bar is 1000`);
  console.log(`# total simulated crashes: ${totalCrashes}`);
});
