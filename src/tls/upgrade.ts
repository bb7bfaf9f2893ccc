// The server side of NBD_OPT_STARTTLS: turn an accepted plaintext socket into a TLS one.
//
// The socket goes into a tls.Server that never listens ('connection' injection, as node:tls
// documents it) rather than into `new TLSSocket(...)`: only the server path checks the client's
// certificate chain after the handshake (rejectUnauthorized) and reports failed handshakes as
// 'tlsClientError'; a bare TLSSocket would accept any certificate that merely parses. One server
// per upgrade keeps each connection's outcome on its own emitter; building it costs a parse of
// the credentials, small beside the handshake itself.

import type { Socket } from 'node:net';
import { createServer, type TLSSocket } from 'node:tls';
import type { TlsCredentials } from './credentials.js';

export interface TlsUpgrade {
  /** The handshake succeeded (and the client certificate verified, when asked for). */
  secure(tls: TLSSocket): void;
  /** The handshake failed or the client went away; `why` says what for the log. */
  failed(why: string): void;
}

/**
 * Starts the TLS handshake on `raw`, which must be paused with no reader of its own: bytes the
 * client sent already (its ClientHello) are still in the socket's buffer, and node:tls takes them.
 */
export function upgradeToTls(raw: Socket, creds: TlsCredentials, done: TlsUpgrade): void {
  const server = createServer(creds.serverOptions);
  server.once('secureConnection', (tls: TLSSocket) => {
    server.removeAllListeners('tlsClientError');
    done.secure(tls);
  });
  server.once('tlsClientError', (err: Error, tls: TLSSocket) => {
    server.removeAllListeners('secureConnection');
    // A rejected client certificate shows up as a hang-up; the reason is on the socket.
    done.failed(describeFailure(err, tls, creds));
    tls.destroy();
  });
  server.emit('connection', raw);
}

/** OpenSSL's words for a failed handshake, put in the operator's terms where we know them. */
function describeFailure(err: Error, tls: TLSSocket, creds: TlsCredentials): string {
  // A rejected client certificate shows up as a hang-up; the reason is on the socket.
  if (tls.authorizationError) return `client certificate refused (${String(tls.authorizationError)})`;
  // OpenSSL's form is HEX:error:CODE:LIBRARY:FUNCTION:REASON:FILE:LINE; the reason is what says something.
  const first = err.message.split('\n')[0]!.trim();
  const reason = /error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)/.exec(first)?.[1] ?? first;
  // With PSK, a wrong key is only noticed when the client's Finished message does not decrypt.
  if (creds.kind === 'psk' && /cipher operation failed|decrypt|bad record mac/i.test(reason)) {
    return `the client's key does not match the one in ${creds.source} (${reason})`;
  }
  if (/peer did not return a certificate/.test(reason)) return `client certificate refused (none signed by ${creds.source}/ca-cert.pem was sent)`;
  return reason;
}

/** What the log says about an established connection: protocol, cipher, the client certificate's CN. */
export function tlsSummary(tls: TLSSocket): Record<string, string> {
  const peer = tls.getPeerCertificate()?.subject?.CN;
  return { protocol: tls.getProtocol() ?? '', cipher: tls.getCipher()?.name ?? '', ...(typeof peer === 'string' ? { peer } : {}) };
}
