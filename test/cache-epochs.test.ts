// Epoch-ordered writeback through the real daemon: if the cache is lost at any moment, the origin
// holds every epoch (the writes between two FLUSHes) up to some point, part of the next one, and
// nothing later; no block is torn.
//
// Each round: 12 epochs of stamped 4 KiB writes over a small pool of blocks (many overwrites
// across epochs, each ended by a FLUSH) with writeback held back; then writeback is let go and the
// whole daemon is SIGKILLed after a delay; the cache file is thrown away and the origin file is
// checked block by block. Writeback is paced (writeback.rate 8 MiB/s: about 2.5 s for the 19 MB)
// so the cuts, fractions of the drain time measured in a first round that runs to the end (and
// must leave the last epoch on the origin), land between epochs and inside them.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nbdUri, makeSparseFile } from './helpers/daemon.js';
import { startServing, pcachedCli, statusJson, waitFor, killPid, pidRunning, sleep, type RunningDaemon } from './helpers/lifecycle.js';
import { describe, needTools, nbdshJson, skipSuffix } from './helpers/tools.js';

const BLK = 4096;
const POOL = 2048; // 8 MiB: two stripes' subtrees
const EPOCHS = 12;
const PER_EPOCH = 400;
const NAME = 'vol';

/** Which blocks each epoch writes (distinct within an epoch), from a fixed seed. */
function plan(seed: number): number[][] {
  let x = seed >>> 0;
  const rnd = (): number => {
    x = (x * 1664525 + 1013904223) >>> 0;
    return x / 2 ** 32;
  };
  return Array.from({ length: EPOCHS }, () => {
    const s = new Set<number>();
    // Hot blocks: half of each epoch lands in the first eighth of the pool.
    while (s.size < PER_EPOCH) s.add(rnd() < 0.5 ? Math.floor(rnd() * (POOL / 8)) : Math.floor(rnd() * POOL));
    return [...s];
  });
}

function stamp(epoch: number, block: number): Buffer {
  const b = Buffer.alloc(BLK);
  for (let i = 0; i < BLK; i += 16) {
    b.write('EPCH', i, 'latin1');
    b.writeUInt32LE(epoch, i + 4);
    b.writeUInt32LE(block, i + 8);
    b.writeUInt32LE((epoch * 2654435761 + block * 40503 + i) >>> 0, i + 12);
  }
  return b;
}

const PY_STAMP = `
import struct, json
def stamp(e, b):
    out = bytearray(${BLK})
    for i in range(0, ${BLK}, 16):
        out[i:i+16] = b'EPCH' + struct.pack('<III', e, b, (e * 2654435761 + b * 40503 + i) & 0xffffffff)
    return bytes(out)
`;

/** Epoch of the stamp a block holds (0: never written), or a description of what is wrong. */
function epochOf(block: Buffer, b: number): number | string {
  if (block.every((x) => x === 0)) return 0;
  if (block.toString('latin1', 0, 4) !== 'EPCH') return 'not a stamp';
  const e = block.readUInt32LE(4);
  if (block.readUInt32LE(8) !== b) return `stamp of block ${block.readUInt32LE(8)}`;
  if (e < 1 || e > EPOCHS || !block.equals(stamp(e, b))) return `torn or foreign (epoch field ${e})`;
  return e;
}

/**
 * The origin must be "epochs 1..M-1 whole, part of M, nothing after M", M the newest epoch found.
 * Returns [M, blocks holding epoch M, problems].
 */
function checkPrefix(origin: Buffer, epochs: number[][]): [number, number, string[]] {
  const found: number[] = [];
  const problems: string[] = [];
  for (let b = 0; b < POOL; b++) {
    const e = epochOf(origin.subarray(b * BLK, (b + 1) * BLK), b);
    if (typeof e === 'string') problems.push(`block ${b}: ${e}`);
    found.push(typeof e === 'number' ? e : -1);
  }
  const m = Math.max(0, ...found);
  let inM = 0;
  for (let b = 0; b < POOL; b++) {
    const f = found[b]!;
    if (f < 0) continue;
    let lastBefore = 0;
    for (let e = 1; e < m; e++) if (epochs[e - 1]!.includes(b)) lastBefore = e;
    const inLast = m > 0 && epochs[m - 1]!.includes(b);
    if (f === m && inLast && m > 0) inM++;
    if (f !== lastBefore && !(f === m && inLast)) problems.push(`block ${b} holds epoch ${f}; with epoch ${m} present it must hold ${lastBefore}${inLast ? ` or ${m}` : ''}`);
  }
  return [m, inM, problems];
}

