// fdatasync of a file origin with group commit: one sync at a time, and every caller that arrives
// while one runs shares the next. One at a time because the kernel reports a writeback error to
// one caller only: two concurrent syncs could let one succeed without the pages the other's
// failure dropped. A FLUSH's sync and a FUA write's sync are the same call; they differ in what
// is reported (the rule on Origin.flush, src/origin/types.ts):
//  * any failed sync is EIO (whatever the errno: writes since the last good sync may be gone);
//  * a failure no FLUSH heard of (a FUA write's sync failed) is reported to the next FLUSH too,
//    even when that FLUSH's own sync succeeds, and then forgotten.

import { Errno } from '../util/errno.js';
import type { Done } from './types.js';

interface Waiter {
  flush: boolean;
  done: Done;
}

export class SyncGroup {
  readonly #sync: (cb: (err: unknown) => void) => void;
  #running = false;
  #next: Waiter[] = [];
  /** A sync failed and no FLUSH has reported it yet. */
  #unreported = false;

  /** `sync` starts one fdatasync and calls back with its error (null on success). */
  constructor(sync: (cb: (err: unknown) => void) => void) {
    this.#sync = sync;
  }

  /** Calls back once a sync that started after this call has finished. */
  request(flush: boolean, done: Done): void {
    this.#next.push({ flush, done });
    if (!this.#running) this.#run();
  }

  #run(): void {
    const group = this.#next;
    this.#next = [];
    this.#running = true;
    this.#sync((err) => {
      const failed = err !== null && err !== undefined;
      const hasFlush = group.some((w) => w.flush);
      const lost = failed || this.#unreported;
      this.#unreported = hasFlush ? false : lost;
      this.#running = false;
      if (this.#next.length > 0) this.#run();
      for (const w of group) w.done(w.flush ? (lost ? Errno.EIO : Errno.OK) : (failed ? Errno.EIO : Errno.OK));
    });
  }
}
