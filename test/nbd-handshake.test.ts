import test from 'ava';
import {
  encodeGreeting, OptionParser, encodeOptionReply, encodeOptionError, encodeInfoExport, encodeInfoName,
  encodeInfoDescription, encodeInfoBlockSize, encodeServerEntry, encodeMetaContext, encodeExportNameReply,
  parseInfoRequest, parseMetaContextRequest, type OptionEvent,
} from '../src/nbd/handshake.js';
import {
  ServerHandshakeParser, ClientHandshake, encodeClientFlags, encodeOption, encodeInfoRequestData,
  encodeMetaContextRequestData, parseInfoReply, parseServerEntry, parseMetaContextReply, encodeRequest,
  type ServerHandshakeEvent, type ClientHandshakeStep,
} from '../src/nbd/client.js';
import { BufferBuilder } from '../src/nbd/buffer-builder.js';
import { Opt, Rep, Info, TxFlag, Cmd, MAX_STRING } from '../src/nbd/constants.js';
import { feed, splitsAt, pieces } from './helpers/split.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const OPT_MAGIC = '0003e889045565a9';
const IHAVEOPT = '49484156454f5054';

test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', (t) => {
  t.deepEqual(encodeGreeting(), hex('4e42444d41474943 49484156454f5054 0003'));
});

test('golden option replies', (t) => {
  t.deepEqual(encodeOptionReply(Opt.GO, Rep.ACK), hex(`${OPT_MAGIC} 00000007 00000001 00000000`));
  t.deepEqual(encodeOptionReply(Opt.LIST, Rep.SERVER, encodeServerEntry('ab', 'x')),
    hex(`${OPT_MAGIC} 00000003 00000002 00000007 00000002 6162 78`));
  t.deepEqual(encodeOptionError(Opt.STARTTLS, Rep.ERR_POLICY, 'no'),
    hex(`${OPT_MAGIC} 00000005 80000002 00000002 6e6f`));
  t.deepEqual(encodeOptionError(0x7654321, Rep.ERR_UNSUP, ''), hex(`${OPT_MAGIC} 07654321 80000001 00000000`));
  t.deepEqual(encodeInfoExport(64 * 1024 * 1024, 0x0d6d), hex('0000 0000000004000000 0d6d'));
  t.deepEqual(encodeInfoExport(2 ** 40 + 5, 1), hex('0000 0000010000000005 0001'));
  t.deepEqual(encodeInfoName('d'), hex('0001 64'));
  t.deepEqual(encodeInfoDescription('hi'), hex('0002 6869'));
  t.deepEqual(encodeInfoBlockSize(1, 4096, 32 << 20), hex('0003 00000001 00001000 02000000'));
  t.deepEqual(encodeServerEntry(''), hex('00000000'));
  t.deepEqual(encodeMetaContext(1, 'base:allocation'), Buffer.concat([hex('00000001'), Buffer.from('base:allocation')]));
  t.deepEqual(encodeExportNameReply(4096, 0x0003, true), hex('0000000000001000 0003'));
  const padded = encodeExportNameReply(4096, 0x0003, false);
  t.is(padded.length, 134);
  t.deepEqual(padded.subarray(0, 10), hex('0000000000001000 0003'));
  t.true(padded.subarray(10).every((b) => b === 0));
  t.is(encodeOptionError(1, Rep.ERR_INVALID, 'é'.repeat(3000)).length, 20 + MAX_STRING, 'message capped at a character boundary');
});

