// The io_uring backend of AsyncIo: SQEs are prepared as calls come and submitted once per JS turn
// (one io_uring_enter for a whole batch), completions arrive in batches on this thread's loop.

import fs from 'node:fs';
import os from 'node:os';
import type { AsyncIo, IoCallback } from './async-io.js';
import type { NativeBinding, UringHandle } from '../native/index.js';

type Op = 0 | 1 | 2;
interface Req { op: Op; fd: number; buf: Uint8Array | null; off: number; cb: IoCallback }

const errnoNames = new Map<number, string>(Object.entries(os.constants.errno).map(([k, v]) => [v, k]));

function ioError(res: number, op: Op): NodeJS.ErrnoException {
  const code = errnoNames.get(-res) ?? `E${-res}`;
  const err: NodeJS.ErrnoException = new Error(`${code}: io_uring ${['read', 'write', 'fdatasync'][op]} failed`);
  err.code = code;
  err.errno = res;
  err.syscall = ['read', 'write', 'fdatasync'][op];
  return err;
}

function viaLibuv(req: Req): void {
  if (req.op === 2) fs.fdatasync(req.fd, (err) => req.cb(err, 0));
  else if (req.op === 0) fs.read(req.fd, req.buf!, 0, req.buf!.length, req.off, req.cb);
  else fs.write(req.fd, req.buf!, 0, req.buf!.length, req.off, req.cb);
}

type UringFns = Required<Pick<NativeBinding, 'uringOpen' | 'uringPrep' | 'uringSubmit' | 'uringClose'>>;

export class UringIo implements AsyncIo {
  readonly backend = 'io_uring' as const;
  /** io_uring_enter calls made for submission (tests check that batching works). */
  submits = 0;
  private readonly handle: UringHandle;
  // Slot i holds the request with id i: keeps its buffer referenced (GC must not free memory the
  // kernel writes into) until its completion is reaped.
  private readonly slots: (Req | null)[];
  private readonly free: number[] = [];
  private readonly overflow: Req[] = [];
  private submitScheduled = false;
  private closed = false;

  /** Throws with the errno when the ring cannot be created (the caller then falls back). */
  constructor(private readonly n: UringFns, entries = 256) {
    const h = n.uringOpen(entries, (count, ids, res) => this.complete(count, ids, res));
    if (typeof h === 'number') {
      const err = ioError(h, 0);
      err.message = `io_uring_setup failed: ${err.code}`;
      throw err;
    }
    this.handle = h;
    this.slots = new Array(entries).fill(null);
    for (let i = entries - 1; i >= 0; i--) this.free.push(i);
  }

  read(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void {
    this.issue({ op: 0, fd, buf, off, cb });
  }
  write(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void {
    this.issue({ op: 1, fd, buf, off, cb });
  }
  fdatasync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void {
    this.issue({ op: 2, fd, buf: null, off: 0, cb: (err) => cb(err) });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const pairs = this.n.uringClose(this.handle);
    const done: [Req, number][] = [];
    for (let i = 0; i < pairs.length; i += 2) {
      const req = this.slots[pairs[i]];
      this.slots[pairs[i]] = null;
      if (req) done.push([req, pairs[i + 1]]);
    }
    // Prepared but never accepted by the kernel (its submit failed): never ran.
    for (let i = 0; i < this.slots.length; i++) {
      const req = this.slots[i];
      if (req) done.push([req, -os.constants.errno.ECANCELED]);
      this.slots[i] = null;
    }
    // Callbacks never run inside close(): callers may hold locks or be mid-iteration.
    if (done.length > 0) process.nextTick(() => { for (const [req, res] of done) this.finish(req, res); });
    // Queued beyond the ring: the interface promises they still complete, so libuv runs them.
    for (const req of this.overflow.splice(0)) viaLibuv(req);
  }

  private issue(req: Req): void {
    if (this.closed) {
      process.nextTick(() => this.finish(req, -os.constants.errno.EBADF));
      return;
    }
    if (this.overflow.length > 0 || !this.prep(req)) this.overflow.push(req);
  }

  /** false when no slot or SQE is free right now. */
  private prep(req: Req): boolean {
    const id = this.free.pop();
    if (id === undefined) return false;
    let r = this.n.uringPrep(this.handle, req.op, req.fd, req.buf, req.off, id);
    if (r === -os.constants.errno.EBUSY) {
      // SQ full of prepared entries: hand them to the kernel now and retry once.
      this.submit();
      r = this.n.uringPrep(this.handle, req.op, req.fd, req.buf, req.off, id);
    }
    if (r < 0) {
      this.free.push(id);
      if (r === -os.constants.errno.EBUSY) return false;
      process.nextTick(() => this.finish(req, r));
      return true;
    }
    this.slots[id] = req;
    if (!this.submitScheduled) {
      this.submitScheduled = true;
      queueMicrotask(() => this.submit());
    }
    return true;
  }

  private submit(): void {
    this.submitScheduled = false;
    if (this.closed) return;
    const r = this.n.uringSubmit(this.handle);
    if (r !== 0) this.submits++;
    if (r < 0 && r !== -os.constants.errno.EAGAIN && r !== -os.constants.errno.EBUSY) {
      // The ring itself is broken: fail what it holds rather than retry forever.
      this.close();
      return;
    }
    // EAGAIN/EBUSY: the kernel is short of resources; what stays prepared goes with the next submit.
    if (r < 0 && !this.submitScheduled) {
      this.submitScheduled = true;
      setImmediate(() => this.submit());
    }
  }

  private complete(count: number, ids: Float64Array, res: Int32Array): void {
    // The CQ is already consumed: a throwing callback must not lose the rest of the batch.
    let thrown: { err: unknown } | null = null;
    for (let i = 0; i < count; i++) {
      const id = ids[i];
      const req = this.slots[id];
      this.slots[id] = null;
      this.free.push(id);
      if (!req) continue;
      try {
        this.finish(req, res[i]);
      } catch (err) {
        thrown ??= { err };
      }
    }
    while (this.overflow.length > 0 && !this.closed && this.prep(this.overflow[0])) this.overflow.shift();
    if (thrown) throw thrown.err;
  }

  private finish(req: Req, res: number): void {
    if (res < 0) req.cb(ioError(res, req.op), 0);
    else req.cb(null, res);
  }
}
