// Direct I/O on the cache device (cacheDirectIo), through the real daemon: a cache file on this
// machine's disk opened O_DIRECT takes writes at every 512-byte alignment the protocol allows
// (the on-media format's small records go through aligned bounce buffers, read-modify-write of
// partial sectors), keeps none of them in the page cache (fincore counts the file's resident
// pages), and survives kill -9 of the whole daemon with every flushed write; `auto` takes
// buffered I/O for a regular file, and a value other than auto, on or off is refused. Stamped
// 4 KiB writes at queue depth 32 (data runs written asynchronously, many in flight) are cut by
// kill -9 mid-epoch under both I/O backends: every write a FLUSH covered must read back. (A device
// that refuses direct I/O could not be built here: tmpfs takes O_DIRECT since Linux 6.6.)

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { makeSparseFile } from './helpers/daemon.js';
import { killHard, spawnPcached, startServing, statusJson, waitFor, within, type RunningDaemon } from './helpers/lifecycle.js';
import { NbdTestClient } from './helpers/nbd-test-client.js';
import { removeScratchDirs, scratchDir } from './helpers/scratch.js';
import { SeededRandom } from './helpers/faulty-disk-store.js';
import { readVolume, runEpochs } from './helpers/stamp-driver.js';
import { checkDurable, StampModel } from './helpers/stamp-model.js';
import { STAMP_BLOCK } from './helpers/stamps.js';

const MiB = 1 << 20;
const ORIGIN = 64 * MiB;
const NAME = 'vol';

test.after.always(() => removeScratchDirs());

interface Rig { dir: string; origin: string; cache: string; sock: string; control: string }

function rig(base = scratchDir('pcached-direct-')): Rig {
  const origin = join(base, 'origin.img');
  makeSparseFile(origin, ORIGIN);
  return { dir: base, origin, cache: join(base, 'cache.img'), sock: join(base, 'nbd.sock'), control: join(base, 'control.sock') };
}

function args(r: Rig): string[] {
  return ['--origin', r.origin, '--cache', r.cache, '--cache-size', '64M', '--segment-size', '1M', '--unix', r.sock, '--tcp', '',
    '--name', NAME, '--control', r.control, '--stripes', '1', '--log-level', 'warn'];
}

function serve(t: Parameters<typeof startServing>[0], r: Rig, direct: string): Promise<RunningDaemon> {
  return startServing(t, args(r), { cwd: r.dir, sock: r.sock, control: r.control, env: { PCACHED_CACHE_DIRECT_IO: direct } });
}

/** Resident pages of the file in the page cache (util-linux fincore). */
function residentPages(path: string): number {
  const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'PAGES', path], { encoding: 'utf8' });
  return Number(out.trim());
}

function pattern(tag: number, i: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let o = 0; o < len; o += 4) b.writeUInt32LE((tag * 1_000_003 + i * 7919 + o) >>> 0, o);
  return b;
}

/** Writes at odd sector offsets and lengths, so the device sees every unaligned shape. */
const WRITES = Array.from({ length: 300 }, (_, i) => ({ off: ((i * 7_340_033) % (ORIGIN / 512 - 64)) * 512, len: 512 * (1 + (i % 17)) }));

async function writeAll(c: NbdTestClient, tag: number): Promise<void> {
  for (const [i, w] of WRITES.entries()) {
    const e = await c.write(w.off, pattern(tag, i, w.len));
    if (e !== 0) throw new Error(`write ${i} failed with errno ${e}`);
  }
}

/** The expected image (later writes over earlier ones), compared range by range. */
async function check(c: NbdTestClient, tag: number): Promise<string | null> {
  const image = Buffer.alloc(ORIGIN);
  for (const [i, w] of WRITES.entries()) pattern(tag, i, w.len).copy(image, w.off);
  for (const [i, w] of WRITES.entries()) {
    const r = await c.read(w.off, w.len);
    if (r.errno !== 0 || !r.data) return `read ${i} failed with errno ${r.errno}`;
    if (!r.data.equals(image.subarray(w.off, w.off + w.len))) return `read ${i} at ${w.off} (+${w.len}) differs from what was written`;
  }
  return null;
}

