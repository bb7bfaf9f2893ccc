// The "slow local disk" cell (issue 10): the classic deployment, a cache in front of a local disk
// whose every I/O takes about 2 ms. The disk is built from nbdkit's delay filter over a file
// (delay-read=2ms delay-write=2ms) and reached as a local file through nbdfuse. Side by side, in
// each repetition: fio on that file with O_DIRECT (the disk read directly), pcached with the file
// as its origin (a file origin: libuv's pool, `originQueueDepth` in flight per stripe), and
// pcached with the same nbdkit export as an NBD origin (4 connections per stripe). zipf 1.1,
// 70 % reads, 4 KiB, QD32, a cache of 25 % of the origin.
//
// The file origin reads through the page cache of the FUSE file (pcached does not open an origin
// O_DIRECT), so a block pcached evicted may come back from RAM without the 2 ms; fio's direct
// cell and the NBD origin never get that. The notes show each pcached's read-hit ratio.
//
// The kernel serializes pwrite on one FUSE file (the inode lock is held while nbdfuse answers
// each 2 ms WRITE), so writeback to the nbdfuse file runs at ~400 4 KiB writes/s however many
// threads issue them; only asynchronous direct I/O (fio's libaio) overlaps writes there. So, as
// root, the same disk is also measured as a block device: a loop device with direct I/O over the
// nbdfuse file (the loop driver submits asynchronously), fio and pcached's file origin on it.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { TOOL_ENV, fio, prefillFile, sleep, startProc, stopProc, type FioDir, type Proc, type Sample } from './lib.js';

/** What cache.ts lends this cell (its fio driver, pcached launcher and result table). */
export interface CellKit {
  fioNbd(uri: string, name: string, extra: string[], runtime: number, ramp: number, outFile: string): Promise<Sample>;
  /** `root`: another built checkout (--baseline), default this one; `extra`: more `pcached start` arguments. */
  pcachedArgs(dir: string, tag: string, origin: string, cacheSize: string, root?: string, extra?: string[]): { args: string[]; sock: string; control: string };
  pcachedStatus(control: string): { cacheState?: Record<string, number> };
  waitInitialized(control: string): Promise<void>;
  record(scenario: string, workload: string, server: string, samples: Sample[], note?: string): void;
}

export interface SlowDiskOpts { baseline: string | null; reps: number; slowRuntime: number; slowRamp: number; slowSize: number; pcachedEnv: Record<string, string> }

export const SLOW_DISK = { scenario: 'slowdisk', workload: 'zipf-70r-4k-qd32', direct: 'disk-direct', file: 'pcached-file-origin', nbd: 'pcached-nbd-origin', base: 'pcached-file-origin-base',
  loopDirect: 'loop-disk-direct', loop: 'pcached-loop-origin' } as const;

const JOB = ['--rw=randrw', '--rwmixread=70', '--random_distribution=zipf:1.1', '--bs=4k', '--iodepth=32', '--norandommap'];

