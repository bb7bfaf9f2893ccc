// The faulty disk (test/helpers/faulty-disk*.ts) through real clients: nbdsh (libnbd's Python
// binding), nbdinfo, nbdcopy, pcached's own NBD origin client, raw hostile sockets, and a Node
// process doing pwrite/fdatasync on an nbdfuse file. These are the properties the power-loss
// tests of the daemon rely on, so each is checked here on its own.
//
// Every process is stopped by its PID in teardown; scratch directories are removed after all.

import test, { type ExecutionContext } from 'ava';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './helpers/daemon.js';
import { startFaultyDisk, type FaultyDisk, type FaultyDiskOptions } from './helpers/faulty-disk.js';
import { fuseUnavailable, hasMount, mountNbd } from './helpers/fuse.js';
import { RawConn, handshake, request, readSimpleReply, CMD_WRITE } from './helpers/nbd-raw.js';
import { openNbdOrigin } from '../src/origin/nbd.js';
import { removeScratchDirs, scratchDir } from './helpers/scratch.js';
import { decodeImage } from './helpers/stamp-model.js';
import { stampBlock, STAMP_BLOCK } from './helpers/stamps.js';
import { describe, needTools, nbdshJson, PY_ATTEMPT, run, runOk, skipSuffix } from './helpers/tools.js';
import { pidRunning, sleep, waitFor } from './helpers/lifecycle.js';

const MiB = 1 << 20;
const FILE_IO = join(REPO_ROOT, 'dist', 'test', 'helpers', 'file-io-main.js');

test.after.always(() => removeScratchDirs());

async function disk(t: ExecutionContext, o: Partial<FaultyDiskOptions> = {}): Promise<FaultyDisk> {
  return startFaultyDisk({ dir: scratchDir('pcached-fdisk-'), size: 16 * MiB, t, ...o });
}

/** 4 KiB of `byte` at block `n` as Python would build it. */
const py = (n: number, byte: number): string => `h.pwrite(bytes([${byte}]) * 4096, ${n * 4096})`;

const whyPy = needTools('nbdsh', 'python3-nbd');
const pyTest = whyPy ? test.serial.skip : test.serial;

pyTest('a power cut loses what was not flushed; flushed writes and FUA writes survive it' + skipSuffix(whyPy), async (t) => {
  const d = await disk(t);
  const seen = await nbdshJson<number[]>(`
import json, nbd
${py(0, 0xa1)}
h.flush()
${py(1, 0xb2)}
h.pwrite(bytes([0xc3]) * 4096, 2 * 4096, nbd.CMD_FLAG_FUA)
h.zero(4096, 3 * 4096)
print(json.dumps([h.pread(1, 0)[0], h.pread(1, 4096)[0], h.pread(1, 2 * 4096)[0], h.pread(1, 3 * 4096)[0]]))
`, { uri: d.uri });
  t.deepEqual(seen, [0xa1, 0xb2, 0xc3, 0], 'reads see unflushed writes and zeroes at once');
  const before = await d.stats();
  t.is(before.volatileBytes, 2 * 4096, 'block 1 and the zeroed block 3 wait in the volatile cache');
  t.is(before.counters.fuaWrites, 1);

  await d.powerCut();
  t.false(d.alive());
  const img = readFileSync(d.image);
  t.deepEqual([img[0], img[4096], img[2 * 4096], img[3 * 4096]], [0xa1, 0, 0xc3, 0], 'the image holds exactly the flushed and FUA data');

  await d.restart();
  const after = await nbdshJson<number[]>(`
import json
print(json.dumps([h.pread(1, 0)[0], h.pread(1, 4096)[0], h.pread(1, 2 * 4096)[0]]))
`, { uri: d.uri });
  t.deepEqual(after, [0xa1, 0, 0xc3], 'the restarted disk serves the image, same socket');
  t.is((await d.stats()).volatileBytes, 0);
});

