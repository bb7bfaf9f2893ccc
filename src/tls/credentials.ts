// TLS credentials of one cache, read from nbdkit's layouts: a certificates folder (ca-cert.pem,
// server-cert.pem, server-key.pem, ca-crl.pem) or a psktool key file (`username:hexkey` lines).
// The config loader reads them once to refuse a bad start with a clear message; the coordinator
// reads them again when it starts serving.

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createSecureContext, type TlsOptions } from 'node:tls';
import { PcachedError } from '../util/errors.js';
import type { CacheConfig } from '../config/types.js';

/**
 * node:tls offers PSK only up to TLS 1.2. GnuTLS clients (libnbd, qemu) add +ECDHE-PSK:+DHE-PSK:+PSK
 * to their priorities: all three families, never RSA-PSK (needs a certificate) nor null ciphers.
 */
const PSK_CIPHERS = 'ECDHEPSK:DHEPSK:PSK:!RSAPSK:!eNULL:!aNULL';
/** OpenSSL's limits for a PSK identity and key. */
const MAX_PSK_IDENTITY = 128;
const MAX_PSK_BYTES = 256;

export interface TlsCredentials {
  kind: 'x509' | 'psk';
  /** The folder or file they came from. */
  source: string;
  /** Options for a tls.Server that only ever gets connections injected (src/tls/upgrade.ts). */
  serverOptions: TlsOptions;
  /** PSK: username → key. */
  psk?: ReadonlyMap<string, Buffer>;
}

export type TlsSettings = Pick<CacheConfig, 'tls' | 'tlsCertificates' | 'tlsPsk' | 'tlsVerifyPeer'>;

function fail(key: string, message: string): never {
  throw new PcachedError('ERR_CONFIG', `${key}: ${message}`);
}

function why(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e.code === 'ENOENT') return 'no such file';
  if (e.code === 'EACCES') return 'permission denied';
  if (e.code === 'EISDIR') return 'is a folder, not a file';
  return e.message;
}

function readPem(key: string, dir: string, file: string, optional: boolean): Buffer | undefined {
  const path = join(dir, file);
  try {
    return readFileSync(path);
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return fail(key, `cannot read ${path}: ${why(err)}`);
  }
}

function x509(s: TlsSettings): TlsCredentials {
  const dir = s.tlsCertificates;
  let st;
  try {
    st = statSync(dir);
  } catch (err) {
    return fail('tlsCertificates', `${dir}: ${why(err) === 'no such file' ? 'no such folder' : why(err)}`);
  }
  if (!st.isDirectory()) {
    fail('tlsCertificates', `${dir} is not a folder (expected one holding server-cert.pem, server-key.pem and optionally ca-cert.pem, as nbdkit's --tls-certificates)`);
  }
  const cert = readPem('tlsCertificates', dir, 'server-cert.pem', false)!;
  const key = readPem('tlsCertificates', dir, 'server-key.pem', false)!;
  const ca = readPem('tlsCertificates', dir, 'ca-cert.pem', !s.tlsVerifyPeer);
  const crl = readPem('tlsCertificates', dir, 'ca-crl.pem', true);
  const serverOptions: TlsOptions = {
    cert, key, minVersion: 'TLSv1.2',
    ...(ca ? { ca } : {}), ...(crl ? { crl } : {}),
    // Without tlsVerifyPeer no client certificate is asked for, as in nbdkit.
    requestCert: s.tlsVerifyPeer, rejectUnauthorized: s.tlsVerifyPeer,
  };
  try {
    // Parses and matches the key and the certificates now, so a bad file is a config error.
    createSecureContext(serverOptions);
  } catch (err) {
    fail('tlsCertificates', `${dir}: server-cert.pem, server-key.pem${ca ? ', ca-cert.pem' : ''}${crl ? ', ca-crl.pem' : ''} do not load: ${(err as Error).message}`);
  }
  return { kind: 'x509', source: dir, serverOptions };
}

/** psktool's format: `username:hexkey` per line. Blank lines are skipped; anything else is an error. */
export function parsePskFile(text: string, path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    const at = `${path} line ${i + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) fail('tlsPsk', `${at}: expected username:hexkey (as psktool writes it)`);
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (Buffer.byteLength(user) > MAX_PSK_IDENTITY) fail('tlsPsk', `${at}: username longer than ${MAX_PSK_IDENTITY} bytes`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) fail('tlsPsk', `${at}: the key of ${JSON.stringify(user)} is not an even number of hex digits`);
    if (hex.length / 2 > MAX_PSK_BYTES) fail('tlsPsk', `${at}: the key of ${JSON.stringify(user)} is longer than ${MAX_PSK_BYTES} bytes`);
    if (keys.has(user)) fail('tlsPsk', `${at}: username ${JSON.stringify(user)} appears twice`);
    keys.set(user, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) fail('tlsPsk', `${path} holds no keys (create one with: psktool -u USER -p ${path})`);
  return keys;
}

function psk(s: TlsSettings): TlsCredentials {
  let text: string;
  try {
    text = readFileSync(s.tlsPsk, 'utf8');
  } catch (err) {
    return fail('tlsPsk', `cannot read ${s.tlsPsk}: ${why(err)}`);
  }
  const keys = parsePskFile(text, s.tlsPsk);
  const serverOptions: TlsOptions = {
    ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2',
    // Built-in FFDHE groups for the DHE-PSK suites.
    dhparam: 'auto',
    // An unknown username gets no key: the handshake fails with unknown_psk_identity.
    pskCallback: (_socket, identity) => keys.get(identity) ?? null,
  };
  return { kind: 'psk', source: s.tlsPsk, serverOptions, psk: keys };
}

/**
 * The credentials `s` names, or null when TLS is off. Throws ERR_CONFIG naming the key and the
 * file at fault; the combinations of keys are checked in src/config/access.ts first.
 */
export function loadTlsCredentials(s: TlsSettings): TlsCredentials | null {
  if (s.tls === 'off') return null;
  if (s.tlsPsk !== '') return psk(s);
  if (s.tlsCertificates !== '') return x509(s);
  return fail('tls', `${s.tls} needs credentials: set tlsCertificates (a folder) or tlsPsk (a psktool file)`);
}
