// Origin faults through the real daemon, with nbdkit's error filter as the NBD origin: while the
// origin fails writes, writeback retries with back-off, the data stays dirty and is served from
// the cache, status shows the error indicator and counts; a read miss that fails is EIO for that
// request only; once the origin recovers, everything reaches it. Then the origin process is killed
// with dirty data in the cache and started again on the same socket: the same, after reconnecting.
// Every process started here is stopped by its PID in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nbdUri, makeSparseFile } from './helpers/daemon.js';
import { startNbdkit } from './helpers/nbdkit.js';
import { pcachedCli, startServing, statusJson, stopGracefully, waitFor } from './helpers/lifecycle.js';
import { needTools, nbdshJson, PY_ATTEMPT, skipSuffix } from './helpers/tools.js';

const MiB = 1 << 20;
const NAME = 'vol';
/** A scratch folder (removed in teardown). */
function scratch(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-faults-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** `pcached start` in `dir` on `origin` (a path or an NBD URI) with a 32 MiB cache of 1 MiB segments. */
async function start(t: ExecutionContext, dir: string, origin: string, stripes: number, env: Record<string, string>) {
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const d = await startServing(t, ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--segment-size', '1M',
    '--unix', sock, '--tcp', '', '--name', NAME, '--control', control, '--stripes', String(stripes), '--log-level', 'warn'],
  { cwd: dir, sock, control, env });
  return { d, control, uri: nbdUri(sock, NAME) };
}

const why = needTools('nbdsh', 'python3-nbd', 'nbdkit');

(why ? test.serial.skip : test.serial)('origin write errors: writeback retries, data stays dirty and served, status shows it; read misses fail alone; all reaches the origin once it recovers' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const dir = scratch(t);
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const failWrites = join(dir, 'fail-writes');
  const failReads = join(dir, 'fail-reads');
  const osock = join(dir, 'origin.sock');
  const kit = await startNbdkit(osock, ['--filter=error', 'file', origin, 'error=EIO',
    'error-pwrite-rate=100%', `error-pwrite-file=${failWrites}`, 'error-pread-rate=100%', `error-pread-file=${failReads}`]);
  t.teardown(() => kit.stop());
  const { d, control, uri } = await start(t, dir, `nbd+unix:///?socket=${osock}`, 2, { PCACHED_PAUSE_WRITEBACK_MS: '0' });

  // The origin fails every write: the data written now cannot be written back.
  writeFileSync(failWrites, '');
  const a = randomBytes(2 * MiB);
  const af = join(dir, 'a.bin');
  writeFileSync(af, a);
  await nbdshJson(`h.pwrite(open(${JSON.stringify(af)}, 'rb').read(), ${8 * MiB})\nh.flush()\nprint('"ok"')`, { uri });
  const failing = await waitFor('writeback errors in status', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.workers.wb_errors >= 2 && c.errors.some((x) => /origin I\/O error/.test(x)) ? c : undefined;
  }, 60_000, 200);
  t.log(`while the origin fails writes: ${JSON.stringify({ dirty: failing.dirtyBlocks, errors: failing.errors, wbErrors: failing.workers.wb_errors })}`);
  t.true(failing.dirtyBlocks >= 512, 'the data stays dirty');
  t.is(failing.writecache!.error, -5, 'the dm-writecache error indicator');
  const line = await pcachedCli(['status', NAME, '--raw', '--control', control]);
  t.regex(line.stdout, /^-5 /);
  t.is((await statusJson(control)).caches[0]!.condition, 'degraded', 'writeback errors: degraded, not failed');
  // Served from the cache meanwhile.
  const back = await nbdshJson<string>(`import hashlib, json\nprint(json.dumps(hashlib.sha256(h.pread(${2 * MiB}, ${8 * MiB})).hexdigest()))`, { uri });
  t.is(back, createHash('sha256').update(a).digest('hex'));
  t.true(readFileSync(origin).subarray(8 * MiB, 10 * MiB).every((x) => x === 0), 'nothing reached the origin');

  // Read misses while the origin fails reads: that request gets EIO, the next one (a hit) is fine.
  writeFileSync(failReads, '');
  const res = await nbdshJson<[string, boolean]>(`
import json, nbd
try:
    h.pread(4096, ${40 * MiB})
    miss = 'OK'
except nbd.Error as e:
    miss = e.errno or str(e)
ok = h.pread(4096, ${8 * MiB}) == bytes(open(${JSON.stringify(af)}, 'rb').read()[:4096])
print(json.dumps([miss, ok]))
`, { uri });
  t.deepEqual(res, ['EIO', true]);
  rmSync(failReads);

  // The origin recovers: writeback catches up, the indicator clears, the origin holds the data.
  rmSync(failWrites);
  t.false(existsSync(failWrites));
  const healed = await waitFor('writeback after the origin recovered', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.dirtyBlocks === 0 && c.errors.length === 0 ? c : undefined;
  }, 60_000, 200);
  t.is(healed.writecache!.error, 0);
  t.true(readFileSync(origin).subarray(8 * MiB, 10 * MiB).equals(a), 'nothing lost: the origin holds the data');

  // The origin goes away (killed) with dirty data in the cache, and comes back on the same socket.
  writeFileSync(failWrites, '');
  const b = randomBytes(MiB);
  const bf = join(dir, 'b.bin');
  writeFileSync(bf, b);
  await nbdshJson(`h.pwrite(open(${JSON.stringify(bf)}, 'rb').read(), ${20 * MiB})\nh.flush()\nprint('"ok"')`, { uri });
  await kit.kill();
  rmSync(failWrites);
  await waitFor('errors while the origin is gone', async () => (await statusJson(control)).caches[0]!.cacheState!.errors.length > 0, 60_000, 200);
  const back2 = await nbdshJson<string>(`import hashlib, json\nprint(json.dumps(hashlib.sha256(h.pread(${MiB}, ${20 * MiB})).hexdigest()))`, { uri });
  t.is(back2, createHash('sha256').update(b).digest('hex'), 'served from the cache while the origin is gone');
  rmSync(osock, { force: true }); // SIGKILL left the socket file
  const kit2 = await startNbdkit(osock, ['file', origin]);
  t.teardown(() => kit2.stop());
  await waitFor('writeback after the origin came back', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.dirtyBlocks === 0 && c.errors.length === 0 ? c : undefined;
  }, 90_000, 200);
  t.true(readFileSync(origin).subarray(20 * MiB, 21 * MiB).equals(b), 'written back to the origin that came back');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

