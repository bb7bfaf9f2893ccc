import test, { type ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { LibuvIo, openAsyncIo, type AsyncIo } from '../src/io/async-io.js';
import type { UringIo } from '../src/io/uring.js';
import { native } from '../src/native/index.js';

// The tests need a working ring; where io_uring is missing or disabled they pass with a log line.
function uring(t: ExecutionContext): UringIo | null {
  try {
    const io = openAsyncIo({ backend: 'io_uring' }) as UringIo;
    t.teardown(() => io.close());
    return io;
  } catch (err) {
    t.log(`skipped: ${err instanceof Error ? err.message : String(err)}`);
    t.pass();
    return null;
  }
}

function tempFile(t: ExecutionContext, flags = 'w+'): { file: string; fd: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-uring-'));
  const file = path.join(dir, 'f');
  const fd = fs.openSync(file, flags);
  t.teardown(() => {
    try { fs.closeSync(fd); } catch {}
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { file, fd };
}

const rw = (io: AsyncIo, op: 'read' | 'write', fd: number, buf: Uint8Array, off: number) =>
  new Promise<number>((resolve, reject) => io[op](fd, buf, off, (err, n) => (err ? reject(err) : resolve(n))));
const sync = (io: AsyncIo, fd: number) =>
  new Promise<void>((resolve, reject) => io.fdatasync(fd, (err) => (err ? reject(err) : resolve())));

test('write, fdatasync, read round trip', async (t) => {
  const io = uring(t);
  if (!io) return;
  t.is(io.backend, 'io_uring');
  const { fd } = tempFile(t);
  const data = crypto.randomBytes(10000);
  t.is(await rw(io, 'write', fd, data, 4096), data.length);
  await sync(io, fd);
  const back = Buffer.alloc(20000);
  t.is(await rw(io, 'read', fd, back, 4096), data.length, 'a short read at EOF is returned as is');
  t.deepEqual(back.subarray(0, data.length), data);
});

test('256 concurrent random 4 KiB writes, then reads', async (t) => {
  const io = uring(t);
  if (!io) return;
  const { fd } = tempFile(t);
  const blocks = [...Array(1024).keys()].sort(() => Math.random() - 0.5).slice(0, 256);
  const data = blocks.map(() => crypto.randomBytes(4096));
  const written = await Promise.all(blocks.map((b, i) => rw(io, 'write', fd, data[i], b * 4096)));
  t.true(written.every((n) => n === 4096));
  const backs = blocks.map(() => Buffer.alloc(4096));
  const read = await Promise.all(blocks.map((b, i) => rw(io, 'read', fd, backs[i], b * 4096)));
  t.true(read.every((n) => n === 4096));
  t.true(backs.every((b, i) => b.equals(data[i])));
});

test('more requests than ring entries go through the overflow queue', async (t) => {
  let io: UringIo;
  try {
    io = openAsyncIo({ backend: 'io_uring', entries: 8 }) as UringIo;
  } catch (err) {
    t.log(`skipped: ${String(err)}`);
    t.pass();
    return;
  }
  t.teardown(() => io.close());
  const { fd } = tempFile(t);
  const data = crypto.randomBytes(100 * 512);
  await Promise.all([...Array(100).keys()].map((i) => rw(io, 'write', fd, data.subarray(i * 512, (i + 1) * 512), i * 512)));
  const back = Buffer.alloc(data.length);
  await Promise.all([...Array(100).keys()].map((i) => rw(io, 'read', fd, back.subarray(i * 512, (i + 1) * 512), i * 512)));
  t.deepEqual(back, data);
});

test('errors are Errors with code and negative errno: EBADF on a closed fd and on writing O_RDONLY', async (t) => {
  const io = uring(t);
  if (!io) return;
  const { file } = tempFile(t);
  // Not a just-closed fd: tests run concurrently and another one may reuse its number.
  const closedFd = 999_999;
  const e1 = await t.throwsAsync(rw(io, 'read', closedFd, Buffer.alloc(16), 0));
  t.is((e1 as NodeJS.ErrnoException).code, 'EBADF');
  t.is((e1 as NodeJS.ErrnoException).errno, -os.constants.errno.EBADF);
  const ro = fs.openSync(file, 'r');
  t.teardown(() => fs.closeSync(ro));
  const e2 = await t.throwsAsync(rw(io, 'write', ro, Buffer.alloc(16), 0));
  t.is((e2 as NodeJS.ErrnoException).code, 'EBADF');
  await t.throwsAsync(sync(io, -1), { code: 'EBADF' });
});

test('many requests issued in one turn go out in few submits', async (t) => {
  const io = uring(t);
  if (!io) return;
  const { fd } = tempFile(t);
  const before = io.submits;
  const ops = [...Array(200).keys()].map((i) => rw(io, 'write', fd, Buffer.alloc(4096, i), i * 4096));
  await Promise.all(ops);
  t.log(`200 writes in ${io.submits - before} submits`);
  t.true(io.submits - before <= 2);
});

test('a worker_thread has its own ring and exits with I/O idle', async (t) => {
  if (!uring(t)) return;
  const worker = new Worker(new URL('./helpers/uring-worker.js', import.meta.url));
  const exited = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('worker did not exit: the idle ring holds its loop')), 10000);
    worker.once('exit', (c) => { clearTimeout(timer); resolve(c); });
  });
  const msg = await new Promise<{ backend: string; bad: number; submits: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  t.is(msg.backend, 'io_uring');
  t.is(msg.bad, 0);
  t.is(await exited, 0);
});

