import test, { type ExecutionContext } from 'ava';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { openNbdOrigin, probeNbdOrigin, parseNbdUri, type OriginLogger } from '../src/origin/nbd.js';
import type { Origin } from '../src/origin/types.js';
import { createServer } from 'node:net';
import { NbdErr, TxFlag, Opt, Rep, Cmd, CmdFlag, cmdName } from '../src/nbd/constants.js';
import { encodeGreeting, OptionParser, encodeOptionReply, encodeOptionError, encodeInfoExport, encodeInfoBlockSize, encodeExportNameReply } from '../src/nbd/handshake.js';
import { RequestParser, encodeSimpleReply } from '../src/nbd/transmission.js';
import { isPcachedError } from '../src/util/errors.js';
import { startNbdkit, makeTempDir, type NbdkitServer } from './helpers/nbdkit.js';

const MiB = 1024 * 1024;

function memLogger(): OriginLogger & { lines: string[] } {
  const lines: string[] = [];
  return { lines, info: (_o, m) => lines.push(`info ${m}`), warn: (_o, m) => lines.push(`warn ${m}`), error: (_o, m) => lines.push(`error ${m}`) };
}

async function server(t: ExecutionContext, args: string[]): Promise<NbdkitServer> {
  const { dir, cleanup } = makeTempDir();
  const srv = await startNbdkit(join(dir, 'nbd.sock'), args);
  t.teardown(async () => { await srv.stop(); cleanup(); });
  return srv;
}

async function open(t: ExecutionContext, uri: string, opts: { timeoutMs?: number; connections?: number; readOnly?: boolean } = {}): Promise<{ o: Origin; log: ReturnType<typeof memLogger> }> {
  const log = memLogger();
  const o = await openNbdOrigin({ kind: 'nbd', uri, readOnly: opts.readOnly ?? false, timeoutMs: opts.timeoutMs ?? 10_000, connections: opts.connections ?? 1 }, { logger: log });
  t.teardown(() => o.close());
  return { o, log };
}

const call = (f: (cb: (e: number) => void) => void): Promise<number> => new Promise((resolve) => f(resolve));
const read = (o: Origin, off: number, len: number): Promise<[number, Buffer]> => {
  const dst = Buffer.alloc(len, 0xcc);
  return call((cb) => o.read(off, dst, cb)).then((e) => [e, dst]);
};
const pattern = (len: number, seed: number): Buffer => {
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};

test('parseNbdUri', (t) => {
  t.deepEqual(parseNbdUri('nbd://example.com/disk'), { host: 'example.com', port: 10809, exportName: 'disk' });
  t.deepEqual(parseNbdUri('nbd://10.0.0.1:1234/'), { host: '10.0.0.1', port: 1234, exportName: '' });
  t.deepEqual(parseNbdUri('nbd://[::1]:99/a%20b'), { host: '::1', port: 99, exportName: 'a b' });
  t.deepEqual(parseNbdUri('nbd+unix:///x?socket=/tmp/s.sock'), { socketPath: '/tmp/s.sock', port: 0, exportName: 'x' });
  t.deepEqual(parseNbdUri('nbd+unix:///?socket=/tmp/s'), { socketPath: '/tmp/s', port: 0, exportName: '' });
  for (const [uri, why] of [
    ['nbds://h/x', /TLS/], ['nbds+unix:///x?socket=/s', /TLS/], ['nbd+unix:///x', /socket=/], ['http://h/x', /scheme/],
    ['nbd+vsock:///x', /scheme/], ['/dev/sda', /not a URI/], ['nbd://h:0/x', /port/], ['nbd+unix://host/x?socket=/s', /no host/],
    ['nbd+unix:///x?socket=/s&tls=1', /parameter/],
  ] as const) {
    const err = t.throws(() => parseNbdUri(uri));
    t.true(isPcachedError(err, 'ERR_BAD_ARGUMENT'), uri);
    t.regex(err!.message, why, uri);
  }
});

