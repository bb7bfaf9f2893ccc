// Drives stamped writes through an NBD export and reads a volume back, recording everything in a
// StampModel. Each epoch writes `perEpoch` distinct blocks (so no two writes to one block are ever
// in flight together and their order is known) with `queueDepth` requests in flight, waits for
// all of them, then sends one FLUSH and waits for it. An EIO on a write or a FLUSH is recorded,
// not thrown: that is what the tests are about. A lost connection ends the run (reported).

import { LOST, type NbdTestClient } from './nbd-test-client.js';
import { Outcome, decodeImage, type Held, type StampModel } from './stamp-model.js';
import { SeededRandom } from './faulty-disk-store.js';
import { stampBlock, STAMP_BLOCK } from './stamps.js';

export interface EpochRun {
  epochs: number;
  writes: number;
  /** The connection ended during the run. */
  lost: boolean;
}

export interface EpochOptions {
  /** Blocks [0, pool) are written; at most the model's size. */
  pool?: number;
  perEpoch?: number;
  queueDepth?: number;
  /** Stop after this many epochs (default: unbounded, use `until`). */
  epochs?: number;
  /** Checked before each epoch: true stops the run. */
  until?: () => boolean;
  /** Called after each epoch's FLUSH (its outcome as an NBD errno, LOST, or 0). */
  afterFlush?: (errno: number) => void | Promise<void>;
}

function outcomeOf(errno: number): Outcome {
  return errno === 0 ? Outcome.OK : errno === LOST ? Outcome.LOST : Outcome.FAILED;
}

/** Distinct blocks for one epoch, from the run's generator. */
function pickBlocks(random: SeededRandom, pool: number, n: number): number[] {
  const chosen = new Set<number>();
  while (chosen.size < Math.min(n, pool)) chosen.add(Math.floor(random.next() * pool));
  return [...chosen];
}

export async function runEpochs(client: NbdTestClient, model: StampModel, random: SeededRandom, o: EpochOptions = {}): Promise<EpochRun> {
  const pool = Math.min(o.pool ?? model.blocks, model.blocks);
  const perEpoch = o.perEpoch ?? 64;
  const depth = o.queueDepth ?? 16;
  const run: EpochRun = { epochs: 0, writes: 0, lost: false };
  while ((o.epochs === undefined || run.epochs < o.epochs) && !(o.until?.() ?? false)) {
    const blocks = pickBlocks(random, pool, perEpoch);
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < blocks.length && !run.lost) {
        const b = blocks[next++]!;
        const v = model.beginWrite(b);
        const errno = await client.write(b * STAMP_BLOCK, stampBlock(b, v));
        model.endWrite(b, v, outcomeOf(errno));
        run.writes++;
        if (errno === LOST) run.lost = true;
      }
    };
    await Promise.all(Array.from({ length: depth }, lane));
    if (run.lost) break;
    const covered = model.beginFlush();
    const errno = await client.flush();
    model.endFlush(covered, outcomeOf(errno));
    run.epochs++;
    await o.afterFlush?.(errno);
    if (errno === LOST) {
      run.lost = true;
      break;
    }
  }
  return run;
}

/** Reads blocks [0, model.blocks) through `client` (256 KiB reads, 4 in flight) and decodes them. */
export async function readVolume(client: NbdTestClient, model: StampModel): Promise<Held> {
  const bytes = model.blocks * STAMP_BLOCK;
  const image = Buffer.alloc(bytes);
  const chunk = 256 << 10;
  const errors = new Map<number, string>();
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < bytes) {
      const off = next;
      next += chunk;
      const len = Math.min(chunk, bytes - off);
      const r = await client.read(off, len);
      if (r.errno !== 0) {
        for (let b = off / STAMP_BLOCK; b < (off + len) / STAMP_BLOCK; b++) errors.set(b, `read failed (${r.errno === LOST ? 'connection lost' : `NBD error ${r.errno}`})`);
      } else r.data!.copy(image, off);
    }
  };
  await Promise.all(Array.from({ length: 4 }, lane));
  const held = decodeImage(image, model.blocks, model);
  for (const [b, why] of errors) {
    held.versions[b] = -1;
    held.bad.set(b, why);
  }
  return held;
}