// Every option reply, behind the greeting, re-parsed by the client side split at every byte.
test('every option reply re-parses at every split position', (t) => {
  const replies: { bytes: Buffer; check: (ev: ServerHandshakeEvent & { kind: 'optionReply' }) => void }[] = [
    { bytes: encodeOptionReply(Opt.GO, Rep.ACK), check: (ev) => { t.is(ev.replyType, Rep.ACK); t.is(ev.data.length, 0); } },
    { bytes: encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoExport(123456789012, 0x0ded)), check: (ev) => t.deepEqual(parseInfoReply(ev.data), { info: Info.EXPORT, size: 123456789012, txFlags: 0x0ded }) },
    { bytes: encodeOptionReply(Opt.INFO, Rep.INFO, encodeInfoName('disk')), check: (ev) => t.deepEqual(parseInfoReply(ev.data), { info: Info.NAME, name: 'disk' }) },
    { bytes: encodeOptionReply(Opt.INFO, Rep.INFO, encodeInfoDescription('a cache')), check: (ev) => t.deepEqual(parseInfoReply(ev.data), { info: Info.DESCRIPTION, text: 'a cache' }) },
    { bytes: encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoBlockSize(1, 4096, 1 << 25)), check: (ev) => t.deepEqual(parseInfoReply(ev.data), { info: Info.BLOCK_SIZE, min: 1, preferred: 4096, max: 1 << 25 }) },
    { bytes: encodeOptionReply(Opt.LIST, Rep.SERVER, encodeServerEntry('exp', 'desc')), check: (ev) => t.deepEqual(parseServerEntry(ev.data), { name: 'exp', description: 'desc' }) },
    { bytes: encodeOptionReply(Opt.SET_META_CONTEXT, Rep.META_CONTEXT, encodeMetaContext(7, 'base:allocation')), check: (ev) => t.deepEqual(parseMetaContextReply(ev.data), { id: 7, name: 'base:allocation' }) },
    { bytes: encodeOptionError(Opt.GO, Rep.ERR_UNKNOWN, 'no such export'), check: (ev) => { t.is(ev.replyType, Rep.ERR_UNKNOWN); t.is(ev.data.toString(), 'no such export'); } },
  ];
  for (const r of replies) {
    const stream = Buffer.concat([encodeGreeting(), r.bytes]);
    for (const chunks of splitsAt(stream)) {
      const evs = feed(new ServerHandshakeParser(), chunks);
      t.is(evs.length, 2);
      t.deepEqual(evs[0], { kind: 'greeting', flags: 3 });
      const ev = evs[1];
      if (ev.kind !== 'optionReply') return t.fail(`unexpected ${ev.kind}`);
      t.is(ev.option, r.bytes.readUInt32BE(8));
      r.check(ev);
    }
  }
  for (const noZeroes of [true, false]) {
    const stream = Buffer.concat([encodeGreeting(), encodeExportNameReply(1 << 30, 0x0d6d, noZeroes), Buffer.from('tail')]);
    for (const chunks of splitsAt(stream)) {
      const p = new ServerHandshakeParser();
      // The client sends EXPORT_NAME right after its flags, before the greeting is parsed.
      p.expectExportNameReply(noZeroes);
      const evs = feed(p, chunks);
      t.deepEqual(evs, [{ kind: 'greeting', flags: 3 }, { kind: 'exportName', size: 1 << 30, txFlags: 0x0d6d }]);
      t.is(p.takeRemainder().toString(), 'tail');
    }
  }
});

const goData = encodeInfoRequestData('export', [Info.BLOCK_SIZE, Info.NAME]);
const metaData = encodeMetaContextRequestData('export', ['base:allocation', 'qemu:']);
const clientStream = Buffer.concat([
  encodeClientFlags(3),
  encodeOption(Opt.STRUCTURED_REPLY),
  encodeOption(0x7654321, Buffer.from('junk')),
  encodeOption(Opt.SET_META_CONTEXT, metaData),
  encodeOption(Opt.GO, goData),
  encodeRequest(0, Cmd.READ, 0, 1, 0, 512),
]);
const expectedOptions: OptionEvent[] = [
  { kind: 'clientFlags', flags: 3 },
  { kind: 'option', option: Opt.STRUCTURED_REPLY, data: Buffer.alloc(0) },
  { kind: 'option', option: 0x7654321, data: Buffer.from('junk') },
  { kind: 'option', option: Opt.SET_META_CONTEXT, data: metaData },
  { kind: 'option', option: Opt.GO, data: goData },
];

test('option stream split at every byte position; remainder is the first request', (t) => {
  t.deepEqual(encodeOption(Opt.ABORT), hex(`${IHAVEOPT} 00000002 00000000`));
  for (const chunks of [...splitsAt(clientStream), pieces(clientStream, 1), pieces(clientStream, 5)]) {
    const p = new OptionParser();
    const evs: OptionEvent[] = [];
    // The server stops reading options after GO, like a real session.
    for (const c of chunks) {
      p.push(c);
      while (evs.length < expectedOptions.length) {
        const ev = p.next();
        if (ev === null) break;
        evs.push(ev);
      }
    }
    t.deepEqual(evs, expectedOptions);
    t.deepEqual(p.takeRemainder(), encodeRequest(0, Cmd.READ, 0, 1, 0, 512));
  }
  t.deepEqual(parseInfoRequest(goData), { name: 'export', infos: [Info.BLOCK_SIZE, Info.NAME] });
  t.deepEqual(parseMetaContextRequest(metaData), { exportName: 'export', queries: ['base:allocation', 'qemu:'] });
});

