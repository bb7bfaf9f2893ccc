// A real filesystem on the volume: nbdfuse exposes the export as a file, a loop device sits on
// that file, ext4 is made, mounted, written, remounted and verified, unmounted, and fsck must find
// it clean. Skipped with a printed reason where FUSE, loop devices or mount are unavailable.
// Everything is undone in teardown, even on failure: mounts, loop devices, the FUSE mount, nbdfuse.

import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, openSync, closeSync, fsyncSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from './helpers/daemon.js';
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
