// The asynchronous positional I/O a stripe thread (or a writeback worker) issues against a file or
// block device: reads, writes and fdatasync with many requests in flight, completions delivered on
// the calling thread's event loop. Two backends sit behind it: libuv's thread pool (portable, one
// thread hand-off per request) and io_uring from the native addon (one syscall per batch), chosen
// once per thread by openAsyncIo(). Callers see one shape and never know which runs, except through
// `backend`, which status reports.

import fs from 'node:fs';
import { native, nativeUnavailableReason } from '../native/index.js';
import { UringIo } from './uring.js';

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

export type IoBackendChoice = 'auto' | 'io_uring' | 'libuv';
export interface OpenAsyncIoOptions {
  /** Default 'auto'; env PCACHED_IO_BACKEND (io_uring | libuv | auto) overrides. */
  backend?: IoBackendChoice;
  /** io_uring SQ size, also the most requests this thread has in the kernel at once. */
  entries?: number;
}

let lastUnavailable: string | null = null;

/** Why the last openAsyncIo() on this thread runs libuv (null when io_uring runs or was not tried). */
export function ioBackendUnavailableReason(): string | null {
  return lastUnavailable;
}

/** The backend for this thread: io_uring when it works, else libuv's thread pool. */
export function openAsyncIo(opts: OpenAsyncIoOptions = {}): AsyncIo {
  const env = process.env.PCACHED_IO_BACKEND;
  let choice: IoBackendChoice = opts.backend ?? 'auto';
  if (env === 'io_uring' || env === 'libuv' || env === 'auto') choice = env;
  lastUnavailable = null;
  if (choice === 'libuv') {
    lastUnavailable = env === 'libuv' ? 'PCACHED_IO_BACKEND=libuv' : 'libuv requested';
    return new LibuvIo();
  }
  let why: string;
  const n = native;
  if (!n) why = `native addon unavailable: ${nativeUnavailableReason()}`;
  else if (!n.uringOpen || !n.uringPrep || !n.uringSubmit || !n.uringClose) why = 'addon built without io_uring; rebuild it';
  else {
    try {
      return new UringIo({ uringOpen: n.uringOpen, uringPrep: n.uringPrep, uringSubmit: n.uringSubmit, uringClose: n.uringClose }, opts.entries);
    } catch (err) {
      why = err instanceof Error ? err.message : String(err);
    }
  }
  if (choice === 'io_uring') throw new Error(`io_uring backend requested but unavailable: ${why}`);
  lastUnavailable = why;
  return new LibuvIo();
}