test('a worker_thread that exits with I/O in flight and no close() tears down cleanly', async (t) => {
  if (!uring(t)) return;
  const url = new URL('../src/io/async-io.js', import.meta.url).href;
  const worker = new Worker(
    `import(${JSON.stringify(url)}).then((m) => {
      const fs = require('node:fs');
      const io = m.openAsyncIo({ backend: 'io_uring' });
      const fd = fs.openSync(${JSON.stringify(path.join(os.tmpdir(), `pcached-uring-exit-${process.pid}`))}, 'w+');
      for (let i = 0; i < 32; i++) io.write(fd, Buffer.alloc(65536, i), i * 65536, () => {});
      setImmediate(() => process.exit(0));
    });`,
    { eval: true },
  );
  const code = await new Promise<number>((resolve) => worker.once('exit', resolve));
  fs.rmSync(path.join(os.tmpdir(), `pcached-uring-exit-${process.pid}`), { force: true });
  t.is(code, 0);
});

test('close() with I/O in flight completes every callback (beyond the ring via libuv), never crashes', async (t) => {
  const io = openAsyncIo({ backend: 'auto', entries: 16 });
  if (io.backend !== 'io_uring') {
    t.log('skipped: io_uring unavailable');
    t.pass();
    return;
  }
  const { fd } = tempFile(t);
  const results: (string | number)[] = [];
  const all = [...Array(40).keys()].map(
    (i) => new Promise<void>((resolve) => io.write(fd, Buffer.alloc(8192, i), i * 8192, (err, n) => {
      results.push(err ? err.code! : n);
      resolve();
    })),
  );
  await Promise.resolve(); // the first 16 are submitted, the rest wait in the overflow queue
  io.close();
  await Promise.all(all);
  t.is(results.length, 40);
  t.true(results.every((r) => r === 8192), String(results));
  const back = Buffer.alloc(8192);
  fs.readSync(fd, back, 0, 8192, 39 * 8192);
  t.true(back.every((b) => b === 39));
  const late = await new Promise<string | undefined>((resolve) => io.read(fd, Buffer.alloc(8), 0, (err) => resolve(err?.code)));
  t.is(late, 'EBADF');
});

test('PCACHED_IO_BACKEND=libuv selects LibuvIo; an explicit libuv choice too', async (t) => {
  t.true(openAsyncIo({ backend: 'libuv' }) instanceof LibuvIo);
  const url = new URL('../src/io/async-io.js', import.meta.url).href;
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(url)}).then((m) => {
      const io = m.openAsyncIo({ backend: 'io_uring' });
      parentPort.postMessage({ backend: io.backend, libuv: io instanceof m.LibuvIo, reason: m.ioBackendUnavailableReason() });
    });`,
    { eval: true, env: { ...process.env, PCACHED_IO_BACKEND: 'libuv' } },
  );
  const msg = await new Promise<{ backend: string; libuv: boolean; reason: string }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  t.deepEqual(msg, { backend: 'libuv', libuv: true, reason: 'PCACHED_IO_BACKEND=libuv' });
});

test('O_DIRECT reads and writes through an aligned window', async (t) => {
  const io = uring(t);
  if (!io || !native?.addressMod) return;
  const { file } = tempFile(t);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  } catch (err) {
    t.log(`O_DIRECT unsupported on ${os.tmpdir()}: ${String(err)}`);
    return;
  }
  t.teardown(() => fs.closeSync(fd));
  const raw = Buffer.alloc(1024 * 1024 + 4096);
  const mod = native.addressMod(raw, 4096);
  const win = raw.subarray((4096 - mod) % 4096, (4096 - mod) % 4096 + 1024 * 1024);
  t.is(native.addressMod(win, 4096), 0);
  crypto.randomFillSync(win);
  const copy = Buffer.from(win);
  t.is(await rw(io, 'write', fd, win, 8192), win.length);
  await sync(io, fd);
  win.fill(0);
  t.is(await rw(io, 'read', fd, win, 8192), win.length);
  t.true(win.equals(copy));
  // Proof that O_DIRECT is really on: a file offset off the logical block size is refused.
  await t.throwsAsync(rw(io, 'read', fd, win.subarray(0, 4096), 8193), { code: 'EINVAL' });
});

test('a callback that throws does not lose the other completions of its batch', async (t) => {
  if (!uring(t)) return;
  const url = new URL('../src/io/async-io.js', import.meta.url).href;
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
    const fs = require('node:fs');
    let caught = 0, done = 0;
    process.on('uncaughtException', () => { caught++; });
    import(${JSON.stringify(url)}).then((m) => {
      const io = m.openAsyncIo({ backend: 'io_uring' });
      const fd = fs.openSync('/dev/zero', 'r');
      for (let i = 0; i < 20; i++) io.read(fd, Buffer.alloc(512), 0, () => {
        done++;
        if (i % 5 === 0) throw new Error('boom');
        if (done === 20) setImmediate(() => { io.close(); parentPort.postMessage({ caught, done }); });
      });
    });`,
    { eval: true },
  );
  const msg = await new Promise<{ caught: number; done: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  t.is(msg.done, 20);
  t.true(msg.caught >= 1);
});

test('close() right before the thread exits does not hang the exit', async (t) => {
  if (!uring(t)) return;
  const url = new URL('../src/io/async-io.js', import.meta.url).href;
  const worker = new Worker(
    `import(${JSON.stringify(url)}).then((m) => {
      const fs = require('node:fs');
      const io = m.openAsyncIo({ backend: 'io_uring' });
      const fd = fs.openSync('/dev/zero', 'r');
      for (let i = 0; i < 8; i++) io.read(fd, Buffer.alloc(4096), 0, () => {});
      queueMicrotask(() => { io.close(); process.exit(0); });
    });`,
    { eval: true },
  );
  const code = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('worker exit hung')), 10000);
    worker.once('exit', (c) => { clearTimeout(timer); resolve(c); });
  });
  t.is(code, 0);
});
