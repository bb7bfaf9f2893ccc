// Cache files through the real daemon (`pcached start`): what is formatted, what is refused, and
// what happens when a cache file written by an earlier run is damaged before the next start.
//
// Every scenario uses its own temp dir, a small cache (16 MiB, 1 MiB segments) and a 64 MiB origin
// seeded with random bytes, so that "the origin's content" and "the data written" can always be
// told apart, and garbage is neither. Damaged files are patched with plain byte writes at the
// offsets of docs/format.md (src/cache/layout.ts); `pcached inspect --json` locates the newest
// slot of each record and the log. Refusals must be a nonzero exit with one `pcached: ...` line
// naming the reason, leave the file byte-for-byte unchanged, and leave no coordinator behind.
// A damaged cache that is accepted must never serve a byte that is neither written nor the origin's.

import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CACHE_INFO_OFFSETS, DIRTY_TAIL_OFFSETS, KEY_SIZE, KEY_TAIL_OFFSETS, KSET_ALIGN, KSET_HEADER_SIZE, MiB, SUPERBLOCK_OFFSET, alignUp, dataOffset,
} from '../src/cache/layout.js';
import {
  coordinatorPid, pcachedCli, pidRunning, spawnPcached, statusJson, waitAccepting, waitFor, within, type Proc,
} from './helpers/lifecycle.js';
import { nbdUri } from './helpers/daemon.js';
import { describe, needTools, nbdsh, skipSuffix } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');
// Each scenario starts one or two daemons at a time; serial keeps the machine (and timings) sane.
const t_ = why ? test.skip : test.serial;

const BLK = 4096;
const ORIGIN_SIZE = 64 * MiB;
const CACHE_SIZE = '16M';
const NAME = 'vol';

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

// ---------------------------------------------------------------------------------------------
// Scenario plumbing

interface Env {
  dir: string;
  origin: string;
  cache: string;
  sock: string;
  control: string;
  uri: string;
  /** What the origin file held before any daemon ran. */
  originInit: Buffer;
}

/** A fresh temp dir with an origin of `originSize` random bytes; removed in teardown. */
function makeEnv(t: ExecutionContext, originSize = ORIGIN_SIZE): Env {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-cf-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  const originInit = randomBytes(originSize);
  writeFileSync(origin, originInit);
  const sock = join(dir, 'nbd.sock');
  return { dir, origin, cache: join(dir, 'cache.img'), sock, control: join(dir, 'control.sock'), uri: nbdUri(sock, NAME), originInit };
}

function startArgs(e: Env, extra: string[]): string[] {
  return ['--origin', e.origin, '--cache', e.cache, '--cache-size', CACHE_SIZE, '--segment-size', '1M',
    '--unix', e.sock, '--tcp', '', '--name', NAME, '--stripes', '2', '--control', e.control, '--log-level', 'warn', ...extra];
}

interface Running { proc: Proc; coord: number }

/**
 * Every process a test started: supervisors by Proc, coordinators by PID. Teardown stops them all
 * (SIGTERM, SIGKILL after a grace period) and checks nothing was left running.
 */
function tracker(t: ExecutionContext) {
  const procs: Proc[] = [];
  const coords = new Set<number>();
  t.teardown(async () => {
    for (const p of procs) await p.stop('SIGTERM', 20_000);
    for (const c of coords) {
      await waitFor(`coordinator ${c} to exit`, () => !pidRunning(c), 10_000, 50).catch(() => {
        try { process.kill(c, 'SIGKILL'); } catch { /* gone */ }
      });
    }
  });
  return { procs, coords };
}

type Tracker = ReturnType<typeof tracker>;

/** `pcached start` that must come up: waits until the NBD socket accepts. */
async function start(tr: Tracker, e: Env, extra: string[] = [], env: Record<string, string> = {}): Promise<Running> {
  const proc = spawnPcached(startArgs(e, extra), { cwd: e.dir, env });
  tr.procs.push(proc);
  await waitAccepting(e.sock, proc, 60_000);
  const coord = await coordinatorPid(e.control);
  tr.coords.add(coord);
  return { proc, coord };
}

