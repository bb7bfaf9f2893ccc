// listenUnixSocket: the socket file appears with its final mode, never replaces a file that is
// there, and leaves no bind folder behind, whatever happens.

import test from 'ava';
import { lstatSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import { listenUnixSocket } from '../src/util/unix-socket.js';
import { isPcachedError } from '../src/util/errors.js';
import { scratchDir, removeScratchDirs } from './helpers/scratch.js';

const root = scratchDir('pcached-usock-');
test.after.always(removeScratchDirs);

const leftovers = (dir: string): string[] => readdirSync(dir).filter((f) => f.startsWith('.pc-'));

test('the socket is in place with its mode, and answers', async (t) => {
  const dir = join(root, 'ok');
  mkdirSync(dir);
  const path = join(dir, 'x.sock');
  const server = createServer((c) => c.end('hello'));
  await listenUnixSocket(server, path, { mode: 0o640, gid: null });
  t.teardown(() => server.close());
  t.is((lstatSync(path).mode & 0o777).toString(8), '640');
  t.deepEqual(leftovers(dir), []);
  const got = await new Promise<string>((res, rej) => {
    const c = connect(path);
    let s = '';
    c.on('data', (b) => { s += b; }).on('end', () => res(s)).on('error', rej);
  });
  t.is(got, 'hello');
});

test('an existing file at the path is never replaced', async (t) => {
  const dir = join(root, 'exists');
  mkdirSync(dir);
  const path = join(dir, 'x.sock');
  writeFileSync(path, 'mine');
  const server = createServer();
  const err = await t.throwsAsync(listenUnixSocket(server, path, { mode: 0o600, gid: null }));
  t.true(isPcachedError(err, 'ERR_SOCKET_IN_USE'), String(err));
  t.true(lstatSync(path).isFile(), 'still the file that was there');
  t.false(server.listening);
  t.deepEqual(leftovers(dir), []);
});

test('a folder too deep for the private bind folder is a clear error', async (t) => {
  // Final path 107 bytes (the most sun_path holds) with a short name: the bind path would be longer.
  let dir = join(root, 'deep');
  while (Buffer.byteLength(join(dir, 's')) < 107) dir += 'd';
  dir = dir.slice(0, dir.length - (Buffer.byteLength(join(dir, 's')) - 107));
  mkdirSync(dir, { recursive: true });
  const err = await t.throwsAsync(listenUnixSocket(createServer(), join(dir, 's'), { mode: 0o600, gid: null }));
  t.true(isPcachedError(err, 'ERR_LISTEN'), String(err));
  t.regex(err!.message, /too long for the private folder pcached binds in first .* use a shorter path/);
  t.deepEqual(leftovers(dir), []);
});
