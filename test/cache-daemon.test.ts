// The write-back cache through the real daemon (`pcached start`, writeback mode): crash
// consistency across kill -9 of every process, persistence across a restart (served from the cache
// as read hits), writeback draining to the origin (writes, TRIM, WRITE_ZEROES), a cache smaller
// than the working set under fio (GC and cache-full waits), and `message NAME gc_percent N`.
// Tests 6 and 7 reproduce two daemon bugs found on the way (writes that bypass a full cache); they
// fail until those are fixed.
//
// Every scenario has its own temp dir and runs serially (each one loads the 2 cores on its own).
// Every process started here is stopped by its PID in t.teardown.

import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { CacheStatus } from '../src/daemon/ipc.js';
import { freshDir, makeSparseFile, nbdUri } from './helpers/daemon.js';
import { directIoWorks } from './helpers/scratch.js';
import { killHard, killPid, startServing, stopGracefully, type RunningDaemon, pcachedCli, pidRunning, spawnTracked, statusJson, waitAccepting, waitFor, within, type Proc } from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, run, skipSuffix, TOOL_ENV } from './helpers/tools.js';

const MiB = 1 << 20;
const BLK = 4096;

type CacheState = NonNullable<CacheStatus['cacheState']>;

// ---------------------------------------------------------------------------------------------
// Daemon handling: one supervisor started with flags, its coordinator PID from status.

interface Running extends RunningDaemon {
  dir: string;
  uri: string;
  name: string;
}

interface StartOpts {
  /** Cache file size when pcached creates it (default 64M). */
  cacheSize?: string;
  /** Extra `pcached start` flags. */
  extra?: string[];
  env?: Record<string, string>;
  /** --name (omitted: the default name). */
  name?: string;
}

/** `pcached start` on `origin` with the cache file DIR/cache.img; resolves once it serves. */
async function startCache(t: ExecutionContext, dir: string, origin: string, o: StartOpts = {}): Promise<Running> {
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const args = ['--origin', origin, '--cache', join(dir, 'cache.img'), '--cache-size', o.cacheSize ?? '64M',
    '--unix', sock, '--tcp', '', '--control', control, '--stripes', '2', '--log-level', 'warn',
    ...(o.name !== undefined ? ['--name', o.name] : []), ...(o.extra ?? [])];
  const base = await startServing(t, args, { cwd: dir, sock, control, env: o.env });
  return Object.assign(base, { dir, uri: nbdUri(sock, o.name ?? 'default'), name: o.name ?? 'default' });
}

const killEverything = killHard;

async function cacheState(r: Running): Promise<CacheState> {
  const c = (await statusJson(r.control)).caches[0];
  if (!c?.cacheState) throw new Error(`status has no cacheState: ${JSON.stringify(c)}`);
  return c.cacheState;
}

function brief(cs: CacheState): string {
  const { blocks, freeBlocks, dirtyBlocks, segments, segmentsUsed, keyHead, dirtyTail, keyTail, gcPercent, errors, workers,
    readBlocks, readHits, writeBlocks, writeBypass, writeBlocked, flushes, discards, fills, crcErrors, cacheErrors } = cs;
  return JSON.stringify({ blocks, freeBlocks, dirtyBlocks, segments, segmentsUsed, keyHead, dirtyTail, keyTail, gcPercent, errors, workers,
    readBlocks, readHits, writeBlocks, writeBypass, writeBlocked, flushes, discards, fills, crcErrors, cacheErrors });
}

/** The whole volume, read with nbdcopy (no extents: every byte is a READ). */
async function readVolume(uri: string, dir: string, file: string): Promise<Buffer> {
  const out = join(dir, file);
  rmSync(out, { force: true });
  const r = await run('nbdcopy', ['--no-extents', uri, out], { timeoutMs: 120_000 });
  if (r.code !== 0 || r.timedOut) throw new Error(`nbdcopy failed: ${describe(r)}`);
  const b = readFileSync(out);
  rmSync(out, { force: true });
  return b;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** First differing 4 KiB block of two equal-sized buffers, or -1. */
function firstDiff(a: Buffer, b: Buffer): number {
  for (let off = 0; off < a.length; off += BLK) {
    if (!a.subarray(off, off + BLK).equals(b.subarray(off, off + BLK))) return off / BLK;
  }
  return a.length === b.length ? -1 : Math.min(a.length, b.length) / BLK;
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 in the middle of sequence-stamped writes.

const VOL = 64 * MiB;
const NBLOCKS = VOL / BLK;
const QD = 8;
const FLUSH_EVERY = 32;
const ROUNDS = 4;

/**
 * A stamped 4 KiB block: 'PCST', round, seq, block index (u32 LE each), then sha256 of that
 * header repeated, then a CRC-32 (zlib) of everything before it. The same in Python (below).
 */
function stamp(round: number, seq: number, blk: number): Buffer {
  const hdr = Buffer.alloc(16);
  hdr.write('PCST', 0, 'latin1');
  hdr.writeUInt32LE(round, 4);
  hdr.writeUInt32LE(seq, 8);
  hdr.writeUInt32LE(blk, 12);
  const digest = createHash('sha256').update(hdr).digest();
  const body = Buffer.alloc(BLK - 4);
  hdr.copy(body, 0);
  for (let o = 16; o < body.length; o += 32) digest.copy(body, o, 0, Math.min(32, body.length - o));
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crc32(body), 0);
  return Buffer.concat([body, crc]);
}

const CRC_TABLE = (() => {
  const tab = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    tab[n] = c >>> 0;
  }
  return tab;
})();
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * The writer: random blocks of the volume, up to QD writes in flight (never two to the same block,
 * so the writes of one block are ordered), a FLUSH after every FLUSH_EVERY writes (no new writes
 * while it is in flight). It prints, in the order it sees things:
 *   S seq blk   before submitting write seq to block blk
 *   A seq       write seq acknowledged (success)
 *   FS n        FLUSH n sent (it covers every write acknowledged before this line)
 *   FA n        FLUSH n acknowledged
 *   E msg       the first error (the connection died); then it exits 0
 */
