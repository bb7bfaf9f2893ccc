// Read hits served on the coordinator's thread (src/coordinator/hit-reader.ts), through the real
// daemon (page-cache hits read at once, direct-I/O hits through the coordinator's own ring):
// they are counted as hits and their data is right; with PCACHED_COORDINATOR_HITS=off
// the stripes serve the same reads; a read that follows an acknowledged write never returns an
// older version, while GC frees and reuses segments under the reads; after `detach` nothing is
// served from the released cache (a write to the origin is read back, not the cached copy).

import test from 'ava';
import { join } from 'node:path';
import { makeSparseFile } from './helpers/daemon.js';
import { pcachedCli, startServing, statusJson, waitFor } from './helpers/lifecycle.js';
import { NbdTestClient } from './helpers/nbd-test-client.js';
import { removeScratchDirs, scratchDir } from './helpers/scratch.js';
import { readStamp, stampBlock, STAMP_BLOCK } from './helpers/stamps.js';

const MiB = 1 << 20;
const NAME = 'vol';

test.after.always(() => removeScratchDirs());

interface Rig { dir: string; origin: string; sock: string; control: string; args: string[] }

function rig(cacheSize: string, originBytes: number): Rig {
  const dir = scratchDir('pcached-hits-');
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, originBytes);
  const sock = join(dir, 'nbd.sock'), control = join(dir, 'control.sock');
  return {
    dir, origin, sock, control,
    args: ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', cacheSize, '--segment-size', '1M', '--unix', sock, '--tcp', '',
      '--name', NAME, '--control', control, '--stripes', '2', '--log-level', 'warn'],
  };
}

interface Counts { inline: number; hits: number; blocks: number; freed: number }

async function counts(control: string): Promise<Counts> {
  const c = (await statusJson(control)).caches[0]! as unknown as {
    stats: Record<string, number>; cacheState: { readHits: number; readBlocks: number; workers: Record<string, number> };
  };
  const st = c.stats;
  return { inline: st.read_hits_inline ?? 0, hits: c.cacheState.readHits, blocks: c.cacheState.readBlocks, freed: c.cacheState.workers.gc_segments_freed ?? 0 };
}

async function writeBlocks(c: NbdTestClient, from: number, n: number, version: number): Promise<void> {
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => c.write((from + i) * STAMP_BLOCK, stampBlock(from + i, version))));
  if (rs.some((e) => e !== 0)) throw new Error(`writes failed: ${rs.filter((e) => e !== 0).join(',')}`);
}

async function readVersions(c: NbdTestClient, from: number, n: number): Promise<number[]> {
  const rs = await Promise.all(Array.from({ length: n }, (_, i) => c.read((from + i) * STAMP_BLOCK, STAMP_BLOCK)));
  return rs.map((r, i) => {
    if (r.errno !== 0) return -r.errno;
    const s = readStamp(r.data!, from + i);
    return 'version' in s ? s.version : -1000;
  });
}

for (const [mode, direct] of [['on', 'off'], ['off', 'off'], ['on', 'on'], ['off', 'on']] as const) {
  test(`read hits with coordinator hits ${mode}, cacheDirectIo=${direct}: data right, counted as hits${mode === 'on' ? ', answered without a stripe' : ', all by the stripes'}`, async (t) => {
    const r = rig('64M', 64 * MiB);
    const env: Record<string, string> = { PCACHED_CACHE_DIRECT_IO: direct, ...(mode === 'off' ? { PCACHED_COORDINATOR_HITS: 'off' } : {}) };
    await startServing(t, r.args, { cwd: r.dir, sock: r.sock, control: r.control, env });
    const c = await NbdTestClient.connect(r.sock, NAME);
    await writeBlocks(c, 0, 512, 7);
    const before = await counts(r.control);
    // 32 at a time, as a client at QD32 (the direct path keeps at most 64 in flight).
    const versions: number[] = [];
    for (let b = 0; b < 512; b += 32) versions.push(...await readVersions(c, b, 32));
    t.deepEqual(versions, Array.from({ length: 512 }, () => 7));
    // Counters are published once per turn: wait for them.
    const after = await waitFor('the hits counted', async () => { const a = await counts(r.control); return a.hits - before.hits >= 512 ? a : undefined; }, 10_000);
    t.is(after.blocks - before.blocks, 512);
    if (mode === 'on') t.true(after.inline - before.inline >= 500, `${after.inline - before.inline} of 512 hits answered inline`);
    else t.is(after.inline, 0);
    await c.disconnect();
  });
}

