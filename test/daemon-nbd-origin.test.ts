// pcached caching an NBD origin served by nbdkit, through the real daemon: data round trips and is
// visible on the origin; the origin going away and coming back on the same socket (reconnect with
// back-off); gone longer than originTimeoutMs → EIO, not a hang, and service resumes; the delay
// and error filters. (nbdkit 1.32 may crash on abrupt hang-ups: it is not used as an oracle there.)

import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir } from './helpers/daemon.js';
import { killPid, sleep, spawnPcached, statusJson, waitAccepting, waitFor, writeConfig, type Proc } from './helpers/lifecycle.js';
import { startNbdkit, type NbdkitServer } from './helpers/nbdkit.js';
import { describe, needTools, nbdsh, skipSuffix, type RunResult } from './helpers/tools.js';

const why = needTools('nbdkit', 'nbdsh', 'python3-nbd');
const t_ = why ? test.skip : test;

interface Setup {
  dir: string;
  nbdkitSock: string;
  pcached: Proc;
  uri: string;
  control: string;
  /** The current nbdkit (replaced by restartNbdkit). */
  nbdkit: NbdkitServer;
  restartNbdkit(): Promise<NbdkitServer>;
}

/** nbdkit ARGS on a socket in a fresh dir, then pcached with that as its origin (config file). */
async function setup(t: ExecutionContext, nbdkitArgs: string[], cache: Record<string, unknown> = {}): Promise<Setup> {
  const dir = freshDir();
  const nbdkitSock = join(dir, 'nbdkit.sock');
  const servers: NbdkitServer[] = [];
  let pcached: Proc | undefined;
  let coord = 0;
  t.teardown(async () => {
    await pcached?.stop('SIGTERM');
    killPid(coord);
    for (const s of servers) await s.kill();
    rmSync(dir, { recursive: true, force: true });
  });
  servers.push(await startNbdkit(nbdkitSock, nbdkitArgs));
  const sock = join(dir, 'nbd.sock');
  const control = join(dir, 'control.sock');
  const file = join(dir, 'pcached.json');
  writeConfig(file, {
    control, logLevel: 'info',
    caches: [{ name: 'vol', origin: `nbd+unix:///?socket=${nbdkitSock}`, cache: join(dir, 'cache.img'), cacheSize: '16MiB', unix: sock, stripes: 2, ...cache }],
  });
  pcached = spawnPcached(['--config', file], { cwd: dir });
  await waitAccepting(sock, pcached, 60_000);
  coord = (await statusJson(control)).caches[0]!.pid;
  const s: Setup = {
    dir, nbdkitSock, pcached, control, uri: `nbd+unix:///vol?socket=${sock}`,
    nbdkit: servers[0]!,
    async restartNbdkit() {
      // A SIGKILLed nbdkit leaves its socket file; nbdkit will not bind over it.
      rmSync(nbdkitSock, { force: true });
      const n = await startNbdkit(nbdkitSock, nbdkitArgs);
      servers.push(n);
      s.nbdkit = n;
      return n;
    },
  };
  return s;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** sha256 of LEN bytes at OFF read through `uri` (one request per MiB). */
function readHash(uri: string, off: number, len: number, timeoutMs = 60_000): Promise<RunResult> {
  return nbdsh(`
import hashlib
m = hashlib.sha256()
for o in range(${off}, ${off + len}, 1 << 20):
    m.update(h.pread(min(1 << 20, ${off + len} - o), o))
print('sha', m.hexdigest())
`, { uri, timeoutMs });
}
const hashOf = (r: RunResult): string | undefined => /^sha ([0-9a-f]{64})$/m.exec(r.stdout)?.[1];

/** Write `data` at `off` through `uri` and flush. */
async function writeData(uri: string, off: number, data: Buffer): Promise<void> {
  const r = await nbdsh(`
import sys
data = sys.stdin.buffer.read()
h.pwrite(data, ${off})
h.flush()
print('ok')
`, { uri, input: data, timeoutMs: 60_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`write failed: ${describe(r)}`);
}

/** The origin's content of the range once writeback has brought `data` there (or the last read after 30 s). */
async function waitForOrigin(uri: string, off: number, data: Buffer): Promise<RunResult> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await readHash(uri, off, data.length);
    if (hashOf(r) === sha(data) || Date.now() > deadline) return r;
    await new Promise((res) => setTimeout(res, 250));
  }
}

t_('memory origin: data written through pcached is on nbdkit and reads back' + skipSuffix(why), async (t) => {
  const s = await setup(t, ['memory', '64M']);
  const data = randomBytes(3 << 20);
  // Crosses a 4 MiB subtree boundary, so two stripes (two origin connections) take part.
  const off = (4 << 20) - (1 << 20) - 512;
  await writeData(s.uri, off, data);
  const via = await readHash(s.uri, off, data.length);
  t.is(hashOf(via), sha(data), describe(via));
  // Write-back: the writeback worker carries it to the origin shortly after the FLUSH.
  const direct = await waitForOrigin(s.nbdkit.uri, off, data);
  t.is(hashOf(direct), sha(data), describe(direct));
  const st = (await statusJson(s.control)).caches[0]!;
  t.true(st.origin.includes(s.nbdkitSock), st.origin);
  t.is(st.originSize, 64 << 20);
  t.is(await s.pcached.stop('SIGTERM'), 0, s.pcached.output());
});

