// The C addon (src/native): its calls on real (sparse) files, argument checking, and loading in
// worker threads. Skipped as a whole when the addon is not built (the fallback is tested in
// origin-file.test.ts).

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { native, nativeAvailable, nativeUnavailableReason } from '../src/native/index.js';

const KiB = 1024;
const { ENXIO, ENOTTY, EBADF, EINVAL, EWOULDBLOCK } = os.constants.errno;
const maybe = nativeAvailable() ? test : test.skip;
const n = native!;

function tempFile(t: import('ava').ExecutionContext, size: number): { path: string; fd: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-'));
  const file = path.join(dir, 'f');
  const fd = fs.openSync(file, 'w+');
  fs.ftruncateSync(fd, size);
  t.teardown(() => {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { path: file, fd };
}

/** Runs `body` (CommonJS, with `parentPort`) in a fresh worker thread and returns what it posts. */
function inWorker(body: string, env: NodeJS.ProcessEnv = process.env): Promise<unknown> {
  const worker = new Worker(`const { parentPort } = require('node:worker_threads');\n${body}`, { eval: true, env });
  return new Promise((resolve, reject) => {
    worker.once('message', (m) => {
      resolve(m);
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`worker exited with ${code} before answering`)));
  });
}

const nativeIndexUrl = new URL('../src/native/index.js', import.meta.url).href;

test('the addon is available or the reason is known', (t) => {
  if (nativeAvailable()) {
    t.is(nativeUnavailableReason(), null);
  } else {
    t.log(`native addon unavailable, its tests are skipped: ${nativeUnavailableReason()}`);
    t.truthy(nativeUnavailableReason());
  }
});

maybe('exports the Linux fallocate mode bits', (t) => {
  t.is(n.FALLOC_FL_KEEP_SIZE, 0x01);
  t.is(n.FALLOC_FL_PUNCH_HOLE, 0x02);
  t.is(n.FALLOC_FL_ZERO_RANGE, 0x10);
});

maybe('punching a hole shows up in SEEK_DATA/SEEK_HOLE and reads as zeros', (t) => {
  const { fd } = tempFile(t, 0);
  fs.writeSync(fd, Buffer.alloc(192 * KiB, 0xab), 0, 192 * KiB, 0);
  t.is(n.seekHole(fd, 0), 192 * KiB, 'fully written file: the only hole is EOF');
  const blocksBefore = fs.fstatSync(fd).blocks;

  t.is(n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 64 * KiB, 64 * KiB), 0);
  t.is(n.seekHole(fd, 0), 64 * KiB);
  t.is(n.seekData(fd, 64 * KiB), 128 * KiB);
  t.is(fs.fstatSync(fd).size, 192 * KiB, 'KEEP_SIZE');
  t.true(fs.fstatSync(fd).blocks < blocksBefore);
  const middle = Buffer.alloc(64 * KiB, 1);
  fs.readSync(fd, middle, 0, middle.length, 64 * KiB);
  t.true(middle.every((b) => b === 0));
});

maybe('ZERO_RANGE zeroes without deallocating', (t) => {
  const { fd } = tempFile(t, 0);
  fs.writeSync(fd, Buffer.alloc(128 * KiB, 0xcd), 0, 128 * KiB, 0);
  fs.fdatasyncSync(fd);
  const blocksBefore = fs.fstatSync(fd).blocks;
  t.is(n.fallocate(fd, n.FALLOC_FL_ZERO_RANGE | n.FALLOC_FL_KEEP_SIZE, 32 * KiB, 64 * KiB), 0);
  t.is(fs.fstatSync(fd).blocks, blocksBefore);
  const buf = Buffer.alloc(128 * KiB);
  fs.readSync(fd, buf, 0, buf.length, 0);
  t.true(buf.subarray(0, 32 * KiB).every((b) => b === 0xcd));
  t.true(buf.subarray(32 * KiB, 96 * KiB).every((b) => b === 0));
  t.true(buf.subarray(96 * KiB).every((b) => b === 0xcd));
});

maybe('SEEK_DATA on a fully sparse file and past EOF is -ENXIO', (t) => {
  const { fd } = tempFile(t, 1024 * KiB);
  t.is(n.seekData(fd, 0), -ENXIO);
  t.is(n.seekHole(fd, 0), 0);
  t.is(n.seekHole(fd, 1024 * KiB), -ENXIO);
  t.is(n.seekData(fd, 2 ** 40), -ENXIO);
});

maybe('errors come back as -errno, not exceptions', (t) => {
  const { fd } = tempFile(t, 64 * KiB);
  t.is(n.blkGetSize64(fd), -ENOTTY, 'not a block device');
  t.is(n.blkDiscard(fd, 0, 4096), -ENOTTY);
  t.is(n.blkZeroOut(fd, 0, 4096), -ENOTTY);
  t.is(n.fallocate(fd, n.FALLOC_FL_PUNCH_HOLE | n.FALLOC_FL_KEEP_SIZE, 0, 0), -EINVAL, 'zero length');
  t.is(n.fallocate(fd, 0, -1, 10), -EINVAL);
  t.is(n.blkDiscard(fd, -4096, 4096), -EINVAL, 'negative ranges are refused before the kernel sees a huge u64');
  t.is(n.fallocate(fd, -1, 0, 10), -EINVAL);
  const closed = fs.openSync(os.devNull, 'r');
  fs.closeSync(closed);
  t.is(n.seekData(closed, 0), -EBADF);
  t.is(n.fallocate(closed, 0, 0, 4096), -EBADF);
});

