// Two page-cache cells of issue 10 that the fast scenario cannot show:
//
// * steady: random 4 KiB writes at QD32 once the cache is in steady state. The volume (256 MiB)
//   is half the cache (512 MiB), and every server is first given 1 GiB of random writes, so the
//   log has wrapped twice: GC frees written-back segments and writeback runs during the cell
//   (the notes show GC's freed segments and writeback's bytes in the measured interval). nbdkit's
//   cache filter gets the same cache size (cache-max-size, in writeback mode it must write back to
//   reclaim) and the same preconditioning; nbdkit-memory is the transport's ceiling. The fast
//   scenario's randwrite cell (a cache 6× the volume, GC never starts) is the "before GC" number.
// * passthrough: 4 KiB random reads at QD32 with pcached in passthrough mode on a file origin
//   held in the page cache, next to nbdkit-file on an identical file: what the daemon's shape
//   costs when nothing is cached.

import { copyFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fio, prefillFile, startProc, stopProc, type Proc, type Sample } from './lib.js';
import type { CellKit } from './slow-disk.js';

export interface SteadyOpts { reps: number; runtime: number; ramp: number; pcachedEnv: Record<string, string> }

export const STEADY = { scenario: 'steady', write: 'randwrite-4k-qd32', pcached: 'pcached', cache: 'nbdkit-cache', mem: 'nbdkit-memory' } as const;
export const PASS = { scenario: 'passthrough', read: 'randread-4k-qd32', pcached: 'pcached-passthrough', file: 'nbdkit-file' } as const;

const VOLUME = 256 << 20;
const CACHE = '512M';
const WRITE = ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--norandommap'];
const READ = ['--rw=randread', '--bs=4k', '--iodepth=32', '--norandommap'];

interface Server { name: string; uri: string; proc: Proc; control?: string }

/** Two identical pre-filled origin files, pcached's and nbdkit's. */
function twinOrigins(dir: string, tag: string): [string, string] {
  const p = join(dir, `${tag}-pcached.img`);
  const n = join(dir, `${tag}-nbdkit.img`);
  prefillFile(p, VOLUME);
  copyFileSync(p, n);
  return [p, n];
}

async function stopAll(servers: Server[]): Promise<void> {
  for (const s of servers) await stopProc(s.proc);
}

export async function steadyScenario(o: SteadyOpts, dir: string, kit: CellKit): Promise<void> {
  process.stdout.write(`\n== steady-state random writes: ${VOLUME >> 20} MiB volume, ${CACHE} caches, 1 GiB of random writes first (GC and writeback running)\n`);
  const [originP, originN] = twinOrigins(dir, 'steady');
  const servers: Server[] = [];
  try {
    const pc = kit.pcachedArgs(dir, 'steady-pcached', originP, CACHE);
    servers.push({ name: STEADY.pcached, uri: `nbd+unix:///bench?socket=${pc.sock}`, proc: await startProc(STEADY.pcached, process.execPath, pc.args, pc.sock, dir, o.pcachedEnv), control: pc.control });
    await kit.waitInitialized(pc.control);
    const cs = join(dir, 'steady-cache.sock');
    servers.push({ name: STEADY.cache, uri: `nbd+unix:///?socket=${cs}`, proc: await startProc(STEADY.cache, 'nbdkit', ['-f', '-U', cs, '--filter=cache', 'file', originN, 'cache=writeback', `cache-max-size=${CACHE}`], cs, dir) });
    const ms = join(dir, 'steady-memory.sock');
    servers.push({ name: STEADY.mem, uri: `nbd+unix:///?socket=${ms}`, proc: await startProc(STEADY.mem, 'nbdkit', ['-f', '-U', ms, 'memory', String(VOLUME)], ms, dir) });
    for (const s of servers) {
      await fio([`--name=pre-${s.name}`, '--ioengine=nbd', `--uri=${s.uri}`, ...WRITE, `--size=${VOLUME}`, '--io_size=1g'], join(dir, `steady-pre-${s.name}.json`), 900_000);
    }
    const before = kit.pcachedStatus(pc.control).cacheState as unknown as { workers: Record<string, number> };
    const samples = new Map<string, Sample[]>();
    for (let rep = 0; rep < o.reps; rep++) {
      for (const s of servers.map((_, i) => servers[(i + rep) % servers.length]!)) {
        const x = await kit.fioNbd(s.uri, STEADY.write, [...WRITE, `--size=${VOLUME}`], o.runtime, o.ramp, join(dir, `steady-${s.name}-${rep}.json`));
        samples.set(s.name, [...(samples.get(s.name) ?? []), x]);
        if (!s.proc.alive()) throw new Error(`${s.name} died:\n${s.proc.log()}`);
      }
    }
    const after = kit.pcachedStatus(pc.control).cacheState as unknown as { workers: Record<string, number>; segmentsUsed: number; segments: number; writeBlocked: number };
    const d = (k: string) => (after.workers[k] ?? 0) - (before.workers[k] ?? 0);
    const note = `during the cells: GC freed ${d('gc_segments_freed')} segments, writeback wrote ${(d('wb_bytes') / 2 ** 20).toFixed(0)} MiB; segments used ${after.segmentsUsed}/${after.segments}, writes blocked ${after.writeBlocked}`;
    for (const s of servers) kit.record(STEADY.scenario, STEADY.write, s.name, samples.get(s.name)!, s.name === STEADY.pcached ? note : undefined);
  } finally {
    await stopAll(servers);
    rmSync(originN, { force: true });
  }
}