(why ? test.serial.skip : test.serial)('cache device errors (injected): a read error is EIO for that read; a write error fails the device for good (writes and FLUSH get EIO, durable data still served, nothing wrong served) until a restart replays it' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const dir = scratch(t);
  const origin = join(dir, 'origin.img');
  const initial = randomBytes(32 * MiB);
  writeFileSync(origin, initial);
  const env = { PCACHED_TEST_HOOKS: '1', PCACHED_PAUSE_WRITEBACK_MS: '600000' };
  const { d, control, uri } = await start(t, dir, origin, 1, env);
  const faults = async (what: string): Promise<void> => {
    const r = await pcachedCli(['message', NAME, 'debug_cache_faults', what, '--control', control]);
    if (r.code !== 0) throw new Error(r.stderr);
  };
  const a = randomBytes(64 * 1024);
  const af = join(dir, 'a.bin');
  writeFileSync(af, a);
  await nbdshJson(`h.pwrite(open(${JSON.stringify(af)}, 'rb').read(), ${MiB})\nh.flush()\nprint('"ok"')`, { uri });

  // Reads of the cache fail: the hit is EIO; a miss elsewhere still comes from the origin.
  await faults('reads');
  const r1 = await nbdshJson<[string, boolean]>(`
import json, nbd
try:
    h.pread(65536, ${MiB})
    hit = 'OK'
except nbd.Error as e:
    hit = e.errno or str(e)
miss = h.pread(4096, ${8 * MiB})
print(json.dumps([hit, miss == bytes(open(${JSON.stringify(origin)}, 'rb').read()[${8 * MiB}:${8 * MiB + 4096}])]))
`, { uri });
  t.deepEqual(r1, ['EIO', true]);
  const s1 = (await statusJson(control)).caches[0]!.cacheState!;
  t.true(s1.errors.some((x) => /cache device read error/.test(x)), JSON.stringify(s1.errors));
  t.is(s1.writecache!.error, -5);
  t.true((s1.cacheErrors ?? 0) >= 1);
  // A read error does not fail the device: with the reads back, writes and FLUSH work.
  await faults('off');
  await nbdshJson(`h.pwrite(b'\\x22' * 4096, ${7 * MiB})\nh.flush()\nprint('"ok"')`, { uri });

  // A write to the cache fails: that write is EIO, and from now on so is every write and FLUSH
  // (what was written since the last good sync may not be on the device); reads go on.
  await faults('writes');
  const r2 = await nbdshJson<string>(`
import json, nbd
try:
    h.pwrite(b'\\x5a' * 65536, ${4 * MiB})
    w = 'OK'
except nbd.Error as e:
    w = e.errno or str(e)
print(json.dumps(w))
`, { uri });
  t.is(r2, 'EIO');
  await faults('off');
  const after = await nbdshJson<[string, string, string, string]>(`
import json, nbd
${PY_ATTEMPT}
print(json.dumps([h.pread(65536, ${4 * MiB}).hex(), h.pread(65536, ${MiB}).hex(), attempt(lambda: h.pwrite(b'\\x11' * 4096, ${6 * MiB})), attempt(lambda: h.flush())]))
`, { uri });
  t.true(Buffer.from(after[0], 'hex').equals(initial.subarray(4 * MiB, 4 * MiB + 65536)), 'the failed write reads as the old data, never other bytes');
  t.true(Buffer.from(after[1], 'hex').equals(a), 'durable data is still served');
  t.deepEqual(after.slice(2), ['EIO', 'EIO'], 'writes and FLUSH fail once the device failed, even with the fault gone');
  const s2 = (await statusJson(control)).caches[0]!.cacheState!;
  t.true(s2.errors.some((x) => /cache device failed \(a data write failed\)/.test(x)), JSON.stringify(s2.errors));
  t.is(s2.writecache!.error, -5);
  t.true(s2.failed);
  t.is((await statusJson(control)).caches[0]!.condition, 'failed');
  t.regex((await pcachedCli(['status', NAME, '--control', control])).stdout, /^ {2}state +failed$/m);
  t.is(await stopGracefully(d), 0, d.proc.output());

  // A restart replays what is on the device: the flushed data is there, and the cache works again.
  const again = await start(t, dir, origin, 1, env);
  const back = await nbdshJson<[string, string]>(`import json\nh.pwrite(b'\\x33' * 4096, ${6 * MiB})\nh.flush()\nprint(json.dumps([h.pread(65536, ${MiB}).hex(), h.pread(4096, ${7 * MiB}).hex()]))`, { uri: again.uri });
  t.true(Buffer.from(back[0], 'hex').equals(a));
  t.true(Buffer.from(back[1], 'hex').equals(Buffer.alloc(4096, 0x22)));
  t.deepEqual((await statusJson(again.control)).caches[0]!.cacheState!.errors, []);
  t.is(await stopGracefully(again.d), 0, again.d.proc.output());
});