pyTest('a failed FLUSH gets EIO and drops the volatile cache; a later FLUSH succeeds without that data' + skipSuffix(whyPy), async (t) => {
  const d = await disk(t);
  await nbdshJson(`${py(0, 1)}\nh.flush()\n${py(1, 2)}\nprint('"ok"')`, { uri: d.uri });
  await d.control('flush fail');
  const failed = await nbdshJson<[string, string]>(`
import json, nbd
${PY_ATTEMPT}
print(json.dumps([attempt(lambda: h.flush()), attempt(lambda: h.pwrite(b'x' * 4096, 5 * 4096, nbd.CMD_FLAG_FUA))]))
`, { uri: d.uri });
  t.deepEqual(failed, ['EIO', 'EIO'], 'FLUSH and a FUA write fail with EIO');
  await d.control('flush ok');
  const later = await nbdshJson<[number, number]>(`
import json
r = h.pread(1, 4096)[0]
${py(2, 3)}
h.flush()
print(json.dumps([r, h.pread(1, 2 * 4096)[0]]))
`, { uri: d.uri });
  t.deepEqual(later, [0, 3], 'the write before the failed flush is gone; the later flush succeeded');
  const st = await d.stats();
  t.is(st.counters.flushesFailed, 2);
  t.true(st.counters.bytesDropped >= 4096, `dropped ${st.counters.bytesDropped} bytes`);
  await d.powerCut();
  const img = readFileSync(d.image);
  t.deepEqual([img[0], img[4096], img[2 * 4096], img[5 * 4096]], [1, 0, 3, 0], 'only what successful flushes covered is on the image');
});

pyTest('write and read faults: EIO, nothing applied; failure rates are seeded and switchable' + skipSuffix(whyPy), async (t) => {
  const d = await disk(t, { seed: 42 });
  const r = await nbdshJson<{ write: string; kept: number; read: string; afterRead: number }>(`
import json, nbd, socket
def ctl(cmd):
    s = socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(d.controlSocket)}); s.sendall((cmd + '\\n').encode())
    out = s.recv(65536).decode(); s.close()
    assert out.startswith('ok'), out
${PY_ATTEMPT}
${py(0, 7)}
ctl('write fail')
w = attempt(lambda: h.pwrite(b'\\x09' * 4096, 0))
ctl('write ok')
kept = h.pread(1, 0)[0]
ctl('read fail')
rd = attempt(lambda: h.pread(4096, 0))
ctl('read ok')
print(json.dumps({'write': w, 'kept': kept, 'read': rd, 'afterRead': h.pread(1, 0)[0]}))
`, { uri: d.uri });
  t.deepEqual(r, { write: 'EIO', kept: 7, read: 'EIO', afterRead: 7 });

  // 30 % of writes fail, drawn from the seed: the same seed gives the same failures.
  const rate = async (): Promise<number[]> => {
    await d.control('seed 42');
    await d.control('write fail 30');
    const failedAt = await nbdshJson<number[]>(`
import json, nbd
out = []
for i in range(200):
    try:
        h.pwrite(b'r' * 512, i * 512)
    except nbd.Error:
        out.append(i)
print(json.dumps(out))
`, { uri: d.uri });
    await d.control('write ok');
    return failedAt;
  };
  const first = await rate();
  t.true(first.length > 30 && first.length < 90, `${first.length} of 200 writes failed at 30 %`);
  t.deepEqual(await rate(), first, 'same seed, same failures');
  await t.throwsAsync(d.control('write fail 101'), { message: /not a percentage/ });
  await t.throwsAsync(d.control('explode'), { message: /unknown command/ });
});

