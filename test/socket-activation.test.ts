// Socket activation's pieces without a daemon: what /proc says a descriptor is (TCP v4 and v6,
// Unix, not listening, not a socket), the LISTEN_* variables, and how descriptors are matched to
// caches. test/daemon-service.test.ts drives the whole through the real daemon.

import test from 'ava';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeSocketFd, listenFds, matchListeners, type ActivatedSocket } from '../src/daemon/socket-activation.js';
import type { CacheConfig } from '../src/config/types.js';

function listen(server: Server, ...args: unknown[]): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    (server.listen as (...a: unknown[]) => void)(...args, () => resolve());
  });
}

/** The descriptor behind a listening server (libuv's; only read here, never used). */
const fdOf = (server: Server): number => (server as unknown as { _handle: { fd: number } })._handle.fd;

test('describeSocketFd: TCP over IPv4 and IPv6, Unix, and what is not a listening socket', async (t) => {
  const v4 = createServer();
  await listen(v4, 0, '127.0.0.1');
  t.teardown(() => v4.close());
  t.deepEqual(describeSocketFd(fdOf(v4)), { kind: 'tcp', address: `127.0.0.1:${(v4.address() as { port: number }).port}` });

  const v6 = createServer();
  const hasV6 = await listen(v6, 0, '::1').then(() => true, () => false);
  if (hasV6) {
    t.teardown(() => v6.close());
    t.deepEqual(describeSocketFd(fdOf(v6)), { kind: 'tcp', address: `[::1]:${(v6.address() as { port: number }).port}` });
  }

  const dir = mkdtempSync(join(tmpdir(), 'pcached-sa-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const unix = createServer();
  await listen(unix, join(dir, 's.sock'));
  t.teardown(() => unix.close());
  t.deepEqual(describeSocketFd(fdOf(unix)), { kind: 'unix', address: join(dir, 's.sock') });

  const client = connect(join(dir, 's.sock'));
  await new Promise((r) => client.once('connect', r));
  t.teardown(() => client.destroy());
  t.is(describeSocketFd((client as unknown as { _handle: { fd: number } })._handle.fd), 'is a Unix stream socket that is not listening');

  const fd = openSync(join(dir, 'file'), 'w');
  t.teardown(() => closeSync(fd));
  t.regex(describeSocketFd(fd) as string, /^is not a socket \(.*file\)$/);
  t.is(describeSocketFd(999_999), 'is not open');
});

test('listenFds: variables for another PID are ignored; all three are removed from the environment', (t) => {
  const env: NodeJS.ProcessEnv = { LISTEN_PID: String(process.pid + 1), LISTEN_FDS: '1', LISTEN_FDNAMES: 'vol', OTHER: 'x' };
  t.deepEqual(listenFds(env), []);
  t.deepEqual(env, { OTHER: 'x' });
  t.deepEqual(listenFds({}), []);
  t.deepEqual(listenFds({ LISTEN_PID: String(process.pid), LISTEN_FDS: '0' }), []);
  t.throws(() => listenFds({ LISTEN_PID: String(process.pid), LISTEN_FDS: 'two' }), { message: 'socket activation: LISTEN_FDS="two" is not a count of descriptors (0-64)' });
  t.throws(() => listenFds({ LISTEN_PID: String(process.pid), LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:b' }), { message: 'socket activation: LISTEN_FDNAMES has 2 names for LISTEN_FDS=1 descriptors' });
});

const cache = (name: string, unix: string, tcp: string): CacheConfig => ({ name, unix, tcp } as CacheConfig);
const sock = (fd: number, kind: 'unix' | 'tcp', address: string, name = ''): ActivatedSocket => ({ fd, kind, address, name });

test('matchListeners: by name first, else by address (localhost is the loopback); one socket per listener', (t) => {
  const caches = [cache('a', '/run/a.sock', '127.0.0.1:10809'), cache('b', '/run/b.sock', 'localhost:10810')];
  const m = matchListeners([
    sock(3, 'unix', '/elsewhere.sock', 'b'),
    sock(4, 'tcp', '127.0.0.1:10809', 'pcached.socket'),
    sock(5, 'tcp', '[::1]:10810'),
    sock(6, 'unix', '/run/a.sock'),
  ], caches);
  t.deepEqual(m.get('a'), { tcp: sock(4, 'tcp', '127.0.0.1:10809', 'pcached.socket'), unix: sock(6, 'unix', '/run/a.sock') });
  t.deepEqual(m.get('b'), { unix: sock(3, 'unix', '/elsewhere.sock', 'b'), tcp: sock(5, 'tcp', '[::1]:10810') });
  t.is(matchListeners([], caches).size, 0);

  t.throws(() => matchListeners([sock(3, 'tcp', '127.0.0.1:9999')], caches), {
    message: 'socket activation: descriptor 3 (tcp 127.0.0.1:9999) matches no configured listener: name it after a cache (FileDescriptorName=, caches: "a", "b") or configure that address as a cache\'s tcp',
  });
  t.throws(() => matchListeners([sock(3, 'unix', '/x', 'a'), sock(4, 'unix', '/run/a.sock')], caches), {
    message: 'socket activation: descriptor 4 (unix /run/a.sock) and descriptor 3 both want the unix listener of cache "a"; pass one unix socket per cache',
  });
});
