// Large requests (up to the advertised 64 MiB) and the clients that make them hard, through the
// real daemon: the reported hang (a 26 MiB WRITE, then a 30 MiB READ that never got a reply),
// 32 and 64 MiB requests after fragmenting traffic with replies pinned by a client that does not
// read, on one and two stripes and a small slab, with simple and structured replies; a client
// that never reads its replies; clients that send 64 MiB WRITE headers and trickle the payloads;
// qemu-io and nbdinfo; requests over the maximum.

import test, { type ExecutionContext } from 'ava';
import { startDaemon, isNbdkit, type Daemon, type DaemonOptions } from './helpers/daemon.js';
import { RawConn, handshake, request, readSimpleReply, readAt, CMD_READ, CMD_WRITE } from './helpers/nbd-raw.js';
import { needTools, skipSuffix, nbdshJson, runOk, noteSkipped } from './helpers/tools.js';
import { treeRssKiB, rssSampler } from './helpers/mem.js';
import { sleep, statusJson } from './helpers/lifecycle.js';

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;
const MiB = 1024 * 1024;
const SIZE = 256 * MiB;
const NAME = 'vol-big';

async function daemon(t: ExecutionContext, opts: DaemonOptions = {}): Promise<Daemon> {
  const d = await startDaemon({ name: NAME, originSize: SIZE, cacheSize: '320M', ...opts });
  t.teardown(() => d.dispose());
  return d;
}

/** Python: `pat(n, tag)`, deterministic bytes that differ per 4 KiB page and per tag. */
const PY_PAT = `
def pat(n, tag):
    unit = bytes(((i * 31 + (i >> 7) + tag * 13) & 0xff) for i in range(4099))
    return (unit * (n // 4099 + 1))[:n]
`;

/** A raw connection that sends READs and never reads a reply (its socket is paused). */
async function stalledReader(d: Daemon, count: number, length: number): Promise<RawConn> {
  const c = await RawConn.open(d.sock);
  await handshake(c, d.name);
  c.sock.pause();
  const reqs: Buffer[] = [];
  for (let i = 0; i < count; i++) reqs.push(request(CMD_READ, BigInt(1000 + i), ((i * 7919) % (SIZE / length - 1)) * length, length));
  void c.write(Buffer.concat(reqs));
  return c;
}

t_(`the reported sequence: a 27,617,280-byte WRITE at 0xd16000, then a 31,299,584-byte READ at 0xe29c00, completes with the right data; other connections keep working${skipSuffix(why)}`, async (t) => {
  t.timeout(180_000);
  // One stripe (the default on 2 cores), as in the report.
  const d = await daemon(t, { stripes: 1 });
  const r = await nbdshJson<Record<string, unknown>>(`
import json, nbd
${PY_PAT}
res = {}
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.uri)})
w = pat(27617280, 1)
h.pwrite(w, 0xd16000)
d = h.pread(31299584, 0xe29c00)
exp = bytearray(31299584)
lo, hi = max(0xd16000, 0xe29c00), min(0xd16000 + len(w), 0xe29c00 + len(d))
exp[lo - 0xe29c00:hi - 0xe29c00] = w[lo - 0xd16000:hi - 0xd16000]
res["read"] = "OK" if d == exp else "mismatch"
for sr in (False, True):
    h2 = nbd.NBD()
    h2.set_request_structured_replies(sr)
    h2.connect_uri(${JSON.stringify(d.uri)})
    h2.pwrite(b"\\x77" * 4096, 200 * 1024 * 1024)
    res["other" + str(sr)] = "OK" if h2.pread(4096, 200 * 1024 * 1024) == b"\\x77" * 4096 else "mismatch"
    res["again" + str(sr)] = "OK" if h2.pread(31299584, 0xe29c00) == exp else "mismatch"
print(json.dumps(res))
`, { timeoutMs: 120_000 });
  t.is(r.read, 'OK', 'the 31,299,584-byte READ returned the written data and zeros around it');
  for (const sr of ['False', 'True']) {
    t.is(r[`other${sr}`], 'OK', `a later 4 KiB request on another connection (structured ${sr})`);
    t.is(r[`again${sr}`], 'OK', `the same READ again (structured ${sr})`);
  }
  t.true(d.alive());
});

/**
 * Fragmenting traffic (hundreds of small and odd-sized writes and reads at scattered offsets,
 * many in flight, while a client that never reads holds replies), then 32 and 64 MiB writes and
 * reads at unaligned offsets, concurrently, simple, structured and DF; every byte of the volume
 * checked against a model at the end.
 */
