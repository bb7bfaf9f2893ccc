import test from 'ava';
import fc from 'fast-check';
import {
  RequestParser, PayloadDecision, writeSimpleReply, encodeSimpleReply, writeReadChunkHeader, encodeErrorChunk,
  encodeBlockStatusChunk, encodeNoneChunk, type NbdRequest, type RequestEvent,
} from '../src/nbd/transmission.js';
import { encodeRequest, ReplyParser, type ReplyEvent } from '../src/nbd/client.js';
import { Cmd, CmdFlag, ChunkType, ReplyFlag, NbdErr, MAX_PAYLOAD } from '../src/nbd/constants.js';
import { feed, splitsAt, pieces, cutAt } from './helpers/split.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const MiB = 1024 * 1024;

function req(type: number, opts: Partial<NbdRequest> = {}): NbdRequest {
  return { flags: 0, type, cookieHi: 0, cookieLo: 0, offset: 0, length: 0, payload: null, payloadDropped: false, ...opts };
}

function encode(r: NbdRequest): Buffer {
  return encodeRequest(r.flags, r.type, r.cookieHi, r.cookieLo, r.offset, r.length, r.payload ?? undefined);
}

/** Requests with payloads compared by content (views vs copies must not matter). */
function plain(evs: RequestEvent[]): unknown[] {
  return evs.map((e) => (e.kind === 'request' ? { ...e.req, payload: e.req.payload === null ? null : Buffer.from(e.req.payload).toString('hex') } : e));
}

test('golden request frames for every command', (t) => {
  t.deepEqual(encodeRequest(CmdFlag.FUA, Cmd.WRITE, 0x01020304, 0x05060708, 0x1_0000_0200, 3, Buffer.from('abc')),
    hex('25609513 0001 0001 0102030405060708 0000000100000200 00000003 616263'));
  t.deepEqual(encodeRequest(0, Cmd.READ, 0, 1, 4096, 512), hex('25609513 0000 0000 0000000000000001 0000000000001000 00000200'));
  t.deepEqual(encodeRequest(0, Cmd.DISC, 0, 0, 0, 0), hex('25609513 0000 0002 0000000000000000 0000000000000000 00000000'));
  t.deepEqual(encodeRequest(0, Cmd.FLUSH, 0, 9, 0, 0), hex('25609513 0000 0003 0000000000000009 0000000000000000 00000000'));
  t.deepEqual(encodeRequest(CmdFlag.FUA, Cmd.TRIM, 0, 2, 0, 0xffffffff), hex('25609513 0001 0004 0000000000000002 0000000000000000 ffffffff'));
  t.deepEqual(encodeRequest(0, Cmd.CACHE, 0, 3, 512, 512), hex('25609513 0000 0005 0000000000000003 0000000000000200 00000200'));
  t.deepEqual(encodeRequest(CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO, Cmd.WRITE_ZEROES, 0, 4, 0, 4096), hex('25609513 0012 0006 0000000000000004 0000000000000000 00001000'));
  t.deepEqual(encodeRequest(CmdFlag.REQ_ONE, Cmd.BLOCK_STATUS, 0, 5, 0, 65536), hex('25609513 0008 0007 0000000000000005 0000000000000000 00010000'));
});

const sample: NbdRequest[] = [
  req(Cmd.READ, { cookieLo: 1, offset: 4096, length: 512 }),
  req(Cmd.WRITE, { flags: CmdFlag.FUA, cookieHi: 0xdeadbeef, cookieLo: 2, offset: 8192, length: 5, payload: Buffer.from('hello') }),
  req(Cmd.FLUSH, { cookieLo: 3 }),
  req(Cmd.TRIM, { cookieLo: 4, offset: 2 ** 40, length: 0xffffffff }),
  req(Cmd.CACHE, { cookieLo: 5, length: 1 }),
  req(Cmd.WRITE_ZEROES, { flags: CmdFlag.NO_HOLE, cookieLo: 6, length: 60 * MiB }),
  req(Cmd.BLOCK_STATUS, { flags: CmdFlag.REQ_ONE, cookieLo: 7, length: 1 << 30 }),
  req(Cmd.WRITE, { cookieLo: 8, length: 0 }),
  req(99, { cookieLo: 9, offset: 1, length: 2 }),
  req(Cmd.DISC, { cookieLo: 10 }),
];
const sampleStream = Buffer.concat(sample.map(encode));

