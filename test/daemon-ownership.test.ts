// Exclusive ownership of the cache file and the origin, through the real daemon (`pcached start`):
// a second daemon on the same cache file (also through a symlink or a hard link) or on the same
// origin is refused with the path and the holder's PID, and the first keeps serving with its data
// intact; the same without the native addon (lock files) and between a daemon with and one without
// it; an orphaned coordinator (its supervisor SIGKILLed) keeps a restart out only until it has
// exited, which it does promptly; a loop device as the cache device; one config naming one file
// twice. Data is written with writeback held back, so "intact" means intact in the cache file.

import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { linkSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkDistinctFiles } from '../src/daemon/files.js';
import type { CacheConfig } from '../src/config/types.js';
import { isPcachedError } from '../src/util/errors.js';
import { flockHolders, mountPointOf, processStartTime } from '../src/util/proc-info.js';
import { claimLockFile } from '../src/coordinator/lock-file.js';
import { killPid, pidRunning, sleep, spawnPcached, spawnTracked, waitFor, within, writeConfig } from './helpers/lifecycle.js';
import { startNbdkit } from './helpers/nbdkit.js';
import {
  checkBlocks, checkRefused, endpoint, escapeRe, makeScenario, refused, serve, startArgs, stop, writeBlocks, type Scenario,
} from './helpers/cache-scenario.js';
import { needTools, skipSuffix, TOOL_ENV } from './helpers/tools.js';
import { nativeAvailable } from '../src/native/index.js';

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;
const HOLD = { PCACHED_PAUSE_WRITEBACK_MS: '600000' };
const COUNT = 16;

/** A lock folder of the test's own, so fallback lock files never meet another test's. */
function lockDirFor(t: ExecutionContext, s: Scenario): string {
  const dir = join(s.dir, 'locks');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const inUseBy = (what: string, path: string, pid: number): RegExp =>
  new RegExp(`^pcached: cache "vol": ${what} ${escapeRe(path)} is in use by PID ${pid} \\(pcached coordinator of "vol", supervisor PID \\d+\\): stop that daemon first$`);

// ---------------------------------------------------------------------------------------------

test('flockHolders reads /proc/locks by device and inode, skipping waiters; mountPointOf reads mountinfo', (t) => {
  const locks = [
    '1: FLOCK  ADVISORY  WRITE 5658 fe:00:2146481 0 EOF',
    '2: FLOCK  ADVISORY  READ 77 fe:00:99 0 EOF',
    '2: -> FLOCK  ADVISORY  WRITE 78 fe:00:99 0 EOF',
    '3: POSIX  ADVISORY  WRITE 12 fe:00:99 0 EOF',
    '4: OFDLCK ADVISORY  READ  -1 fe:00:99 0 EOF',
  ].join('\n');
  // dev_t 0xfe00 is major 254 minor 0.
  t.deepEqual(flockHolders(0xfe00, 2146481, locks), [{ pid: 5658, mode: 'exclusive' }]);
  t.deepEqual(flockHolders(0xfe00, 99, locks), [{ pid: 77, mode: 'shared' }]);
  t.deepEqual(flockHolders(0xfe01, 99, locks), []);
  const mountinfo = '36 35 7:3 / /mnt/my\\040disk rw,relatime shared:1 - ext4 /dev/loop3 rw\n37 35 8:1 / / rw - ext4 /dev/sda1 rw';
  t.is(mountPointOf(7 * 256 + 3, mountinfo), '/mnt/my disk');
  t.is(mountPointOf(7 * 256 + 4, mountinfo), null);
});

test('lock files: exclusive against anyone, shared beside shared; a dead owner\'s file (or a reused PID\'s) is stale and removed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-own-lf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // Another live process as a holder: the test runner that forked this worker.
  const other = process.ppid;
  const start = processStartTime(other)!;
  writeFileSync(join(dir, `fkey.${other}-${start}.sh`), '{}');
  const ex = claimLockFile(dir, 'fkey', 'exclusive', {});
  t.deepEqual(ex, { holder: { pid: other, mode: 'shared' } });
  t.deepEqual(readdirSync(dir), [`fkey.${other}-${start}.sh`], 'a refused claim leaves no file behind');
  const sh = claimLockFile(dir, 'fkey', 'shared', {});
  if ('holder' in sh) return t.fail('two shared claims conflict');
  t.is(readdirSync(dir).length, 2);
  sh.release();
  // An exclusive holder refuses a shared claim too.
  rmSync(join(dir, `fkey.${other}-${start}.sh`));
  writeFileSync(join(dir, `fkey.${other}-${start}.ex`), '{}');
  t.deepEqual(claimLockFile(dir, 'fkey', 'shared', {}), { holder: { pid: other, mode: 'exclusive' } });
  // The same PID with another start time is a later process: the file is stale.
  rmSync(join(dir, `fkey.${other}-${start}.ex`));
  writeFileSync(join(dir, `fkey.${other}-1.ex`), '{}');
  const dead = spawnSync('true').pid!;
  writeFileSync(join(dir, `fkey.${dead}-${start}.ex`), '{}');
  writeFileSync(join(dir, `other.${other}-${start}.ex`), '{}');
  const mine = claimLockFile(dir, 'fkey', 'exclusive', { path: '/x' });
  if ('holder' in mine) return t.fail(`stale files were taken for holders: ${JSON.stringify(mine)}`);
  t.deepEqual(readdirSync(dir).sort(), [`fkey.${process.pid}-${processStartTime(process.pid)}.ex`, `other.${other}-${start}.ex`].sort(), 'stale files removed, other keys untouched');
  t.like(JSON.parse(readFileSync(mine.file, 'utf8')), { pid: process.pid, mode: 'exclusive', path: '/x' });
  t.deepEqual(claimLockFile(dir, 'fkey', 'exclusive', {}), { holder: { pid: process.pid, mode: 'exclusive' } }, 'a second claim by the same process conflicts, as flock does');
  mine.release();
  t.deepEqual(readdirSync(dir), [`other.${other}-${start}.ex`]);
});