/** SIGTERM the supervisor: exit 0, and the coordinator is gone too. */
async function stop(t: ExecutionContext, r: Running): Promise<void> {
  const code = await r.proc.stop('SIGTERM', 60_000);
  t.is(code, 0, `graceful stop:\n${r.proc.output()}`);
  await waitFor(`coordinator ${r.coord} to exit`, () => !pidRunning(r.coord), 15_000, 50);
}

/**
 * `pcached start` that must be refused: exit 1 within 60 s, a one-line `pcached: ` reason matching
 * `re`, no bare stack trace, the cache file unchanged, and no coordinator left running.
 */
async function refused(t: ExecutionContext, tr: Tracker, e: Env, extra: string[], re: RegExp, what: string): Promise<string> {
  const before = fileState(e.cache);
  const proc = spawnPcached(startArgs(e, extra), { cwd: e.dir });
  tr.procs.push(proc);
  return checkRefusal(t, tr, e, proc, before, re, what);
}

function fileState(path: string): { sha: string; size: number } | null {
  return existsSync(path) ? { sha: sha256(path), size: statSync(path).size } : null;
}

async function checkRefusal(t: ExecutionContext, tr: Tracker, e: Env, proc: Proc, before: { sha: string; size: number } | null, re: RegExp, what: string): Promise<string> {
  const code = await within(proc.exited, 60_000, -1);
  const out = proc.output();
  t.is(code, 1, `${what}: exit code\n${out}`);
  const reason = out.split('\n').filter((l) => l.startsWith('pcached: '));
  t.is(reason.length, 1, `${what}: exactly one "pcached: " line on stderr\n${out}`);
  t.regex(reason[0] ?? '', re, `${what}: the reason`);
  // Structured log lines may carry a stack inside their JSON; anything else must not be a trace.
  const plain = out.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('{'));
  t.deepEqual(plain.filter((l) => /^\s+at |Uncaught|node:internal|^\w*Error: /.test(l)), [], `${what}: no bare stack trace\n${out}`);
  for (const m of out.matchAll(/"childPid":(\d+)/g)) {
    const pid = Number(m[1]);
    tr.coords.add(pid);
    await waitFor(`refused coordinator ${pid} to exit`, () => !pidRunning(pid), 15_000, 50);
  }
  t.false(existsSync(e.sock), `${what}: no NBD socket left behind`);
  t.false(existsSync(e.control), `${what}: no control socket left behind`);
  if (before !== null) {
    t.is(statSync(e.cache).size, before.size, `${what}: the cache file keeps its size`);
    t.is(sha256(e.cache), before.sha, `${what}: the cache file is unchanged`);
  }
  return reason[0] ?? '';
}

/** Wait until the writeback has nothing left (so the origin must hold every write). */
async function drained(e: Env): Promise<void> {
  await waitFor('writeback to drain', async () => (await statusJson(e.control)).caches[0]!.cacheState!.dirtyBlocks === 0, 60_000, 100);
}

// ---------------------------------------------------------------------------------------------
// I/O through the daemon (nbdsh), against a model of what the volume must hold

interface Write { off: number; data: Buffer }

/** Write every piece (each followed by FLUSH, so each lands in its own committed kset), then FLUSH. */
async function nbdWrite(e: Env, writes: Write[], tag: string): Promise<void> {
  const dataFile = join(e.dir, `w-${tag}.bin`);
  const spec: [number, number, number][] = [];
  let at = 0;
  for (const w of writes) {
    spec.push([w.off, w.data.length, at]);
    at += w.data.length;
  }
  writeFileSync(dataFile, Buffer.concat(writes.map((w) => w.data)));
  const r = await nbdsh(`
import json
spec = json.loads(${JSON.stringify(JSON.stringify(spec))})
data = open(${JSON.stringify(dataFile)}, 'rb').read()
for off, ln, at in spec:
    h.pwrite(data[at:at + ln], off)
    h.flush()
h.flush()
print('ok')
`, { uri: e.uri, timeoutMs: 120_000 });
  rmSync(dataFile, { force: true });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`writes through ${e.uri} failed: ${describe(r)}`);
}

