// nbdcopy round trips through the volume, checked with SHA-256.

import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync, ftruncateSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { needTools, skipSuffix, run, describe } from './helpers/tools.js';

const why = needTools('nbdcopy');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 64 * 1024 * 1024;
let d: Daemon | undefined;

test.before(async () => {
  if (!why) d = await startDaemon({ name: 'vol-copy', originSize: SIZE });
});
test.after.always(async () => {
  await d?.dispose();
});

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** A file of the export's size: random data with zero runs and holes, so copies exercise zeroing. */
function randomImage(path: string, seedByte: number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, SIZE);
    for (let off = 0; off < SIZE; off += 2 * 1024 * 1024) {
      if ((off / (2 * 1024 * 1024) + seedByte) % 3 === 0) continue; // a 2 MiB hole
      const len = 1024 * 1024 + 4096 * ((off >> 20) % 7) + 1;
      writeSync(fd, randomBytes(len), 0, len, off);
    }
  } finally {
    closeSync(fd);
  }
}

t_(`nbdcopy file → volume → file round trip keeps the SHA-256${skipSuffix(why)}`, async (t) => {
  const src = join(d!.dir, 'src.img');
  const back = join(d!.dir, 'back.img');
  randomImage(src, 0);
  const up = await run('nbdcopy', [src, d!.uri], { timeoutMs: 120_000 });
  t.is(up.code, 0, describe(up));
  const down = await run('nbdcopy', [d!.uri, back], { timeoutMs: 120_000 });
  t.is(down.code, 0, describe(down));
  t.is(sha256(back), sha256(src));
  rmSync(src); rmSync(back);
});

t_(`nbdcopy --connections=4 --flush round trip (multi-conn) keeps the SHA-256${skipSuffix(why)}`, async (t) => {
  const src = join(d!.dir, 'src2.img');
  const back = join(d!.dir, 'back2.img');
  randomImage(src, 1);
  const up = await run('nbdcopy', ['--connections=4', '--requests=16', '--flush', src, d!.uri], { timeoutMs: 120_000 });
  t.is(up.code, 0, describe(up));
  const down = await run('nbdcopy', ['--connections=4', d!.uri, back], { timeoutMs: 120_000 });
  t.is(down.code, 0, describe(down));
  t.is(sha256(back), sha256(src));
  rmSync(src); rmSync(back);
});

t_(`nbdcopy of a volume with many small random extents (unaligned) round trips${skipSuffix(why)}`, async (t) => {
  const src = join(d!.dir, 'src3.img');
  const back = join(d!.dir, 'back3.img');
  const fd = openSync(src, 'w');
  try {
    ftruncateSync(fd, SIZE);
    for (let i = 0; i < 300; i++) {
      const off = Math.floor(Math.random() * (SIZE - 70000));
      const len = 1 + Math.floor(Math.random() * 65536);
      writeSync(fd, randomBytes(len), 0, len, off);
    }
  } finally {
    closeSync(fd);
  }
  const up = await run('nbdcopy', ['--connections=4', '--flush', src, d!.uri], { timeoutMs: 120_000 });
  t.is(up.code, 0, describe(up));
  const down = await run('nbdcopy', [d!.uri, back], { timeoutMs: 120_000 });
  t.is(down.code, 0, describe(down));
  t.is(sha256(back), sha256(src));
  t.true(d!.alive(), d!.stderr());
});
