import test from 'ava';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileBlockDevice, Rng, SimBlockDevice } from '../src/cache/blockdev.js';
import { KiB, MiB } from '../src/cache/layout.js';
import { KEY_DIRTY, KEY_TRIM } from '../src/cache/kset.js';
import type { CacheKey } from '../src/cache/kset.js';
import {
  formatDevice, openDevice, updateCacheInfo, updateDirtyTail, updateKeyTail, updateSegmentGen,
} from '../src/cache/format.js';
import type { CacheState } from '../src/cache/format.js';
import { KsetLogWriter, collectLog } from '../src/cache/key-log.js';
import type { LogPosition } from '../src/cache/meta-slots.js';
import { isPcachedError } from '../src/util/errors.js';

test('sim device: synced writes survive every crash; unsynced ones survive whole, torn or not at all', (t) => {
  const dev = new SimBlockDevice(8 * KiB);
  dev.pwrite(Buffer.alloc(1024, 1), 0);
  dev.sync();
  dev.pwrite(Buffer.alloc(2048, 2), 256); // spans sectors 0..4, starting mid-sector
  const seen = new Set<string>();
  for (let seed = 0; seed < 200; seed++) {
    const img = dev.crash(new Rng(seed)).image();
    t.true(img.subarray(0, 256).every((b) => b === 1));
    // Every 512-byte device sector holds either all-old or all-new bytes of the write.
    const sectors: string[] = [];
    for (let s = 0; s < 5; s++) {
      const from = Math.max(s * 512, 256);
      const to = Math.min(s * 512 + 512, 2304);
      const slice = img.subarray(from, to);
      const isNew = slice.every((b) => b === 2);
      const isOld = slice.every((b, i) => b === (from + i < 1024 ? 1 : 0));
      t.true(isNew || isOld, `seed ${seed} sector ${s}`);
      sectors.push(isNew ? 'n' : 'o');
    }
    seen.add(sectors.join(''));
  }
  t.true(seen.has('nnnnn') && seen.has('ooooo') && seen.size > 4, [...seen].join(' '));
  // Same seed, same image: failures reproduce.
  t.deepEqual(dev.crash(new Rng(5)).image(), dev.crash(new Rng(5)).image());
  t.is(dev.writes, 2);
  t.is(dev.syncs, 1);
  t.is(dev.unsynced, 1);
  t.throws(() => dev.pread(Buffer.alloc(2), 8 * KiB - 1), { message: /outside/ });
});