/** The whole export as read through the daemon. */
async function nbdReadAll(e: Env, size: number): Promise<Buffer> {
  const out = join(e.dir, 'readback.bin');
  const r = await nbdsh(`
size = h.get_size()
assert size == ${size}, size
with open(${JSON.stringify(out)}, 'wb') as f:
    for off in range(0, size, 4 << 20):
        f.write(h.pread(min(4 << 20, size - off), off))
print('ok')
`, { uri: e.uri, timeoutMs: 120_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`read of ${e.uri} failed: ${describe(r)}`);
  const buf = readFileSync(out);
  rmSync(out, { force: true });
  return buf;
}

/** The volume's expected content: the origin's initial bytes with every write applied. */
class Model {
  readonly img: Buffer;
  constructor(init: Buffer) { this.img = Buffer.from(init); }
  apply(ws: Write[]): void {
    for (const w of ws) w.data.copy(this.img, w.off);
  }
}

/**
 * Writes in disjoint places (so every block is written at most once): `count` extents of 4 KiB to
 * 256 KiB spread over the volume, never touching the blocks `avoid` already holds.
 */
function makeWrites(count: number, seed: number, avoid = new Set<number>(), size = ORIGIN_SIZE): Write[] {
  const ws: Write[] = [];
  const blocks = size / BLK;
  let x = seed >>> 0 || 1;
  const rnd = (n: number): number => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x % n;
  };
  while (ws.length < count) {
    const len = [1, 1, 3, 16, 64][rnd(5)]!;
    const first = rnd(blocks - len);
    let free = true;
    for (let b = first - 1; b <= first + len; b++) if (avoid.has(b)) free = false;
    if (!free) continue;
    for (let b = first; b < first + len; b++) avoid.add(b);
    ws.push({ off: first * BLK, data: randomBytes(len * BLK) });
  }
  return ws;
}

/** First block where `got` differs from `want`, described; null when equal. */
function firstDiff(got: Buffer, want: Buffer): string | null {
  if (got.length !== want.length) return `length ${got.length}, expected ${want.length}`;
  for (let b = 0; b * BLK < want.length; b++) {
    const g = got.subarray(b * BLK, (b + 1) * BLK);
    if (!g.equals(want.subarray(b * BLK, (b + 1) * BLK))) return `block ${b} (offset ${b * BLK}) differs`;
  }
  return null;
}

function blocksOf(ws: Write[]): Set<number> {
  const s = new Set<number>();
  for (const w of ws) for (let b = w.off / BLK; b < (w.off + w.data.length) / BLK; b++) s.add(b);
  return s;
}

// ---------------------------------------------------------------------------------------------
// The cache file: inspect, patch, walk the key log

interface InspectJson {
  formatted: boolean;
  fileSize: number;
  superblock: { version: number; originSize: number; segmentSize: number; segmentCount: number; dataCrc: boolean; deviceSize: number };
  cacheInfo: { gcPercent: number; slot: 0 | 1 | null; seq: number; defaulted: boolean };
  keyTail: { segment: number; offset: number; lsn: number; slot: 0 | 1 | null; seq: number };
  dirtyTail: { segment: number; offset: number; lsn: number; slot: 0 | 1 | null; seq: number; fallback: boolean };
  log: { ksets: number; keys: number; firstLsn: number | null; lastLsn: number | null; stop: { segment: number; offset: number; lsn: number; reason: string; detail: string } };
  warnings: string[];
}

async function inspect(cache: string): Promise<InspectJson> {
  const r = await pcachedCli(['inspect', '--cache', cache, '--json']);
  if (r.code !== 0) throw new Error(`pcached inspect failed: ${describe(r)}`);
  return JSON.parse(r.stdout) as InspectJson;
}

function patch(file: string, off: number, bytes: Buffer): void {
  const fd = openSync(file, 'r+');
  try { writeSync(fd, bytes, 0, bytes.length, off); } finally { closeSync(fd); }
}

function readAt(file: string, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = openSync(file, 'r');
  try { readSync(fd, b, 0, len, off); } finally { closeSync(fd); }
  return b;
}

function flipBit(file: string, off: number, bit: number): void {
  patch(file, off, Buffer.from([readAt(file, off, 1)[0]! ^ (1 << bit)]));
}

interface WalkedKset { lsn: number; at: number; last: boolean; keys: { off: number; len: number; flags: number }[] }