for (const direct of ['off', 'on'] as const) test(`cacheDirectIo=${direct}: a read after an acknowledged write never sees an older version, while GC reuses segments under the inline hits`, async (t) => {
  t.timeout(240_000);
  // 16 MiB of cache under 40 MiB of overwritten blocks: writeback and GC free segments all along.
  const r = rig('16M', 64 * MiB);
  await startServing(t, r.args, { cwd: r.dir, sock: r.sock, control: r.control, env: { PCACHED_CACHE_DIRECT_IO: direct } });
  const c = await NbdTestClient.connect(r.sock, NAME);
  const BLOCKS = (40 * MiB) / STAMP_BLOCK;
  const LANES = 16;
  const latest = new Int32Array(BLOCKS);
  const problems: string[] = [];
  let rounds = 0;
  const start = await counts(r.control);
  // Each lane owns the blocks ≡ lane (mod LANES): none of its reads races a write of its own, so
  // every read must return exactly the last acknowledged version.
  const lane = async (l: number, until: number): Promise<void> => {
    let x = l * 2654435761 >>> 0;
    while (Date.now() < until && problems.length < 5) {
      x = (x * 1103515245 + 12345) >>> 0;
      const b = ((x >>> 4) % (BLOCKS / LANES)) * LANES + l;
      const v = latest[b]! + 1;
      const e = await c.write(b * STAMP_BLOCK, stampBlock(b, v));
      if (e !== 0) { problems.push(`write of block ${b} failed: ${e}`); return; }
      latest[b] = v;
      // The block just written, and an older one of this lane's (often a hit, maybe from a reused segment).
      const older = ((x >>> 12) % (BLOCKS / LANES)) * LANES + l;
      for (const blk of [b, older]) {
        if (latest[blk] === 0) continue;
        const got = (await readVersions(c, blk, 1))[0]!;
        if (got !== latest[blk]) problems.push(`block ${blk}: read v${got} after v${latest[blk]} was acknowledged`);
      }
      rounds++;
    }
  };
  const until = Date.now() + 25_000;
  await Promise.all(Array.from({ length: LANES }, (_, l) => lane(l, until)));
  const end = await waitFor('counters published', async () => { const a = await counts(r.control); return a.inline > start.inline ? a : undefined; }, 10_000);
  t.deepEqual(problems, []);
  t.log(`${rounds} write+read rounds; ${end.inline - start.inline} hits answered inline; ${end.freed - start.freed} segments freed by GC`);
  t.true(end.inline - start.inline > 1000, 'the inline path served many of the reads');
  t.true(end.freed - start.freed > 0, 'GC freed segments while the hits were served');
  await c.disconnect();
});

test('after detach, a write to a range the cache held is read back from the origin, not the released cache', async (t) => {
  t.timeout(180_000);
  const r = rig('64M', 64 * MiB);
  await startServing(t, r.args, { cwd: r.dir, sock: r.sock, control: r.control });
  let c = await NbdTestClient.connect(r.sock, NAME);
  await writeBlocks(c, 0, 256, 1);
  t.deepEqual(await readVersions(c, 0, 256), Array.from({ length: 256 }, () => 1));
  const d = await pcachedCli(['detach', NAME, '--control', r.control, '--interval', '100'], { timeoutMs: 120_000 });
  t.is(d.code, 0, d.stderr);
  c.destroy();
  c = await NbdTestClient.connect(r.sock, NAME);
  await writeBlocks(c, 0, 256, 2);
  t.deepEqual(await readVersions(c, 0, 256), Array.from({ length: 256 }, () => 2));
  await c.disconnect();
});

test('passthrough mode: reads of ranges the cache holds nothing of come from the origin file inline, and see every acknowledged write', async (t) => {
  t.timeout(180_000);
  const r = rig('64M', 64 * MiB);
  await startServing(t, [...r.args, '--mode', 'passthrough'], { cwd: r.dir, sock: r.sock, control: r.control });
  const c = await NbdTestClient.connect(r.sock, NAME);
  const before = await counts(r.control);
  const problems: string[] = [];
  for (let v = 1; v <= 20; v++) {
    await writeBlocks(c, v * 64, 64, v);
    const got = await readVersions(c, 0, 21 * 64);
    for (let b = 0; b < got.length; b++) {
      const want = Math.floor(b / 64) >= 1 && Math.floor(b / 64) <= v ? Math.floor(b / 64) : 0;
      // Never-written blocks read as zeros (readStamp: version 0).
      if (got[b] !== want) problems.push(`after v${v}: block ${b} read v${got[b]}, want v${want}`);
    }
  }
  t.deepEqual(problems.slice(0, 5), []);
  const after = await waitFor('counters published', async () => { const a = await counts(r.control); return a.inline - before.inline >= 20 * 21 * 64 * 0.9 ? a : undefined; }, 10_000);
  t.is(after.hits - before.hits, 0, 'nothing is promoted or served from the cache in passthrough mode');
  t.true(after.blocks - before.blocks >= 20 * 21 * 64);
  await c.disconnect();
});