test('round trips against nbdkit memory, 2 connections, split large I/O', async (t) => {
  const srv = await server(t, ['memory', '64M']);
  const probe = await probeNbdOrigin(srv.uri, 5000);
  t.is(probe.size, 64 * MiB);
  t.false(probe.readOnly);
  t.true(probe.canFastZero);
  t.truthy(probe.txFlags & TxFlag.SEND_FLUSH);
  const { o } = await open(t, srv.uri, { connections: 2 });
  t.is(o.size, 64 * MiB);
  t.false(o.synchronous);
  t.true(o.canFastZero);
  t.regex(o.description, /^nbd\+unix:\/\/\/\?socket=/);

  const big = pattern(40 * MiB, 1); // over the 32 MiB default payload: split in two
  t.is(await call((cb) => o.write(MiB, big, false, cb)), 0);
  const [e1, back] = await read(o, MiB, big.length);
  t.is(e1, 0);
  t.true(back.equals(big));
  t.is(await call((cb) => o.flush(cb)), 0);

  // Many small requests in flight at once, spread over both connections.
  const writes = Array.from({ length: 200 }, (_, i) => call((cb) => o.write(i * 4096, pattern(4096, i), i % 10 === 0, cb)));
  t.deepEqual(new Set(await Promise.all(writes)), new Set([0]));
  const reads = await Promise.all(Array.from({ length: 200 }, (_, i) => read(o, i * 4096, 4096)));
  reads.forEach(([e, b], i) => { t.is(e, 0); t.true(b.equals(pattern(4096, i)), `block ${i}`); });

  t.is(await call((cb) => o.zero(8192, 8192, { noHole: true, fastZero: false, fua: true }, cb)), 0);
  t.true((await read(o, 8192, 8192))[1].every((b) => b === 0));
  t.is(await call((cb) => o.zero(0, 4096, { noHole: false, fastZero: true, fua: false }, cb)), 0);
  t.true((await read(o, 0, 4096))[1].every((b) => b === 0));
  t.is(await call((cb) => o.trim(16384, 4096, false, cb)), 0);
  t.is(await call((cb) => o.cache(0, MiB, cb)), 0);
  const bs = await new Promise<[number, unknown]>((resolve) => o.blockStatus(0, MiB, 16, (e, ext) => resolve([e, ext])));
  t.deepEqual(bs, [0, [{ length: MiB, flags: 0 }]]);
  // The remote checks bounds.
  t.is((await read(o, 64 * MiB - 512, 1024))[0], NbdErr.EINVAL);
  t.is(await call((cb) => o.write(64 * MiB, Buffer.alloc(512), false, cb)), NbdErr.ENOSPC);
});

test('BLOCK_SIZE maximum from the remote splits requests', async (t) => {
  const srv = await server(t, ['--filter=blocksize-policy', 'memory', '8M', 'blocksize-maximum=64K', 'blocksize-error-policy=error']);
  const { o } = await open(t, srv.uri);
  const data = pattern(MiB + 512, 3);
  t.is(await call((cb) => o.write(512, data, false, cb)), 0);
  const [e, back] = await read(o, 512, data.length);
  t.is(e, 0);
  t.true(back.equals(data));
});

// (nbdkit 1.32's fua filter rejects its own documented fuamode=none, so the FUA → FLUSH
// fallback is not exercised against a real server here.)
test('remote without WRITE_ZEROES: zero writes zero buffers; fastZero is ENOTSUP', async (t) => {
  const srv = await server(t, ['--filter=nozero', 'memory', '8M', 'zeromode=none']);
  const { o } = await open(t, srv.uri);
  t.false(o.canFastZero);
  t.is(await call((cb) => o.write(0, Buffer.alloc(3 * MiB, 0xff), true, cb)), 0);
  t.is(await call((cb) => o.zero(4096, 2 * MiB + 100, { noHole: false, fastZero: false, fua: true }, cb)), 0);
  const [e, back] = await read(o, 0, 3 * MiB);
  t.is(e, 0);
  t.true(back.subarray(0, 4096).every((b) => b === 0xff));
  t.true(back.subarray(4096, 4096 + 2 * MiB + 100).every((b) => b === 0));
  t.true(back.subarray(4096 + 2 * MiB + 100).every((b) => b === 0xff));
  t.is(await call((cb) => o.zero(0, 4096, { noHole: false, fastZero: true, fua: false }, cb)), NbdErr.ENOTSUP);
});

