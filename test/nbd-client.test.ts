import test from 'ava';
import {
  encodeClientFlags, encodeOption, encodeGoOption, encodeExportNameOption, encodeInfoRequestData,
  encodeMetaContextRequestData, writeRequestHeader, ReplyParser, ServerHandshakeParser, parseInfoReply,
  parseServerEntry, parseMetaContextReply, repName,
} from '../src/nbd/client.js';
import { OptionParser, parseInfoRequest, parseMetaContextRequest, encodeGreeting } from '../src/nbd/handshake.js';
import { RequestParser, encodeSimpleReply, encodeNoneChunk } from '../src/nbd/transmission.js';
import { Opt, Rep, Info, Cmd, NbdErr } from '../src/nbd/constants.js';
import { feed, splitsAt, pieces } from './helpers/split.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('golden client encoders', (t) => {
  t.deepEqual(encodeClientFlags(3), hex('00000003'));
  t.deepEqual(encodeOption(Opt.STRUCTURED_REPLY), hex('49484156454f5054 00000008 00000000'));
  t.deepEqual(encodeGoOption('a', [Info.BLOCK_SIZE]), hex('49484156454f5054 00000007 00000009 00000001 61 0001 0003'));
  t.deepEqual(encodeExportNameOption('ab'), hex('49484156454f5054 00000001 00000002 6162'));
  t.deepEqual(encodeOption(Opt.LIST_META_CONTEXT, encodeMetaContextRequestData('', ['base:'])),
    hex('49484156454f5054 00000009 00000011 00000000 00000001 00000005 626173653a'));
  const sab = new Uint8Array(new SharedArrayBuffer(32));
  writeRequestHeader(sab, 2, 1, Cmd.WRITE, 0, 5, 2 ** 32, 7);
  t.deepEqual(Buffer.from(sab.subarray(2, 30)), hex('25609513 0001 0001 0000000000000005 0000000100000000 00000007'));
  t.is(repName(Rep.ERR_UNSUP), 'ERR_UNSUP');
});

test('client options round-trip through the server parser, split at every byte', (t) => {
  const stream = Buffer.concat([
    encodeClientFlags(1),
    encodeGoOption('é-disk', [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]),
    encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequestData('é-disk', ['base:allocation'])),
    encodeExportNameOption('x'),
  ]);
  for (const chunks of splitsAt(stream)) {
    const evs = feed(new OptionParser(), chunks);
    t.is(evs.length, 4);
    const [flags, go, meta, name] = evs;
    t.deepEqual(flags, { kind: 'clientFlags', flags: 1 });
    if (go.kind !== 'option' || meta.kind !== 'option' || name.kind !== 'option') return t.fail();
    t.deepEqual(parseInfoRequest(go.data), { name: 'é-disk', infos: [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE] });
    t.deepEqual(parseMetaContextRequest(meta.data), { exportName: 'é-disk', queries: ['base:allocation'] });
    t.is(name.option, Opt.EXPORT_NAME);
    t.is(name.data.toString(), 'x');
  }
  t.deepEqual(encodeInfoRequestData('', []), hex('00000000 0000'));
});

test('READ data goes straight into the sink destination, across any split', (t) => {
  const data = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
  const stream = Buffer.concat([encodeSimpleReply(0, 0, 1), data, encodeSimpleReply(NbdErr.ENOSPC, 0, 2), encodeSimpleReply(0, 0, 3)]);
  for (const chunks of [...splitsAt(stream), pieces(stream, 3)]) {
    const dst = new Uint8Array(new SharedArrayBuffer(100));
    const seen: number[] = [];
    const p = new ReplyParser((_hi, lo) => { seen.push(lo); return lo === 1 ? dst : 0; });
    const evs = feed(p, chunks);
    t.deepEqual(evs.map((e) => (e.kind === 'simple' ? [e.cookieLo, e.error, e.data === dst] : e.kind)), [[1, 0, true], [2, NbdErr.ENOSPC, false], [3, 0, false]]);
    t.true(Buffer.from(dst).equals(data));
    t.deepEqual(seen, [1, 3], 'sink is asked only for error-free replies');
  }
});

test('reply parser fatals: unknown cookie, bad magic, oversize chunk', (t) => {
  const unknown = new ReplyParser(() => -1);
  t.is(feed(unknown, [encodeSimpleReply(0, 0, 9)])[0].kind, 'fatal');
  t.is(unknown.next()?.kind, 'fatal');
  t.is(feed(new ReplyParser(() => 0), [hex('67446699 00000000 0000000000000001')])[0].kind, 'fatal');
  const huge = encodeNoneChunk(0, 1);
  huge.writeUInt32BE(1000, 16);
  t.is(feed(new ReplyParser(() => 0, { maxChunkPayload: 999 }), [huge])[0].kind, 'fatal');
  // An error reply to a READ carries no data even though the sink would want some.
  t.deepEqual(feed(new ReplyParser(() => 512), [encodeSimpleReply(NbdErr.EIO, 0, 1), encodeSimpleReply(0, 0, 2), Buffer.alloc(512, 1)]).map((e) => e.kind === 'simple' ? e.data?.length ?? null : e.kind), [null, 512]);
});

test('server handshake parser rejects non-NBD and oldstyle servers', (t) => {
  t.regex((feed(new ServerHandshakeParser(), [Buffer.alloc(18)])[0] as { reason: string }).reason, /NBDMAGIC/);
  const oldstyle = Buffer.concat([hex('4e42444d41474943 00420281861253'), Buffer.alloc(3)]);
  t.regex((feed(new ServerHandshakeParser(), [oldstyle])[0] as { reason: string }).reason, /oldstyle/);
  const badReply = Buffer.concat([encodeGreeting(), Buffer.alloc(20)]);
  t.deepEqual(feed(new ServerHandshakeParser(), [badReply]).map((e) => e.kind), ['greeting', 'fatal']);
});

test('option reply payload parsers reject malformed data', (t) => {
  t.true('error' in parseInfoReply(hex('00')));
  t.true('error' in parseInfoReply(hex('0000 0000000000001000')), 'short INFO_EXPORT');
  t.true('error' in parseInfoReply(hex('0003 00000001 00001000')), 'short BLOCK_SIZE');
  t.true('error' in parseInfoReply(hex('0001 ff')), 'bad UTF-8 name');
  t.deepEqual(parseInfoReply(hex('0009 0102')), { info: 9, raw: hex('0102') });
  t.true('error' in parseServerEntry(hex('00000005 6162')));
  t.true('error' in parseServerEntry(hex('000000')));
  t.true('error' in parseMetaContextReply(hex('000001')));
  t.true('error' in parseMetaContextReply(hex('00000001 00')));
});

test('requests written by the client parse on the server side', (t) => {
  const buf = Buffer.alloc(28 * 3);
  writeRequestHeader(buf, 0, 0, Cmd.READ, 1, 2, 0, 4096);
  writeRequestHeader(buf, 28, 0, Cmd.FLUSH, 3, 4, 0, 0);
  writeRequestHeader(buf, 56, 0, Cmd.DISC, 0, 0, 0, 0);
  const evs = feed(new RequestParser(), [buf]);
  t.deepEqual(evs.map((e) => (e.kind === 'request' ? [e.req.type, e.req.cookieHi, e.req.cookieLo, e.req.length] : e.kind)),
    [[Cmd.READ, 1, 2, 4096], [Cmd.FLUSH, 3, 4, 0], [Cmd.DISC, 0, 0, 0]]);
});