function writerScript(round: number, seed: number): string {
  return `
import sys, struct, hashlib, zlib, random, nbd
R = ${round}; N = ${NBLOCKS}; QD = ${QD}; FE = ${FLUSH_EVERY}
rng = random.Random(${seed})
def block(seq, blk):
    hdr = struct.pack('<4sIII', b'PCST', R, seq, blk)
    body = hdr + (hashlib.sha256(hdr).digest() * 128)[:${BLK - 20}]
    return body + struct.pack('<I', zlib.crc32(body))
inflight = {}
busy = set()
seq = 0
since = 0
flush = None
nflush = 0
out = sys.stdout
def emit(s):
    out.write(s + '\\n')
    out.flush()
try:
    while True:
        while flush is None and len(inflight) < QD:
            if since >= FE:
                flush = h.aio_flush()
                emit('FS %d' % nflush)
                break
            blk = rng.randrange(N)
            while blk in busy:
                blk = rng.randrange(N)
            buf = nbd.Buffer.from_bytearray(bytearray(block(seq, blk)))
            emit('S %d %d' % (seq, blk))
            c = h.aio_pwrite(buf, blk * ${BLK})
            inflight[c] = (seq, blk, buf)
            busy.add(blk)
            seq += 1
            since += 1
        h.poll(-1)
        for c in list(inflight):
            if h.aio_command_completed(c):
                s, b, _ = inflight.pop(c)
                busy.discard(b)
                emit('A %d' % s)
        if flush is not None and h.aio_command_completed(flush):
            emit('FA %d' % nflush)
            nflush += 1
            flush = None
            since = 0
except Exception as e:
    emit('E %s' % str(e).replace('\\n', ' '))
`;
}

interface WriterLog {
  /** seq → block, every write submitted. */
  blockOf: Map<number, number>;
  /** Acknowledged seqs in the order the writer saw them. */
  acked: number[];
  /** How many of `acked` the last acknowledged FLUSH covers. */
  durable: number;
  flushesAcked: number;
  error: string | null;
}

function startStampWriter(uri: string, round: number, seed: number): Proc & { log: WriterLog } {
  const log: WriterLog = { blockOf: new Map(), acked: [], durable: 0, flushesAcked: 0, error: null };
  const covered = new Map<number, number>();
  let partial = '';
  const onLine = (l: string): void => {
    const [k, a, b] = l.trim().split(' ');
    if (k === 'S') log.blockOf.set(Number(a), Number(b));
    else if (k === 'A') log.acked.push(Number(a));
    else if (k === 'FS') covered.set(Number(a), log.acked.length);
    else if (k === 'FA') {
      log.durable = Math.max(log.durable, covered.get(Number(a)) ?? 0);
      log.flushesAcked++;
    } else if (k === 'E') log.error ??= l.slice(2);
  };
  const proc = spawnTracked('nbdsh', ['-u', uri, '-c', writerScript(round, seed)], {
    env: TOOL_ENV,
    onOutput: (chunk) => {
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) onLine(l);
    },
  });
  return Object.assign(proc, { log });
}

interface RoundCheck {
  problems: string[];
  written: number;
  atDurable: number;
  atLaterAcked: number;
  atUnacked: number;
  atPreRound: number;
}

/**
 * Checks the volume read after the crash against the round's writes and the content before the
 * round: a block written this round holds its newest write acknowledged before an acknowledged
 * FLUSH or a later write to it (acknowledged or not), or, with no such durable write, its pre-round
 * content or any write to it; every other block holds its pre-round content.
 */
