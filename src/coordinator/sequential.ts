// Sequential-read detection for the sequential cutoff: a long streaming read (a backup, a scan)
// would otherwise push the whole working set out of the cache. Only the coordinator sees every
// request in order (a stream crosses a stripe every 4 MiB), so detection lives here.

/** Streams tracked at once (several readers, or one reader with a few interleaved streams). */
const STREAMS = 16;

export class SequentialDetector {
  #cutoff: number;
  readonly #end = new Float64Array(STREAMS).fill(-1);
  readonly #run = new Float64Array(STREAMS);
  readonly #used = new Float64Array(STREAMS);
  #tick = 0;

  constructor(cutoff: number) {
    this.#cutoff = cutoff;
  }

  set cutoff(v: number) {
    this.#cutoff = v;
  }

  /** Records a read; true when it continues a run longer than the cutoff (do not promote it). */
  read(off: number, len: number): boolean {
    if (this.#cutoff <= 0) return false;
    this.#tick++;
    let lru = 0;
    for (let i = 0; i < STREAMS; i++) {
      if (this.#end[i] === off) {
        this.#end[i] = off + len;
        this.#run[i]! += len;
        this.#used[i] = this.#tick;
        return this.#run[i]! > this.#cutoff;
      }
      if (this.#used[i]! < this.#used[lru]!) lru = i;
    }
    this.#end[lru] = off + len;
    this.#run[lru] = len;
    this.#used[lru] = this.#tick;
    return len > this.#cutoff;
  }
}