test('config check: one file under two names for two caches is refused up front; read-only caches may share an origin', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-own-cfg-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const f of ['o1', 'o2', 'c1', 'c2']) writeFileSync(join(dir, f), '');
  symlinkSync(join(dir, 'c1'), join(dir, 'c1-link'));
  linkSync(join(dir, 'o1'), join(dir, 'o1-hard'));
  const cache = (name: string, origin: string, c: string, readOnly = false) => ({ name, origin: join(dir, origin), cache: join(dir, c), readOnly }) as CacheConfig;
  const err = t.throws(() => checkDistinctFiles([cache('a', 'o1', 'c1'), cache('b', 'o2', 'c1-link')]));
  t.true(isPcachedError(err, 'ERR_CONFIG'));
  t.regex(err!.message, /the cache of cache "a" \(.*\/c1\) and the cache of cache "b" \(.*\/c1-link\) are the same file/);
  t.throws(() => checkDistinctFiles([cache('a', 'o1', 'c1'), cache('b', 'o1-hard', 'c2', true)]), { message: /the origin of cache "a" .* and the origin of cache "b" .* are the same file/ });
  t.throws(() => checkDistinctFiles([cache('a', 'o1', 'c1'), cache('b', 'o2', 'o1-hard')]), { message: /the origin of cache "a" .* and the cache of cache "b"/ });
  t.notThrows(() => checkDistinctFiles([cache('a', 'o1', 'c1', true), cache('b', 'o1-hard', 'c2', true)]));
});

t_('a second daemon on the same cache file (by its path, a symlink, a hard link) is refused with the path and the PID; the first keeps serving, its data intact' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-own-');
  const ep = endpoint(s, 'first');
  const d = await serve(t, startArgs(s, ep), ep, s.dir, HOLD);
  await writeBlocks(ep.uri, s.dir, 1, COUNT);
  const other = { origin: join(s.dir, 'origin2.img'), cache: s.cache };
  writeFileSync(other.origin, Buffer.alloc(64 * 2 ** 20));
  const ep2 = endpoint(s, 'second');

  await refused(t, startArgs(other, ep2), s.dir, inUseBy('cache file', s.cache, d.coord), 'same cache file');
  const link = join(s.dir, 'link.img');
  symlinkSync(s.cache, link);
  await refused(t, startArgs({ ...other, cache: link }, ep2), s.dir,
    new RegExp(`cache file ${escapeRe(link)} \\(${escapeRe(s.cache)}\\) is in use by PID ${d.coord} `), 'cache file through a symlink');
  const hard = join(s.dir, 'hard.img');
  linkSync(s.cache, hard);
  await refused(t, startArgs({ ...other, cache: hard }, ep2), s.dir, inUseBy('cache file', hard, d.coord), 'cache file through a hard link');

  t.true(pidRunning(d.coord));
  t.is(await checkBlocks(ep.uri, s.dir, 1, COUNT), null, 'the first daemon still serves what was written');
  await stop(t, d);
  // The log in the cache file is whole: a restart replays it (writeback was held back, so the
  // blocks exist nowhere else).
  t.true(readFileSync(s.origin).equals(s.originInit), 'nothing reached the origin');
  const d2 = await serve(t, startArgs(s, ep), ep, s.dir, HOLD);
  t.is(await checkBlocks(ep.uri, s.dir, 1, COUNT), null, 'replayed intact after the refusals');
  await stop(t, d2);
});