/**
 * The ksets of the log as `inspect` scanned them (from the key tail, `log.ksets` of them), read
 * straight from the file by the layout of docs/format.md §6: position, LSN and keys of each.
 */
function walkLog(file: string, ins: InspectJson): WalkedKset[] {
  const S = ins.superblock.segmentSize;
  let seg = ins.keyTail.segment;
  let off = ins.keyTail.offset;
  const out: WalkedKset[] = [];
  for (let i = 0; i < ins.log.ksets; i++) {
    const at = dataOffset(seg, off, S);
    const h = readAt(file, at, KSET_HEADER_SIZE);
    if (h.readUInt32LE(4) !== 0x5445534b) throw new Error(`no kset magic at ${seg}:${off} (kset ${i} of ${ins.log.ksets})`);
    const lsn = Number(h.readBigUInt64LE(8));
    const count = h.readUInt16LE(20);
    const last = (h.readUInt16LE(22) & 1) !== 0;
    const keys: WalkedKset['keys'] = [];
    const kb = readAt(file, at + KSET_HEADER_SIZE, count * KEY_SIZE);
    for (let k = 0; k < count; k++) {
      keys.push({ off: Number(kb.readBigUInt64LE(k * KEY_SIZE)), len: kb.readUInt32LE(k * KEY_SIZE + 8), flags: kb.readUInt32LE(k * KEY_SIZE + 12) });
    }
    out.push({ lsn, at, last, keys });
    if (last) {
      seg = h.readUInt32LE(24);
      off = 0;
    } else {
      off += alignUp(KSET_HEADER_SIZE + KEY_SIZE * count, KSET_ALIGN);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 1. Format semantics

t_('an absent cache file is created at --cache-size, formatted for the origin, and serves' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  t.false(existsSync(e.cache));
  const d = await start(tr, e);
  t.is(statSync(e.cache).size, 16 * MiB);
  const ws = makeWrites(20, 1);
  const model = new Model(e.originInit);
  await nbdWrite(e, ws, 'a');
  model.apply(ws);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await stop(t, d);
  const ins = await inspect(e.cache);
  t.like(ins, { formatted: true, superblock: { version: 1, originSize: ORIGIN_SIZE, segmentSize: MiB, segmentCount: 15, dataCrc: false, deviceSize: 16 * MiB } });
  t.deepEqual(ins.warnings, []);
  // Restart on the same files: the cache is replayed, not reformatted, and the data is all there.
  const uuid = readAt(e.cache, SUPERBLOCK_OFFSET + 48, 16).toString('hex');
  const d2 = await start(tr, e);
  t.is(readAt(e.cache, SUPERBLOCK_OFFSET + 48, 16).toString('hex'), uuid, 'same superblock UUID after a restart');
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await drained(e);
  await stop(t, d2);
  t.is(firstDiff(readFileSync(e.origin), model.img), null, 'the origin holds every write once writeback has drained');
});

t_('a cache file whose first MiB is zeros is formatted; stale bytes behind it are never served' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  // A blank metadata area, random bytes in every segment (what an old cache may leave behind).
  writeFileSync(e.cache, Buffer.concat([Buffer.alloc(MiB), randomBytes(15 * MiB)]));
  const d = await start(tr, e);
  const model = new Model(e.originInit);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null, 'reads show the origin, not the old bytes');
  const ws = makeWrites(10, 2);
  await nbdWrite(e, ws, 'a');
  model.apply(ws);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await stop(t, d);
  t.like(await inspect(e.cache), { formatted: true, superblock: { originSize: ORIGIN_SIZE } });
});

t_('random bytes are refused without --format (file unchanged); with --format the file is formatted and serves' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  writeFileSync(e.cache, randomBytes(16 * MiB));
  const line = await refused(t, tr, e, [], /--format/, 'random bytes');
  t.regex(line, /not a pcached cache|no pcached superblock|bad magic/i);
  t.true(line.includes(e.cache), `names the cache file: ${line}`);

  const d = await start(tr, e, ['--format']);
  const model = new Model(e.originInit);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null, 'the old random bytes are never served');
  const ws = makeWrites(10, 3);
  await nbdWrite(e, ws, 'a');
  model.apply(ws);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await stop(t, d);
  t.like(await inspect(e.cache), { formatted: true, superblock: { originSize: ORIGIN_SIZE, deviceSize: 16 * MiB } });
  // And a plain restart now accepts it.
  const d2 = await start(tr, e);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await stop(t, d2);
});