maybe('malformed arguments throw a TypeError instead of crashing', (t) => {
  const loose = n as unknown as Record<string, (...args: unknown[]) => number>;
  const bad: Array<[string, unknown[], string]> = [
    ['fallocate', ['3', 0, 0, 1], 'ERR_INVALID_ARG_TYPE'],
    ['fallocate', [3, 0, 0], 'ERR_MISSING_ARGS'],
    ['seekData', [3, 1.5], 'ERR_INVALID_ARG_TYPE'],
    ['seekHole', [3, Number.NaN], 'ERR_INVALID_ARG_TYPE'],
    ['seekHole', [3, 2 ** 60], 'ERR_INVALID_ARG_TYPE'],
    ['blkGetSize64', [], 'ERR_MISSING_ARGS'],
    ['blkDiscard', [2 ** 40, 0, 0], 'ERR_INVALID_ARG_TYPE'],
    ['blkZeroOut', [3, 0n, 0], 'ERR_INVALID_ARG_TYPE'],
    ['flock', [3], 'ERR_MISSING_ARGS'],
    ['flock', [3, '2'], 'ERR_INVALID_ARG_TYPE'],
    ['fadvise', [3, 0, 0], 'ERR_MISSING_ARGS'],
    ['fadvise', [3, 0, 0.5, 4], 'ERR_INVALID_ARG_TYPE'],
  ];
  for (const [fn, args, code] of bad) {
    const err = t.throws(() => loose[fn](...args), { instanceOf: TypeError }, `${fn}(${args.map(String).join(', ')})`);
    t.is((err as NodeJS.ErrnoException | undefined)?.code, code);
  }
});

maybe('exports the flock and fadvise constants of Linux', (t) => {
  t.is(n.LOCK_SH, 1);
  t.is(n.LOCK_EX, 2);
  t.is(n.LOCK_NB, 4);
  t.is(n.LOCK_UN, 8);
  t.is(n.POSIX_FADV_DONTNEED, 4);
});

maybe('flock: two open file descriptions of one file conflict, even in one process and through a hard link', (t) => {
  const { path: file, fd } = tempFile(t, 4 * KiB);
  const other = fs.openSync(file, 'r');
  const viaLink = path.join(path.dirname(file), 'hardlink');
  fs.linkSync(file, viaLink);
  const linked = fs.openSync(viaLink, 'r');
  t.teardown(() => { fs.closeSync(other); fs.closeSync(linked); });
  t.is(n.flock(fd, n.LOCK_EX | n.LOCK_NB), 0);
  t.is(n.flock(other, n.LOCK_EX | n.LOCK_NB), -EWOULDBLOCK, 'another description of the same file');
  t.is(n.flock(linked, n.LOCK_SH | n.LOCK_NB), -EWOULDBLOCK, 'the same inode through a hard link');
  // The kernel lists it in /proc/locks under this process's PID and the file's inode.
  const ino = fs.fstatSync(fd).ino;
  const mine = fs.readFileSync('/proc/locks', 'utf8').split('\n').filter((l) => / FLOCK /.test(l) && l.includes(`:${ino} `));
  t.true(mine.some((l) => l.includes(` WRITE ${process.pid} `)), mine.join('\n'));
  t.is(n.flock(fd, n.LOCK_UN), 0);
  t.is(n.flock(other, n.LOCK_SH | n.LOCK_NB), 0, 'free once unlocked');
  t.is(n.flock(linked, n.LOCK_SH | n.LOCK_NB), 0, 'shared locks coexist');
  t.is(n.flock(fd, n.LOCK_EX | n.LOCK_NB), -EWOULDBLOCK, 'an exclusive lock waits for the shared ones');
  const closed = fs.openSync(os.devNull, 'r');
  fs.closeSync(closed);
  t.is(n.flock(closed, n.LOCK_EX | n.LOCK_NB), -EBADF);
  t.is(n.flock(fd, -1), -EINVAL);
});

/** Bytes of `file` in the page cache (util-linux fincore), or null without fincore or on tmpfs. */
function residentBytes(file: string): number | null {
  const fsType = spawnSync('stat', ['-f', '-c', '%T', file], { encoding: 'utf8' }).stdout.trim();
  if (fsType === 'tmpfs') return null;
  const r = spawnSync('fincore', ['-b', '-n', '-o', 'RES', file], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.trim()) : null;
}

