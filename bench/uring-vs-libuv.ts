// 4 KiB random O_DIRECT reads at QD32 against a 256 MiB file in os.tmpdir() (a real disk, so the
// page cache does not hide the backends), io_uring vs libuv's thread pool at 4 and 32 threads.
// Each cell runs in its own child: UV_THREADPOOL_SIZE only takes effect before the pool starts.
// Usage: node dist/bench/uring-vs-libuv.js [seconds=5]
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openAsyncIo } from '../src/io/async-io.js';
import { native } from '../src/native/index.js';

const FILE_SIZE = 256 * 1024 * 1024;
const BLOCK = 4096;
const QD = 32;

function cell(backend: 'io_uring' | 'libuv', file: string, seconds: number): void {
  const io = openAsyncIo({ backend, entries: 64 });
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  if (!native?.addressMod) throw new Error('the bench needs the native addon (addressMod) for aligned buffers');
  const raw = Buffer.alloc(QD * BLOCK + BLOCK);
  const start = (BLOCK - native.addressMod(raw, BLOCK)) % BLOCK;
  const blocks = FILE_SIZE / BLOCK;
  const deadline = performance.now() + seconds * 1000;
  let done = 0;
  let running = QD;
  const t0 = performance.now();
  const issue = (slot: number): void => {
    const buf = raw.subarray(start + slot * BLOCK, start + (slot + 1) * BLOCK);
    io.read(fd, buf, Math.floor(Math.random() * blocks) * BLOCK, (err, n) => {
      if (err || n !== BLOCK) throw err ?? new Error(`short read ${n}`);
      done++;
      if (performance.now() < deadline) issue(slot);
      else if (--running === 0) {
        const secs = (performance.now() - t0) / 1000;
        io.close();
        fs.closeSync(fd);
        console.log(JSON.stringify({ backend: io.backend, pool: process.env.UV_THREADPOOL_SIZE ?? '4', iops: Math.round(done / secs) }));
      }
    });
  };
  for (let s = 0; s < QD; s++) issue(s);
}

function main(): void {
  const seconds = Number(process.argv[2] ?? 5);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-bench-uring-'));
  const file = path.join(dir, 'data');
  try {
    const fd = fs.openSync(file, 'w');
    const chunk = crypto.randomBytes(4 * 1024 * 1024);
    for (let off = 0; off < FILE_SIZE; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const self = fileURLToPath(import.meta.url);
    const cells: [string, string][] = [['io_uring', '4'], ['libuv', '4'], ['libuv', '32']];
    console.log(`4 KiB random O_DIRECT reads, QD${QD}, ${seconds} s per cell, ${FILE_SIZE >> 20} MiB file in ${os.tmpdir()}`);
    for (const [backend, pool] of cells) {
      const r = spawnSync(process.execPath, [self, '--cell', backend, file, String(seconds)], {
        env: { ...process.env, UV_THREADPOOL_SIZE: pool, PCACHED_IO_BACKEND: '' },
        encoding: 'utf8',
      });
      if (r.status !== 0) throw new Error(`cell ${backend}/${pool} failed: ${r.stderr}`);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { backend: string; pool: string; iops: number };
      const label = out.backend === 'io_uring' ? 'io_uring' : `libuv (UV_THREADPOOL_SIZE=${out.pool})`;
      console.log(`${label.padEnd(32)} ${out.iops.toLocaleString('en-US').padStart(10)} IOPS`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--cell') cell(process.argv[3] as 'io_uring' | 'libuv', process.argv[4], Number(process.argv[5]));
else main();