function checkRound(vol: Buffer, prev: Buffer, round: number, log: WriterLog): RoundCheck {
  const writesTo = new Map<number, number[]>();
  for (const [seq, blk] of log.blockOf) {
    let l = writesTo.get(blk);
    if (!l) writesTo.set(blk, (l = []));
    l.push(seq);
  }
  const ackedSet = new Set(log.acked);
  const durableOf = new Map<number, number>();
  for (const seq of log.acked.slice(0, log.durable)) {
    const blk = log.blockOf.get(seq)!;
    durableOf.set(blk, Math.max(durableOf.get(blk) ?? -1, seq));
  }
  const res: RoundCheck = { problems: [], written: writesTo.size, atDurable: 0, atLaterAcked: 0, atUnacked: 0, atPreRound: 0 };
  const describeBlock = (got: Buffer, old: Buffer): string => {
    if (got.equals(old)) return 'its pre-round content';
    if (got.every((x) => x === 0)) return 'zeros';
    if (got.subarray(0, 4).toString('latin1') === 'PCST') {
      const r = got.readUInt32LE(4), s = got.readUInt32LE(8), b = got.readUInt32LE(12);
      const intact = got.equals(stamp(r, s, b));
      return `stamp (round ${r}, seq ${s}, block ${b})${intact ? '' : ' that is torn/corrupt'}`;
    }
    return `garbage starting ${got.subarray(0, 16).toString('hex')}`;
  };
  for (let blk = 0; blk < NBLOCKS; blk++) {
    const got = vol.subarray(blk * BLK, (blk + 1) * BLK);
    const old = prev.subarray(blk * BLK, (blk + 1) * BLK);
    const seqs = writesTo.get(blk);
    if (!seqs) {
      if (!got.equals(old) && res.problems.length < 20) res.problems.push(`block ${blk} (not written in round ${round}) changed: now ${describeBlock(got, old)}`);
      continue;
    }
    const durable = durableOf.get(blk) ?? -1;
    if (durable < 0 && got.equals(old)) { res.atPreRound++; continue; }
    let ok = false;
    if (got.subarray(0, 4).toString('latin1') === 'PCST' && got.readUInt32LE(4) === round && got.readUInt32LE(12) === blk) {
      const s = got.readUInt32LE(8);
      if (s >= durable && seqs.includes(s) && got.equals(stamp(round, s, blk))) {
        ok = true;
        if (s === durable) res.atDurable++;
        else if (ackedSet.has(s)) res.atLaterAcked++;
        else res.atUnacked++;
      }
    }
    if (!ok && res.problems.length < 20) {
      res.problems.push(`block ${blk}: writes ${seqs.join(',')}; ${durable >= 0 ? `write ${durable} was acknowledged before an acknowledged FLUSH` : 'none was flushed'}; found ${describeBlock(got, old)}`);
    }
  }
  return res;
}