(why ? test.serial.skip : test.serial)('an origin failing 10 % of writes at random: writeback retries until everything is there, in order' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const dir = scratch(t);
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const osock = join(dir, 'origin.sock');
  const kit = await startNbdkit(osock, ['--filter=error', 'file', origin, 'error=EIO', 'error-pwrite-rate=10%']);
  t.teardown(() => kit.stop());
  const { d, control, uri } = await start(t, dir, `nbd+unix:///?socket=${osock}`, 2, { PCACHED_PAUSE_WRITEBACK_MS: '0' });
  // 256 scattered 4 KiB blocks, each written twice in two epochs (the second must win), so the
  // origin sees hundreds of separate writes: some of them fail.
  const blocks = Array.from({ length: 256 }, (_, i) => (i * 97) % 4096);
  const script = `
import json
blocks = ${JSON.stringify(blocks)}
for v in (1, 2):
    for b in blocks:
        h.pwrite(bytes([v, b & 255]) * 2048, b * 8192)
    h.flush()
print('"ok"')
`;
  await nbdshJson(script, { uri, timeoutMs: 120_000 });
  const done = await waitFor('writeback through the failures', async () => {
    const c = (await statusJson(control)).caches[0]!.cacheState!;
    return c.dirtyBlocks === 0 ? c : undefined;
  }, 180_000, 250);
  t.log(`origin requests retried: ${done.workers.wb_retries}; batches failed: ${done.workers.wb_errors}; origin syncs ${done.workers.wb_origin_syncs}`);
  t.true(done.workers.wb_retries > 0, 'some origin writes failed and were retried');
  const o = readFileSync(origin);
  const wrong = blocks.filter((b) => !o.subarray(b * 8192, b * 8192 + 4096).equals(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i % 2 === 0 ? 2 : b & 255)))));
  t.deepEqual(wrong, [], 'every block holds its second (newest) version');
  t.deepEqual(done.errors, [], 'the indicator clears once writeback succeeds');
  t.is(await stopGracefully(d), 0, d.proc.output());
});