t_('a refusal names the cache once: `pcached: cache "NAME" (PATH): reason`' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  writeFileSync(e.cache, randomBytes(2 * MiB));
  const line = await refused(t, tr, e, [], /--format/, 'random bytes');
  // Observed: `pcached: cache "vol": cache "vol" (/tmp/.../cache.img): no pcached superblock ...`:
  // CoordinatorHandle prefixes `cache "NAME": ` to a fatal message CacheRuntime.open already prefixed.
  t.is(line.split(`cache "${NAME}"`).length - 1, 1, line);
});

t_('a cache formatted for a 64 MiB origin is refused for a 128 MiB origin (both sizes named); --format reformats it' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  const d = await start(tr, e);
  await nbdWrite(e, makeWrites(4, 4), 'a');
  // --format refuses a cache holding dirty data (cache-format-dirty.test.ts): write it back first.
  await drained(e);
  await stop(t, d);
  // The same origin path, grown to 128 MiB (the new half reads as zeros).
  truncateSync(e.origin, 2 * ORIGIN_SIZE);
  const originBefore = sha256(e.origin);
  const line = await refused(t, tr, e, [], /67108864.*134217728|134217728.*67108864/, 'origin grown to 128 MiB');
  t.regex(line, /origin/);
  t.is(sha256(e.origin), originBefore, 'the origin is not touched by a refused start');

  const d2 = await start(tr, e, ['--format']);
  const ins = await inspect(e.cache);
  t.is(ins.superblock.originSize, 2 * ORIGIN_SIZE);
  const model = new Model(readFileSync(e.origin));
  t.is(firstDiff(await nbdReadAll(e, 2 * ORIGIN_SIZE), model.img), null);
  const ws = makeWrites(6, 5, new Set(), 2 * ORIGIN_SIZE);
  await nbdWrite(e, ws, 'b');
  model.apply(ws);
  t.is(firstDiff(await nbdReadAll(e, 2 * ORIGIN_SIZE), model.img), null);
  await stop(t, d2);
});