pyTest('latency is per request: requests in flight wait side by side, not one after another' + skipSuffix(whyPy), async (t) => {
  const LAT = 400;
  const d = await disk(t, { readLatencyMs: LAT, writeLatencyMs: LAT });
  const r = await nbdshJson<{ writes: number; reads: number; one: number }>(`
import json, time
def timed(submit):
    t0 = time.monotonic()
    for i in range(8):
        submit(i)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    return (time.monotonic() - t0) * 1000
buf = bytearray(4096)
w = timed(lambda i: h.aio_pwrite(b'w' * 4096, i * 4096))
r = timed(lambda i: h.aio_pread(buf, i * 4096))
t0 = time.monotonic(); h.pread(4096, 0); one = (time.monotonic() - t0) * 1000
print(json.dumps({'writes': w, 'reads': r, 'one': one}))
`, { uri: d.uri });
  t.log(`8 writes in flight: ${r.writes.toFixed(0)} ms, 8 reads: ${r.reads.toFixed(0)} ms, one read: ${r.one.toFixed(0)} ms (latency ${LAT} ms)`);
  t.true(r.one >= LAT, 'each request waits its latency');
  t.true(r.writes >= LAT && r.reads >= LAT);
  // Queued one after another they would take 8 × 400 ms; side by side about 400 ms.
  t.true(r.writes < 4 * LAT && r.reads < 4 * LAT, 'eight requests overlap');
  t.true((await d.stats()).server.maxInFlight >= 8, 'the server held all eight at once');
});

pyTest('nbdinfo, nbdcopy and pcached\'s own NBD origin client (multi-conn) work against it' + skipSuffix(whyPy ?? needTools('nbdinfo', 'nbdcopy')), async (t) => {
  const d = await disk(t);
  const info = await runOk('nbdinfo', ['--json', d.uri]);
  const exp = (JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]!;
  t.like(exp, { 'export-size': 16 * MiB, can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_multi_conn: true, is_read_only: false });
  const list = await runOk('nbdinfo', ['--list', `nbd+unix://?socket=${d.socket}`]);
  t.regex(list.stdout, /export="disk"/);

  const dir = scratchDir('pcached-fdisk-copy-');
  const src = join(dir, 'src.bin');
  const back = join(dir, 'back.bin');
  const data = Buffer.alloc(2 * MiB);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i * 2654435761 >>> 0, i);
  writeFileSync(src, data);
  await runOk('nbdcopy', [src, d.uri]);
  await runOk('nbdcopy', [d.uri, back]);
  t.true(readFileSync(back).subarray(0, data.length).equals(data), 'nbdcopy round trip');

  const origin = await openNbdOrigin({ kind: 'nbd', uri: d.uri, connections: 2, timeoutMs: 5000, readOnly: false } as Parameters<typeof openNbdOrigin>[0],
    { logger: { info() {}, warn() {}, error() {} } });
  const done = (f: (cb: (errno: number) => void) => void): Promise<number> => new Promise((r) => f(r));
  const stamp = stampBlock(3, 9);
  t.is(await done((cb) => origin.write(3 * STAMP_BLOCK, stamp, false, cb)), 0);
  t.is(await done((cb) => origin.flush(cb)), 0);
  const dst = Buffer.alloc(STAMP_BLOCK);
  t.is(await done((cb) => origin.read(3 * STAMP_BLOCK, dst, cb)), 0);
  t.true(dst.equals(stamp));
  await d.control('flush fail');
  t.is(await done((cb) => origin.flush(cb)), 5, 'EIO reaches the origin client');
  await origin.close();
  t.true((await d.stats()).server.connectionsTotal >= 3, 'the origin client used two connections');
});

test.serial('bad flags and a wrong image size are refused with a clear message', async (t) => {
  const dir = scratchDir('pcached-fdisk-flags-');
  const base = ['--socket', join(dir, 's'), '--control', join(dir, 'c'), '--image', join(dir, 'i.img')];
  const main = join(REPO_ROOT, 'dist', 'test', 'helpers', 'faulty-disk-main.js');
  const cases: [string[], RegExp][] = [
    [['--size', '1000'], /disk size 1000 must be a positive multiple of 4096/],
    [['--size', '1M', '--power-cut', 'maybe'], /--power-cut maybe: expected one of drop, keep, tear/],
    [['--size', '1M', '--fail-flush', '150'], /--fail-flush 150: expected a number 0-100/],
    [['--size', 'lots'], /invalid size "lots"/],
    [['--size', '1M', '--bogus'], /Unknown option '--bogus'/],
  ];
  for (const [args, re] of cases) {
    const r = await run(process.execPath, [main, ...base, ...args], { timeoutMs: 20_000 });
    t.is(r.code, 2, `${args.join(' ')}: ${describe(r)}`);
    t.regex(r.stderr, re);
  }
  writeFileSync(join(dir, 'i.img'), Buffer.alloc(8192));
  const r = await run(process.execPath, [main, ...base, '--size', '1M'], { timeoutMs: 20_000 });
  t.regex(r.stderr, /image .*i\.img is 8192 bytes, not the 1048576 asked for/);
});

