// A Unix socket file left behind by a crash (kill -9) must not stop a restart; one that a live
// process still listens on must not be stolen; and the file never exists with looser permissions
// than configured.

import { connect, type Server } from 'node:net';
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, mkdtempSync, rmdirSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PcachedError } from './errors.js';

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SUN_PATH = 107;

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

export interface SocketAccess {
  /** Permission bits of the socket file. */
  mode: number;
  /** Its group, or null to keep the process's. */
  gid: number | null;
}

function removeQuietly(f: () => void): void {
  try { f(); } catch { /* already gone */ }
}

/**
 * Listen on `path` (claimed by claimUnixSocketPath first) with the file's mode and group final
 * from the moment anyone can reach it. net.Server.listen() binds and listens in one step, and
 * bind(2) creates the file as 0777 & ~umask, so a chmod afterwards leaves a window in which the
 * umask decides who may connect. Setting the umask around listen() would close it too, but the
 * umask is process-wide: stripe threads and libuv's pool may create files at that moment. So the
 * socket is bound inside a fresh 0700 folder beside `path` (nobody else can reach it there), given
 * its mode and group, and hard-linked into place: link(2), unlike rename(2), fails when `path`
 * exists, so a socket another daemon created meanwhile is never replaced.
 */
export async function listenUnixSocket(server: Server, path: string, access: SocketAccess): Promise<void> {
  const dir = mkdtempSync(join(dirname(path), '.pc-'));
  const bound = join(dir, 's');
  try {
    if (Buffer.byteLength(bound) > MAX_SUN_PATH) {
      throw new PcachedError('ERR_LISTEN', `cannot bind ${path}: its folder's path is too long for the private folder pcached binds in first (${bound} is over ${MAX_SUN_PATH} bytes); use a shorter path`);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(bound, () => {
        server.off('error', reject);
        resolve();
      });
    });
    try {
      chmodSync(bound, access.mode);
      if (access.gid !== null) chownSync(bound, -1, access.gid);
      linkSync(bound, path);
    } catch (err) {
      server.close();
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'EEXIST') throw new PcachedError('ERR_SOCKET_IN_USE', `${path} appeared while pcached was starting (another pcached?)`, { cause: err });
      if (e.code === 'EPERM' && access.gid !== null) throw new PcachedError('ERR_LISTEN', `cannot give ${path} the group ${access.gid}: the daemon is neither root nor a member of it`, { cause: err });
      throw err;
    }
  } finally {
    removeQuietly(() => unlinkSync(bound));
    removeQuietly(() => rmdirSync(dir));
  }
}
