// `pcached status` / `pcached message` against the real daemon, and `pcached start` with no
// arguments (the embedded default that `npm start` serves) in a scratch directory.

import test from 'ava';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PCACHED_BIN, startDaemon } from './helpers/daemon.js';
import { nativeAvailable } from '../src/native/index.js';
import { killPid, pcachedCli, spawnPcached, statusJson, tcpPortFree, waitAccepting, within } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, run, skipSuffix, skipWithReason } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');

(why ? test.skip : test)('status (human and --json) and message: fields, growing counters, clear errors' + skipSuffix(why), async (t) => {
  const d = await startDaemon();
  const before = await statusJson(d.control);
  t.teardown(async () => {
    await d.dispose();
    killPid(before.caches[0]?.pid);
  });

  const human = await pcachedCli(['status', '--control', d.control]);
  t.is(human.code, 0, human.stderr);
  for (const re of [/^cache vol$/m, /^\s+state\s+running$/m, /^\s+mode\s+writeback$/m, new RegExp(`^\\s+origin\\s+.*${d.origin}`, 'm'),
    new RegExp(`^\\s+listeners\\s+unix:${d.sock}`, 'm'), /^\s+connections\s+\d+$/m, /^\s+counters$/m, /^\s+reqs_read\s+\d+$/m, /^\s+reqs_write\s+\d+$/m]) {
    t.regex(human.stdout, re);
  }

  t.is(before.caches.length, 1);
  const c0 = before.caches[0]!;
  t.is(c0.name, 'vol');
  t.is(c0.mode, 'writeback');
  t.is(typeof c0.stats, 'object');
  t.is(typeof c0.stats.reqs_read, 'number');
  t.is(typeof c0.stats.reqs_write, 'number');

  const io = await nbdsh(`
for i in range(10):
    h.pwrite(bytes([i]) * 4096, i * 4096)
for i in range(7):
    assert h.pread(4096, i * 4096) == bytes([i]) * 4096
h.flush()
print('ok')
`, { uri: d.uri });
  t.is(io.code, 0, describe(io));
  const after = (await statusJson(d.control)).caches[0]!;
  t.true(after.stats.reqs_write! >= c0.stats.reqs_write! + 10, JSON.stringify(after.stats));
  t.true(after.stats.reqs_read! >= c0.stats.reqs_read! + 7, JSON.stringify(after.stats));
  t.true(after.stats.reqs_flush! >= c0.stats.reqs_flush! + 1, JSON.stringify(after.stats));
  t.true(after.stats.bytes_written! >= c0.stats.bytes_written! + 10 * 4096);
  // nbdsh waits for each reply: every request ran at queue depth 1, and each was timed.
  const poll = after.lowDepthPoll!;
  t.true(poll.averageUs > 0, JSON.stringify(poll));
  t.true(poll.budgetUs >= 30 && poll.budgetUs <= 250, JSON.stringify(poll));

  // A reader that goes before the output is written (`| head`, `| true`): a quiet end, no stack.
  const gone = await run('bash', ['-c', `"${process.execPath}" "${PCACHED_BIN}" status --json --control "${d.control}" | true; echo "status=\${PIPESTATUS[0]}" >&2`]);
  t.regex(gone.stderr, /status=0/, describe(gone));
  t.notRegex(gone.stderr, /EPIPE|Unhandled|at .*\.js:\d+/, describe(gone));

  // Status of one cache by name.
  const one = await pcachedCli(['status', 'vol', '--json', '--control', d.control]);
  t.is(one.code, 0, one.stderr);
  t.is((JSON.parse(one.stdout) as { caches: unknown[] }).caches.length, 1);

  const flush = await pcachedCli(['message', 'vol', 'flush', '--control', d.control]);
  t.is(flush.code, 0, flush.stderr);

  const unknownCache = await pcachedCli(['message', 'nope', 'flush', '--control', d.control]);
  t.not(unknownCache.code, 0);
  t.is(unknownCache.stderr, 'pcached: no cache named "nope" (caches: "vol")\n');
  const unknownStatus = await pcachedCli(['status', 'nope', '--control', d.control]);
  t.not(unknownStatus.code, 0);
  t.regex(unknownStatus.stderr, /^pcached: no cache named "nope"/);

  const unknownWord = await pcachedCli(['message', 'vol', 'frobnicate', '--control', d.control]);
  t.not(unknownWord.code, 0);
  t.regex(unknownWord.stderr, /^pcached: unknown message "frobnicate"; this cache understands: .*flush/);

  t.true(d.alive());
  t.is(await d.stop(), 0);
  const none = await pcachedCli(['status', '--control', d.control]);
  t.is(none.code, 1);
  t.is(none.stderr, `pcached: no daemon listening on ${d.control} (is \`pcached start\` running?)\n`);
  const noneMsg = await pcachedCli(['message', 'vol', 'flush', '--control', d.control]);
  t.is(noneMsg.code, 1);
  t.regex(noneMsg.stderr, /^pcached: no daemon listening on /);
});