test('every request re-parses split at every byte position', (t) => {
  for (const chunks of splitsAt(sampleStream)) {
    const p = new RequestParser();
    t.deepEqual(plain(feed(p, chunks)), plain(sample.map((r) => ({ kind: 'request' as const, req: r }))));
    t.is(p.buffered, 0);
  }
  t.deepEqual(plain(feed(new RequestParser(), pieces(sampleStream, 1))), plain(sample.map((r) => ({ kind: 'request' as const, req: r }))));
});

test('a payload inside one chunk is a view, a split payload is one exact copy', (t) => {
  const chunk = encode(req(Cmd.WRITE, { cookieLo: 1, length: 4096, payload: Buffer.alloc(4096, 0xab) }));
  const p = new RequestParser();
  p.push(chunk);
  const ev = p.next();
  if (ev?.kind !== 'request') return t.fail();
  t.is(ev.req.payload!.buffer, chunk.buffer, 'no copy');
  t.is(ev.req.payload!.byteOffset, chunk.byteOffset + 28);

  const payload = Buffer.alloc(3 * MiB);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  const stream = Buffer.concat([encode(req(Cmd.WRITE, { cookieLo: 2, length: payload.length, payload })), encode(req(Cmd.FLUSH, { cookieLo: 3 }))]);
  const q = new RequestParser();
  const evs = feed(q, pieces(stream, 65_521));
  t.is(evs.length, 2);
  const w = evs[0];
  if (w.kind !== 'request') return t.fail();
  t.true(w.req.payload!.equals(payload));
  t.is(w.req.payload!.buffer.byteLength, payload.length, 'one allocation of exactly length');
  t.deepEqual((evs[1] as { req: NbdRequest }).req.cookieLo, 3);
});

test('WRITE over maxPayload is drained (payloadDropped) and the next request parses', (t) => {
  const len = 33 * MiB;
  const big = Buffer.concat([encodeRequest(0, Cmd.WRITE, 0, 1, 0, len), Buffer.alloc(len, 1), encode(req(Cmd.READ, { cookieLo: 2, length: 4096 }))]);
  for (const size of [MiB, 64 * 1024 + 3]) {
    const p = new RequestParser();
    const evs = feed(p, pieces(big, size));
    t.deepEqual(plain(evs), plain([
      { kind: 'request', req: req(Cmd.WRITE, { cookieLo: 1, length: len, payloadDropped: true }) },
      { kind: 'request', req: req(Cmd.READ, { cookieLo: 2, length: 4096 }) },
    ]));
  }
  // A custom limit drains at the limit + 1.
  const small = Buffer.concat([encodeRequest(0, Cmd.WRITE, 0, 1, 0, 11), Buffer.alloc(11), encodeRequest(0, Cmd.FLUSH, 0, 2, 0, 0)]);
  for (const chunks of splitsAt(small)) {
    const evs = feed(new RequestParser({ maxPayload: 10, maxDrainable: 11 }), chunks);
    t.deepEqual(evs.map((e) => (e.kind === 'request' ? [e.req.cookieLo, e.req.payloadDropped, e.req.payload] : e.kind)), [[1, true, null], [2, false, null]]);
  }
});

