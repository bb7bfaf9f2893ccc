// SIGHUP through the real daemon started with --config: a good config's reloadable keys take
// effect while the daemon serves; a bad one (invalid JSON, unknown key, bad value, a key that
// needs a restart) is rejected as a whole, logged, and the running configuration stays.

import test from 'ava';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir, makeSparseFile } from './helpers/daemon.js';
import { killPid, pcachedCli, spawnPcached, statusJson, waitAccepting, waitFor, writeConfig } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, run, skipSuffix } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd', 'nbdinfo');

async function description(uri: string): Promise<string | undefined> {
  const r = await run('nbdinfo', ['--json', uri], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(describe(r));
  const info = JSON.parse(r.stdout) as { exports: { description?: string }[] };
  return info.exports[0]?.description;
}

async function serves(uri: string, tag: number): Promise<void> {
  const r = await nbdsh(`
buf = bytes([${tag}]) * 4096
h.pwrite(buf, 4096 * ${tag})
assert h.pread(4096, 4096 * ${tag}) == buf
print('ok')
`, { uri, timeoutMs: 30_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`I/O failed: ${describe(r)}`);
}

const count = (s: string, re: RegExp): number => (s.match(new RegExp(re.source, 'g')) ?? []).length;

(why ? test.skip : test)('SIGHUP: a good config applies logLevel and description; bad ones are rejected and the old config stays' + skipSuffix(why), async (t) => {
  const dir = freshDir();
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 16 << 20);
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const file = join(dir, 'pcached.json');
  const uri = `nbd+unix:///vol?socket=${sock}`;
  const base = (cache: Record<string, unknown>, daemon: Record<string, unknown> = {}) => ({
    control, logLevel: 'warn', ...daemon,
    caches: [{ name: 'vol', origin, cache: join(dir, 'cache.img'), cacheSize: '16MiB', unix: sock, stripes: 2, description: 'first', ...cache }],
  });
  writeConfig(file, base({}));
  const p = spawnPcached(['--config', file], { cwd: dir });
  let coord = 0;
  t.teardown(async () => {
    await p.stop('SIGTERM');
    killPid(coord);
    rmSync(dir, { recursive: true, force: true });
  });
  await waitAccepting(sock, p);
  coord = (await statusJson(control)).caches[0]!.pid;
  t.is(await description(uri), 'first');

  // Good: logLevel warn → info (the reload's own info line now shows) and a new description.
  writeConfig(file, base({ description: 'second' }, { logLevel: 'info' }));
  process.kill(p.pid, 'SIGHUP');
  await waitFor('"configuration reloaded" in the log', () => /"msg":"configuration reloaded"/.test(p.output()), 20_000);
  t.regex(p.output(), /"changed":\[[^\]]*"logLevel"/);
  t.is(await description(uri), 'second');
  await serves(uri, 1);

  // Bad ones. Each also changes the description, which must not be applied.
  const bad: { what: string; write: () => void; logged: RegExp }[] = [
    { what: 'invalid JSON', write: () => writeFileSync(file, '{ "control": '), logged: /invalid JSON/ },
    { what: 'an unknown key', write: () => writeConfig(file, base({ description: 'bad-1', bogusKey: 1 }, { logLevel: 'info' })), logged: /bogusKey/ },
    { what: 'a bad value', write: () => writeConfig(file, base({ description: 'bad-2', maxConnections: 0 }, { logLevel: 'info' })), logged: /maxConnections/ },
    { what: 'a bad daemon value', write: () => writeConfig(file, base({ description: 'bad-3' }, { logLevel: 'loud' })), logged: /logLevel/ },
    { what: 'a key that needs a restart (stripes)', write: () => writeConfig(file, base({ description: 'bad-4', stripes: 1 }, { logLevel: 'info' })), logged: /stripes[^"]*cannot change without a restart/ },
  ];
  let rejected = count(p.output(), /reload rejected/);
  for (const [i, b] of bad.entries()) {
    b.write();
    process.kill(p.pid, 'SIGHUP');
    const n = rejected + 1;
    await waitFor(`the reload with ${b.what} to be rejected`, () => count(p.output(), /reload rejected/) >= n, 20_000);
    rejected = n;
    const line = p.output().split('\n').filter((l) => /reload rejected/.test(l)).pop() ?? '';
    t.regex(line, /ERR_CONFIG_RELOAD_REJECTED/, b.what);
    t.regex(line, b.logged, `${b.what}: ${line}`);
    t.is(await description(uri), 'second', `${b.what}: the old description stays`);
    await serves(uri, 2 + i);
  }
  t.true(p.alive());
  const st = (await statusJson(control)).caches[0]!;
  t.is(st.stripes, 2);
  t.is(st.restarts, 0);
  t.is(st.pid, coord, 'no reload restarted the coordinator');

  // `pcached reload` says the same thing and exits non-zero.
  const r = await pcachedCli(['reload', '--control', control]);
  t.not(r.code, 0);
  t.regex(r.stderr, /reload rejected.*stripes/);

  // A good file after all that is applied again.
  writeConfig(file, base({ description: 'third' }, { logLevel: 'info' }));
  process.kill(p.pid, 'SIGHUP');
  await waitFor('the third description', async () => (await description(uri)) === 'third', 20_000, 200);
  const ok = await pcachedCli(['reload', '--control', control]);
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /reloaded: no change/);
  await serves(uri, 9);
  t.is(await p.stop('SIGTERM'), 0);
});