test('read-only: remote -r and spec readOnly both give EPERM on writes', async (t) => {
  const srv = await server(t, ['-r', 'memory', '1M']);
  const { o } = await open(t, srv.uri);
  t.true(o.readOnly);
  t.is(await call((cb) => o.write(0, Buffer.alloc(512), false, cb)), NbdErr.EPERM);
  t.is(await call((cb) => o.zero(0, 512, { noHole: false, fastZero: false, fua: false }, cb)), NbdErr.EPERM);
  t.is((await read(o, 0, 512))[0], 0);
  const srv2 = await server(t, ['memory', '1M']);
  const { o: o2 } = await open(t, srv2.uri, { readOnly: true });
  t.true(o2.readOnly);
  t.is(await call((cb) => o2.trim(0, 512, false, cb)), NbdErr.EPERM);
});

test('delay filter: slow remote still works, requests pipelined', async (t) => {
  const srv = await server(t, ['--filter=delay', 'memory', '8M', 'rdelay=200ms', 'wdelay=200ms']);
  const { o } = await open(t, srv.uri);
  const start = Date.now();
  const res = await Promise.all(Array.from({ length: 8 }, (_, i) => call((cb) => o.write(i * 4096, pattern(4096, i), false, cb))));
  t.deepEqual(res, Array(8).fill(0));
  const [e, b] = await read(o, 4096, 4096);
  t.is(e, 0);
  t.true(b.equals(pattern(4096, 1)));
  t.true(Date.now() - start >= 400);
});

test('error filter: remote errors map to the same errno', async (t) => {
  const srv = await server(t, ['--filter=error', 'memory', '8M', 'error-pread-rate=100%', 'error-pread=EIO', 'error-pwrite-rate=100%', 'error-pwrite=ENOSPC']);
  const { o } = await open(t, srv.uri);
  t.is((await read(o, 0, 4096))[0], NbdErr.EIO);
  t.is(await call((cb) => o.write(0, Buffer.alloc(4096), false, cb)), NbdErr.ENOSPC);
  t.is(await call((cb) => o.flush(cb)), 0, 'the connection survives errors');
});

test('remote killed and restarted on the same socket: in-flight requests complete', async (t) => {
  const { dir, cleanup } = makeTempDir();
  const sock = join(dir, 'nbd.sock');
  let srv = await startNbdkit(sock, ['--filter=delay', 'memory', '8M', 'rdelay=2']);
  t.teardown(async () => { await srv.stop(); cleanup(); });
  const { o, log } = await open(t, srv.uri, { timeoutMs: 15_000 });
  const pending = Promise.all(Array.from({ length: 4 }, (_, i) => read(o, i * 4096, 4096)));
  await new Promise((r) => setTimeout(r, 300));
  await srv.kill();
  // While it is down, new requests queue too.
  const during = call((cb) => o.write(0, Buffer.alloc(4096, 7), false, cb));
  await new Promise((r) => setTimeout(r, 500));
  rmSync(sock, { force: true });
  srv = await startNbdkit(sock, ['memory', '8M']);
  const results = await pending;
  t.deepEqual(results.map(([e]) => e), [0, 0, 0, 0]);
  t.is(await during, 0);
  const [e, b] = await read(o, 0, 4096);
  t.is(e, 0);
  t.true(b.every((x) => x === 7));
  t.true(log.lines.some((l) => /connection lost/.test(l)));
  t.true(log.lines.some((l) => /reconnected/.test(l)));
});