test('oversize option and bad magic are fatal (and stay fatal)', (t) => {
  const big = new OptionParser({ maxOptionLength: 100 });
  big.push(encodeClientFlags(3));
  t.deepEqual(big.next(), { kind: 'clientFlags', flags: 3 });
  // Only the header has arrived: the length alone decides.
  big.push(encodeOption(Opt.GO, Buffer.alloc(101)).subarray(0, 16));
  t.is(big.next()?.kind, 'fatal');
  t.is(big.next()?.kind, 'fatal');
  const ok = new OptionParser({ maxOptionLength: 100 });
  t.deepEqual(feed(ok, [encodeClientFlags(0), encodeOption(Opt.GO, Buffer.alloc(100))]).map((e) => e.kind), ['clientFlags', 'option']);

  const defaultLimit = new OptionParser();
  t.deepEqual(feed(defaultLimit, [encodeClientFlags(1), hex(`${IHAVEOPT} 00000007 00010001`)]).map((e) => e.kind), ['clientFlags', 'fatal']);

  const bad = new OptionParser();
  const evs = feed(bad, [encodeClientFlags(1), hex('4e42444d41474943 00000007 00000000')]);
  t.is(evs[1].kind, 'fatal');
  t.regex((evs[1] as { reason: string }).reason, /magic/);
  t.is(bad.next()?.kind, 'fatal');
});

test('parseInfoRequest validates every length and string', (t) => {
  const info = (nameBytes: Buffer, count: number, infos: number[], nameLen = nameBytes.length): Buffer => {
    const bb = new BufferBuilder().u32(nameLen).bytes(nameBytes).u16(count);
    for (const i of infos) bb.u16(i);
    return bb.build();
  };
  t.deepEqual(parseInfoRequest(info(Buffer.alloc(0), 0, [])), { name: '', infos: [] });
  t.deepEqual(parseInfoRequest(info(Buffer.from('é'), 1, [3])), { name: 'é', infos: [3] });
  const errors: [string, Buffer][] = [
    ['too short', Buffer.alloc(5)],
    ['name length overflowing the option', info(Buffer.from('ab'), 0, [], 3)],
    ['name length 2^32-1', info(Buffer.from('ab'), 0, [], 0xffffffff)],
    ['count larger than the data', info(Buffer.from('ab'), 2, [1])],
    ['count smaller than the data', info(Buffer.from('ab'), 1, [1, 2])],
    ['invalid UTF-8', info(hex('c328'), 0, [])],
    ['NUL in name', info(Buffer.from('a\0b'), 0, [])],
    ['overlong name', info(Buffer.alloc(MAX_STRING + 1, 0x61), 0, [])],
  ];
  for (const [what, data] of errors) t.true('error' in parseInfoRequest(data), what);
  t.deepEqual(parseInfoRequest(info(Buffer.alloc(MAX_STRING, 0x61), 0, [])), { name: 'a'.repeat(MAX_STRING), infos: [] });
});

test('parseMetaContextRequest validates every length and string', (t) => {
  t.deepEqual(parseMetaContextRequest(encodeMetaContextRequestData('', [])), { exportName: '', queries: [] });
  const withQueries = (count: number, queries: Buffer[], lens?: number[]): Buffer => {
    const bb = new BufferBuilder().u32(1).string('x').u32(count);
    queries.forEach((q, i) => bb.u32(lens?.[i] ?? q.length).bytes(q));
    return bb.build();
  };
  t.deepEqual(parseMetaContextRequest(withQueries(1, [Buffer.from('base:')])), { exportName: 'x', queries: ['base:'] });
  const errors: [string, Buffer][] = [
    ['too short', Buffer.alloc(7)],
    ['name overflowing', new BufferBuilder().u32(9).string('abcd').u32(0).build()],
    ['query count absurd', withQueries(0xffffffff, [])],
    ['query count one too many', withQueries(2, [Buffer.from('a')])],
    ['query length overflowing', withQueries(1, [Buffer.from('abc')], [4])],
    ['query length 2^32-1', withQueries(1, [Buffer.from('abc')], [0xffffffff])],
    ['trailing bytes', Buffer.concat([withQueries(1, [Buffer.from('a')]), Buffer.from('z')])],
    ['invalid UTF-8 query', withQueries(1, [hex('ff')])],
    ['NUL in query', withQueries(1, [Buffer.from('a\0')])],
    ['overlong query', withQueries(1, [Buffer.alloc(MAX_STRING + 1, 0x61)])],
    ['invalid UTF-8 name', new BufferBuilder().u32(2).bytes(hex('e282')).u32(0).build()],
  ];
  for (const [what, data] of errors) t.true('error' in parseMetaContextRequest(data), what);
});

