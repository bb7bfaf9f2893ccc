// The file origin on sparse temp files, once with the addon and once with the portable
// fallback (native: null), plus the PCACHED_NO_NATIVE switch end to end, and a loop block
// device when this machine allows one. Errno conversion and mapping: errno.test.ts.

import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { native as loadedNative, type NativeBinding } from '../src/native/index.js';
import { openFileOrigin } from '../src/origin/file.js';
import type { Done, Extent, Origin, ZeroFlags } from '../src/origin/types.js';
import { isPcachedError } from '../src/util/errors.js';
import { directIoWorks } from './helpers/scratch.js';
import { alignedBuffer } from '../src/io/aligned.js';

const KiB = 1024;
const MiB = 1024 * KiB;
// Linux errnos, spelled out so the test does not share the code's constants.
const OK = 0, EPERM = 1, EINVAL = 22, ENOSPC = 28, ENOTSUP = 95, ESHUTDOWN = 108;
const DATA = 0, HOLE = 3;

/** Calls an origin method and resolves with its errno; the callback must run exactly once. */
function now(call: (cb: Done) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    let result: number | undefined;
    call((errno) => {
      if (result !== undefined) reject(new Error('callback called twice'));
      result = errno;
      resolve(errno);
    });
  });
}

function status(o: Origin, off: number, len: number, maxExtents = 64): Promise<{ err: number; extents: Extent[] }> {
  return new Promise((resolve) => o.blockStatus(off, len, maxExtents, (err, extents) => resolve({ err, extents })));
}

async function readAt(o: Origin, off: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len, 0x5a);
  const err = await now((cb) => o.read(off, buf, cb));
  if (err !== OK) throw new Error(`read(${off}, ${len}) failed with ${err}`);
  return buf;
}

const isZero = (buf: Uint8Array): boolean => buf.every((b) => b === 0);
const zeroFlags = (over: Partial<ZeroFlags> = {}): ZeroFlags => ({ noHole: false, fastZero: false, fua: false, ...over });

function tempDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A sparse file of `size` bytes with `fill` bytes written at each [offset, length]. */
function sparseFile(t: ExecutionContext, size: number, writes: Array<[number, number]> = [], fill = 0xab): string {
  const file = path.join(tempDir(t), 'origin');
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, size);
  for (const [off, len] of writes) fs.writeSync(fd, Buffer.alloc(len, fill), 0, len, off);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  return file;
}

const blocksOf = (file: string): number => fs.statSync(file).blocks;

interface Mode {
  name: string;
  native: NativeBinding | null;
}
const modes: Mode[] = [
  { name: 'native', native: loadedNative },
  { name: 'fallback', native: null },
];