test('cacheDirectIo=on: unaligned writes, no page cache, every flushed write back after kill -9', async (t) => {
  const r = rig();
  let d = await serve(t, r, 'on');
  const st = await statusJson(r.control);
  t.true(JSON.stringify(st).includes('"directIo":true'), 'status reports direct I/O');
  t.true(JSON.stringify(st).includes('"ioBackend":"io_uring"'), 'io_uring runs here (kernel 6.18, the addon built)');
  let c = await NbdTestClient.connect(r.sock, NAME);
  await writeAll(c, 1);
  t.is(await c.flush(), 0);
  t.is(await check(c, 1), null, 'reads before the cut');
  // Buffered I/O would hold every written byte here; direct I/O leaves (nearly) nothing behind.
  const pages = residentPages(r.cache);
  t.true(pages < 64, `the cache file has ${pages} pages in the page cache`);
  c.destroy();
  await killHard(d);
  d = await serve(t, r, 'on');
  c = await NbdTestClient.connect(r.sock, NAME);
  t.is(await check(c, 1), null, 'reads after kill -9 and replay from the device');
  await c.disconnect();
  void d;
});

test('cacheDirectIo=off keeps the written data in the page cache (the contrast the test above relies on)', async (t) => {
  const r = rig();
  await serve(t, r, 'off');
  const st = await statusJson(r.control);
  t.true(JSON.stringify(st).includes('"directIo":false'));
  const c = await NbdTestClient.connect(r.sock, NAME);
  await writeAll(c, 2);
  t.is(await c.flush(), 0);
  t.is(await check(c, 2), null);
  t.true(residentPages(r.cache) >= 64, 'buffered writes are resident');
  await c.disconnect();
});

test('cacheDirectIo=auto takes buffered I/O for a regular file', async (t) => {
  const r = rig();
  await serve(t, r, 'auto');
  t.true(JSON.stringify(await statusJson(r.control)).includes('"directIo":false'));
});

test('PCACHED_IO_BACKEND=libuv: the portable backend runs, status says so and why, data still right', async (t) => {
  const r = rig();
  await startServing(t, args(r), { cwd: r.dir, sock: r.sock, control: r.control, env: { PCACHED_CACHE_DIRECT_IO: 'on', PCACHED_IO_BACKEND: 'libuv' } });
  const st = JSON.stringify(await statusJson(r.control));
  t.true(st.includes('"ioBackend":"libuv"'));
  t.true(st.includes('PCACHED_IO_BACKEND=libuv'));
  const c = await NbdTestClient.connect(r.sock, NAME);
  await writeAll(c, 3);
  t.is(await c.flush(), 0);
  t.is(await check(c, 3), null);
  await c.disconnect();
});

test('cacheDirectIo rejects a value that is not auto, on or off', async (t) => {
  const r = rig();
  const p = spawnPcached(args(r), { cwd: r.dir, env: { PCACHED_CACHE_DIRECT_IO: 'yes' } });
  t.teardown(() => p.stop('SIGKILL', 5_000));
  t.not(await within(p.exited, 60_000, -999), 0);
  t.regex(p.output(), /cacheDirectIo.*auto, on, off|must be one of auto, on, off/);
});

for (const backend of ['io_uring', 'libuv'] as const) {
  test(`cacheDirectIo=on, ${backend}: stamped writes at QD32, kill -9 with runs in flight, every flushed write back`, async (t) => {
    const r = rig();
    const env = { PCACHED_CACHE_DIRECT_IO: 'on', PCACHED_IO_BACKEND: backend };
    let d = await startServing(t, args(r), { cwd: r.dir, sock: r.sock, control: r.control, env });
    t.true(JSON.stringify(await statusJson(r.control)).includes(`"ioBackend":"${backend}"`));
    const model = new StampModel(ORIGIN / STAMP_BLOCK / 2);
    const random = new SeededRandom(backend.length * 31);
    let c = await NbdTestClient.connect(r.sock, NAME);
    let flushes = 0;
    // The cut lands while an epoch's writes are in flight (the run never stops on its own).
    const run = runEpochs(c, model, random, { perEpoch: 256, queueDepth: 32, afterFlush: (e) => { if (e === 0) flushes++; } });
    await waitFor('10 flushed epochs', () => flushes >= 10, 60_000, 5);
    await killHard(d);
    const ran = await run;
    t.true(ran.lost, 'the cut ended the run');
    t.true(model.counts.writesLost > 0, `${model.counts.writesLost} writes were in flight at the cut`);
    d = await startServing(t, args(r), { cwd: r.dir, sock: r.sock, control: r.control, env });
    c = await NbdTestClient.connect(r.sock, NAME);
    const report = checkDurable(model, await readVolume(c, model));
    t.true(report.ok, report.summary);
    t.log(report.summary);
    await c.disconnect();
    void d;
  });
}