function fragmentThenBig(uri: string): string {
  return `
import json, nbd, random
${PY_PAT}
random.seed(7)
res = {"bad": []}
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
hs = nbd.NBD()
hs.set_request_structured_replies(False)
hs.connect_uri(${JSON.stringify(uri)})
size = h.get_size()
model = bytearray(size)
slot = 256 * 1024
cookies = []
for i, s in enumerate(random.sample(range(size // slot), 600)):
    off = s * slot + random.randrange(0, 64 * 1024) + random.choice([0, 512, 1000])
    n = random.choice([512, 4096, 4097, 12288, 65536, 100000, 131072])
    data = pat(n, i)
    model[off:off + n] = data
    hh = h if i % 2 else hs
    cookies.append((hh, hh.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)))
    rn = random.choice([4096, 65536, 200000, 1 << 20])
    cookies.append((hh, hh.aio_pread(nbd.Buffer(rn), random.randrange(0, size - rn))))
    while h.aio_in_flight() + hs.aio_in_flight() > 96:
        h.poll(0) if h.aio_in_flight() else None
        hs.poll(0) if hs.aio_in_flight() else None
for hh, c in cookies:
    while not hh.aio_command_completed(c):
        hh.poll(-1)
MiB = 1024 * 1024
bigs = [(0x1234c00, 32 * MiB, 101), (0x3a01e00, 64 * MiB, 102), (0x9000000 + 4096, 64 * MiB, 103), (0xd100000 + 3, 32 * MiB, 104)]
# Two big writes at once on different connections, then two more.
for pair in (bigs[:2], bigs[2:]):
    pend = []
    for j, (off, n, tag) in enumerate(pair):
        data = pat(n, tag)
        model[off:off + n] = data
        hh = h if j == 0 else hs
        pend.append((hh, hh.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)))
    for hh, c in pend:
        while not hh.aio_command_completed(c):
            hh.poll(-1)
# Big reads in flight together on both connections, and a DF read.
reads = []
for j, (off, n, tag) in enumerate(bigs):
    for hh in (h, hs):
        buf = nbd.Buffer(n)
        reads.append((hh, hh.aio_pread(buf, off), buf, off, n, "structured" if hh is h else "simple"))
for hh, c, buf, off, n, kind in reads:
    while not hh.aio_command_completed(c):
        hh.poll(-1)
    if buf.to_bytearray() != model[off:off + n]:
        res["bad"].append([kind, off, n])
if h.can_df():
    got = []
    def chunk(sub, off, status, err):
        got.append((off, bytes(sub)))
        return 0
    h.pread_structured(32 * MiB, 0x1234c00, chunk, flags=nbd.CMD_FLAG_DF)
    if len(got) != 1 or got[0][0] != 0x1234c00 or got[0][1] != model[0x1234c00:0x1234c00 + 32 * MiB]:
        res["bad"].append(["df", 0x1234c00, 32 * MiB, len(got)])
else:
    res["bad"].append("DF not advertised")
# The whole volume, in 64 MiB reads, both ways.
for off in range(0, size, 64 * MiB):
    for hh, kind in ((h, "structured"), (hs, "simple")):
        if hh.pread(64 * MiB, off) != model[off:off + 64 * MiB]:
            res["bad"].append(["whole-" + kind, off, 64 * MiB])
print(json.dumps(res))
`;
}

const layouts: { title: string; opts: DaemonOptions }[] = [
  { title: 'one stripe', opts: { stripes: 1 } },
  { title: 'two stripes', opts: { stripes: 2 } },
  { title: 'one stripe, 4 MiB slab', opts: { stripes: 1, env: { PCACHED_SLAB_SIZE: '4MiB' } } },
  { title: 'two stripes, 4 MiB slab', opts: { stripes: 2, env: { PCACHED_SLAB_SIZE: '4MiB' } } },
];
for (const { title, opts } of layouts) {
  t_(`32 and 64 MiB requests after fragmenting traffic, replies pinned by a client that does not read (${title}): simple, structured and DF, byte for byte${skipSuffix(why)}`, async (t) => {
    t.timeout(300_000);
    const d = await daemon(t, opts);
    const stalled = await stalledReader(d, 400, 128 * 1024);
    t.teardown(() => stalled.destroy());
    const r = await nbdshJson<{ bad: unknown[] }>(fragmentThenBig(d.uri), { timeoutMs: 240_000 });
    t.deepEqual(r.bad, [], 'every READ returned exactly what the model holds');
    t.true(d.alive());
    if (!isNbdkit) {
      const st = (await statusJson(d.control)).caches[0]!;
      const splits = st.stripeStats.reduce((n, s) => n + (s.slab_splits ?? 0), 0);
      t.log(`pieces cut to fit a fragmented slab: ${splits}; replies copied out of the slab: ${st.stats.replies_copied}`);
    }
  });
}