for (const mode of modes) {
  const withAddon = mode.native !== null;
  const mtest = mode.name === 'native' && !withAddon ? test.skip : test;
  const open = (t: ExecutionContext, file: string, readOnly = false): Origin => {
    const o = openFileOrigin({ kind: 'file', path: file, readOnly }, { native: mode.native });
    t.teardown(() => o.close());
    return o;
  };
  const title = (s: string): string => `${mode.name}: ${s}`;

  mtest(title('describes itself and round-trips unaligned reads and writes'), async (t) => {
    const file = sparseFile(t, MiB);
    const o = open(t, file);
    t.is(o.size, MiB);
    t.is(o.description, `file:${file}`);
    t.false(o.synchronous);
    t.false(o.readOnly);
    t.is(o.canFastZero, withAddon);

    const data = randomBytes(10_000);
    t.is(await now((cb) => o.write(4097, data, false, cb)), OK);
    t.deepEqual((await readAt(o, 4097, data.length)), data);
    t.true(isZero((await readAt(o, 512 * KiB, 64 * KiB))), 'untouched sparse region reads as zeros');
    t.is(fs.statSync(file).size, MiB);
  });

  mtest(title('reads into and writes from SharedArrayBuffer views'), async (t) => {
    const o = open(t, sparseFile(t, MiB));
    const slab = new Uint8Array(new SharedArrayBuffer(64 * KiB));
    const src = slab.subarray(4 * KiB, 12 * KiB);
    src.set(randomBytes(src.length));
    t.is(await now((cb) => o.write(100 * KiB, src, false, cb)), OK);
    const dst = slab.subarray(32 * KiB, 40 * KiB);
    t.is(await now((cb) => o.read(100 * KiB, dst, cb)), OK);
    t.deepEqual(Buffer.from(dst), Buffer.from(src));
  });

  mtest(title('FUA writes and FLUSH succeed and land in the file'), async (t) => {
    const file = sparseFile(t, MiB);
    const o = open(t, file);
    const data = randomBytes(8 * KiB);
    t.is(await now((cb) => o.write(8 * KiB, data, true, cb)), OK);
    t.is(await now((cb) => o.flush(cb)), OK);
    t.deepEqual(fs.readFileSync(file).subarray(8 * KiB, 16 * KiB), data);
  });

  mtest(title('out-of-range and malformed requests are refused without touching the file'), async (t) => {
    const file = sparseFile(t, MiB);
    const o = open(t, file);
    t.is(await now((cb) => o.read(MiB - 10, Buffer.alloc(20), cb)), EINVAL);
    t.is(await now((cb) => o.write(MiB - 10, Buffer.alloc(20), false, cb)), ENOSPC);
    t.is(await now((cb) => o.trim(MiB, 1, false, cb)), ENOSPC);
    t.is(await now((cb) => o.zero(MiB - 1, 2, zeroFlags(), cb)), ENOSPC);
    t.is(fs.statSync(file).size, MiB, 'a write past the end must not grow the file');
    t.is(await now((cb) => o.read(-1, Buffer.alloc(1), cb)), EINVAL);
    t.is(await now((cb) => o.read(0.5, Buffer.alloc(1), cb)), EINVAL);
    t.is(await now((cb) => o.cache(MiB, 1, cb)), EINVAL);
    t.is(await now((cb) => o.cache(0, MiB, cb)), OK);
    t.is((await status(o, 0, 0)).err, EINVAL);
    t.is((await status(o, 0, 4096, 0)).err, EINVAL);
    t.is((await status(o, MiB - 1, 2)).err, EINVAL);
    t.deepEqual((await status(o, MiB - 1, 2)).extents, []);
  });

  mtest(title('TRIM punches a hole (or, without the addon, is a successful no-op)'), async (t) => {
    const file = sparseFile(t, 192 * KiB, [[0, 192 * KiB]]);
    const o = open(t, file);
    const blocks = blocksOf(file);
    t.is(await now((cb) => o.trim(64 * KiB, 64 * KiB, true, cb)), OK);
    if (withAddon) {
      t.deepEqual((await status(o, 0, 192 * KiB)).extents, [
        { length: 64 * KiB, flags: DATA },
        { length: 64 * KiB, flags: HOLE },
        { length: 64 * KiB, flags: DATA },
      ]);
      t.true(isZero((await readAt(o, 64 * KiB, 64 * KiB))));
      t.true(blocksOf(file) < blocks);
    } else {
      t.deepEqual((await status(o, 0, 192 * KiB)).extents, [{ length: 192 * KiB, flags: DATA }]);
      t.true((await readAt(o, 64 * KiB, 64 * KiB)).every((b) => b === 0xab), 'TRIM is only a hint');
    }
    t.true((await readAt(o, 0, 64 * KiB)).every((b) => b === 0xab));
    t.true((await readAt(o, 128 * KiB, 64 * KiB)).every((b) => b === 0xab));
    t.is(fs.statSync(file).size, 192 * KiB);
  });

  mtest(title('WRITE_ZEROES with NO_HOLE zeroes and keeps the space allocated'), async (t) => {
    const file = sparseFile(t, 256 * KiB, [[0, 256 * KiB]]);
    const o = open(t, file);
    const blocks = blocksOf(file);
    t.is(await now((cb) => o.zero(64 * KiB, 128 * KiB, zeroFlags({ noHole: true, fua: true }), cb)), OK);
    t.true(isZero((await readAt(o, 64 * KiB, 128 * KiB))));
    t.true((await readAt(o, 0, 64 * KiB)).every((b) => b === 0xab));
    t.true((await readAt(o, 192 * KiB, 64 * KiB)).every((b) => b === 0xab));
    t.is(blocksOf(file), blocks, 'nothing deallocated');
    // ext4 reports never-written (unwritten) extents as holes to SEEK_DATA, so the zeroed range
    // may show as HOLE|ZERO; both answers are true, and the ends stay data either way.
    const { err, extents } = (await status(o, 0, 256 * KiB));
    t.is(err, OK);
    t.is(extents[0].flags, DATA);
    t.is(extents.at(-1)!.flags, DATA);
    t.true(extents.every((e) => e.flags === DATA || e.flags === HOLE));
    t.is(extents.reduce((sum, e) => sum + e.length, 0), 256 * KiB);
  });

  mtest(title('WRITE_ZEROES without NO_HOLE punches (or writes zeros)'), async (t) => {
    const file = sparseFile(t, 256 * KiB, [[0, 256 * KiB]]);
    const o = open(t, file);
    const blocks = blocksOf(file);
    t.is(await now((cb) => o.zero(64 * KiB, 128 * KiB, zeroFlags(), cb)), OK);
    t.true(isZero((await readAt(o, 64 * KiB, 128 * KiB))));
    t.true((await readAt(o, 192 * KiB, 64 * KiB)).every((b) => b === 0xab));
    if (withAddon) {
      t.true(blocksOf(file) < blocks);
      t.deepEqual((await status(o, 64 * KiB, 128 * KiB)).extents, [{ length: 128 * KiB, flags: HOLE }]);
    } else {
      t.is(blocksOf(file), blocks);
    }
  });

  mtest(title('FAST_ZERO succeeds only when zeroing is cheap, and a refusal changes nothing'), async (t) => {
    const file = sparseFile(t, MiB, [[0, MiB]]);
    const o = open(t, file);
    const r = await now((cb) => o.zero(0, 128 * KiB, zeroFlags({ fastZero: true }), cb));
    if (withAddon) {
      t.is(r, OK);
      t.true(isZero((await readAt(o, 0, 128 * KiB))));
    } else {
      t.is(r, ENOTSUP);
      t.false(o.canFastZero);
      t.true((await readAt(o, 0, 128 * KiB)).every((b) => b === 0xab), 'no side effect');
    }
  });

  mtest(title('zeroing a large unaligned range crosses the 1 MiB chunking correctly'), async (t) => {
    const size = 4 * MiB;
    const file = sparseFile(t, size, [[0, size]]);
    const o = open(t, file);
    const off = 3 * KiB + 7;
    const len = 3 * MiB + 5;
    t.is(await now((cb) => o.zero(off, len, zeroFlags({ noHole: true }), cb)), OK);
    const all = (await readAt(o, 0, size));
    t.true(all.subarray(0, off).every((b) => b === 0xab));
    t.true(isZero(all.subarray(off, off + len)));
    t.true(all.subarray(off + len).every((b) => b === 0xab));
    t.is(await now((cb) => o.zero(5, 0, zeroFlags({ fastZero: withAddon }), cb)), OK, 'empty range');
  });

  mtest(title('BLOCK_STATUS of a fully sparse file'), async (t) => {
    const o = open(t, sparseFile(t, 4 * MiB));
    t.deepEqual((await status(o, 0, 4 * MiB)), { err: OK, extents: [{ length: 4 * MiB, flags: withAddon ? HOLE : DATA }] });
    t.deepEqual((await status(o, 12_345, 100_000)).extents, [{ length: 100_000, flags: withAddon ? HOLE : DATA }]);
  });

  mtest(title('BLOCK_STATUS of a file with data at the end'), async (t) => {
    const o = open(t, sparseFile(t, MiB, [[MiB - 64 * KiB, 64 * KiB]]));
    const expected = withAddon
      ? [{ length: MiB - 64 * KiB, flags: HOLE }, { length: 64 * KiB, flags: DATA }]
      : [{ length: MiB, flags: DATA }];
    t.deepEqual((await status(o, 0, MiB)).extents, expected);
  });

  mtest(title('BLOCK_STATUS of a range starting inside a hole and ending inside data'), async (t) => {
    // data [0, 64K), hole [64K, 192K), data [192K, 256K), hole to 1 MiB
    const o = open(t, sparseFile(t, MiB, [[0, 64 * KiB], [192 * KiB, 64 * KiB]]));
    const expected = withAddon
      ? [{ length: 92 * KiB, flags: HOLE }, { length: 28 * KiB, flags: DATA }]
      : [{ length: 120 * KiB, flags: DATA }];
    t.deepEqual((await status(o, 100 * KiB, 120 * KiB)).extents, expected, 'the last extent stops at off+len');
  });

  mtest(title('BLOCK_STATUS honours maxExtents with a prefix'), async (t) => {
    const o = open(t, sparseFile(t, MiB, [[0, 64 * KiB], [192 * KiB, 64 * KiB], [512 * KiB, 64 * KiB]]));
    const one = (await status(o, 0, MiB, 1)).extents;
    t.deepEqual(one, [{ length: withAddon ? 64 * KiB : MiB, flags: DATA }]);
    const two = (await status(o, 0, MiB, 2)).extents;
    if (withAddon) {
      t.deepEqual(two, [{ length: 64 * KiB, flags: DATA }, { length: 128 * KiB, flags: HOLE }]);
      const all = (await status(o, 0, MiB)).extents;
      t.is(all.length, 6);
      t.is(all.reduce((sum, e) => sum + e.length, 0), MiB);
      t.true(all.every((e, i) => i === 0 || e.flags !== all[i - 1].flags), 'adjacent extents differ');
    } else {
      t.deepEqual(two, [{ length: MiB, flags: DATA }]);
    }
  });

  mtest(title('read-only origins refuse every write with EPERM'), async (t) => {
    const file = sparseFile(t, MiB, [[0, 64 * KiB]]);
    fs.chmodSync(file, 0o444);
    const o = open(t, file, true);
    t.true(o.readOnly);
    t.false(o.canFastZero);
    t.is(await now((cb) => o.write(0, Buffer.alloc(512), false, cb)), EPERM);
    t.is(await now((cb) => o.trim(0, 4096, false, cb)), EPERM);
    t.is(await now((cb) => o.zero(0, 4096, zeroFlags(), cb)), EPERM);
    t.is(await now((cb) => o.zero(0, 4096, zeroFlags({ fastZero: true }), cb)), EPERM);
    t.is(await now((cb) => o.flush(cb)), OK);
    t.true((await readAt(o, 0, 64 * KiB)).every((b) => b === 0xab));
    t.is((await status(o, 0, MiB)).err, OK);
  });

  mtest(title('a closed origin answers ESHUTDOWN and closes once'), async (t) => {
    const o = openFileOrigin({ kind: 'file', path: sparseFile(t, MiB), readOnly: false }, { native: mode.native });
    await o.close();
    await o.close();
    t.is(await now((cb) => o.read(0, Buffer.alloc(1), cb)), ESHUTDOWN);
    t.is(await now((cb) => o.write(0, Buffer.alloc(1), false, cb)), ESHUTDOWN);
    t.is(await now((cb) => o.flush(cb)), ESHUTDOWN);
    t.is((await status(o, 0, 1)).err, ESHUTDOWN);
  });
}

