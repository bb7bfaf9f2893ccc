// The "cache device with direct I/O" cells (issue 10): the cache is a file on this machine's disk
// (not tmpfs), larger page-cache effects taken out by O_DIRECT. Side by side in each repetition:
// pcached with cacheDirectIo=on, pcached with cacheDirectIo=off (buffered: the page cache answers
// hits, which is the other half of the reasoning for the default on files), and fio itself on the
// same cache file with ioengine=io_uring direct=1 (the device's own bound). Workloads: read hits at
// 4 KiB QD32 (every block of the volume promoted first), random writes at 4 KiB QD32, and the QD1
// write latency p50 next to fio's QD1 p50 on the file plus nbdkit-memory's QD1 p50 (the
// transport), each QD1 cell started once both caches have written back what came before. fio
// on the file runs while pcached is stopped for reads (it only reads), and its write cells run
// last, on a copy of the file's size, so they never touch a cache pcached uses.

import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fio, prefillFile, startProc, stopProc, type FioDir, type Proc, type Sample } from './lib.js';
import type { CellKit } from './slow-disk.js';
import { waitClean } from './clean.js';

export interface DirectOpts { reps: number; runtime: number; ramp: number; pcachedEnv: Record<string, string> }

export const DIRECT = { scenario: 'direct', read: 'randread-4k-qd32', write: 'randwrite-4k-qd32', qd1: 'randwrite-4k-qd1',
  on: 'pcached-direct', off: 'pcached-buffered', fio: 'fio-io_uring-direct', mem: 'nbdkit-memory' } as const;

const ORIGIN_BYTES = 512 << 20;
const CACHE_SIZE = '1G';

async function fioFile(file: string, name: string, extra: string[], runtime: number, ramp: number, out: string, size: string): Promise<Sample> {
  const j = await fio([`--name=${name}`, `--filename=${file}`, '--ioengine=io_uring', '--direct=1', `--size=${size}`, '--numjobs=1', '--time_based',
    `--runtime=${runtime}`, `--ramp_time=${ramp}`, '--randrepeat=0', '--lat_percentiles=1', '--percentile_list=50:99', ...extra], out, (runtime + ramp + 120) * 1000);
  const job = (j.jobs as Array<Record<string, FioDir> & { error: number }>)[0]!;
  const r = job.read!, w = job.write!;
  const main = r.iops >= w.iops ? r : w;
  const pct = main.lat_ns.percentile ?? {};
  return { iops: r.iops + w.iops, mbps: (r.bw_bytes + w.bw_bytes) / 1e6, p50us: (pct['50.000000'] ?? NaN) / 1000, p99us: (pct['99.000000'] ?? NaN) / 1000, meanus: main.lat_ns.mean / 1000 };
}

const READ = ['--rw=randread', '--bs=4k', '--iodepth=32', '--norandommap'];
const WRITE = ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--norandommap'];
const QD1 = ['--rw=randwrite', '--bs=4k', '--iodepth=1', '--norandommap'];

