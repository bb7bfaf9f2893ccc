// Socket activation (sd_listen_fds(3)): systemd, or systemd-socket-activate, passes listening
// sockets as fds 3.. with LISTEN_PID (must be us), LISTEN_FDS (how many) and LISTEN_FDNAMES
// (colon-separated). As nbdkit and qemu-storage-daemon do, they replace configured listeners.
// Each descriptor goes to one cache's unix or tcp listener: by name when its name is a cache's
// name (FileDescriptorName=vol), else by address (ListenStream= equal to the configured one).
// Anything that does not fit is refused before a coordinator starts.
//
// What a descriptor is comes from /proc (its socket inode in /proc/net/{unix,tcp,tcp6}):
// Node cannot getsockname() an fd without starting to accept on it.

import { readFileSync, readlinkSync } from 'node:fs';
import { endianness } from 'node:os';
import type { CacheConfig } from '../config/types.js';
import { PcachedError } from '../util/errors.js';

export const SD_LISTEN_FDS_START = 3;

export interface ActivatedSocket {
  fd: number;
  /** LISTEN_FDNAMES entry ('' when none was given). */
  name: string;
  kind: 'unix' | 'tcp';
  /** Socket path ("@name" for an abstract one), or HOST:PORT ([v6]:PORT). */
  address: string;
}

/** Per cache: the supervisor's fds for its unix and tcp listener. */
export type ListenerFds = Map<string, { unix?: ActivatedSocket; tcp?: ActivatedSocket }>;

function fail(why: string): never {
  throw new PcachedError('ERR_LISTEN', `socket activation: ${why}`);
}

function readProc(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function hexIp(hex: string): string {
  const le = endianness() === 'LE';
  // Each 32-bit word is printed in host byte order.
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((w) => {
    const b = w.match(/../g)!.map((x) => parseInt(x, 16));
    return le ? b.reverse() : b;
  });
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  // URL prints an IPv6 literal in its canonical short form.
  return new URL(`http://[${groups.join(':')}]`).hostname.slice(1, -1);
}

/** What listening stream socket `fd` is, or why it is not one. */
export function describeSocketFd(fd: number): Omit<ActivatedSocket, 'fd' | 'name'> | string {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'is not open';
  }
  const m = /^socket:\[(\d+)\]$/.exec(link);
  if (!m) return `is not a socket (${link})`;
  const inode = m[1]!;
  for (const line of readProc('/proc/net/unix').split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 is __SO_ACCEPTCON (listening).
    const f = line.trim().split(/\s+/);
    if (f[6] !== inode) continue;
    if (f[4] !== '0001') return 'is a Unix socket but not SOCK_STREAM';
    if ((parseInt(f[3]!, 16) & 0x10000) === 0) return 'is a Unix stream socket that is not listening';
    return { kind: 'unix', address: f.slice(7).join(' ') };
  }
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readProc(table).split('\n').slice(1)) {
      // sl local_address rem_address st ... uid timeout inode; st 0A is LISTEN.
      const f = line.trim().split(/\s+/);
      if (f[9] !== inode) continue;
      if (f[3] !== '0A') return 'is a TCP socket that is not listening';
      const [ip, port] = f[1]!.split(':');
      const host = hexIp(ip!);
      return { kind: 'tcp', address: `${host.includes(':') ? `[${host}]` : host}:${parseInt(port!, 16)}` };
    }
  }
  return 'is a socket of a kind pcached cannot serve on (only Unix stream and TCP)';
}

/**
 * The descriptors passed to this process, or [] when none were (LISTEN_PID absent or naming
 * another process: the variables were meant for someone else). Removes the variables from env
 * so that children (coordinators, a captive command) do not take them as theirs.
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env): ActivatedSocket[] {
  const { LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES } = env;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (LISTEN_PID === undefined || LISTEN_FDS === undefined) return [];
  if (!/^\d+$/.test(LISTEN_PID) || Number(LISTEN_PID) !== process.pid) return [];
  if (!/^\d+$/.test(LISTEN_FDS) || Number(LISTEN_FDS) > 64) fail(`LISTEN_FDS=${JSON.stringify(LISTEN_FDS)} is not a count of descriptors (0-64)`);
  const count = Number(LISTEN_FDS);
  const names = LISTEN_FDNAMES === undefined ? [] : LISTEN_FDNAMES.split(':');
  if (LISTEN_FDNAMES !== undefined && names.length !== count) fail(`LISTEN_FDNAMES has ${names.length} names for LISTEN_FDS=${count} descriptors`);
  const out: ActivatedSocket[] = [];
  for (let i = 0; i < count; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    const name = names[i] ?? '';
    const d = describeSocketFd(fd);
    if (typeof d === 'string') fail(`descriptor ${fd}${name ? ` (${name})` : ''} ${d}`);
    out.push({ fd, name, ...d });
  }
  return out;
}

function sameTcp(configured: string, passed: string): boolean {
  const c = /^(?:\[(.+)\]|(.+)):(\d+)$/.exec(configured);
  const p = /^(?:\[(.+)\]|(.+)):(\d+)$/.exec(passed);
  if (!c || !p || c[3] !== p[3]) return false;
  const ch = (c[1] ?? c[2])!.toLowerCase();
  const ph = (p[1] ?? p[2])!.toLowerCase();
  return ch === ph || (ch === 'localhost' && (ph === '127.0.0.1' || ph === '::1'));
}

/** Assigns every descriptor to one cache listener; throws ERR_LISTEN naming the one that fits nowhere. */
export function matchListeners(sockets: ActivatedSocket[], caches: CacheConfig[]): ListenerFds {
  const out: ListenerFds = new Map();
  const names = caches.map((c) => c.name);
  for (const s of sockets) {
    const byName = caches.find((c) => c.name === s.name);
    const cache = byName ?? caches.find((c) => (s.kind === 'unix' ? c.unix === s.address : c.tcp !== '' && sameTcp(c.tcp, s.address)));
    const what = `descriptor ${s.fd} (${s.kind} ${s.address}${s.name ? `, name "${s.name}"` : ''})`;
    if (!cache) {
      fail(`${what} matches no configured listener: name it after a cache (FileDescriptorName=, caches: ${names.map((n) => JSON.stringify(n)).join(', ')}) or configure that address as a cache's ${s.kind}`);
    }
    const slot = out.get(cache.name) ?? {};
    const taken = slot[s.kind];
    if (taken) fail(`${what} and descriptor ${taken.fd} both want the ${s.kind} listener of cache "${cache.name}"; pass one ${s.kind} socket per cache`);
    slot[s.kind] = s;
    out.set(cache.name, slot);
  }
  return out;
}