/** Python: `n` rounds of a 4 KiB WRITE and READ (checked), each round's latency in ms. */
function smallRounds(uri: string, n: number, base: number): string {
  return `
import json, nbd, time
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
lat = []
bad = 0
for i in range(${n}):
    off = ${base} + (i % 512) * 4096
    data = bytes([i & 0xff]) * 4096
    t0 = time.monotonic()
    h.pwrite(data, off)
    if h.pread(4096, off) != data:
        bad += 1
    lat.append((time.monotonic() - t0) * 1000)
print(json.dumps({"max": max(lat), "n": len(lat), "bad": bad}))
`;
}

t_(`a client that never reads its replies: others keep being served, memory stays bounded, SIGTERM is prompt${skipSuffix(why)}`, async (t) => {
  t.timeout(240_000);
  const d = await daemon(t, { stripes: 2 });
  const before = treeRssKiB(d.pid);
  const rss = rssSampler(d.pid);
  // 4,000 READs of 256 KiB: a GiB of replies nobody takes.
  const stalled = await stalledReader(d, 4000, 256 * 1024);
  t.teardown(() => stalled.destroy());
  await sleep(2000);
  const r = await nbdshJson<{ max: number; n: number; bad: number }>(smallRounds(d.uri, 400, 220 * MiB), { timeoutMs: 120_000 });
  const peak = rss.stop();
  t.log(`other client: ${r.n} rounds, slowest ${r.max.toFixed(1)} ms; RSS of the daemon ${Math.round(before / 1024)} → peak ${Math.round(peak / 1024)} MiB`);
  t.is(r.bad, 0);
  t.true(r.max < 5000, `each 4 KiB WRITE+READ completes within 5 s (slowest ${r.max.toFixed(0)} ms)`);
  t.true(peak - before < 256 * 1024, `memory bounded: grew ${Math.round((peak - before) / 1024)} MiB`);
  if (!isNbdkit) {
    const st = (await statusJson(d.control)).caches[0]!;
    t.log(`replies copied out of the slab: ${st.stats.replies_copied}`);
  }
  const t0 = Date.now();
  const code = await d.stop('SIGTERM');
  const secs = (Date.now() - t0) / 1000;
  t.log(`SIGTERM with the stalled client connected: exit ${code} after ${secs.toFixed(1)} s`);
  t.is(code, 0, d.stderr());
  t.true(secs < 15, `stopped in ${secs.toFixed(1)} s`);
});

