// What counts as "on the origin", through the real daemon with an NBD origin:
//
// 1. The origin (nbdkit's cache filter in writeback mode: it holds writes until FLUSH, so kill -9
//    loses them, like a power cut) acknowledges writeback's writes, then dies before their FLUSH
//    completes (the delay filter under the cache filter holds the FLUSH). It comes back on the same
//    socket. The FLUSH must not be trusted on the new connection: writeback writes that epoch again,
//    and at the end the origin, after a second kill -9, holds every block in its newest version.
// 2. The writeback worker starts while its origin is unreachable (nothing listens on its socket):
//    writes are acknowledged and cached, status shows the failed opens, and once the origin is
//    there everything is written back without a restart.
// 3. In writethrough and passthrough (writes go to the origin first), a write the origin
//    acknowledged and then lost with its connection makes the client's next FLUSH fail with EIO;
//    written again, the next FLUSH succeeds and covers it.
//
// Every process started here is stopped by its PID in t.teardown; scratch dirs are removed.

import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeSparseFile, nbdUri } from './helpers/daemon.js';
import { startNbdkit } from './helpers/nbdkit.js';
import { pcachedCli, startServing, statusJson, stopGracefully, waitFor } from './helpers/lifecycle.js';
import { needTools, nbdshJson, skipSuffix } from './helpers/tools.js';

const MiB = 1 << 20;
const NAME = 'vol';
const BLOCK = 64 * 1024;

function scratch(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-origin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function startPcached(t: ExecutionContext, dir: string, origin: string, env: Record<string, string>) {
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const d = await startServing(t, ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--segment-size', '1M',
    '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', '1', '--log-level', 'info'],
  { cwd: dir, sock, control, env: { PCACHED_PAUSE_WRITEBACK_MS: '0', ...env } });
  return { d, control, uri: nbdUri(sock, NAME) };
}

/** nbdsh: pwrite the file's bytes at `off`, then FLUSH. */
async function writeFile(uri: string, path: string, off: number): Promise<void> {
  await nbdshJson(`h.pwrite(open(${JSON.stringify(path)}, 'rb').read(), ${off})\nh.flush()\nprint('"ok"')`, { uri, timeoutMs: 60_000 });
}

async function dirtyBlocks(control: string): Promise<number> {
  return (await statusJson(control)).caches[0]!.cacheState!.dirtyBlocks;
}

const why = needTools('nbdsh', 'python3-nbd', 'nbdkit');