export async function directScenario(o: DirectOpts, dir: string, kit: CellKit): Promise<void> {
  process.stdout.write(`\n== cache device with direct I/O: a ${CACHE_SIZE} cache file on this disk, ${ORIGIN_BYTES >> 20} MiB origin\n`);
  const servers: { name: string; uri: string; proc: Proc; control: string; cacheFile: string }[] = [];
  const samples = new Map<string, Sample[]>();
  const add = (w: string, s: string, x: Sample) => samples.set(`${w} ${s}`, [...(samples.get(`${w} ${s}`) ?? []), x]);
  try {
    for (const [name, mode] of [[DIRECT.on, 'on'], [DIRECT.off, 'off']] as const) {
      const origin = join(dir, `${name}-origin.img`);
      prefillFile(origin, ORIGIN_BYTES);
      const pc = kit.pcachedArgs(dir, name, origin, CACHE_SIZE);
      const proc = await startProc(name, process.execPath, pc.args, pc.sock, dir, { ...o.pcachedEnv, PCACHED_CACHE_DIRECT_IO: mode });
      servers.push({ name, uri: `nbd+unix:///bench?socket=${pc.sock}`, proc, control: pc.control, cacheFile: join(dir, `${name}-cache.img`) });
      await kit.waitInitialized(pc.control);
    }
    const ms = join(dir, 'direct-memory.sock');
    const mem = await startProc(DIRECT.mem, 'nbdkit', ['-f', '-U', ms, 'memory', String(ORIGIN_BYTES)], ms, dir);
    const memUri = `nbd+unix:///?socket=${ms}`;
    await fio(['--name=warm-mem', '--ioengine=nbd', `--uri=${memUri}`, '--rw=write', '--bs=1m', '--iodepth=8', `--size=${ORIGIN_BYTES}`], join(dir, 'warm-mem.json'), 600_000);
    // Promote the whole volume (64 KiB random reads: a sequential pass would pass the sequential
    // cutoff and not be promoted); the read cells then measure hits.
    for (const s of servers) {
      await fio([`--name=warm-${s.name}`, '--ioengine=nbd', `--uri=${s.uri}`, '--rw=randread', '--bs=64k', '--iodepth=16', `--size=${ORIGIN_BYTES}`], join(dir, `warm-${s.name}.json`), 600_000);
      const st = kit.pcachedStatus(s.control).cacheState!;
      process.stdout.write(`  ${s.name} after warm-up: ${st.readHits}/${st.readBlocks} read hits\n`);
    }
    for (let rep = 0; rep < o.reps; rep++) {
      for (const s of rep % 2 ? [...servers].reverse() : servers) {
        add(DIRECT.read, s.name, await kit.fioNbd(s.uri, DIRECT.read, [...READ, `--size=${ORIGIN_BYTES}`], o.runtime, o.ramp, join(dir, `dr-${s.name}-${rep}.json`)));
      }
      // fio reads the direct cell's own cache file (reads only: the cache is untouched).
      add(DIRECT.read, DIRECT.fio, await fioFile(servers[0]!.cacheFile, 'fio-read', READ, o.runtime, o.ramp, join(dir, `dr-fio-${rep}.json`), CACHE_SIZE));
    }
    const hits = servers.map((s) => { const st = kit.pcachedStatus(s.control).cacheState!; return `${s.name} hits ${st.readHits}/${st.readBlocks}`; }).join(', ');
    for (let rep = 0; rep < o.reps; rep++) {
      for (const s of rep % 2 ? [...servers].reverse() : servers) {
        add(DIRECT.write, s.name, await kit.fioNbd(s.uri, DIRECT.write, [...WRITE, `--size=${ORIGIN_BYTES}`], o.runtime, o.ramp, join(dir, `dw-${s.name}-${rep}.json`)));
      }
    }
    // A latency cell measures one request at a time against fio's on an idle file: not while
    // this cache (or the other one, on the same disk) writes back the QD32 cell before it.
    // Measured right after a QD32 cell, the p50 was 185-216 µs where it is ~100 µs idle.
    for (let rep = 0; rep < o.reps; rep++) {
      for (const s of rep % 2 ? [...servers].reverse() : servers) {
        for (const x of servers) await waitClean(kit, x.control);
        add(DIRECT.qd1, s.name, await kit.fioNbd(s.uri, DIRECT.qd1, [...QD1, `--size=${ORIGIN_BYTES}`], o.runtime, o.ramp, join(dir, `d1-${s.name}-${rep}.json`)));
      }
      for (const x of servers) await waitClean(kit, x.control);
      add(DIRECT.qd1, DIRECT.mem, await kit.fioNbd(memUri, DIRECT.qd1, [...QD1, `--size=${ORIGIN_BYTES}`], o.runtime, o.ramp, join(dir, `d1-mem-${rep}.json`)));
    }
    for (const s of servers) if (!s.proc.alive()) throw new Error(`${s.name} died:\n${s.proc.log()}`);
    for (const s of servers) await stopProc(s.proc);
    await stopProc(mem);
    // fio's writes on a file of the same size on the same file system (after the cells that used the caches).
    const scratch = join(dir, 'direct-fio-write.img');
    execFileSync('fallocate', ['-l', CACHE_SIZE, scratch]);
    for (let rep = 0; rep < o.reps; rep++) {
      add(DIRECT.write, DIRECT.fio, await fioFile(scratch, 'fio-write', WRITE, o.runtime, o.ramp, join(dir, `dw-fio-${rep}.json`), CACHE_SIZE));
      add(DIRECT.qd1, DIRECT.fio, await fioFile(scratch, 'fio-qd1', QD1, o.runtime, o.ramp, join(dir, `d1-fio-${rep}.json`), CACHE_SIZE));
    }
    rmSync(scratch, { force: true });
    for (const w of [DIRECT.read, DIRECT.write, DIRECT.qd1]) {
      for (const s of [DIRECT.on, DIRECT.off, DIRECT.fio, DIRECT.mem]) {
        const x = samples.get(`${w} ${s}`);
        if (x) kit.record(DIRECT.scenario, w, s, x, w === DIRECT.read && s === DIRECT.on ? hits : undefined);
      }
    }
  } finally {
    for (const s of servers) await stopProc(s.proc);
  }
}

type Get = (scenario: string, w: string, s: string) => number | undefined;

/** The bars for these cells. */
export function directTargets(get: Get, getP50: Get, check: (label: string, a: number | undefined, b: number | undefined, min: number) => void, out: string[]): void {
  check('direct I/O read hits QD32 vs fio io_uring direct on the same file', get(DIRECT.scenario, DIRECT.read, DIRECT.on), get(DIRECT.scenario, DIRECT.read, DIRECT.fio), 0.8);
  check('direct I/O randwrite QD32 vs fio io_uring direct on a file of the same size there', get(DIRECT.scenario, DIRECT.write, DIRECT.on), get(DIRECT.scenario, DIRECT.write, DIRECT.fio), 1.0);
  const p = getP50(DIRECT.scenario, DIRECT.qd1, DIRECT.on);
  const f = getP50(DIRECT.scenario, DIRECT.qd1, DIRECT.fio);
  const m = getP50(DIRECT.scenario, DIRECT.qd1, DIRECT.mem);
  if (p !== undefined && f !== undefined && m !== undefined) {
    out.push(`${p <= f + m ? 'PASS' : 'MISS'}  direct I/O QD1 write p50: ${p.toFixed(1)} µs (target ≤ fio's ${f.toFixed(1)} µs + nbdkit-memory's ${m.toFixed(1)} µs = ${(f + m).toFixed(1)} µs)`);
  }
}