test('remote gone for longer than timeoutMs: EIO; size change on reconnect: EIO for everything', async (t) => {
  const { dir, cleanup } = makeTempDir();
  const sock = join(dir, 'nbd.sock');
  let srv = await startNbdkit(sock, ['memory', '8M']);
  t.teardown(async () => { await srv.stop(); cleanup(); });
  const { o, log } = await open(t, srv.uri, { timeoutMs: 600 });
  await srv.kill();
  const start = Date.now();
  t.is((await read(o, 0, 4096))[0], NbdErr.EIO);
  const waited = Date.now() - start;
  t.true(waited >= 550 && waited < 3000, `waited ${waited} ms`);

  rmSync(sock, { force: true });
  srv = await startNbdkit(sock, ['memory', '16M']);
  // Wait for the back-off to find the new server (size differs: the origin gives up).
  const deadline = Date.now() + 5000;
  while (!log.lines.some((l) => /changed size/.test(l)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.true(log.lines.some((l) => /changed size/.test(l)));
  t.is((await read(o, 0, 512))[0], NbdErr.EIO);
  t.is(await call((cb) => o.flush(cb)), NbdErr.EIO);
});

test('close(): pending requests fail with ESHUTDOWN, later ones too', async (t) => {
  const srv = await server(t, ['--filter=delay', 'memory', '8M', 'rdelay=1']);
  const { o } = await open(t, srv.uri);
  const pending = read(o, 0, 4096);
  await new Promise((r) => setTimeout(r, 100));
  await o.close();
  t.is((await pending)[0], NbdErr.ESHUTDOWN);
  t.is((await read(o, 0, 512))[0], NbdErr.ESHUTDOWN);
});

test('open fails cleanly when nothing listens', async (t) => {
  const { dir, cleanup } = makeTempDir();
  t.teardown(cleanup);
  const err = await t.throwsAsync(openNbdOrigin({ kind: 'nbd', uri: `nbd+unix:///?socket=${dir}/none.sock`, readOnly: false, timeoutMs: 1000, connections: 1 }, { logger: memLogger() }));
  t.true(isPcachedError(err, 'ERR_ORIGIN'));
});

// A scripted remote built from our own server codec, for capability combinations nbdkit 1.32
// cannot be configured to advertise.
interface FakeRemote { uri: string; log: string[] }
async function fakeRemote(t: ExecutionContext, opts: { size: number; txFlags: number; goUnsupported?: boolean; maxBlock?: number; stallMs?: number }): Promise<FakeRemote> {
  const { dir, cleanup } = makeTempDir();
  const path = join(dir, 'fake.sock');
  const disk = Buffer.alloc(opts.size);
  const log: string[] = [];
  const srv = createServer((sock) => {
    sock.write(encodeGreeting());
    const opt = new OptionParser();
    let reqs: RequestParser | null = null;
    sock.on('error', () => {});
    sock.on('data', (received: Buffer) => {
      let chunk: Buffer = received;
      if (reqs === null) {
        opt.push(chunk);
        for (let ev = opt.next(); ev !== null && reqs === null; ev = reqs === null ? opt.next() : null) {
          if (ev.kind !== 'option') continue;
          if (ev.option === Opt.GO && !opts.goUnsupported) {
            if (opts.maxBlock !== undefined) sock.write(encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoBlockSize(1, 512, opts.maxBlock)));
            sock.write(encodeOptionReply(Opt.GO, Rep.INFO, encodeInfoExport(opts.size, opts.txFlags)));
            sock.write(encodeOptionReply(Opt.GO, Rep.ACK));
          } else if (ev.option === Opt.EXPORT_NAME) {
            sock.write(encodeExportNameReply(opts.size, opts.txFlags, true));
          } else {
            sock.write(encodeOptionError(ev.option, Rep.ERR_UNSUP, 'no'));
            continue;
          }
          log.push(ev.option === Opt.GO ? 'GO' : 'EXPORT_NAME');
          reqs = new RequestParser();
          chunk = opt.takeRemainder();
          if (opts.stallMs !== undefined) {
            // Stop reading so the client's socket buffer fills and write() reports back-pressure.
            sock.pause();
            setTimeout(() => sock.resume(), opts.stallMs);
          }
        }
        if (reqs === null) return;
      }
      reqs.push(chunk);
      for (let ev = reqs.next(); ev !== null; ev = reqs.next()) {
        if (ev.kind === 'fatal') return sock.destroy();
        const r = ev.req;
        log.push(`${cmdName(r.type)}${r.flags & CmdFlag.FUA ? '+FUA' : ''} ${r.offset} ${r.length}`);
        if (r.type === Cmd.DISC) return sock.end();
        if (r.type === Cmd.WRITE) r.payload!.copy(disk, r.offset);
        sock.write(encodeSimpleReply(0, r.cookieHi, r.cookieLo));
        if (r.type === Cmd.READ) sock.write(disk.subarray(r.offset, r.offset + r.length));
      }
    });
  });
  await new Promise<void>((resolve) => srv.listen(path, resolve));
  t.teardown(() => { srv.close(); cleanup(); });
  return { uri: `nbd+unix:///?socket=${path}`, log };
}

test('remote with no optional commands: flush/trim/cache are local no-ops, zero writes, FUA is dropped', async (t) => {
  const remote = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS });
  const { o } = await open(t, remote.uri);
  t.false(o.canFastZero);
  t.is(await call((cb) => o.flush(cb)), 0);
  t.is(await call((cb) => o.trim(0, 4096, true, cb)), 0);
  t.is(await call((cb) => o.cache(0, 4096, cb)), 0);
  t.is(await call((cb) => o.zero(0, 4096, { noHole: false, fastZero: true, fua: false }, cb)), NbdErr.ENOTSUP);
  t.is(await call((cb) => o.write(0, Buffer.alloc(8192, 1), true, cb)), 0);
  t.is(await call((cb) => o.zero(512, 1024, { noHole: true, fastZero: false, fua: false }, cb)), 0);
  t.deepEqual(remote.log, ['GO', 'WRITE 0 8192', 'WRITE 512 1024']);
});

