// Control socket framing ([u32 BE length][msgpackr]) and the server's robustness: frames split at
// every byte, oversize and garbage frames close that connection only, the server keeps serving.

import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  ControlServer, FrameDecoder, MAX_CONTROL_FRAME, controlRequest, encodeFrame,
} from '../src/daemon/control.js';
import type { ControlRequest } from '../src/daemon/ipc.js';
import { PcachedError, isPcachedError } from '../src/util/errors.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';

const dir = scratchDir('pcached-control-');
let sockNo = 0;

async function server(t: import('ava').ExecutionContext): Promise<{ path: string; seen: ControlRequest[] }> {
  const path = join(dir, `c${sockNo++}.sock`);
  const seen: ControlRequest[] = [];
  const s = new ControlServer({
    path,
    handler: async (r) => {
      seen.push(r);
      if (r.op === 'message' && r.name === 'nope') throw new PcachedError('ERR_UNKNOWN_CACHE', 'no cache named "nope"');
      if (r.op === 'message') return { echoed: r.words };
      return { op: r.op };
    },
  });
  await s.listen();
  t.teardown(() => s.close());
  return { path, seen };
}

function open(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ path }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Resolves with decoded messages until `count` arrived, or with 'closed' if the server hangs up first. */
function read(sock: Socket, count: number): Promise<unknown[] | 'closed'> {
  const decoder = new FrameDecoder();
  const got: unknown[] = [];
  return new Promise((resolve) => {
    sock.on('data', (c: Buffer) => {
      got.push(...decoder.push(c));
      if (got.length >= count) resolve(got);
    });
    sock.on('close', () => resolve(got.length >= count ? got : 'closed'));
  });
}

test.after.always(removeScratchDirs);

test('decoder: a stream of frames split at every byte position', (t) => {
  const messages = [{ id: 1, op: 'status' }, { id: 2, op: 'message', name: 'x', words: ['flush'] }, { id: 3, blob: 'y'.repeat(300) }];
  const stream = Buffer.concat(messages.map(encodeFrame));
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder();
    const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    t.deepEqual(got, messages, `cut at ${cut}`);
    t.is(d.bufferedBytes, 0);
  }
  // One byte at a time.
  const d = new FrameDecoder();
  const got: unknown[] = [];
  for (const b of stream) got.push(...d.push(Buffer.from([b])));
  t.deepEqual(got, messages);
});

test('decoder: oversize and zero lengths are rejected from the header alone; garbage payloads too', (t) => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_CONTROL_FRAME + 1);
  t.throws(() => new FrameDecoder().push(header), { instanceOf: PcachedError, message: /bad control frame length/ });
  t.throws(() => new FrameDecoder().push(Buffer.alloc(4)), { message: /bad control frame length 0/ });
  t.throws(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1])), { instanceOf: PcachedError });
  t.notThrows(() => new FrameDecoder().push(Buffer.from([0, 0x10, 0, 0])), 'exactly 1 MiB is allowed (waits for the payload)');
  t.throws(() => encodeFrame({ big: 'x'.repeat(MAX_CONTROL_FRAME) }), { message: /exceeds/ });
});

test('server answers requests by id, several per connection, split at every byte', async (t) => {
  const { path } = await server(t);
  const stream = Buffer.concat([encodeFrame({ id: 7, op: 'ping' }), encodeFrame({ id: 8, op: 'message', name: 'a', words: ['flush'] })]);
  for (let cut = 1; cut < stream.length; cut += 3) {
    const sock = await open(path);
    const replies = read(sock, 2);
    sock.write(stream.subarray(0, cut));
    await new Promise((r) => setImmediate(r));
    sock.write(stream.subarray(cut));
    const got = await replies;
    t.not(got, 'closed');
    const byId = new Map((got as { id: number }[]).map((r) => [r.id, r]));
    t.deepEqual(byId.get(7), { id: 7, ok: true, result: { op: 'ping' } });
    t.deepEqual(byId.get(8), { id: 8, ok: true, result: { echoed: ['flush'] } });
    sock.destroy();
  }
});

test('errors travel back with their code', async (t) => {
  const { path } = await server(t);
  const err = await t.throwsAsync(controlRequest(path, { op: 'message', name: 'nope', words: ['flush'] }));
  t.true(isPcachedError(err, 'ERR_UNKNOWN_CACHE'));
  t.deepEqual(await controlRequest(path, { op: 'status' }), { op: 'status' });
  // A well-framed request the server does not know is answered, not dropped.
  const sock = await open(path);
  const replies = read(sock, 1);
  sock.write(encodeFrame({ id: 5, op: 'format-everything' }));
  const [reply] = (await replies) as [{ id: number; ok: boolean; error: { code: string } }];
  t.is(reply.id, 5);
  t.false(reply.ok);
  t.is(reply.error.code, 'ERR_PROTOCOL');
  sock.destroy();
});

test('oversize frames and garbage close the connection; the server keeps serving', async (t) => {
  const { path, seen } = await server(t);
  const oversize = Buffer.alloc(4);
  oversize.writeUInt32BE(64 * 1024 * 1024);
  const garbage = [
    oversize,
    Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
    Buffer.from([0, 0, 0, 2, 0xc1, 0xc1]),
    encodeFrame('just a string'),
    encodeFrame({ op: 'status' }), // no id: cannot be answered
    encodeFrame({ id: '1', op: 'status' }),
    encodeFrame(JSON.parse('{"__proto__": {"polluted": 1}, "id": 1, "op": "ping"}')),
  ];
  for (const [i, bytes] of garbage.entries()) {
    const sock = await open(path);
    const result = read(sock, 1);
    sock.write(bytes);
    const got = await result;
    if (i === garbage.length - 1) {
      // msgpackr does not revive __proto__ as a prototype: this is a plain ping.
      t.deepEqual(got, [{ id: 1, ok: true, result: { op: 'ping' } }]);
      sock.destroy();
    } else {
      t.is(got, 'closed', `garbage #${i} should close the connection`);
    }
  }
  t.is(({} as Record<string, unknown>).polluted, undefined);
  t.deepEqual(await controlRequest(path, { op: 'ping' }), { op: 'ping' });
  t.is(seen.filter((r) => r.op === 'status').length, 0);
});

test('client: nothing listening gives ERR_NOT_RUNNING with the clear message', async (t) => {
  const path = join(dir, 'absent.sock');
  const err = await t.throwsAsync(controlRequest(path, { op: 'status' }));
  t.true(isPcachedError(err, 'ERR_NOT_RUNNING'));
  t.is(err!.message, `no daemon listening on ${path} (is \`pcached start\` running?)`);
});

test('a second server on a live control socket is refused', async (t) => {
  const { path } = await server(t);
  const second = new ControlServer({ path, handler: async () => null });
  const err = await t.throwsAsync(second.listen());
  t.true(isPcachedError(err, 'ERR_SOCKET_IN_USE'));
  t.deepEqual(await controlRequest(path, { op: 'ping' }), { op: 'ping' });
});