test('admitPayload decides per WRITE header, before any payload buffer exists; WAIT asks again later', (t) => {
  const w1 = req(Cmd.WRITE, { cookieLo: 1, offset: 512, length: 5, payload: Buffer.from('hello') });
  const rd = req(Cmd.READ, { cookieLo: 2, length: 4096 });
  const w3 = req(Cmd.WRITE, { cookieLo: 3, length: 300, payload: Buffer.alloc(300, 0x5a) });
  const fl = req(Cmd.FLUSH, { cookieLo: 4 });
  const stream = Buffer.concat([w1, rd, w3, fl].map(encode));
  const w3At = encode(w1).length + encode(rd).length;
  for (const chunks of splitsAt(stream)) {
    // The first WRITE waits once, then is accepted; the second is dropped after waiting once.
    const asked: [number, boolean, number][] = [];
    const waited = new Set<number>();
    let pushed = 0;
    const p = new RequestParser({
      admitPayload: (r, arrived) => {
        asked.push([r.cookieLo, arrived, pushed]);
        t.is(r.payload, null, 'asked before a payload exists');
        if (!waited.has(r.cookieLo)) {
          waited.add(r.cookieLo);
          return PayloadDecision.WAIT;
        }
        return r.cookieLo === 1 ? PayloadDecision.ACCEPT : PayloadDecision.DROP;
      },
    });
    const evs: RequestEvent[] = [];
    for (const c of chunks) {
      p.push(c);
      pushed += c.length;
      // A WAIT returns null; the caller asks again (here: at once, as a resumed session does).
      for (let tries = 0; tries < 3; tries++) for (let ev = p.next(); ev !== null; ev = p.next()) evs.push(ev);
    }
    t.deepEqual(plain(evs), plain([
      { kind: 'request', req: w1 },
      { kind: 'request', req: rd },
      { kind: 'request', req: { ...w3, payload: null, payloadDropped: true } },
      { kind: 'request', req: fl },
    ]));
    t.deepEqual([...new Set(asked.map(([c]) => c))], [1, 3], 'asked for WRITEs only');
    // `arrived` is true exactly when every payload byte was already received.
    for (const [c, a, have] of asked) {
      const end = (c === 1 ? 0 : w3At) + 28 + (c === 1 ? 5 : 300);
      t.is(a, have >= end, `cookie ${c} with ${have} bytes received`);
    }
    t.is(p.buffered, 0);
  }
});

test('a WRITE waiting for admission holds its payload bytes unconsumed; accepting later fills it', (t) => {
  let decision = PayloadDecision.WAIT;
  const p = new RequestParser({ admitPayload: () => decision });
  const payload = Buffer.alloc(3 * MiB, 7);
  const stream = encode(req(Cmd.WRITE, { cookieLo: 9, length: payload.length, payload }));
  p.push(stream.subarray(0, 28 + MiB));
  t.is(p.next(), null);
  t.is(p.buffered, MiB, 'the header is consumed, the payload bytes are not');
  t.is(p.next(), null, 'still waiting');
  decision = PayloadDecision.ACCEPT;
  t.is(p.next(), null, 'accepted: filling');
  t.is(p.buffered, 0);
  p.push(stream.subarray(28 + MiB));
  const ev = p.next();
  if (ev?.kind !== 'request') return t.fail();
  t.true(ev.req.payload!.equals(payload));
});

test('WRITE over maxDrainable, bad magic and extended requests are fatal', (t) => {
  const p = new RequestParser();
  const evs = feed(p, [encodeRequest(0, Cmd.WRITE, 0, 1, 0, 64 * MiB + 1)]);
  t.is(evs[0].kind, 'fatal');
  t.is(p.next()?.kind, 'fatal');
  const exactly64 = feed(new RequestParser(), [encodeRequest(0, Cmd.WRITE, 0, 1, 0, 64 * MiB)]);
  t.deepEqual(exactly64, [], 'exactly 64 MiB is drainable: waits for the payload');

  const bad = encodeRequest(0, Cmd.READ, 0, 1, 0, 512);
  bad.writeUInt32BE(0x25609514, 0);
  for (const chunks of splitsAt(Buffer.concat([encode(sample[0]), bad]))) {
    const e = feed(new RequestParser(), chunks);
    t.deepEqual(e.map((x) => x.kind), ['request', 'fatal']);
  }
  const ext = hex('21e41c71 0000 0000 0000000000000001 0000000000000000 0000000000000200');
  t.regex((feed(new RequestParser(), [ext])[0] as { reason: string }).reason, /extended/);
  // Extra payload-free bytes of a READ are never consumed as data.
  t.deepEqual(feed(new RequestParser(), [encodeRequest(0, Cmd.READ, 0, 1, 0, MAX_PAYLOAD + 1)]).map((e) => e.kind), ['request']);
});

