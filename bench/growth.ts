// The growth cells (issue 10): does pcached stay as fast, and how much memory does it take, as
// the cache grows from 256 MiB to 4 GiB, with 1, 2 and 4 stripes? For each size and stripe
// count: a fresh cache on this disk over a file origin of half the cache, filled with random
// 4 KiB writes (every block once: one 4 KiB extent per block, the index's worst case), then the
// same cells at every size: 4 KiB QD32 random reads (hits) and random writes. Reported next to
// the IOPS: the proportional set size (PSS, shared pages split between processes) of the daemon's
// processes, per GiB of cache and as the slope from the smallest size, and the index's bytes per
// extent from `status` (all stripes).

import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { fio, prefillFile, startProc, stopProc, type Sample } from './lib.js';
import type { CellKit } from './slow-disk.js';
import { waitClean } from './clean.js';
import { treePssKiB } from '../test/helpers/mem.js';

export interface GrowthOpts { reps: number; runtime: number; ramp: number; pcachedEnv: Record<string, string>; growthSizes: number[]; growthStripes: number[] }

export const GROWTH = { scenario: 'growth', read: 'randread-4k-qd32', write: 'randwrite-4k-qd32' } as const;

export interface GrowthRow { cacheMiB: number; stripes: number; extents: number; indexBytes: number; pssMiB: number }
export const growthRows: GrowthRow[] = [];

const READ = ['--rw=randread', '--bs=4k', '--iodepth=32', '--norandommap'];
const WRITE = ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--norandommap'];

export const serverName = (cacheMiB: number, stripes: number): string => `pcached-${cacheMiB >= 1024 ? `${cacheMiB / 1024}G` : `${cacheMiB}M`}-s${stripes}`;

export async function growthScenario(o: GrowthOpts, dir: string, kit: CellKit): Promise<void> {
  process.stdout.write(`\n== growth: caches of ${o.growthSizes.map((m) => `${m} MiB`).join(', ')} with ${o.growthStripes.join(', ')} stripes; origin half the cache, filled with 4 KiB random writes\n`);
  for (const stripes of o.growthStripes) {
    for (const cacheMiB of o.growthSizes) {
      const name = serverName(cacheMiB, stripes);
      const originBytes = Math.floor(cacheMiB / 8) * 4 * 2 ** 20;
      const origin = join(dir, `${name}-origin.img`);
      prefillFile(origin, originBytes);
      const pc = kit.pcachedArgs(dir, name, origin, `${cacheMiB}M`, undefined, ['--stripes', String(stripes)]);
      const proc = await startProc(name, process.execPath, pc.args, pc.sock, dir, o.pcachedEnv);
      try {
        await kit.waitInitialized(pc.control);
        const uri = `nbd+unix:///bench?socket=${pc.sock}`;
        // Every block once (fio's random map): one 4 KiB extent per block.
        await fio([`--name=fill-${name}`, '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=32', `--size=${originBytes}`], join(dir, `${name}-fill.json`), 1_800_000);
        const filled = kit.pcachedStatus(pc.control).cacheState as unknown as { index: { extents: number; bytes: number } };
        // Every size is measured in the same state: with the fill written back. Otherwise the
        // larger caches' reads would share the two cores with a writeback the smaller ones have
        // already finished (2 GiB of dirty data at 4 GiB of cache), and the cells would compare
        // that, not how the cache scales.
        const cleanS = await waitClean(kit, pc.control);
        const read: Sample[] = [];
        const write: Sample[] = [];
        // Reads first: the write cells make garbage that GC turns over, which the read cells would then miss.
        for (let rep = 0; rep < o.reps; rep++) read.push(await kit.fioNbd(uri, GROWTH.read, [...READ, `--size=${originBytes}`], o.runtime, o.ramp, join(dir, `${name}-r-${rep}.json`)));
        const st = kit.pcachedStatus(pc.control).cacheState!;
        for (let rep = 0; rep < o.reps; rep++) write.push(await kit.fioNbd(uri, GROWTH.write, [...WRITE, `--size=${originBytes}`], o.runtime, o.ramp, join(dir, `${name}-w-${rep}.json`)));
        if (!proc.alive()) throw new Error(`${name} died:\n${proc.log()}`);
        const pss = treePssKiB(proc.pid) * 1024;
        const row: GrowthRow = { cacheMiB, stripes, extents: filled.index.extents, indexBytes: filled.index.bytes, pssMiB: pss / 2 ** 20 };
        growthRows.push(row);
        const note = `after the fill (written back in ${cleanS.toFixed(0)} s): ${row.extents} extents, index ${(row.indexBytes / 2 ** 20).toFixed(1)} MiB (${(row.indexBytes / Math.max(1, row.extents)).toFixed(1)} B/extent); PSS ${row.pssMiB.toFixed(0)} MiB; hits ${st.readHits}/${st.readBlocks}`;
        kit.record(GROWTH.scenario, GROWTH.read, name, read, note);
        kit.record(GROWTH.scenario, GROWTH.write, name, write);
      } finally {
        await stopProc(proc);
        rmSync(origin, { force: true });
        rmSync(join(dir, `${name}-cache.img`), { force: true });
      }
    }
  }
}

type Get = (scenario: string, w: string, s: string) => number | undefined;
type Check = (label: string, a: number | undefined, b: number | undefined, min: number) => void;

/** IOPS at the largest size within 10 % of the smallest, per stripe count; index ≤ 24 B per extent; memory per GiB reported. */
export function growthTargets(get: Get, check: Check, out: string[], o: GrowthOpts): void {
  if (growthRows.length === 0) return;
  const lo = Math.min(...o.growthSizes), hi = Math.max(...o.growthSizes);
  for (const s of o.growthStripes) {
    for (const w of [GROWTH.read, GROWTH.write]) {
      check(`growth ${w}, ${s} stripe(s): ${hi} MiB cache vs ${lo} MiB`, get(GROWTH.scenario, w, serverName(hi, s)), get(GROWTH.scenario, w, serverName(lo, s)), 0.9);
    }
    const a = growthRows.find((r) => r.stripes === s && r.cacheMiB === lo);
    const b = growthRows.find((r) => r.stripes === s && r.cacheMiB === hi);
    if (a && b) {
      const slope = (b.pssMiB - a.pssMiB) / ((hi - lo) / 1024);
      out.push(`INFO  growth memory, ${s} stripe(s): PSS ${a.pssMiB.toFixed(0)} MiB at ${lo} MiB, ${b.pssMiB.toFixed(0)} MiB at ${hi} MiB: ${slope.toFixed(1)} MiB more per GiB of cache (${(b.pssMiB / (hi / 1024)).toFixed(1)} MiB per GiB in all)`);
      const per = b.indexBytes / Math.max(1, b.extents);
      out.push(`${per <= 24 ? 'PASS' : 'MISS'}  growth index, ${s} stripe(s), ${hi} MiB cache: ${per.toFixed(1)} bytes per extent over ${b.extents} extents (target ≤ 24)`);
    }
  }
}
