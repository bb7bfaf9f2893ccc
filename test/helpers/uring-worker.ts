// Runs inside a worker_thread: its own ring on its own loop. Does a batch of I/O, reports, and
// then simply returns; the test checks that the thread exits (an idle ring must not hold it).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { openAsyncIo } from '../../src/io/async-io.js';
import type { UringIo } from '../../src/io/uring.js';

const io = openAsyncIo({ backend: 'io_uring' }) as UringIo;
const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-uring-w-')), 'f');
const fd = fs.openSync(file, 'w+');
const N = 64;
let left = N;
let bad = 0;
for (let i = 0; i < N; i++) {
  const data = Buffer.alloc(4096, i);
  io.write(fd, data, i * 4096, (err, n) => {
    if (err || n !== 4096) bad++;
    const back = Buffer.alloc(4096);
    io.read(fd, back, i * 4096, (err2, m) => {
      if (err2 || m !== 4096 || !back.equals(data)) bad++;
      if (--left === 0) {
        fs.closeSync(fd);
        fs.rmSync(path.dirname(file), { recursive: true });
        parentPort!.postMessage({ backend: io.backend, bad, submits: io.submits });
      }
    });
  });
}
