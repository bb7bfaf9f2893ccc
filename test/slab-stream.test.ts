// Large requests through a stripe's slab, driven step by step (test/helpers/fake-stripe.ts plays
// the stripe): every request completes whatever the slab holds, including reply pages that a
// client which stopped reading never gives back; READ data arrives whole and exactly once, in
// simple replies, single-chunk (DF) and chunked structured replies.

import test from 'ava';
import fc from 'fast-check';
import { StripeRing } from '../src/coordinator/stripe-ring.js';
import { Io, statusReply, type IoWork, type ReplySink, type StatusRequest } from '../src/coordinator/io.js';
import { nbdError } from '../src/nbd/errors.js';
import { splitRequest, maxPieceFor } from '../src/coordinator/router.js';
import { Cmd, CmdFlag, ChunkType, ReplyFlag } from '../src/nbd/constants.js';
import { StripeOp, SLAB_PAGE } from '../src/ring/layout.js';
import { FakeStripe } from './helpers/fake-stripe.js';

const MiB = 1024 * 1024;
const SIMPLE_MAGIC = 0x67446698;
const CHUNK_MAGIC = 0x668e33ef;
const EIO = 5;

interface Reply { simple: { error: number; data: Buffer } | null; chunks: { flags: number; type: number; offset: number; data: Buffer }[] }

/**
 * A client connection as the coordinator sees it. `stalled`: the client never reads, so pages
 * handed over zero-copy are never given back. `copies`: the socket always has a backlog, so
 * replies are copied out. Otherwise zero-copy pages come back when `flush()` is called.
 */
class Sink implements ReplySink {
  readonly replies = new Map<number, Reply>();
  readonly completedIos: Io[] = [];
  /** Zero-copy sends not taken yet: the bytes as they were when handed over. */
  readonly pinned: { work: IoWork; header: Buffer; bytes: Buffer }[] = [];
  zeroCopies = 0;
  constructor(readonly mode: 'stalled' | 'copies' | 'reads') {}

  #reply(cookie: number): Reply {
    let r = this.replies.get(cookie);
    if (!r) this.replies.set(cookie, (r = { simple: null, chunks: [] }));
    return r;
  }

  #record(msg: Buffer): void {
    const magic = msg.readUInt32BE(0);
    if (magic === SIMPLE_MAGIC) {
      const r = this.#reply(msg.readUInt32BE(12));
      if (r.simple) throw new Error('two simple replies for one cookie');
      r.simple = { error: msg.readUInt32BE(4), data: Buffer.from(msg.subarray(16)) };
      return;
    }
    if (magic !== CHUNK_MAGIC) throw new Error(`bad reply magic ${magic.toString(16)}`);
    const flags = msg.readUInt16BE(4);
    const type = msg.readUInt16BE(6);
    const len = msg.readUInt32BE(16);
    if (msg.length !== 20 + len) throw new Error(`chunk length ${len} but ${msg.length - 20} bytes`);
    const r = this.#reply(msg.readUInt32BE(12));
    if (r.chunks.some((c) => (c.flags & ReplyFlag.DONE) !== 0)) throw new Error('a chunk after the DONE chunk');
    const offset = type === ChunkType.OFFSET_DATA ? Number(msg.readBigUInt64BE(20)) : -1;
    r.chunks.push({ flags, type, offset, data: type === ChunkType.OFFSET_DATA ? Buffer.from(msg.subarray(28)) : Buffer.alloc(0) });
  }

  writeReply(bufs: Buffer[]): void {
    this.#record(Buffer.concat(bufs));
  }

  writeStatus(req: StatusRequest, errno: number, what: string): void {
    this.#record(statusReply(req, nbdError(errno, { ...req, shuttingDown: false }), errno, what));
  }

  writeSlabReply(header: Buffer, work: IoWork): void {
    const ring = work.ring!;
    const bytes = Buffer.from(ring.slab.subarray(work.slabOff, work.slabOff + work.length));
    // Recorded now: a socket sends in the order of its writes, whether copied or not.
    this.#record(Buffer.concat([header, bytes]));
    if (this.mode !== 'copies' && ring.pinForSocket(work)) {
      this.zeroCopies++;
      this.pinned.push({ work, header, bytes });
      return;
    }
    ring.releaseSlab(work);
  }

  /** The client reads: the pinned replies leave now, so their slab pages must still hold what was written. */
  flush(): void {
    if (this.mode === 'stalled') return;
    this.checkPinnedIntact();
    for (const p of this.pinned.splice(0)) p.work.ring!.unpinForSocket(p.work);
  }

  /** Pages handed to the socket must hold what was sent until the socket gives them back. */
  checkPinnedIntact(): void {
    for (const p of this.pinned) {
      if (!Buffer.from(p.work.ring!.slab.subarray(p.work.slabOff, p.work.slabOff + p.work.length)).equals(p.bytes)) {
        throw new Error('slab pages of an unsent reply were reused');
      }
    }
  }

  completed(io: Io): void {
    this.completedIos.push(io);
  }
}

