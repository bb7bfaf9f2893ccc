// Cache options through the real daemon (`pcached start`, writeback mode): `--data-crc` (a byte of
// cached data flipped in the cache file while the daemon runs, and while it is stopped), the
// format-time nature of dataCrc, and `--sequential-cutoff` (long sequential reads are not promoted,
// the first cutoff bytes of a run and scattered reads are; 0 turns it off).
//
// Every scenario has its own temp dir, a 64 MiB origin of random bytes (so that "the origin's
// content", "the data written" and "corrupted bytes" can always be told apart) and runs serially.
// Every process started here is stopped by its PID in t.teardown.
//
// Two tests reproduce daemon bugs found on the way and fail until they are fixed: writeback halts
// for good on a dirty key that replay already dropped for a bad data CRC (2b), and read misses
// longer than the room left in the stripe's data head are never promoted (5).

import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CacheStatus } from '../src/daemon/ipc.js';
import { nbdUri } from './helpers/daemon.js';
import { startServing, stopGracefully, type RunningDaemon, pcachedCli, pidRunning, spawnPcached, statusJson, waitFor, within, writeRead } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, nbdshJson, skipSuffix } from './helpers/tools.js';
import { FileBlockDevice } from '../src/cache/blockdev.js';
import { nativeAvailable } from '../src/native/index.js';

const MiB = 1 << 20;
const BLK = 4096;
const ORIGIN_SIZE = 64 * MiB;
const NAME = 'vol';

type CacheState = NonNullable<CacheStatus['cacheState']>;

// ---------------------------------------------------------------------------------------------
// Scenario plumbing

interface Env {
  dir: string;
  origin: string;
  cache: string;
  /** What the origin file held before any daemon ran. */
  originInit: Buffer;
}

