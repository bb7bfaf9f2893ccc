// A real filesystem on the volume: nbdfuse exposes the export as a file, a loop device sits on
// that file, ext4 is made, mounted, written, remounted and verified, unmounted, and fsck must find
// it clean. Skipped with a printed reason where FUSE, loop devices or mount are unavailable.
// Everything is undone in teardown, even on failure: mounts, loop devices, the FUSE mount, nbdfuse.

import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, openSync, closeSync, fsyncSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir, startDaemon, type Daemon } from './helpers/daemon.js';
import { coordinatorPid, pidRunning, statusJson, waitFor } from './helpers/lifecycle.js';
import { needTools, skipSuffix, skipWithReason, run, runOk, describe, TOOL_ENV } from './helpers/tools.js';

function loadTimeReason(): string | null {
  const tools = needTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount');
  if (tools) return tools;
  if (!existsSync('/dev/fuse')) return '/dev/fuse is not available';
  if (!existsSync('/dev/loop-control')) return 'no loop devices (/dev/loop-control missing)';
  if (process.getuid?.() !== 0) return 'needs root for losetup and mount';
  return null;
}
const why = loadTimeReason();
const SIZE = 256 * 1024 * 1024;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

(why ? test.skip : test)(`ext4 through nbdfuse + loop device: mkfs, write, remount, verify, fsck clean${skipSuffix(why)}`, async (t) => {
  t.timeout(300_000, 'ext4 on nbdfuse');
  const d: Daemon = await startDaemon({ name: 'vol-ext4', originSize: SIZE });
  const fuseDir = join(d.dir, 'fuse');
  const fsDir = join(d.dir, 'fs');
  mkdirSync(fuseDir);
  mkdirSync(fsDir);
  const state = { fusePid: 0, fuseMounted: false, loop: '', mounted: false };

  t.teardown(async () => {
    // Reverse order, each step best-effort, so a failure half-way never leaks a mount or a device.
    if (state.mounted) {
      const r = await run('umount', [fsDir], { timeoutMs: 60_000 });
      if (r.code !== 0) await run('umount', ['-l', fsDir], { timeoutMs: 60_000 });
    }
    if (state.loop) await run('losetup', ['-d', state.loop], { timeoutMs: 30_000 });
    if (state.fuseMounted) {
      const r = await run('fusermount3', ['-u', fuseDir], { timeoutMs: 30_000 });
      if (r.code !== 0) await run('fusermount3', ['-u', '-z', fuseDir], { timeoutMs: 30_000 });
    }
    if (state.fusePid) {
      for (let i = 0; i < 50 && alive(state.fusePid); i++) await sleep(100);
      if (alive(state.fusePid)) { try { process.kill(state.fusePid, 'SIGKILL'); } catch { /* gone */ } }
    }
    await d.dispose();
  });

  // 1. nbdfuse: the export appears as fuseDir/nbd once the pidfile is written.
  const pidFile = join(d.dir, 'nbdfuse.pid');
  const fuse = spawn('nbdfuse', ['-P', pidFile, fuseDir, d.uri], { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let fuseOut = '';
  fuse.stdout!.on('data', (b: Buffer) => { fuseOut += b.toString(); });
  fuse.stderr!.on('data', (b: Buffer) => { fuseOut += b.toString(); });
  const fuseState: { exit: number | null } = { exit: null };
  fuse.on('exit', (code) => { fuseState.exit = code ?? -1; });
  state.fusePid = fuse.pid ?? 0;
  for (let i = 0; i < 300 && !existsSync(pidFile) && fuseState.exit === null; i++) await sleep(100);
  if (!existsSync(pidFile)) {
    if (/fuse: device not found|permission denied|Operation not permitted|fusermount/i.test(fuseOut)) {
      return skipWithReason(t, `FUSE mount not possible here: ${fuseOut.trim()}`);
    }
    t.fail(`nbdfuse did not become ready (exit ${fuseState.exit}): ${fuseOut}`);
    return;
  }
  state.fuseMounted = true;
  const nbdFile = join(fuseDir, 'nbd');
  t.true(existsSync(nbdFile), `${nbdFile} exists`);

  // 2. Loop device on the FUSE file.
  const lo = await run('losetup', ['-f', '--show', nbdFile], { timeoutMs: 30_000 });
  if (lo.code !== 0) return skipWithReason(t, `loop device not available: ${lo.stderr.trim()}`);
  state.loop = lo.stdout.trim();

  // 3. mkfs + mount.
  await runOk('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', state.loop], { timeoutMs: 120_000 });
  const m = await run('mount', ['-t', 'ext4', state.loop, fsDir], { timeoutMs: 60_000 });
  if (m.code !== 0) return skipWithReason(t, `mount not permitted here: ${describe(m)}`);
  state.mounted = true;

  // 4. Files with checksums: small, large, and a directory tree.
  const sums = new Map<string, string>();
  const sizes = [0, 1, 511, 4096, 65537, 1 << 20, 5 * (1 << 20) + 123, 24 * (1 << 20)];
  mkdirSync(join(fsDir, 'tree/a/b'), { recursive: true });
  for (const [i, size] of sizes.entries()) {
    const rel = i % 2 ? `tree/a/b/f${i}.bin` : `f${i}.bin`;
    const data = randomBytes(size);
    const fd = openSync(join(fsDir, rel), 'w');
    writeFileSync(fd, data);
    fsyncSync(fd);
    closeSync(fd);
    sums.set(rel, createHash('sha256').update(data).digest('hex'));
  }
  for (let i = 0; i < 200; i++) writeFileSync(join(fsDir, 'tree/a', `small${i}`), `file ${i}\n`.repeat(i));
  await runOk('sync', [], { timeoutMs: 60_000 });

  // 5. Unmount, remount, verify.
  await runOk('umount', [fsDir], { timeoutMs: 60_000 });
  state.mounted = false;
  await runOk('mount', ['-t', 'ext4', state.loop, fsDir], { timeoutMs: 60_000 });
  state.mounted = true;
  for (const [rel, sum] of sums) {
    t.is(createHash('sha256').update(readFileSync(join(fsDir, rel))).digest('hex'), sum, `${rel} checksum after remount`);
  }
  t.is(readdirSync(join(fsDir, 'tree/a')).filter((n) => n.startsWith('small')).length, 200);
  t.is(readFileSync(join(fsDir, 'tree/a', 'small7'), 'utf8'), 'file 7\n'.repeat(7));
  await runOk('umount', [fsDir], { timeoutMs: 60_000 });
  state.mounted = false;

  // 6. fsck must find the filesystem clean.
  const fsck = await run('fsck.ext4', ['-fn', state.loop], { timeoutMs: 120_000 });
  t.is(fsck.code, 0, describe(fsck));

  // 7. Orderly detach; nbdfuse exits when its mount goes away.
  await runOk('losetup', ['-d', state.loop], { timeoutMs: 30_000 });
  state.loop = '';
  await runOk('fusermount3', ['-u', fuseDir], { timeoutMs: 30_000 });
  state.fuseMounted = false;
  for (let i = 0; i < 100 && fuseState.exit === null; i++) await sleep(100);
  t.is(fuseState.exit, 0, `nbdfuse exit: ${fuseOut}`);
  t.true(d.alive(), d.stderr());
  t.is(await d.stop('SIGTERM'), 0, d.stderr());
});

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

// ---------------------------------------------------------------------------------------------
// A filesystem across a daemon restart on the same cache and origin: files written and `sync`ed,
// the daemon stopped (SIGTERM: a graceful stop, dirty data left in the cache; or SIGKILL of supervisor and coordinator right
// after `sync`, so the data survives only through what the FLUSHes made durable in the cache),
// started again, and every file must be there with its content, and fsck must find it clean.

/** nbdfuse + loop device + ext4 mount, each step recorded so teardown can undo exactly what was done. */
interface Stack {
  fuseDir: string;
  fsDir: string;
  fusePid: number;
  fuseMounted: boolean;
  fuseExit: { code: number | null };
  fuseOut: () => string;
  loop: string;
  mounted: boolean;
}

/** Undo a stack in reverse order, best effort at each step (never leaks a mount or a device). */
async function unwind(st: Stack): Promise<void> {
  if (st.mounted) {
    const r = await run('umount', [st.fsDir], { timeoutMs: 60_000 });
    if (r.code !== 0) await run('umount', ['-l', st.fsDir], { timeoutMs: 60_000 });
    st.mounted = false;
  }
  if (st.loop) {
    await run('losetup', ['-d', st.loop], { timeoutMs: 30_000 });
    st.loop = '';
  }
  if (st.fuseMounted) {
    const r = await run('fusermount3', ['-u', st.fuseDir], { timeoutMs: 30_000 });
    if (r.code !== 0) await run('fusermount3', ['-u', '-z', st.fuseDir], { timeoutMs: 30_000 });
    st.fuseMounted = false;
  }
  if (st.fusePid) {
    for (let i = 0; i < 100 && st.fuseExit.code === null; i++) await sleep(100);
    if (st.fuseExit.code === null && alive(st.fusePid)) { try { process.kill(st.fusePid, 'SIGKILL'); } catch { /* gone */ } }
    st.fusePid = 0;
  }
}

/**
 * nbdfuse on `d.uri` at `fuseDir`, a loop device on its file. Returns the stack, or a reason to
 * skip when FUSE or loop devices turn out not to be usable here. `stacks` gets the stack at once
 * so that teardown unwinds it even if a later step fails.
 */
async function attach(d: Daemon, fuseDir: string, fsDir: string, tag: string, stacks: Stack[]): Promise<Stack | string> {
  const pidFile = join(d.dir, `nbdfuse-${tag}.pid`);
  rmSync(pidFile, { force: true });
  const fuse = spawn('nbdfuse', ['-P', pidFile, fuseDir, d.uri], { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  fuse.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
  fuse.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
  const st: Stack = { fuseDir, fsDir, fusePid: fuse.pid ?? 0, fuseMounted: false, fuseExit: { code: null }, fuseOut: () => out, loop: '', mounted: false };
  fuse.on('exit', (code) => { st.fuseExit.code = code ?? -1; });
  stacks.push(st);
  for (let i = 0; i < 300 && !existsSync(pidFile) && st.fuseExit.code === null; i++) await sleep(100);
  if (!existsSync(pidFile)) {
    if (/fuse: device not found|permission denied|Operation not permitted|fusermount/i.test(out)) return `FUSE mount not possible here: ${out.trim()}`;
    throw new Error(`nbdfuse did not become ready (exit ${st.fuseExit.code}): ${out}`);
  }
  st.fuseMounted = true;
  const lo = await run('losetup', ['-f', '--show', join(fuseDir, 'nbd')], { timeoutMs: 30_000 });
  if (lo.code !== 0) return `loop device not available: ${lo.stderr.trim()}`;
  st.loop = lo.stdout.trim();
  return st;
}

async function mount(st: Stack): Promise<string | null> {
  const m = await run('mount', ['-t', 'ext4', st.loop, st.fsDir], { timeoutMs: 60_000 });
  if (m.code !== 0) return describe(m);
  st.mounted = true;
  return null;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

for (const how of ['SIGTERM', 'SIGKILL'] as const) {
  const title = how === 'SIGTERM'
    ? 'ext4 across a daemon restart: files synced, umount, SIGTERM, restart on the same cache: every file intact, fsck clean'
    : 'ext4 across a crash: files synced, SIGKILL of supervisor and coordinator, restart on the same cache: every file intact, fsck clean';
  (why ? test.skip : test)(`${title}${skipSuffix(why)}`, async (t) => {
    t.timeout(420_000, 'ext4 across a restart');
    const dir = freshDir();
    const daemons: Daemon[] = [];
    const stacks: Stack[] = [];
    const coords: number[] = [];
    t.teardown(async () => {
      for (const st of stacks.reverse()) await unwind(st);
      for (const x of daemons.reverse()) await x.dispose();
      for (const c of coords) if (pidRunning(c)) { try { process.kill(c, 'SIGKILL'); } catch { /* gone */ } }
      rmSync(dir, { recursive: true, force: true });
    });
    const fuseDir = join(dir, 'fuse');
    const fsDir = join(dir, 'fs');
    mkdirSync(fuseDir);
    mkdirSync(fsDir);

    // 1. First run: mkfs, files, sync.
    // Writeback throttled to 1 MiB/s: most of what is written is still only in the cache at the stop.
    const d1 = await startDaemon({ dir, name: 'vol-ext4', originSize: SIZE, cacheSize: '64M', env: { PCACHED_WRITEBACK_RATE: '1MiB' } });
    daemons.push(d1);
    const coord1 = await coordinatorPid(d1.control);
    coords.push(coord1);
    const s1 = await attach(d1, fuseDir, fsDir, '1', stacks);
    if (typeof s1 === 'string') return skipWithReason(t, s1);
    await runOk('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', s1.loop], { timeoutMs: 120_000 });
    const mErr = await mount(s1);
    if (mErr) return skipWithReason(t, `mount not permitted here: ${mErr}`);

    const sums = new Map<string, string>();
    for (let i = 0; i < 300; i++) {
      const rel = `d${i % 5}/s${i}.dat`;
      mkdirSync(join(fsDir, `d${i % 5}`), { recursive: true });
      // 0 bytes up to a few blocks, some of them unaligned.
      const data = i % 3 === 0 ? Buffer.from(`small file ${i}\n`.repeat(i % 50)) : randomBytes((i * 997) % 12_000);
      writeFileSync(join(fsDir, rel), data);
      sums.set(rel, sha(data));
    }
    const big = randomBytes(20 * 1024 * 1024);
    writeFileSync(join(fsDir, 'big.bin'), big);
    sums.set('big.bin', sha(big));
    await runOk('sync', [], { timeoutMs: 120_000 });
    const before = (await statusJson(d1.control)).caches[0]!.cacheState!;
    t.deepEqual(before.errors, []);
    t.log(`after sync: ${before.dirtyBlocks} dirty blocks in the cache (key head ${before.keyHead}, dirty tail ${before.dirtyTail})`);
    t.true(before.dirtyBlocks > 0, 'the restart has dirty data to replay');

    // 2. Stop the daemon.
    if (how === 'SIGTERM') {
      await runOk('umount', [fsDir], { timeoutMs: 60_000 });
      s1.mounted = false;
      await runOk('losetup', ['-d', s1.loop], { timeoutMs: 30_000 });
      s1.loop = '';
      await runOk('fusermount3', ['-u', fuseDir], { timeoutMs: 30_000 });
      s1.fuseMounted = false;
      await waitFor('nbdfuse to exit', () => s1.fuseExit.code !== null, 10_000, 100);
      t.is(s1.fuseExit.code, 0, `nbdfuse exit: ${s1.fuseOut()}`);
      t.is(await d1.stop('SIGTERM'), 0, d1.stderr());
    } else {
      // Both at once, still mounted: nothing gets to drain, write back or flush on the way out.
      process.kill(coord1, 'SIGKILL');
      t.is(await d1.kill9(), 128 + 9);
      // The filesystem above is now on a dead device: take it apart (its writes fail, that is expected).
      await unwind(s1);
    }
    await waitFor(`coordinator ${coord1} to exit`, () => !pidRunning(coord1), 15_000, 50);

    // 3. Second run on the same cache and origin: everything is there.
    const d2 = await startDaemon({ dir, name: 'vol-ext4', originFile: d1.origin, cacheSize: '64M' });
    daemons.push(d2);
    coords.push(await coordinatorPid(d2.control));
    const s2 = await attach(d2, fuseDir, fsDir, '2', stacks);
    if (typeof s2 === 'string') { t.fail(`second attach failed: ${s2}`); return; }
    const m2 = await mount(s2);
    t.is(m2, null, 'the filesystem mounts again (the journal replays after the crash)');
    if (m2) return;
    let bad = 0;
    for (const [rel, sum] of sums) {
      let got = '';
      try { got = sha(readFileSync(join(fsDir, rel))); } catch (err) { got = (err as Error).message; }
      if (got !== sum && bad++ < 10) t.is(got, sum, `${rel} content after the restart`);
    }
    t.is(bad, 0, `${bad} of ${sums.size} files differ or are missing after the restart`);
    let listed = 0;
    for (let k = 0; k < 5; k++) listed += readdirSync(join(fsDir, `d${k}`)).length;
    t.is(listed, 300, 'all small files are listed');
    await runOk('umount', [fsDir], { timeoutMs: 60_000 });
    s2.mounted = false;
    const fsck = await run('fsck.ext4', ['-fn', s2.loop], { timeoutMs: 120_000 });
    t.is(fsck.code, 0, describe(fsck));
    t.deepEqual((await statusJson(d2.control)).caches[0]!.cacheState?.errors ?? [], []);

    await runOk('losetup', ['-d', s2.loop], { timeoutMs: 30_000 });
    s2.loop = '';
    await runOk('fusermount3', ['-u', fuseDir], { timeoutMs: 30_000 });
    s2.fuseMounted = false;
    await waitFor('nbdfuse to exit', () => s2.fuseExit.code !== null, 10_000, 100);
    t.is(s2.fuseExit.code, 0, `nbdfuse exit: ${s2.fuseOut()}`);
    t.is(await d2.stop('SIGTERM'), 0, d2.stderr());
  });
}