// 64 MiB: the new maximum. 32 MiB: the old one, whose partial payloads were allocated at the
// header but charged only when complete (12 × 31 MiB then sat in the daemon).
for (const { header, conns: nConns, bound } of [{ header: 64, conns: 8, bound: 420 }, { header: 32, conns: 12, bound: 340 }]) {
  t_(`clients that send ${header} MiB WRITE headers and trickle the payloads: reading pauses for them, others are served, memory stays bounded${skipSuffix(why)}`, async (t) => {
    t.timeout(240_000);
    const d = await daemon(t, { stripes: 2 });
    const before = treeRssKiB(d.pid);
    const rss = rssSampler(d.pid);
    // Each connection promises a payload and sends all of it but the last MiB, then stalls.
    const almost = Buffer.alloc((header - 1) * MiB, 0x3c);
    const conns: RawConn[] = [];
    t.teardown(() => { for (const c of conns) c.destroy(); });
    for (let i = 0; i < nConns; i++) {
      const c = await RawConn.open(d.sock);
      conns.push(c);
      await handshake(c, d.name);
      c.sock.write(request(CMD_WRITE, BigInt(50 + i), i * 16 * MiB, header * MiB));
      c.sock.write(almost);
    }
    // Let whatever the daemon accepts arrive.
    let last = -1;
    for (let i = 0; i < 40; i++) {
      await sleep(500);
      const now = conns.reduce((n, c) => n + c.sock.writableLength, 0);
      if (i >= 6 && Math.abs(now - last) < MiB) break;
      last = now;
    }
    const unsent = conns.map((c) => Math.round(c.sock.writableLength / MiB));
    const r = await nbdshJson<{ max: number; n: number; bad: number }>(smallRounds(d.uri, 200, 200 * MiB), { timeoutMs: 120_000 });
    const peak = rss.stop();
    t.log(`MiB not taken per trickling connection: ${unsent.join(' ')}; other client slowest ${r.max.toFixed(1)} ms; ` +
      `RSS of the daemon ${Math.round(before / 1024)} → peak ${Math.round(peak / 1024)} MiB`);
    // Payloads still arriving may hold half of the 512 MiB budget.
    const paused = unsent.filter((u) => u > header / 2).length;
    t.is(paused, nConns - 256 / header, `the daemon stopped reading from the connections over the budget (${paused} of ${nConns} paused)`);
    t.is(r.bad, 0);
    t.true(r.max < 5000, `other client's requests complete within 5 s (slowest ${r.max.toFixed(0)} ms)`);
    t.true(peak - before < bound * 1024, `memory bounded: grew ${Math.round((peak - before) / 1024)} MiB (${nConns} × ${header - 1} MiB were sent)`);
    // The stalled payloads' charges go when their connections do: a 64 MiB WRITE then fits.
    for (const c of conns) c.destroy();
    await sleep(500);
    const big = await nbdshJson<{ ok: boolean }>(`
import json, nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.uri)})
data = bytes(range(256)) * (256 * 1024)
h.pwrite(data, 128 * 1024 * 1024)
print(json.dumps({"ok": h.pread(64 * 1024 * 1024, 128 * 1024 * 1024) == data}))
`, { timeoutMs: 60_000 });
    t.true(big.ok, 'a 64 MiB WRITE and READ after the trickling clients left');
    const code = await d.stop('SIGTERM');
    t.is(code, 0, d.stderr());
  });
}

const whyQemu = needTools('qemu-io', 'nbdinfo');
(whyQemu ? test.serial.skip : test.serial)(`qemu-io writes and reads 64 MiB; nbdinfo --json shows the advertised maximum${skipSuffix(whyQemu)}`, async (t) => {
  t.timeout(120_000);
  const d = await daemon(t, { stripes: 2 });
  await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0xa5 0x123000 64M', '-c', 'read -P 0xa5 0x123000 64M', '-c', 'read -P 0 0 0x123000', d.uri], { timeoutMs: 90_000 });
  const info = JSON.parse((await runOk('nbdinfo', ['--json', d.uri], { timeoutMs: 30_000 })).stdout) as { exports: { block_size_maximum?: number }[] };
  if (isNbdkit) noteSkipped(t, 'block_size_maximum', 'nbdkit file plugin does not send NBD_INFO_BLOCK_SIZE');
  else t.is(info.exports[0]!.block_size_maximum, 64 * MiB);
});

test.serial('over the maximum: a 65 MiB WRITE is drained and refused, a 65 MiB READ refused, the connection still works; a WRITE over 128 MiB ends it', async (t) => {
  t.timeout(120_000);
  const d = await daemon(t, { stripes: 2 });
  const c = await RawConn.open(d.sock);
  t.teardown(() => c.destroy());
  await handshake(c, d.name);
  await c.write(Buffer.concat([request(CMD_WRITE, 1n, 0, 65 * MiB), Buffer.alloc(65 * MiB, 0xee)]));
  const w = await readSimpleReply(c, 30_000);
  t.is(w.cookie, 1n);
  if (isNbdkit) noteSkipped(t, 'EINVAL for 65 MiB', `nbdkit answers ${w.error}`);
  else t.is(w.error, 22, 'EINVAL after the payload was read and dropped');
  await c.write(request(CMD_READ, 2n, 0, 65 * MiB));
  const rd = await readSimpleReply(c, 30_000);
  t.is(rd.cookie, 2n);
  t.not(rd.error, 0, 'a READ over the maximum fails');
  const data = await readAt(c, 0, 4096, 3n);
  t.true(data.equals(Buffer.alloc(4096)), 'nothing of the refused WRITE landed');
  const c2 = await RawConn.open(d.sock);
  t.teardown(() => c2.destroy());
  await handshake(c2, d.name);
  await c2.write(request(CMD_WRITE, 4n, 0, 129 * MiB));
  void c2.write(Buffer.alloc(4 * MiB));
  t.true(await c2.waitClosed(20_000), 'a WRITE over 128 MiB cannot be skipped cheaply: the connection ends');
  t.true((await readAt(c, 4096, 4096, 5n)).equals(Buffer.alloc(4096)), 'the first connection still works');
});