/** A fresh temp dir with an origin of random bytes; removed in teardown. */
function makeEnv(t: ExecutionContext): Env {
  const dir = mkdtempSync(join(tmpdir(), 'pcached-co-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  const originInit = randomBytes(ORIGIN_SIZE);
  writeFileSync(origin, originInit);
  return { dir, origin, cache: join(dir, 'cache.img'), originInit };
}

interface Running extends RunningDaemon {
  uri: string;
}

interface StartOpts {
  /** Cache file size when pcached creates it (default 16M). */
  cacheSize?: string;
  /** Extra `pcached start` flags. */
  extra?: string[];
  env?: Record<string, string>;
}

function startArgs(e: Env, o: StartOpts): string[] {
  return ['--origin', e.origin, '--cache', e.cache, '--cache-size', o.cacheSize ?? '16M', '--segment-size', '1M',
    '--unix', join(e.dir, 'nbd.sock'), '--tcp', '', '--name', NAME, '--control', join(e.dir, 'control.sock'), '--stripes', '2',
    '--log-level', 'warn', ...(o.extra ?? [])];
}

/** `pcached start` on the env's origin and cache; resolves once it serves and its coordinator runs. */
async function startCache(t: ExecutionContext, e: Env, o: StartOpts = {}): Promise<Running> {
  const sock = join(e.dir, 'nbd.sock');
  const control = join(e.dir, 'control.sock');
  const base = await startServing(t, startArgs(e, o), { cwd: e.dir, sock, control, env: o.env });
  return Object.assign(base, { uri: nbdUri(sock, NAME) });
}

async function cacheState(r: Running): Promise<CacheState> {
  const c = (await statusJson(r.control)).caches[0];
  if (!c?.cacheState) throw new Error(`status has no cacheState: ${JSON.stringify(c)}`);
  return c.cacheState;
}

function brief(cs: CacheState): string {
  const { blocks, freeBlocks, dirtyBlocks, segmentsUsed, keyHead, dirtyTail, keyTail, errors, dataCrc,
    readBlocks, readHits, writeBlocks, fills, crcErrors, cacheErrors } = cs;
  return JSON.stringify({ blocks, freeBlocks, dirtyBlocks, segmentsUsed, keyHead, dirtyTail, keyTail, errors, dataCrc,
    readBlocks, readHits, writeBlocks, fills, crcErrors, cacheErrors,
    wb_bytes: cs.workers.wb_bytes, wb_errors: cs.workers.wb_errors, fills_skipped: cs.workers.fills_skipped });
}

/** Write `data` at `off` through the daemon in 1 MiB requests, then FLUSH. */
async function nbdWrite(e: Env, uri: string, off: number, data: Buffer, tag: string): Promise<void> {
  const f = join(e.dir, `w-${tag}.bin`);
  writeFileSync(f, data);
  const r = await nbdsh(`
data = open(${JSON.stringify(f)}, 'rb').read()
for i in range(0, len(data), ${MiB}):
    h.pwrite(data[i:i + ${MiB}], ${off} + i)
h.flush()
print('ok')
`, { uri, timeoutMs: 120_000 });
  rmSync(f, { force: true });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`write of ${data.length} bytes at ${off} failed: ${describe(r)}`);
}

interface BlockReads {
  /** The blocks read (a failed block is zeros). */
  data: Buffer;
  /** Failed blocks: index → [errno name, errno number, message]. */
  failed: Map<number, [string, number, string]>;
}

/** Read [off, off+len) one request of `chunk` bytes at a time, in order; failures are recorded per request. */
async function nbdReadChunks(e: Env, uri: string, off: number, len: number, chunk: number): Promise<BlockReads> {
  const out = join(e.dir, `r-${off}-${len}.bin`);
  const res = await nbdshJson<[number, string, number, string][]>(`
import json, nbd
failed = []
with open(${JSON.stringify(out)}, 'wb') as f:
    for i in range(0, ${len}, ${chunk}):
        try:
            f.write(h.pread(${chunk}, ${off} + i))
        except nbd.Error as e:
            failed.append([i // ${chunk}, e.errno, e.errnum, str(e)])
            f.write(bytes(${chunk}))
print(json.dumps(failed))
`, { uri, timeoutMs: 180_000 });
  const data = readFileSync(out);
  rmSync(out, { force: true });
  return { data, failed: new Map(res.map(([i, name, num, msg]) => [i, [name, num, msg]])) };
}

/** One read request; resolves "OK" or [errno name, errno number, message]. */
async function tryRead(uri: string, off: number, len: number): Promise<'OK' | [string, number, string]> {
  return nbdshJson<'OK' | [string, number, string]>(`
import json, nbd
try:
    h.pread(${len}, ${off})
    print(json.dumps("OK"))
except nbd.Error as e:
    print(json.dumps([e.errno, e.errnum, str(e)]))
`, { uri, timeoutMs: 60_000 });
}

function readAt(file: string, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  const fd = openSync(file, 'r');
  try { readSync(fd, b, 0, len, off); } finally { closeSync(fd); }
  return b;
}

/** Flip every bit of the byte at `off` of `file` (pwrite, fsync); returns the old and new byte. */
function flipByte(file: string, off: number): [number, number] {
  const old = readAt(file, off, 1)[0]!;
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, Buffer.from([old ^ 0xff]), 0, 1, off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return [old, old ^ 0xff];
}

/**
 * Where `block` (4 KiB, random) sits in the cache file: its only occurrence, 4 KiB aligned, in the
 * segment area (past the first MiB). Throws otherwise.
 */
function locateInCache(cache: string, block: Buffer): number {
  const img = readFileSync(cache);
  const at = img.indexOf(block);
  if (at < 0) throw new Error('the block written is not in the cache file');
  if (img.indexOf(block, at + 1) >= 0) throw new Error(`the block written is in the cache file twice (${at}, ${img.indexOf(block, at + 1)})`);
  if (at % BLK !== 0) throw new Error(`the block written sits at ${at} in the cache file, not 4 KiB aligned`);
  if (at < MiB) throw new Error(`the block written sits at ${at}, in the metadata area`);
  return at;
}

/** For each 4 KiB block of `got`: is it `written`, the origin's, or neither. */
function classify(got: Buffer, written: Buffer, origin: Buffer): { written: number[]; origin: number[]; neither: number[] } {
  const r = { written: [] as number[], origin: [] as number[], neither: [] as number[] };
  for (let b = 0; b * BLK < got.length; b++) {
    const g = got.subarray(b * BLK, (b + 1) * BLK);
    if (g.equals(written.subarray(b * BLK, (b + 1) * BLK))) r.written.push(b);
    else if (g.equals(origin.subarray(b * BLK, (b + 1) * BLK))) r.origin.push(b);
    else r.neither.push(b);
  }
  return r;
}

const isEio = (e: [string, number, string] | 'OK' | undefined): boolean =>
  Array.isArray(e) && (e[0] === 'EIO' || e[1] === 5 || /EIO|Input\/output error|errno 5\b/.test(e[2]));

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;

// ---------------------------------------------------------------------------------------------
// 1. dataCrc: a byte of cached data corrupted while the daemon runs.

const OFF = 20 * MiB; // inside one 4 MiB subtree (one stripe)
const LEN = MiB;
const VICTIM = 100; // the 4 KiB block of the write that gets corrupted

t_('--data-crc: a byte of cached data flipped in the cache file while running: that block reads EIO, the rest as written, crcErrors counted, still serving' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  const d = await startCache(t, e, { extra: ['--data-crc'] });
  const cs0 = await cacheState(d);
  t.true(cs0.dataCrc, 'status shows dataCrc');
  const data = randomBytes(LEN);
  await nbdWrite(e, d.uri, OFF, data, 'a');
  // Let writeback finish: the data stays in the cache (read hits) and writeback cannot trip over
  // the damage, so what follows is only the read path's CRC check.
  await waitFor('writeback to drain', async () => (await cacheState(d)).dirtyBlocks === 0, 60_000, 100);
  const before = await cacheState(d);
  t.deepEqual(before.errors, []);
  t.is(before.crcErrors, 0);

  // Sanity: everything reads back as written (hits) before the damage.
  const clean = await nbdReadChunks(e, d.uri, OFF, LEN, BLK);
  t.is(clean.failed.size, 0, `no read failed before the damage: ${JSON.stringify([...clean.failed])}`);
  t.true(clean.data.equals(data), 'read back as written before the damage');

  const victim = data.subarray(VICTIM * BLK, (VICTIM + 1) * BLK);
  const at = locateInCache(e.cache, victim);
  const [old, now] = flipByte(e.cache, at + 1234);
  t.log(`block ${VICTIM} of the write (origin offset ${OFF + VICTIM * BLK}) sits at byte ${at} of the cache file; byte ${at + 1234}: ${old} -> ${now}`);

  const s0 = await cacheState(d);
  const r = await nbdReadChunks(e, d.uri, OFF, LEN, BLK);
  const s1 = await cacheState(d);
  t.log(`failed reads: ${JSON.stringify([...r.failed])}; after the reads: ${brief(s1)}`);
  t.deepEqual([...r.failed.keys()], [VICTIM], 'only the corrupted block fails');
  const err = r.failed.get(VICTIM);
  t.true(isEio(err), `the corrupted block fails with EIO: ${JSON.stringify(err)}`);
  for (let b = 0; b < LEN / BLK; b++) {
    if (b === VICTIM) continue;
    if (!r.data.subarray(b * BLK, (b + 1) * BLK).equals(data.subarray(b * BLK, (b + 1) * BLK))) {
      t.fail(`block ${b} does not read as written`);
      break;
    }
  }
  t.true((s1.crcErrors ?? 0) >= 1, `crcErrors counted (${s1.crcErrors})`);
  t.true((s1.crcErrors ?? 0) > (s0.crcErrors ?? 0), 'the failed read was counted');
  t.true(s1.errors.length > 0, `status reports an error: ${JSON.stringify(s1.errors)}`);

  // A larger request over the damaged block fails as a whole (never the corrupted bytes).
  const big = await tryRead(d.uri, OFF + (VICTIM - 3) * BLK, 64 * 1024);
  t.true(isEio(big), `a 64 KiB read over the damaged block fails with EIO: ${JSON.stringify(big)}`);
  const again = await tryRead(d.uri, OFF + VICTIM * BLK, BLK);
  t.true(isEio(again), `a second read of the damaged block fails too: ${JSON.stringify(again)}`);

  // The daemon keeps serving: other reads and writes work, nothing restarted.
  await writeRead(d.uri, 48 * MiB, 0x5a, 64 * 1024);
  const other = await nbdReadChunks(e, d.uri, OFF + 128 * BLK, 8 * BLK, 8 * BLK);
  t.is(other.failed.size, 0);
  t.true(other.data.equals(data.subarray(128 * BLK, 136 * BLK)));
  t.true(d.proc.alive(), 'the supervisor still runs');
  t.true(pidRunning(d.coord), 'the coordinator still runs');
  t.is((await statusJson(d.control)).caches[0]!.pid, d.coord, 'same coordinator (not restarted)');
  t.regex(d.proc.output(), /data CRC mismatch/, 'the daemon log mentions the data CRC mismatch');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 2. dataCrc: a byte of cached (dirty) data corrupted while the daemon is stopped.

/**
 * Starts with --data-crc and writeback throttled to 1 MiB/s, writes a 4 MiB filler, waits for the
 * writeback's first batch (after which it sleeps ~4 s for the rate), then writes 1 MiB of random
 * data at OFF and stops at once: the 1 MiB is only in the cache. Then flips a byte of block VICTIM
 * in the cache file. Returns the data written.
 */
async function corruptWhileStopped(t: ExecutionContext, e: Env): Promise<{ data: Buffer; writtenBack: boolean }> {
  const opts: StartOpts = { extra: ['--data-crc'], env: { PCACHED_WRITEBACK_RATE: '1MiB' } };
  const d = await startCache(t, e, opts);
  await nbdWrite(e, d.uri, 40 * MiB, randomBytes(4 * MiB), 'filler');
  await waitFor('writeback of the filler', async () => ((await cacheState(d)).workers.wb_bytes ?? 0) >= 4 * MiB, 60_000, 50);
  // The write below must still be dirty at the stop however slow the machine: after foreground
  // I/O writeback now waits far longer than the test takes (the 1 s default did not, under load).
  const paused = await pcachedCli(['message', NAME, 'pause_writeback', '600000', '--control', d.control]);
  t.is(paused.code, 0, paused.stderr);
  const data = randomBytes(LEN);
  await nbdWrite(e, d.uri, OFF, data, 'a');
  const cs = await cacheState(d);
  t.log(`before the stop: ${brief(cs)}`);
  t.is(await stopGracefully(d), 0, d.proc.output());
  const originNow = readAt(e.origin, OFF, LEN);
  const writtenBack = originNow.equals(data);
  t.log(`the origin holds ${writtenBack ? 'the data written' : originNow.equals(e.originInit.subarray(OFF, OFF + LEN)) ? 'its old data' : 'a mix'} at the write`);

  const at = locateInCache(e.cache, data.subarray(VICTIM * BLK, (VICTIM + 1) * BLK));
  const [old, now] = flipByte(e.cache, at + 1234);
  t.log(`block ${VICTIM} of the write sits at byte ${at} of the cache file; byte ${at + 1234}: ${old} -> ${now}`);
  return { data, writtenBack };
}

t_('--data-crc: a byte of cached data flipped while stopped: replay drops the key (logged), the range reads as written or the origin, never the corrupted bytes' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  const { data, writtenBack } = await corruptWhileStopped(t, e);
  t.false(writtenBack, 'precondition: the data was still dirty in the cache at the stop (so the origin has its old bytes)');
  const originAtRestart = readFileSync(e.origin);

  const d = await startCache(t, e, { extra: ['--data-crc'] });
  const log = d.proc.output();
  const lines = log.split('\n').filter((l) => /CRC/i.test(l));
  t.log(`daemon log lines mentioning CRC: ${lines.join('\n') || '(none)'}`);
  t.regex(log, /data CRC mismatch/, 'the daemon log (stderr) mentions the data CRC mismatch found at replay');
  t.regex(log, /key dropped/, 'and that the key was dropped');

  const r = await nbdReadChunks(e, d.uri, OFF, LEN, BLK);
  t.is(r.failed.size, 0, `every block of the range reads (the bad key is gone, not served): ${JSON.stringify([...r.failed])}`);
  const c = classify(r.data, data, originAtRestart.subarray(OFF, OFF + LEN));
  t.log(`the 1 MiB after the restart: ${c.written.length} blocks as written, ${c.origin.length} as the origin's (${c.origin.length ? `${c.origin[0]}..${c.origin[c.origin.length - 1]}` : '-'}), ${c.neither.length} neither`);
  t.deepEqual(c.neither, [], 'every block is the data written or the origin\'s');
  const corrupted = Buffer.from(data.subarray(VICTIM * BLK, (VICTIM + 1) * BLK));
  corrupted[1234]! ^= 0xff;
  t.false(r.data.subarray(VICTIM * BLK, (VICTIM + 1) * BLK).equals(corrupted), 'the corrupted bytes are never served');
  t.true(c.origin.includes(VICTIM), 'the corrupted block falls back to the origin');
  // One 1 MiB request over the range too.
  const whole = await nbdReadChunks(e, d.uri, OFF, LEN, LEN);
  t.is(whole.failed.size, 0);
  t.true(whole.data.equals(r.data), 'a 1 MiB read returns the same');
  const cs = await cacheState(d);
  t.log(`after the restart: ${brief(cs)}`);
  t.is(cs.crcErrors, 0, 'no read hit a bad CRC (the damaged key was dropped at replay)');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// 2b. Found while writing test 2: replay drops a dirty key whose data CRC does not verify (its
// range falls back to the origin), but the key stays in the key log past dirty_tail, and the
// writeback walks the log, not the index: it reaches the key, finds the same CRC mismatch and halts
// (src/cache/writeback.ts: `halt`, latched until restart; every restart replays the same log and
// halts again). Nothing written after the damaged key ever reaches the origin: dirty data only
// grows (and GC, which only retires ksets behind dirty_tail, can free nothing) until the cache is
// full.

t_('--data-crc: after replay dropped a corrupt dirty key, writeback still drains the data written after it' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  const { data } = await corruptWhileStopped(t, e);
  const d = await startCache(t, e, { extra: ['--data-crc'] });
  t.regex(d.proc.output(), /key dropped/);
  const more = randomBytes(2 * MiB);
  await nbdWrite(e, d.uri, 8 * MiB, more, 'more');
  const end = await waitFor('writeback to drain or halt', async () => {
    const cs = await cacheState(d);
    return cs.dirtyBlocks === 0 || cs.errors.some((x) => /writeback/.test(x)) ? cs : undefined;
  }, 120_000, 200).catch(async (err: Error) => { t.log(err.message); return cacheState(d); });
  const wbLog = d.proc.output().split('\n').filter((l) => /writeback/.test(l));
  t.log(`after the restart and 2 MiB more: ${brief(end)}; writeback log: ${wbLog.join('\n') || '(none)'}`);
  const other = classify(readAt(e.origin, OFF, LEN), data, e.originInit.subarray(OFF, OFF + LEN));
  t.deepEqual(other.neither, [], 'the origin never receives the corrupted bytes');
  // One more restart: is the halt for good?
  t.is(await stopGracefully(d), 0, d.proc.output());
  const d2 = await startCache(t, e, { extra: ['--data-crc'] });
  const end2 = await waitFor('writeback to drain or halt after one more restart', async () => {
    const cs = await cacheState(d2);
    return cs.dirtyBlocks === 0 || cs.errors.some((x) => /writeback/.test(x)) ? cs : undefined;
  }, 120_000, 200).catch(async (err: Error) => { t.log(err.message); return cacheState(d2); });
  t.log(`after one more restart: ${brief(end2)}`);
  t.deepEqual(end.errors, [], 'no error: writeback goes on past the key replay already dropped');
  t.is(end.dirtyBlocks, 0, 'everything dirty was written back');
  t.deepEqual(end2.errors, [], 'no error after one more restart either');
  t.is(end2.dirtyBlocks, 0);
  t.true(readAt(e.origin, 8 * MiB, 2 * MiB).equals(more), 'the data written after the restart reached the origin');
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 3. dataCrc is a format-time option.

t_('without --data-crc the cache is formatted with dataCrc off; restarting it with --data-crc is refused naming dataCrc' + skipSuffix(why), async (t) => {
  t.timeout(120_000);
  const e = makeEnv(t);
  const d = await startCache(t, e);
  t.false((await cacheState(d)).dataCrc, 'status: dataCrc off');
  t.is(await stopGracefully(d), 0, d.proc.output());
  const ins = await pcachedCli(['inspect', '--cache', e.cache, '--json']);
  t.is(ins.code, 0, describe(ins));
  t.is((JSON.parse(ins.stdout) as { superblock: { dataCrc: boolean } }).superblock.dataCrc, false, 'the superblock has dataCrc off');
  const p = spawnPcached(startArgs(e, { extra: ['--data-crc'] }), { cwd: e.dir });
  t.teardown(() => p.stop('SIGKILL').then(() => undefined));
  const code = await within(p.exited, 60_000, -1);
  t.is(code, 1, p.output());
  t.regex(p.output().split('\n').find((l) => l.startsWith('pcached: ')) ?? '', /dataCrc/, 'the refusal names dataCrc');
});

// ---------------------------------------------------------------------------------------------
// 4. sequentialCutoff.
//
// The sequential reads here are 4 KiB requests: each fill then fits the data head exactly (a 1 MiB
// segment has a 1020 KiB data area), so promotion depends on the cutoff alone. Larger read misses
// are test 5.

interface Delta { blocks: number; hits: number; fills: number; skipped: number }

async function counters(d: Running): Promise<{ blocks: number; hits: number; fills: number; skipped: number }> {
  const st = (await statusJson(d.control)).caches[0]!;
  const cs = st.cacheState!;
  const skipped = st.stripeStats.reduce((a, s) => a + (s.fills_skipped ?? 0), 0);
  return { blocks: cs.readBlocks ?? 0, hits: cs.readHits ?? 0, fills: cs.fills ?? 0, skipped };
}

async function readDelta(d: Running, fn: () => Promise<unknown>): Promise<Delta> {
  const a = await counters(d);
  await fn();
  const b = await counters(d);
  return { blocks: b.blocks - a.blocks, hits: b.hits - a.hits, fills: b.fills - a.fills, skipped: b.skipped - a.skipped };
}

/** Read [off, off+len) in order, `chunk` bytes per request; check it equals the origin. */
async function seqRead(t: ExecutionContext, e: Env, d: Running, off: number, len: number, what: string, chunk = BLK): Promise<void> {
  const r = await nbdReadChunks(e, d.uri, off, len, chunk);
  t.is(r.failed.size, 0, `${what}: ${JSON.stringify([...r.failed])}`);
  t.true(r.data.equals(e.originInit.subarray(off, off + len)), `${what}: reads the origin's data`);
}

const pct = (x: Delta): string =>
  `${x.hits}/${x.blocks} hits (${x.blocks ? Math.round((100 * x.hits) / x.blocks) : 0} %), ${x.fills} fills, ${x.skipped} fills skipped`;

t_('--sequential-cutoff: a 32 MiB sequential read promotes only its first 4 MiB (default cutoff), scattered 4 KiB reads are promoted; with 0 the whole run is' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  // 64 MiB of cache (63 segments of 1 MiB): room for every fill here.
  let d = await startCache(t, e, { cacheSize: '64M' });

  const first = await readDelta(d, () => seqRead(t, e, d, 0, 32 * MiB, 'the first sequential read'));
  t.log(`first 32 MiB sequential read: ${pct(first)}`);
  t.is(first.blocks, 32 * MiB / BLK);
  t.is(first.hits, 0, 'nothing of a never-read region is a hit');
  const tail = await readDelta(d, () => seqRead(t, e, d, 24 * MiB, 8 * MiB, 'the last 8 MiB again'));
  t.log(`re-read of the last 8 MiB: ${pct(tail)}`);
  t.is(tail.blocks, 8 * MiB / BLK);
  t.true(tail.hits < 0.25 * tail.blocks, `the end of the long run was not promoted: ${pct(tail)}`);
  const head = await readDelta(d, () => seqRead(t, e, d, 0, 2 * MiB, 'the first 2 MiB again'));
  t.log(`re-read of the first 2 MiB: ${pct(head)}`);
  t.true(head.hits >= 0.9 * head.blocks, `the first 4 MiB of the run were promoted: ${pct(head)}`);

  // Scattered 4 KiB reads (even block numbers only, in random order: no read starts where another
  // ended) in a region never read: each one is promoted.
  const base = 40 * MiB / BLK;
  const picks = new Set<number>();
  while (picks.size < 256) picks.add(base + 2 * Math.floor(Math.random() * (24 * MiB / BLK / 2)));
  const offs = [...picks].map((b) => b * BLK);
  const scatter = `
import json
offs = ${JSON.stringify(offs)}
bad = [o for o in offs if len(h.pread(${BLK}, o)) != ${BLK}]
print(json.dumps(bad))
`;
  const r1 = await readDelta(d, () => nbdshJson(scatter, { uri: d.uri, timeoutMs: 60_000 }));
  t.log(`256 scattered 4 KiB reads: ${pct(r1)}`);
  t.is(r1.hits, 0);
  const r2 = await readDelta(d, () => nbdshJson(scatter, { uri: d.uri, timeoutMs: 60_000 }));
  t.log(`the same 256 reads again: ${pct(r2)}`);
  t.is(r2.blocks, 256);
  t.true(r2.hits >= 0.9 * r2.blocks, `scattered reads were promoted: ${pct(r2)}`);
  const cs = await cacheState(d);
  t.log(`default cutoff, at the end: ${brief(cs)}`);
  t.deepEqual(cs.errors, []);
  t.is(await stopGracefully(d), 0, d.proc.output());

  // --sequential-cutoff 0, on a fresh cache: the whole run is promoted.
  rmSync(e.cache, { force: true });
  d = await startCache(t, e, { cacheSize: '64M', extra: ['--sequential-cutoff', '0'] });
  const off = await readDelta(d, () => seqRead(t, e, d, 0, 32 * MiB, 'the sequential read, cutoff off'));
  t.log(`cutoff 0: first 32 MiB sequential read: ${pct(off)}`);
  t.is(off.hits, 0);
  const again = await readDelta(d, () => seqRead(t, e, d, 0, 32 * MiB, 'the sequential read again, cutoff off'));
  t.log(`cutoff 0: the 32 MiB again: ${pct(again)}`);
  t.is(again.blocks, 32 * MiB / BLK);
  t.true(again.hits >= 0.9 * again.blocks, `with the cutoff off the whole run was promoted: ${pct(again)}`);
  const cs2 = await cacheState(d);
  t.log(`cutoff 0, at the end: ${brief(cs2)}`);
  t.deepEqual(cs2.errors, []);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 5. Read misses larger than 4 KiB are promoted.
//
// Found while writing test 4: a fill is one allocation from the stripe's data head, and is skipped
// (fills_skipped) when the head has less room left than the read is long; the room is used up all
// the same (headOff moves to the end of the segment). A read miss longer than a segment's data area
// (1 MiB reads with 1 MiB segments: 1020 KiB) is therefore never promoted, and each attempt takes
// a fresh segment and frees the previous head (a generation bump and a cache sync on the stripe
// thread); a 256 KiB read stream promotes 3 reads of every 4.

t_('read misses of 1 MiB and 256 KiB are promoted with 1 MiB segments (cutoff off, room to spare)' + skipSuffix(why), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  const d = await startCache(t, e, { cacheSize: '64M', extra: ['--sequential-cutoff', '0'] });
  const passes: [number, Delta][] = [];
  for (const [chunk, off] of [[MiB, 0], [256 * 1024, 16 * MiB]] as const) {
    const len = 8 * MiB;
    const a = await readDelta(d, () => seqRead(t, e, d, off, len, `${chunk / 1024} KiB reads`, chunk));
    const b = await readDelta(d, () => seqRead(t, e, d, off, len, `${chunk / 1024} KiB reads again`, chunk));
    t.log(`${chunk / 1024} KiB reads over 8 MiB: first pass ${pct(a)}; second pass ${pct(b)}`);
    t.is(b.blocks, len / BLK);
    passes.push([chunk, b]);
  }
  // Both measured before the first assertion that may fail (a failed assertion ends the test).
  for (const [chunk, b] of passes) t.true(b.hits >= 0.9 * b.blocks, `${chunk / 1024} KiB read misses were promoted: ${pct(b)}`);
  const cs = await cacheState(d);
  t.log(`at the end: ${brief(cs)}`);
  t.deepEqual(cs.errors, []);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 6. A fresh cache file is initialized in the background (src/cache/initializer.ts).
//
// pcached fallocates the file; the GC worker then writes zeros into the unwritten ranges of free
// segments. Data written while that runs must be intact, the free segments must end up written,
// and a restart on an initialized file must write nothing.

const tNative = why ? test.serial.skip : nativeAvailable() ? test.serial : test.serial.skip;

tNative('a fresh cache file is initialized in the background: data written meanwhile intact, free segments written, nothing zeroed on restart' + skipSuffix(why ?? (nativeAvailable() ? null : 'no native addon')), async (t) => {
  t.timeout(300_000);
  const e = makeEnv(t);
  const d = await startCache(t, e, { cacheSize: '48M' });
  // Written while the initializer runs (it starts with the worker threads).
  const data = randomBytes(8 * MiB);
  await nbdWrite(e, d.uri, 4 * MiB, data, 'during-init');
  const cs = await waitFor('initialization to finish', async () => {
    const c = await cacheState(d);
    return c.workers.init_segments_left === 0 ? c : undefined;
  }, 120_000, 200);
  t.log(`after initialization: ${brief(cs)}, init_bytes ${cs.workers.init_bytes}`);
  t.true(cs.workers.init_bytes >= 24 * MiB, `most of the 47 segments were zeroed: ${cs.workers.init_bytes}`);
  const dev = FileBlockDevice.open(e.cache, { readOnly: true });
  let unwritten = 0;
  try {
    for (const [from, to] of dev.unwrittenRanges(0, dev.size) ?? [[0, dev.size]]) unwritten += to - from;
  } finally {
    dev.close();
  }
  // Only segments in use when the initializer passed them may keep an unwritten tail.
  t.true(unwritten <= cs.segmentsUsed * MiB, `${unwritten} bytes unwritten with ${cs.segmentsUsed} segments in use`);
  const back = await nbdReadChunks(e, d.uri, 4 * MiB, 8 * MiB, MiB);
  t.is(back.failed.size, 0);
  t.true(back.data.equals(data), 'the data written during initialization reads back');
  t.is(await stopGracefully(d), 0, d.proc.output());

  const d2 = await startCache(t, e, { cacheSize: '48M' });
  const cs2 = await waitFor('the second initialization pass', async () => {
    const c = await cacheState(d2);
    return c.workers.init_segments_left === 0 ? c : undefined;
  }, 120_000, 200);
  t.is(cs2.workers.init_bytes, 0, 'an initialized file is left as it is');
  const back2 = await nbdReadChunks(e, d2.uri, 4 * MiB, 8 * MiB, MiB);
  t.true(back2.data.equals(data), 'and the data reads back after the restart');
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});