t_('file origin killed (a read pending) and restarted on the same socket: the read completes, I/O goes on' + skipSuffix(why), async (t) => {
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'seed.img');
  const seed = randomBytes(8 << 20);
  writeFileSync(file, seed);
  const s = await setup(t, ['file', file], { originTimeoutMs: 60_000 });
  const first = await readHash(s.uri, 0, seed.length);
  t.is(hashOf(first), sha(seed), describe(first));

  await s.nbdkit.kill();
  const pending = readHash(s.uri, 2 << 20, 4 << 20);
  await sleep(500);
  await s.restartNbdkit();
  const r = await pending;
  t.is(r.code, 0, describe(r));
  t.is(hashOf(r), sha(seed.subarray(2 << 20, 6 << 20)));

  // Again, this time with nothing in flight when it dies; and writes after it is back.
  await s.nbdkit.kill();
  await s.restartNbdkit();
  const data = randomBytes(1 << 20);
  await writeData(s.uri, 5 << 20, data);
  const direct = await waitForOrigin(s.nbdkit.uri, 5 << 20, data);
  t.is(hashOf(direct), sha(data), describe(direct));
  t.true(s.pcached.alive());
  t.regex(s.pcached.output(), /connection lost|reconnect/i);
  t.is(await s.pcached.stop('SIGTERM'), 0);
});

t_('origin gone longer than originTimeoutMs: reads fail with EIO (no hang); back again, pcached serves' + skipSuffix(why), async (t) => {
  const dir = freshDir();
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'seed.img');
  const seed = randomBytes(4 << 20);
  writeFileSync(file, seed);
  const s = await setup(t, ['file', file], { originTimeoutMs: 1000 });
  t.is(hashOf(await readHash(s.uri, 0, 1 << 20)), sha(seed.subarray(0, 1 << 20)));

  await s.nbdkit.kill();
  const eioBefore = (await statusJson(s.control)).caches[0]!.stats.err_eio ?? 0;
  // A block the cache has never seen (the first read promoted [0, 1 MiB)): only the origin has it.
  const r = await nbdsh(`
try:
    h.pread(4096, ${3 << 20})
    print('read succeeded')
except nbd.Error as e:
    print('errno', e.errnum, e.string)
`, { uri: s.uri, timeoutMs: 60_000 });
  t.false(r.timedOut, 'the read returned rather than hanging');
  t.regex(r.stdout, /errno 5 /, describe(r));
  t.regex(r.stdout, /Input\/output error/);
  t.true(s.pcached.alive());
  const st = (await statusJson(s.control)).caches[0]!;
  t.is(st.state, 'running');
  t.true((st.stats.err_eio ?? 0) > eioBefore);

  await s.restartNbdkit();
  const back = await waitFor('reads through pcached to work again', async () => {
    const x = await readHash(s.uri, 1 << 20, 2 << 20);
    return hashOf(x);
  }, 30_000, 250);
  t.is(back, sha(seed.subarray(1 << 20, 3 << 20)));
  t.is(await s.pcached.stop('SIGTERM'), 0);
});

t_('delay filter origin (delay-read=5ms): slow but correct' + skipSuffix(why), async (t) => {
  const s = await setup(t, ['--filter=delay', 'memory', '16M', 'delay-read=5ms']);
  const data = randomBytes(2 << 20);
  await writeData(s.uri, 1 << 20, data);
  const r = await nbdsh(`
import hashlib
m = hashlib.sha256()
for o in range(${1 << 20}, ${3 << 20}, 65536):
    m.update(h.pread(65536, o))
print('sha', m.hexdigest())
`, { uri: s.uri, timeoutMs: 60_000 });
  t.is(hashOf(r), sha(data), describe(r));
  t.is(await s.pcached.stop('SIGTERM'), 0);
});

t_('error filter origin (error-pread-rate=100%): reads get EIO, writes work, the daemon stays up' + skipSuffix(why), async (t) => {
  const s = await setup(t, ['--filter=error', 'memory', '16M', 'error-pread-rate=100%']);
  const r = await nbdsh(`
out = []
for i in range(3):
    try:
        h.pread(4096, i * 4096)
        out.append('ok')
    except nbd.Error as e:
        out.append(str(e.errnum))
h.pwrite(b'x' * 4096, 0)
h.flush()
print('result', ' '.join(out))
`, { uri: s.uri, timeoutMs: 60_000 });
  t.regex(r.stdout, /^result 5 5 5$/m, describe(r));
  t.true(s.pcached.alive());
  const st = (await statusJson(s.control)).caches[0]!;
  t.is(st.state, 'running');
  t.is(st.restarts, 0);
  t.true((st.stats.err_eio ?? 0) >= 3, JSON.stringify(st.stats));
  t.is(await s.pcached.stop('SIGTERM'), 0);
});