(why ? test.serial.skip : test.serial)('NBD origin killed after acknowledging writes, before their FLUSH: writeback sends them again; the origin ends with every block in its newest version' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const dir = scratch(t);
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const osock = join(dir, 'origin.sock');
  const kitLog = join(dir, 'nbdkit.log');
  // log (outermost: shows what pcached sent) → cache (holds writes until FLUSH) → delay → file.
  // The cache filter writes to the layer below only at FLUSH, and each of those writes is delayed
  // a minute: the FLUSH hangs while the writes complete at once into the cache filter.
  const kit = await startNbdkit(osock, ['--filter=log', '--filter=cache', '--filter=delay', 'file', origin,
    'cache=writeback', 'delay-write=60', `logfile=${kitLog}`]);
  t.teardown(() => kit.kill());
  const { d, control, uri } = await startPcached(t, dir, `nbd+unix:///?socket=${osock}`, {});

  // Two epochs: 64 blocks (v1), then every other block again (v2).
  const blocks = 64;
  const base = 8 * MiB;
  const v1 = randomBytes(blocks * BLOCK);
  const v2 = randomBytes(blocks * BLOCK);
  const f1 = join(dir, 'v1.bin');
  writeFileSync(f1, v1);
  await writeFile(uri, f1, base);
  // The writes of epoch 1 reached the origin and were acknowledged; its FLUSH is stuck.
  await waitFor('writeback FLUSH at the origin', () => /\bFlush id=/.test(readFileSync(kitLog, 'utf8')), 20_000, 50);
  const acked = readFileSync(kitLog, 'utf8').split('\n').filter((l) => /\.\.\.Write id=\d+ return=0/.test(l)).length;
  t.true(acked >= 1, 'writes were acknowledged before the FLUSH');
  for (let i = 0; i < blocks; i += 2) {
    const fi = join(dir, `v2-${i}.bin`);
    writeFileSync(fi, v2.subarray(i * BLOCK, (i + 1) * BLOCK));
    await writeFile(uri, fi, base + i * BLOCK);
  }

  // Power cut of the origin: the acknowledged, unflushed writes are gone. It comes back empty-handed.
  await kit.kill();
  t.true(readFileSync(origin).subarray(base, base + blocks * BLOCK).every((x) => x === 0), 'the origin lost what it had not flushed');
  rmSync(osock, { force: true });
  const kit2 = await startNbdkit(osock, ['--filter=cache', 'file', origin, 'cache=writeback']);
  t.teardown(() => kit2.kill());

  const clean = await pcachedCli(['clean', NAME, '--control', control, '--interval', '200'], { timeoutMs: 90_000 });
  t.is(clean.code, 0, clean.stderr);
  t.is(await dirtyBlocks(control), 0);
  // A second power cut: only what a FLUSH covered survives, which must be everything.
  await kit2.kill();
  const o = readFileSync(origin);
  const wrong: number[] = [];
  for (let i = 0; i < blocks; i++) {
    const want = (i % 2 === 0 ? v2 : v1).subarray(i * BLOCK, (i + 1) * BLOCK);
    if (!o.subarray(base + i * BLOCK, base + (i + 1) * BLOCK).equals(want)) wrong.push(i);
  }
  t.deepEqual(wrong, [], 'blocks not on the origin in their newest version');
  const st = (await statusJson(control)).caches[0]!.cacheState!;
  t.log(`writeback: ${st.workers.wb_errors} failed batches, ${st.workers.wb_origin_syncs} origin syncs, ${st.workers.wb_bytes} bytes`);
  t.true(st.workers.wb_errors >= 1, 'the FLUSH after the reconnect failed the batch');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

(why ? test.serial.skip : test.serial)('writeback worker started while its origin is unreachable: writes are cached, status shows the failed opens, and everything is written back once the origin is there, without a restart' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const dir = scratch(t);
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  // The stripes reach the origin through one socket; the writeback worker is told (test hook) to
  // use another, where nothing listens yet. Both serve the same file.
  const stripeSock = join(dir, 'origin.sock');
  const writebackSock = join(dir, 'origin-wb.sock');
  const kit = await startNbdkit(stripeSock, ['file', origin]);
  t.teardown(() => kit.stop());
  const { d, control, uri } = await startPcached(t, dir, `nbd+unix:///?socket=${stripeSock}`,
    { PCACHED_TEST_HOOKS: '1', PCACHED_TEST_WRITEBACK_ORIGIN: `nbd+unix:///?socket=${writebackSock}` });

  const data = randomBytes(2 * MiB);
  const f = join(dir, 'data.bin');
  writeFileSync(f, data);
  await writeFile(uri, f, 16 * MiB);
  const down = await waitFor('failed origin opens in status', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.workers.wb_origin_open_errors! >= 3 && c.errors.some((x) => /origin I\/O error/.test(x)) ? c : undefined;
  }, 60_000, 200);
  t.log(`origin down: ${down.workers.wb_origin_open_errors} failed opens, ${down.dirtyBlocks} dirty blocks, errors ${JSON.stringify(down.errors)}`);
  t.true(down.dirtyBlocks >= 512, 'the writes are cached and dirty');
  t.is(down.writecache!.error, -5);
  const back = await nbdshJson<string>(`import hashlib, json\nprint(json.dumps(hashlib.sha256(h.pread(${2 * MiB}, ${16 * MiB})).hexdigest()))`, { uri });
  t.is(back, createHash('sha256').update(data).digest('hex'), 'served from the cache meanwhile');
  t.true(readFileSync(origin).subarray(16 * MiB, 18 * MiB).every((x) => x === 0), 'nothing on the origin yet');

  const kit2 = await startNbdkit(writebackSock, ['file', origin]);
  t.teardown(() => kit2.stop());
  const healed = await waitFor('writeback once the origin is there', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.dirtyBlocks === 0 && c.errors.length === 0 ? c : undefined;
  }, 60_000, 200);
  t.is(healed.writecache!.error, 0);
  t.is(healed.workers.wb_restarts, 0, 'the loop itself never failed');
  t.true(readFileSync(origin).subarray(16 * MiB, 18 * MiB).equals(data), 'written back');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

