// qemu's NBD client: qemu-io pattern write/read, qemu-img convert into the volume + compare.

import test from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { needTools, skipSuffix, run, runOk, describe } from './helpers/tools.js';

const why = needTools('qemu-io', 'qemu-img');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 64 * 1024 * 1024;
let d: Daemon | undefined;

test.before(async () => {
  if (!why) d = await startDaemon({ name: 'vol-qemu', originSize: SIZE });
});
test.after.always(async () => {
  await d?.dispose();
});

t_(`qemu-io writes a pattern and reads it back${skipSuffix(why)}`, async (t) => {
  const r = await runOk('qemu-io', ['-f', 'raw',
    '-c', 'write -P 0xab 0 1M',
    '-c', 'write -P 0xcd 5M 3M',
    '-c', 'write -P 0x5a 63M 1M',
    '-c', 'flush',
    '-c', 'read -P 0xab 0 1M',
    '-c', 'read -P 0xcd 5M 3M',
    '-c', 'read -P 0x5a 63M 1M',
    '-c', 'read -P 0 1M 4M',
    d!.uri], { timeoutMs: 60_000 });
  t.notRegex(r.stdout + r.stderr, /verification failed|error|failed/i, describe(r));
  t.is((r.stdout.match(/^wrote /gm) ?? []).length, 3, describe(r));
  t.is((r.stdout.match(/^read /gm) ?? []).length, 4, describe(r));
  // A fresh connection sees the same data.
  const again = await runOk('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xcd 5M 3M', d!.uri], { timeoutMs: 60_000 });
  t.notRegex(again.stdout + again.stderr, /verification failed/i, describe(again));
});

t_(`qemu-img convert of a random image into the volume, then qemu-img compare${skipSuffix(why)}`, async (t) => {
  // Same size as the export: random extents, some zero runs, a sparse tail.
  const src = join(d!.dir, 'random.img');
  const fd = openSync(src, 'w');
  try {
    ftruncateSync(fd, SIZE);
    for (let off = 0; off < SIZE; off += 4 * 1024 * 1024) {
      const len = 1024 * 1024 + (off / (4 * 1024 * 1024)) * 65536 + 512; // unaligned lengths
      writeSync(fd, randomBytes(len), 0, len, off + 4096);
    }
    writeSync(fd, randomBytes(4096), 0, 4096, SIZE - 4096);
  } finally {
    closeSync(fd);
  }
  const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', '-W', src, d!.uri], { timeoutMs: 120_000 });
  t.is(conv.code, 0, describe(conv));
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, d!.uri], { timeoutMs: 120_000 });
  t.is(cmp.code, 0, describe(cmp));
  t.regex(cmp.stdout, /Images are identical/, describe(cmp));
  // Strict mode too (also checks allocation differences do not matter for content).
  const cmp2 = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', d!.uri, src], { timeoutMs: 120_000 });
  t.is(cmp2.code, 0, describe(cmp2));
});

t_(`qemu-img info sees the export size${skipSuffix(why)}`, async (t) => {
  const r = await runOk('qemu-img', ['info', '--output=json', d!.uri], { timeoutMs: 30_000 });
  const j = JSON.parse(r.stdout) as { 'virtual-size': number };
  t.is(j['virtual-size'], SIZE);
  t.true(d!.alive(), d!.stderr());
});