test('remote with FLUSH but no FUA: a FUA write is followed by a FLUSH before it completes', async (t) => {
  const remote = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH });
  const { o } = await open(t, remote.uri);
  t.is(await call((cb) => o.write(4096, Buffer.alloc(4096, 1), true, cb)), 0);
  t.is(await call((cb) => o.write(4096, Buffer.alloc(512, 1), false, cb)), 0);
  t.deepEqual(remote.log, ['GO', 'WRITE 4096 4096', 'FLUSH 0 0', 'WRITE 4096 512']);
});

test('GO refused with ERR_UNSUP falls back to EXPORT_NAME; BLOCK_SIZE max splits reads', async (t) => {
  const old = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS | TxFlag.SEND_FUA | TxFlag.SEND_FLUSH, goUnsupported: true });
  const { o } = await open(t, old.uri);
  t.is(await call((cb) => o.write(0, Buffer.alloc(512, 9), true, cb)), 0);
  const [e, b] = await read(o, 0, 512);
  t.is(e, 0);
  t.true(b.every((x) => x === 9));
  t.deepEqual(old.log, ['EXPORT_NAME', 'WRITE+FUA 0 512', 'READ 0 512']);

  const small = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS, maxBlock: 4096 });
  const { o: o2 } = await open(t, small.uri);
  t.is((await read(o2, 1000, 10_000))[0], 0);
  t.deepEqual(small.log, ['GO', 'READ 1000 4096', 'READ 5096 4096', 'READ 9192 1808']);
});

test('several connections only with CAN_MULTI_CONN', async (t) => {
  const remote = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH });
  const { o, log } = await open(t, remote.uri, { connections: 3 });
  t.is(await call((cb) => o.flush(cb)), 0);
  t.deepEqual(remote.log.filter((l) => l === 'GO'), ['GO']);
  t.true(log.lines.some((l) => /CAN_MULTI_CONN/.test(l)));
  const multi = await fakeRemote(t, { size: MiB, txFlags: TxFlag.HAS_FLAGS | TxFlag.CAN_MULTI_CONN });
  await open(t, multi.uri, { connections: 3 });
  t.deepEqual(multi.log, ['GO', 'GO', 'GO']);
});

test('back-pressure: a remote that stops reading delays requests, nothing is lost', async (t) => {
  const remote = await fakeRemote(t, { size: 64 * MiB, txFlags: TxFlag.HAS_FLAGS, stallMs: 300 });
  const { o } = await open(t, remote.uri);
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => call((cb) => o.write(i * 256 * 1024, pattern(256 * 1024, i), false, cb))));
  t.deepEqual(new Set(results), new Set([0]));
  t.is(remote.log.filter((l) => l.startsWith('WRITE')).length, 100);
  const [e, b] = await read(o, 99 * 256 * 1024, 256 * 1024);
  t.is(e, 0);
  t.true(b.equals(pattern(256 * 1024, 99)));
});
