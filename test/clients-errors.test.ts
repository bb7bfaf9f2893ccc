// Error replies, checked with nbdsh (libnbd in non-strict mode so that every request reaches the
// server): out-of-range requests, unknown flags, read-only exports, oversize payloads,
// BLOCK_STATUS without a meta context. After each error the same connection must still work.

import test from 'ava';
import { writeFileSync } from 'node:fs';
import { startDaemon, isNbdkit, type Daemon } from './helpers/daemon.js';
import { needTools, skipSuffix, nbdshJson, noteSkipped } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');
const t_ = why ? test.serial.skip : test.serial;
const SIZE = 64 * 1024 * 1024;
let rw: Daemon | undefined;
let ro: Daemon | undefined;

test.before(async () => {
  if (why) return;
  rw = await startDaemon({ name: 'vol-err', originSize: SIZE });
  // Read-only export over an origin with known contents: 0x5a in the first MiB.
  ro = await startDaemon({
    name: 'vol-ro', originSize: SIZE, readOnly: true,
    prepareOrigin: (origin) => writeFileSync(origin, Buffer.alloc(1 << 20, 0x5a), { flag: 'r+' }),
  });
});
test.after.always(async () => {
  await rw?.dispose();
  await ro?.dispose();
});

/** Python prelude: a non-strict handle `h` connected to URI; `tryit` → "OK" or [errno, message]. */
function script(uri: string, body: string): string {
  return `
import json, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(${JSON.stringify(uri)})
size = h.get_size()
def tryit(f, *a, **kw):
    try:
        f(*a, **kw)
        return "OK"
    except nbd.Error as e:
        return [e.errno, e.string]
def works():
    h.pwrite(b"\\x11" * 4096, 8192) if not h.is_read_only() else None
    d = h.pread(4096, 8192)
    return "OK" if len(d) == 4096 else "short"
res = {}
${body}
print(json.dumps(res))
`;
}

type Res = Record<string, 'OK' | [string, string] | unknown>;

/** Assert an error reply with this errno that really came from the server ("command failed"). */
function isErr(t: import('ava').ExecutionContext, v: unknown, errno: string, what: string): void {
  t.true(Array.isArray(v), `${what}: expected ${errno}, got ${JSON.stringify(v)}`);
  if (!Array.isArray(v)) return;
  t.is(v[0], errno, `${what}: ${JSON.stringify(v)}`);
  t.regex(String(v[1]), /command failed/, `${what}: error must come from the server: ${v[1]}`);
}

