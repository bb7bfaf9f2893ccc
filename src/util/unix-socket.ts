// A Unix socket file left behind by a crash (kill -9) must not stop a restart; one that a live
// process still listens on must not be stolen.

import { connect } from 'node:net';
import { lstatSync, unlinkSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { PcachedError } from './errors.js';

function probe(path: string, timeoutMs: number): Promise<'live' | 'dead'> {
  return new Promise((resolve) => {
    const sock = connect({ path });
    const timer = setTimeout(() => { sock.destroy(); resolve('live'); }, timeoutMs);
    sock.once('connect', () => { clearTimeout(timer); sock.destroy(); resolve('live'); });
    sock.once('error', () => { clearTimeout(timer); resolve('dead'); });
  });
}

/** Make `path` free to listen on: remove a dead socket file, refuse a live one or a non-socket. */
export async function claimUnixSocketPath(path: string, timeoutMs = 1000): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new PcachedError('ERR_LISTEN', `${path} exists and is not a socket; refusing to replace it`);
  }
  if ((await probe(path, timeoutMs)) === 'live') {
    throw new PcachedError('ERR_SOCKET_IN_USE', `${path} is in use by a running process (another pcached?)`);
  }
  unlinkSync(path);
}
