// NBD URIs ([uri] NetworkBlockDevice/nbd doc/uri.md): nbd://HOST[:PORT]/EXPORT and
// nbd+unix:///EXPORT?socket=PATH. TLS forms (nbds://, nbds+unix://) are recognised only to be
// refused with a clear message. Pure: no sockets here.

import { PcachedError } from '../util/errors.js';
import { MAX_STRING } from './constants.js';

export interface NbdTarget {
  socketPath?: string;
  host?: string;
  /** 0 for Unix sockets. */
  port: number;
  exportName: string;
  /** The server requires TLS: nbds:// and nbds+unix:// (as libnbd spells them). */
  tls?: boolean;
}

/** IANA port for NBD. */
export const DEFAULT_PORT = 10809;

/**
 * An origin written with a scheme is remote: configuration accepts only nbd:// and
 * nbd+unix:// (and says so for anything else); everything without one is a local path.
 */
export function isUri(s: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(s);
}

/** nbd://host[:port]/name and nbd+unix:///name?socket=PATH ([uri] NetworkBlockDevice/nbd doc/uri.md). */
export function parseNbdUri(uri: string): NbdTarget {
  const bad = (why: string): never => {
    throw new PcachedError('ERR_BAD_ARGUMENT', `bad NBD URI "${uri}": ${why} (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`);
  };
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    return bad('not a URI');
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  } catch {
    return bad('export name is not valid percent-encoding');
  }
  if (Buffer.byteLength(exportName) > MAX_STRING) bad(`export name longer than ${MAX_STRING} bytes`);
  switch (u.protocol) {
    case 'nbds:':
    case 'nbds+unix:':
      return bad('TLS (nbds) is not supported');
    case 'nbd:': {
      if (u.hostname === '') bad('missing host');
      if (u.search !== '') bad('query parameters are not supported for nbd://');
      const port = u.port === '' ? DEFAULT_PORT : Number(u.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) bad(`invalid port "${u.port}"`);
      // URL keeps the brackets of an IPv6 literal; net.connect wants the bare address.
      return { host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port, exportName };
    }
    case 'nbd+unix:': {
      if (u.host !== '') bad('nbd+unix:// takes no host (use nbd+unix:///EXPORT?socket=PATH)');
      const socketPath = u.searchParams.get('socket');
      if (socketPath === null || socketPath === '') return bad('missing socket=PATH');
      for (const key of u.searchParams.keys()) if (key !== 'socket') bad(`unsupported parameter "${key}"`);
      return { socketPath, port: 0, exportName };
    }
    default:
      return bad(`unsupported scheme "${u.protocol.replace(/:$/, '')}"`);
  }
}

/** The canonical URI of a target, for logs and status. */
export function formatNbdUri(t: NbdTarget): string {
  const name = encodeURIComponent(t.exportName);
  const s = t.tls ? 's' : '';
  return t.socketPath !== undefined ? `nbd${s}+unix:///${name}?socket=${t.socketPath}` : `nbd${s}://${t.host?.includes(':') ? `[${t.host}]` : t.host}:${t.port}/${name}`;
}

/**
 * How a client reaches a listener ("unix:/path", "tcp:HOST:PORT", "tcp:[v6]:PORT", as coordinators
 * report them): its NBD URI, with a wildcard address (0.0.0.0, ::) replaced by loopback, which
 * is connectable from this host whatever the interfaces are. null for a form it does not know.
 */
export function listenerTarget(listener: string, exportName: string): NbdTarget | null {
  if (listener.startsWith('unix:')) return { socketPath: listener.slice(5), port: 0, exportName };
  const m = /^tcp:(?:\[(.+)\]|([^:]+)):(\d+)$/.exec(listener);
  if (!m) return null;
  const host = m[1] ?? m[2]!;
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return { host: reachable, port: Number(m[3]), exportName };
}
