// Schema entries for who may reach a cache: TLS on its NBD listeners, the opt-in for plaintext on
// a non-loopback TCP address, and the mode and group of the Unix socket files. Kept apart from
// schema.ts so that the credentials' checks (src/config/access.ts) have one home; schema.ts spreads
// these entries into its two schemas. Checks that need files or several values run after
// resolution, in src/config/access.ts.

import type { KeyInfo } from './schema.js';

export const TLS_MODES = ['off', 'on', 'require'] as const;
export type TlsMode = (typeof TLS_MODES)[number];

export interface RawCacheAccess {
  unixMode: string;
  unixGroup: string;
  tls: string;
  tlsCertificates: string;
  tlsPsk: string;
  tlsVerifyPeer: boolean;
  allowRemotePlaintext: boolean;
}

export interface RawDaemonAccess {
  controlMode: string;
  controlGroup: string;
}

function fail(message: string, value: unknown): never {
  throw new Error(`${message}: value was ${JSON.stringify(value)}`);
}

/**
 * Permission bits as written in a config file (JSON has no octal): "0600", "660". The owner must
 * keep read and write (connecting to a socket needs write permission, and the daemon's own CLI
 * connects as the owner); setuid and sticky bits mean nothing on a socket.
 */
export function parseSocketMode(x: unknown): number | undefined {
  if (typeof x !== 'string' || !/^0?[0-7]{3}$/.test(x)) return undefined;
  const mode = parseInt(x, 8);
  return (mode & 0o600) === 0o600 ? mode : undefined;
}

function modeFormat(x: unknown): void {
  if (parseSocketMode(x) === undefined) {
    fail('must be octal permission bits as a string, "0600" to "0777", keeping owner read and write (e.g. "0660")', x);
  }
}

function groupFormat(x: unknown): void {
  if (typeof x !== 'string') fail('must be a group name or numeric id as a string, or "" for the daemon\'s own group', x);
  if (x !== '' && !/^(\d+|[A-Za-z_][A-Za-z0-9_.-]*\$?)$/.test(x)) fail('must be a group name (letters, digits, _ . -) or a numeric id, or ""', x);
}

function pathFormat(what: string) {
  return (x: unknown): void => {
    if (typeof x !== 'string') fail(`must be a string (${what}, or "" for none)`, x);
    if (x.includes('\0')) fail('must not contain a NUL character', x);
    if (Buffer.byteLength(x) > 4096) fail('must be at most 4096 bytes of UTF-8', x);
  };
}

export function cacheAccessKeys(): { [K in keyof RawCacheAccess]: KeyInfo<RawCacheAccess[K]> } {
  return {
    unixMode: {
      doc: 'Permission bits of the `unix` socket file. The socket is bound in a private folder and linked into place with these bits and `unixGroup` already set, so it never exists with other ones, whatever the umask.',
      accepts: 'octal string `"0600"` to `"0777"` with owner read and write',
      default: '0600',
      env: 'PCACHED_UNIX_MODE',
      format: modeFormat,
    },
    unixGroup: {
      doc: 'Group of the `unix` socket file (with `unixMode` `"0660"`, the group\'s members may connect); `""` keeps the daemon\'s group. The daemon must be root or a member of the group.',
      accepts: 'group name, numeric id or `""`',
      default: '',
      env: 'PCACHED_UNIX_GROUP',
      format: groupFormat,
    },
    tls: {
      doc: 'NBD STARTTLS on every listener of this cache, as nbdkit\'s `--tls`. `off`: STARTTLS is refused (NBD_REP_ERR_POLICY). `on`: offered; plaintext clients are served too. `require`: before STARTTLS, every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD and NBD_OPT_EXPORT_NAME hangs up. `on` and `require` need `tlsCertificates` or `tlsPsk`.',
      accepts: TLS_MODES.map((m) => `\`${m}\``).join(', '),
      default: 'off',
      flag: '--tls',
      env: 'PCACHED_TLS',
      format(x: unknown) {
        if (typeof x !== 'string' || !(TLS_MODES as readonly string[]).includes(x)) fail(`must be one of ${TLS_MODES.join(', ')}`, x);
      },
    },
    tlsCertificates: {
      doc: 'X.509 credentials, a folder laid out as nbdkit\'s `--tls-certificates`: `server-cert.pem` (the chain clients verify) and `server-key.pem` (unencrypted PEM); `ca-cert.pem`, needed by `tlsVerifyPeer`; optional `ca-crl.pem`. Read at start.',
      accepts: 'folder path or `""`',
      default: '',
      flag: '--tls-certificates',
      env: 'PCACHED_TLS_CERTIFICATES',
      format: pathFormat('a folder path'),
    },
    tlsPsk: {
      doc: 'Pre-shared keys instead of certificates: a file in psktool\'s format, one `username:hexkey` line per client (nbdkit\'s `--tls-psk`). PSK runs over TLS 1.2 (ECDHE-PSK, DHE-PSK or PSK cipher suites, as GnuTLS clients offer them). Read at start.',
      accepts: 'file path or `""`',
      default: '',
      flag: '--tls-psk',
      env: 'PCACHED_TLS_PSK',
      format: pathFormat('a file path'),
    },
    tlsVerifyPeer: {
      doc: 'With `tlsCertificates`: a client must present a certificate signed by `ca-cert.pem` (and not revoked by `ca-crl.pem`), as nbdkit\'s `--tls-verify-peer`.',
      accepts: 'boolean',
      default: false,
      flag: '--tls-verify-peer',
      env: 'PCACHED_TLS_VERIFY_PEER',
      format: 'pcached-boolean',
    },
    allowRemotePlaintext: {
      doc: 'Let `tcp` use an address other than loopback while `tls` is not `require`. Without it such a listener is refused: anyone who reaches the port could read and write the volume, unencrypted and unauthenticated.',
      accepts: 'boolean',
      default: false,
      env: 'PCACHED_ALLOW_REMOTE_PLAINTEXT',
      format: 'pcached-boolean',
    },
  };
}

export function daemonAccessKeys(): { [K in keyof RawDaemonAccess]: KeyInfo<RawDaemonAccess[K]> } {
  return {
    controlMode: {
      doc: 'Permission bits of the control socket, set before it appears (as `unixMode`). Whoever may connect may stop, reconfigure and detach caches.',
      accepts: 'octal string `"0600"` to `"0777"` with owner read and write',
      default: '0600',
      env: 'PCACHED_CONTROL_MODE',
      format: modeFormat,
    },
    controlGroup: {
      doc: 'Group of the control socket (as `unixGroup`); `""` keeps the daemon\'s group.',
      accepts: 'group name, numeric id or `""`',
      default: '',
      env: 'PCACHED_CONTROL_GROUP',
      format: groupFormat,
    },
  };
}
