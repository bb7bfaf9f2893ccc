// A stripe worker thread that dies (a bug, an out-of-memory) is respawned by its piscina pool
// inside the same coordinator: its in-flight requests fail with EIO, nothing else is disturbed,
// and the new thread serves from the same ring. The crash is injected through a test hook that
// exists only with PCACHED_TEST_HOOKS=1.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeSparseFile, nbdUri, startDaemon } from './helpers/daemon.js';
import { killHard, pcachedCli, startServing, statusJson, stopGracefully, waitFor, writeRead } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, skipSuffix } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.skip : test;
const BLOCK64 = 65536;


t_('a stripe thread that dies is respawned in place; the coordinator and the data survive' + skipSuffix(why), async (t) => {
  const d = await startDaemon({ stripes: 2, env: { PCACHED_TEST_HOOKS: '1' } });
  t.teardown(() => d.dispose());
  // Subtrees 0 and 1 belong to stripes 0 and 1.
  await writeRead(d.uri, 0, 0x31, BLOCK64);
  await writeRead(d.uri, 4 << 20, 0x32, BLOCK64);
  const before = (await statusJson(d.control)).caches[0]!;

  for (const stripe of [0, 1, 0]) {
    const r = await pcachedCli(['message', '--control', d.control, 'vol', 'debug_crash_stripe', String(stripe)]);
    t.is(r.code, 0, describe(r));
  }
  const after = await waitFor('three stripe respawns', async () => {
    const c = (await statusJson(d.control)).caches[0]!;
    return (c.stripeRestarts ?? 0) >= 3 ? c : undefined;
  }, 30_000, 100);
  t.is(after.pid, before.pid, 'the coordinator process was not restarted');
  t.is(after.restarts, 0);
  t.regex(d.stderr(), /stripe worker died/);

  // Both stripes serve again, with the data written before the crashes.
  const r = await nbdsh(`
assert h.pread(65536, 0) == bytes([0x31]) * 65536
assert h.pread(65536, ${4 << 20}) == bytes([0x32]) * 65536
print('ok')
`, { uri: d.uri, timeoutMs: 30_000 });
  t.true(r.stdout.includes('ok'), describe(r));
  await writeRead(d.uri, 8 << 20, 0x33, BLOCK64);
  await writeRead(d.uri, 12 << 20, 0x34, BLOCK64);
  t.is(await d.stop(), 0);
});

t_('the crash hook does not exist without PCACHED_TEST_HOOKS=1' + skipSuffix(why), async (t) => {
  const d = await startDaemon();
  t.teardown(() => d.dispose());
  const r = await pcachedCli(['message', '--control', d.control, 'vol', 'debug_crash_stripe', '0']);
  t.not(r.code, 0);
  t.regex(r.stderr, /unknown message "debug_crash_stripe"/);
  t.is(await d.stop(), 0);
});

t_('writes a dead stripe had accepted but not logged are committed by its successor: the next FLUSH covers them, and a kill -9 after it loses nothing' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'pcached-respawn-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 << 20);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const args = ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', '32M', '--segment-size', '1M', '--unix', sock, '--tcp', '',
    '--name', 'vol', '--control', control, '--stripes', '2', '--log-level', 'warn'];
  const env = { PCACHED_TEST_HOOKS: '1', PCACHED_PAUSE_WRITEBACK_MS: '600000' };
  const d = await startServing(t, args, { cwd: dir, sock, control, env });
  // Keys stay pending in the stripes (no commit round for an hour, none for the block count).
  for (const [w, n] of [['autocommit_time', '3600000'], ['autocommit_blocks', '1048576']]) {
    const r = await pcachedCli(['message', '--control', control, 'vol', w!, n!]);
    t.is(r.code, 0, describe(r));
  }
  const uri = nbdUri(sock, 'vol');
  // 64 blocks in stripe 0's subtree, acknowledged, no FLUSH: their keys are only in stripe 0's memory (and journal).
  const w = await nbdsh(`
for i in range(64):
    h.pwrite(bytes([0x40 + (i % 64)]) * 4096, i * 8192)
print('ok')
`, { uri });
  t.true(w.stdout.includes('ok'), describe(w));
  const head0 = (await statusJson(control)).caches[0]!.cacheState!.keyHead;
  const r = await pcachedCli(['message', '--control', control, 'vol', 'debug_crash_stripe', '0']);
  t.is(r.code, 0, describe(r));
  await waitFor('the stripe respawn', async () => ((await statusJson(control)).caches[0]!.stripeRestarts ?? 0) >= 1 || undefined, 30_000, 100);
  t.is((await statusJson(control)).caches[0]!.cacheState!.keyHead, head0, 'nothing was logged by the crash itself');
  t.regex(d.proc.output(), /took over the keys its predecessor had accepted/);
  // The FLUSH after the respawn: it must cover the 64 writes (they were completed before it).
  const f = await nbdsh(`h.flush()\nprint('ok')`, { uri });
  t.true(f.stdout.includes('ok'), describe(f));
  // Power-cut-like stop: nobody commits anything on the way out.
  await killHard(d);
  const again = await startServing(t, args, { cwd: dir, sock, control, env });
  const back = await nbdsh(`
bad = [i for i in range(64) if h.pread(4096, i * 8192) != bytes([0x40 + (i % 64)]) * 4096]
print('bad', bad)
`, { uri });
  t.regex(back.stdout, /bad \[\]/, describe(back));
  t.is(await stopGracefully(again), 0, again.proc.output());
});