t_(`read / trim / cache past the end → EINVAL; write / write-zeroes past the end → ENOSPC${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(script(rw!.uri, `
res["read_past_end"] = tryit(h.pread, 4096, size - 2048)
res["read_at_end"] = tryit(h.pread, 1, size)
res["read_huge_offset"] = tryit(h.pread, 512, 2**63 - 512)
res["ok1"] = works()
res["write_past_end"] = tryit(h.pwrite, b"x" * 4096, size - 2048)
res["write_huge_offset"] = tryit(h.pwrite, b"x" * 512, 2**64 - 256)
res["ok2"] = works()
res["zero_past_end"] = tryit(h.zero, 4096, size - 2048)
res["zero_past_end_nohole"] = tryit(h.zero, 4096, size - 2048, flags=nbd.CMD_FLAG_NO_HOLE)
res["ok3"] = works()
res["trim_past_end"] = tryit(h.trim, 4096, size - 2048)
res["cache_past_end"] = tryit(h.cache, 4096, size - 2048)
res["ok4"] = works()
res["last_byte"] = tryit(h.pread, 1, size - 1)
res["write_last_byte"] = tryit(h.pwrite, b"z", size - 1)
`));
  isErr(t, r.read_past_end, 'EINVAL', 'read past end');
  isErr(t, r.read_at_end, 'EINVAL', 'read at offset == size');
  isErr(t, r.read_huge_offset, 'EINVAL', 'read at 2^63-512');
  isErr(t, r.write_past_end, 'ENOSPC', 'write past end');
  t.true(Array.isArray(r.write_huge_offset) && ['ENOSPC', 'EINVAL'].includes((r.write_huge_offset as string[])[0]!),
    `write at 2^64-256 (offset+length wraps): ${JSON.stringify(r.write_huge_offset)}`);
  isErr(t, r.zero_past_end, 'ENOSPC', 'write-zeroes past end');
  isErr(t, r.zero_past_end_nohole, 'ENOSPC', 'write-zeroes NO_HOLE past end');
  isErr(t, r.trim_past_end, 'EINVAL', 'trim past end');
  isErr(t, r.cache_past_end, 'EINVAL', 'cache past end');
  t.is(r.last_byte, 'OK');
  t.is(r.write_last_byte, 'OK');
  for (const k of ['ok1', 'ok2', 'ok3', 'ok4']) t.is(r[k], 'OK', `connection still works (${k})`);
});

t_(`unknown command flag → EINVAL, connection still works${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(script(rw!.uri, `
res["read_flag_0x200"] = tryit(h.pread, 512, 0, flags=0x200)
res["write_flag_0x8000"] = tryit(h.pwrite, b"q" * 512, 0, flags=0x8000)
res["flush_flag_0x40"] = tryit(h.flush, flags=0x40)
res["ok"] = works()
`));
  isErr(t, r.read_flag_0x200, 'EINVAL', 'READ with flag 0x200');
  isErr(t, r.write_flag_0x8000, 'EINVAL', 'WRITE with flag 0x8000');
  isErr(t, r.flush_flag_0x40, 'EINVAL', 'FLUSH with flag 0x40');
  t.is(r.ok, 'OK');
});

t_(`zero-length requests get a reply (success or error) and never drop the connection${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(script(rw!.uri, `
res["read0"] = tryit(h.pread, 0, 0)
res["write0"] = tryit(h.pwrite, b"", 0)
res["trim0"] = tryit(h.trim, 0, 0)
res["zero0"] = tryit(h.zero, 0, 0)
res["ok"] = works()
`));
  for (const k of ['read0', 'write0', 'trim0', 'zero0']) {
    const v = r[k];
    t.true(v === 'OK' || (Array.isArray(v) && /command failed/.test(String(v[1]))), `${k}: ${JSON.stringify(v)}`);
  }
  t.is(r.ok, 'OK');
});

t_(`64 MiB WRITE and READ (the advertised maximum) are served, simple and structured; the connection still works${skipSuffix(why)}`, async (t) => {
  // Requests over 64 MiB cannot be sent through libnbd; test/clients-bigreq.test.ts sends them raw.
  const r = await nbdshJson<Res>(script(rw!.uri, `
big = bytes(range(256)) * (64 * 1024 * 4)
res["write64"] = tryit(h.pwrite, big, 0)
res["read64"] = "OK" if h.pread(64 * 1024 * 1024, 0) == big else "mismatch"
h2 = nbd.NBD()
h2.set_strict_mode(0)
h2.set_request_structured_replies(False)
h2.connect_uri(${JSON.stringify(rw!.uri)})
res["simple"] = "OK" if h2.pread(64 * 1024 * 1024, 0) == big else "mismatch"
res["ok1"] = works()
res["write33"] = tryit(h.pwrite, b"\\x42" * (33 * 1024 * 1024), 4096)
res["read33"] = "OK" if h.pread(33 * 1024 * 1024, 4096) == b"\\x42" * (33 * 1024 * 1024) else "mismatch"
res["ok2"] = works()
`));
  t.is(r.write64, 'OK', '64 MiB WRITE accepted');
  t.is(r.read64, 'OK', '64 MiB READ (structured replies) returns the data');
  t.is(r.simple, 'OK', '64 MiB READ (simple replies) returns the data');
  t.is(r.ok1, 'OK', 'connection works after the 64 MiB requests');
  t.is(r.write33, 'OK', '33 MiB WRITE accepted');
  t.is(r.read33, 'OK', '33 MiB READ returns the data');
  t.is(r.ok2, 'OK');
});

t_(`BLOCK_STATUS without a negotiated meta context → EINVAL${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(`
import json, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(${JSON.stringify(rw!.uri)})
res = {}
try:
    h.block_status(65536, 0, lambda *a: 0)
    res["bs"] = "OK"
except nbd.Error as e:
    res["bs"] = [e.errno, e.string]
res["ok"] = "OK" if len(h.pread(512, 0)) == 512 else "short"
print(json.dumps(res))
`);
  isErr(t, r.bs, 'EINVAL', 'BLOCK_STATUS without meta context');
  t.is(r.ok, 'OK');
});

