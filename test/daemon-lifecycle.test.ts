// The daemon's process lifecycle, through the real `pcached start`: a coordinator killed with
// SIGKILL is restarted by the supervisor; kill -9 of everything leaves socket files that the next
// start replaces; a live socket is never stolen; a coordinator whose supervisor died exits by
// itself; SIGTERM with a client writing drains and keeps every acknowledged write.

import test, { type ExecutionContext } from 'ava';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freshDir, makeSparseFile, startDaemon, type Daemon } from './helpers/daemon.js';
import {
  BLOCK, checkWriterResult, coordinatorPid, killPid, pidRunning, socketAccepts, spawnPcached, startWriter, statusJson, waitFor, within, writeRead,
} from './helpers/lifecycle.js';
import { describe, needTools, nbdsh, skipSuffix } from './helpers/tools.js';

const why = needTools('nbdsh', 'python3-nbd');
// Independent scenarios, each in its own temp dir: they may run concurrently.
const t_ = why ? test.skip : test;


async function readByte(uri: string, offset: number): Promise<number> {
  const r = await nbdsh(`print('byte', h.pread(1, ${offset})[0])`, { uri, timeoutMs: 30_000 });
  const m = /byte (\d+)/.exec(r.stdout);
  if (r.code !== 0 || !m) throw new Error(`read through ${uri} failed: ${describe(r)}`);
  return Number(m[1]);
}

t_('a coordinator killed with SIGKILL is restarted by the supervisor and serves again' + skipSuffix(why), async (t) => {
  const d = await startDaemon();
  const pids: number[] = [];
  t.teardown(async () => {
    await d.dispose();
    for (const p of pids) killPid(p);
  });
  await writeRead(d.uri, 0, 0x11);
  const before = (await statusJson(d.control)).caches[0]!;
  t.is(before.restarts, 0);
  t.is(before.state, 'running');
  const oldPid = before.pid;
  pids.push(oldPid);
  t.true(oldPid > 0 && oldPid !== d.pid);

  process.kill(oldPid, 'SIGKILL');
  const after = await waitFor('a restarted coordinator', async () => {
    const c = (await statusJson(d.control)).caches[0]!;
    return c.state === 'running' && c.pid !== oldPid && c.pid > 0 ? c : undefined;
  }, 30_000, 200);
  pids.push(after.pid);
  t.is(after.restarts, 1);
  t.false(pidRunning(oldPid));
  t.true(d.alive(), 'the supervisor survives');
  t.true(pidRunning(d.pid));

  // The data written before the crash is on the origin, and new I/O works.
  t.is(await readByte(d.uri, 0), 0x11);
  await writeRead(d.uri, 1 << 20, 0x22);
  // Write-back: the writeback worker carries it to the origin shortly after the FLUSH.
  await waitFor('writeback to reach the origin', () => readFileSync(d.origin!).subarray(1 << 20, (1 << 20) + 4096).every((b) => b === 0x22), 30_000, 100);
  t.regex(d.stderr(), /killed by SIGKILL; restarting in \d+ ms/);

  // Once more: restarts counts up (the back-off doubles, still well under a second here).
  process.kill(after.pid, 'SIGKILL');
  const again = await waitFor('a second restart', async () => {
    const c = (await statusJson(d.control)).caches[0]!;
    return c.state === 'running' && c.pid !== after.pid && c.pid > 0 ? c : undefined;
  }, 30_000, 200);
  pids.push(again.pid);
  t.is(again.restarts, 2);
  t.is(await readByte(d.uri, 1 << 20), 0x22);
  t.is(await d.stop(), 0);
});

