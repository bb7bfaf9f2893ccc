// Power loss and failing flushes under the real daemon, on disks that really forget what was not
// flushed (test/helpers/faulty-disk.ts): the two data-loss scenarios of issue 9.
//
// (a) The cache file sits on a faulty disk mounted with nbdfuse. Stamped 4 KiB writes with a
//     FLUSH every 64 writes; for about 2 s the cache disk fails every flush (and drops what it had
//     not made durable, as Linux does after a writeback error). Then everything loses power
//     (pcached's supervisor and coordinator SIGKILLed, the disk SIGKILLed), the disk comes back,
//     pcached starts again on the same cache, and every block must hold a version at least as new
//     as what the last successful FLUSH covered, with nothing torn or never written.
// (b) The cache file on one faulty disk (nbdfuse), the origin another faulty disk reached as an NBD
//     origin. Many epochs of overlapping stamped writes while writeback runs, then all devices lose
//     power at once, five times, pcached restarting (and writing back again) after each cut. At
//     every cut the origin image alone (as if the cache were lost) must hold every epoch up to
//     some E whole plus part of E+1; after every restart no flushed write may be missing.
//
// The checks are the model's (test/helpers/stamp-model.ts); a failure says exactly what was lost.
// Both fail on the engine as issue 9 found it (items 1 and 2): in (a) about half the blocks come
// back without the writes made while flushes failed, though a later FLUSH succeeded; in (b) a cut
// soon after a restart finds the origin with epochs re-applied over newer ones (dirty_tail is
// not synced, so the restarted daemon writes back again what the origin already had).
// Every process is stopped by its PID (the cuts SIGKILL them; teardown stops what is left).

import test, { type ExecutionContext } from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { nbdUri, makeSparseFile } from './helpers/daemon.js';
import { startFaultyDisk, type FaultyDisk } from './helpers/faulty-disk.js';
import { fuseUnavailable, mountNbd, type FuseMount } from './helpers/fuse.js';
import { statusJson, pidRunning, sleep, startServing, waitFor, type RunningDaemon } from './helpers/lifecycle.js';
import { NbdTestClient } from './helpers/nbd-test-client.js';
import { removeScratchDirs, scratchDir } from './helpers/scratch.js';
import { SeededRandom } from './helpers/faulty-disk-store.js';
import { runEpochs, readVolume, type EpochOptions } from './helpers/stamp-driver.js';
import { checkDurable, checkEpochPrefix, decodeImage, StampModel, type DurableReport, type PrefixReport } from './helpers/stamp-model.js';
import { STAMP_BLOCK } from './helpers/stamps.js';
import { skipSuffix } from './helpers/tools.js';

const MiB = 1 << 20;
const NAME = 'vol';
const CACHE_SIZE = 64 * MiB;

test.after.always(() => removeScratchDirs());

/** The devices of one scenario and the daemon on them. */
interface Rig {
  dir: string;
  cacheDisk: FaultyDisk;
  mount: FuseMount;
  originDisk: FaultyDisk | null;
  origin: string;
  sock: string;
  control: string;
  env: Record<string, string>;
  daemon: RunningDaemon | null;
}

async function makeRig(t: ExecutionContext, o: { blocks: number; nbdOrigin: boolean; originWriteLatencyMs?: number; env: Record<string, string> }): Promise<Rig> {
  const dir = scratchDir('pcached-power-');
  const cacheDisk = await startFaultyDisk({ dir, size: CACHE_SIZE, name: 'cachedisk', t });
  const mount = await mountNbd({ dir: join(dir, 'mnt'), uri: cacheDisk.uri, t });
  let originDisk: FaultyDisk | null = null;
  let origin: string;
  if (o.nbdOrigin) {
    originDisk = await startFaultyDisk({ dir, size: o.blocks * STAMP_BLOCK, name: 'origindisk', writeLatencyMs: o.originWriteLatencyMs, t });
    origin = `nbd+unix:///?socket=${originDisk.socket}`;
  } else {
    origin = join(dir, 'origin.img');
    makeSparseFile(origin, o.blocks * STAMP_BLOCK);
  }
  return { dir, cacheDisk, mount, originDisk, origin, sock: join(dir, 'nbd.sock'), control: join(dir, 'control.sock'), env: o.env, daemon: null };
}

async function startPcached(t: ExecutionContext, rig: Rig): Promise<NbdTestClient> {
  rig.daemon = await startServing(t, ['--origin', rig.origin, '--cache', rig.mount.file, '--cache-size', String(CACHE_SIZE), '--segment-size', '1M',
    '--unix', rig.sock, '--tcp', '', '--name', NAME, '--control', rig.control, '--stripes', '2', '--log-level', 'warn'],
  { cwd: rig.dir, sock: rig.sock, control: rig.control, env: rig.env });
  return NbdTestClient.connect(rig.sock, NAME);
}

/** Children of `pid` (the supervisor's coordinators), read from /proc. */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(e));
    } catch { /* gone */ }
  }
  return out;
}

/** Every device and every pcached process loses power in the same instant (SIGKILL by PID). */
async function powerCutAll(rig: Rig): Promise<void> {
  const d = rig.daemon;
  const pids = d ? [d.proc.pid, ...childPids(d.proc.pid), d.coord].filter((p) => p > 0) : [];
  for (const p of pids) {
    try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
  }
  await Promise.all([rig.cacheDisk.powerCut(), rig.originDisk?.powerCut()]);
  await waitFor('pcached to die', () => pids.every((p) => !pidRunning(p)), 10_000, 20);
  rig.daemon = null;
}