for (const mode of ['writethrough', 'passthrough'] as const) {
  (why ? test.serial.skip : test.serial)(`${mode}: writes the origin acknowledged and lost with its connection make every later client FLUSH fail with EIO, until a restart` + skipSuffix(why), async (t) => {
    t.timeout(120_000);
    const dir = scratch(t);
    const origin = join(dir, 'origin.img');
    makeSparseFile(origin, 64 * MiB);
    const osock = join(dir, 'origin.sock');
    const kit = await startNbdkit(osock, ['--filter=cache', 'file', origin, 'cache=writeback']);
    t.teardown(() => kit.kill());
    const sock = join(dir, 'nbd.sock');
    const control = join(dir, 'control.sock');
    const d = await startServing(t, ['--origin', `nbd+unix:///?socket=${osock}`, '--cache', join(dir, 'cache.img'), '--cache-size', '32M',
      '--segment-size', '1M', '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', '1', '--mode', mode, '--log-level', 'warn'],
    { cwd: dir, sock, control });
    const uri = nbdUri(sock, NAME);
    const data = randomBytes(MiB);
    const f = join(dir, 'data.bin');
    writeFileSync(f, data);
    // Written through to the origin (acknowledged there, held in its cache filter), not flushed.
    await nbdshJson(`h.pwrite(open(${JSON.stringify(f)}, 'rb').read(), ${4 * MiB})\nprint('"ok"')`, { uri });
    await kit.kill();
    rmSync(osock, { force: true });
    const kit2 = await startNbdkit(osock, ['file', origin]);
    t.teardown(() => kit2.stop());
    t.true(readFileSync(origin).subarray(4 * MiB, 5 * MiB).every((x) => x === 0), 'the origin lost the write');
    const flushes = await nbdshJson<string[]>(`
import json, nbd
out = []
for i in range(2):
    try:
        h.flush()
        out.append('OK')
    except nbd.Error as e:
        out.append(e.errno or str(e))
    if i == 0:
        h.pwrite(open(${JSON.stringify(f)}, 'rb').read(), ${4 * MiB})
print(json.dumps(out))
`, { uri });
    // Nothing holds a copy of what the origin dropped, so no later FLUSH can cover it: they all fail
    // (docs/cache-engine.md "Errors"), until a restart.
    t.deepEqual(flushes, ['EIO', 'EIO'], 'the FLUSH after the loss fails, and so does every later one');
    const st = (await statusJson(control)).caches[0]!.cacheState!;
    t.true(st.errors.some((x) => /origin flush failed/.test(x)), JSON.stringify(st.errors));
    t.is(await stopGracefully(d), 0, d.proc.output());
    // A restart starts clean: the rewritten data reaches the origin, FLUSH works again.
    const again = await startServing(t, ['--origin', `nbd+unix:///?socket=${osock}`, '--cache', join(dir, 'cache.img'), '--cache-size', '32M',
      '--segment-size', '1M', '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', '1', '--mode', mode, '--log-level', 'warn'],
    { cwd: dir, sock, control });
    await nbdshJson(`h.pwrite(open(${JSON.stringify(f)}, 'rb').read(), ${4 * MiB})\nh.flush()\nprint('"ok"')`, { uri });
    t.true(readFileSync(origin).subarray(4 * MiB, 5 * MiB).equals(data), 'on the origin after the restart, the rewrite and FLUSH');
    t.is(await stopGracefully(again), 0, again.proc.output());
  });
}
