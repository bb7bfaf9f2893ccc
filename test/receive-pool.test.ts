// receiveIntoPool (src/coordinator/receive-pool.ts): an accepted socket switched mid-stream
// delivers every byte once, in order, through pauses; every view it handed out still holds its
// bytes at the end (windows are never reused, so a payload kept past its read stays intact); a
// TLS socket is left alone, and a paused one waits until it flows.

import test from 'ava';
import net from 'node:net';
import tls from 'node:tls';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { receiveIntoPool } from '../src/coordinator/receive-pool.js';

function listen(onConn: (s: net.Socket) => void): Promise<{ server: net.Server; sock: string; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pcached-rxpool-'));
  const sock = path.join(dir, 's.sock');
  const server = net.createServer(onConn);
  return new Promise((resolve) => server.listen(sock, () => resolve({ server, sock, dir })));
}

test('every byte arrives once and in order across the switch and pauses; kept views stay intact', async (t) => {
  const total = 24 << 20;
  const data = randomFillSync(Buffer.alloc(total));
  let switched = null as string | null;
  const kept: Buffer[] = [];
  let got = 0;
  const done = new Promise<void>((resolve, reject) => {
    void listen((s) => {
      const onData = (c: Buffer): void => {
        kept.push(c);
        got += c.length;
        // The switch happens from inside a 'data' callback, as the session makes it.
        if (switched === null) process.nextTick(() => { switched = receiveIntoPool(s, onData); });
        // Pause now and then with bytes still arriving, as the session's budgets do.
        if (kept.length % 7 === 0) {
          s.pause();
          setTimeout(() => s.resume(), 1);
        }
        if (got === total) resolve();
        if (got > total) reject(new Error(`${got} bytes received of ${total}`));
      };
      s.on('data', onData);
      s.on('error', reject);
    }).then(({ server, sock, dir }) => {
      const c = net.connect(sock);
      let at = 0;
      // Uneven writes, so frames straddle reads and windows.
      const pump = (): void => {
        while (at < total) {
          const n = Math.min(total - at, 1 + ((at * 7919) % 70_000));
          const more = c.write(data.subarray(at, at + n));
          at += n;
          if (!more) return;
        }
        c.end();
      };
      c.on('drain', pump);
      pump();
      void done.finally(() => { c.destroy(); server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
    });
  });
  await done;
  t.is(switched, 'switched', 'the accepted socket was switched to the pool');
  t.true(kept.length > 100);
  t.true(Buffer.concat(kept).equals(data), 'the bytes kept from every read are the bytes sent, in order');
});

test('a TLS socket, or one without a handle, is never switched', (t) => {
  const plain = new net.Socket();
  t.is(receiveIntoPool(new tls.TLSSocket(plain), () => {}), 'never');
  t.is(receiveIntoPool(new net.Socket(), () => {}), 'never');
  plain.destroy();
});

test('a paused socket is switched later, once it flows again', async (t) => {
  const got: Buffer[] = [];
  let first = null as string | null, second = null as string | null;
  const { server, sock, dir } = await listen((s) => {
    s.pause();
    first = receiveIntoPool(s, (c) => got.push(c));
    s.resume();
    // Resuming first empties what the stream holds; then the switch is allowed.
    setImmediate(() => { second = receiveIntoPool(s, (c) => got.push(c)); });
    s.on('data', (c) => got.push(c));
  });
  const c = net.connect(sock);
  await new Promise((r) => c.once('connect', r));
  await new Promise((r) => setTimeout(r, 50));
  c.end(Buffer.from('after the switch'));
  await new Promise((r) => setTimeout(r, 100));
  t.is(first, 'later');
  t.is(second, 'switched');
  t.is(Buffer.concat(got).toString(), 'after the switch');
  c.destroy();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
