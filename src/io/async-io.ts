// The asynchronous positional I/O a stripe thread (or a writeback worker) issues against a file or
// block device: reads, writes and fdatasync with many requests in flight, completions delivered on
// the calling thread's event loop. Two backends sit behind it: libuv's thread pool (portable, one
// thread hand-off per request) and io_uring from the native addon (one syscall per batch), chosen
// once per thread by openAsyncIo(). Callers see one shape and never know which runs, except through
// `backend`, which status reports.

import fs from 'node:fs';

/** err is null or an Error with a numeric `errno` (negative, libuv style) and a `code` ('EIO'). */
export type IoCallback = (err: NodeJS.ErrnoException | null, bytes: number) => void;

export interface AsyncIo {
  readonly backend: 'io_uring' | 'libuv';
  /** One read of up to buf.length bytes at `off`; a short count is the caller's to continue. */
  read(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void;
  write(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void;
  fdatasync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void;
  /** Releases what the backend holds (an io_uring instance); requests in flight still complete. */
  close(): void;
}

export class LibuvIo implements AsyncIo {
  readonly backend = 'libuv' as const;
  read(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void {
    fs.read(fd, buf, 0, buf.length, off, cb);
  }
  write(fd: number, buf: Uint8Array, off: number, cb: IoCallback): void {
    fs.write(fd, buf, 0, buf.length, off, cb);
  }
  fdatasync(fd: number, cb: (err: NodeJS.ErrnoException | null) => void): void {
    fs.fdatasync(fd, cb);
  }
  close(): void {}
}

/** The backend for this thread. The io_uring backend (issue 10) plugs in here, with this as fallback. */
export function openAsyncIo(): AsyncIo {
  return new LibuvIo();
}