t_('the same origin file under a second daemon with its own cache file is refused before that cache is written; read-only daemons share an origin' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-own-o-');
  const ep = endpoint(s, 'first');
  const d = await serve(t, startArgs(s, ep), ep, s.dir, HOLD);
  await writeBlocks(ep.uri, s.dir, 2, COUNT);
  const other = { origin: s.origin, cache: join(s.dir, 'cache2.img') };
  await refused(t, startArgs(other, endpoint(s, 'second')), s.dir, inUseBy('origin file', s.origin, d.coord), 'same origin');
  // The supervisor created the second cache file sparse; the refused coordinator wrote nothing in it.
  t.true(readFileSync(other.cache).every((b) => b === 0), 'the refused daemon formatted nothing');
  t.is(await checkBlocks(ep.uri, s.dir, 2, COUNT), null);
  await stop(t, d);

  // Readers take shared locks: two read-only daemons run side by side; a writer is refused.
  const r1 = await serve(t, startArgs({ origin: s.origin, cache: join(s.dir, 'cache4.img') }, ep, ['--read-only']), ep, s.dir);
  const epR = endpoint(s, 'reader2');
  const r2 = await serve(t, startArgs(other, epR, ['--read-only']), epR, s.dir);
  const cache3 = { origin: s.origin, cache: join(s.dir, 'cache3.img') };
  await refused(t, startArgs(cache3, endpoint(s, 'writer')), s.dir,
    new RegExp(`origin file ${escapeRe(s.origin)} is in use \\(read-only\\) by PID (${r1.coord}|${r2.coord}) \\(pcached coordinator of "vol"`), 'a writer beside readers');
  await stop(t, r2);
  await stop(t, r1);
});

t_('without the native addon (PCACHED_NO_NATIVE=1) lock files refuse a second daemon, a stale one is taken over, and daemons with and without the addon see each other' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const s = makeScenario(t, 'pcached-own-n-');
  const locks = lockDirFor(t, s);
  const noNative = { ...HOLD, PCACHED_NO_NATIVE: '1', PCACHED_LOCK_DIR: locks };
  const withNative = { ...HOLD, PCACHED_LOCK_DIR: locks };
  const ep = endpoint(s, 'first');
  const ep2 = endpoint(s, 'second');
  const d1 = await serve(t, startArgs(s, ep, ['--log-level', 'info']), ep, s.dir, noNative);
  t.regex(d1.proc.output(), new RegExp(`"role":"cache","path":"${escapeRe(s.cache)}","mode":"exclusive","method":"lock file ${escapeRe(locks)}/`));
  await writeBlocks(ep.uri, s.dir, 3, COUNT);
  const mine = (pid: number) => readdirSync(locks).filter((f) => f.includes(`.${pid}-`));
  t.is(mine(d1.coord).length, 2, `a lock file for the cache and one for the origin: ${readdirSync(locks).join(', ')}`);

  const other = { origin: join(s.dir, 'origin2.img'), cache: s.cache };
  writeFileSync(other.origin, Buffer.alloc(64 * 2 ** 20));
  await refused(t, startArgs(other, ep2), s.dir, inUseBy('cache file', s.cache, d1.coord), 'no addon on both sides', noNative);
  if (nativeAvailable()) {
    await refused(t, startArgs(other, ep2), s.dir,
      new RegExp(`cache file ${escapeRe(s.cache)} is in use by PID ${d1.coord} \\(pcached coordinator of "vol"`), 'addon against a lock file', withNative);
  } else {
    t.log('native addon not built: the daemon-with-addon half is not checked');
  }

  // kill -9 of everything leaves the lock files; the next start finds their owner dead.
  killPid(d1.coord);
  try { process.kill(d1.proc.pid, 'SIGKILL'); } catch { /* gone */ }
  await within(d1.proc.exited, 30_000, -1);
  await waitFor('the killed coordinator to be gone', () => !pidRunning(d1.coord), 30_000, 50);
  t.is(mine(d1.coord).length, 2, 'stale lock files are left behind by kill -9');
  const d2 = await serve(t, startArgs(s, ep), ep, s.dir, noNative);
  t.deepEqual(mine(d1.coord), [], 'the stale ones were removed');
  t.is(mine(d2.coord).length, 2);
  t.is(await checkBlocks(ep.uri, s.dir, 3, COUNT), null, 'the data survived kill -9 and the takeover');
  await stop(t, d2);
  t.deepEqual(mine(d2.coord), [], 'a clean stop removes its lock files');

  if (nativeAvailable()) {
    const d3 = await serve(t, startArgs(s, ep), ep, s.dir, withNative);
    await refused(t, startArgs(other, ep2), s.dir, inUseBy('cache file', s.cache, d3.coord), 'lock file against the addon\'s flock', noNative);
    await stop(t, d3);
  }
});