test.serial('hostile clients: garbage, bad magic, hang-ups with requests in flight do not stop it', async (t) => {
  const d = await disk(t, { writeLatencyMs: 200 });
  const garbage = await RawConn.open(d.socket);
  await garbage.write(Buffer.alloc(64, 0xee));
  t.true(await garbage.waitClosed(5000), 'unknown client flags end the connection');
  for (let i = 0; i < 3; i++) {
    const c = await RawConn.open(d.socket);
    await handshake(c, 'disk');
    for (let k = 0; k < 16; k++) await c.write(Buffer.concat([request(CMD_WRITE, BigInt(k + 1), k * 4096, 4096), Buffer.alloc(4096, k)]));
    c.destroy(); // hang up with 16 writes waiting on their latency
  }
  const bad = await RawConn.open(d.socket);
  await handshake(bad, 'disk');
  await bad.write(Buffer.alloc(28, 0x42));
  t.true(await bad.waitClosed(5000), 'a bad request magic ends the connection');
  await waitFor('the abandoned writes to finish', async () => (await d.stats()).server.inFlight === 0, 10_000, 50);
  t.true(d.alive(), `the disk survived:\n${d.output()}`);
  const ok = await RawConn.open(d.socket);
  await handshake(ok, 'disk');
  ok.sock.write(Buffer.concat([request(CMD_WRITE, 77n, 0, 4096), Buffer.alloc(4096, 1)]));
  const reply = await readSimpleReply(ok);
  t.deepEqual(reply, { error: 0, cookie: 77n });
  ok.sock.destroy();
  const st = await d.stats();
  t.true(st.server.protocolErrors >= 2, `protocol errors counted: ${st.server.protocolErrors}`);
  t.is(st.counters.writes, 3 * 16 + 1, 'writes of clients that hung up still reached the disk');
});

test.serial('tear mode: a power cut leaves unflushed 4 KiB writes whole, absent or torn at 512-byte sectors; flushed ones intact', async (t) => {
  const d = await disk(t, { powerCut: 'tear', seed: 7 });
  const { NbdTestClient } = await import('./helpers/nbd-test-client.js');
  const c = await NbdTestClient.connect(d.socket, 'disk');
  for (let b = 0; b < 64; b++) t.is(await c.write(b * STAMP_BLOCK, stampBlock(b, 1)), 0);
  t.is(await c.flush(), 0);
  for (let b = 0; b < 64; b++) t.is(await c.write(b * STAMP_BLOCK, stampBlock(b, 2)), 0);
  c.destroy();
  await d.powerCut();
  const held = decodeImage(readFileSync(d.image), 64);
  const kinds = { old: 0, new: 0, torn: 0 };
  for (let b = 0; b < 64; b++) {
    if (held.bad.has(b)) {
      t.regex(held.bad.get(b)!, /torn or foreign block \(sectors: (v[12] ){7}v[12]\)/, `block ${b} is a mix of v1 and v2 sectors`);
      kinds.torn++;
    } else if (held.versions[b] === 1) kinds.old++;
    else if (held.versions[b] === 2) kinds.new++;
  }
  t.log(`after the cut: ${JSON.stringify(kinds)}`);
  t.is(kinds.old + kinds.new + kinds.torn, 64, 'nothing older than the flush');
  t.true(kinds.torn > 32, 'most blocks torn (each sector kept with probability 1/2)');
});

const whyFuse = fuseUnavailable();

