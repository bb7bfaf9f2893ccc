// A file origin on a slow local disk, through the real daemon: a faulty disk (test/helpers/
// faulty-disk.ts) mounted with nbdfuse is the origin file, and its reads are made to take 1.5 s.
// With one stripe, a cache miss in flight at the origin must not hold up the cache hits that
// arrive after it: the file origin issues its I/O through libuv's pool and the stripe keeps
// serving. With the synchronous pread of before, every hit queued behind the miss waited for it
// (so the hits would finish after the miss, not before, and take over a second each).

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeSparseFile } from './helpers/daemon.js';
import { startFaultyDisk } from './helpers/faulty-disk.js';
import { fuseUnavailable, mountNbd } from './helpers/fuse.js';
import { startServing, waitFor } from './helpers/lifecycle.js';
import { NbdTestClient } from './helpers/nbd-test-client.js';
import { removeScratchDirs, scratchDir } from './helpers/scratch.js';
import { skipSuffix } from './helpers/tools.js';

const MiB = 1 << 20;
const NAME = 'vol';
const SLOW_READ_MS = 1500;
/** Generous for a loaded 2-vCPU machine, and still far below what waiting for the miss costs. */
const HIT_BOUND_MS = 600;

test.after.always(() => removeScratchDirs());

const why = fuseUnavailable();

(why ? test.serial.skip : test.serial)('file origin on a slow disk: cache hits are served while a 1.5 s origin read is in flight on the same stripe' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const dir = scratchDir('pcached-slow-origin-');
  const disk = await startFaultyDisk({ dir, size: 32 * MiB, name: 'origindisk', t });
  const mount = await mountNbd({ dir: join(dir, 'mnt'), uri: disk.uri, t });
  const cache = join(dir, 'cache.img');
  makeSparseFile(cache, 64 * MiB);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const daemon = await startServing(t, ['--origin', mount.file, '--cache', cache, '--segment-size', '1M', '--stripes', '1',
    '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--log-level', 'warn'], { cwd: dir, sock, control });
  // libuv's pool, sized by the supervisor: 1 stripe × (originQueueDepth 32 + cacheQueueDepth 32) + writeback.jobs 16 + 4
  // (what the stripes keep in flight when io_uring is not there to take it).
  const env = readFileSync(`/proc/${daemon.coord}/environ`, 'utf8').split('\0');
  t.true(env.includes('UV_THREADPOOL_SIZE=84'), 'the coordinator runs with a pool for its origin I/O');
  const client = await NbdTestClient.connect(sock, NAME);
  t.teardown(() => client.destroy());

  // 1 MiB written in write-back mode: in the cache, so reading it back is a hit.
  const hot = Buffer.alloc(MiB);
  for (let i = 0; i < hot.length; i += 4096) hot.fill(1 + ((i / 4096) % 250), i, i + 4096);
  t.is(await client.write(0, hot), 0);
  t.is(await client.flush(), 0);

  await disk.control(`latency read ${SLOW_READ_MS}`);
  const missStart = performance.now();
  let missMs = -1;
  // Never read or written before: neither the cache nor the FUSE page cache holds it.
  const miss = client.read(16 * MiB, 4096).then((r) => {
    missMs = performance.now() - missStart;
    return r;
  });
  await waitFor('the miss to be in flight at the origin disk', async () => (await disk.stats()).server.inFlight > 0, 5_000, 10);

  const hitMs: number[] = [];
  for (let i = 0; i < 16; i++) {
    const off = i * 64 * 1024;
    const t0 = performance.now();
    const r = await client.read(off, 4096);
    hitMs.push(performance.now() - t0);
    t.is(r.errno, 0);
    t.true(r.data!.equals(hot.subarray(off, off + 4096)), `hit ${i} returns what was written`);
  }
  const hitsDoneAt = performance.now() - missStart;
  t.log(`16 hits: max ${Math.max(...hitMs).toFixed(1)} ms, all done ${hitsDoneAt.toFixed(0)} ms after the miss was issued; miss still pending: ${missMs < 0}`);
  t.true(missMs < 0, 'every hit finished while the miss was still waiting for the origin');
  t.true(Math.max(...hitMs) < HIT_BOUND_MS, `no hit waited for the miss (max ${Math.max(...hitMs).toFixed(1)} ms)`);

  const m = await miss;
  t.log(`the miss took ${missMs.toFixed(0)} ms`);
  t.is(m.errno, 0);
  t.true(m.data!.every((b) => b === 0), 'the miss returns the origin data (zeros)');
  t.true(missMs >= SLOW_READ_MS - 50, 'the miss really went to the slow disk');
  await disk.control('latency read 0');
});