maybe('fadvise(DONTNEED) drops a synced range from the page cache; bad advice, ranges and fds are -errno', (t) => {
  const { path: file, fd } = tempFile(t, 0);
  fs.writeSync(fd, Buffer.alloc(256 * KiB, 0x5a), 0, 256 * KiB, 0);
  fs.fdatasyncSync(fd);
  const before = residentBytes(file);
  t.is(n.fadvise(fd, 64 * KiB, 64 * KiB, n.POSIX_FADV_DONTNEED), 0);
  const partly = residentBytes(file);
  t.is(n.fadvise(fd, 0, 0, n.POSIX_FADV_DONTNEED), 0, 'length 0: to the end of the file');
  const after = residentBytes(file);
  if (before === null || partly === null || after === null) {
    t.log('fincore unavailable (or tmpfs): page cache residency not checked');
  } else {
    t.is(before, 256 * KiB, 'written and synced: resident');
    // The kernel drops whole folios only, and one folio may span the whole range: at most less.
    t.true(partly <= before, `${partly} bytes resident after dropping 64 KiB`);
    t.is(after, 0, 'the whole file is gone');
  }
  // What it dropped is read again from the device, unchanged.
  const buf = Buffer.alloc(256 * KiB);
  fs.readSync(fd, buf, 0, buf.length, 0);
  t.true(buf.every((b) => b === 0x5a));
  t.is(n.fadvise(fd, 0, 0, 999), -EINVAL);
  t.is(n.fadvise(fd, -1, 0, n.POSIX_FADV_DONTNEED), -EINVAL);
  const closed = fs.openSync(os.devNull, 'r');
  fs.closeSync(closed);
  t.is(n.fadvise(closed, 0, 0, n.POSIX_FADV_DONTNEED), -EBADF);
});

maybe('loads in worker threads (context-aware), side by side with the main thread', async (t) => {
  const { path: file, fd } = tempFile(t, 0);
  fs.writeSync(fd, Buffer.alloc(4 * KiB, 1), 0, 4 * KiB, 64 * KiB);
  const body = `
    import(${JSON.stringify(nativeIndexUrl)}).then((m) => {
      const fs = require('node:fs');
      const fd = fs.openSync(${JSON.stringify(file)}, 'r');
      const answer = { available: m.nativeAvailable(), data: m.native.seekData(fd, 0), hole: m.native.seekHole(fd, 64 * 1024) };
      fs.closeSync(fd);
      parentPort.postMessage(answer);
    });`;
  const answers = await Promise.all([inWorker(body), inWorker(body), inWorker(body)]);
  for (const answer of answers) t.deepEqual(answer, { available: true, data: 64 * KiB, hole: 68 * KiB });
  t.is(n.seekData(fd, 0), 64 * KiB, 'still usable on the main thread');
});

test('PCACHED_NO_NATIVE=1 disables the addon', async (t) => {
  const answer = await inWorker(
    `import(${JSON.stringify(nativeIndexUrl)}).then((m) => parentPort.postMessage({ available: m.nativeAvailable(), native: m.native, reason: m.nativeUnavailableReason() }));`,
    { ...process.env, PCACHED_NO_NATIVE: '1' },
  );
  t.deepEqual(answer, { available: false, native: null, reason: 'disabled by PCACHED_NO_NATIVE=1' });
});

maybe('sdNotify: bad addresses come back as -errno, bad argument types throw', (t) => {
  const { EAFNOSUPPORT, ENOENT, ECONNREFUSED, ENAMETOOLONG } = os.constants.errno;
  t.is(n.sdNotify!('vsock:2:1234', 'READY=1'), -EAFNOSUPPORT!);
  t.is(n.sdNotify!('', 'READY=1'), -EAFNOSUPPORT!);
  t.is(n.sdNotify!('/nonexistent/pcached-notify.sock', 'READY=1'), -ENOENT!);
  t.is(n.sdNotify!(`/${'x'.repeat(200)}`, 'READY=1'), -ENAMETOOLONG!);
  t.is(n.sdNotify!('/tmp/x.sock', `STATUS=${'x'.repeat(20_000)}`), -os.constants.errno.EMSGSIZE!);
  // Nobody bound this abstract name.
  t.is(n.sdNotify!(`@pcached-nobody-${process.pid}`, 'READY=1'), -ECONNREFUSED!);
  t.throws(() => (n.sdNotify as (a: unknown, b: unknown) => number)(3, 'READY=1'), { instanceOf: TypeError });
  t.throws(() => (n.sdNotify as (a: unknown) => number)('/x'), { instanceOf: TypeError });
});

maybe('sdNotify: one datagram reaches a listener on a path and on an abstract name', async (t) => {
  const { startNotifyListener } = await import('./helpers/service.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-notify-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const address of [path.join(dir, 'notify.sock'), `@pcached-native-${process.pid}`]) {
    const listener = await startNotifyListener(address);
    t.teardown(() => listener.proc.stop('SIGKILL'));
    const message = 'READY=1\nSTATUS=serving 1 cache: nbd+unix:///vol?socket=/x';
    t.is(n.sdNotify!(address, message), Buffer.byteLength(message));
    t.is(await listener.waitFor('READY=1', 10_000), message);
  }
});
