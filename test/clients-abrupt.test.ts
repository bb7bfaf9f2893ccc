// Abrupt hang-ups with many requests in flight: the daemon must drop pending replies silently and
// keep serving. (nbdkit 1.32.5 is known to crash here: reference/nbd.md §2.7, "Robustness".)

import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { startDaemon, isNbdkit, type Daemon } from './helpers/daemon.js';
import { RawConn, freshRead, freshWrite, handshake, request, CMD_READ, CMD_WRITE, CMD_FLUSH } from './helpers/nbd-raw.js';
import { needTools, nbdsh, describe } from './helpers/tools.js';

const SIZE = 128 * 1024 * 1024;
const NAME = 'vol-abrupt';
const PATTERN = randomBytes(65536);
let d: Daemon;

test.before(async () => {
  await start();
});
test.after.always(async () => {
  await d?.dispose();
});

async function start(): Promise<void> {
  d = await startDaemon({ name: NAME, originSize: SIZE });
  await freshWrite(d.sock, NAME, 0, PATTERN);
}

/**
 * Run one hostile scenario. Under a reference server, a crash is the known upstream bug
 * (nbdkit 1.32.5 aborts when clients hang up with replies in flight): noted, server restarted.
 */
async function scenario(t: ExecutionContext, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    // A dying server may still be exiting: give its exit event a moment to arrive.
    for (let i = 0; isNbdkit && d.alive() && i < 50; i++) await new Promise((r) => setTimeout(r, 100));
    if (!(isNbdkit && !d.alive())) throw e;
  }
  if (isNbdkit && !d.alive()) {
    t.log(`not checked: server survival after ${what} (${d.kind} died; nbdkit 1.32.5 is known to abort ` +
      'when clients hang up with replies in flight); restarted it');
    await d.dispose();
    await start();
    t.pass();
    return;
  }
  await probe(t, what);
}

/** Alive + correct fresh read. */
async function probe(t: ExecutionContext, what: string): Promise<boolean> {
  t.true(d.alive(), `daemon died after ${what}:\n${d.stderr()}`);
  const data = await freshRead(d.sock, NAME, 0, 65536);
  t.true(data.equals(PATTERN), `fresh read after ${what}`);
  return true;
}

async function negotiated(): Promise<RawConn> {
  const c = await RawConn.open(d.sock);
  await handshake(c, NAME);
  return c;
}

test.serial('64 pipelined 1 MiB READs on 4 connections, sockets destroyed at once, 20 times', async (t) => {
  await scenario(t, '20 rounds of READ hang-ups', async () => {
  for (let round = 0; round < 20; round++) {
    const conns = await Promise.all([0, 1, 2, 3].map(() => negotiated()));
    for (const [i, c] of conns.entries()) {
      const reqs = Array.from({ length: 64 }, (_, k) =>
        request(CMD_READ, BigInt(k + 1), ((k * 7 + i * 13 + round) % 120) * (1 << 20), 1 << 20));
      c.sock.write(Buffer.concat(reqs));
    }
    // Destroy at varying moments: immediately, or once some reply bytes have arrived.
    if (round % 2 === 1) await conns[0]!.read(16, 20_000).catch(() => undefined);
    for (const c of conns) c.destroy();
    if (!d.alive()) break;
  }
  });
});

test.serial('pipelined WRITEs (some cut mid-payload) and FLUSHes, sockets destroyed, 20 times', async (t) => {
  await scenario(t, '20 rounds of WRITE hang-ups', async () => {
  for (let round = 0; round < 20; round++) {
    const conns = await Promise.all([0, 1, 2].map(() => negotiated()));
    for (const [i, c] of conns.entries()) {
      const parts: Buffer[] = [];
      for (let k = 0; k < 32; k++) {
        const off = (64 + ((k + i * 32 + round) % 60)) * (1 << 20); // never the first MiB (PATTERN)
        parts.push(request(CMD_WRITE, BigInt(k + 1), off, 65536), Buffer.alloc(65536, k));
        if (k % 8 === 7) parts.push(request(CMD_FLUSH, BigInt(1000 + k), 0, 0));
      }
      let all = Buffer.concat(parts);
      if (i === 2) all = all.subarray(0, all.length - 30_000); // last WRITE cut mid-payload
      c.sock.write(all);
    }
    if (round % 3 === 0) await conns[1]!.read(16, 20_000).catch(() => undefined);
    for (const c of conns) c.destroy();
    if (!d.alive()) break;
  }
  });
});

const whyNbdsh = needTools('nbdsh', 'python3-nbd');
(whyNbdsh ? test.serial.skip : test.serial)('nbdsh aio: 64 × 1 MiB reads in flight on 4 handles, process exits, 5 times', async (t) => {
  await scenario(t, 'nbdsh processes exiting with requests in flight', async () => {
  for (let round = 0; round < 5; round++) {
    // The nbdsh process exits (os._exit) with all requests in flight: its sockets close under the server.
    const r = await nbdsh(`
import nbd, os
hs = []
for i in range(4):
    x = nbd.NBD()
    x.connect_uri(${JSON.stringify(d.uri)})
    hs.append(x)
for i, x in enumerate(hs):
    for k in range(64):
        x.aio_pread(nbd.Buffer(1 << 20), ((k * 5 + i) % 100) << 20)
    x.poll(0)
os._exit(0)
`, { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(describe(r));
    if (!d.alive()) break;
  }
  });
});

test.serial('daemon still serves and exits 0 on SIGTERM', async (t) => {
  await probe(t, 'the whole file');
  const code = await d.stop('SIGTERM');
  t.is(code, 0, d.stderr());
});