const why1 = needTools('nbdsh', 'python3-nbd', 'nbdcopy');
(why1 ? test.serial.skip : test.serial)(`kill -9 of supervisor and coordinator mid-write, ${ROUNDS} rounds: flushed writes survive, no block holds garbage${skipSuffix(why1)}`, async (t) => {
  t.timeout(600_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, VOL);
  // A small cache (32 MiB, 1 MiB segments) so that the rounds fill it, and writeback and GC run
  // while the writer writes. gc_percent alternates between 0 (reclaim as soon as written back)
  // and 60; the autocommit time alternates too.
  // No --gc-percent at start: a configured non-default value would replace the stored one, and
  // this test checks that `message gc_percent` survives the kill.
  const opts = (round: number): StartOpts => ({
    cacheSize: '32M', extra: ['--segment-size', '1M'],
    env: { PCACHED_AUTOCOMMIT_TIME_MS: round % 2 ? '1000' : '30' },
  });
  let prev: Buffer = Buffer.alloc(VOL);
  let d = await startCache(t, dir, origin, opts(1));
  const seedBase = Math.floor(Math.random() * 1e9);
  t.log(`seed base ${seedBase}`);
  for (let round = 1; round <= ROUNDS; round++) {
    const gc = round % 2 ? 0 : 60;
    const m = await pcachedCli(['message', d.name, 'gc_percent', String(gc), '--control', d.control]);
    t.is(m.code, 0, describe(m));
    const writer = startStampWriter(d.uri, round, seedBase + round);
    t.teardown(() => writer.stop('SIGKILL').then(() => undefined));
    // Kill after a random number of acknowledged writes (and at least one acknowledged FLUSH).
    const target = 1500 + Math.floor(Math.random() * 4000);
    const reached = await waitFor(`round ${round}: ${target} acknowledged writes and a FLUSH`, () => {
      if (!writer.alive()) return 'the writer exited';
      return writer.log.acked.length >= target && writer.log.flushesAcked > 0 ? 'ok' : undefined;
    }, 180_000, 5);
    if (reached !== 'ok') t.fail(`round ${round}: the writer exited before the kill: ${writer.output().slice(-2000)}`);
    const before = await cacheState(d).catch(() => undefined);
    await killEverything(d);
    t.is(await within(writer.exited, 30_000, -1), 0, `the writer stopped after its connection died: ${writer.output().slice(-2000)}`);
    const log = writer.log;
    t.truthy(log.error, 'the writer saw its connection die');

    d = await startCache(t, dir, origin, opts(round + 1));
    const after = await cacheState(d);
    t.deepEqual(after.errors, [], `no cache errors after replay: ${brief(after)}`);
    t.is(after.gcPercent, gc, 'gc_percent persisted across the kill');
    const vol = await readVolume(d.uri, dir, 'vol.raw');
    t.is(vol.length, VOL);
    const c = checkRound(vol, prev, round, log);
    t.log(`round ${round}: ${log.blockOf.size} writes submitted, ${log.acked.length} acknowledged, ${log.durable} covered by ` +
      `${log.flushesAcked} acknowledged FLUSHes; ${c.written} blocks written: ${c.atDurable} at the flushed write, ` +
      `${c.atLaterAcked} at a later acknowledged write, ${c.atUnacked} at an unacknowledged write, ${c.atPreRound} unchanged; ` +
      `before the kill: dirty ${before?.dirtyBlocks} used ${before?.segmentsUsed}/${before?.segments} wb_bytes ${before?.workers.wb_bytes} ` +
      `gc_freed ${before?.workers.gc_segments_freed}; after replay: dirty ${after.dirtyBlocks} used ${after.segmentsUsed}`);
    t.deepEqual(c.problems, [], `round ${round}: the volume after kill -9 and restart`);
    if (round === 1) {
      // The check itself can fail: a flushed block rolled back, and a torn block, are both caught.
      const bad = Buffer.from(vol);
      const rolledBack = log.blockOf.get(log.acked[0]!)!;
      prev.copy(bad, rolledBack * BLK, rolledBack * BLK, (rolledBack + 1) * BLK);
      const torn = log.acked.slice(0, log.durable).map((seq) => log.blockOf.get(seq)!).reverse().find((b) => b !== rolledBack)!;
      bad[torn * BLK + 2000]! ^= 0x01;
      const neg = checkRound(bad, prev, round, log);
      t.true(neg.problems.some((p) => p.startsWith(`block ${rolledBack}:`) && p.includes('pre-round')), `a rolled-back block is reported: ${neg.problems.join('; ')}`);
      t.true(neg.problems.some((p) => p.startsWith(`block ${torn}:`) && p.includes('torn/corrupt')), `a torn block is reported: ${neg.problems.join('; ')}`);
    }
    const cs = await cacheState(d);
    t.is(cs.crcErrors, 0);
    t.is(cs.cacheErrors, 0);
    prev = vol;
  }
  // Finally: the replayed dirty data drains to the origin, which then equals the volume.
  const drained = await waitFor('writeback to drain after the last restart', async () => {
    const cs = await cacheState(d);
    return cs.dirtyBlocks === 0 && cs.dirtyTail === cs.keyHead ? cs : undefined;
  }, 120_000, 200);
  t.deepEqual(drained.errors, []);
  const finalOrigin = readFileSync(origin);
  const diff = firstDiff(finalOrigin, prev);
  t.is(diff, -1, `origin equals the volume after the drain (first difference at block ${diff})`);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 2. Restart persistence, served as read hits.

const why2 = needTools('nbdsh', 'python3-nbd');
(why2 ? test.serial.skip : test.serial)(`data written before SIGTERM is served from the cache after a restart, as read hits, though the origin was overwritten${skipSuffix(why2)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const OFF = 5 * MiB;
  const LEN = 8 * MiB;
  const data = randomBytes(LEN);
  const dataFile = join(dir, 'data.bin');
  writeFileSync(dataFile, data);

  const d1 = await startCache(t, dir, origin);
  const w = await nbdsh(`
data = open(${JSON.stringify(dataFile)}, 'rb').read()
for i in range(0, len(data), ${MiB}):
    h.pwrite(data[i:i + ${MiB}], ${OFF} + i)
h.flush()
print('ok')
`, { uri: d1.uri, timeoutMs: 120_000 });
  t.is(w.code, 0, describe(w));
  t.log(`before the stop: ${brief(await cacheState(d1))}`);
  t.is(await stopGracefully(d1), 0, d1.proc.output());

  // Only the cache has the right bytes now.
  const fd = openSync(origin, 'r+');
  try {
    writeSync(fd, Buffer.alloc(LEN, 0xff), 0, LEN, OFF);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }

  const d2 = await startCache(t, dir, origin);
  const s0 = await cacheState(d2);
  const outFile = join(dir, 'out.bin');
  const r = await nbdsh(`
with open(${JSON.stringify(outFile)}, 'wb') as f:
    for i in range(0, ${LEN}, ${MiB}):
        f.write(h.pread(${MiB}, ${OFF} + i))
print('ok')
`, { uri: d2.uri, timeoutMs: 120_000 });
  t.is(r.code, 0, describe(r));
  const s1 = await cacheState(d2);
  const got = readFileSync(outFile);
  t.is(got.length, LEN);
  const diff = firstDiff(got, data);
  t.is(diff, -1, `the data read back after the restart is what was written (first difference at block ${diff}: ` +
    `${diff >= 0 ? got.subarray(diff * BLK, diff * BLK + 8).toString('hex') : ''})`);
  const blocks = LEN / BLK;
  const readBlocks = (s1.readBlocks ?? 0) - (s0.readBlocks ?? 0);
  const readHits = (s1.readHits ?? 0) - (s0.readHits ?? 0);
  t.log(`after the restart: read ${readBlocks} blocks, ${readHits} hits; ${brief(s1)}`);
  t.is(readBlocks, blocks, 'every block read was counted');
  t.is(readHits, blocks, 'every block read was a cache hit');
  t.deepEqual(s1.errors, []);
  t.is(await stopGracefully(d2), 0, d2.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 3. Writeback drains: the origin file ends up equal to the volume.

const why3 = needTools('nbdsh', 'python3-nbd', 'nbdcopy');
(why3 ? test.serial.skip : test.serial)(`writeback drains writes, TRIM and WRITE_ZEROES to the origin: origin file == volume${skipSuffix(why3)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const SIZE = 64 * MiB;
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, SIZE);
  // Data on the origin the cache has never seen: TRIM and WRITE_ZEROES land on part of it.
  const seed = randomBytes(16 * MiB);
  const SEED_OFF = 32 * MiB;
  {
    const fd = openSync(origin, 'r+');
    try { writeSync(fd, seed, 0, seed.length, SEED_OFF); fsyncSync(fd); } finally { closeSync(fd); }
  }
  // The expected volume, and which bytes a TRIM left undefined (NBD: unspecified until rewritten).
  const model = Buffer.alloc(SIZE);
  seed.copy(model, SEED_OFF);
  const trimmed = new Uint8Array(SIZE);

  const WLEN = 16 * MiB;
  const data = randomBytes(WLEN);
  const dataFile = join(dir, 'data.bin');
  writeFileSync(dataFile, data);
  data.copy(model, 0);
  const extra = randomBytes(64 * 1024);
  const extraFile = join(dir, 'extra.bin');
  writeFileSync(extraFile, extra);

  type Op = ['trim' | 'zero' | 'zero-nohole', number, number] | ['write', number, number, number];
  // [kind, offset, length] / ['write', offset, length, offset in extra]
  const ops: Op[] = [
    ['trim', 2 * MiB, MiB],
    ['write', 2 * MiB + 8192, 4096, 0], // over the trimmed range: ordering matters
    ['zero', 6 * MiB, 512 * 1024],
    ['zero-nohole', 9 * MiB + 4096, 64 * 1024],
    ['write', 6 * MiB + 65536, 8192, 4096], // over the zeroed range
    ['trim', SEED_OFF + MiB, 256 * 1024], // origin data never cached
    ['zero', SEED_OFF + 8 * MiB, 128 * 1024],
    ['trim', 14 * MiB, 4 * MiB], // crosses the end of the written data
    ['write', 17 * MiB + 123, 1000, 12288], // unaligned, inside that trim
    ['zero', 12 * MiB + 512, 3584], // unaligned
  ];
  for (const op of ops) {
    const [kind, off, len] = op;
    if (kind === 'write') extra.copy(model, off, op[3], op[3] + len);
    else model.fill(0, off, off + len);
    trimmed.fill(kind === 'trim' ? 1 : 0, off, off + len);
  }
  const trimmedRanges: [number, number][] = [];
  for (let i = 0; i < SIZE;) {
    if (!trimmed[i]) { i++; continue; }
    let j = i;
    while (j < SIZE && trimmed[j]) j++;
    trimmedRanges.push([i, j]);
    i = j;
  }
  const py = ops.map((op) => {
    switch (op[0]) {
      case 'trim': return `h.trim(${op[2]}, ${op[1]})`;
      case 'zero': return `h.zero(${op[2]}, ${op[1]})`;
      case 'zero-nohole': return `h.zero(${op[2]}, ${op[1]}, nbd.CMD_FLAG_NO_HOLE)`;
      case 'write': return `h.pwrite(extra[${op[3]}:${op[3] + op[2]}], ${op[1]})`;
    }
  }).join('\n');

  const d = await startCache(t, dir, origin);
  const w = await nbdsh(`
import nbd
data = open(${JSON.stringify(dataFile)}, 'rb').read()
extra = open(${JSON.stringify(extraFile)}, 'rb').read()
for i in range(0, len(data), ${MiB}):
    h.pwrite(data[i:i + ${MiB}], i)
${py}
h.flush()
print('ok')
`, { uri: d.uri, timeoutMs: 120_000 });
  t.is(w.code, 0, describe(w));

  const drained = await waitFor('dirtyBlocks == 0 and dirtyTail == keyHead', async () => {
    const cs = await cacheState(d);
    return cs.dirtyBlocks === 0 && cs.dirtyTail === cs.keyHead ? cs : undefined;
  }, 60_000, 200);
  t.log(`drained: ${brief(drained)}`);
  t.deepEqual(drained.errors, []);
  t.is(drained.workers.wb_errors, 0);
  t.true((drained.workers.wb_bytes ?? 0) >= WLEN - 5 * MiB, `written back ${drained.workers.wb_bytes} bytes`);
  // Writeback's aligned runs reach a file origin through O_DIRECT where the file system takes it
  // (the unaligned writes above through the page cache); the comparison below covers both.
  if (directIoWorks(dir)) t.true((drained.workers.wb_origin_direct_writes ?? 0) > 0, brief(drained));

  const originBytes = readFileSync(origin);
  const vol = await readVolume(d.uri, dir, 'vol.raw');
  t.is(vol.length, SIZE);
  const diff = firstDiff(originBytes, vol);
  t.is(sha(originBytes), sha(vol), `origin file == volume (first difference at block ${diff})`);
  // And both are what was written (bytes a TRIM left undefined excepted).
  const masked = (b: Buffer): Buffer => {
    const c = Buffer.from(b);
    for (const [from, to] of trimmedRanges) c.fill(0, from, to);
    return c;
  };
  const want = masked(model);
  const vd = firstDiff(masked(vol), want);
  t.is(vd, -1, `the volume holds what was written (first difference at block ${vd})`);
  const od = firstDiff(masked(originBytes), want);
  t.is(od, -1, `the origin holds what was written (first difference at block ${od})`);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 4. A cache smaller than the working set, under fio.

interface FioJob { jobname: string; error: number; write: { io_bytes: number }; read: { io_bytes: number } }

const why4 = needTools('fio');
(why4 ? test.serial.skip : test.serial)(`16 MiB cache, 96 MiB of fio random writes verified with crc32c (free and throttled writeback), then a verify-only pass: GC runs, no errors${skipSuffix(why4)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 128 * MiB);
  const SIZE = 96 * MiB;
  const start = (env: Record<string, string> = {}) => startCache(t, dir, origin, { cacheSize: '16M', extra: ['--segment-size', '1M', '--gc-percent', '50'], env });
  const fio = async (d: Running, name: string, extra: string[]): Promise<FioJob[]> => {
    const out = join(dir, `${name}.json`);
    const r = await run('fio', [
      `--name=${name}`, '--ioengine=nbd', `--uri=${d.uri}`, '--rw=randwrite', `--size=${SIZE}`, '--iodepth=16',
      '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json', `--output=${out}`, ...extra,
    ], { timeoutMs: 240_000, cwd: dir });
    t.is(r.code, 0, describe(r));
    const jobs = (JSON.parse(readFileSync(out, 'utf8')) as { jobs: FioJob[] }).jobs;
    t.is(jobs.length, 1);
    for (const j of jobs) t.is(j.error, 0, `fio ${name}: error ${j.error}`);
    return jobs;
  };
  const checkWritePass = (jobs: FioJob[], what: string): void => {
    for (const j of jobs) {
      t.is(j.write.io_bytes, SIZE, `${what}: fio wrote all 96 MiB`);
      t.true(j.read.io_bytes >= SIZE, `${what}: fio verified what it wrote (read ${j.read.io_bytes})`);
    }
  };
  const checkCache = (cs: CacheState, what: string): void => {
    t.true((cs.workers.gc_segments_freed ?? 0) > 0, `${what}: GC freed segments`);
    t.true((cs.workers.wb_bytes ?? 0) + (cs.writeBypass ?? 0) > 0, `${what}: writeback or bypass wrote to the origin`);
    t.deepEqual(cs.errors, [], what);
    t.is(cs.crcErrors, 0, what);
    t.is(cs.cacheErrors, 0, what);
    t.is(cs.workers.wb_errors, 0, what);
    t.is(cs.workers.gc_errors, 0, what);
  };

  // Phase 1: writeback as fast as it goes; 4 KiB and 64 KiB writes.
  let d = await start();
  const t0 = Date.now();
  checkWritePass(await fio(d, 'free', ['--bssplit=4k/50:64k/50', '--randseed=4242', '--do_verify=1']), 'free writeback');
  const free = await cacheState(d);
  t.log(`free writeback: write+verify ${Date.now() - t0} ms; writeBypass ${free.writeBypass}, writeBlocked ${free.writeBlocked}; ${brief(free)}`);
  checkCache(free, 'free writeback');
  t.true((free.workers.wb_bytes ?? 0) > 16 * MiB, 'writeback wrote more than the cache holds');
  t.is(await stopGracefully(d), 0, d.proc.output());

  // Phase 2: writeback throttled to 4 MiB/s and a 100 ms cache-full wait: the cache fills, writes
  // wait for space and bypass it where nothing dirty is cached; 4-64 KiB writes.
  d = await start({ PCACHED_WRITEBACK_RATE: '4M', PCACHED_CACHE_FULL_WAIT_MS: '100' });
  const t1 = Date.now();
  const job2 = ['--bsrange=4k-64k', '--randseed=777'];
  checkWritePass(await fio(d, 'throttled', [...job2, '--do_verify=1']), 'throttled writeback');
  const t2 = Date.now();
  const throttled = await cacheState(d);
  const vjobs = await fio(d, 'verify', [...job2, '--verify_only=1']);
  for (const j of vjobs) t.true(j.read.io_bytes >= SIZE, `the verify-only pass read everything (read ${j.read.io_bytes})`);
  const t3 = Date.now();
  const end = await cacheState(d);
  t.log(`throttled writeback: write+verify ${t2 - t1} ms, verify-only ${t3 - t2} ms; writeBypass ${end.writeBypass}, writeBlocked ${end.writeBlocked}; ` +
    `after the write pass: ${brief(throttled)}; at the end: ${brief(end)}`);
  checkCache(end, 'throttled writeback');
  t.true((throttled.writeBlocked ?? 0) > 0, 'with writeback throttled, writes had to wait for cache space');
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 5. message NAME gc_percent N.

const why5 = needTools('nbdsh', 'python3-nbd');
(why5 ? test.serial.skip : test.serial)(`message gc_percent N: applied, shown in status, kept across SIGTERM and kill -9 restarts; bad values refused${skipSuffix(why5)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 64 * MiB);
  const msg = (r: Running, ...words: string[]) => pcachedCli(['message', r.name, ...words, '--control', r.control]);

  // No --name: the cache is called "default".
  let d = await startCache(t, dir, origin, { cacheSize: '32M' });
  const st = (await statusJson(d.control)).caches[0]!;
  t.is(st.name, 'default');
  t.is(st.cacheState?.gcPercent, 70, 'the default gc_percent');

  const set = await msg(d, 'gc_percent', '20');
  t.is(set.code, 0, describe(set));
  t.regex(set.stdout, /^default: gc_percent 20 \(stored in the cache file\)$/m);
  t.is((await cacheState(d)).gcPercent, 20);

  t.is(await stopGracefully(d), 0, d.proc.output());
  d = await startCache(t, dir, origin, { cacheSize: '32M' });
  t.is((await cacheState(d)).gcPercent, 20, 'gc_percent 20 persisted across a SIGTERM restart');

  for (const bad of ['91', 'x', '-1', '20.5']) {
    const r = await msg(d, 'gc_percent', bad);
    t.not(r.code, 0, `gc_percent ${bad} is refused: ${describe(r)}`);
    t.regex(r.stderr, /^pcached: .*gc_percent.*0-90/, `a clear error for gc_percent ${bad}`);
  }
  const none = await msg(d, 'gc_percent');
  t.not(none.code, 0);
  t.regex(none.stderr, /^pcached: .*gc_percent/);
  t.is((await cacheState(d)).gcPercent, 20, 'refused values changed nothing');

  // Acknowledged means durable: a kill -9 right after the reply keeps it.
  const zero = await msg(d, 'gc_percent', '0');
  t.is(zero.code, 0, describe(zero));
  await killEverything(d);
  d = await startCache(t, dir, origin, { cacheSize: '32M' });
  t.is((await cacheState(d)).gcPercent, 0, 'gc_percent 0 persisted across kill -9');
  const ninety = await msg(d, 'gc_percent', '90');
  t.is(ninety.code, 0, describe(ninety));
  t.is((await cacheState(d)).gcPercent, 90);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 6. A write that bypassed a full cache must not be undone by a restart.
//
// Found while writing the tests above: a write that finds the cache full bypasses it (straight to
// the origin) where the cache holds only CLEAN data for the range; the engine then drops the range
// from its in-memory index only. The CLEAN key of the earlier read-miss fill stays in the key log,
// so a restart (here kill -9; a supervisor's coordinator restart does the same) replays it and the
// volume serves the old, pre-write bytes again, as cache hits, until GC happens to retire that key.

const why6 = needTools('nbdsh', 'python3-nbd');
(why6 ? test.serial.skip : test.serial)(`writes that bypassed a full cache over clean cached data are still there after kill -9 and restart${skipSuffix(why6)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 128 * MiB);
  const R = 100 * MiB;
  const RLEN = MiB;
  {
    const fd = openSync(origin, 'r+');
    try { writeSync(fd, Buffer.alloc(RLEN, 0x41), 0, RLEN, R); fsyncSync(fd); } finally { closeSync(fd); }
  }
  // Slow writeback (so dirty_tail, and with it GC, stays behind the fill keys), no wait for space
  // (a write that finds the cache full bypasses at once), GC only at 90 %.
  const opts: StartOpts = { cacheSize: '16M', extra: ['--segment-size', '1M', '--gc-percent', '90'],
    env: { PCACHED_WRITEBACK_RATE: '1M', PCACHED_CACHE_FULL_WAIT_MS: '0' } };
  let d = await startCache(t, dir, origin, opts);
  const w = await nbdsh(`
import os
# ~9 MiB of dirty data in 200 ksets: writeback (1 MiB/s) takes seconds over it.
for k in range(200):
    h.pwrite(os.urandom(48 << 10), k * (48 << 10))
    h.flush()
# Read misses over R: filled into the cache as CLEAN keys, logged after the dirty data.
for i in range(0, ${RLEN}, 65536):
    assert h.pread(65536, ${R} + i) == b'A' * 65536
h.flush()
# Fill the cache; every 4 KiB block of R is overwritten with 'B' meanwhile (some of these writes
# find the cache full and bypass it).
for i in range(${RLEN / BLK}):
    h.pwrite(os.urandom(65536), (40 << 20) + i * 65536)
    h.pwrite(b'B' * ${BLK}, ${R} + i * ${BLK})
h.flush()
assert h.pread(${RLEN}, ${R}) == b'B' * ${RLEN}
print('ok')
`, { uri: d.uri, timeoutMs: 180_000 });
  t.is(w.code, 0, describe(w));
  const before = await cacheState(d);
  t.log(`before the kill: ${brief(before)}`);
  t.true((before.fills ?? 0) > 0, 'the reads of R were filled into the cache');
  t.true((before.writeBypass ?? 0) > 0, 'the cache was full: writes bypassed it');
  await killEverything(d);

  d = await startCache(t, dir, origin, opts);
  const r = await nbdsh(`
data = h.pread(${RLEN}, ${R})
print('stale', sum(1 for i in range(0, ${RLEN}, ${BLK}) if data[i:i + ${BLK}] == b'A' * ${BLK}))
print('new', sum(1 for i in range(0, ${RLEN}, ${BLK}) if data[i:i + ${BLK}] == b'B' * ${BLK}))
`, { uri: d.uri, timeoutMs: 60_000 });
  t.is(r.code, 0, describe(r));
  const stale = Number(/stale (\d+)/.exec(r.stdout)?.[1] ?? -1);
  const fresh = Number(/new (\d+)/.exec(r.stdout)?.[1] ?? -1);
  const after = await cacheState(d);
  const originR = readFileSync(origin).subarray(R, R + RLEN);
  const originNew = Array.from({ length: RLEN / BLK }, (_, i) => originR.subarray(i * BLK, (i + 1) * BLK).every((x) => x === 0x42)).filter(Boolean).length;
  t.log(`after the restart: ${fresh} blocks of R read 'B', ${stale} read the old 'A' (the origin has 'B' in ${originNew}); ${brief(after)}`);
  t.is(stale, 0, `${stale} of the ${RLEN / BLK} acknowledged and flushed 4 KiB writes to R read back their old content after the restart`);
  t.is(fresh, RLEN / BLK);
  t.is(await stopGracefully(d), 0, d.proc.output());
});

// ---------------------------------------------------------------------------------------------
// 7. A FLUSH must make writes that bypassed the cache durable on the origin too.
//
// Found while writing the tests above: in writeback mode an NBD FLUSH only syncs the cache file,
// but a write that found the cache full went to the origin without FUA (the bypass), so after the
// FLUSH reply it can still sit in the origin's volatile cache (page cache, an NBD origin's own
// write-back cache) indefinitely. kill -9 cannot show it (the page cache survives), so this test
// watches the origin's requests through nbdkit's log filter: after each client FLUSH reply, every
// write the daemon sent to the origin on the client's behalf must have been followed by an origin
// flush.

const why7 = needTools('nbdsh', 'python3-nbd', 'nbdkit');
(why7 ? test.serial.skip : test.serial)(`FLUSH after writes that bypassed a full cache flushes the origin${skipSuffix(why7)}`, async (t) => {
  t.timeout(300_000);
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const origin = join(dir, 'origin.img');
  makeSparseFile(origin, 128 * MiB);
  const osock = join(dir, 'origin.sock');
  const logFile = join(dir, 'origin-requests.log');
  const nbdkit = spawnTracked('nbdkit', ['-f', '-U', osock, '--filter=log', 'file', origin, `logfile=${logFile}`], { env: TOOL_ENV });
  t.teardown(() => nbdkit.stop('SIGTERM', 10_000).then(() => undefined));
  await waitAccepting(osock, nbdkit, 30_000);

  const R = 100 * MiB;
  const MARK = 120 * MiB;
  const N = 256;
  const GROUP = 8;
  const d = await startCache(t, dir, `nbd+unix:///?socket=${osock}`, {
    cacheSize: '16M', extra: ['--segment-size', '1M', '--gc-percent', '90'],
    env: { PCACHED_WRITEBACK_RATE: '1M', PCACHED_CACHE_FULL_WAIT_MS: '0' },
  });
  const w = await nbdsh(`
import os
for k in range(200):
    h.pwrite(os.urandom(48 << 10), k * (48 << 10))
    h.flush()
for i in range(0, ${N * BLK}, 65536):
    h.pread(65536, ${R} + i)
h.flush()
# Each round: fill the cache a bit more, write one block of R; every ${GROUP} rounds a FLUSH, then a
# read of a never-read marker block (a read miss: the origin sees a READ at MARK + g * 4096 after
# the FLUSH reply). A bypass waits until the epochs before it are on the origin, so FLUSHes are
# kept apart for bypasses to happen inside an epoch.
for i in range(${N}):
    h.pwrite(os.urandom(512 << 10), (40 << 20) + (i % 64) * (512 << 10))
    h.pwrite(b'B' * ${BLK}, ${R} + i * ${BLK})
    if i % ${GROUP} == ${GROUP - 1}:
        h.flush()
        h.pread(${BLK}, ${MARK} + (i // ${GROUP}) * ${BLK})
print('ok')
`, { uri: d.uri, timeoutMs: 180_000 });
  t.is(w.code, 0, describe(w));
  const cs = await cacheState(d);
  t.is(await stopGracefully(d), 0, d.proc.output());

  // Parse the origin's request log (request lines, in the order nbdkit started them).
  const lines = readFileSync(logFile, 'utf8').split('\n');
  const readers = new Set<string>();
  for (const l of lines) {
    const m = /connection=(\d+) Read id=/.exec(l);
    if (m) readers.add(m[1]!);
  }
  const markAt = new Map<number, number>();
  const clientWrites: { conn: string; line: number; fua: boolean; off: number }[] = [];
  const flushLines: number[] = [];
  lines.forEach((l, i) => {
    let m = /connection=(\d+) Read id=\d+ offset=0x([0-9a-f]+)/.exec(l);
    if (m) {
      const off = parseInt(m[2]!, 16);
      if (off >= MARK && off < MARK + (N / GROUP) * BLK && !markAt.has((off - MARK) / BLK)) markAt.set((off - MARK) / BLK, i);
      return;
    }
    m = /connection=(\d+) Write id=\d+ offset=0x([0-9a-f]+) count=0x([0-9a-f]+) fua=(\d)/.exec(l);
    if (m) {
      const off = parseInt(m[2]!, 16);
      // The client's writes: the blocks of R and the fill writes (40 MiB + 32 MiB).
      if ((off >= R && off < R + N * BLK) || (off >= 40 * MiB && off < 72 * MiB)) clientWrites.push({ conn: m[1]!, line: i, fua: m[4] === '1', off });
      return;
    }
    if (/ Flush id=/.test(l)) flushLines.push(i);
  });
  t.is(markAt.size, N / GROUP, 'every marker read reached the origin');
  // A client write on a stripe's origin connection (one that reads: not the writeback's) is a
  // bypass; before the next marker (the next FLUSH reply) it must have been a FUA write, or an
  // origin flush must have started after it.
  const marks = [...markAt.values()].sort((a, b) => a - b);
  let bypassed = 0;
  const unflushed: number[] = [];
  for (const wr of clientWrites) {
    if (!readers.has(wr.conn)) continue;
    const mark = marks.find((m) => m > wr.line);
    if (mark === undefined) continue;
    bypassed++;
    if (!wr.fua && !flushLines.some((f) => f > wr.line && f < mark)) unflushed.push(wr.off);
  }
  t.log(`${bypassed} client writes bypassed the cache before a FLUSH reply (writeBypass ${cs.writeBypass}); ${unflushed.length} of them were not ` +
    `followed by an origin flush before the client's FLUSH reply (offsets ${unflushed.slice(0, 10).join(',')}${unflushed.length > 10 ? ',…' : ''}); ` +
    `${flushLines.length} origin flushes in all; origin connections that read: ${[...readers].join(',')}`);
  t.true(bypassed > 0, 'some writes bypassed the full cache');
  t.deepEqual(unflushed, [], 'every bypassed write was flushed to the origin before the FLUSH reply');
});