let cookie = 1;

/** What Session.#request does for READ and WRITE, on one ring. */
function submit(ring: StripeRing, sink: Sink, type: number, offset: number, length: number, opts: { structured?: boolean; df?: boolean; payload?: Buffer } = {}): Io {
  const req = {
    flags: opts.df ? CmdFlag.DF : 0, type, cookieHi: 0, cookieLo: cookie++, offset, length,
    payload: opts.payload ?? null, payloadDropped: false,
  };
  const io = new Io(req, opts.structured ?? false, length, sink);
  const pieces = splitRequest(offset, length, 1, maxPieceFor(ring.slabSize));
  io.remaining = io.pieces = pieces.length;
  for (const p of pieces) {
    const work: IoWork = {
      op: type === Cmd.READ ? StripeOp.READ : StripeOp.WRITE, flags: 0, offset: p.offset, length: p.length, slabBytes: p.length,
      payload: opts.payload ? opts.payload.subarray(p.delta, p.delta + p.length) : null,
      onDone: Io.onPieceDone, split: Io.splitPiece, slabOff: 0, ring: null, io, delta: p.delta,
    };
    ring.submit(work);
  }
  return io;
}

/** The data a READ reply delivered, checked for framing: whole, no overlap, DONE exactly on the last chunk. */
function readData(sink: Sink, io: Io): { error: number; data: Buffer | null } {
  const r = sink.replies.get(io.cookieLo);
  if (!r) throw new Error(`no reply for cookie ${io.cookieLo}`);
  if (!io.structured) {
    if (!r.simple || r.chunks.length) throw new Error('a simple reply was expected');
    return { error: r.simple.error, data: r.simple.error === 0 ? r.simple.data : null };
  }
  if (r.simple) throw new Error('a simple reply to a structured READ');
  const last = r.chunks[r.chunks.length - 1]!;
  if ((last.flags & ReplyFlag.DONE) === 0) throw new Error('the last chunk has no DONE flag');
  const err = r.chunks.find((c) => c.type === ChunkType.ERROR);
  if (err) return { error: 1, data: null };
  if (io.flags & CmdFlag.DF && r.chunks.length !== 1) throw new Error(`DF read in ${r.chunks.length} chunks`);
  const out = Buffer.alloc(io.length);
  const seen = new Uint8Array(io.length);
  for (const c of r.chunks) {
    if (c.type !== ChunkType.OFFSET_DATA) throw new Error(`chunk type ${c.type}`);
    const at = c.offset - io.offset;
    if (at < 0 || at + c.data.length > io.length) throw new Error('chunk outside the request');
    for (let i = at; i < at + c.data.length; i++) if (seen[i]++) throw new Error('overlapping chunks');
    c.data.copy(out, at);
  }
  if (seen.some((v) => v === 0)) throw new Error('read not covered');
  return { error: 0, data: out };
}

const PERIOD = Buffer.from(Array.from({ length: 4099 }, (_, i) => (i * 31 + (i >> 7)) & 0xff));

/** Deterministic non-repeating-per-page bytes (a 4099-byte period shifted by `seed`). */
function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  b.fill(PERIOD.subarray(seed % 4099));
  return b;
}

