// --pidfile FILE: checked before start-up, written (tmp + rename, so a reader never sees half a
// PID) once every cache serves, removed on exit. A file naming a live pcached refuses the start;
// one naming a dead process, or a PID since reused by something else, is stale and replaced.

import { accessSync, constants as fsConstants, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describeProcess, processAlive } from '../util/proc-info.js';
import { PcachedError } from '../util/errors.js';

function readPid(path: string): number | null {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new PcachedError('ERR_CONFIG', `cannot read pidfile ${path}: ${(err as Error).message}`, { cause: err });
  }
  const m = /^\s*(\d+)\s*$/.exec(text);
  return m ? Number(m[1]) : null;
}

export class PidFile {
  readonly path: string;
  #written = false;

  constructor(path: string) {
    this.path = path;
  }

  /**
   * Throws ERR_IN_USE when a live pcached other than us holds the file, and ERR_CONFIG when it
   * could not be written later (better now than after every cache has started).
   */
  check(): void {
    try {
      accessSync(dirname(this.path), fsConstants.W_OK);
    } catch (err) {
      throw new PcachedError('ERR_CONFIG', `cannot write pidfile ${this.path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'its directory does not exist' : (err as Error).message}`, { cause: err });
    }
    const pid = readPid(this.path);
    if (pid === null || pid === process.pid || !processAlive(pid)) return;
    const what = describeProcess(pid);
    if (what !== null && what !== 'pcached') return;
    throw new PcachedError('ERR_IN_USE', `pidfile ${this.path} is held by PID ${pid}, a running pcached: stop it first (kill -TERM ${pid}), or use another --pidfile`);
  }

  write(): void {
    const tmp = `${this.path}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, `${process.pid}\n`, { mode: 0o644 });
      renameSync(tmp, this.path);
      this.#written = true;
    } catch (err) {
      try { unlinkSync(tmp); } catch { /* never created */ }
      throw new PcachedError('ERR_CONFIG', `cannot write pidfile ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Removes the file if it is still ours (another daemon may have replaced a file we left). */
  remove(): void {
    if (!this.#written) return;
    this.#written = false;
    try {
      if (readPid(this.path) === process.pid) unlinkSync(this.path);
    } catch { /* gone already */ }
  }
}