t_('a cache formatted without --data-crc is refused with --data-crc (and vice versa); --format reformats it' + skipSuffix(why), async (t) => {
  t.timeout(240_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  const d = await start(tr, e);
  const model = new Model(e.originInit);
  const ws = makeWrites(6, 6);
  await nbdWrite(e, ws, 'a');
  model.apply(ws);
  await stop(t, d);
  await refused(t, tr, e, ['--data-crc'], /dataCrc/, 'formatted without dataCrc, started with --data-crc');

  // The refusal changed nothing: a start with the original setting still serves the same data.
  const d2 = await start(tr, e);
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  // --format refuses while anything is dirty in the cache: let writeback finish first.
  await drained(e);
  await stop(t, d2);

  const d3 = await start(tr, e, ['--data-crc', '--format']);
  t.is((await inspect(e.cache)).superblock.dataCrc, true);
  t.is((await statusJson(e.control)).caches[0]!.cacheState!.dataCrc, true);
  // Everything from before is on the origin, so nothing is lost by reformatting.
  t.is(firstDiff(await nbdReadAll(e, ORIGIN_SIZE), model.img), null);
  await stop(t, d3);
  await refused(t, tr, e, [], /dataCrc/, 'formatted with dataCrc, started without --data-crc');
});

t_('--gc-percent given at a restart is applied, not silently replaced by the value stored in the cache file' + skipSuffix(why), async (t) => {
  // gcPercent is a run-time setting (reloadable; flags > env > config > defaults), not a format-time
  // one. Observed: the restarted daemon reports (and uses) the gcPercent of the cache info record.
  t.timeout(120_000);
  const e = makeEnv(t);
  const tr = tracker(t);
  const d = await start(tr, e, ['--gc-percent', '90']);
  t.is((await statusJson(e.control)).caches[0]!.cacheState!.gcPercent, 90);
  await stop(t, d);
  const d2 = await start(tr, e, ['--gc-percent', '20']);
  t.is((await statusJson(e.control)).caches[0]!.cacheState!.gcPercent, 20, 'the --gc-percent of this start');
  await stop(t, d2);
});

// ---------------------------------------------------------------------------------------------
// 2. Damaged cache files

/** Writeback throttled so that data written just before the stop is still dirty in the cache. */
const SLOW_WRITEBACK = { PCACHED_WRITEBACK_RATE: '1MiB' };

interface Prepared {
  e: Env;
  tr: Tracker;
  model: Model;
  writes: Write[];
  /** Dirty blocks reported just before the stop. */
  dirtyAtStop: number;
}

/**
 * Writes ~40 extents (each FLUSHed, so each is a committed kset) through a daemon with slow
 * writeback and GC at 90 %, then SIGTERM at once: some of the data is still only in the cache.
 */
async function prepare(t: ExecutionContext, seed: number, opts: { gcPercentMessage?: number } = {}): Promise<Prepared> {
  const e = makeEnv(t);
  const tr = tracker(t);
  const d = await start(tr, e, ['--gc-percent', '90'], SLOW_WRITEBACK);
  if (opts.gcPercentMessage !== undefined) {
    const r = await pcachedCli(['message', NAME, 'gc_percent', String(opts.gcPercentMessage), '--control', e.control]);
    t.is(r.code, 0, describe(r));
  }
  const model = new Model(e.originInit);
  const writes = makeWrites(40, seed);
  await nbdWrite(e, writes, 'prep');
  model.apply(writes);
  if (opts.gcPercentMessage === 0) {
    // GC retires what writeback has done: wait until it has moved the key tail at least once.
    await waitFor('GC to move the key tail', async () => !(await statusJson(e.control)).caches[0]!.cacheState!.keyTail.endsWith('#1'), 60_000, 50);
  }
  const st = (await statusJson(e.control)).caches[0]!.cacheState!;
  t.deepEqual(st.errors, []);
  await stop(t, d);
  t.log(`before the stop: ${st.dirtyBlocks} dirty blocks, keyHead ${st.keyHead}, dirtyTail ${st.dirtyTail}, keyTail ${st.keyTail}`);
  return { e, tr, model, writes, dirtyAtStop: st.dirtyBlocks };
}

/**
 * Start on the damaged file: either it starts (the running daemon is returned) or it is refused
 * with every property `refused` checks, the reason matching `refusal` (null is returned).
 */
async function startOrRefuse(t: ExecutionContext, p: Prepared, refusal: RegExp, what: string): Promise<Running | null> {
  const before = fileState(p.e.cache);
  const proc = spawnPcached(startArgs(p.e, []), { cwd: p.e.dir });
  p.tr.procs.push(proc);
  const up = await Promise.race([
    waitAccepting(p.e.sock, proc, 60_000).then(() => true, () => false),
    proc.exited.then(() => false),
  ]);
  if (up && proc.alive()) {
    const coord = await coordinatorPid(p.e.control);
    p.tr.coords.add(coord);
    t.log(`${what}: started`);
    return { proc, coord };
  }
  await checkRefusal(t, p.tr, p.e, proc, before, refusal, what);
  t.log(`${what}: refused: ${proc.output().split('\n').find((l) => l.startsWith('pcached: '))}`);
  return null;
}

t_('damaged: a cache file truncated to half is refused with a one-line reason, unchanged' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const p = await prepare(t, 11);
  truncateSync(p.e.cache, 8 * MiB);
  const line = await refused(t, p.tr, p.e, [], /truncated/, 'truncated cache');
  t.regex(line, /8388608/);
  t.regex(line, /16777216/);
});

t_('damaged: a superblock with another format version is refused naming the version, unchanged' + skipSuffix(why), async (t) => {
  t.timeout(180_000);
  const p = await prepare(t, 12);
  patch(p.e.cache, SUPERBLOCK_OFFSET + 8, Buffer.from([7, 0, 0, 0]));
  const line = await refused(t, p.tr, p.e, [], /version 7/, 'format version 7');
  t.regex(line, /version 1/, 'names the version this pcached reads too');
});

