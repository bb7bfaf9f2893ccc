// Positional I/O on a descriptor opened O_DIRECT (synchronous, plus asynchronous reads and
// gathered sector-aligned writes through an AsyncIo), for callers whose buffers, offsets and lengths are not aligned (the on-media format
// writes 32-byte kset headers, 128-byte records and 512-byte-aligned ksets). Every request is
// widened to whole sectors and goes through an aligned bounce buffer; a write that covers a sector
// only in part reads that sector first. Only sectors the request touches are rewritten, and each
// with its own old bytes, so a torn write can damage nothing outside them: the format already
// places what must survive apart in its own sectors (KSET_ALIGN = SECTOR).

import fs from 'node:fs';
import { alignedBuffer, isAligned } from './aligned.js';
import type { AsyncIo } from './async-io.js';
import { copyBytes } from '../util/copy-bytes.js';

export const SECTOR = 512;

/** [start, end) of the whole sectors that [off, off+len) touches. */
function sectorSpan(off: number, len: number): [number, number] {
  return [off - (off % SECTOR), Math.ceil((off + len) / SECTOR) * SECTOR];
}

/** Pooled bounce windows for unaligned asynchronous reads and gathered writes (larger ones get their own buffer). */
const WINDOW = 128 * 1024;
const MAX_WINDOWS = 64;

/** Reads until `buf` is full; end of file first is an error, as pread's. */
export function readFullyAsync(io: AsyncIo, fd: number, buf: Uint8Array, off: number, what: string, cb: (err: Error | null) => void): void {
  let got = 0;
  const step = (): void => {
    io.read(fd, got === 0 ? buf : buf.subarray(got), off + got, (err, n) => {
      if (err) { cb(err); return; }
      if (n === 0) { cb(Object.assign(new Error(`short read at ${off + got} of ${what}`), { code: 'ESHORT' })); return; }
      got += n;
      if (got < buf.length) step();
      else cb(null);
    });
  };
  step();
}

/** Writes all of `buf` at `off`, continuing short writes. */
function writeFullyAsync(io: AsyncIo, fd: number, buf: Uint8Array, off: number, cb: (err: Error | null) => void): void {
  let put = 0;
  const step = (): void => {
    io.write(fd, put === 0 ? buf : buf.subarray(put), off + put, (err, n) => {
      if (err) { cb(err); return; }
      put += n;
      if (put < buf.length) step();
      else cb(null);
    });
  };
  step();
}

export class DirectSync {
  private bounce: Buffer = alignedBuffer(1 << 20);
  private readonly windows: Buffer[] = [];

  constructor(private readonly fd: number, private readonly what: string) {}

  private window(len: number): Buffer {
    if (this.bounce.length < len) this.bounce = alignedBuffer(2 ** Math.ceil(Math.log2(len)));
    return this.bounce.subarray(0, len);
  }

  private readFull(buf: Uint8Array, off: number): void {
    let done = 0;
    while (done < buf.length) {
      const n = fs.readSync(this.fd, buf, done, buf.length - done, off + done);
      if (n === 0) throw Object.assign(new Error(`short read at ${off + done} of ${this.what}`), { code: 'ESHORT' });
      done += n;
    }
  }

  private writeFull(buf: Uint8Array, off: number): void {
    let done = 0;
    while (done < buf.length) done += fs.writeSync(this.fd, buf, done, buf.length - done, off + done);
  }

  pread(buf: Uint8Array, off: number): void {
    const [a0, a1] = sectorSpan(off, buf.length);
    if (a0 === off && a1 === off + buf.length && isAligned(buf)) { this.readFull(buf, off); return; }
    const w = this.window(a1 - a0);
    this.readFull(w, a0);
    copyBytes(buf, 0, w.subarray(off - a0, off - a0 + buf.length));
  }

  /** pread without blocking the thread, through `io`: straight into `buf` when it is aligned, else through a pooled window. */
  readAsync(io: AsyncIo, buf: Uint8Array, off: number, cb: (err: Error | null) => void): void {
    const [a0, a1] = sectorSpan(off, buf.length);
    if (a0 === off && a1 === off + buf.length && isAligned(buf)) { readFullyAsync(io, this.fd, buf, off, this.what, cb); return; }
    const len = a1 - a0;
    const pooled = len <= WINDOW ? this.windows.pop() ?? alignedBuffer(WINDOW) : null;
    const w = (pooled ?? alignedBuffer(len)).subarray(0, len);
    readFullyAsync(io, this.fd, w, a0, this.what, (err) => {
      if (!err) copyBytes(buf, 0, w.subarray(off - a0, off - a0 + buf.length));
      if (pooled && this.windows.length < MAX_WINDOWS) this.windows.push(pooled);
      cb(err);
    });
  }

  /**
   * A gathered write without blocking the thread, for whole sectors only (data runs are 4 KiB
   * aligned and padded): one aligned buffer goes straight, anything else is copied into one
   * aligned window (pooled when small), as pwritev does. A partial sector would need a
   * read-modify-write, which the callers that need it do synchronously.
   */
  writevAsync(io: AsyncIo, bufs: readonly Uint8Array[], off: number, cb: (err: Error | null) => void): void {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (off % SECTOR !== 0 || total % SECTOR !== 0) {
      process.nextTick(cb, Object.assign(new Error(`unaligned asynchronous direct write of ${total} bytes at ${off} of ${this.what}`), { code: 'EINVAL' }));
      return;
    }
    if (bufs.length === 1 && isAligned(bufs[0]!)) { writeFullyAsync(io, this.fd, bufs[0]!, off, cb); return; }
    const pooled = total <= WINDOW ? this.windows.pop() ?? alignedBuffer(WINDOW) : null;
    const w = (pooled ?? alignedBuffer(total)).subarray(0, total);
    let at = 0;
    for (const b of bufs) { copyBytes(w, at, b); at += b.length; }
    writeFullyAsync(io, this.fd, w, off, (err) => {
      if (pooled && this.windows.length < MAX_WINDOWS) this.windows.push(pooled);
      cb(err);
    });
  }

  pwrite(buf: Uint8Array, off: number): void {
    const [a0, a1] = sectorSpan(off, buf.length);
    if (a0 === off && a1 === off + buf.length && isAligned(buf)) { this.writeFull(buf, off); return; }
    const w = this.window(a1 - a0);
    if (a0 !== off) this.readFull(w.subarray(0, SECTOR), a0);
    const tail = a1 - SECTOR;
    if (a1 !== off + buf.length && (tail !== a0 || a0 === off)) this.readFull(w.subarray(tail - a0), tail);
    copyBytes(w, off - a0, buf);
    this.writeFull(w, a0);
  }

  /** A gathered write becomes one write of the concatenation (the copy costs far less than a device I/O). */
  pwritev(bufs: readonly Uint8Array[], off: number): void {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (off % SECTOR !== 0 || total % SECTOR !== 0) {
      let at = off;
      for (const b of bufs) { this.pwrite(b, at); at += b.length; }
      return;
    }
    const w = this.window(total);
    let at = 0;
    for (const b of bufs) { copyBytes(w, at, b); at += b.length; }
    this.writeFull(w, off);
  }
}