t_('supervisor SIGKILLed: a restart is refused while the orphaned coordinator lives, and starts once it has exited (promptly); the data is intact' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-own-orphan-');
  const ep = endpoint(s, 'vol');
  const d = await serve(t, startArgs(s, ep, ['--log-level', 'info']), ep, s.dir, HOLD);
  await writeBlocks(ep.uri, s.dir, 4, COUNT);
  const orphan = d.coord;
  // Stopped first so that it is surely still alive when the restart comes (systemd's Restart=
  // after a crash of the supervisor, on the same sockets).
  process.kill(orphan, 'SIGSTOP');
  t.teardown(() => { try { process.kill(orphan, 'SIGCONT'); } catch { /* gone */ } });
  process.kill(d.proc.pid, 'SIGKILL');
  await waitFor('the supervisor to die', () => !pidRunning(d.proc.pid), 10_000, 20);

  const restart = startArgs(s, ep);
  await refused(t, restart, s.dir,
    new RegExp(`cache file ${escapeRe(s.cache)} is in use by PID ${orphan} \\(pcached coordinator of "vol", orphaned: its supervisor is gone and it is shutting down\\): stop that daemon first`), 'restart beside the orphan', HOLD);

  const t0 = Date.now();
  process.kill(orphan, 'SIGCONT');
  await waitFor('the orphan to exit', () => !pidRunning(orphan), 15_000, 20);
  const ms = Date.now() - t0;
  t.log(`the orphaned coordinator exited ${ms} ms after it could run again`);
  t.true(ms < 12_000, `the orphan exits within its 10 s deadline (${ms} ms)`);
  d.coord = 0;
  // Its output went to the dead supervisor's pipes, which close once it is gone.
  await within(d.proc.exited, 10_000, -1);
  t.notRegex(d.proc.output(), /ERR_IPC_DISCONNECTED|Uncaught/, 'the orphan left without crashing');
  t.regex(d.proc.output(), /"why":"supervisor went away"/);

  const d2 = await serve(t, restart, ep, s.dir, HOLD);
  t.is(await checkBlocks(ep.uri, s.dir, 4, COUNT), null, 'every flushed block is there after the takeover');
  t.true(readFileSync(s.origin).equals(s.originInit), 'all of it from the cache file (writeback was held back)');
  await stop(t, d2);
});

// ---------------------------------------------------------------------------------------------
// A loop device as the cache device: O_EXCL + flock.

function loopWhy(): string | null {
  if (why) return why;
  if (process.getuid?.() !== 0) return 'needs root for losetup';
  if (spawnSync('losetup', ['--version'], { env: TOOL_ENV }).status !== 0) return 'losetup is missing';
  return null;
}
const loopReason = loopWhy();

t_('a loop device as the cache device: held O_EXCL and flocked; a second daemon (with or without the addon) is refused naming the PID' + skipSuffix(loopReason), async (t) => {
  if (loopReason) return t.pass();
  t.timeout(240_000);
  const s = makeScenario(t, 'pcached-own-loop-');
  const backing = join(s.dir, 'loop-backing.img');
  writeFileSync(backing, Buffer.alloc(32 * 2 ** 20));
  const attach = spawnSync('losetup', ['-f', '--show', backing], { env: TOOL_ENV, encoding: 'utf8' });
  if (attach.status !== 0) {
    t.log(`SKIP: losetup cannot attach here: ${attach.stderr.trim()}`);
    return t.pass();
  }
  const loop = attach.stdout.trim();
  t.teardown(() => { spawnSync('losetup', ['-d', loop], { env: TOOL_ENV }); });
  const dev = { origin: s.origin, cache: loop };
  const ep = endpoint(s, 'first');
  const d = await serve(t, startArgs(dev, ep, ['--log-level', 'info']), ep, s.dir, HOLD);
  t.regex(d.proc.output(), new RegExp(`"role":"cache","path":"${escapeRe(loop)}","mode":"exclusive","method":"O_EXCL \\+ flock"`));
  await writeBlocks(ep.uri, s.dir, 5, COUNT);
  const other = { origin: join(s.dir, 'origin2.img'), cache: loop };
  writeFileSync(other.origin, Buffer.alloc(64 * 2 ** 20));
  const ep2 = endpoint(s, 'second');
  await refused(t, startArgs(other, ep2), s.dir, inUseBy('cache device', loop, d.coord), 'same loop device');
  // Without the addon there is no flock, but O_EXCL still refuses, and /proc/locks names the holder.
  await refused(t, startArgs(other, ep2), s.dir, inUseBy('cache device', loop, d.coord), 'same loop device, no addon',
    { PCACHED_NO_NATIVE: '1', PCACHED_LOCK_DIR: lockDirFor(t, s) });
  t.is(await checkBlocks(ep.uri, s.dir, 5, COUNT), null);
  await stop(t, d);
  const d2 = await serve(t, startArgs(dev, ep), ep, s.dir, HOLD);
  t.is(await checkBlocks(ep.uri, s.dir, 5, COUNT), null, 'replayed from the loop device');
  await stop(t, d2);
});