/** After a start on a damaged file: the whole volume equals the model; write more, restart, again. */
async function verifyAndContinue(t: ExecutionContext, p: Prepared, d: Running, what: string): Promise<void> {
  t.is(firstDiff(await nbdReadAll(p.e, ORIGIN_SIZE), p.model.img), null, `${what}: every byte read equals what was written`);
  t.deepEqual((await statusJson(p.e.control)).caches[0]!.cacheState!.errors, [], `${what}: no cache errors`);
  const more = makeWrites(10, 99, blocksOf(p.writes));
  await nbdWrite(p.e, more, 'more');
  p.model.apply(more);
  t.is(firstDiff(await nbdReadAll(p.e, ORIGIN_SIZE), p.model.img), null, `${what}: writes after the recovery`);
  await stop(t, d);
  const d2 = await start(p.tr, p.e);
  t.is(firstDiff(await nbdReadAll(p.e, ORIGIN_SIZE), p.model.img), null, `${what}: after one more restart`);
  await drained(p.e);
  await stop(t, d2);
  t.is(firstDiff(readFileSync(p.e.origin), p.model.img), null, `${what}: the origin holds everything once writeback has drained`);
}

for (const [rec, offsets, key, gcPercent] of [
  // gc_percent changed at run time, so the cache info record has a second, newer slot.
  ['cache info', CACHE_INFO_OFFSETS, 'cacheInfo', 85],
  // GC at 90 % never runs here: the key tail keeps its one slot from format, and nothing can replace it.
  ['key tail', KEY_TAIL_OFFSETS, 'keyTail', 85],
  // GC at 0 % retires what writeback has done: the key tail moves and both slots hold a copy.
  ['key tail (moved by GC)', KEY_TAIL_OFFSETS, 'keyTail', 0],
  ['dirty tail', DIRTY_TAIL_OFFSETS, 'dirtyTail', 85],
] as const) {
  t_(`damaged: a flipped bit in the newest ${rec} slot: falls back to the other slot (or a clear refusal), never wrong data` + skipSuffix(why), async (t) => {
    t.timeout(240_000);
    const p = await prepare(t, 20 + offsets[0] / 4096 + gcPercent, { gcPercentMessage: gcPercent });
    const before = await inspect(p.e.cache);
    const slot = before[key].slot;
    t.log(`${rec}: newest slot ${slot}, seq ${before[key].seq}; key tail ${JSON.stringify(before.keyTail)}; dirty tail ${JSON.stringify(before.dirtyTail)}`);
    t.not(slot, null);
    if (gcPercent === 0) t.true(before.keyTail.seq >= 2, 'GC moved the key tail, so both of its slots were written');
    // Bit 2 of the first body byte: inside the CRC-covered part of the record.
    flipBit(p.e.cache, offsets[slot!] + 12, 2);
    const after = await inspect(p.e.cache).catch((err: Error) => err);
    t.log(`inspect after the flip: ${after instanceof Error ? after.message.split('\n').find((l) => l.includes('pcached:')) : JSON.stringify(after[key])}`);
    if (!(after instanceof Error)) t.not(after[key].slot, slot, 'the damaged slot no longer wins');
    const d = await startOrRefuse(t, p, /key tail: no valid slot/, `${rec} newest slot flipped`);
    if (d === null) {
      // Acceptable only when no valid copy is left of a record that has no default (the key tail):
      // then `inspect` refuses the file too.
      t.true(after instanceof Error, 'refused although the other slot is valid');
      return;
    }
    if (rec === 'cache info') {
      const gc = (await statusJson(p.e.control)).caches[0]!.cacheState!.gcPercent;
      t.log(`gcPercent after the fallback: ${gc}`);
      t.not(gc, 85, 'the damaged record is not used');
    }
    await verifyAndContinue(t, p, d, `${rec} newest slot flipped`);
  });
}

