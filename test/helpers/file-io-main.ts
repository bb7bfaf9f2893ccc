// A separate process doing synchronous file I/O the way pcached's stripes do (fs.writeSync,
// fs.fdatasyncSync), for tests on a FUSE file: if the file hangs, only this child hangs, and
// the test kills it by PID on its timeout.
//
//   node dist/test/helpers/file-io-main.js FILE [--direct] OP...
//     write:OFFSET:LENGTH:BYTE   pwrite LENGTH bytes of BYTE
//     read:OFFSET:LENGTH         pread; reports the distinct byte values read
//     sync                       fdatasync
//
// Prints one JSON line per op: {"op":...,"ok":true[,"bytes":[...]]} or {"op":...,"error":"EIO"},
// and carries on after an error (the file stays open until the end); close() is reported only
// when it fails.

import { closeSync, constants, fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: file-io-main FILE [--direct] OP...\n');
  process.exit(2);
}
const direct = rest[0] === '--direct';
const ops = direct ? rest.slice(1) : rest;
const fd = openSync(file, constants.O_RDWR | (direct ? constants.O_DIRECT : 0));
for (const op of ops) {
  const [kind, a, b, c] = op.split(':');
  try {
    if (kind === 'write') {
      // FUSE puts no alignment rule on O_DIRECT buffers (a block device would).
      const buf = Buffer.alloc(Number(b), Number(c));
      writeSync(fd, buf, 0, buf.length, Number(a));
      console.log(JSON.stringify({ op, ok: true }));
    } else if (kind === 'read') {
      const buf = Buffer.alloc(Number(b));
      readSync(fd, buf, 0, buf.length, Number(a));
      console.log(JSON.stringify({ op, ok: true, bytes: [...new Set(buf)].sort((x, y) => x - y) }));
    } else if (kind === 'sync') {
      fdatasyncSync(fd);
      console.log(JSON.stringify({ op, ok: true }));
    } else {
      console.log(JSON.stringify({ op, error: 'unknown op' }));
    }
  } catch (err) {
    console.log(JSON.stringify({ op, error: (err as NodeJS.ErrnoException).code ?? String(err) }));
  }
}
try {
  closeSync(fd);
} catch (err) {
  // FUSE sends a FLUSH request on close(): a dead mount fails it.
  console.log(JSON.stringify({ op: 'close', error: (err as NodeJS.ErrnoException).code ?? String(err) }));
}