t_('kill -9 of supervisor and coordinator: a restart with the same arguments replaces the stale sockets' + skipSuffix(why), async (t) => {
  const dir = freshDir();
  const daemons: Daemon[] = [];
  const pids: number[] = [];
  t.teardown(async () => {
    for (const x of daemons.reverse()) await x.dispose();
    for (const p of pids) killPid(p);
    rmSync(dir, { recursive: true, force: true });
  });
  const first = await startDaemon({ dir });
  daemons.push(first);
  await writeRead(first.uri, 8192, 0x5a);
  const coord = await coordinatorPid(first.control);
  pids.push(coord);
  // Both at once: nobody gets to clean up.
  process.kill(coord, 'SIGKILL');
  t.is(await first.kill9(), 128 + 9);
  await waitFor('the coordinator to be gone', () => !pidRunning(coord), 10_000, 50);
  t.true(existsSync(first.sock), 'the NBD socket file is left behind');
  t.true(existsSync(first.control), 'the control socket file is left behind');
  // The listening fd goes away with the last thread of the killed process.
  await waitFor('the stale NBD socket to refuse connections', async () => !(await socketAccepts(first.sock)), 10_000, 50);

  const second = await startDaemon({ dir, originFile: first.origin });
  daemons.push(second);
  t.is(second.sock, first.sock);
  t.is(await readByte(second.uri, 8192), 0x5a);
  await writeRead(second.uri, 12288, 0x6b);
  const st = await statusJson(second.control);
  t.is(st.caches[0]!.restarts, 0);
  pids.push(st.caches[0]!.pid);
  t.is(await second.stop(), 0);
  t.false(existsSync(second.sock), 'a graceful stop removes the NBD socket');
  t.false(existsSync(second.control), 'a graceful stop removes the control socket');
});

/** Starts a first daemon and a second one that collides with it on `collide`; returns both. */
async function collide(t: ExecutionContext, collideOn: 'nbd' | 'control') {
  const d = await startDaemon();
  const other = freshDir();
  const coord = await coordinatorPid(d.control);
  t.teardown(async () => {
    await d.dispose();
    killPid(coord);
    rmSync(other, { recursive: true, force: true });
  });
  // An origin of its own: the first daemon holds its origin locked, which would be refused first.
  const origin = join(other, 'origin.img');
  makeSparseFile(origin, 64 << 20);
  const args = ['--origin', origin, '--cache', join(other, 'cache.img'), '--cache-size', '64M', '--tcp', '', '--name', 'vol', '--stripes', '1',
    '--unix', collideOn === 'nbd' ? d.sock : join(other, 'nbd.sock'),
    '--control', collideOn === 'control' ? d.control : join(other, 'control.sock'),
    '--log-level', 'warn'];
  const second = spawnPcached(args, { cwd: other });
  t.teardown(() => second.stop('SIGKILL').then(() => undefined));
  const code = await within(second.exited, 60_000, -1);
  return { d, second, code, other };
}

t_('a second daemon on a live NBD socket fails with a clear error and exit 1; the first keeps serving' + skipSuffix(why), async (t) => {
  const { d, second, code } = await collide(t, 'nbd');
  t.is(code, 1, second.output());
  t.regex(second.output(), new RegExp(`pcached: cache "vol": ${d.sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use by a running process`));
  t.true(d.alive());
  t.is((await statusJson(d.control)).caches[0]!.state, 'running');
});

t_('a second daemon refused on a live NBD socket must not remove that socket file' + skipSuffix(why), async (t) => {
  // Observed: the refused coordinator's Coordinator.shutdown() unlinks cache.unix although it never
  // listened there; the first daemon keeps its listening fd but no new client can connect.
  const { d, code } = await collide(t, 'nbd');
  t.is(code, 1);
  t.true(existsSync(d.sock), `${d.sock} still exists`);
  await writeRead(d.uri, 0, 0x33);
});

t_('a second daemon on a live control socket fails with a clear error and exit 1; the first keeps serving' + skipSuffix(why), async (t) => {
  const { d, second, code, other } = await collide(t, 'control');
  t.is(code, 1, second.output());
  t.regex(second.output(), /pcached: .*control\.sock is in use by a running process/);
  t.false(existsSync(join(other, 'nbd.sock')));
  t.true(d.alive());
  t.true(existsSync(d.control));
  t.is((await statusJson(d.control)).caches[0]!.state, 'running');
  await writeRead(d.uri, 0, 0x44);
});