test('offsets: exact below 2^53, huge above', (t) => {
  const r = feed(new RequestParser(), [encodeRequest(0, Cmd.READ, 0, 1, 2 ** 53 - 1, 1), hex('25609513 0000 0000 0000000000000002 ffffffffffffffff 00000001')]);
  t.is((r[0] as { req: NbdRequest }).req.offset, 2 ** 53 - 1);
  t.true((r[1] as { req: NbdRequest }).req.offset >= 2 ** 64 - 4096);
});

test('buffered counts bytes not yet handed out', (t) => {
  const p = new RequestParser();
  const two = Buffer.concat([encode(sample[0]), encode(sample[2])]);
  p.push(two.subarray(0, 40));
  t.is(p.buffered, 40);
  t.is(p.next()?.kind, 'request');
  t.is(p.buffered, 12);
  t.is(p.next(), null);
  p.push(two.subarray(40));
  t.is(p.buffered, 28);
  t.is(p.next()?.kind, 'request');
  t.is(p.buffered, 0);
  // A payload in progress counts as consumed.
  p.push(encodeRequest(0, Cmd.WRITE, 0, 1, 0, 100));
  p.push(Buffer.alloc(50));
  t.is(p.next(), null);
  t.is(p.buffered, 0);
});

test('golden replies', (t) => {
  t.deepEqual(encodeSimpleReply(0, 1, 2), hex('67446698 00000000 00000001 00000002'));
  t.deepEqual(encodeSimpleReply(NbdErr.ENOSPC, 0xffffffff, 0), hex('67446698 0000001c ffffffff 00000000'));
  const buf = Buffer.alloc(40, 0xee);
  writeSimpleReply(buf, 3, NbdErr.EIO, 7, 8);
  t.deepEqual(buf.subarray(3, 19), hex('67446698 00000005 00000007 00000008'));
  t.is(buf[2], 0xee);
  t.is(buf[19], 0xee);
  const sab = new Uint8Array(new SharedArrayBuffer(64));
  writeReadChunkHeader(sab, 4, 1, 2, 2 ** 33 + 512, 4096);
  t.deepEqual(Buffer.from(sab.subarray(4, 32)), hex('668e33ef 0001 0001 0000000100000002 00001008 0000000200000200'));
  t.deepEqual(encodeErrorChunk(1, 2, NbdErr.EINVAL, 'bad'), hex('668e33ef 0001 8001 0000000100000002 00000009 00000016 0003 626164'));
  t.deepEqual(encodeBlockStatusChunk(0, 9, 1, [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }]),
    hex('668e33ef 0001 0005 0000000000000009 00000014 00000001 00001000 00000003 00000200 00000000'));
  t.deepEqual(encodeNoneChunk(0, 1), hex('668e33ef 0001 0000 0000000000000001 00000000'));
});