t_('one config naming one cache file twice (a symlink) is refused before any coordinator is forked' + skipSuffix(why), async (t) => {
  t.timeout(60_000);
  const s = makeScenario(t, 'pcached-own-conf-');
  writeFileSync(join(s.dir, 'origin2.img'), Buffer.alloc(2 ** 20));
  writeFileSync(s.cache, '');
  symlinkSync(s.cache, join(s.dir, 'cache-link.img'));
  const config = join(s.dir, 'pcached.json');
  writeConfig(config, {
    control: join(s.dir, 'control.sock'),
    logLevel: 'info',
    caches: [
      { name: 'a', origin: s.origin, cache: s.cache, cacheSize: '16M', unix: join(s.dir, 'a.sock'), tcp: '' },
      { name: 'b', origin: join(s.dir, 'origin2.img'), cache: join(s.dir, 'cache-link.img'), cacheSize: '16M', unix: join(s.dir, 'b.sock'), tcp: '' },
    ],
  });
  const proc = spawnPcached(['--config', config], { cwd: s.dir });
  t.teardown(() => proc.stop('SIGKILL').then(() => undefined));
  const line = await checkRefused(t, proc, /^pcached: invalid configuration: the cache of cache "a" .* and the cache of cache "b" .*cache-link\.img\) are the same file/, 'one cache file for two caches');
  t.truthy(line);
  t.notRegex(proc.output(), /coordinator forked|childPid/);
  t.is(readFileSync(s.cache).length, 0, 'nothing was written');
});

const slowWhy = why ?? needTools('nbdkit');

t_('an orphan with a request stuck on a slow origin drains for 2 s, then leaves by its 10 s deadline and releases its locks' + skipSuffix(slowWhy), async (t) => {
  t.timeout(120_000);
  const s = makeScenario(t, 'pcached-own-slow-', 2 ** 20);
  const originSock = join(s.dir, 'origin.sock');
  // Every origin read takes 30 s: a read miss stays in flight far longer than the orphan may wait.
  const origin = await startNbdkit(originSock, ['memory', 'size=64M', '--filter=delay', 'delay-read=30']);
  t.teardown(() => origin.kill());
  const ep = endpoint(s, 'vol');
  const d = await serve(t, startArgs({ origin: `nbd+unix:///?socket=${originSock}`, cache: s.cache }, ep, ['--log-level', 'info']), ep, s.dir);
  const reader = spawnTracked('nbdsh', ['-u', ep.uri, '-c', `
import nbd, time
buf = nbd.Buffer(4096)
h.aio_pread(buf, 1 << 20)
print('sent', flush=True)
time.sleep(120)
`], { env: TOOL_ENV });
  t.teardown(() => reader.stop('SIGKILL').then(() => undefined));
  await waitFor('the read to be in flight', () => reader.output().includes('sent'), 30_000, 20);
  await sleep(300);
  const orphan = d.coord;
  const t0 = Date.now();
  process.kill(d.proc.pid, 'SIGKILL');
  await waitFor('the orphan to exit', () => !pidRunning(orphan), 20_000, 20);
  const ms = Date.now() - t0;
  d.coord = 0;
  t.log(`orphan with a 30 s origin read in flight exited after ${ms} ms`);
  t.true(ms >= 1500, `it drained before giving up (${ms} ms)`);
  t.true(ms < 12_000, `it left by its deadline, not after the read (${ms} ms)`);
  const st = statSync(s.cache, { bigint: true });
  t.deepEqual(flockHolders(st.dev, st.ino), [], 'the cache file lock went with the process');
  await within(d.proc.exited, 10_000, -1);
  t.regex(d.proc.output(), /"why":"supervisor went away"/);
});