test('replies a stalled client never takes fragment the slab; a piece that finds no run is cut, and completes', (t) => {
  const ring = new StripeRing(0, 256, 4 * MiB);
  const stripe = new FakeStripe(ring, 64 * MiB);
  stripe.volume.set(pattern(8 * MiB, 3), 0);
  const stalled = new Sink('stalled');
  const copies = new Sink('copies');
  // Alternate one-page replies to a client that never reads with 15-page replies to one that
  // is always copied: the stalled pages end up every 16 pages across the whole slab.
  const ios: Io[] = [];
  for (let i = 0; i < 64; i++) {
    ios.push(submit(ring, stalled, Cmd.READ, i * 8192, 4096));
    ios.push(submit(ring, copies, Cmd.READ, 1 * MiB + i * 61440, 61440));
  }
  stripe.runAll();
  t.is(stalled.pinned.length, 64, 'every stalled reply holds its page');
  t.true(ring.socketPinned <= ring.slabSize / 2);
  // 1 MiB needs 256 pages in a row; the longest free run is 15 pages now.
  const before = stripe.log.length;
  const big = submit(ring, copies, Cmd.READ, 3 * MiB + 512, MiB);
  stripe.runAll();
  t.is(copies.completedIos.length, 65, 'the 1 MiB READ completed');
  t.true(readData(copies, big).data!.equals(stripe.volume.subarray(3 * MiB + 512, 4 * MiB + 512)), 'the 1 MiB READ returned the right data');
  t.true(ring.counters.get('slab_splits') > 0, 'cut to fit the free runs');
  const bigPieces = stripe.log.slice(before);
  t.true(bigPieces.every((r) => r.length <= 15 * SLAB_PAGE), `pieces ${bigPieces.map((r) => r.length).join(',')}`);
  t.is(bigPieces.reduce((n, r) => n + r.length, 0), MiB);
  stalled.checkPinnedIntact();
  for (const io of ios) {
    const sink = io.cookieLo % 2 === 1 ? stalled : copies;
    if (sink === copies) t.true(readData(sink, io).data!.equals(stripe.volume.subarray(io.offset, io.offset + io.length)));
  }
});

test('zero-copy replies may pin at most half of the slab; the rest is copied out at once', (t) => {
  const ring = new StripeRing(0, 1024, 4 * MiB);
  const stripe = new FakeStripe(ring, 16 * MiB);
  const stalled = new Sink('stalled');
  for (let i = 0; i < 100; i++) submit(ring, stalled, Cmd.READ, i * 65536, 65536, { structured: true });
  stripe.runAll();
  t.is(stalled.completedIos.length, 100);
  t.is(stalled.zeroCopies, 32, '32 × 64 KiB = 2 MiB = half of the slab');
  t.is(ring.socketPinned, 2 * MiB);
  // With half pinned, a maximum piece (a quarter of the slab) still goes through.
  const reads = new Sink('copies');
  const io = submit(ring, reads, Cmd.READ, 8 * MiB, 4 * MiB);
  stripe.runAll();
  t.is(readData(reads, io).data?.length, 4 * MiB);
});

test('a structured READ goes out piece by piece, DONE on the chunk of the last piece to complete; an error after some chunks ends in one ERROR chunk', (t) => {
  const ring = new StripeRing(0, 64, 16 * MiB);
  const stripe = new FakeStripe(ring, 64 * MiB);
  stripe.volume.set(pattern(32 * MiB, 9), 0);
  const sink = new Sink('reads');
  const io = submit(ring, sink, Cmd.READ, 1 * MiB + 3, 13 * MiB, { structured: true });
  t.is(stripe.take(), 4, 'cut at 4 MiB boundaries');
  // Complete out of order: the chunks are sent as the pieces complete, each freeing its slab.
  stripe.complete(2);
  stripe.complete(0);
  sink.flush();
  t.is(sink.replies.get(io.cookieLo)!.chunks.length, 2);
  stripe.complete(1);
  stripe.complete(0);
  sink.flush();
  const r = sink.replies.get(io.cookieLo)!;
  t.deepEqual(r.chunks.map((c) => (c.flags & ReplyFlag.DONE) !== 0), [false, false, false, true]);
  t.true(readData(sink, io).data!.equals(stripe.volume.subarray(MiB + 3, 14 * MiB + 3)), 'the chunks reassemble to the data');
  t.is(sink.completedIos.length, 1);

  const failing = submit(ring, sink, Cmd.READ, 0, 12 * MiB, { structured: true });
  stripe.take();
  stripe.complete(0);
  stripe.complete(0, EIO);
  stripe.complete(0);
  sink.flush();
  const f = sink.replies.get(failing.cookieLo)!;
  t.deepEqual(f.chunks.map((c) => c.type), [ChunkType.OFFSET_DATA, ChunkType.ERROR]);
  t.is(f.chunks[1]!.flags & ReplyFlag.DONE, ReplyFlag.DONE);
  t.is(ring.socketPinned, 0);
});

