// Checks on who may reach a cache, run on the resolved configuration (config/access-schema.ts
// has the keys): TLS settings that make sense together and credentials that load, a TCP listener
// beyond loopback only with TLS required (or the explicit opt-in), socket groups that exist.

import { isLoopbackHost, parseTcpAddress } from '../../config/schema.js';
import { loadTlsCredentials } from '../tls/credentials.js';
import { resolveGroup } from '../util/group.js';
import { isPcachedError } from '../util/errors.js';
import type { CacheConfig, DaemonConfig } from './types.js';

function tlsProblems(c: CacheConfig, at: (key: string) => string): string[] {
  const creds = c.tlsCertificates !== '' || c.tlsPsk !== '';
  if (c.tls === 'off') {
    const set = ['tlsCertificates', 'tlsPsk', 'tlsVerifyPeer'].filter((k) => (k === 'tlsVerifyPeer' ? c.tlsVerifyPeer : c[k as 'tlsPsk'] !== ''));
    return set.length ? [`${at(set[0]!)}: is set but tls is "off": set tls to "on" or "require" to use it, or remove it`] : [];
  }
  if (!creds) return [`${at('tls')}: "${c.tls}" needs credentials: set tlsCertificates (a folder with server-cert.pem and server-key.pem) or tlsPsk (a psktool file)`];
  if (c.tlsCertificates !== '' && c.tlsPsk !== '') return [`${at('tlsPsk')}: set either tlsCertificates or tlsPsk, not both`];
  if (c.tlsVerifyPeer && c.tlsCertificates === '') return [`${at('tlsVerifyPeer')}: checks client certificates against tlsCertificates/ca-cert.pem; it does not apply to tlsPsk`];
  try {
    loadTlsCredentials(c);
  } catch (err) {
    if (!isPcachedError(err)) throw err;
    // The message starts with the key it is about; place it in the file.
    return [`${at('')}${err.message}`];
  }
  return [];
}

function remoteProblem(c: CacheConfig, at: (key: string) => string): string | undefined {
  if (c.tcp === '' || c.tls === 'require' || c.allowRemotePlaintext) return undefined;
  const addr = parseTcpAddress(c.tcp);
  if (!addr || isLoopbackHost(addr.host)) return undefined;
  return `${at('tcp')}: ${addr.host} is not a loopback address, and with tls "${c.tls}" anyone reaching it could read and write the volume without TLS; `
    + `set tls to "require" (with tlsCertificates or tlsPsk), or set allowRemotePlaintext to true to serve plaintext there anyway: value was ${JSON.stringify(c.tcp)}`;
}

function groupProblem(spec: string, key: string): string | undefined {
  try {
    resolveGroup(spec, key);
    return undefined;
  } catch (err) {
    if (!isPcachedError(err)) throw err;
    return err.message;
  }
}

export function checkAccess(config: DaemonConfig, single: boolean, problems: string[]): void {
  const g = groupProblem(config.controlGroup, 'controlGroup');
  if (g) problems.push(g);
  config.caches.forEach((c, i) => {
    const at = (key: string): string => (single ? key : `caches[${i}].${key}`);
    problems.push(...tlsProblems(c, at));
    const remote = remoteProblem(c, at);
    if (remote) problems.push(remote);
    if (c.unix !== '') {
      const ug = groupProblem(c.unixGroup, at('unixGroup'));
      if (ug) problems.push(ug);
    }
  });
}