interface Round { dir: string; origin: string; d: RunningDaemon; uri: string }

async function writeEpochs(t: ExecutionContext, seed: number): Promise<Round & { epochs: number[][] }> {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-epochs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 32 << 20);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const d = await startServing(t, ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '64M', '--segment-size', '1M',
    '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', '2', '--log-level', 'warn'],
  { cwd: dir, sock, control, env: { PCACHED_PAUSE_WRITEBACK_MS: '600000', PCACHED_WRITEBACK_RATE: '8M' } });
  const uri = nbdUri(sock, NAME);
  const epochs = plan(seed);
  const planFile = join(dir, 'plan.json');
  writeFileSync(planFile, JSON.stringify(epochs));
  await nbdshJson(`${PY_STAMP}
plan = json.load(open(${JSON.stringify(planFile)}))
for e, blocks in enumerate(plan, start=1):
    for b in blocks:
        h.pwrite(stamp(e, b), b * ${BLK})
    h.flush()
print('"ok"')
`, { uri, timeoutMs: 120_000 });
  const st = (await statusJson(control)).caches[0]!.cacheState!;
  t.true(st.dirtyBlocks >= PER_EPOCH, `held back: ${st.dirtyBlocks} dirty blocks`);
  t.true(readFileSync(origin).subarray(0, POOL * BLK).every((x) => x === 0), 'nothing written back yet');
  return { dir, origin, d, uri, epochs };
}

async function release(r: Round): Promise<void> {
  const m = await pcachedCli(['message', NAME, 'pause_writeback_ms', '0', '--control', r.d.control]);
  if (m.code !== 0) throw new Error(`message failed: ${describe(m)}`);
}

async function killAll(r: Round): Promise<void> {
  killPid(r.d.proc.pid);
  killPid(r.d.coord);
  await waitFor('the daemon to die', () => !pidRunning(r.d.proc.pid) && !pidRunning(r.d.coord), 10_000, 20);
}

const why = needTools('nbdsh', 'python3-nbd');

(why ? test.serial.skip : test.serial)('epoch order: SIGKILL during writeback, cache discarded: the origin holds a prefix of the epochs, never a torn block' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  // A full drain first: measures the drain time and checks the end state.
  const full = await writeEpochs(t, 7);
  await release(full);
  const t0 = Date.now();
  await waitFor('the drain', async () => (await statusJson(full.d.control)).caches[0]!.cacheState!.dirtyBlocks === 0, 60_000, 10);
  const drainMs = Date.now() - t0;
  const wc = (await statusJson(full.d.control)).caches[0]!.cacheState!;
  await killAll(full);
  const [m, , problems] = checkPrefix(readFileSync(full.origin), full.epochs);
  t.deepEqual(problems, []);
  t.is(m, EPOCHS, 'a full drain leaves the last epoch on the origin');
  t.log(`drain of ${EPOCHS} epochs took ${drainMs} ms; writeback: ${JSON.stringify({ epochs: wc.workers.wb_epochs, syncs: wc.workers.wb_origin_syncs, bytes: wc.workers.wb_bytes })}`);

  const cuts: string[] = [];
  let between = 0;
  for (const [i, frac] of [0.1, 0.3, 0.5, 0.7, 0.9].entries()) {
    const r = await writeEpochs(t, 7);
    await release(r);
    await sleep(Math.max(1, Math.round(drainMs * frac)));
    await killAll(r);
    const [mi, inM, probs] = checkPrefix(readFileSync(r.origin), r.epochs);
    t.deepEqual(probs.slice(0, 10), [], `cut ${i} (${frac} of the drain): ${probs.length} problems`);
    cuts.push(`${frac}: epochs 1..${Math.max(0, mi - 1)} whole, ${inM} blocks of epoch ${mi}`);
    if (mi > 1 && mi < EPOCHS) between++;
  }
  t.log(cuts.join('; '));
  // The pacing makes the cuts land mid-drain; were none of them, the check above proved little.
  t.true(between >= 2, `at least two cuts fell between the first and the last epoch: ${cuts.join('; ')}`);
});