t_('supervisor killed with SIGKILL: the coordinator notices and exits by itself' + skipSuffix(why), async (t) => {
  const d = await startDaemon();
  const coord = await coordinatorPid(d.control);
  t.teardown(async () => {
    killPid(coord);
    await d.dispose();
  });
  t.true(pidRunning(coord));
  t.is(await d.kill9(), 128 + 9);
  await waitFor(`coordinator ${coord} to exit after its supervisor died`, () => !pidRunning(coord), 15_000, 100);
  t.false(existsSync(d.sock), 'the orphaned coordinator removed its NBD socket on the way out');
  t.false(await socketAccepts(d.sock));
});

t_('SIGTERM while a client writes (pass-through): exit 0, every acknowledged write is on the origin' + skipSuffix(why), async (t) => {
  // Pass-through writes straight to the origin; the write-back version of this guarantee (acked
  // data served after the restart) is in cache-daemon.test.ts.
  const d = await startDaemon({ originSize: 16 << 20, extraArgs: ['--mode', 'passthrough'] });
  const coord = await coordinatorPid(d.control);
  const blocks = (16 << 20) / BLOCK;
  const writer = startWriter(d.uri, blocks);
  t.teardown(async () => {
    await writer.stop('SIGKILL');
    killPid(coord);
    await d.dispose();
  });
  // Past one pass over the volume, so that overwrites are checked too.
  await waitFor('the writer to get 300 acknowledgements', () => writer.acked().length >= 300, 60_000, 10);
  t.true(writer.alive(), `the writer is still writing: ${writer.output()}`);
  t.is(await d.stop('SIGTERM'), 0, d.stderr());
  const wcode = await within(writer.exited, 30_000, -1);
  t.is(wcode, 0, `the client saw its connection end and stopped: ${writer.output().slice(-2000)}`);
  t.regex(writer.output(), /^error \d+/m, 'the client was still writing when the daemon stopped');
  await waitFor('the coordinator to exit', () => !pidRunning(coord), 10_000, 50);
  const acked = writer.acked();
  // Acknowledged in order 0..n-1 (one write at a time).
  t.deepEqual(acked, acked.map((_, i) => i));
  const problem = checkWriterResult(readFileSync(d.origin!), blocks, acked);
  t.is(problem, null);
  t.log(`${acked.length} writes acknowledged before SIGTERM ended the connection`);
});

t_('SIGTERM with a client connected: the coordinator drains and exits promptly, not after the 30 s kill' + skipSuffix(why), async (t) => {
  // Regression: shutdown once awaited net.Server.close() (which calls back only when every
  // connection has ended) before draining, and a paused socket never saw the client's FIN, so a
  // connected client kept being served until the supervisor's 30 s SIGKILL skipped the final flush.
  const d = await startDaemon();
  const coord = await coordinatorPid(d.control);
  const writer = startWriter(d.uri, 64);
  t.teardown(async () => {
    await writer.stop('SIGKILL');
    killPid(coord);
    await d.dispose();
  });
  await waitFor('the writer to get 20 acknowledgements', () => writer.acked().length >= 20, 60_000, 10);
  process.kill(d.pid, 'SIGTERM');
  await waitFor('the coordinator to drain and exit by itself', () => !pidRunning(coord), 10_000, 50);
  // No second signal: the supervisor exits on its own once its coordinator is gone.
  await waitFor('the supervisor to exit', () => !d.alive(), 10_000, 50);
  t.is(await d.stop(), 0);
  t.notRegex(d.stderr(), /did not drain in time/);
});

t_('supervisor killed with SIGKILL while a client is connected: the orphaned coordinator still exits' + skipSuffix(why), async (t) => {
  // Regression, same root cause as above: with no supervisor left to SIGKILL it, a coordinator
  // stuck waiting for its client would have lived (and served) as long as the client stayed.
  const d = await startDaemon();
  const coord = await coordinatorPid(d.control);
  const writer = startWriter(d.uri, 64);
  t.teardown(async () => {
    await writer.stop('SIGKILL');
    killPid(coord);
    await d.dispose();
  });
  await waitFor('the writer to get 20 acknowledgements', () => writer.acked().length >= 20, 60_000, 10);
  t.is(await d.kill9(), 128 + 9);
  await waitFor(`orphaned coordinator ${coord} to exit with a client connected`, () => !pidRunning(coord), 10_000, 100);
  t.pass();
});