(whyFuse ? test.serial.skip : test.serial)('through nbdfuse: pwrite reaches the disk at once, fdatasync is a FLUSH, EIO reaches pwrite and fdatasync, close does not flush' + skipSuffix(whyFuse), async (t) => {
  t.timeout(120_000);
  const d = await disk(t);
  const m = await mountNbd({ dir: join(scratchDir('pcached-fdisk-mnt-'), 'mnt'), uri: d.uri, t });
  const io = async (...ops: string[]): Promise<Record<string, unknown>[]> => {
    const r = await run(process.execPath, [FILE_IO, m.file, ...ops], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`file I/O failed: ${describe(r)}`);
    return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  const counts = async () => {
    const s = await d.stats();
    return { writes: s.counters.writes, flushes: s.counters.flushes, volatile: s.volatileBytes };
  };

  t.deepEqual(await io('write:8192:4096:5', 'write:100:10:6'), [{ op: 'write:8192:4096:5', ok: true }, { op: 'write:100:10:6', ok: true }]);
  t.deepEqual(await counts(), { writes: 2, flushes: 0, volatile: 2 * 4096 }, 'both pwrites reached the disk before they returned; close did not flush');
  t.deepEqual(await io('sync'), [{ op: 'sync', ok: true }]);
  t.deepEqual(await counts(), { writes: 2, flushes: 1, volatile: 0 }, 'fdatasync sent one FLUSH');

  await d.control('flush fail');
  t.deepEqual(await io('write:12288:4096:7', 'sync', 'read:12288:4096'), [
    { op: 'write:12288:4096:7', ok: true }, { op: 'sync', error: 'EIO' },
    // The page cache of the open file still shows what the disk dropped.
    { op: 'read:12288:4096', ok: true, bytes: [7] },
  ]);
  await d.control('flush ok');
  t.deepEqual(await io('read:12288:4096', 'sync'), [{ op: 'read:12288:4096', ok: true, bytes: [0] }, { op: 'sync', ok: true }],
    'reopened, the file reads what the disk holds; the next fdatasync succeeds');

  await d.control('write fail');
  t.deepEqual(await io('write:16384:4096:8'), [{ op: 'write:16384:4096:8', error: 'EIO' }]);
  await d.control('write ok');
  t.deepEqual(await io('--direct', 'write:20480:4096:9', 'read:20480:4096'), [{ op: 'write:20480:4096:9', ok: true }, { op: 'read:20480:4096', ok: true, bytes: [9] }], 'O_DIRECT works');

  const before = (await d.stats()).counters.flushes;
  await m.unmount();
  t.false(await m.mounted());
  t.is((await d.stats()).counters.flushes, before, 'unmounting does not flush either');

  // The disk dies under the mount: I/O fails, the mount is torn down and made again.
  await m.remount();
  await d.powerCut();
  const dead = await io('write:0:4096:1', 'sync');
  t.true(dead.every((r) => typeof r.error === 'string'), `I/O on a dead disk fails: ${JSON.stringify(dead)}`);
  await d.restart();
  await m.remount();
  t.true(await m.mounted());
  t.deepEqual(await io('read:8192:4096', 'read:20480:4096'), [{ op: 'read:8192:4096', ok: true, bytes: [5] }, { op: 'read:20480:4096', ok: true, bytes: [0] }],
    'after the cut: the flushed block is there, the unflushed O_DIRECT write is not');

  // nbdfuse itself dies (it can abort when its server vanishes): a dead mount is left behind,
  // which `mountpoint -q` does not see; remount() must still clear it and mount again.
  const pid = m.pid;
  process.kill(pid, 'SIGKILL');
  await waitFor('nbdfuse to die', () => !pidRunning(pid), 10_000, 20);
  t.true(hasMount(m.dir), 'the dead mount is still in the mount table');
  // Once the root's cached attributes (attr_timeout, 1 s) expire, stat fails with ENOTCONN.
  await sleep(1500);
  t.false(await m.mounted(), '`mountpoint -q` no longer sees it');
  await m.remount();
  t.deepEqual(await io('read:8192:4096'), [{ op: 'read:8192:4096', ok: true, bytes: [5] }], 'mounted again over the dead mount');
});
