// The C addon (src/native): its calls on real sparse files, argument checking, and loading in
// worker threads. Skipped as a whole when the addon is not built (the fallback is tested in
// origin-file.test.ts).

import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native, nativeAvailable, nativeUnavailableReason } from '../src/native/index.js';

const KiB = 1024;
const { ENXIO, ENOTTY, EBADF, EINVAL } = os.constants.errno;
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
  ];
  for (const [fn, args, code] of bad) {
    const err = t.throws(() => loose[fn](...args), { instanceOf: TypeError }, `${fn}(${args.map(String).join(', ')})`);
    t.is((err as NodeJS.ErrnoException | undefined)?.code, code);
  }
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