test('property: any mix of large and small requests from clients that read, lag or stall always completes, with the right data', (t) => {
  const op = fc.record({
    read: fc.boolean(),
    length: fc.oneof(fc.integer({ min: 1, max: 8192 }), fc.integer({ min: 1, max: 9 * MiB })),
    at: fc.nat(),
    misalign: fc.integer({ min: 0, max: 4095 }),
    structured: fc.boolean(),
    df: fc.boolean(),
    client: fc.constantFrom(0, 1, 2),
  });
  fc.assert(fc.property(
    fc.constantFrom(4 * MiB, 8 * MiB, 32 * MiB),
    fc.array(op, { minLength: 1, maxLength: 24 }),
    fc.array(fc.nat(), { minLength: 1, maxLength: 50 }),
    (slab, ops, choices) => {
      const ring = new StripeRing(0, 64, slab);
      const stripe = new FakeStripe(ring, 96 * MiB);
      // Reads come from [0, 32 MiB), writes go to disjoint ranges in [32, 96 MiB).
      stripe.volume.set(pattern(32 * MiB, 5), 0);
      const sinks = [new Sink('stalled'), new Sink('copies'), new Sink('reads')];
      let writeAt = 32 * MiB;
      const writes: { at: number; data: Buffer }[] = [];
      const ios: { io: Io; sink: Sink }[] = [];
      for (const o of ops) {
        const sink = sinks[o.client]!;
        if (o.read || writeAt + o.misalign + o.length > 96 * MiB) {
          const off = o.at % (32 * MiB - o.length + 1);
          ios.push({ io: submit(ring, sink, Cmd.READ, off, o.length, { structured: o.structured, df: o.df }), sink });
        } else {
          const data = pattern(o.length, writes.length + 11);
          const at = writeAt + o.misalign;
          writeAt = at + o.length;
          writes.push({ at, data });
          ios.push({ io: submit(ring, sink, Cmd.WRITE, at, o.length, { payload: data }), sink });
        }
      }
      let step = 0;
      for (let guard = 0; guard < 100_000; guard++) {
        stripe.take();
        if (stripe.pending.length === 0) break;
        const c = choices[step++ % choices.length]!;
        stripe.complete(c % stripe.pending.length);
        if (c % 3 === 0) sinks[2]!.flush();
      }
      sinks[2]!.flush();
      const done = sinks.reduce((n, s) => n + s.completedIos.length, 0);
      if (done !== ios.length) throw new Error(`deadlock: ${done} of ${ios.length} completed, ${ring.waiting} pieces waiting`);
      for (const { io, sink } of ios) {
        if (io.type !== Cmd.READ) continue;
        if (sink.mode === 'stalled' && !sink.replies.has(io.cookieLo)) continue; // pinned, never sent
        const r = readData(sink, io);
        if (!r.data?.equals(stripe.volume.subarray(io.offset, io.offset + io.length))) throw new Error(`wrong data for READ ${io.offset}+${io.length}`);
      }
      sinks[0]!.checkPinnedIntact();
      for (const w of writes) if (!stripe.volume.subarray(w.at, w.at + w.data.length).equals(w.data)) throw new Error('a WRITE landed wrong');
      if (ring.socketPinned > slab / 2) throw new Error('more than half of the slab pinned');
      return true;
    },
  ), { seed: 20261202, numRuns: 60 });
  t.pass();
});