/** Power back: the disks restart on their images and the cache disk is mounted again. */
async function powerOn(rig: Rig): Promise<void> {
  await rig.cacheDisk.restart();
  await rig.originDisk?.restart();
  await rig.mount.remount();
}

/**
 * Epochs until `until()` or `epochs`; when the connection is lost (a crashed coordinator is
 * restarted by the supervisor), what was not flushed may be gone: the model is told, and the run
 * goes on over a new connection.
 */
async function writeEpochs(rig: Rig, client: NbdTestClient, model: StampModel, random: SeededRandom, o: EpochOptions): Promise<{ client: NbdTestClient; reconnects: number }> {
  let epochs = 0;
  let reconnects = 0;
  for (;;) {
    const run = await runEpochs(client, model, random, { ...o, epochs: o.epochs === undefined ? undefined : o.epochs - epochs });
    epochs += run.epochs;
    if (!run.lost) return { client, reconnects };
    model.crash();
    reconnects++;
    client = await waitFor('pcached to serve again', () => NbdTestClient.connect(rig.sock, NAME, 2_000).catch(() => undefined), 60_000, 200);
  }
}

const whyFuse = fuseUnavailable();
const fuseTest = whyFuse ? test.serial.skip : test.serial;

fuseTest('(a) a cache device whose flush fails for 2 s: after a power cut no block is older than what a successful FLUSH covered' + skipSuffix(whyFuse), async (t) => {
  t.timeout(110_000);
  const BLOCKS = 4096;
  // Writeback held back: the cache alone holds what was written.
  const rig = await makeRig(t, { blocks: BLOCKS, nbdOrigin: false, env: { PCACHED_PAUSE_WRITEBACK_MS: '600000' } });
  const model = new StampModel(BLOCKS);
  const random = new SeededRandom(2024);
  let client = await startPcached(t, rig);

  ({ client } = await writeEpochs(rig, client, model, random, { epochs: 25 }));
  await rig.cacheDisk.control('flush fail');
  const faultStart = Date.now();
  const during = model.counts.flushesFailed;
  let reconnects: number;
  ({ client, reconnects } = await writeEpochs(rig, client, model, random, { until: () => Date.now() - faultStart > 2000 }));
  await rig.cacheDisk.control('flush ok');
  ({ client } = await writeEpochs(rig, client, model, random, { epochs: 25 }));
  const disk = await rig.cacheDisk.stats();
  t.log(`cache disk: ${disk.counters.flushes} flushes, ${disk.counters.flushesFailed} failed, ${(disk.counters.bytesDropped / MiB).toFixed(1)} MiB dropped; ` +
    `client: ${JSON.stringify(model.counts)}, ${model.counts.flushesFailed - during} FLUSHes failed in the window, ${reconnects} reconnects`);
  t.true(disk.counters.flushesFailed > 0, 'the fault window made cache flushes fail');
  client.destroy();

  await powerCutAll(rig);
  model.crash();
  await powerOn(rig);
  client = await startPcached(t, rig);
  const report = checkDurable(model, await readVolume(client, model));
  client.destroy();
  t.log(report.summary);
  t.true(report.ok, `after the power cut: ${report.summary}`);
  await powerCutAll(rig);
});

fuseTest('(b) power loss of every device during writeback, 5 times: the origin alone is always an epoch prefix, no flushed write is lost' + skipSuffix(whyFuse), async (t) => {
  t.timeout(115_000);
  const BLOCKS = 2048;
  const rig = await makeRig(t, { blocks: BLOCKS, nbdOrigin: true, originWriteLatencyMs: 20, env: { PCACHED_PAUSE_WRITEBACK_MS: '0' } });
  const model = new StampModel(BLOCKS);
  const random = new SeededRandom(99);
  const prefixes: PrefixReport[] = [];
  const durables: DurableReport[] = [];
  const lines: string[] = [];
  let client = await startPcached(t, rig);
  for (let cut = 1; cut <= 5; cut++) {
    if (cut % 2 === 1) {
      // Epochs written, then writeback keeps going with no FLUSH to sync the cache device: the
      // cut falls in the middle of it.
      ({ client } = await writeEpochs(rig, client, model, random, { epochs: 40 }));
      await sleep(4000);
    } else {
      // Just restarted (and checked): the cut falls while the daemon writes back again what it
      // had written back before the last cut.
    }
    client.destroy();
    await powerCutAll(rig);
    model.crash();
    const prefix = checkEpochPrefix(model, decodeImage(readFileSync(rig.originDisk!.image), BLOCKS, model));
    prefixes.push(prefix);
    await powerOn(rig);
    client = await startPcached(t, rig);
    const pending = (await statusJson(rig.control)).caches[0]!.cacheState!.epochsPending;
    const durable = checkDurable(model, await readVolume(client, model));
    durables.push(durable);
    lines.push(`cut ${cut}: ${prefix.summary}; restarted with ${pending} epochs to write back; ${durable.summary}`);
  }
  client.destroy();
  await powerCutAll(rig);
  t.log(lines.join('\n'));
  // Cuts that found the origin behind the client prove something; cuts after a finished drain little.
  const behind = prefixes.filter((p) => p.whole < p.epochs - 1).length;
  t.true(behind >= 2, `${behind} of 5 cuts fell while writeback was behind`);
  const bad = lines.filter((_, i) => !prefixes[i]!.ok || !durables[i]!.ok);
  t.deepEqual(bad, [], `${bad.length} of 5 power cuts lost the promise`);
});