t_(`valid commands succeed: FUA write, FLUSH, CACHE, NO_HOLE zeroes, FAST_ZERO is OK or ENOTSUP${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(script(rw!.uri, `
res["fua"] = tryit(h.pwrite, b"\\x77" * 65536, 1 << 20, flags=nbd.CMD_FLAG_FUA)
res["flush"] = tryit(h.flush)
res["cache"] = tryit(h.cache, 1 << 20, 0)
res["nohole"] = tryit(h.zero, 65536, 1 << 20, flags=nbd.CMD_FLAG_NO_HOLE)
res["nohole_reads_zero"] = h.pread(65536, 1 << 20) == bytes(65536)
res["fast_zero"] = tryit(h.zero, 65536, 2 << 20, flags=nbd.CMD_FLAG_FAST_ZERO) if h.can_fast_zero() else "not advertised"
res["zero_fua"] = tryit(h.zero, 4096, 3 << 20, flags=nbd.CMD_FLAG_FUA)
res["trim_fua"] = tryit(h.trim, 4096, 3 << 20, flags=nbd.CMD_FLAG_FUA)
res["ok"] = works()
`));
  for (const k of ['fua', 'flush', 'cache', 'nohole', 'zero_fua', 'trim_fua', 'ok']) t.is(r[k], 'OK', `${k}: ${JSON.stringify(r[k])}`);
  t.true(r.nohole_reads_zero, 'WRITE_ZEROES reads back as zeroes');
  const fz = r.fast_zero;
  if (fz === 'not advertised') {
    if (isNbdkit) noteSkipped(t, 'FAST_ZERO', 'not advertised by nbdkit file');
    else t.fail('pcached must advertise FAST_ZERO');
  } else {
    t.true(fz === 'OK' || (Array.isArray(fz) && fz[0] === 'ENOTSUP'), `FAST_ZERO: ${JSON.stringify(fz)}`);
  }
});

t_(`read-only export: WRITE, FUA WRITE, TRIM, WRITE_ZEROES → EPERM; reads work${skipSuffix(why)}`, async (t) => {
  const r = await nbdshJson<Res>(script(ro!.uri, `
res["ro"] = h.is_read_only()
res["write"] = tryit(h.pwrite, b"w" * 4096, 0)
res["write_fua"] = tryit(h.pwrite, b"w" * 4096, 0, flags=nbd.CMD_FLAG_FUA)
res["trim"] = tryit(h.trim, 4096, 0)
res["zero"] = tryit(h.zero, 4096, 0)
res["zero_nohole"] = tryit(h.zero, 4096, 0, flags=nbd.CMD_FLAG_NO_HOLE)
res["write_past_end"] = tryit(h.pwrite, b"w" * 4096, size - 100)
res["data_intact"] = h.pread(1 << 20, 0) == b"\\x5a" * (1 << 20)
res["ok"] = works()
`));
  t.truthy(r.ro, 'export advertises READ_ONLY');
  for (const k of ['write', 'write_fua', 'trim', 'zero', 'zero_nohole']) isErr(t, r[k], 'EPERM', k);
  isErr(t, r.write_past_end, 'EPERM', 'write past end on a read-only export (EPERM is checked first)');
  t.true(r.data_intact, 'origin data unchanged and readable');
  t.is(r.ok, 'OK');
  t.true(rw!.alive() && ro!.alive(), `${rw!.stderr()}\n${ro!.stderr()}`);
});