const whyDefault = needTools('nbdinfo');
(whyDefault ? test.skip : test)('embedded default: `pcached start` in an empty directory serves ./var on 127.0.0.1:10809' + skipSuffix(whyDefault), async (t) => {
  if (!(await tcpPortFree(10809))) {
    skipWithReason(t, '127.0.0.1:10809 is in use by another process');
    return;
  }
  const cwd = mkdtempSync(join(tmpdir(), 'pcached-embedded-'));
  const p = spawnPcached([], { cwd });
  let coord = 0;
  t.teardown(async () => {
    await p.stop('SIGTERM');
    killPid(coord);
    rmSync(cwd, { recursive: true, force: true });
  });
  const sock = join(cwd, 'var/pcached.sock');
  try {
    await waitAccepting(sock, p, 60_000);
  } catch (err) {
    if (/EADDRINUSE/.test(p.output())) {
      skipWithReason(t, '127.0.0.1:10809 was taken between the check and the start');
      return;
    }
    throw err;
  }
  const control = join(cwd, 'var/control.sock');
  t.true(existsSync(control));
  const st = (await statusJson(control)).caches[0]!;
  coord = st.pid;
  t.is(st.name, 'default');
  t.deepEqual(new Set(st.listeners), new Set([`unix:${sock}`, 'tcp:127.0.0.1:10809']));
  // `pcached status` run in that directory finds ./var/control.sock by itself.
  const local = await pcachedCli(['status', '--json'], { cwd });
  t.is(local.code, 0, local.stderr);

  const info = await run('nbdinfo', ['nbd://127.0.0.1:10809'], { timeoutMs: 30_000 });
  t.is(info.code, 0, describe(info));
  t.regex(info.stdout, /export-size: 1073741824/);
  const infoUnix = await run('nbdinfo', ['--size', `nbd+unix:///default?socket=${sock}`], { timeoutMs: 30_000 });
  t.is(infoUnix.stdout.trim(), String(2 ** 30), describe(infoUnix));

  const origin = statSync(join(cwd, 'var/origin.img'));
  const cache = statSync(join(cwd, 'var/cache.img'));
  t.is(origin.size, 2 ** 30);
  t.is(cache.size, 256 * 2 ** 20);
  t.true(origin.blocks * 512 < 4 << 20, `origin.img is sparse (${origin.blocks} blocks)`);
  // The cache file is reserved on its filesystem at start (fallocate) when the native addon is built.
  if (nativeAvailable()) t.true(cache.blocks * 512 >= 256 * 2 ** 20, `cache.img is preallocated (${cache.blocks} blocks)`);

  t.is(await within(p.stop('SIGTERM'), 60_000, -1), 0, p.output());
  t.false(existsSync(sock));
  t.false(existsSync(control));
});