test('file device: pread/pwrite/sync round trip; range and open errors are typed', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-blockdev-'));
  try {
    const file = path.join(dir, 'cache');
    const dev = FileBlockDevice.open(file, { createSize: 2 * MiB });
    t.is(dev.size, 2 * MiB);
    dev.pwrite(Buffer.from('hello'), MiB + 3);
    dev.sync();
    const buf = Buffer.alloc(5);
    dev.pread(buf, MiB + 3);
    t.is(buf.toString(), 'hello');
    t.true(isPcachedError(t.throws(() => dev.pread(buf, 2 * MiB - 2)), 'ERR_CACHE_FILE'));
    const st = formatDevice(dev, { originSize: MiB, dataCrc: false, segmentSize: 64 * KiB, force: true });
    dev.close();
    const again = FileBlockDevice.open(file);
    t.deepEqual(openDevice(again).sb.uuid, st.sb.uuid);
    again.close();
    t.true(isPcachedError(t.throws(() => FileBlockDevice.open(path.join(dir, 'missing'))), 'ERR_CACHE_FILE'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---- crash property ----

const SEG = 64 * KiB;
const SEGMENTS = 24;
const ORIGIN = 256 * MiB;

interface Tracked<T> { synced: T; since: T[] }
const track = <T>(v: T): Tracked<T> => ({ synced: v, since: [] });
const json = (v: unknown) => JSON.stringify(v);

function randomKeys(rng: Rng): CacheKey[] {
  const n = rng.chance(0.7) ? 1 + rng.below(4) : rng.below(129);
  return Array.from({ length: n }, () => rng.chance(0.9)
    ? { originOffset: rng.below((1 << 16) - 4) * 4096, length: 512 * (1 + rng.below(16)), flags: KEY_DIRTY, segment: 1 + rng.below(SEGMENTS - 1), offset: rng.below(8) * 4096, generation: rng.below(5), dataCrc: 0 }
    : { originOffset: rng.below((1 << 16) - 4) * 4096, length: 4096, flags: KEY_TRIM, segment: 0, offset: 0, generation: 0, dataCrc: 0 });
}

interface ModelKset { lsn: number; crc: number; position: LogPosition }

/** One scenario: random updates, appends, syncs and crashes; returns the number of crashes checked. */
function runScenario(seed: number, steps: number): number {
  const rng = new Rng(seed);
  let dev = new SimBlockDevice(MiB + SEGMENTS * SEG);
  let st: CacheState = formatDevice(dev, { originSize: ORIGIN, dataCrc: false, segmentSize: SEG, uuid: Buffer.alloc(16, seed & 0xff) });
  let nextFree = 1;
  const alloc = () => (nextFree < SEGMENTS ? nextFree++ : null);
  let writer = new KsetLogWriter(st, collectLog(st).stop, rng.u32(), alloc);
  let log: ModelKset[] = [];
  let durableKsets = 0;
  const info = track(json(st.cacheInfo.value));
  const keyTail = track(st.keyTail.value);
  const dirtyTail = track(st.dirtyTail.value);
  const gens = st.segments.map(() => track(0));
  const records = [info, keyTail, dirtyTail, ...gens] as Tracked<unknown>[];
  const markSynced = () => {
    durableKsets = log.length;
    for (const r of records) if (r.since.length > 0) { r.synced = r.since[r.since.length - 1]; r.since = []; }
  };
  const sync = () => { dev.sync(); markSynced(); };
  // The engine's dual-slot rule: a record is not written twice between barriers.
  const beforeUpdate = (r: Tracked<unknown>) => { if (r.since.length > 0) sync(); };
  let crashes = 0;

  for (let step = 0; step < steps; step++) {
    const r = rng.below(100);
    if (r < 45) {
      const syncsBefore = dev.syncs;
      let appended;
      try { appended = writer.append(randomKeys(rng)); } catch (err) { if (isPcachedError(err, 'ERR_LOG_FULL')) continue; throw err; }
      if (dev.syncs !== syncsBefore) markSynced();
      log.push({ lsn: appended.position.lsn, crc: appended.crc, position: appended.position });
    } else if (r < 55) {
      sync();
    } else if (r < 62) {
      beforeUpdate(info);
      const v = { mode: 'writeback' as const, gcPercent: rng.below(91), flags: 0 };
      updateCacheInfo(st, v);
      info.since.push(json(v));
    } else if (r < 68) {
      const s = rng.below(SEGMENTS);
      beforeUpdate(gens[s]);
      const g = (gens[s].since.at(-1) ?? gens[s].synced) + 1;
      updateSegmentGen(st, s, g);
      gens[s].since.push(g);
    } else if (r < 76) {
      // Writeback only ever passes ksets that are durable.
      const cands = log.slice(0, durableKsets).filter((k) => k.lsn >= st.dirtyTail.value.lsn);
      if (cands.length === 0) continue;
      beforeUpdate(dirtyTail);
      const k = cands[rng.below(cands.length)];
      updateDirtyTail(st, k.position);
      dirtyTail.since.push(k.position);
    } else if (r < 82) {
      // GC never passes the durable dirty tail.
      const cands = log.filter((k) => k.lsn >= st.keyTail.value.lsn && k.lsn <= dirtyTail.synced.lsn);
      if (cands.length === 0) continue;
      beforeUpdate(keyTail);
      const k = cands[rng.below(cands.length)];
      updateKeyTail(st, k.position);
      keyTail.since.push(k.position);
    } else {
      crashes++;
      const img = dev.crash(rng);
      const re = openDevice(img, { originSize: ORIGIN, dataCrc: false });
      const where = `seed ${seed} step ${step}`;
      if (re.damaged.length > 0 || re.warnings.length > 0) throw new Error(`${where}: ${re.warnings.join('; ')}`);
      const oneOf = <T>(tr: Tracked<T>, got: T, name: string) => {
        if (![tr.synced, ...tr.since].some((v) => json(v) === json(got))) throw new Error(`${where}: ${name} ${json(got)} was never written`);
      };
      oneOf(info, json(re.cacheInfo.value), 'cache info');
      oneOf(keyTail, re.keyTail.value, 'key tail');
      oneOf(dirtyTail, re.dirtyTail.value, 'dirty tail');
      if (re.keyTail.value.lsn < keyTail.synced.lsn) throw new Error(`${where}: key tail went backwards`);
      if (re.dirtyTail.value.lsn < dirtyTail.synced.lsn) throw new Error(`${where}: dirty tail went backwards`);
      re.segments.forEach((s, i) => oneOf(gens[i], s.gen.value, `segment ${i} gen`));
      const scan = collectLog(re);
      const got = scan.ksets.filter((k) => !k.last);
      const expected = log.filter((k) => k.lsn >= re.keyTail.value.lsn);
      const mustHave = log.slice(0, durableKsets).filter((k) => k.lsn >= re.keyTail.value.lsn).length;
      if (got.length < mustHave || got.length > expected.length) throw new Error(`${where}: scanned ${got.length}, durable ${mustHave}, appended ${expected.length}, stop ${json(scan.stop)}`);
      got.forEach((k, i) => {
        if (k.lsn !== expected[i].lsn || k.crc !== expected[i].crc) throw new Error(`${where}: kset ${i} is not the one appended`);
      });
      // Carry on from the crashed image: it is the new durable baseline.
      dev = img;
      st = re;
      writer = new KsetLogWriter(st, scan.stop, rng.u32(), alloc);
      log = [...log.filter((k) => k.lsn < re.keyTail.value.lsn), ...expected.slice(0, got.length)];
      durableKsets = log.length;
      info.synced = json(re.cacheInfo.value); info.since = [];
      keyTail.synced = re.keyTail.value; keyTail.since = [];
      dirtyTail.synced = re.dirtyTail.value; dirtyTail.since = [];
      re.segments.forEach((s, i) => { gens[i].synced = s.gen.value ?? 0; gens[i].since = []; });
    }
  }
  return crashes;
}

test('crash property: opened state was written and is not older than the last sync; the log is a prefix', (t) => {
  let crashes = 0;
  fc.assert(fc.property(fc.integer(), (seed) => { crashes += runScenario(seed >>> 0, 120); return true; }), { seed: 20261121, numRuns: 70 });
  t.log(`${crashes} simulated crashes`);
  t.true(crashes >= 1000, `${crashes} crashes`);
});