export async function passthroughScenario(o: SteadyOpts, dir: string, kit: CellKit): Promise<void> {
  process.stdout.write(`\n== pass-through reads: ${VOLUME >> 20} MiB file origin in the page cache, pcached --mode passthrough vs nbdkit-file\n`);
  const [originP, originN] = twinOrigins(dir, 'pass');
  const servers: Server[] = [];
  try {
    const pc = kit.pcachedArgs(dir, 'pass-pcached', originP, '256M', undefined, ['--mode', 'passthrough']);
    servers.push({ name: PASS.pcached, uri: `nbd+unix:///bench?socket=${pc.sock}`, proc: await startProc(PASS.pcached, process.execPath, pc.args, pc.sock, dir, o.pcachedEnv), control: pc.control });
    const fs = join(dir, 'pass-file.sock');
    servers.push({ name: PASS.file, uri: `nbd+unix:///?socket=${fs}`, proc: await startProc(PASS.file, 'nbdkit', ['-f', '-U', fs, 'file', originN], fs, dir) });
    // Both files into the page cache (a sequential read through each server).
    for (const s of servers) await fio([`--name=warm-${s.name}`, '--ioengine=nbd', `--uri=${s.uri}`, '--rw=read', '--bs=1m', '--iodepth=8', `--size=${VOLUME}`], join(dir, `pass-warm-${s.name}.json`), 600_000);
    const samples = new Map<string, Sample[]>();
    for (let rep = 0; rep < o.reps; rep++) {
      for (const s of rep % 2 ? [...servers].reverse() : servers) {
        samples.set(s.name, [...(samples.get(s.name) ?? []), await kit.fioNbd(s.uri, PASS.read, [...READ, `--size=${VOLUME}`], o.runtime, o.ramp, join(dir, `pass-${s.name}-${rep}.json`))]);
        if (!s.proc.alive()) throw new Error(`${s.name} died:\n${s.proc.log()}`);
      }
    }
    const st = kit.pcachedStatus(pc.control).cacheState!;
    for (const s of servers) kit.record(PASS.scenario, PASS.read, s.name, samples.get(s.name)!, s.name === PASS.pcached ? `read hits ${st.readHits}/${st.readBlocks} (nothing is promoted in passthrough)` : undefined);
  } finally {
    await stopAll(servers);
  }
}

type Get = (scenario: string, w: string, s: string) => number | undefined;
type Check = (label: string, a: number | undefined, b: number | undefined, min: number) => void;

export function steadyTargets(get: Get, check: Check): void {
  check('steady-state randwrite QD32 (GC and writeback running) vs nbdkit cache filter', get(STEADY.scenario, STEADY.write, STEADY.pcached), get(STEADY.scenario, STEADY.write, STEADY.cache), 1.0);
  check('pass-through randread QD32 vs nbdkit-file', get(PASS.scenario, PASS.read, PASS.pcached), get(PASS.scenario, PASS.read, PASS.file), 0.8);
}
