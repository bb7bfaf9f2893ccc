// A file origin whose fdatasync fails, the real way: the file is an nbdfuse mount of an NBD export
// (nbdkit's sh plugin over a disk image) whose FLUSH fails with ENOSPC while a trigger file exists;
// nbdfuse passes the error through to fdatasync. Origin.flush's rule (src/origin/types.ts): any
// failed sync is EIO, and a sync that failed inside a FUA write is reported to the next flush
// too, even when that flush's own fdatasync succeeds (the kernel tells only one caller).

import test, { type ExecutionContext } from 'ava';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openFileOrigin } from '../src/origin/file.js';
import type { Done, Origin } from '../src/origin/types.js';
import { makeSparseFile } from './helpers/daemon.js';
import { startNbdkit } from './helpers/nbdkit.js';
import { killPid, spawnTracked, waitFor } from './helpers/lifecycle.js';
import { needTools, run, skipSuffix, TOOL_ENV } from './helpers/tools.js';

const OK = 0, EIO = 5;

/** Calls an origin method and resolves with its errno. */
function now(call: (cb: Done) => void): Promise<number> {
  return new Promise((resolve) => call(resolve));
}

/** nbdkit's sh plugin over `disk`: FLUSH fails with ENOSPC while `trigger` exists. */
function flakyFlushPlugin(dir: string, disk: string, trigger: string): string {
  const script = join(dir, 'flaky-flush.sh');
  writeFileSync(script, `#!/bin/bash
case "$1" in
  get_size) stat -L -c %s '${disk}' ;;
  pread) dd if='${disk}' skip=$4 count=$3 iflag=skip_bytes,count_bytes status=none ;;
  pwrite) dd of='${disk}' seek=$4 conv=notrunc oflag=seek_bytes status=none ;;
  can_write|can_flush) exit 0 ;;
  flush) if [ -e '${trigger}' ]; then echo "ENOSPC flush refused" >&2; exit 1; fi ;;
  *) exit 2 ;;
esac
`);
  chmodSync(script, 0o755);
  return script;
}

/** The export as a local file through nbdfuse; unmounted and stopped (by PID) in teardown. */
async function fuseFile(t: ExecutionContext, dir: string, uri: string): Promise<string> {
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  const pidFile = join(dir, 'nbdfuse.pid');
  const fuse = spawnTracked('nbdfuse', ['-P', pidFile, mnt, uri], { env: TOOL_ENV });
  t.teardown(async () => {
    await run('fusermount3', ['-u', mnt], { timeoutMs: 10_000 });
    await fuse.stop('SIGTERM', 5000);
    killPid(fuse.pid);
  });
  await waitFor('nbdfuse to be ready', () => existsSync(pidFile) || !fuse.alive(), 20_000, 50);
  if (!fuse.alive()) throw new Error(`nbdfuse exited: ${fuse.output()}`);
  const r = await run('mountpoint', ['-q', mnt]);
  if (r.code !== 0) throw new Error(`${mnt} is not a mount point`);
  return join(mnt, 'nbd');
}

const why = needTools('nbdkit', 'nbdfuse', 'fusermount3', 'mountpoint');

(why ? test.serial.skip : test.serial)('file origin on a device whose flush fails: EIO (not the device errno); a FUA write\'s failed sync is reported to the next flush' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const dir = mkdtempSync(join(tmpdir(), 'pcached-fsync-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const disk = join(dir, 'disk.img');
  makeSparseFile(disk, 4 << 20);
  const trigger = join(dir, 'fail-flush');
  const kit = await startNbdkit(join(dir, 'nbdkit.sock'), ['sh', flakyFlushPlugin(dir, disk, trigger)]);
  t.teardown(() => kit.stop());
  const file = await fuseFile(t, dir, kit.uri);
  const o: Origin = openFileOrigin({ kind: 'file', path: file, readOnly: false });
  t.teardown(() => o.close());

  t.is(await now((cb) => o.write(0, Buffer.alloc(4096, 1), false, cb)), OK);
  t.is(await now((cb) => o.flush(cb)), OK);

  writeFileSync(trigger, '');
  t.is(await now((cb) => o.write(4096, Buffer.alloc(4096, 2), false, cb)), OK, 'a plain write does not sync');
  t.is(await now((cb) => o.flush(cb)), EIO, 'the device said ENOSPC; a failed sync is EIO');

  t.is(await now((cb) => o.write(8192, Buffer.alloc(4096, 3), true, cb)), EIO, 'FUA: its sync failed');
  rmSync(trigger);
  t.is(await now((cb) => o.flush(cb)), EIO, 'the failed sync of the FUA write is reported to the next flush');
  t.is(await now((cb) => o.flush(cb)), OK, 'reported once');
});
