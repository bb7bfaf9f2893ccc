// Multi-connection consistency (write on one connection, FLUSH on another, read on a third) and
// BLOCK_STATUS (base:allocation) over a sparse file origin, seen through nbdinfo --map.

import test from 'ava';
import { startDaemon, type Daemon } from './helpers/daemon.js';
import { needTools, skipSuffix, nbdshJson, runOk } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd', 'nbdinfo');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 64 * 1024 * 1024;
const MiB = 1024 * 1024;
let d: Daemon | undefined;

test.before(async () => {
  if (!why) d = await startDaemon({ name: 'vol-mc', originSize: SIZE });
});
test.after.always(async () => {
  await d?.dispose();
});

t_(`multi-conn: write on connection 1, FLUSH on connection 2, read on connection 3 sees it${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Record<string, unknown>>(`
import json, nbd, os
uri = ${JSON.stringify(d!.uri)}
hs = []
for i in range(3):
    x = nbd.NBD()
    x.connect_uri(uri)
    hs.append(x)
res = {"multi_conn": [x.can_multi_conn() for x in hs], "rounds": 0, "bad": []}
for i in range(40):
    a, b, c = hs[i % 3], hs[(i + 1) % 3], hs[(i + 2) % 3]
    off = (i * 1234567) % (${SIZE} - 65536)
    data = os.urandom(4096 + i * 512)
    a.pwrite(data, off)
    b.flush()
    if c.pread(len(data), off) != data:
        res["bad"].append(i)
    res["rounds"] += 1
# FUA on one connection, read on the others without any FLUSH.
data = os.urandom(65536)
hs[0].pwrite(data, 3 << 20, flags=nbd.CMD_FLAG_FUA)
res["fua_seen"] = [x.pread(65536, 3 << 20) == data for x in hs[1:]]
# Zeroes on one connection + FLUSH elsewhere.
hs[1].zero(65536, 3 << 20)
hs[2].flush()
res["zero_seen"] = hs[0].pread(65536, 3 << 20) == bytes(65536)
for x in hs:
    x.shutdown()
print(json.dumps(res))
`);
  t.deepEqual(r.multi_conn, [true, true, true], 'CAN_MULTI_CONN advertised');
  t.is(r.rounds, 40);
  t.deepEqual(r.bad, [], 'rounds where connection 3 did not see connection 1\'s flushed write');
  t.deepEqual(r.fua_seen, [true, true]);
  t.true(r.zero_seen);
});

t_(`multi-conn with requests in flight: 4 connections × 16 aio writes, FLUSH, cross-read${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Record<string, unknown>>(`
import json, nbd, os
uri = ${JSON.stringify(d!.uri)}
hs = []
for i in range(4):
    x = nbd.NBD()
    x.connect_uri(uri)
    hs.append(x)
blocks = {}
for ci, x in enumerate(hs):
    for k in range(16):
        off = (8 << 20) + (ci * 16 + k) * 65536
        data = os.urandom(65536)
        blocks[off] = data
        x.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)
for x in hs:
    while x.aio_in_flight() > 0:
        x.poll(-1)
hs[3].flush()
bad = [off for off, data in blocks.items() if hs[(off >> 16) % 4].pread(65536, off) != data]
for x in hs:
    x.shutdown()
print(json.dumps({"bad": bad, "n": len(blocks)}))
`);
  t.is(r.n, 64);
  t.deepEqual(r.bad, []);
});

interface MapEntry { offset: number; length: number; type: number; description: string }

async function map(): Promise<MapEntry[]> {
  const r = await runOk('nbdinfo', ['--map', '--json', d!.uri], { timeoutMs: 30_000 });
  return JSON.parse(r.stdout) as MapEntry[];
}

/** The allocation type covering [off, off+len) when uniform, else 'mixed'. */
function typeOf(m: MapEntry[], off: number, len: number): number | 'mixed' {
  const types = new Set<number>();
  for (const e of m) {
    if (e.offset + e.length <= off || e.offset >= off + len) continue;
    types.add(e.type);
  }
  return types.size === 1 ? [...types][0]! : 'mixed';
}

t_(`block status: data after writes, a hole after TRIM and after WRITE_ZEROES on a sparse origin${skipSuffix(why)}`, async (t) => {
  const base = 32 * MiB;
  await nbdshJson(`
import json
h.pwrite(b"\\xee" * (4 << 20), ${base})
h.flush()
print(json.dumps("ok"))
`, { uri: d!.uri });
  let m = await map();
  t.log(`map after writes: ${JSON.stringify(m.filter((e) => e.offset + e.length > base && e.offset < base + 4 * MiB))}`);
  t.is(typeOf(m, base, 4 * MiB), 0, 'written range is data');
  // [52M, 60M) is never written by any test in this file.
  t.true([1, 3].includes(typeOf(m, 52 * MiB, 8 * MiB) as number), 'never-written range of the sparse origin is a hole');

  await nbdshJson(`
import json
h.trim(1 << 20, ${base + MiB})
h.zero(1 << 20, ${base + 2 * MiB})
h.flush()
print(json.dumps("ok"))
`, { uri: d!.uri });
  m = await map();
  const near = m.filter((e) => e.offset + e.length > base && e.offset < base + 4 * MiB);
  t.log(`map after TRIM [+1M,+2M) and WRITE_ZEROES [+2M,+3M): ${JSON.stringify(near)}`);
  t.is(typeOf(m, base, MiB), 0, 'untouched first MiB is still data');
  t.true([1, 3].includes(typeOf(m, base + MiB, MiB) as number), 'trimmed MiB is reported as a hole');
  t.is(typeOf(m, base + 2 * MiB, MiB), 3, 'zeroed MiB (no NO_HOLE) is reported as hole,zero');
  t.is(typeOf(m, base + 3 * MiB, MiB), 0, 'last MiB still data');
  // Content: zeroed range reads back as zeroes, the rest unchanged.
  const c = await nbdshJson<Record<string, boolean>>(`
import json
print(json.dumps({"zero": h.pread(1 << 20, ${base + 2 * MiB}) == bytes(1 << 20),
                  "data": h.pread(1 << 20, ${base + 3 * MiB}) == b"\\xee" * (1 << 20)}))
`, { uri: d!.uri });
  t.deepEqual(c, { zero: true, data: true });
});

t_(`block status with REQ_ONE and over the whole export${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Record<string, unknown>>(`
import json, nbd
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(${JSON.stringify(d!.uri)})
size = h.get_size()
out = {}
def cb(name, offset, entries, err):
    out.setdefault("calls", []).append({"ctx": name, "offset": offset, "n": len(entries) // 2,
        "lens": entries[0::2][:8], "total": sum(entries[0::2])})
    return 0
h.block_status(size, 0, cb)
whole = out.pop("calls")
h.block_status(size, 0, cb, flags=nbd.CMD_FLAG_REQ_ONE)
one = out.pop("calls")
print(json.dumps({"whole": whole, "one": one, "size": size}))
`);
  const whole = r.whole as Array<{ ctx: string; n: number; lens: number[]; total: number }>;
  const one = r.one as Array<{ ctx: string; n: number; lens: number[]; total: number }>;
  t.is(whole.length, 1, 'exactly one chunk per selected context');
  t.is(whole[0]!.ctx, 'base:allocation');
  t.true(whole[0]!.n >= 1 && whole[0]!.lens.every((l) => l > 0), 'extents non-empty');
  t.is(one.length, 1);
  t.is(one[0]!.n, 1, 'REQ_ONE gives exactly one extent');
  t.true(one[0]!.total <= (r.size as number));
  t.true(d!.alive(), d!.stderr());
});
