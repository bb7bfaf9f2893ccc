// Ring + stripe worker round trips without NBD: how many 4 KiB origin reads per second the
// data plane sustains at a given queue depth. Isolates hand-off costs from the protocol.
import { StripeSet } from '../src/coordinator/stripes.js';
import { StripeOp } from '../src/ring/layout.js';
import type { StripeWork } from '../src/coordinator/stripe-ring.js';
import { createLogger } from '../src/daemon/logger.js';

const [path = '/tmp/pc/origin.img', qdArg = '32', stripesArg = '2', secsArg = '3'] = process.argv.slice(2);
const qd = Number(qdArg);
const set = await StripeSet.start({
  stripes: Number(stripesArg), capacity: 1024, slabBytes: 32 << 20,
  origin: { kind: 'file', path, readOnly: false }, spinNs: Number(process.env.PCACHED_SPIN_NS ?? 0), pollNs: Number(process.env.PCACHED_POLL_NS ?? 0), pollMaxNs: Number(process.env.PCACHED_POLL_MAX_NS ?? 0), maxSpinners: 1, logLevel: 'warn', log: createLogger({ level: 'warn' }),
});
let done = 0;
const end = Date.now() + Number(secsArg) * 1000;
const lat: number[] = [];
function issue(): void {
  const off = Math.floor(Math.random() * 65536) * 4096;
  const t0 = process.hrtime.bigint();
  const w: StripeWork = { op: StripeOp.READ, flags: 0, offset: off, length: 4096, slabBytes: 4096, payload: null, slabOff: 0, ring: null,
    onDone: (work) => { work.ring!.releaseSlab(work); done++; if (lat.length < 100000) lat.push(Number(process.hrtime.bigint() - t0) / 1000); if (Date.now() < end) issue(); else if (--inflight === 0) finish(); } };
  set.submit(w, Math.floor(off / (4 << 20)) % set.count);
}
let inflight = qd;
const keepAlive = setInterval(() => undefined, 1000);
const t = Date.now();
for (let i = 0; i < qd; i++) issue();
async function finish(): Promise<void> {
  const secs = (Date.now() - t) / 1000;
  lat.sort((a, b) => a - b);
  console.log(`qd${qd} stripes=${set.count}: ${Math.round(done / secs)} ops/s, p50 ${lat[lat.length >> 1]?.toFixed(1)} us, p99 ${lat[Math.floor(lat.length * 0.99)]?.toFixed(1)} us`);
  await set.close();
  clearInterval(keepAlive);
}
