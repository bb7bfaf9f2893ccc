// A stripe worker thread that dies (a bug, an out-of-memory) is respawned by its piscina pool
// inside the same coordinator: its in-flight requests fail with EIO, nothing else is disturbed,
// and the new thread serves from the same ring. The crash is injected through a test hook that
// exists only with PCACHED_TEST_HOOKS=1.

import test from 'ava';
import { startDaemon } from './helpers/daemon.js';
import { pcachedCli, statusJson, waitFor, writeRead } from './helpers/lifecycle.js';
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