test('unusable origins are refused with ERR_ORIGIN', async (t) => {
  const dir = tempDir(t);
  const bad: Array<[string, Parameters<typeof openFileOrigin>[0], RegExp]> = [
    ['missing file', { kind: 'file', path: path.join(dir, 'nope'), readOnly: false }, /ENOENT/],
    ['directory', { kind: 'file', path: dir, readOnly: true }, /neither a regular file nor a block device/],
    ['character device', { kind: 'file', path: os.devNull, readOnly: true }, /neither a regular file nor a block device/],
    ['empty path', { kind: 'file', path: '', readOnly: false }, /non-empty string/],
    ['O_DIRECT', { kind: 'file', path: sparseFile(t, MiB), readOnly: false, direct: true }, /O_DIRECT/],
  ];
  for (const [what, spec, msg] of bad) {
    const err = t.throws(() => openFileOrigin(spec), undefined, what);
    t.true(isPcachedError(err, 'ERR_ORIGIN'), what);
    t.regex(err?.message ?? '', msg, what);
  }
});

test('PCACHED_NO_NATIVE=1 selects the fallback end to end, inside a worker thread', async (t) => {
  const file = sparseFile(t, MiB, [[0, 64 * KiB]]);
  const fileUrl = new URL('../src/origin/file.js', import.meta.url).href;
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     import(${JSON.stringify(fileUrl)}).then((m) => {
       const o = m.openFileOrigin({ kind: 'file', path: ${JSON.stringify(file)}, readOnly: false });
       const answer = { canFastZero: o.canFastZero };
       o.zero(0, 4096, { noHole: false, fastZero: true, fua: false }, (err) => (answer.fastZero = err));
       o.trim(0, 4096, false, (err) => (answer.trim = err));
       o.blockStatus(0, 1048576, 8, (err, extents) => (answer.status = { err, extents }));
       o.close().then(() => parentPort.postMessage(answer));
     });`,
    { eval: true, env: { ...process.env, PCACHED_NO_NATIVE: '1' } },
  );
  const answer = await new Promise((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  await worker.terminate();
  t.deepEqual(answer, {
    canFastZero: false,
    fastZero: ENOTSUP,
    trim: OK,
    status: { err: OK, extents: [{ length: MiB, flags: DATA }] },
  });
  t.true(fs.readFileSync(file).subarray(0, 4096).every((b) => b === 0xab));
});

// A loop device gives the block-device paths real coverage; it needs root and losetup.
function attachLoop(t: ExecutionContext, size: number): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const backing = sparseFile(t, size);
  let dev: string;
  try {
    dev = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
  // Registered after tempDir's teardown, so it runs first (teardowns run in reverse).
  t.teardown(() => {
    execFileSync('losetup', ['--detach', dev], { stdio: 'ignore' });
  });
  return dev;
}

test.serial('block device origin (loop device): size, I/O, zeroing, trim, status', async (t) => {
  const size = 8 * MiB;
  const dev = attachLoop(t, size);
  if (dev === undefined) {
    t.log('skipped: needs root and a working losetup');
    t.pass();
    return;
  }
  for (const mode of modes) {
    if (mode.name === 'native' && mode.native === null) continue;
    const o = openFileOrigin({ kind: 'file', path: dev, readOnly: false }, { native: mode.native });
    try {
      t.is(o.size, size, `${mode.name}: size (${mode.native ? 'BLKGETSIZE64' : 'sysfs'})`);
      t.is(o.canFastZero, mode.native !== null);
      const data = randomBytes(MiB);
      t.is(await now((cb) => o.write(0, data, true, cb)), OK);
      t.deepEqual((await readAt(o, 0, MiB)), data);
      // Unaligned on both ends: the addon zeroes the aligned middle and writes the edges.
      t.is(await now((cb) => o.zero(1000, 100_000, zeroFlags({ noHole: true }), cb)), OK);
      const after = (await readAt(o, 0, MiB));
      t.deepEqual(after.subarray(0, 1000), data.subarray(0, 1000));
      t.true(isZero(after.subarray(1000, 101_000)));
      t.deepEqual(after.subarray(101_000), data.subarray(101_000));
      t.is(await now((cb) => o.zero(200 * KiB, 64 * KiB, zeroFlags(), cb)), OK);
      t.true(isZero((await readAt(o, 200 * KiB, 64 * KiB))));
      t.is(await now((cb) => o.zero(0, 4096, zeroFlags({ fastZero: true }), cb)), mode.native ? OK : ENOTSUP);
      t.is(await now((cb) => o.trim(512 * KiB, 100 * KiB + 3, true, cb)), OK);
      t.deepEqual((await status(o, 4096, MiB, 1)).extents, [{ length: MiB, flags: DATA }]);
      t.is(await now((cb) => o.flush(cb)), OK);
    } finally {
      void o.close();
    }
  }
});

(loadedNative?.addressMod ? test : test.skip)('directWrites: aligned writes take the O_DIRECT descriptor, the rest the page cache, and reads see both in order', async (t) => {
  const file = sparseFile(t, 4 * MiB, [[0, 4 * MiB]], 0x11);
  const direct = directIoWorks(path.dirname(file));
  const o = openFileOrigin({ kind: 'file', path: file, readOnly: false, directWrites: true });
  t.teardown(() => o.close());
  t.is(o.writeAlign, direct ? 4096 : undefined);
  // The page cache holds the old bytes first: a direct write must not leave them to be read.
  t.true((await readAt(o, 0, 64 * KiB)).every((b) => b === 0x11));
  const aligned = alignedBuffer(16 * KiB);
  aligned.fill(0x22);
  t.is(await now((cb) => o.write(8 * KiB, aligned, false, cb)), OK);
  t.is(o.directWrites, direct ? 1 : 0);
  // Unaligned offset, length or memory: buffered, over the direct write's range (order kept).
  const odd = Buffer.alloc(4096 + 1, 0x33).subarray(1);
  t.is(await now((cb) => o.write(12 * KiB, odd, false, cb)), OK);
  t.is(await now((cb) => o.write(20 * KiB + 512, Buffer.alloc(512, 0x44), false, cb)), OK);
  t.is(o.directWrites, direct ? 1 : 0);
  // And a direct write over bytes just written through the page cache.
  const again = alignedBuffer(4096);
  again.fill(0x55);
  t.is(await now((cb) => o.write(12 * KiB, again, false, cb)), OK);
  t.is(o.directWrites, direct ? 2 : 0);
  t.is(await now((cb) => o.flush(cb)), OK);
  const want = Buffer.alloc(64 * KiB, 0x11);
  want.fill(0x22, 8 * KiB, 24 * KiB);
  want.fill(0x55, 12 * KiB, 16 * KiB);
  want.fill(0x44, 20 * KiB + 512, 21 * KiB);
  t.deepEqual(await readAt(o, 0, 64 * KiB), want);
  await o.close();
  const onDisk = Buffer.alloc(64 * KiB);
  const fd = fs.openSync(file, 'r');
  try { fs.readSync(fd, onDisk, 0, onDisk.length, 0); } finally { fs.closeSync(fd); }
  t.deepEqual(onDisk, want);
});