test('every reply re-parses split at every byte position', (t) => {
  const data = Buffer.from('0123456789abcdef');
  const readChunk = Buffer.alloc(28 + data.length);
  writeReadChunkHeader(readChunk, 0, 0, 4, 1024, data.length);
  data.copy(readChunk, 28);
  const readReply = Buffer.concat([encodeSimpleReply(0, 0, 1), data]);
  const stream = Buffer.concat([
    readReply,
    encodeSimpleReply(NbdErr.EIO, 0, 2),
    encodeSimpleReply(0, 0, 3),
    readChunk,
    encodeErrorChunk(0, 5, NbdErr.ENOTSUP, 'no'),
    encodeBlockStatusChunk(0, 6, 1, [{ length: 512, flags: 1 }]),
    encodeNoneChunk(0, 7),
  ]);
  const sink = (_hi: number, lo: number): number => (lo === 1 ? data.length : lo === 3 ? 0 : -1);
  const summary = (evs: ReplyEvent[]): unknown[] => evs.map((e) => e.kind === 'simple'
    ? ['simple', e.cookieLo, e.error, e.data === null ? null : Buffer.from(e.data).toString()]
    : e.kind === 'chunk' ? ['chunk', e.cookieLo, e.type, e.flags, e.payload.toString('hex')] : e);
  const expected = [
    ['simple', 1, 0, data.toString()],
    ['simple', 2, NbdErr.EIO, null],
    ['simple', 3, 0, null],
    ['chunk', 4, ChunkType.OFFSET_DATA, ReplyFlag.DONE, Buffer.concat([hex('0000000000000400'), data]).toString('hex')],
    ['chunk', 5, ChunkType.ERROR, ReplyFlag.DONE, '0000005f00026e6f'],
    ['chunk', 6, ChunkType.BLOCK_STATUS, ReplyFlag.DONE, '000000010000020000000001'],
    ['chunk', 7, ChunkType.NONE, ReplyFlag.DONE, ''],
  ];
  for (const chunks of splitsAt(stream)) t.deepEqual(summary(feed(new ReplyParser(sink), chunks)), expected);
  t.deepEqual(summary(feed(new ReplyParser(sink), pieces(stream, 1))), expected);
});

// fast-check: any request sequence, encoded and cut anywhere, parses back identical.
const arbRequest: fc.Arbitrary<NbdRequest> = fc.record({
  flags: fc.integer({ min: 0, max: 0xffff }),
  type: fc.oneof(fc.constantFrom(Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS, Cmd.CACHE), fc.integer({ min: 0, max: 0xffff })),
  cookieHi: fc.integer({ min: 0, max: 0xffffffff }),
  cookieLo: fc.integer({ min: 0, max: 0xffffffff }),
  offset: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  length: fc.integer({ min: 0, max: 0xffffffff }),
  writeData: fc.uint8Array({ minLength: 1, maxLength: 300 }),
}).map(({ writeData, ...r }) => r.type === Cmd.WRITE
  ? { ...r, length: writeData.length, payload: Buffer.from(writeData), payloadDropped: false }
  : { ...r, payload: null, payloadDropped: false });

test('property: random request sequences cut at random points parse back identical', (t) => {
  fc.assert(fc.property(
    fc.array(arbRequest, { minLength: 1, maxLength: 30 }),
    fc.array(fc.nat(), { maxLength: 40 }),
    (reqs, rawCuts) => {
      const stream = Buffer.concat(reqs.map(encode));
      const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const evs = feed(new RequestParser(), cutAt(stream, cuts));
      t.deepEqual(plain(evs), plain(reqs.map((r) => ({ kind: 'request' as const, req: r }))));
    },
  ), { numRuns: 300 });
  t.pass();
});

test('parser throughput (logged, not asserted)', (t) => {
  const one = Buffer.concat([encodeRequest(0, Cmd.READ, 0, 1, 4096, 4096), encodeRequest(0, Cmd.WRITE, 0, 2, 8192, 4096, Buffer.alloc(4096))]);
  const chunk = Buffer.concat(Array.from({ length: 8 }, () => one));
  const p = new RequestParser();
  const reply = Buffer.allocUnsafe(16);
  const n = 200_000;
  const start = process.hrtime.bigint();
  let seen = 0;
  while (seen < n) {
    p.push(chunk);
    for (let ev = p.next(); ev !== null; ev = p.next()) {
      if (ev.kind === 'request') writeSimpleReply(reply, 0, 0, ev.req.cookieHi, ev.req.cookieLo);
      seen++;
    }
  }
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  t.log(`${Math.round(seen / secs).toLocaleString()} requests/s (half 4 KiB WRITEs)`);
  t.true(seen >= n);
});