/** A loop device with direct I/O over `file`, or null when this host cannot make one (not root, no losetup). */
function attachLoop(file: string): string | null {
  if (process.getuid?.() !== 0) return null;
  const r = spawnSync('losetup', ['--find', '--show', '--direct-io=on', file], { env: TOOL_ENV, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** fio on a local file or device with O_DIRECT and libaio: the disk itself at QD32. */
async function fioFile(file: string, runtime: number, ramp: number, outFile: string): Promise<Sample> {
  const j = await fio([
    '--name=disk-direct', '--ioengine=libaio', '--direct=1', `--filename=${file}`, '--numjobs=1', '--time_based', `--runtime=${runtime}`,
    `--ramp_time=${ramp}`, '--randrepeat=0', '--lat_percentiles=1', '--percentile_list=50:99', ...JOB,
  ], outFile, (runtime + ramp + 120) * 1000);
  const job = (j.jobs as Array<Record<string, FioDir> & { error: number }>)[0]!;
  if (job.error) throw new Error(`fio job error ${job.error}`);
  const r = job.read!, w = job.write!;
  const pct = r.lat_ns.percentile ?? {};
  return { iops: r.iops + w.iops, mbps: (r.bw_bytes + w.bw_bytes) / 1e6, p50us: (pct['50.000000'] ?? NaN) / 1000, p99us: (pct['99.000000'] ?? NaN) / 1000, meanus: r.lat_ns.mean / 1000 };
}

/** nbdfuse of `uri` at `mnt/disk`; resolves once the file is there. Stopped by PID in unmount. */
async function mountFuse(mnt: string, uri: string): Promise<{ file: string; unmount: () => Promise<void> }> {
  mkdirSync(mnt, { recursive: true });
  const file = join(mnt, 'disk');
  const pidFile = `${mnt}.pid`;
  rmSync(pidFile, { force: true });
  const child: ChildProcess = spawn('nbdfuse', ['-P', pidFile, file, uri], { env: TOOL_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout!.on('data', (b: Buffer) => { log += b.toString(); });
  child.stderr!.on('data', (b: Buffer) => { log += b.toString(); });
  let exited = false;
  const gone = new Promise<void>((res) => child.on('exit', () => { exited = true; res(); }));
  const kill = (): void => { try { process.kill(child.pid!, 'SIGKILL'); } catch { /* gone */ } };
  process.on('exit', kill);
  const mounted = (): boolean => spawnSync('mountpoint', ['-q', mnt], { env: TOOL_ENV }).status === 0;
  const deadline = Date.now() + 20_000;
  while (!(existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '' && mounted() && existsSync(file))) {
    if (exited) throw new Error(`nbdfuse exited before ${mnt} was mounted:\n${log}`);
    if (Date.now() > deadline) { kill(); throw new Error(`nbdfuse did not mount ${mnt} within 20 s:\n${log}`); }
    await sleep(20);
  }
  return {
    file,
    unmount: async () => {
      spawnSync('fusermount3', ['-u', mnt], { env: TOOL_ENV, timeout: 10_000 });
      const t = setTimeout(kill, 5_000);
      await gone;
      clearTimeout(t);
      process.off('exit', kill);
    },
  };
}

export async function slowDiskScenario(o: SlowDiskOpts, dir: string, kit: CellKit): Promise<void> {
  process.stdout.write(`\n== slow local disk: ${o.slowSize >> 20} MiB file behind nbdkit delay 2 ms, as a file through nbdfuse; zipf:1.1, 70 % reads, QD32; cache 25 %\n`);
  const image = join(dir, 'slowdisk.img');
  prefillFile(image, o.slowSize);
  spawnSync('sync');
  const exportSock = join(dir, 'slowdisk.sock');
  const uri = `nbd+unix:///?socket=${exportSock}`;
  const disk = await startProc('slowdisk', 'nbdkit', ['-f', '-U', exportSock, '--filter=delay', 'file', image, 'delay-read=2ms', 'delay-write=2ms'], exportSock, dir);
  let fuse: Awaited<ReturnType<typeof mountFuse>> | null = null;
  let loop: string | null = null;
  const cacheSize = `${(Math.floor(o.slowSize / 4) >> 20) + 1}M`;
  const samples = new Map<string, Sample[]>();
  const notes = new Map<string, string[]>();
  const add = (name: string, s: Sample, note?: string): void => {
    samples.set(name, [...(samples.get(name) ?? []), s]);
    if (note) notes.set(name, [...(notes.get(name) ?? []), note]);
  };
  try {
    fuse = await mountFuse(join(dir, 'slowdisk-mnt'), uri);
    loop = attachLoop(fuse.file);
    const attached = loop;
    if (attached !== null) process.once('exit', () => spawnSync('losetup', ['-d', attached], { env: TOOL_ENV }));
    if (loop === null) process.stdout.write('  (no loop device: not root or losetup failed; the loop cells are skipped)\n');
    const pcachedCell = async (name: string, origin: string, env: Record<string, string>, rep: number, root?: string): Promise<Sample> => {
      const pc = kit.pcachedArgs(dir, `slowdisk-${name}`, origin, cacheSize, root);
      rmSync(join(dir, `slowdisk-${name}-cache.img`), { force: true });
      const p: Proc = await startProc(name, process.execPath, pc.args, pc.sock, dir, { ...env, ...o.pcachedEnv });
      try {
        await kit.waitInitialized(pc.control);
        const x = await kit.fioNbd(`nbd+unix:///bench?socket=${pc.sock}`, `slowdisk-${name}`, JOB, o.slowRuntime, o.slowRamp, join(dir, `slowdisk-${name}-${rep}.json`));
        const st = kit.pcachedStatus(pc.control).cacheState!;
        add(name, x, `read hits ${(100 * st.readHits! / Math.max(1, st.readBlocks!)).toFixed(1)} %`);
        return x;
      } finally {
        await stopProc(p);
      }
    };
    for (let rep = 0; rep < o.reps; rep++) {
      const direct = await fioFile(fuse.file, o.slowRuntime, o.slowRamp, join(dir, `slowdisk-direct-${rep}.json`));
      add(SLOW_DISK.direct, direct);
      const file = await pcachedCell(SLOW_DISK.file, fuse.file, {}, rep);
      const nbd = await pcachedCell(SLOW_DISK.nbd, uri, { PCACHED_ORIGIN_CONNECTIONS: '4' }, rep);
      // The same file origin on an older build (--baseline): before and after, in one run.
      const base = o.baseline ? await pcachedCell(SLOW_DISK.base, fuse.file, {}, rep, o.baseline) : null;
      process.stdout.write(`  rep ${rep + 1}: disk ${Math.round(direct.iops)}, file origin ${Math.round(file.iops)} (${(file.iops / direct.iops).toFixed(2)}× disk, ` +
        `${(file.iops / nbd.iops).toFixed(2)}× NBD origin), NBD origin ${Math.round(nbd.iops)}${base ? `, baseline file origin ${Math.round(base.iops)} (${(base.iops / direct.iops).toFixed(2)}× disk)` : ''} IOPS\n`);
      if (loop !== null) {
        const loopDirect = await fioFile(loop, o.slowRuntime, o.slowRamp, join(dir, `slowdisk-loop-direct-${rep}.json`));
        add(SLOW_DISK.loopDirect, loopDirect);
        const onLoop = await pcachedCell(SLOW_DISK.loop, loop, {}, rep);
        process.stdout.write(`  rep ${rep + 1}, loop device: disk ${Math.round(loopDirect.iops)}, file origin ${Math.round(onLoop.iops)} ` +
          `(${(onLoop.iops / loopDirect.iops).toFixed(2)}× disk, ${(onLoop.iops / nbd.iops).toFixed(2)}× NBD origin) IOPS\n`);
      }
    }
  } finally {
    if (loop !== null) spawnSync('losetup', ['-d', loop], { env: TOOL_ENV });
    await fuse?.unmount();
    await stopProc(disk);
  }
  for (const name of [SLOW_DISK.direct, SLOW_DISK.file, SLOW_DISK.nbd, SLOW_DISK.base, SLOW_DISK.loopDirect, SLOW_DISK.loop]) {
    if (samples.has(name)) kit.record(SLOW_DISK.scenario, SLOW_DISK.workload, name, samples.get(name)!, notes.get(name)?.join('; '));
  }
}

/** The issue's targets for this cell, on the medians. */
export function slowDiskTargets(get: (scenario: string, workload: string, server: string) => number | undefined,
  check: (label: string, a: number | undefined, b: number | undefined, min: number) => void): void {
  const iops = (server: string): number | undefined => get(SLOW_DISK.scenario, SLOW_DISK.workload, server);
  check('slow local disk: pcached (file origin) vs the disk read directly', iops(SLOW_DISK.file), iops(SLOW_DISK.direct), 3);
  check('slow local disk: pcached (file origin) vs pcached with the same export as an NBD origin', iops(SLOW_DISK.file), iops(SLOW_DISK.nbd), 0.9);
  check('slow local disk as a loop device: pcached (file origin on it) vs the loop device read directly', iops(SLOW_DISK.loop), iops(SLOW_DISK.loopDirect), 3);
  check('slow local disk as a loop device: pcached (file origin on it) vs pcached with the same export as an NBD origin', iops(SLOW_DISK.loop), iops(SLOW_DISK.nbd), 0.9);
}
