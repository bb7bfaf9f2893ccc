// The NBD origin's rule for durability (src/origin/types.ts, Origin.flush): a write counts as on
// the origin only after a FLUSH succeeded on the connection that carried it. Driven against a
// remote with a volatile write cache (test/helpers/volatile-nbd.ts) that can crash, drop
// connections, hold FLUSHes and fail them.

import test, { type ExecutionContext } from 'ava';
import { openNbdOrigin, type OriginLogger } from '../src/origin/nbd.js';
import type { Origin } from '../src/origin/types.js';
import { NbdErr, TxFlag } from '../src/nbd/constants.js';
import { VolatileNbdServer, VOLATILE_TX_FLAGS } from './helpers/volatile-nbd.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface LogLine { level: string; obj: Record<string, unknown>; msg: string }
function memLogger(): OriginLogger & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  const at = (level: string) => (obj: object, msg: string) => { lines.push({ level, obj: obj as Record<string, unknown>, msg }); };
  return { lines, info: at('info'), warn: at('warn'), error: at('error') };
}

async function remote(t: ExecutionContext, txFlags = VOLATILE_TX_FLAGS): Promise<VolatileNbdServer> {
  const s = await VolatileNbdServer.start(4 * MiB, txFlags);
  t.teardown(() => s.close());
  return s;
}

async function open(t: ExecutionContext, uri: string, connections = 1) {
  const log = memLogger();
  const o = await openNbdOrigin({ kind: 'nbd', uri, readOnly: false, timeoutMs: 10_000, connections }, { logger: log });
  t.teardown(() => o.close());
  return { o, log };
}

const call = (f: (cb: (e: number) => void) => void): Promise<number> => new Promise((resolve) => f(resolve));
const write = (o: Origin, off: number, data: Buffer, fua = false) => call((cb) => o.write(off, data, fua, cb));
const flush = (o: Origin) => call((cb) => o.flush(cb));
const fill = (len: number, v: number) => Buffer.alloc(len, v);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function reconnected(srv: VolatileNbdServer, count: number): Promise<void> {
  for (let i = 0; i < 200 && srv.connections < count; i++) await sleep(10);
  if (srv.connections < count) throw new Error(`only ${srv.connections} connections, wanted ${count}`);
}

test('acknowledged writes lost with their connection: the next flush fails once (logged with writes and bytes); rewritten, they are durable', async (t) => {
  const srv = await remote(t);
  const { o, log } = await open(t, srv.uri);
  t.is(await write(o, 0, fill(64 * KiB, 1)), 0);
  t.is(await write(o, 64 * KiB, fill(4 * KiB, 2)), 0);
  srv.crash(); // the remote loses both writes; the origin reconnects
  await reconnected(srv, 2);
  t.true(srv.visible.subarray(0, 68 * KiB).every((x) => x === 0), 'the remote lost them');
  t.is(await flush(o), NbdErr.EIO, 'a FLUSH on the new connection proves nothing for the old one');
  const report = log.lines.filter((l) => l.level === 'error');
  t.is(report.length, 1);
  t.like(report[0]!.obj, { writes: 2, bytes: 68 * KiB });
  t.true(log.lines.some((l) => l.level === 'warn' && l.obj.unflushedWrites === 2), 'the lost connection names what it held');
  // The caller writes them again: now a flush succeeds and covers them.
  t.is(await write(o, 0, fill(64 * KiB, 1)), 0);
  t.is(await write(o, 64 * KiB, fill(4 * KiB, 2)), 0);
  t.is(await flush(o), 0);
  t.true(srv.durable.subarray(0, 64 * KiB).every((x) => x === 1));
  t.true(srv.durable.subarray(64 * KiB, 68 * KiB).every((x) => x === 2));
  t.is(log.lines.filter((l) => l.level === 'error').length, 1, 'reported once');
});

test('a connection lost while its FLUSH is in flight: that flush fails, it is not re-sent on the new connection', async (t) => {
  const srv = await remote(t);
  const { o } = await open(t, srv.uri);
  t.is(await write(o, 4096, fill(4096, 7)), 0);
  srv.holdFlushes = true;
  const pending = flush(o);
  for (let i = 0; i < 100 && srv.held === 0; i++) await sleep(10);
  t.is(srv.held, 1);
  srv.holdFlushes = false;
  srv.crash();
  t.is(await pending, NbdErr.EIO);
  await reconnected(srv, 2);
  t.deepEqual([...srv.countsByConnection('FLUSH')], [[1, 1]], 'no FLUSH on the new connection');
  // The loss was reported by that failure: after a rewrite the next flush is good.
  t.is(await write(o, 4096, fill(4096, 7)), 0);
  t.is(await flush(o), 0);
  t.true(srv.durable.subarray(4096, 8192).every((x) => x === 7));
});