/** Run a ClientHandshake against scripted server bytes, split at `cut`; return the steps and what the client sent. */
function runClient(server: Buffer[], cut: number): { steps: ClientHandshakeStep[]; sent: Buffer } {
  const hs = new ClientHandshake('disk');
  const stream = Buffer.concat(server);
  const steps: ClientHandshakeStep[] = [];
  const after: Buffer[] = [];
  for (const c of [stream.subarray(0, cut), stream.subarray(cut)]) {
    // Once done, the connection hands later bytes to the transmission phase.
    if (steps.at(-1)?.kind === 'done') {
      after.push(c);
      continue;
    }
    hs.push(Buffer.from(c));
    for (let s = hs.next(); s !== null; s = hs.next()) steps.push(s);
  }
  const last = steps.at(-1);
  if (last?.kind === 'done') last.remainder = Buffer.concat([last.remainder, ...after]);
  const sent = Buffer.concat(steps.flatMap((s) => (s.kind === 'send' ? [s.bytes] : [])));
  return { steps, sent };
}

test('client handshake: GO with BLOCK_SIZE, at every split position', (t) => {
  const server = [
    encodeGreeting(),
    encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoBlockSize(512, 4096, 1 << 20)),
    encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoExport(1 << 26, 0x0d6d)),
    encodeOptionReply(Opt.GO, Rep.ACK),
    encodeSimpleReplyBytes(),
  ];
  const total = Buffer.concat(server).length;
  for (let cut = 0; cut <= total; cut++) {
    const { steps, sent } = runClient(server, cut);
    const done = steps.at(-1);
    if (done?.kind !== 'done') return t.fail(`cut ${cut}: ${JSON.stringify(done)}`);
    t.deepEqual(done.export, { size: 1 << 26, txFlags: 0x0d6d, minBlock: 512, preferredBlock: 4096, maxPayload: 1 << 20 });
    t.deepEqual(done.remainder, encodeSimpleReplyBytes());
    const p = new OptionParser();
    const evs = feed(p, [sent]);
    t.deepEqual(evs, [{ kind: 'clientFlags', flags: 3 }, { kind: 'option', option: Opt.GO, data: encodeInfoRequestData('disk', [Info.BLOCK_SIZE]) }]);
  }
});

function encodeSimpleReplyBytes(): Buffer {
  return hex('67446698 00000000 00000000 00000001');
}

test('client handshake: ERR_UNSUP falls back to EXPORT_NAME; errors are fatal with the message', (t) => {
  for (const noZeroes of [true, false]) {
    const greeting = encodeGreeting();
    if (!noZeroes) greeting.writeUInt16BE(1, 16);
    const server = [greeting, encodeOptionError(Opt.GO, Rep.ERR_UNSUP, ''), encodeExportNameReply(4096, TxFlag.HAS_FLAGS | TxFlag.READ_ONLY, noZeroes)];
    for (let cut = 0; cut <= Buffer.concat(server).length; cut++) {
      const { steps, sent } = runClient(server, cut);
      const done = steps.at(-1);
      if (done?.kind !== 'done') return t.fail(JSON.stringify(done));
      t.is(done.export.size, 4096);
      t.is(done.export.txFlags, 3);
      t.is(done.remainder.length, 0);
      const evs = feed(new OptionParser(), [sent]);
      t.deepEqual(evs.map((e) => (e.kind === 'option' ? e.option : e.kind)), ['clientFlags', Opt.GO, Opt.EXPORT_NAME]);
      t.deepEqual(evs[0], { kind: 'clientFlags', flags: noZeroes ? 3 : 1 });
    }
  }
  const refused = runClient([encodeGreeting(), encodeOptionError(Opt.GO, Rep.ERR_UNKNOWN, 'what disk?')], 7).steps.at(-1);
  t.is(refused?.kind, 'fatal');
  t.regex((refused as { reason: string }).reason, /ERR_UNKNOWN.*what disk\?/);
  const noExport = runClient([encodeGreeting(), encodeOptionReply(Opt.GO, Rep.ACK)], 3).steps.at(-1);
  t.is(noExport?.kind, 'fatal');
  const notNbd = runClient([Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')], 5).steps.at(-1);
  t.is(notNbd?.kind, 'fatal');
  // Without FIXED_NEWSTYLE only EXPORT_NAME may be sent.
  const g = encodeGreeting();
  g.writeUInt16BE(0, 16);
  const old = runClient([g, encodeExportNameReply(512, 1, false)], 0);
  t.deepEqual(feed(new OptionParser(), [old.sent]).map((e) => (e.kind === 'option' ? e.option : e.kind)), ['clientFlags', Opt.EXPORT_NAME]);
  t.is(old.steps.at(-1)?.kind, 'done');
});