for (const where of ['still dirty', 'already written back'] as const) {
  t_(`damaged: a flipped bit inside a kset (${where}) ends the log there; every block served is the written data or the origin's` + skipSuffix(why), async (t) => {
    t.timeout(240_000);
    const p = await prepare(t, where === 'still dirty' ? 31 : 32);
    const ins = await inspect(p.e.cache);
    const ksets = walkLog(p.e.cache, ins).filter((k) => !k.last && k.keys.length > 0);
    t.log(`log: ${ins.log.ksets} ksets, lsn ${ins.log.firstLsn}..${ins.log.lastLsn}; dirty tail lsn ${ins.dirtyTail.lsn}; stop ${JSON.stringify(ins.log.stop)}`);
    t.true(ksets.length >= 3, `enough ksets to damage one in the middle (${ksets.length})`);
    // 'still dirty': the damage costs data not yet on the origin. 'already written back': the log
    // then ends before the dirty tail, which start-up must pull back to the end of the log.
    const dirty = ksets.filter((k) => k.lsn >= ins.dirtyTail.lsn);
    const clean = ksets.filter((k) => k.lsn < ins.dirtyTail.lsn && k.lsn > ksets[0]!.lsn);
    let pool = where === 'still dirty' ? dirty : clean;
    if (pool.length < 1) {
      t.log(`no kset ${where} (dirty tail lsn ${ins.dirtyTail.lsn}); damaging one in the middle of the log instead`);
      pool = ksets.slice(1);
    }
    const victim = pool[Math.floor(pool.length / 2)]!;
    t.log(`damaging kset lsn ${victim.lsn} at byte ${victim.at} (${victim.keys.length} keys; ${dirty.length} ksets still dirty)`);
    // Blocks whose keys sit in ksets before the victim are committed and must read as written.
    const committed = new Set<number>();
    for (const k of ksets) {
      if (k.lsn >= victim.lsn) continue;
      for (const key of k.keys) for (let b = key.off / BLK; b < (key.off + key.len) / BLK; b++) committed.add(b);
    }
    flipBit(p.e.cache, victim.at + KSET_HEADER_SIZE + 8, 1); // the first key's length
    const damaged = await inspect(p.e.cache);
    t.like(damaged.log.stop, { lsn: victim.lsn, reason: 'bad-crc' }, 'inspect sees the log end at the damaged kset');
    const originAtRestart = readFileSync(p.e.origin);

    const d = await startOrRefuse(t, p, /never/, 'kset bit flip');
    if (d === null) { t.fail('a damaged kset must not stop the cache from starting'); return; }
    const got = await nbdReadAll(p.e, ORIGIN_SIZE);
    const bad: string[] = [];
    let lost = 0;
    for (let b = 0; b * BLK < ORIGIN_SIZE; b++) {
      const g = got.subarray(b * BLK, (b + 1) * BLK);
      const want = p.model.img.subarray(b * BLK, (b + 1) * BLK);
      if (g.equals(want)) continue;
      if (committed.has(b)) { bad.push(`block ${b}: committed before the damaged kset but not as written`); continue; }
      if (g.equals(originAtRestart.subarray(b * BLK, (b + 1) * BLK))) { lost++; continue; }
      bad.push(`block ${b}: neither the data written nor the origin's (garbage)`);
    }
    t.deepEqual(bad.slice(0, 10), [], `${bad.length} bad blocks`);
    t.log(`${lost} written blocks lost with the damaged kset and the ksets after it (read as the origin's)`);
    t.deepEqual((await statusJson(p.e.control)).caches[0]!.cacheState!.errors, []);

    // What is served now is the new truth: keep writing on top, restart, and it all stays.
    const model = new Model(got);
    const more = makeWrites(10, 77, blocksOf(p.writes));
    await nbdWrite(p.e, more, 'more');
    model.apply(more);
    t.is(firstDiff(await nbdReadAll(p.e, ORIGIN_SIZE), model.img), null, 'writes after the recovery');
    await stop(t, d);
    const fresh = await inspect(p.e.cache);
    t.not(fresh.log.stop.reason, 'bad-crc', `the new log is clean: ${JSON.stringify(fresh.log.stop)}`);
    const d2 = await start(p.tr, p.e);
    t.is(firstDiff(await nbdReadAll(p.e, ORIGIN_SIZE), model.img), null, 'after one more restart');
    await drained(p.e);
    await stop(t, d2);
    t.is(firstDiff(readFileSync(p.e.origin), model.img), null, 'the origin agrees once writeback has drained');
  });
}