test('connections lost with nothing unflushed, or only FUA writes: the next flush succeeds', async (t) => {
  const srv = await remote(t);
  const { o } = await open(t, srv.uri);
  t.is(await write(o, 0, fill(4096, 1)), 0);
  t.is(await flush(o), 0);
  t.is(await write(o, 4096, fill(4096, 2), true), 0, 'FUA: durable when acknowledged');
  t.is(await call((cb) => o.zero(8192, 4096, { noHole: false, fastZero: false, fua: true }, cb)), 0);
  srv.crash();
  await reconnected(srv, 2);
  t.is(await flush(o), 0);
  t.true(srv.durable.subarray(0, 4096).every((x) => x === 1));
  t.true(srv.durable.subarray(4096, 8192).every((x) => x === 2));
});

test('TRIM and WRITE_ZEROES without FUA count as unflushed writes too', async (t) => {
  const srv = await remote(t);
  const { o, log } = await open(t, srv.uri);
  t.is(await call((cb) => o.trim(0, 4096, false, cb)), 0);
  t.is(await call((cb) => o.zero(4096, 8192, { noHole: true, fastZero: false, fua: false }, cb)), 0);
  srv.dropConnections(); // the remote keeps its cache here, but the client cannot know that
  await reconnected(srv, 2);
  t.is(await flush(o), NbdErr.EIO);
  t.like(log.lines.find((l) => l.level === 'error')!.obj, { writes: 2, bytes: 12 * KiB });
});

test('a FLUSH the remote fails: EIO, and the data it dropped is not claimed by a later flush of new writes only', async (t) => {
  const srv = await remote(t);
  const { o } = await open(t, srv.uri);
  t.is(await write(o, 0, fill(4096, 3)), 0);
  srv.failFlushes(1);
  t.is(await flush(o), NbdErr.EIO);
  t.true(srv.visible.subarray(0, 4096).every((x) => x === 0), 'the remote dropped it');
  // As Origin.flush says: the caller must write it again; then a flush covers it.
  t.is(await write(o, 0, fill(4096, 3)), 0);
  t.is(await flush(o), 0);
  t.true(srv.durable.subarray(0, 4096).every((x) => x === 3));
});

test('FUA emulated with FLUSH (no SEND_FUA): the write fails if that FLUSH fails, and the next flush reports the loss', async (t) => {
  const srv = await remote(t, VOLATILE_TX_FLAGS & ~TxFlag.SEND_FUA);
  const { o } = await open(t, srv.uri);
  t.is(await write(o, 0, fill(4096, 1)), 0);
  srv.failFlushes(1);
  t.is(await write(o, 8192, fill(4096, 2), true), NbdErr.EIO, 'its FLUSH failed');
  t.is(await flush(o), NbdErr.EIO, 'the plain write before it was lost with that FLUSH');
  t.is(await flush(o), 0);
  t.is(await write(o, 8192, fill(4096, 2), true), 0);
  t.true(srv.durable.subarray(8192, 12288).every((x) => x === 2));
  t.deepEqual(srv.log.slice(-2).map((l) => l.split(' ').slice(1, 2).join()), ['WRITE', 'FLUSH']);
});

test('several connections: a flush goes to every connection that carried writes since its last flush, and only to those', async (t) => {
  const srv = await remote(t);
  const { o } = await open(t, srv.uri, 3);
  t.is(srv.connections, 3);
  // Many writes in flight at once spread over the connections (least loaded first).
  const res = await Promise.all(Array.from({ length: 30 }, (_, i) => write(o, i * 4096, fill(4096, i + 1))));
  t.deepEqual(new Set(res), new Set([0]));
  const carried = [...srv.countsByConnection('WRITE').keys()].sort();
  t.true(carried.length >= 2, `writes went over ${carried.length} connections`);
  const before = srv.log.length;
  t.is(await flush(o), 0);
  const flushed = srv.log.slice(before).map((l) => Number(l.split(' ')[0]!.slice(1))).sort();
  t.deepEqual(flushed, carried, 'one FLUSH on each connection that carried writes');
  // Nothing new since: a flush needs one FLUSH only.
  const mark = srv.log.length;
  t.is(await flush(o), 0);
  t.is(srv.log.length - mark, 1);
  // One connection lost with unflushed writes fails the flush even though the others are fine.
  t.is(await write(o, 0, fill(4096, 9)), 0);
  srv.dropConnections();
  await reconnected(srv, 6);
  t.is(await flush(o), NbdErr.EIO);
});

test('a remote without FLUSH: nothing to cover, flush succeeds after a lost connection', async (t) => {
  const srv = await remote(t, TxFlag.HAS_FLAGS | TxFlag.SEND_TRIM);
  const { o } = await open(t, srv.uri);
  t.is(await write(o, 0, fill(4096, 1)), 0);
  srv.dropConnections();
  await reconnected(srv, 2);
  t.is(await flush(o), 0);
  t.false(srv.log.some((l) => l.includes('FLUSH')));
});
